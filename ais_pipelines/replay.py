"""Walk-forward replay of the whole governed loop (§L1, issue 12). No Dagster.

For each XNYS session D in ``[start, end]``, in order, on the same steps as the live assets:

1. **night of D** — ingest up to D (:func:`ais_pipelines.ingestion.ingest_universe`), then every
   nightly step of :mod:`ais_pipelines.nightly` as of D (point in time: nothing after D is read),
   with a model refit when the declared refit cadence fires (``policies/models.yaml`` ``refit.cron``);
2. **session D+1** — the market of D+1 is ingested; the embedded paper broker runs under a
   simulated market clock 30 minutes after D+1's open, with quotes walking from D+1's open under
   the sample market's spread model; the intraday steps of :mod:`ais_pipelines.intraday`
   (policy context → governance → signed approvals → OMS → fills with the impact model); review
   items are decided by the scripted rule of ``policies/replay.yaml``; orders still working at
   the close expire (DAY orders);
3. **D+1's close** — positions and NAV marked at D+1's closes, the daily-loss kill switch,
   reconciliation (ledger vs broker), each strategy's realized paper performance (the lifecycle
   input of the next night), and the session's track-record row.

The next session's auction starts from the book now held. Everything is written under
``out``: its own DuckDB warehouse, its own SQLite ledger and its own audit hash chain — never
the live runtime. The same replay twice gives the same decisions, orders, fills and NAV:
:func:`replay_digest` hashes them, printed and stored in ``out/replay_digest.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines import execution as ex
from ais_pipelines import intraday, nightly
from ais_pipelines.config import Policies
from ais_pipelines.core import trading_state as ts
from ais_pipelines.core.audit import AuditAnchor, AuditChain
from ais_pipelines.core.clock import SimulatedClock
from ais_pipelines.core.order_states import OPEN_STATES
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.strategy_performance import owners, performance, strategy_day, symbol_pnl
from ais_pipelines.ledger.store import LedgerStore, SqlAuditStore
from ais_pipelines.oms.oms import OrderManagementSystem
from ais_pipelines.replay_feed import (
    FLUSH_EVERY,
    MarketFeed,
    NightPlan,
    ReplayError,
    WorkerFeed,
    _providers,
    market_feed,
)
from ais_pipelines.replay_rules import ReplayRules, load_replay_rules
from ais_pipelines.replay_store import ReadCachingWarehouse
from ais_pipelines.warehouse import read_bars, read_table, replace_partition

REPLAY_ACTOR_TAG = "scripted"
APPROVAL_TTL_S = 300
MINUTES_AFTER_OPEN = 30
DIGEST_TABLES = {  # what "same decisions, orders, fills and NAV" means: table → sort key
    "capital_allocations": ["as_of", "candidate_id"],
    "order_proposals": ["as_of", "order_id"],
    "governance_decisions": ["as_of", "order_id"],
    "governance_rule_hits": ["as_of", "order_id", "rule_id"],
    "execution_orders": ["as_of", "order_id"],
    "execution_fills": ["as_of", "fill_id"],
    "pnl_history": ["as_of"],
    "strategy_lifecycle": ["as_of", "strategy_id"],
}
OWNED_FILES = ("warehouse.duckdb", "warehouse.duckdb.wal", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm",
               "audit_anchor.json", "replay_digest.json", "replay_manifest.json")


@dataclass(frozen=True)
class ReplayConfig:
    start: date
    end: date
    out: Path
    policies_dir: Path | None = None
    universe_file: Path | None = None
    provider: str = "sample"
    signing_key: bytes = b"replay-signing-key-not-a-secret-0000"  # a replay signs its own approvals
    quote_seed: int = 7
    ticks: int = 3
    tick_interval_s: float = 60.0
    overwrite: bool = False


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    session: date
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float:
        return (self.total - self.done) / self.rate if self.rate > 0 else math.nan

    def line(self) -> str:
        return (f"[{self.done}/{self.total}] {self.session}  {self.rate:.2f} sessions/s  "
                f"ETA {self.eta_s:.0f} s")


@dataclass
class ReplayResult:
    out: Path
    sessions: list[date]
    digest: str
    seconds: float
    track_record: pd.DataFrame
    scripted_actions: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def warehouse(self) -> Path:
        return self.out / "warehouse.duckdb"

    @property
    def ledger(self) -> Path:
        return self.out / "ledger.sqlite"


# --------------------------------------------------------------------------------------------
# calendar and cadence


def replay_calendars(pol: Policies) -> tuple[str, ...]:
    """The universe's as-of calendars (issue 13): the replay walks their sessions; the first
    one's open and close time the simulated trading day."""
    from ais_pipelines.as_of_calendar import as_of_calendars

    return as_of_calendars(pol.universe)


