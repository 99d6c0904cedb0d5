"""Intraday sensors (§0 intraday, §J1): launch execution when every gate of D is green; reconcile.

``execution_sensor`` launches ``intraday_execution_job`` for the latest nightly partition D
only when all of these hold, checked in this order; otherwise it returns a ``SkipReason``
that starts with the reason code:

=====================  =========================================================================
WAREHOUSE_MISSING      the warehouse file does not exist (nothing was ever materialized here)
ALREADY_EXECUTED       the ledger holds the INTRADAY_EXECUTED marker for D (run key ``execute-D``
                       also deduplicates inside Dagster)
UPSTREAM_CHECK_FAILED  the latest evaluation *for partition D* of every required check
                       (:data:`REQUIRED_CHECKS`: data-quality and history gates, quality schema,
                       no allocation to ineligible candidates, portfolio and component CVaR,
                       impact estimates, proposals respecting the risk state, a reasoning memo
                       for every proposal) exists, targets D's latest
                       materialization and passed — a WARN-severity failure (symbols excluded,
                       the system goes on) counts as passed, exactly like Dagster's blocking
                       semantics; ERROR, missing, in progress or stale fail closed
EXECUTION_IN_PROGRESS  a live execution holds D's lease (single flight)
NO_PROPOSALS           D has no order_proposals rows with status PROPOSED, or the clock is already
                       past the session after D (yesterday's decision is not today's)
TRADING_HALTED /       the ledger's trading state (REDUCING may run: the OMS admits only
TRADING_PAUSED         reduce-only orders)
MARKET_CLOSED          the market (XNYS) is closed at the execution clock's now
=====================  =========================================================================

``reconciliation_sensor`` compares the ledger with the broker every interval and launches
``reconciliation_job`` whenever the two books changed since the last reconciliation (run key
= their fingerprint), so every new state is reconciled once and recorded; it waits while an
intraday execution is running (half-worked orders are not a mismatch).
"""


from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster_duckdb import DuckDBResource

from ais_pipelines.config import Policies
from ais_pipelines.core.calendars import is_open_at
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode
from ais_pipelines.execution import book_fingerprint, executed_marker, reconcile_book
from ais_pipelines.ledger.leases import current_lease, lease_is_stale
from ais_pipelines.ledger.store import LedgerStore
from resources.policies import PoliciesResource
from resources.runs import lease_owner_gone, reap_dead_runs
from resources.trading import (
    BrokerResource,
    ExecutionClockResource,
    LedgerResource,
    open_reconciliation_session,
    session_after,
)

PROPOSALS_KEY = dg.AssetKey("order_proposals")
REQUIRED_CHECKS: tuple[dg.AssetCheckKey, ...] = tuple(
    dg.AssetCheckKey(dg.AssetKey(asset), name)
    for asset, name in (  # in pipeline order: the first that failed is the one a skip names
        ("daily_bars", "daily_bars_schema"),
        ("data_quality", "data_health_gate"),
        ("data_quality", "quality_gate"),
        ("data_quality", "history_gate"),
        ("data_quality", "data_quality_schema"),
        ("capital_auction", "no_allocation_to_ineligible"),
        ("portfolio_cvar", "portfolio_cvar_within_limit"),
        ("portfolio_cvar", "component_cvar_within_limit"),
        ("order_proposals", "orders_have_impact_estimates"),
        ("order_proposals", "proposals_respect_risk_state"),
        ("reasoning_memos", "memos_cover_proposals"),  # issue 16: no decision without its memo
    )
)
EXECUTION_JOB = "intraday_execution_job"
RECONCILIATION_JOB = "reconciliation_job"
ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class GateDecision:
    """The sensor's answer for D: launch, or the reason code for not launching."""

    as_of: str | None
    reason_code: ReasonCode | None  # None → launch
    message: str
    checks: dict[str, str] = field(default_factory=dict)
    now: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.reason_code is None

    def skip_reason(self) -> str:
        return f"{self.reason_code}: {self.message}"


# --------------------------------------------------------------------------------------------
# reading the instance


NIGHTLY_GATED_KEY = dg.AssetKey("data_quality")  # the first gated asset of every nightly partition


def latest_proposals_partition(instance: dg.DagsterInstance) -> str | None:
    """The newest as-of partition D the nightly job reached: its order_proposals, or — when a
    blocking gate stopped the night before proposals — its data_quality, so that the gate that
    failed is the reason a skip names (not "no proposals")."""
    parts = set(instance.get_materialized_partitions(PROPOSALS_KEY))
    parts |= set(instance.get_materialized_partitions(NIGHTLY_GATED_KEY))
    return max(parts, key=lambda p: pd.Timestamp(p)) if parts else None


