"""Intraday execution (§0 intraday, §H3–H5, §I1–I5, §J2–J3), partitioned by as-of session D.

Runs in the session after D, launched by ``sensors.execution.execution_sensor`` once the
nightly gates of D passed:

    execution_context → approved_orders → executed_orders → portfolio_state

Each step reads its inputs from the warehouse/ledger and writes explicit tables
(``replace_partition`` on ``as_of``), so a re-run of D replaces its rows and the OMS answers a
repeated approval with the original order (never a second one). The signing key is loaded
first in every step: without it the run fails before any broker is built (fail closed).
"""


import json
from typing import Any

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines import control, intraday
from ais_pipelines import execution as ex
from ais_pipelines.core.audit import verify_store
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode
from ais_pipelines.ledger.leases import ExecutionInProgressError, acquire_lease, release_lease
from ais_pipelines.ledger.store import SqlAuditStore
from ais_pipelines.oms.oms import OrderManagementSystem
from ais_pipelines.warehouse import append_rows, read_table, replace_partition
from assets._common import ui_table
from assets.partitions import as_of_partitions, partition_as_of
from resources.policies import PoliciesResource
from resources.runs import LEASE_OWNER_TAG, lease_owner_gone
from resources.trading import (
    BrokerResource,
    ExecutionClockResource,
    LedgerResource,
    SigningKeyResource,
    open_reconciliation_session,
    open_trading_session,
)

EXECUTION = dict(group_name="execution", partitions_def=as_of_partitions, pool="duckdb")
NIGHTLY_DEPS = [dg.AssetKey(k) for k in ("order_proposals", "market_features", "data_quality",
                                         "strategy_candidates", "forecasts",
                                         "reasoning_memos")]  # issue 16: the memo is a policy input
APPROVAL_TTL_S = control.APPROVAL_TTL_S  # one setting for the intraday run and a human approval


def write_partition(con: Any, table: str, frame: pd.DataFrame, as_of: Any) -> int:
    """``replace_partition`` with text columns typed as text, so an all-None column (common in an
    empty or all-approved session) still gets a type the dbt marts can rely on."""
    out = frame.drop(columns=["as_of"], errors="ignore").copy()
    for col in out.columns:
        if out[col].dtype == object:  # text columns: an all-None column still gets a type
            out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
            out[col] = out[col].astype("string")
    return replace_partition(con, table, out, "as_of", as_of)


def read_partition(con: Any, table: str, as_of: Any) -> pd.DataFrame:
    return read_table(con, table, "as_of = ?", [as_of])


def lease_owner(context: dg.AssetExecutionContext) -> str:
    """Who executes: the CLI's token when it took the lease first, else this run."""
    return context.run.tags.get(LEASE_OWNER_TAG) or context.run.run_id


def claim_session(context: dg.AssetExecutionContext, ledger: LedgerResource, as_of: Any) -> None:
    """Single flight (§I2): take or renew the session's lease before anything touches a broker."""
    try:
        lease = acquire_lease(ledger.store(), str(as_of), lease_owner(context),
                              owner_gone=lease_owner_gone(context.instance))
    except ExecutionInProgressError as exc:
        raise dg.Failure(str(exc), metadata={"reason_code": str(exc.reason_code)}, allow_retries=False) from exc
    if lease.taken_over_from:
        context.log.warning(f"lease of {as_of} taken over from dead owner {lease.taken_over_from}")


_VALIDATED: dict[tuple[str, str], ex.EnvironmentPolicy] = {}  # (run id, policies dir) → validated policy


def require_policies(context: dg.AssetExecutionContext, pol: Any) -> ex.EnvironmentPolicy:
    """Fail closed (§0): every policy the execution path depends on, validated before the first quote.

    Validated once per run and process (~150 ms): the first step of the run that needs it does it;
    a step re-executed alone, or in another process, validates again."""
    key = (context.run.run_id, str(pol.directory))
    if key not in _VALIDATED:
        try:
            _VALIDATED.clear()  # only the current run matters
            _VALIDATED[key] = ex.load_execution_policies(pol)
        except (ex.PolicyError, ValueError, OSError) as exc:
            raise dg.Failure(f"{ReasonCode.POLICY_UNREADABLE}: {exc}",
                             metadata={"reason_code": str(ReasonCode.POLICY_UNREADABLE)},
                             allow_retries=False) from exc
    return _VALIDATED[key]