def replay_sessions(start: date, end: date, calendars: tuple[str, ...] = ("XNYS",)) -> list[date]:
    from ais_pipelines.as_of_calendar import as_of_sessions

    return [d.date() for d in as_of_sessions(calendars, start, end)]


def next_session(day: date, calendars: tuple[str, ...] = ("XNYS",)) -> date:
    from ais_pipelines.as_of_calendar import next_as_of_session

    nxt = next_as_of_session(calendars, day)
    if nxt is None:
        raise ReplayError(f"no {', '.join(calendars)} session after {day}")
    return nxt.date()


def _cron_field(spec: str, value: int, lo: int, hi: int) -> bool:
    for part in spec.split(","):
        step = 1
        if "/" in part:
            part, s = part.split("/")
            step = int(s)
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            a, b = (int(x) for x in part.split("-"))
        else:
            a = b = int(part)
        if a <= value <= b and (value - a) % step == 0:
            return True
    return False


def cron_fires_on(cron: str, day: date) -> bool:
    """Whether a 5-field cron fires on calendar ``day`` (day-of-month / month / day-of-week;
    both day fields restricted → either matches, as cron does)."""
    _m, _h, dom, mon, dow = cron.split()
    if not _cron_field(mon, day.month, 1, 12):
        return False
    wd = (day.weekday() + 1) % 7  # cron: 0 = Sunday
    dom_ok, dow_ok = _cron_field(dom, day.day, 1, 31), _cron_field(dow, wd, 0, 7) or (wd == 0 and "7" in dow)
    if dom != "*" and dow != "*":
        return dom_ok or dow_ok
    return dom_ok and dow_ok


def refit_due(cron: str, session: date, following: date) -> bool:
    """The refit schedule fires on a day in [D, D+1) whose last session is D: D is its fit date."""
    day = session
    while day < following:
        if cron_fires_on(cron, day):
            return True
        day += timedelta(days=1)
    return False


# --------------------------------------------------------------------------------------------
# the stores under ``out``


def _prepare_out(cfg: ReplayConfig) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    used = [n for n in OWNED_FILES if (cfg.out / n).exists()]
    if used and not cfg.overwrite:
        raise ReplayError(f"{cfg.out} already holds a replay ({', '.join(used)}): choose a new --out or --overwrite")
    for n in used:
        (cfg.out / n).unlink()
    import shutil

    for d in ("auction_state", "raw"):
        if (cfg.out / d).exists():
            shutil.rmtree(cfg.out / d)


# --------------------------------------------------------------------------------------------
# one session


def write_partition(con: Any, table: str, frame: pd.DataFrame, as_of: Any) -> int:
    """``replace_partition`` with text columns typed as text (same as the intraday assets)."""
    from ais_pipelines.warehouse import table_exists

    out = frame.drop(columns=["as_of"], errors="ignore").copy()
    if out.empty and not table_exists(con, table):
        return 0  # the first non-empty partition types the table (an empty frame types text as DOUBLE)
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
            out[col] = out[col].astype("string")
    return replace_partition(con, table, out, "as_of", as_of)


def market_of(con: Any, day: date) -> pd.DataFrame:
    """Open and close of every symbol on ``day`` (the session being traded)."""
    bars = read_bars(con, end=day, start=day)
    return bars.set_index("symbol")[["open", "close"]] if not bars.empty else pd.DataFrame(columns=["open", "close"])