def check_outcome(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, partition: str) -> tuple[bool, str]:
    """(passed, why) of the latest evaluation of ``check_key`` for ``partition``.

    Partitioned checks are read with the partition filter; a check declared without partitions
    records no partition, so its newest evaluations are matched by their run's partition tag.
    """
    storage = instance.event_log_storage
    record = storage.get_latest_asset_check_execution_by_key(
        [check_key], partition_filter=PartitionKeyFilter(key=partition)
    ).get(check_key)
    current = True
    if record is not None:
        infos = storage.get_asset_check_partition_info([check_key], partition_keys=[partition])
        current = all(i.is_current for i in infos if i.partition_key == partition)
    else:
        for rec in storage.get_asset_check_execution_history(check_key, limit=25):
            run = instance.get_run_by_id(rec.run_id)
            if run is not None and run.tags.get("dagster/partition") == partition:
                record = rec
                break
    if record is not None and record.status is AssetCheckExecutionRecordStatus.PLANNED:
        # Time-window partitions (issue 13): a check_spec's evaluation can land in a record of
        # its own without the partition; the same run's resolved record is the outcome.
        for rec in storage.get_asset_check_execution_history(check_key, limit=25):
            if rec.run_id == record.run_id and rec.status is not AssetCheckExecutionRecordStatus.PLANNED:
                record = rec
                # Current when the newest materialization (of the partition, for a partitioned
                # asset) is from the same run. An unpartitioned asset (daily_bars) checked in a
                # partitioned run also gets the run's partition on its planned record.
                mats = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=check_key.asset_key),
                                                       limit=1).records
                if mats and mats[0].partition_key is not None:
                    mats = instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=check_key.asset_key, asset_partitions=[partition]), limit=1
                    ).records
                current = bool(mats) and mats[0].run_id == rec.run_id
                break
    if record is None:
        return False, "never evaluated for this partition"
    if record.status is AssetCheckExecutionRecordStatus.PLANNED:
        return False, "evaluation planned or in progress"
    evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
    if not current:
        return False, "stale: the asset was re-materialized after this evaluation"
    if record.status is AssetCheckExecutionRecordStatus.SUCCEEDED:
        return True, "passed"
    severity = getattr(evaluation, "severity", dg.AssetCheckSeverity.ERROR)
    if severity is dg.AssetCheckSeverity.WARN:
        return True, "failed with WARN (symbol-level exclusion)"
    meta = getattr(evaluation, "metadata", None) or {}
    code = getattr(meta.get("reason_code"), "value", None)
    detail = getattr(meta.get("summary"), "value", None)
    own = f" [{code}{': ' + str(detail) if detail else ''}]" if code and code != "none" else ""
    return False, f"failed with {getattr(severity, 'value', severity)}{own}"


def proposals_count(con: Any, as_of: str) -> int:
    from ais_pipelines.warehouse import table_exists

    if not table_exists(con, "order_proposals"):
        return 0
    cols = {r[0] for r in con.execute('DESCRIBE "order_proposals"').fetchall()}
    where = "as_of = ?" + (" AND coalesce(status, 'PROPOSED') = 'PROPOSED'" if "status" in cols else "")
    rows = con.execute(f'SELECT count(*) FROM "order_proposals" WHERE {where}', [pd.Timestamp(as_of).date()]).fetchall()
    return int(rows[0][0]) if rows else 0


def execution_gate(
    instance: dg.DagsterInstance,
    *,
    warehouse: DuckDBResource,
    ledger: LedgerStore,
    execution_clock: ExecutionClockResource,
    as_of: str | None = None,
) -> GateDecision:
    """Every condition of the module docstring, in order; the first that fails is the answer."""
    database = getattr(warehouse, "database", None)
    if database and database != ":memory:" and not Path(database).exists():
        return GateDecision(as_of, ReasonCode.WAREHOUSE_MISSING,
                            f"no warehouse at {database}: the nightly job has not run here")
    day = as_of or latest_proposals_partition(instance)
    if day is None:
        return GateDecision(None, ReasonCode.NO_PROPOSALS, "order_proposals has never been materialized")
    if executed_marker(ledger, day) is not None:
        return GateDecision(day, ReasonCode.ALREADY_EXECUTED, f"session {day} was already executed")
    holder = current_lease(ledger, day)
    if holder is not None and not lease_is_stale(holder, lease_owner_gone(instance)):
        return GateDecision(day, ReasonCode.EXECUTION_IN_PROGRESS,
                            f"session {day} is being executed by {holder.owner} (pid {holder.owner_pid})")
    checks = {f"{k.asset_key.to_user_string()}:{k.name}": check_outcome(instance, k, day) for k in REQUIRED_CHECKS}
    failed = {k: why for k, (ok, why) in checks.items() if not ok}
    described = {k: why for k, (_ok, why) in checks.items()}
    if failed:
        # The first failed gate upstream, named with asset, check, partition and its own reason.
        first, why = next(iter(failed.items()))
        rest = f" (and {len(failed) - 1} more downstream: {', '.join(list(failed)[1:])})" if len(failed) > 1 else ""
        return GateDecision(day, ReasonCode.UPSTREAM_CHECK_FAILED, f"{first} for partition {day} {why}{rest}",
                            described)
    with warehouse.get_connection() as con:
        n = proposals_count(con, day)
    if n == 0:
        return GateDecision(day, ReasonCode.NO_PROPOSALS, f"no PROPOSED orders for {day}", described)
    status = ledger.current_trading_status()
    if status.mode is TradingMode.HALTED:
        return GateDecision(day, ReasonCode.TRADING_HALTED, f"trading is HALTED since {status.since:%Y-%m-%d %H:%M} "
                            f"by {status.actor}: {status.why}", described)
    if status.mode is TradingMode.PAUSED:
        return GateDecision(day, ReasonCode.TRADING_PAUSED, f"trading is PAUSED by {status.actor}: {status.why}",
                            described)
    now = execution_clock.clock(day).now()
    target = session_after(day, execution_clock.calendar)
    if not is_open_at(execution_clock.calendar, pd.Timestamp(now)):
        return GateDecision(day, ReasonCode.MARKET_CLOSED,
                            f"{execution_clock.calendar} is closed at {now.isoformat()}", described, now)
    current = pd.Timestamp(now).tz_convert("America/New_York").tz_localize(None).normalize()
    if current > target:
        return GateDecision(day, ReasonCode.NO_PROPOSALS, f"the proposals of {day} were for session "
                            f"{target.date()}; now is {current.date()}", described, now)
    return GateDecision(day, None, f"all gates passed for {day}; {n} proposals", described, now)