def recovery_metadata(report: Any) -> dict[str, int]:
    """How many open intents the start-of-run recovery adopted, sent, closed or could not settle."""
    return {f"recovery_{k}": len(v) for k, v in vars(report).items()}


def pnl_history(con: Any) -> pd.DataFrame:
    return read_table(con, "pnl_history")


# --------------------------------------------------------------------------------------------
# 1. context


@dg.asset(
    **EXECUTION,
    deps=NIGHTLY_DEPS,
    kinds={"python", "duckdb"},
    description="Fresh quotes, the broker's book and the trading state at the execution clock, mapped onto "
    "every field of the pre-trade/veto order context for each order proposal of D.",
)
def execution_context(
    context: dg.AssetExecutionContext,
    policies: PoliciesResource,
    warehouse: DuckDBResource,
    ledger: LedgerResource,
    signing_key: SigningKeyResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
) -> dg.MaterializeResult:
    key = signing_key.key()  # fail closed before anything is opened
    pol, as_of = policies.load(), partition_as_of(context).date()
    claim_session(context, ledger, as_of)
    require_policies(context, pol)
    with warehouse.get_connection() as con:
        session = open_trading_session(pol, con, as_of, ledger, execution_clock, broker)
        # Recovery first: the book the policy sees must include what a crashed run left behind.
        oms = OrderManagementSystem(session.ledger, session.broker, key, session.clock, session.audit)
        recovery = ex.recover_intents(oms)
        history = pnl_history(con)
        ic = ex.assemble_context(session, session.snapshot.proposals, history)
        write_partition(con, "execution_context", ic.context, as_of)
        book = ex.typed(
            [{"symbol": s, "qty": q, "avg_price": ic.book.avg_prices.get(s), "mark": ic.book.marks.get(s),
              "market_value": q * ic.book.marks.get(s, float("nan"))} for s, q in sorted(ic.book.positions.items())],
            {"symbol": "string", "qty": "float64", "avg_price": "float64", "mark": "float64", "market_value": "float64"},
        )
        write_partition(con, "execution_book", book, as_of)
    status = ic.book.trading_status
    shown = ["order_id", "side", "qty", "mid", "quote_age_s", "market_open", "liquidity_score",
             "gross_exposure_after", "risk_per_trade_nav", "confidence", "correlation_to_book",
             "reduces_position", "data_provider_count", "data_quality_score"]
    return dg.MaterializeResult(
        metadata={
            "as_of": str(as_of),
            "clock_now": ic.now.isoformat(),
            "proposals": len(ic.context),
            "trading_mode": str(status.mode),
            "trading_reason_codes": ";".join(map(str, status.reason_codes)) or "none",
            "nav": float(ic.book.nav),
            "session_open_nav": float(ic.book.session_open_nav),
            "gross_exposure": float(ic.book.gross_exposure),
            "daily_drawdown": float(ic.book.daily_drawdown),
            "quotes_missing": int(ic.quotes["mid"].isna().sum()),
            "exec_fill_count": float(ic.stats.get("exec_fill_count", 0.0)),
            **recovery_metadata(recovery),
            "context": ui_table(ic.context[shown]),
            "quotes": ui_table(ic.quotes.drop(columns=["quote_error"])),
            "book": ui_table(book),
        }
    )


# --------------------------------------------------------------------------------------------
# 2. governance