def open_session(pol: Policies, con: Any, as_of: date, store: LedgerStore, audit: AuditChain, cfg: ReplayConfig,
                 market: pd.DataFrame, not_before: datetime | None) -> ex.TradingSession:
    """The paper broker in the simulated session after D, quotes walking from D+1's open."""
    from ais_pipelines.core.calendars import get_calendar
    from ais_pipelines.market_data.quotes import SampleQuoteSource

    snapshot = ex.load_snapshot(con, as_of)
    cals = replay_calendars(pol)
    traded = next_session(as_of, cals)
    open_ = get_calendar(cals[0]).session_open(pd.Timestamp(traded)).to_pydatetime()
    clock = SimulatedClock(open_ + timedelta(minutes=MINUTES_AFTER_OPEN))
    if not_before is not None and not_before > clock.now():
        clock.set(not_before)
    opens = {str(s): float(v) for s, v in market["open"].items() if np.isfinite(v) and v > 0}
    quotes = SampleQuoteSource(opens, snapshot.spreads_bps(), snapshot.sigma_daily(), open_, seed=cfg.quote_seed)
    broker = intraday.paper_broker(store, clock, snapshot, quotes, starting_cash=float(pol.mandate.nav),
                                   calendars=dict(pol.universe.calendars))
    return ex.TradingSession(as_of, pol, store, audit, clock, snapshot, quotes, broker)


@dataclass
class _State:
    halted_since: int | None = None  # session index when the kill switch latched
    scripted: int = 0
    perf_rows: list[pd.DataFrame] = field(default_factory=list)


def _scripted_audit(audit: AuditChain, store: LedgerStore, what: str, target: str, payload: dict, now: datetime,
                    codes: list[Any]) -> None:
    ex.audit_or_halt(audit, store, f"replay.scripted.{what}", "replay", target, {**payload, "scripted": True},
                     codes, now)


def _scripted_reviews(session: ex.TradingSession, oms: OrderManagementSystem, key: bytes, rules: ReplayRules,
                      env_policy: ex.EnvironmentPolicy, history: pd.DataFrame, decisions: pd.DataFrame,
                      ctx: pd.DataFrame, state: _State) -> list[ex.ApprovedOrder]:
    """Decide every queued item by the declared rule; returns the approvals submitted."""
    from ais_pipelines import control

    done: list[ex.ApprovedOrder] = []
    queued = decisions[decisions["decision"] == "REVIEW"] if len(decisions) else decisions
    if queued.empty:
        return done
    conf = ctx.set_index("order_id")["confidence"] if "confidence" in ctx.columns else pd.Series(dtype=float)
    rule = rules.review
    for oid, item_id in zip(queued["order_id"], queued["review_item_id"], strict=True):
        c = conf.get(oid)
        c = float(c) if c is not None and pd.notna(c) else None
        verdict = rule.decide(c)
        why = f"scripted replay rule review.{rule.describe()}: confidence {c}"
        now = session.clock.now()
        _scripted_audit(session.audit, session.ledger, "review", f"review:{item_id}",
                        {"rule": rule.describe(), "decision": verdict, "confidence": c}, now,
                        [ReasonCode.HUMAN_APPROVED if verdict == "APPROVE" else ReasonCode.HUMAN_REJECTED])
        state.scripted += 1
        try:
            if verdict == "REJECT":
                control.reject_review(session.ledger, session.audit, item_id, actor=rule.actor, why=why, now=now,
                                      policies=session.policies)
            else:
                res = control.approve_review(
                    session.ledger, session.audit, oms, key, item_id, actor=rule.actor, why=why, now=now,
                    ttl_s=APPROVAL_TTL_S, policies=session.policies,
                    recheck=lambda payload: ex.hard_rule_hits(session, env_policy, payload, history),
                )
                done.append(res.approval)
        except control.ControlError:
            continue  # refused (hard rule now, trading state): the item stays PENDING, as for a person
    return done


def _scripted_resume(store: LedgerStore, audit: AuditChain, pol: Policies, rules: ReplayRules, index: int,
                     now: datetime, state: _State) -> None:
    from ais_pipelines import control

    status = store.current_trading_status()
    if status.mode is not ts.TradingMode.HALTED:
        state.halted_since = None
        return
    if state.halted_since is None:
        state.halted_since = index
    rule = rules.kill_switch
    if rule.resume_after_sessions <= 0 or index - state.halted_since < rule.resume_after_sessions:
        return
    why = f"scripted replay rule kill_switch.resume_after_sessions={rule.resume_after_sessions}"
    _scripted_audit(audit, store, "resume", "trading", {"rule": why, "to": rule.resume_to}, now,
                    [ReasonCode.HUMAN_APPROVED])
    control.change_trading_state(store, audit, "resume", actor=rule.actor, why=why, now=now, to=rule.resume_to,
                                 policies=pol)
    state.scripted += 1
    state.halted_since = None