# --------------------------------------------------------------------------------------------
# sensors


def sensor_status(running: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def execution_sensor(job: Any, policies: Policies, *, running: bool = False) -> dg.SensorDefinition:
    """The sensor that starts trading; its interval is policies.schedules.intraday (default 30 s)."""
    interval = policies.schedules.intraday.execution_sensor_interval_s

    @dg.sensor(
        name="execution_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=sensor_status(running),
        description="Launch intraday_execution_job for the latest nightly partition D once its quality, history, "
        "CVaR and impact checks passed, proposals exist, trading is allowed and the market is open.",
    )
    def _execution_sensor(
        context: dg.SensorEvaluationContext,
        warehouse: DuckDBResource,
        ledger: LedgerResource,
        execution_clock: ExecutionClockResource,
    ) -> dg.RunRequest | dg.SkipReason:
        for run_id in reap_dead_runs(context.instance):  # a killed run must not block the next one
            context.log.warning(f"{ReasonCode.STALE_RUN_RELEASED}: {run_id}")
        gate = execution_gate(context.instance, warehouse=warehouse, ledger=ledger.store(),
                              execution_clock=execution_clock)
        if not gate.ok:
            return dg.SkipReason(gate.skip_reason())
        # One run key per attempt: after a failed or killed run of D the next tick relaunches
        # (recovery settles what the dead run left); a live run of D is never doubled.
        attempts = context.instance.get_run_records(dg.RunsFilter(job_name=EXECUTION_JOB,
                                                                  tags={"ais/as_of": str(gate.as_of)}))
        if any(r.dagster_run.status in ACTIVE_RUN_STATUSES for r in attempts):
            return dg.SkipReason(f"{ReasonCode.EXECUTION_IN_PROGRESS}: a run of {gate.as_of} is active")
        return dg.RunRequest(
            run_key=f"execute-{gate.as_of}" + (f"-attempt-{len(attempts) + 1}" if attempts else ""),
            partition_key=gate.as_of,
            tags={"ais/as_of": str(gate.as_of), "ais/trigger": "execution_sensor"},
        )

    return _execution_sensor


def reconciliation_sensor(job: Any, policies: Policies, *, running: bool = False) -> dg.SensorDefinition:
    interval = policies.schedules.intraday.reconciliation_sensor_interval_s

    @dg.sensor(
        name="reconciliation_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=sensor_status(running),
        description="Compare the ledger with the broker; launch reconciliation_job whenever the books changed, "
        "so every mismatch is recorded and pauses trading.",
    )
    def _reconciliation_sensor(
        context: dg.SensorEvaluationContext,
        policies: PoliciesResource,
        ledger: LedgerResource,
        execution_clock: ExecutionClockResource,
        broker: BrokerResource,
    ) -> dg.RunRequest | dg.SkipReason:
        running = context.instance.get_run_records(
            dg.RunsFilter(job_name=EXECUTION_JOB, statuses=ACTIVE_RUN_STATUSES), limit=1
        )
        if running:
            return dg.SkipReason(f"{EXECUTION_JOB} is running: reconcile after it finishes")
        session = open_reconciliation_session(policies.load(), ledger, execution_clock, broker)
        fingerprint = book_fingerprint(session.ledger, session.broker)
        report = reconcile_book(session.ledger, session.broker)
        if context.cursor == fingerprint:
            return dg.SkipReason(f"{report.reason_code}: books unchanged since the last reconciliation")
        context.update_cursor(fingerprint)
        return dg.RunRequest(
            run_key=f"reconcile-{fingerprint[:20]}",
            tags={"ais/reconciliation": str(report.reason_code), "ais/mismatches": str(len(report.mismatches))},
        )

    return _reconciliation_sensor