@dg.asset(
    **EXECUTION,
    deps=[execution_context],
    kinds={"python", "duckdb"},
    description="Pre-trade policy and governance vetoes (environment overlay applied) for every proposal of D: "
    "APPROVE → HMAC-signed approval in the ledger; REVIEW → the human queue; REJECT → recorded with every rule "
    "hit. Tables governance_decisions and governance_rule_hits.",
)
def approved_orders(
    context: dg.AssetExecutionContext,
    policies: PoliciesResource,
    warehouse: DuckDBResource,
    ledger: LedgerResource,
    signing_key: SigningKeyResource,
    execution_clock: ExecutionClockResource,
) -> dg.MaterializeResult:
    key = signing_key.key()
    pol, as_of = policies.load(), partition_as_of(context).date()
    claim_session(context, ledger, as_of)
    env_policy = require_policies(context, pol)
    store = ledger.store()
    clock = execution_clock.clock(as_of)
    now = clock.now()
    with warehouse.get_connection() as con:
        ctx = read_partition(con, "execution_context", as_of)
        if not ctx.empty:
            ctx["quote_ts"] = pd.to_datetime(ctx["quote_ts"], utc=True)
        gov = intraday.govern(store, ledger.audit(), ctx, env_policy, key, now, APPROVAL_TTL_S)
        decisions, hits, counts = gov.decisions, gov.hits, gov.counts
        write_partition(con, "governance_decisions", decisions, as_of)
        write_partition(con, "governance_rule_hits", hits, as_of)
    overrides = pd.DataFrame([o.__dict__ for o in env_policy.overrides])
    by_rule = hits.groupby(["rule_id", "action"]).size().rename("hits").reset_index() if len(hits) else hits
    return dg.MaterializeResult(
        metadata={
            "as_of": str(as_of),
            "evaluated_at": now.isoformat(),
            "approved": counts["APPROVE"],
            "review": counts["REVIEW"],
            "rejected": counts["REJECT"],
            "policy_digest": env_policy.digest,
            "environment": env_policy.environment,
            "environment_overrides": ui_table(overrides),
            "decisions": ui_table(decisions[["order_id", "decision", "reason_codes", "requested_qty",
                                             "approved_qty", "expires_at"]]),
            "rule_hits_by_rule": ui_table(by_rule),
            "rule_hits": ui_table(hits.drop(columns=["policy"], errors="ignore"), max_rows=40),
        }
    )


# --------------------------------------------------------------------------------------------
# 3. orders