def _expire_day_orders(oms: OrderManagementSystem, store: LedgerStore) -> int:
    n = 0
    for o in store.list_orders(OPEN_STATES):
        try:
            oms.cancel(o.client_order_id, actor="execution", why="DAY order expires at the close (replay)")
            n += 1
        except Exception:  # noqa: BLE001 - an order that cannot be cancelled stays for reconciliation
            continue
    return n


def run_session(con: Any, pol: Policies, store: LedgerStore, audit: AuditChain, cfg: ReplayConfig,
                rules: ReplayRules, env_policy: ex.EnvironmentPolicy, step: NightPlan, index: int, state: _State,
                feed: MarketFeed | WorkerFeed, timings: dict[str, float]) -> dict[str, Any]:
    as_of, traded = step.session, step.traded
    D = pd.Timestamp(as_of)
    t0 = time.perf_counter()
    market_night = feed.night(con, step)
    t1 = time.perf_counter()
    night = nightly.run_book_night(con, pol, D, cfg.out / nightly.WARM_DIR, market_night)
    t2 = time.perf_counter()
    feed.ingest(con, step)
    market = market_of(con, traded)
    t3 = time.perf_counter()

    key = cfg.signing_key
    session = open_session(pol, con, as_of, store, audit, cfg, market, ex.latest_activity(store))
    _scripted_resume(store, audit, pol, rules, index, session.clock.now(), state)
    if not night.quality.health.ok:  # the data_health_gate's system-level action, same function
        from ais_pipelines.core.data_health import describe_breaches

        why = f"data health of {as_of}: {describe_breaches(night.quality.health.table)}"[:2000]
        store.change_trading_status(lambda s: ts.data_health_breach(
            s, mode=pol.quality.health.on_breach, why=why, now=session.clock.now(), actor="data_health"))
    oms = OrderManagementSystem(store, session.broker, key, session.clock, audit)
    history = read_table(con, "pnl_history")
    ic = ex.assemble_context(session, session.snapshot.proposals, history)
    write_partition(con, "execution_context", ic.context, as_of)
    ctx = ic.context.copy()
    gov = intraday.govern(store, audit, ctx, env_policy, key, ic.now, APPROVAL_TTL_S)
    write_partition(con, "governance_decisions", gov.decisions, as_of)
    write_partition(con, "governance_rule_hits", gov.hits, as_of)
    # Scripted review decisions first (a person at the desk when the session opens); their
    # approvals go through the same OMS call again (idempotent: the original order, once).
    scripted = _scripted_reviews(session, oms, key, rules, env_policy, history, gov.decisions, ctx, state)
    outcome = ex.execute(oms, session.broker, [*gov.approved, *scripted], session.clock, cfg.ticks,
                         cfg.tick_interval_s)
    _expire_day_orders(oms, store)
    orders = outcome.orders.copy()
    props = session.snapshot.proposals
    if len(orders) and len(props) and "strategy_id" in props.columns:
        orders["strategy_id"] = orders["symbol"].map(props.drop_duplicates("symbol").set_index("symbol")["strategy_id"])
    write_partition(con, "execution_orders", orders, as_of)
    write_partition(con, "execution_fills", outcome.fills, as_of)
    ex.close_session(store, audit, as_of, {"as_of": str(as_of), "orders": len(orders), "fills": len(outcome.fills)},
                     session.clock.now())
    t4 = time.perf_counter()

    # D+1's close: marks, NAV, kill switch, reconciliation, realized performance per strategy.
    from ais_pipelines.core.calendars import get_calendar

    close_at = get_calendar(replay_calendars(pol)[0]).session_close(pd.Timestamp(traded)).to_pydatetime()
    if close_at > session.clock.now():
        session.clock.set(close_at)  # type: ignore[attr-defined]
    previous = read_table(con, "positions_snapshot", "as_of < ?", [as_of])
    marks = {str(s): float(v) for s, v in market["close"].items() if np.isfinite(v) and v > 0}
    val = intraday.value_session(session, key, marks, history, previous)
    write_partition(con, "pnl_history", pd.DataFrame([val.row]), as_of)
    write_partition(con, "positions_snapshot", val.state.positions, as_of)
    report = ex.reconcile_book(store, session.broker)
    ex.record_reconciliation(store, audit, report, session.clock.now())

    all_fills = session_fills(store, as_of)
    pnl = symbol_pnl(intraday.opening_values(previous), val.state.positions, all_fills)
    day = strategy_day(pnl, owners(night.auction.allocations), [s.id for s in pol.strategies.strategies],
                       read_table(con, "execution_orders", "as_of = ?", [as_of]))
    state.perf_rows.append(day.assign(as_of=traded))
    perf = performance(pd.concat(state.perf_rows, ignore_index=True), float(pol.mandate.nav))
    replace_partition(con, "strategy_performance", perf, "as_of", traded)
    replace_partition(con, "strategy_pnl", day, "as_of", traded)
    t5 = time.perf_counter()
    for k, v in (("market", t1 - t0), ("book", t2 - t1), ("ingest", t3 - t2), ("intraday", t4 - t3),
                 ("valuation", t5 - t4)):
        timings[k] = timings.get(k, 0.0) + v
    return session_record(night, gov, outcome, val, report, as_of, traded, store)


