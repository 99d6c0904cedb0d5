"""§0 intraday gating: the execution sensor launches only when every gate of D is green.

The instance holds *real* check evaluations: small stand-in assets with the real keys
(``data_quality``, ``order_proposals``) and the real check names are materialized for D, each
check passing or failing as the test says. Each skip must name its reason code.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from ais_pipelines.config import Policies
from ais_pipelines.core.trading_state import kill_switch, pause
from assets import execution as exec_assets
from assets.partitions import as_of_partitions
from resources.trading import ExecutionClockResource
from sensors.execution import (
    REQUIRED_CHECKS,
    execution_gate,
    execution_sensor,
    reconciliation_sensor,
)
from tests.integration.test_execution import EXEC_NOW, Rig, make_rig, write_nightly

D = "2024-03-04"
Outcome = dict[str, tuple[bool, dg.AssetCheckSeverity]]
CHECKED_ASSETS = sorted({k.asset_key.path[0] for k in REQUIRED_CHECKS} | {"order_proposals"})


def stand_ins(outcome: Outcome, *, skip_checks_of: tuple[str, ...] = ()) -> list[Any]:
    """The nightly assets the gate reads, with their real keys and check names (REQUIRED_CHECKS);
    each check passes or fails as ``outcome`` says (check name → (passed, severity))."""

    def asset(key: str) -> Any:
        @dg.asset(key=key, partitions_def=as_of_partitions)
        def _asset() -> dg.MaterializeResult:
            return dg.MaterializeResult()

        return _asset

    def check(key: dg.AssetCheckKey) -> Any:
        passed, severity = outcome.get(key.name, (True, dg.AssetCheckSeverity.ERROR))

        @dg.asset_check(asset=key.asset_key, name=key.name, partitions_def=as_of_partitions, blocking=False)
        def _check() -> dg.AssetCheckResult:
            return dg.AssetCheckResult(passed=passed, severity=severity)

        return _check

    checks = [check(k) for k in REQUIRED_CHECKS if k.asset_key.path[0] not in skip_checks_of]
    return [*(asset(k) for k in CHECKED_ASSETS), *checks]


def nightly(rig: Rig, outcome: Outcome | None = None, *, partition: str = D, with_checks: bool = True) -> None:
    defs = stand_ins(outcome or {})
    selection: Iterable[Any] = defs if with_checks else defs[: len(CHECKED_ASSETS)]
    dg.materialize(list(selection), partition_key=partition, instance=rig.instance, raise_on_error=False)


def evaluate(rig: Rig, **clock: Any) -> dg.RunRequest | dg.SkipReason:
    sensor = execution_sensor(exec_assets.intraday_execution_job, Policies(rig.policies_dir))
    resources = {
        "warehouse": rig.resources["warehouse"],
        "ledger": rig.resources["ledger"],
        "execution_clock": ExecutionClockResource(**clock) if clock else rig.resources["execution_clock"],
    }
    ctx = dg.build_sensor_context(instance=rig.instance, resources=resources)
    return sensor(ctx)


def skipped(result: Any, code: str) -> str:
    assert isinstance(result, dg.SkipReason), result
    assert result.skip_message.startswith(f"{code}: "), result.skip_message
    return result.skip_message


@pytest.fixture()
def rig(tmp_path: Path, policies_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setenv("AIS_APPROVAL_KEY", "5a" * 32)
    monkeypatch.setenv("AIS_ENV", "ci")
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db)
    return r


def test_all_gates_green_launches_partition_d_with_a_deterministic_run_key(rig: Rig) -> None:
    nightly(rig)
    first, second = evaluate(rig), evaluate(rig)
    assert isinstance(first, dg.RunRequest)
    assert (first.run_key, first.partition_key) == ("execute-2024-03-04", D)
    assert first.tags["ais/as_of"] == D
    assert (second.run_key, second.partition_key) == (first.run_key, first.partition_key)


def test_latest_nightly_partition_is_chosen(rig: Rig) -> None:
    nightly(rig, partition="2024-03-01")
    nightly(rig, partition=D)
    result = evaluate(rig)
    assert isinstance(result, dg.RunRequest) and result.partition_key == D


@pytest.mark.parametrize("check", [k.name for k in REQUIRED_CHECKS])
def test_any_required_check_failing_with_error_blocks(rig: Rig, check: str) -> None:
    nightly(rig, {check: (False, dg.AssetCheckSeverity.ERROR)})
    message = skipped(evaluate(rig), "UPSTREAM_CHECK_FAILED")
    assert f":{check} for partition {D} failed with ERROR" in message
    assert message.count("failed with") == 1


def test_warn_failure_is_a_symbol_exclusion_not_a_stop(rig: Rig) -> None:
    nightly(rig, {"quality_gate": (False, dg.AssetCheckSeverity.WARN)})
    assert isinstance(evaluate(rig), dg.RunRequest)


def test_check_never_evaluated_for_d_blocks(rig: Rig) -> None:
    nightly(rig, partition="2024-03-01")  # checks exist, but for another partition
    nightly(rig, with_checks=False)
    message = skipped(evaluate(rig), "UPSTREAM_CHECK_FAILED")
    first, *rest = [f"{k.asset_key.to_user_string()}:{k.name}" for k in REQUIRED_CHECKS]
    assert message.startswith(f"UPSTREAM_CHECK_FAILED: {first} for partition {D} never evaluated for this partition")
    assert f"and {len(rest)} more downstream: {', '.join(rest)}" in message


def test_check_result_older_than_the_materialization_is_stale(rig: Rig) -> None:
    nightly(rig)
    nightly(rig, with_checks=False)  # D re-materialized, checks not re-run
    assert "stale" in skipped(evaluate(rig), "UPSTREAM_CHECK_FAILED")


def test_a_later_passing_evaluation_unblocks(rig: Rig) -> None:
    nightly(rig, {REQUIRED_CHECKS[-1].name: (False, dg.AssetCheckSeverity.ERROR)})
    skipped(evaluate(rig), "UPSTREAM_CHECK_FAILED")
    nightly(rig)
    assert isinstance(evaluate(rig), dg.RunRequest)


def test_unpartitioned_check_specs_are_matched_by_the_run_partition(rig: Rig) -> None:
    """A check declared as a check_spec of the asset records no partition: match by run tag."""
    names = [k.name for k in REQUIRED_CHECKS if k.asset_key.path[0] == "order_proposals"]

    def proposals_with_specs(ok: bool) -> Any:
        specs = [dg.AssetCheckSpec(n, asset="order_proposals") for n in names]

        @dg.asset(key="order_proposals", partitions_def=as_of_partitions, check_specs=specs)
        def order_proposals() -> Iterable[Any]:
            yield dg.MaterializeResult()
            for n in names:
                yield dg.AssetCheckResult(asset_key="order_proposals", check_name=n, passed=ok or n != names[0])

        return order_proposals

    defs = stand_ins({}, skip_checks_of=("order_proposals",))
    n = len(CHECKED_ASSETS)
    others = [a for a, k in zip(defs[:n], CHECKED_ASSETS, strict=True) if k != "order_proposals"] + defs[n:]
    dg.materialize(others, partition_key=D, instance=rig.instance)
    dg.materialize([proposals_with_specs(False)], partition_key=D, instance=rig.instance, raise_on_error=False)
    assert f"{names[0]} for partition {D} failed" in skipped(evaluate(rig), "UPSTREAM_CHECK_FAILED")
    dg.materialize([proposals_with_specs(True)], partition_key=D, instance=rig.instance)
    assert isinstance(evaluate(rig), dg.RunRequest)


def test_no_proposal_rows_for_d(tmp_path: Path, policies_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIS_ENV", "ci")
    r = make_rig(tmp_path, policies_dir)
    write_nightly(r.db, with_proposals=False)
    nightly(r)
    assert "no PROPOSED orders for 2024-03-04" in skipped(evaluate(r), "NO_PROPOSALS")


def test_nothing_materialized_yet(rig: Rig) -> None:
    skipped(evaluate(rig), "NO_PROPOSALS")


def test_trading_halted_and_paused(rig: Rig) -> None:
    nightly(rig)
    store = rig.store()
    store.change_trading_status(lambda s: pause(s, actor="ops", why="broker maintenance", now=EXEC_NOW))
    assert "broker maintenance" in skipped(evaluate(rig), "TRADING_PAUSED")
    store.change_trading_status(lambda s: kill_switch(s, actor="risk", why="desk incident", now=EXEC_NOW))
    assert "desk incident" in skipped(evaluate(rig), "TRADING_HALTED")


def test_market_closed_at_the_clock(rig: Rig) -> None:
    nightly(rig)
    saturday = datetime(2024, 3, 9, 15, 0, tzinfo=UTC).isoformat()
    skipped(evaluate(rig, mode="fixed", fixed_now=saturday), "MARKET_CLOSED")
    before_open = datetime(2024, 3, 5, 13, 0, tzinfo=UTC).isoformat()
    skipped(evaluate(rig, mode="fixed", fixed_now=before_open), "MARKET_CLOSED")
    # the simulated clock (local/ci) is placed inside the session after D: a Saturday night demo trades
    assert isinstance(evaluate(rig, mode="simulated"), dg.RunRequest)


def test_yesterdays_proposals_are_not_traded_today(rig: Rig) -> None:
    nightly(rig)
    wednesday = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).isoformat()  # the session after D was Tuesday
    assert "were for session 2024-03-05" in skipped(evaluate(rig, mode="fixed", fixed_now=wednesday), "NO_PROPOSALS")


def test_launch_then_already_executed(rig: Rig) -> None:
    nightly(rig)
    request = evaluate(rig)
    assert isinstance(request, dg.RunRequest)
    defs = dg.Definitions(
        assets=[exec_assets.execution_context, exec_assets.approved_orders, exec_assets.executed_orders,
                exec_assets.portfolio_state],
        jobs=[exec_assets.intraday_execution_job],
        resources=rig.resources,
    )
    run = defs.resolve_job_def("intraday_execution_job").execute_in_process(
        partition_key=request.partition_key, tags=request.tags, instance=rig.instance
    )
    assert run.success
    assert "2024-03-04 was already executed" in skipped(evaluate(rig), "ALREADY_EXECUTED")


def test_gate_reports_every_check(rig: Rig) -> None:
    nightly(rig, {"history_gate": (False, dg.AssetCheckSeverity.WARN)})
    gate = execution_gate(rig.instance, warehouse=rig.resources["warehouse"], ledger=rig.store(),
                          execution_clock=rig.resources["execution_clock"])
    assert gate.ok and gate.as_of == D and gate.now == EXEC_NOW
    assert gate.checks["data_quality:history_gate"] == "failed with WARN (symbol-level exclusion)"
    assert set(gate.checks) == {f"{k.asset_key.to_user_string()}:{k.name}" for k in REQUIRED_CHECKS}


def test_sensor_interval_comes_from_the_schedules_policy(policies_dir: Path) -> None:
    assert execution_sensor(exec_assets.intraday_execution_job, Policies(policies_dir)).minimum_interval_seconds == 30
    path = policies_dir / "schedules.yaml"
    data = yaml.safe_load(path.read_text())
    data["intraday"] = {"execution_sensor_interval_s": 45, "reconciliation_sensor_interval_s": 90}
    path.write_text(yaml.safe_dump(data))
    pol = Policies(policies_dir)
    assert execution_sensor(exec_assets.intraday_execution_job, pol).minimum_interval_seconds == 45
    assert reconciliation_sensor(exec_assets.reconciliation_job, pol).minimum_interval_seconds == 90


# --------------------------------------------------------------------------------------------
# reconciliation sensor


def reconcile_tick(rig: Rig, cursor: str | None) -> tuple[Any, str | None]:
    sensor = reconciliation_sensor(exec_assets.reconciliation_job, Policies(rig.policies_dir))
    resources = {k: rig.resources[k] for k in ("policies", "ledger", "execution_clock", "broker")}
    ctx = dg.build_sensor_context(instance=rig.instance, resources=resources, cursor=cursor)
    return sensor(ctx), ctx.cursor


def test_reconciliation_sensor_runs_once_per_book_state(rig: Rig) -> None:
    first, cursor = reconcile_tick(rig, None)
    assert isinstance(first, dg.RunRequest) and first.run_key.startswith("reconcile-")
    assert first.tags["ais/reconciliation"] == "RECONCILED"
    again, same = reconcile_tick(rig, cursor)
    assert same == cursor and "RECONCILED: books unchanged" in again.skip_message
    assert rig.run().success  # the book changes: one new reconciliation
    changed, new_cursor = reconcile_tick(rig, cursor)
    assert isinstance(changed, dg.RunRequest) and new_cursor != cursor and changed.run_key != first.run_key


def test_unpartitioned_assets_check_in_a_partitioned_run_is_current(tmp_path) -> None:
    """daily_bars is unpartitioned but checked inside each nightly (partitioned) run: its planned
    check record carries the run's partition. Found by the demo after issue 13's time-window
    partitions: the gate called it stale and nothing traded."""
    from sensors.execution import check_outcome

    parts = dg.DailyPartitionsDefinition(start_date="2026-11-01")

    @dg.asset(name="bars_all")
    def bars_all() -> None:
        return None

    @dg.asset_check(asset=bars_all, blocking=True)
    def bars_ok() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.asset(deps=[bars_all], partitions_def=parts)
    def nightly_thing() -> None:
        return None

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for day in ("2026-11-19", "2026-11-20"):
            job = dg.define_asset_job("j", selection=[bars_all, nightly_thing], partitions_def=parts)
            defs = dg.Definitions(assets=[bars_all, nightly_thing], asset_checks=[bars_ok], jobs=[job])
            assert defs.resolve_job_def("j").execute_in_process(instance=instance, partition_key=day).success
        key = dg.AssetCheckKey(dg.AssetKey("bars_all"), "bars_ok")
        assert check_outcome(instance, key, "2026-11-20") == (True, "passed")