@dg.asset(
    **EXECUTION,
    deps=[approved_orders],
    kinds={"python", "duckdb"},
    description="The OMS submits every signed approval of D to the broker (verifying it again first), then "
    "works the orders for the configured number of broker ticks. Tables execution_orders and execution_fills.",
)
def executed_orders(
    context: dg.AssetExecutionContext,
    policies: PoliciesResource,
    warehouse: DuckDBResource,
    ledger: LedgerResource,
    signing_key: SigningKeyResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
) -> dg.MaterializeResult:
    key = signing_key.key()
    pol, as_of = policies.load(), partition_as_of(context).date()
    claim_session(context, ledger, as_of)
    require_policies(context, pol)
    with warehouse.get_connection() as con:
        session = open_trading_session(pol, con, as_of, ledger, execution_clock, broker,
                                       not_before=ex.latest_activity(ledger.store()))
        decisions = read_partition(con, "governance_decisions", as_of)
        ids = [] if decisions.empty else decisions.loc[decisions["decision"] == "APPROVE", "approval_id"].dropna()
        approved = ex.approved_orders_from_ledger(session.ledger, list(ids))
        oms = OrderManagementSystem(session.ledger, session.broker, key, session.clock, session.audit)
        recovery = ex.recover_intents(oms)  # a crashed earlier run's intents first, by client order id
        outcome = ex.execute(oms, session.broker, approved, session.clock, broker.ticks, broker.tick_interval_s)
        write_partition(con, "execution_orders", outcome.orders, as_of)
        write_partition(con, "execution_fills", outcome.fills, as_of)
    summary = {"as_of": str(as_of), "orders": len(outcome.orders), "fills": len(outcome.fills),
               "started_at": outcome.started_at.isoformat(), "ended_at": outcome.ended_at.isoformat()}
    try:
        ex.close_session(session.ledger, session.audit, as_of, summary, outcome.ended_at)
    except ex.SessionNotClosedError as exc:
        raise dg.Failure(str(exc), metadata={"reason_code": str(exc.reason_code),
                                             "unresolved": len(exc.pending), **recovery_metadata(recovery)},
                         allow_retries=False) from exc
    states = outcome.orders["state"].value_counts().to_dict() if len(outcome.orders) else {}
    filled_notional = float((outcome.fills["qty"] * outcome.fills["price"]).sum()) if len(outcome.fills) else 0.0
    return dg.MaterializeResult(
        metadata={
            **summary,
            **recovery_metadata(recovery),
            "broker_mode": str(getattr(session.broker, "mode", "")),
            "ticks_worked": outcome.ticks,
            "filled": int(states.get("FILLED", 0)),
            "partially_filled": int(states.get("PARTIALLY_FILLED", 0)),
            "refused": int(outcome.orders["refused"].fillna(False).astype(bool).sum()) if len(outcome.orders) else 0,
            "filled_notional": filled_notional,
            "mean_slippage_bps": float(outcome.fills["slippage_bps"].mean()) if len(outcome.fills) else 0.0,
            "orders_table": ui_table(outcome.orders[["order_id", "symbol", "side", "qty", "state", "filled_qty",
                                                     "avg_fill_price", "reason_codes"]]),
            "fills_table": ui_table(outcome.fills[["fill_id", "symbol", "side", "qty", "price", "slippage_bps",
                                                   "predicted_impact_bps"]]),
        }
    )


@dg.asset_check(asset=executed_orders, partitions_def=as_of_partitions,
                description="§I1: every order of D in the ledger carries a valid HMAC approval over exactly "
                "the executed payload, used before it expired.")
def orders_have_valid_approvals(
    context: dg.AssetCheckExecutionContext, ledger: LedgerResource, signing_key: SigningKeyResource
) -> dg.AssetCheckResult:
    table = ex.verify_executed_approvals(ledger.store(), signing_key.key(), partition_as_of(context).date())
    bad = table[~table["ok"]]
    return dg.AssetCheckResult(
        passed=bad.empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"orders_checked": len(table), "invalid": len(bad), "invalid_orders": ui_table(bad)},
    )


@dg.asset_check(asset=executed_orders, partitions_def=as_of_partitions,
                description="§H5: no order queued for REVIEW (or REJECTed) reached the ledger unless a person "
                "approved its review item.")
def nothing_in_review_executed(
    context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource, ledger: LedgerResource
) -> dg.AssetCheckResult:
    as_of = partition_as_of(context).date()
    with warehouse.get_connection() as con:
        decisions = read_partition(con, "governance_decisions", as_of)
    store = ledger.store()
    blocked = set() if decisions.empty else set(decisions.loc[decisions["decision"] != "APPROVE", "order_id"])
    offenders = []
    for o in store.list_orders():
        oid = o.payload.get("order_id") if isinstance(o.payload, dict) else None
        if oid not in blocked:
            continue
        item = store.get_review(ex.review_item_id(oid))
        if item is None or item.status != "APPROVED" or o.payload.get("review_item_id") != item.item_id:
            offenders.append({"order_id": oid, "client_order_id": o.client_order_id, "state": str(o.state),
                              "review_status": None if item is None else item.status})
    return dg.AssetCheckResult(
        passed=not offenders,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"blocked_orders": len(blocked), "executed_without_approval": len(offenders),
                  "offenders": ui_table(pd.DataFrame(offenders))},
    )


@dg.asset_check(asset=executed_orders, partitions_def=as_of_partitions,
                description="§J3: the audit chain verifies end to end; a broken chain halts trading.")