def session_fills(store: LedgerStore, as_of: date) -> pd.DataFrame:
    """Every fill of the session's orders (executed approvals and scripted review approvals)."""
    rows = [{"symbol": f.symbol, "side": f.side, "qty": f.qty, "price": f.price, "fees": f.fees}
            for o in ex.session_orders(store, as_of) for f in store.fills(o.client_order_id)]
    return pd.DataFrame(rows, columns=["symbol", "side", "qty", "price", "fees"])


def session_record(night: nightly.NightlyOutput, gov: intraday.GovernanceOutput, outcome: ex.ExecutionOutcome,
                   val: intraday.ValuationOutput, report: Any, as_of: date, traded: date,
                   store: LedgerStore) -> dict[str, Any]:
    """One row of the track record (``replay_sessions``) — also the numeric metadata per session."""
    snap = night.regime.snapshot
    summ = night.auction.summary
    cvar = night.cvar.summary.iloc[0] if len(night.cvar.summary) else {}
    s = val.state.summary()
    fills = outcome.fills
    n = max(1, sum(gov.counts.values()))
    return {
        "as_of": as_of, "traded_session": traded,
        "nav": s["nav"], "cash": s["cash"], "pnl_day": s["pnl_day"], "pnl_total": s["pnl_total"],
        "realized_pnl": s["realized_pnl"], "unrealized_pnl": s["unrealized_pnl"], "drawdown": s["drawdown"],
        "daily_loss": s["daily_loss"], "gross_exposure": s["gross_exposure"],
        "regime": str(snap.get("regime")), "p_crisis_5d": float(snap.get("p_crisis_5d", math.nan)),
        "exposure_scale": float(snap.get("exposure_scale", math.nan)), "derisk": bool(snap.get("derisk")),
        "reduce_only": bool(snap.get("reduce_only")),
        "auction_status": str(summ.get("status")),
        "invested_weight": float(night.auction.symbols["target_weight"].sum()) if len(night.auction.symbols) else 0.0,
        "predicted_var": float(cvar.get("var", math.nan)) if len(night.cvar.summary) else math.nan,
        "predicted_cvar": float(cvar.get("cvar_after", math.nan)) if len(night.cvar.summary) else math.nan,
        "cvar_limit": float(cvar.get("limit", math.nan)) if len(night.cvar.summary) else math.nan,
        "turnover": float(summ.get("turnover", 0.0) or 0.0),
        "trade_cost": float(summ.get("total_cost", 0.0) or 0.0),
        "proposals": int((night.proposals.orders["status"] == "PROPOSED").sum()) if len(night.proposals.orders) else 0,
        "approved": gov.counts.get("APPROVE", 0), "review": gov.counts.get("REVIEW", 0),
        "rejected": gov.counts.get("REJECT", 0), "approve_rate": gov.counts.get("APPROVE", 0) / n,
        "orders": len(outcome.orders), "fills": len(fills),
        "filled_notional": float((fills["qty"] * fills["price"]).sum()) if len(fills) else 0.0,
        "fees": float(fills["fees"].sum()) if len(fills) else 0.0,
        "mean_slippage_bps": float(fills["slippage_bps"].mean()) if len(fills) else math.nan,
        "trading_mode": str(store.current_trading_status().mode), "kill_switch": bool(val.row["kill_switch"]),
        "reconciled": bool(report.ok),
        "data_health_ok": bool(night.quality.health.ok),
        "refit": bool(night.refit),
    }


# --------------------------------------------------------------------------------------------
# the whole replay


def replay_digest(con: Any) -> str:
    """SHA-256 over the decision, order, fill and NAV tables, each in a canonical row order.

    Wall-clock columns do not exist on these tables in a replay (every instant comes from the
    simulated market clock), so the digest is a property of inputs and policies alone."""
    h = hashlib.sha256()
    for table, keys in DIGEST_TABLES.items():
        frame = read_table(con, table)
        if frame.empty:
            h.update(f"{table}:empty".encode())
            continue
        frame = frame.sort_values([k for k in keys if k in frame.columns]).reset_index(drop=True)
        frame = frame.reindex(columns=sorted(frame.columns))
        h.update(table.encode())
        h.update(frame.to_csv(index=False, float_format="%.10g").encode())
    return h.hexdigest()


def _no_fsync(store: LedgerStore) -> None:
    """The replay's ledger is a derived, re-creatable artifact: commits without fsync (WAL keeps it
    consistent if the process dies; only an OS crash could lose it, and the replay is re-run)."""
    from sqlalchemy import event

    def pragma(dbapi_con: Any, _record: Any) -> None:
        cur = dbapi_con.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.close()

    event.listen(store.engine, "connect", pragma)
    store.engine.dispose()  # pooled connections reopen with the pragma


def run_replay(cfg: ReplayConfig, progress: Callable[[Progress], None] | None = None) -> ReplayResult:
    from ais_pipelines.blas_threads import one_blas_thread

    with one_blas_thread():  # the market worker is the second core's work, not a BLAS thread
        return _run_replay(cfg, progress)