def audit_chain_verifies(
    context: dg.AssetCheckExecutionContext, ledger: LedgerResource, execution_clock: ExecutionClockResource
) -> dg.AssetCheckResult:
    store = ledger.store()
    result = verify_store(SqlAuditStore(store.engine), ledger.audit_anchor())  # against the last anchor
    if not result.ok:
        from ais_pipelines.core import trading_state as ts

        # A broken chain is a system-level fault (SPEC): halt, latched, whatever else is running.
        now = execution_clock.clock(partition_as_of(context).date()).now()
        store.change_trading_status(lambda s: ts.halt(s, reason_code=ReasonCode.AUDIT_CHAIN_BROKEN,
                                                      why=str(result.reason), now=now))
    return dg.AssetCheckResult(
        passed=result.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"records": result.n_records, "first_broken_seq": result.first_broken_seq or 0,
                  "reason": result.reason or "ok", "anchor": result.anchor_status()},
    )


# --------------------------------------------------------------------------------------------
# 4. portfolio


@dg.asset(
    **EXECUTION,
    deps=[executed_orders],
    kinds={"python", "duckdb"},
    description="Positions (broker truth), marks, NAV, P&L and drawdown after the execution of D; the daily-loss "
    "kill switch (latched). Tables pnl_history (one row per as_of) and positions_snapshot.",
)
def portfolio_state(
    context: dg.AssetExecutionContext,
    policies: PoliciesResource,
    warehouse: DuckDBResource,
    ledger: LedgerResource,
    signing_key: SigningKeyResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
) -> dg.MaterializeResult:
    key = signing_key.key()
    pol, as_of = policies.load(), partition_as_of(context).date()
    claim_session(context, ledger, as_of)
    store = ledger.store()
    marker = ex.executed_marker(store, as_of) or {}
    ended = pd.Timestamp(marker["ended_at"]).to_pydatetime() if marker.get("ended_at") else None
    with warehouse.get_connection() as con:
        session = open_trading_session(pol, con, as_of, ledger, execution_clock, broker, not_before=ended)
        history = pnl_history(con)
        previous = read_table(con, "positions_snapshot", "as_of < ?", [as_of])
        held = session.broker.get_positions()
        quotes = ex.fetch_quotes(session.quotes, held, session.clock.now())
        val = intraday.value_session(session, key, ex.marks_from_quotes(quotes), history, previous)
        state, status, row = val.state, val.status, val.row
        write_partition(con, "pnl_history", pd.DataFrame([row]), as_of)
        write_partition(con, "positions_snapshot", state.positions, as_of)
    release_lease(store, str(as_of), lease_owner(context))  # the last step of the session's run
    s = state.summary()
    return dg.MaterializeResult(
        metadata={
            "as_of": str(as_of),
            "nav": dg.MetadataValue.float(s["nav"]),
            "pnl_day": dg.MetadataValue.float(s["pnl_day"]),
            "pnl_total": dg.MetadataValue.float(s["pnl_total"]),
            "realized_pnl": dg.MetadataValue.float(s["realized_pnl"]),
            "unrealized_pnl": dg.MetadataValue.float(s["unrealized_pnl"]),
            "daily_loss": dg.MetadataValue.float(s["daily_loss"]),
            "drawdown": dg.MetadataValue.float(s["drawdown"]),
            "gross_exposure": dg.MetadataValue.float(s["gross_exposure"]),
            "cash": dg.MetadataValue.float(s["cash"]),
            "positions": len(state.positions),
            "trading_mode": str(status.mode),
            "kill_switch": status.mode is TradingMode.HALTED,
            "trading_reason_codes": json.dumps([str(c) for c in status.reason_codes]),
            "positions_table": ui_table(state.positions),
        }
    )