def _run_replay(cfg: ReplayConfig, progress: Callable[[Progress], None] | None) -> ReplayResult:
    import duckdb

    t_call = time.perf_counter()
    pol = Policies(cfg.policies_dir, cfg.universe_file)
    pol.validate_all()
    rules = load_replay_rules(pol.directory)
    env_policy = ex.load_execution_policies(pol)
    cals = replay_calendars(pol)
    sessions = replay_sessions(cfg.start, cfg.end, cals)
    if not sessions:
        raise ReplayError(f"no {', '.join(cals)} session between {cfg.start} and {cfg.end}")
    if cfg.provider == "sample" and next_session(sessions[-1], cals) > pol.providers.sample.end_session:
        raise ReplayError(f"the sample market ends {pol.providers.sample.end_session}: the last replayed session "
                          f"must leave one session after it to trade (--end before {pol.providers.sample.end_session})")
    _providers(pol, cfg.provider)  # a bad provider name fails here, before anything is written
    _prepare_out(cfg)
    cron = pol.models.refit.cron
    plan = []
    for i, d in enumerate(sessions):
        traded = next_session(d, cals)
        plan.append(NightPlan(d, traded, (i == 0 and rules.refit.initial) or refit_due(cron, d, traded)))
    t0 = time.perf_counter()
    feed = market_feed(cfg, pol, plan)  # the market half starts now, beside the ledger's set-up
    store = LedgerStore.open(f"sqlite:///{(cfg.out / 'ledger.sqlite').resolve()}")
    _no_fsync(store)
    audit_store = SqlAuditStore(store.engine)
    # The replay is the only writer of its own chain: its head is anchored once, at the end (also
    # when a session fails), not after every record (a locked, fsynced file replace each time).
    anchor = AuditAnchor(cfg.out / "audit_anchor.json", audit_store.ledger_id)
    audit = AuditChain(audit_store)
    # The replay works on an in-memory warehouse (no WAL commit per partition write, scans of
    # memory) and persists it to out/warehouse.duckdb at the end, also when a session fails.
    con = ReadCachingWarehouse(duckdb.connect(":memory:"))
    state = _State()
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    worker: dict[str, float] = {}
    ok = False
    phases: dict[str, float] = {"policies": t0 - t_call, "setup": time.perf_counter() - t0}
    try:
        t = time.perf_counter()
        feed.first(con, sessions[0])
        timings["first_ingest"] = time.perf_counter() - t
        for i, step in enumerate(plan):
            # issue 13: the policies in force on D (effective dates), through the same loader
            rows.append(run_session(con, pol.as_of_session(step.session), store, audit, cfg, rules, env_policy, step,
                                    i, state, feed, timings))
            if (i + 1) % FLUSH_EVERY == 0:
                t = time.perf_counter()
                con.flush()  # the held partitions (tables no step has read back since) in batches
                timings["flush"] = timings.get("flush", 0.0) + time.perf_counter() - t
            if progress is not None:
                progress(Progress(i + 1, len(sessions), step.session, time.perf_counter() - t0))
        ok = True
        t = time.perf_counter()
        track = pd.DataFrame(rows)
        track = add_realized_risk(track, pol.risk.horizon_sessions)
        replace_partition(con, "replay_sessions", track.drop(columns=["as_of"]).assign(
            session_as_of=track["as_of"]), "replay_id", "replay")
        write_track_record_extras(con)
        digest = replay_digest(con)
        phases["track_record"] = time.perf_counter() - t
    finally:
        t = time.perf_counter()
        worker = feed.close(ok)
        phases["worker_close"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            persist_warehouse(con, cfg.out / "warehouse.duckdb")
            phases["persist"] = time.perf_counter() - t
        finally:
            t = time.perf_counter()
            con.close()
            audit.anchor = anchor
            head = audit.publish_anchor()
    phases["anchor"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    manifest = {"start": str(cfg.start), "end": str(cfg.end), "sessions": len(sessions), "digest": digest,
                "policies": str(pol.directory), "policy_digest": env_policy.digest, "provider": cfg.provider,
                "audit_head": head.to_metadata() if head is not None else None,
                "scripted_actions": state.scripted, "seconds": round(seconds, 3),
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
                "worker_timings_s": {k: round(v, 3) for k, v in worker.items()},
                "phases_s": {k: round(v, 3) for k, v in phases.items()}}
    (cfg.out / "replay_digest.json").write_text(json.dumps({"digest": digest, "sessions": len(sessions)}, indent=2))
    (cfg.out / "replay_manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    store.dispose()
    return ReplayResult(cfg.out, sessions, digest, seconds, track, state.scripted, timings)


def persist_warehouse(con: Any, path: Path) -> None:
    """Copy the in-memory replay warehouse, every table, into the DuckDB file ``path``."""
    quoted = str(path).replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS replay_file")
    try:
        con.execute("COPY FROM DATABASE memory TO replay_file")
    finally:
        con.execute("DETACH replay_file")


def add_realized_risk(track: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Realized loss over the next ``horizon`` sessions (fraction of NAV at D's decision) next to
    the VaR / CVaR predicted at D — the input of the CVaR backtest; NaN where the replay ends first."""
    t = track.copy()
    nav = t["nav"].astype(float).to_numpy()
    start_nav = np.concatenate([[np.nan], nav[:-1]])
    start_nav[0] = t["nav"].iloc[0] - t["pnl_day"].iloc[0]
    loss = np.full(len(t), np.nan)
    for i in range(len(t)):
        j = i + horizon - 1
        if j < len(t) and start_nav[i] > 0:
            loss[i] = -(nav[j] - start_nav[i]) / start_nav[i]
    t["realized_loss_h"] = loss
    t["var_exceeded"] = t["realized_loss_h"] > t["predicted_var"]
    return t


def write_track_record_extras(con: Any) -> None:
    """Exposure by strategy / stage / sector per session (views over the replay's tables)."""
    from ais_pipelines.warehouse import table_exists

    if table_exists(con, "capital_allocations") and table_exists(con, "strategy_lifecycle"):
        con.execute("""
            CREATE OR REPLACE TABLE replay_exposure AS
            SELECT a.as_of, a.strategy_id, l.stage, c.sector, sum(a.weight) AS weight
            FROM capital_allocations a
            LEFT JOIN strategy_candidates c ON c.as_of = a.as_of AND c.candidate_id = a.candidate_id
            LEFT JOIN strategy_lifecycle l ON l.as_of = a.as_of AND l.strategy_id = a.strategy_id
            WHERE a.weight > 0
            GROUP BY ALL ORDER BY ALL""")
        con.execute("""
            CREATE OR REPLACE TABLE replay_lifecycle_transitions AS
            SELECT as_of, strategy_id, previous_stage, stage, capital_multiplier, reason_codes
            FROM strategy_lifecycle WHERE stage <> previous_stage ORDER BY as_of, strategy_id""")
    if table_exists(con, "governance_rule_hits"):
        con.execute("""
            CREATE OR REPLACE TABLE replay_rule_hits AS
            SELECT rule_id, action, reason_code, count(*) AS hits, count(DISTINCT as_of) AS sessions
            FROM governance_rule_hits GROUP BY ALL ORDER BY hits DESC, rule_id""")