@dg.asset(
    **EXECUTION,
    deps=[portfolio_state],
    kinds={"python"},
    description="§J3 anchor: the audit chain verified against the last published head, then its new head "
    "(sequence and hash) published outside the ledger — in this materialization's metadata and in "
    "{runtime}/audit_anchor.json — so a truncated tail or an emptied log cannot pass for intact.",
)
def audit_head(context: dg.AssetExecutionContext, ledger: LedgerResource) -> dg.MaterializeResult:
    store = ledger.store()
    result = verify_store(SqlAuditStore(store.engine), ledger.audit_anchor())
    if not result.ok:
        raise dg.Failure(result.summary(), metadata={"reason_code": str(ReasonCode.AUDIT_CHAIN_BROKEN)},
                         allow_retries=False)
    head = ledger.audit().publish_anchor()
    meta = head.to_metadata() if head is not None else {"audit_head_seq": 0}
    return dg.MaterializeResult(metadata={**meta, "records_verified": result.n_records,
                                          "as_of": str(partition_as_of(context).date())})


intraday_execution_job = dg.define_asset_job(
    "intraday_execution_job",
    # run monitoring cancels a hung execution (issue 10); one warehouse writer at a time (issue 15)
    tags={"dagster/max_runtime": 1800, "ais/warehouse": "main"},
    selection=dg.AssetSelection.groups("execution"),
    partitions_def=as_of_partitions,
    executor_def=dg.in_process_executor,
    description="Session after D: fresh quotes → pre-trade policy and vetoes → signed approvals → OMS → broker → "
    "fills → positions, NAV and the daily-loss kill switch. Launched by execution_sensor.",
)


# --------------------------------------------------------------------------------------------
# reconciliation (§J1): not partitioned — it compares the books as they are now


@dg.asset(
    group_name="monitoring",
    pool="duckdb",
    kinds={"python", "duckdb"},
    check_specs=[dg.AssetCheckSpec("books_reconcile", asset="broker_reconciliation",
                                   description="§J1: the ledger agrees with the broker.")],
    description="Ledger vs broker (the broker is the truth): positions by symbol, orders by client order id. "
    "Mismatches are appended to reconciliation_mismatches, recorded in the ledger and the audit log, and pause "
    "trading (RECONCILIATION_MISMATCH) until a person resumes. Never repairs the ledger.",
)
def broker_reconciliation(
    context: dg.AssetExecutionContext,
    policies: PoliciesResource,
    warehouse: DuckDBResource,
    ledger: LedgerResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
    signing_key: SigningKeyResource,
) -> dg.MaterializeResult:
    session = open_reconciliation_session(policies.load(), ledger, execution_clock, broker)
    oms = OrderManagementSystem(session.ledger, session.broker, signing_key.key(), session.clock, session.audit)
    recovery = ex.recover_intents(oms)  # the same recovery as every execution start
    now = session.clock.now()
    report = ex.reconcile_book(session.ledger, session.broker)
    status = ex.record_reconciliation(session.ledger, session.audit, report, now)
    table = report.mismatches.assign(checked_at=pd.Timestamp(now), run_id=context.run.run_id)
    with warehouse.get_connection() as con:
        append_rows(con, "reconciliation_mismatches", table.astype({"difference": "float64"}))
    summary = report.summary()
    return dg.MaterializeResult(
        metadata={
            "ok": report.ok,
            "reason_code": str(report.reason_code),
            "checked_at": now.isoformat(),
            "positions_checked": report.positions_checked,
            "orders_checked": report.orders_checked,
            "mismatch_count": len(report.mismatches),
            "by_kind": json.dumps(summary["by_kind"]),
            "trading_mode": str(status.mode),
            **recovery_metadata(recovery),
            "mismatches": ui_table(report.mismatches.drop(columns=["reason_code"])),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="books_reconcile",
                passed=report.ok,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"mismatches": len(report.mismatches), "by_kind": json.dumps(summary["by_kind"])},
            )
        ],
    )


reconciliation_job = dg.define_asset_job(
    "reconciliation_job",
    tags={"dagster/max_runtime": 600},
    selection=dg.AssetSelection.assets(broker_reconciliation),
    executor_def=dg.in_process_executor,
    description="Compare the ledger with the broker; mismatches pause trading. Launched by reconciliation_sensor.",
)
