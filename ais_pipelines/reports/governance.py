"""The governance report (§K2): one self-contained HTML file per as-of session that a risk
officer reads without SQL.

No Dagster here. Three steps, each usable alone:

* :func:`load_governance_inputs` reads what the warehouse holds for session D — the Python
  assets' tables and the ledger snapshot (``ledger_*``). A table that does not exist yet is an
  empty section with a note, never an error.
* :func:`render_governance_report` turns :class:`GovernanceInputs` into one HTML string: inline
  CSS, plots as inline base64 PNG (matplotlib, Agg backend), no script, no external reference.
  Every section says explicitly when nothing was recorded.
* :func:`write_governance_report` does both for a warehouse file (what ``ais report`` calls).

Which orders belong to session D: the orders the execution session *after* D placed on D's
proposals — an order whose payload carries ``as_of`` = D, else one created (market-local
date) after D and on or before the next XNYS session. The book (positions, P&L, §J4 metrics)
is as of the end of that next session: it includes every fill up to then.

P&L uses the conventions of ``core.accounting`` / ``core.metrics`` (average cost, fees in
realized P&L, drawdown as a positive fraction). Marks: the latest close at or before the day,
or that day's last fill price when the bars have not caught up (the demo trades a simulated
session after the last sample bar). The ``pnl_history`` dbt mart follows the same rules.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ais_pipelines.core import metrics as metrics_core
from ais_pipelines.core.accounting import (
    AccountingError,
    local_session_date,
    mark_to_market,
    positions_from_fills,
)
from ais_pipelines.warehouse import read_table, table_exists
from ais_pipelines.warehouse_store import connect_warehouse

SESSION_TZ = "America/New_York"
AS_OF_CALENDAR = "XNYS"
DEFAULT_STARTING_CASH = 100_000.0  # the embedded paper broker's default account
REGIME_NAMES = ("NORMAL", "VOLATILE", "CRISIS")
BELIEF_WINDOW = 260  # sessions of regime beliefs shown in the plot
SYSTEM_ACTORS = frozenset({"system", "oms", "policy", "governance", "review_queue"})

SECTIONS: tuple[tuple[str, str], ...] = (
    ("data-quality", "Data quality"),
    ("regime", "Regime"),
    ("strategies", "Strategies and model decay"),
    ("allocations", "Capital allocations"),
    ("cvar", "CVaR"),
    ("decisions", "Policy decisions and vetoes"),
    ("orders", "Orders and fills"),
    ("pnl", "P&L and drawdown"),
    ("trading-state", "Trading state and overrides"),
)

# One sentence per section, for a reader who was not in the room (issue 14).
SECTION_LEADS: dict[str, str] = {
    "data-quality": "Which symbols had data good enough to trade on, and the dated flags behind each score.",
    "regime": "The market regime the model believes in, and how likely a crisis is within five sessions.",
    "strategies": "Each strategy's lifecycle stage, its capital cap and how much its models have decayed.",
    "allocations": "How the capital auction split the book among strategies and symbols, and why some got none.",
    "cvar": "Expected loss in the worst 5 % of five-session scenarios, against the declared limits.",
    "decisions": "What the pre-trade policy decided for every proposed order, and which rules and vetoes fired.",
    "orders": "Orders sent to the broker in the session, and what was filled at what price.",
    "pnl": "Net asset value, profit and loss and drawdown of the book, from the ledger.",
    "trading-state": "Whether trading was active, paused or halted, and every human override with who and why.",
}

# Column headers in plain words with units; anything else: underscores become spaces.
PLAIN_COLUMNS: dict[str, str] = {
    "p_crisis_5d": "P(crisis within 5 sessions)", "cvar_95": "CVaR 95 %", "var_95": "VaR 95 %",
    "mu_adj": "adjusted expected return", "mu": "expected return", "sigma": "volatility",
    "adv_usd_20d": "20-day ADV (USD)", "spread_bps_est": "spread (bps)", "ewma_vol": "EWMA volatility",
    "data_quality_score": "data-quality score", "qty": "quantity", "avg_price": "average price",
    "nav": "NAV", "pnl": "P&L", "component_cvar": "CVaR contribution", "marginal_cvar": "marginal CVaR",
    "cvar_after": "CVaR after scaling", "as_of": "as-of session", "item_id": "review item",
    "order_id": "order", "client_order_id": "client order id", "rule_id": "rule", "strategy_id": "strategy",
    "bps": "bps", "fee_bps": "fee (bps)", "impact_bps": "impact (bps)", "weight": "weight",
}


def plain_column(name: str) -> str:
    return PLAIN_COLUMNS.get(name, name.replace("_", " "))


def _empty() -> pd.DataFrame:
    return pd.DataFrame()


@dataclass
class GovernanceInputs:
    """Everything the report shows for one as-of session; every frame may be empty."""

    as_of: date
    execution_session: date | None = None
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    data_quality: pd.DataFrame = field(default_factory=_empty)
    quality_flags: pd.DataFrame = field(default_factory=_empty)  # issue 13: dated flag events
    regime: dict[str, Any] = field(default_factory=dict)
    regime_beliefs: pd.DataFrame = field(default_factory=_empty)
    transition: pd.DataFrame = field(default_factory=_empty)
    lifecycle: pd.DataFrame = field(default_factory=_empty)
    decay: pd.DataFrame = field(default_factory=_empty)
    allocations: pd.DataFrame = field(default_factory=_empty)
    auction: dict[str, Any] = field(default_factory=dict)
    cvar: pd.DataFrame = field(default_factory=_empty)
    cvar_components: pd.DataFrame = field(default_factory=_empty)
    proposals: pd.DataFrame = field(default_factory=_empty)
    decisions: pd.DataFrame = field(default_factory=_empty)
    reviews: pd.DataFrame = field(default_factory=_empty)
    orders: pd.DataFrame = field(default_factory=_empty)
    fills: pd.DataFrame = field(default_factory=_empty)
    positions: pd.DataFrame = field(default_factory=_empty)
    pnl: pd.DataFrame = field(default_factory=_empty)
    metrics: dict[str, float] = field(default_factory=dict)
    trading_state: pd.DataFrame = field(default_factory=_empty)
    overrides: pd.DataFrame = field(default_factory=_empty)
    # Which input tables were absent, so an empty section can say why.
    missing_tables: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


# ============================================================================================
# loading


def next_session(as_of: date, calendars: Sequence[str] = (AS_OF_CALENDAR,)) -> date | None:
    """The first as-of session after ``as_of`` on the universe's calendars (the execution
    session of D's decisions)."""
    from ais_pipelines.as_of_calendar import next_as_of_session

    nxt = next_as_of_session(tuple(calendars), as_of)
    return nxt.date() if nxt is not None else None


_local_date = local_session_date  # one rule for the market-local date of a timestamp


def _json(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def codes_text(value: Any) -> str:
    """Reason codes as ``A, B`` whether stored as a JSON list or ``;``-joined text."""
    v = _json(value)
    if v is None:
        return ""
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return ", ".join(p for p in str(v).split(";") if p)


def _for_as_of(con: duckdb.DuckDBPyConnection, table: str, as_of: date, missing: list[str]) -> pd.DataFrame:
    if not table_exists(con, table):
        missing.append(table)
        return _empty()
    cols = {r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}
    if "as_of" not in cols:
        return read_table(con, table)
    return read_table(con, table, "as_of = ?", [as_of])


def _ledger(con: duckdb.DuckDBPyConnection, table: str, missing: list[str]) -> pd.DataFrame:
    name = f"ledger_{table}"
    if not table_exists(con, name):
        missing.append(name)
        return _empty()
    return read_table(con, name)


def _transition(regime: Mapping[str, Any]) -> pd.DataFrame:
    raw = _json(regime.get("transition_json")) or _json(regime.get("transition"))
    try:
        mat = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        return _empty()
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] == 0:
        return _empty()
    names = list(REGIME_NAMES) if mat.shape[0] == len(REGIME_NAMES) else [f"S{i}" for i in range(mat.shape[0])]
    return pd.DataFrame(mat, index=pd.Index(names, name="from"), columns=names)


def _orders_for_session(orders: pd.DataFrame, as_of: date, execution: date | None) -> pd.DataFrame:
    if orders.empty:
        return orders
    payload_as_of = orders["payload"].map(lambda p: (_json(p) or {}).get("as_of") if isinstance(
        _json(p), dict) else None) if "payload" in orders.columns else pd.Series(None, index=orders.index)
    local = _local_date(orders["created_at"])
    end = execution or as_of
    in_window = (local > as_of) & (local <= end)
    tagged = payload_as_of.notna()
    keep = np.where(tagged, payload_as_of.astype(str) == str(as_of), in_window)
    return orders.loc[keep].sort_values(["created_at", "client_order_id"]).reset_index(drop=True)


def expected_prices(orders: pd.DataFrame) -> dict[str, float]:
    """The model price each order was sized on, when its payload carries one."""
    out: dict[str, float] = {}
    if orders.empty or "payload" not in orders.columns:
        return out
    for cid, payload in zip(orders["client_order_id"], orders["payload"], strict=True):
        p = _json(payload)
        if not isinstance(p, dict):
            continue
        for key in ("expected_price", "reference_price", "arrival_price"):
            try:
                v = float(p[key])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(v) and v > 0:
                out[str(cid)] = v
                break
    return out


@dataclass(frozen=True)
class Book:
    """The paper book rebuilt from fills: daily history, marked positions, cash, metrics."""

    history: pd.DataFrame
    positions: pd.DataFrame
    cash: float
    metrics: dict[str, float]


def build_book(
    fills: pd.DataFrame,
    bars: pd.DataFrame,
    *,
    starting_cash: float,
    end: date,
    tz: str = SESSION_TZ,
    orders: pd.DataFrame | None = None,
    decisions: pd.DataFrame | None = None,
) -> Book:
    """Rebuild the book from the ledger's fills up to the end of ``end`` (market-local date).

    ``history`` has the columns of ``core.metrics.pnl_history`` plus ``cash``,
    ``gross_exposure`` and ``open_positions``; ``metrics`` are every §J4 number
    (``core.metrics.portfolio_metrics``) at the end of ``end``.
    """
    empty_hist = pd.DataFrame(columns=[*metrics_core.PNL_HISTORY_COLUMNS, "cash", "gross_exposure",
                                       "open_positions"])
    if fills is None or fills.empty:
        positions = mark_to_market(positions_from_fills(pd.DataFrame(columns=[
            "fill_id", "client_order_id", "symbol", "side", "qty", "price", "fees", "ts"]), starting_cash)[0],
            {}, cash=starting_cash)
        m = metrics_core.portfolio_metrics(positions_mtm=positions, cash=starting_cash, history=empty_hist.loc[:, list(metrics_core.PNL_HISTORY_COLUMNS)],
                                           decisions=_policy_decisions(decisions))
        return Book(empty_hist, positions, starting_cash, m)
    history, per_fill, marks = metrics_core.book_history(fills, bars, starting_cash=starting_cash, end=end, tz=tz)
    f = per_fill.loc[:, ["fill_id", "client_order_id", "symbol", "side", "qty", "price", "fees", "ts"]]
    positions, cash = positions_from_fills(f, starting_cash)
    last_marks = marks.sort_values("day").drop_duplicates("symbol", keep="last").set_index("symbol")["price"]
    mtm = mark_to_market(positions, last_marks.to_dict(), cash=cash)
    m = metrics_core.portfolio_metrics(
        positions_mtm=mtm, cash=cash, history=history.loc[:, list(metrics_core.PNL_HISTORY_COLUMNS)],
        fills=f, expected_prices=expected_prices(orders) if orders is not None else None,
        decisions=_policy_decisions(decisions), tz=tz,
    )
    return Book(history, mtm, cash, m)


MEMO_REPORT_COLUMNS = {"verdict": "memo", "risk_flags": "memo_flags", "counter_thesis": "memo_counter_thesis",
                       "provider": "memo_provider", "prompt_path": "memo_prompt", "memo_id": "memo_id"}


def with_memos(decisions: pd.DataFrame, memos: pd.DataFrame) -> pd.DataFrame:
    """Decisions with their reasoning memo's verdict, flags, counter-thesis, provider and prompt
    (joined on the memo id the decision recorded, else on the symbol)."""
    if decisions.empty or memos.empty:
        return decisions
    m = memos[[c for c in MEMO_REPORT_COLUMNS if c in memos.columns] + ["symbol"]].rename(columns=MEMO_REPORT_COLUMNS)
    if "reasoning_memo_id" in decisions.columns and decisions["reasoning_memo_id"].fillna("").astype(bool).any():
        return decisions.merge(m.drop(columns=["symbol"]), how="left", left_on="reasoning_memo_id",
                               right_on="memo_id").drop(columns=["memo_id"])
    return decisions.merge(m.drop(columns=["memo_id"]), how="left", on="symbol")


def _policy_decisions(decisions: pd.DataFrame | None) -> pd.DataFrame | None:
    """Pre-trade decisions (APPROVE / REVIEW / REJECT) for the gate pass rates, if any."""
    if decisions is None or decisions.empty or "decision" not in decisions.columns:
        return None
    d = decisions.loc[decisions["decision"].astype(str).str.upper().isin(metrics_core.DECISIONS)]
    return d[["decision"]].reset_index(drop=True) if not d.empty else None


def _starting_cash(paper_account: pd.DataFrame, default: float) -> float:
    if paper_account.empty or "starting_cash" not in paper_account.columns:
        return default
    acct = paper_account.sort_values([c for c in ("created_at", "account_id") if c in paper_account.columns])
    return float(acct.iloc[0]["starting_cash"])


def _overrides(trading: pd.DataFrame, reviews: pd.DataFrame, audit: pd.DataFrame) -> pd.DataFrame:
    """What people decided: trading-state changes and review decisions by a named person, and
    audit-log events of the trading-state and override kind by a person."""
    rows: list[dict[str, Any]] = []
    if not trading.empty:
        for r in trading.itertuples():
            if str(r.actor).lower() not in SYSTEM_ACTORS:
                rows.append({"ts": r.ts, "kind": "trading state", "actor": r.actor,
                             "action": f"→ {r.mode}", "why": r.why, "reason_codes": codes_text(r.reason_codes)})
    if not reviews.empty:
        for r in reviews.itertuples():
            if getattr(r, "decided_by", None) and r.status in ("APPROVED", "REJECTED"):
                rows.append({"ts": r.decided_at, "kind": "review", "actor": r.decided_by,
                             "action": f"{r.status} {r.item_id}", "why": r.why,
                             "reason_codes": codes_text(r.reasons)})
    if not audit.empty:
        a = audit.loc[audit["actor"].astype(str).str.lower().map(lambda x: x not in SYSTEM_ACTORS)
                      & audit["event_type"].astype(str).str.contains(r"^(?:order\.cancel|override|manual)")]
        for r in a.itertuples():
            rows.append({"ts": pd.Timestamp(r.ts).tz_localize(None) if pd.Timestamp(r.ts).tzinfo else r.ts,
                         "kind": "audit", "actor": r.actor, "action": f"{r.event_type} {r.subject}",
                         "why": str((_json(r.payload) or {}).get("why", "")) if isinstance(_json(r.payload), dict)
                         else "", "reason_codes": codes_text(r.reason_codes)})
    if not rows:
        return _empty()
    out = pd.DataFrame(rows)
    out["ts"] = pd.to_datetime(out["ts"])
    return out.sort_values("ts").reset_index(drop=True)


def load_governance_inputs(
    duckdb_con: duckdb.DuckDBPyConnection,
    as_of: date | str | pd.Timestamp,
    *,
    default_starting_cash: float = DEFAULT_STARTING_CASH,
    now: datetime | None = None,
    calendars: Sequence[str] = (AS_OF_CALENDAR,),
) -> GovernanceInputs:
    """Read the warehouse for session ``as_of`` (see the module doc for what belongs to it).

    Only reads; tables that do not exist yet become empty sections (listed in
    ``missing_tables``). An unbookable ledger (invalid fills) is a note, not a crash.
    """
    d = pd.Timestamp(as_of).date()
    con = duckdb_con
    missing: list[str] = []
    execution = next_session(d, calendars)
    inputs = GovernanceInputs(as_of=d, execution_session=execution, generated_at=now or datetime.now(UTC))

    dq = _for_as_of(con, "data_quality", d, missing)
    inputs.data_quality = dq.sort_values(["status", "data_quality_score", "symbol"]).reset_index(drop=True) \
        if not dq.empty else dq
    inputs.quality_flags = _for_as_of(con, "quality_flags", d, missing)  # issue 13

    regime = _for_as_of(con, "regime_probabilities", d, missing)
    inputs.regime = regime.iloc[0].to_dict() if not regime.empty else {}
    inputs.transition = _transition(inputs.regime) if inputs.regime else _empty()
    beliefs = _for_as_of(con, "regime_beliefs", d, missing)
    if not beliefs.empty:
        inputs.regime_beliefs = beliefs.sort_values("date").tail(BELIEF_WINDOW).reset_index(drop=True)

    inputs.lifecycle = _for_as_of(con, "strategy_lifecycle", d, missing)
    decay = _for_as_of(con, "model_decay_metrics", d, missing)
    if not decay.empty:
        inputs.decay = (
            decay.groupby(["model", "model_version"], dropna=False)
            .agg(symbols=("symbol", "nunique"), age_days=("age_days", "max"), age_factor=("age_factor", "mean"),
                 error_factor=("error_factor", "mean"), flip_factor=("flip_factor", "mean"),
                 decay_factor=("decay_factor", "mean"),
                 expired=("age_factor", lambda s: int((s == 0).sum())))
            .reset_index()
        )

    alloc = _for_as_of(con, "capital_allocations", d, missing)
    if not alloc.empty:
        sort = [c for c in ("weight", "rank") if c in alloc.columns]
        alloc = alloc.sort_values(sort, ascending=[False, True][: len(sort)]) if sort else alloc
    inputs.allocations = alloc.reset_index(drop=True)
    auction = _for_as_of(con, "auction_summary", d, missing)
    inputs.auction = auction.iloc[0].to_dict() if not auction.empty else {}

    cvar = _for_as_of(con, "portfolio_cvar", d, missing)
    if not cvar.empty and "symbol" in cvar.columns:
        inputs.cvar_components = cvar
    else:
        inputs.cvar = cvar
        for name in ("portfolio_cvar_components", "cvar_components"):
            if table_exists(con, name):
                inputs.cvar_components = _for_as_of(con, name, d, [])
                break
    if inputs.cvar_components.empty and not alloc.empty and "cvar_contribution" in alloc.columns:
        comp = alloc.loc[alloc.get("weight", pd.Series(0, index=alloc.index)).fillna(0) > 0]
        if not comp.empty:
            inputs.cvar_components = comp[[c for c in ("symbol", "strategy_id", "weight", "cvar_contribution",
                                                       "marginal_cvar") if c in comp.columns]]
            inputs.notes.append("CVaR components are the auction's per-candidate contributions "
                                "(capital_allocations.cvar_contribution).")

    inputs.proposals = _for_as_of(con, "order_proposals", d, missing)
    inputs.decisions = _for_as_of(con, "governance_decisions", d, missing)
    if table_exists(con, "reasoning_memos"):  # issue 16: each memo next to its decision
        inputs.decisions = with_memos(inputs.decisions, read_table(con, "reasoning_memos", "as_of = ?", [d]))

    orders = _ledger(con, "orders", missing)
    fills = _ledger(con, "fills", missing)
    reviews = _ledger(con, "review_queue", missing)
    trading = _ledger(con, "trading_state", missing)
    audit = _ledger(con, "audit_log", missing)
    paper = read_table(con, "ledger_paper_account") if table_exists(con, "ledger_paper_account") else _empty()

    inputs.orders = _orders_for_session(orders, d, execution)
    if not fills.empty:
        session_ids = set(inputs.orders["client_order_id"]) if not inputs.orders.empty else set()
        local = _local_date(fills["ts"])
        keep = fills["client_order_id"].isin(session_ids) | ((local > d) & (local <= (execution or d)))
        inputs.fills = fills.loc[keep].sort_values(["ts", "fill_id"]).reset_index(drop=True)
    if not reviews.empty:
        created = _local_date(reviews["created_at"])
        inputs.reviews = reviews.loc[(reviews["status"] == "PENDING") | ((created > d) & (
            created <= (execution or d)))].reset_index(drop=True)

    end = execution or d
    traded = sorted(fills["symbol"].unique()) if not fills.empty else []
    bars = _empty()
    if traded and table_exists(con, "bars"):
        bars = con.execute(
            "SELECT symbol, date, close FROM bars WHERE list_contains(?, symbol) AND date <= ? ORDER BY symbol, date",
            [traded, pd.Timestamp(end).to_pydatetime()],
        ).df()
    start_cash = _starting_cash(paper, default_starting_cash)
    try:
        book = build_book(fills, bars, starting_cash=start_cash, end=end, orders=orders, decisions=inputs.decisions)
        inputs.pnl, inputs.positions, inputs.metrics = book.history, book.positions, book.metrics
    except AccountingError as exc:
        inputs.notes.append(f"The ledger's fills could not be booked ({exc}); P&L is not shown.")

    if not trading.empty:
        inputs.trading_state = trading.sort_values("id").reset_index(drop=True)
    inputs.overrides = _overrides(trading, reviews, audit)
    inputs.missing_tables = tuple(dict.fromkeys(missing))
    return inputs


# ============================================================================================
# rendering

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#1d2330;color:#fff;padding:22px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;color:#c7cede;font-size:13px}
nav{background:#fff;border-bottom:1px solid #dde2ea;padding:8px 32px;font-size:13px}
nav a{margin-right:14px;color:#2b5fb4;text-decoration:none}
main{padding:8px 32px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde2ea;border-radius:8px;margin:18px 0;padding:16px 22px}
h2{font-size:19px;margin:4px 0 12px;border-bottom:2px solid #eef1f5;padding-bottom:6px}
h3{font-size:15px;margin:16px 0 8px;color:#3a4356}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px;width:auto}
th{background:#eef1f5;text-align:left;padding:5px 9px;border-bottom:1px solid #d3d9e3;white-space:nowrap}
td{padding:4px 9px;border-bottom:1px solid #eef1f5;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0 4px}
.card{border:1px solid #dde2ea;border-radius:6px;padding:8px 14px;min-width:130px;background:#fafbfd}
.card .k{font-size:11px;color:#5d6679;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:19px;font-weight:600;margin-top:2px}
.ok{color:#1d7a46} .warn{color:#b46a00} .bad{color:#b3261e}
.pill{display:inline-block;border-radius:10px;padding:1px 8px;font-size:11.5px;font-weight:600}
.pill.ok{background:#e3f4ea} .pill.warn{background:#fff1d6} .pill.bad{background:#fbe3e1}
.empty{color:#5d6679;font-style:italic;background:#f7f8fa;border-left:3px solid #c5ccd8;padding:8px 12px}
.note{color:#5d6679;font-size:12.5px}
img.plot{max-width:100%;height:auto;border:1px solid #eef1f5;border-radius:4px;margin:6px 0}
footer{color:#7a8396;font-size:12px;padding:0 32px 30px}
.scroll{overflow-x:auto;max-width:100%}
.lead{color:#3a4356;margin:0 0 8px}
"""

_GOOD = {"VALID", "APPROVE", "APPROVED", "ACTIVE", "FILLED", "NORMAL", "ALLOCATED", "OPTIMAL", "PROPOSED"}
_WARN = {"EXCLUDED", "NOT_ALLOCATED", "REVIEW", "PENDING", "REDUCING", "PAUSED", "VOLATILE", "PARTIALLY_FILLED", "INSUFFICIENT_HISTORY",
         "SUBMITTED", "ACCEPTED", "NEW", "CANCEL_PENDING"}
_BAD = {"INVALID_DATA", "REJECT", "REJECTED", "HALTED", "CRISIS", "CANCELLED", "EXPIRED", "VETOED", "INFEASIBLE",
        "SOLVER_FAILED", "NO_CANDIDATES", "REFUSED"}
STATUS_COLUMNS = {"status", "decision", "state", "mode", "regime", "stage", "order_state", "symbol_status",
                  "eligibility"}


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _pill(v: Any) -> str:
    s = str(v)
    cls = "ok" if s in _GOOD else "warn" if s in _WARN else "bad" if s in _BAD else ""
    return f'<span class="pill {cls}">{_esc(s)}</span>' if cls else _esc(s)


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NaT:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def fmt_num(v: Any, kind: str = "num") -> str:
    """Numbers for people: money with separators, fractions as %, undefined as '—'."""
    if _is_missing(v):
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return _esc(v)
    if not math.isfinite(x):
        return "—"
    if x == 0:
        x = 0.0  # no "-0"
    if kind == "pct":
        return f"{x * 100:,.2f} %"
    if kind == "money":
        return f"{x:,.2f}"
    if kind == "bps":
        return f"{x:,.1f} bps"
    if x != 0 and abs(x) < 1e-3:  # plain decimals, 3 significant digits: no e-notation for a reader
        return np.format_float_positional(x, precision=3, unique=False, fractional=False, trim="-")
    return f"{x:,.4f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:,.0f}"


def _cell(col: str, v: Any, kinds: Mapping[str, str]) -> str:
    if _is_missing(v):
        return '<td class="num">—</td>' if col in kinds else "<td>—</td>"
    if col in STATUS_COLUMNS:
        return f"<td>{_pill(v)}</td>"
    if "reason" in col or col in ("reasons", "veto_reason"):
        return f"<td>{_esc(codes_text(v))}</td>"
    if isinstance(v, pd.Timestamp | datetime):
        ts = pd.Timestamp(v)
        return f"<td>{_esc(ts.strftime('%Y-%m-%d %H:%M:%S') if (ts.hour or ts.minute or ts.second) else ts.date())}</td>"
    if isinstance(v, bool | np.bool_):
        return f"<td>{'yes' if v else 'no'}</td>"
    if isinstance(v, int | float | np.integer | np.floating):
        return f'<td class="num">{fmt_num(v, kinds.get(col, "num"))}</td>'
    return f"<td>{_esc(v)}</td>"


def html_table(frame: pd.DataFrame, columns: Sequence[str] | None = None, *, kinds: Mapping[str, str] | None = None,
               max_rows: int = 60, index: bool = False) -> str:
    """An escaped HTML table of ``frame`` (preferred ``columns`` first if present)."""
    kinds = dict(kinds or {})
    f = frame.reset_index() if index else frame
    if columns is not None:
        cols = [c for c in columns if c in f.columns]
        f = f[cols] if cols else f
    shown = f.head(max_rows)
    head = "".join(f"<th>{_esc(plain_column(str(c)))}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(_cell(str(c), v, kinds) for c, v in zip(shown.columns, row, strict=True)) + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    more = f'<p class="note">… {len(f) - max_rows} more rows</p>' if len(f) > max_rows else ""
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{more}'


def kv_table(pairs: Iterable[tuple[str, Any]], kinds: Mapping[str, str] | None = None) -> str:
    kinds = dict(kinds or {})
    rows = "".join(f"<tr><th>{_esc(plain_column(str(k)))}</th>{_cell(k, v, kinds)}</tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def cards(items: Iterable[tuple[str, str, str]]) -> str:
    """KPI cards: (label, formatted value, css class)."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_esc(k)}</div><div class="v {cls}">{v}</div></div>' for k, v, cls in items
    ) + "</div>"


def nothing(what: str, why: str = "") -> str:
    return f'<p class="empty">Nothing recorded: {_esc(what)}{(" — " + _esc(why)) if why else ""}.</p>'


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}"/>'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _why_missing(inputs: GovernanceInputs, table: str) -> str:
    return f"table {table} is not in the warehouse yet" if table in inputs.missing_tables else \
        f"no rows for session {inputs.as_of}"


# --- sections -------------------------------------------------------------------------------


def _section_data_quality(i: GovernanceInputs) -> str:
    dq = i.data_quality
    if dq.empty:
        return nothing(f"no data-quality assessment for {i.as_of}", _why_missing(i, "data_quality"))
    counts = dq["status"].value_counts()
    valid = int(counts.get("VALID", 0))
    excluded = dq.loc[dq["status"] != "VALID"]
    out = [cards([
        ("symbols assessed", f"{len(dq)}", ""),
        ("tradable (VALID)", f"{valid}", "ok"),
        ("INVALID_DATA", f"{int(counts.get('INVALID_DATA', 0))}", "bad" if counts.get("INVALID_DATA") else ""),
        ("INSUFFICIENT_HISTORY", f"{int(counts.get('INSUFFICIENT_HISTORY', 0))}",
         "warn" if counts.get("INSUFFICIENT_HISTORY") else ""),
        ("mean score", fmt_num(dq["data_quality_score"].mean()), ""),
    ])]
    out.append("<h3>Excluded symbols and why</h3>")
    if excluded.empty:
        out.append('<p class="note">No symbol was excluded: every symbol passed the quality (score ≥ 0.6) '
                   "and history (≥ 1260 valid sessions) gates.</p>")
    else:
        out.append('<p class="note">Stored and shown, never traded.</p>')
        out.append(html_table(excluded, ["symbol", "asset_class", "status", "data_quality_score", "valid_sessions",
                                          "expected_sessions", "missing_sessions", "return_spikes", "stale_prices",
                                          "reason_codes"]))
    plt = _plt()
    shown = dq.sort_values("data_quality_score")
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.22 * len(shown) + 1)))
    colors = shown["status"].map({"VALID": "#2e8b57", "INVALID_DATA": "#c0392b"}).fillna("#e69b00")
    ax.barh(shown["symbol"].astype(str), shown["data_quality_score"], color=colors)
    ax.axvline(0.6, color="#333", ls="--", lw=1)
    ax.text(0.6, -0.9, " invalid below 0.6", fontsize=8, va="top")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("DATA_QUALITY_SCORE (green VALID, orange INSUFFICIENT_HISTORY, red INVALID_DATA)")
    ax.tick_params(axis="y", labelsize=8)
    out.append(_png(fig))
    out.append("<h3>All symbols</h3>")
    out.append(html_table(dq, ["symbol", "asset_class", "status", "data_quality_score", "valid_sessions",
                               "reason_codes"], max_rows=200))
    out.append(_flag_events_html(i))
    return "".join(out)


def _flag_events_html(i: GovernanceInputs) -> str:
    """Issue 13: when the flags happened — a per-symbol timeline of the dated events."""
    from ais_pipelines.reports.quality_timeline import flag_timeline

    ev = i.quality_flags
    out = ["<h3>Flag events by symbol and year</h3>"]
    if ev.empty:
        out.append(nothing(f"no dated flag events for {i.as_of}", _why_missing(i, "quality_flags")
                           if "quality_flags" in i.missing_tables else "every assessed session was clean"))
        return "".join(out)
    out.append('<p class="note">Each count is a dated event of table <code>quality_flags</code> '
               "(<code>ais quality show SYMBOL</code> lists them); split_adjusted and dividend_adjusted are "
               "informational (the adjusted series is used).</p>")
    out.append(html_table(flag_timeline(ev), max_rows=120))
    plt = _plt()
    symbols = sorted(ev["symbol"].astype(str).unique())
    flags = sorted(ev["flag"].astype(str).unique())
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.25 * len(symbols) + 1)))
    markers = "o^sDvP*Xh<>d"
    for k, flag in enumerate(flags):
        e = ev[ev["flag"] == flag]
        ax.scatter(pd.to_datetime(e["session"]), [symbols.index(str(s)) for s in e["symbol"]], s=12,
                   marker=markers[k % len(markers)], label=flag)
    ax.set_yticks(range(len(symbols)), symbols, fontsize=8)
    _date_axis(ax)
    ax.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.08))
    out.append(_png(fig))
    return "".join(out)


def _section_regime(i: GovernanceInputs) -> str:
    r = i.regime
    if not r:
        return nothing(f"no regime assessment for {i.as_of}", _why_missing(i, "regime_probabilities"))
    p_crisis = r.get("p_crisis_5d")
    threshold = r.get("threshold")
    crisis_cls = "bad" if (p_crisis is not None and threshold is not None and not _is_missing(p_crisis)
                           and p_crisis > threshold) else "ok"
    out = [cards([
        ("regime", _pill(r.get("regime", "—")), ""),
        ("p_crisis_5d", fmt_num(p_crisis, "pct"), crisis_cls),
        ("de-risk threshold", fmt_num(threshold, "pct"), ""),
        ("exposure scale", fmt_num(r.get("exposure_scale")), ""),
        ("reduce-only", "yes" if r.get("reduce_only") else "no", "bad" if r.get("reduce_only") else ""),
        ("fail-closed", "yes" if r.get("fail_closed") else "no", "bad" if r.get("fail_closed") else ""),
    ])]
    out.append("<h3>Current beliefs (filtered probabilities)</h3>")
    out.append(kv_table([(n, r.get(f"belief_{n.lower()}")) for n in REGIME_NAMES],
                        {n: "pct" for n in REGIME_NAMES}))
    out.append("<h3>Transition matrix (one session)</h3>")
    if i.transition.empty:
        out.append(nothing("no fitted transition matrix", "the regime fit failed or fell back"))
    else:
        out.append(html_table(i.transition, kinds={c: "pct" for c in i.transition.columns}, index=True))
    out.append("<h3>Inputs and reason codes</h3>")
    out.append(kv_table([(k, r.get(k)) for k in ("index_vs_sma200", "vol_percentile", "vix_proxy", "corr_spike",
                                                 "fit_model_version", "fit_is_fallback", "reason_codes") if k in r]))
    b = i.regime_beliefs
    if not b.empty and all(n in b.columns for n in REGIME_NAMES):
        plt = _plt()
        fig, ax = plt.subplots(figsize=(10, 2.8))
        x = pd.to_datetime(b["date"])
        ax.stackplot(x, *(b[n].fillna(0).to_numpy() for n in REGIME_NAMES), labels=REGIME_NAMES,
                     colors=["#7fb89a", "#f0c05a", "#d9675e"], alpha=0.9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("belief")
        ax.legend(loc="upper left", fontsize=8, ncol=3)
        ax.set_title(f"Filtered regime probabilities, last {len(b)} sessions", fontsize=10)
        _date_axis(ax)
        out.append(_png(fig))
    return "".join(out)


def _section_strategies(i: GovernanceInputs) -> str:
    out = ["<h3>Strategy lifecycle</h3>"]
    if i.lifecycle.empty:
        out.append(nothing(f"no lifecycle state for {i.as_of}", _why_missing(i, "strategy_lifecycle")))
    else:
        out.append(html_table(i.lifecycle, ["strategy_id", "model", "stage", "previous_stage", "stage_since", "nav_cap",
                                            "capital_multiplier", "effective_cap", "proving", "reason_codes"],
                              kinds={"nav_cap": "pct", "effective_cap": "pct"}))
    out.append("<h3>Model decay (mean over symbols)</h3>")
    if i.decay.empty:
        out.append(nothing(f"no decay metrics for {i.as_of}", _why_missing(i, "model_decay_metrics")))
    else:
        out.append(html_table(i.decay))
    return "".join(out)


def _section_allocations(i: GovernanceInputs) -> str:
    a = i.allocations
    auction = ""
    if i.auction:
        status = str(i.auction.get("status", "—"))
        auction = cards([("auction status", _pill(status), ""),
                         ("reason codes", _esc(codes_text(i.auction.get("reason_codes")) or "—"), "")])
        if i.auction.get("message"):
            auction += f'<p class="note">{_esc(i.auction.get("message"))}</p>'
    if a.empty:
        return auction + nothing(f"no capital allocations for {i.as_of}", _why_missing(i, "capital_allocations") +
                                 "; nothing trades without the auction")
    w = a["weight"].fillna(0) if "weight" in a.columns else pd.Series(0.0, index=a.index)
    allocated = a.loc[w > 0]
    vetoed = int(a["vetoed"].fillna(False).astype(bool).sum()) if "vetoed" in a.columns else 0
    out = [auction, cards([
        ("candidates", f"{len(a)}", ""),
        ("allocated", f"{len(allocated)}", "ok" if len(allocated) else "warn"),
        ("invested weight", fmt_num(w.sum(), "pct"), ""),
        ("cash weight", fmt_num(1 - w.sum(), "pct"), ""),
        ("vetoed", f"{vetoed}", "bad" if vetoed else ""),
    ])]
    cols = ["candidate_id", "strategy_id", "symbol", "decision", "weight", "rank", "reason_codes", "mu_adj",
            "mu_contribution", "cvar_contribution", "liquidity_cost", "correlation", "data_quality_penalty",
            "model_decay_penalty", "binding_cap", "vetoed", "veto_reason"]
    kinds = {"weight": "pct"}
    out.append("<h3>Allocated</h3>")
    out.append(html_table(allocated, cols, kinds=kinds) if not allocated.empty else
               nothing("no candidate received capital", "see the reason codes below"))
    if not allocated.empty:
        plt = _plt()
        by_sym = allocated.groupby("symbol")["weight"].sum().sort_values()
        fig, ax = plt.subplots(figsize=(8, max(2, 0.3 * len(by_sym) + 1)))
        ax.barh(by_sym.index.astype(str), by_sym.to_numpy() * 100, color="#2b5fb4")
        ax.set_xlabel("weight (% of NAV)")
        out.append(_png(fig))
    rest = a.loc[w <= 0]
    out.append("<h3>Not allocated, with reason codes</h3>")
    out.append(html_table(rest, cols, kinds=kinds, max_rows=80) if not rest.empty else
               '<p class="note">Every candidate received capital.</p>')
    return "".join(out)


def _section_cvar(i: GovernanceInputs) -> str:
    out = []
    if i.cvar.empty:
        out.append(nothing(f"no portfolio CVaR for {i.as_of}", _why_missing(i, "portfolio_cvar")))
    else:
        row = i.cvar.iloc[0].to_dict()
        cvar = next((row[k] for k in ("cvar", "portfolio_cvar", "cvar_95") if k in row), None)
        after = row.get("cvar_after", cvar)
        limit = next((row[k] for k in ("limit", "cvar_limit", "portfolio_limit") if k in row), None)
        breach = bool(row.get("portfolio_breach")) if "portfolio_breach" in row else (
            not _is_missing(cvar) and not _is_missing(limit) and float(cvar) > float(limit))
        residual = bool(row.get("residual_breach")) if "residual_breach" in row else breach
        out.append(cards([
            ("portfolio CVaR (target)", fmt_num(cvar, "pct"), "bad" if breach else "ok"),
            ("after breach scaling", fmt_num(after, "pct"), "bad" if residual else "ok"),
            ("limit", fmt_num(limit, "pct"), ""),
            ("component limit", fmt_num(row.get("component_limit"), "pct"), ""),
            ("scale", fmt_num(row.get("scale")), "warn" if not _is_missing(row.get("scale")) and
             float(row.get("scale", 1.0)) < 1 else ""),
            ("in breach", "yes" if breach else "no", "bad" if breach else "ok"),
        ]))
        pct = {k: "pct" for k in ("var", "cvar", "cvar_after", "limit", "component_limit", "gross_weight")}
        out.append(kv_table([(k, v) for k, v in row.items() if k != "as_of"], pct))
    out.append("<h3>Components (Euler)</h3>")
    comp = i.cvar_components
    if comp.empty:
        out.append(nothing("no CVaR components", "no position carries risk this session"))
    else:
        pct = {k: "pct" for k in ("weight", "target_weight", "component_cvar", "component_after", "marginal_cvar",
                                  "cvar_contribution")}
        out.append(html_table(comp.drop(columns=["as_of"], errors="ignore"), kinds=pct))
        value_col = next((c for c in ("component_after", "component_cvar", "cvar_contribution", "component")
                          if c in comp.columns), None)
        if value_col and "symbol" in comp.columns:
            plt = _plt()
            s = comp.groupby("symbol")[value_col].sum().sort_values()
            fig, ax = plt.subplots(figsize=(8, max(2, 0.3 * len(s) + 1)))
            ax.barh(s.index.astype(str), s.to_numpy() * 100, color="#b3261e")
            limit = i.cvar.iloc[0].get("component_limit") if not i.cvar.empty else None
            if limit is not None and not _is_missing(limit):
                ax.axvline(float(limit) * 100, color="#333", ls="--", lw=1)
            ax.set_xlabel(f"{value_col} (% of NAV; dashed: component limit)")
            out.append(_png(fig))
    return "".join(out)


def _section_decisions(i: GovernanceInputs) -> str:
    out = []
    d = i.decisions
    out.append("<h3>Pre-trade policy decisions</h3>")
    if d.empty:
        out.append(nothing(f"no policy decisions for {i.as_of}", _why_missing(i, "governance_decisions")))
    else:
        if "decision" in d.columns:
            counts = d["decision"].astype(str).value_counts()
            out.append(cards([(k, f"{int(counts.get(k, 0))}", c) for k, c in
                              (("APPROVE", "ok"), ("REVIEW", "warn"), ("REJECT", "bad"))]))
        out.append(html_table(d.drop(columns=["as_of"], errors="ignore"),
                              ["order_id", "candidate_id", "symbol", "side", "stage", "decision", "reason_codes",
                               "requested_qty", "approved_qty", "n_hits", "undetermined", "vetoed", "veto_reason",
                               "expires_at", "environment",
                               "memo", "memo_flags", "memo_counter_thesis", "memo_provider", "memo_prompt"]))
    out.append("<h3>Governance vetoes</h3>")
    vetoes = []
    if not d.empty:
        vetoed = d["vetoed"].fillna(False).astype(bool) if "vetoed" in d.columns else pd.Series(False, index=d.index)
        if "reason_codes" in d.columns:  # a governance veto (§H4) is a REJECT with a VETO_* code
            vetoed |= d["reason_codes"].map(lambda c: "VETO_" in codes_text(c))
        vetoes.append(d.loc[vetoed].assign(veto_reason=d.loc[vetoed, "reason_codes"].map(
            lambda c: ", ".join(x for x in codes_text(c).split(", ") if x.startswith("VETO_"))))
            if "reason_codes" in d.columns else d.loc[vetoed])
    if not i.allocations.empty and "vetoed" in i.allocations.columns:
        vetoes.append(i.allocations.loc[i.allocations["vetoed"].fillna(False).astype(bool)])
    v = pd.concat(vetoes, ignore_index=True) if vetoes else _empty()
    out.append(html_table(v, ["candidate_id", "order_id", "symbol", "veto_reason", "reason_codes"]) if not v.empty
               else nothing("no veto", "no candidate or order was vetoed this session"))
    out.append("<h3>Order proposals</h3>")
    p = i.proposals
    out.append(html_table(p, ["order_id", "symbol", "side", "qty", "notional", "target_weight", "current_weight",
                              "impact_bps", "style", "status", "reduces_position", "strategy_id", "confidence",
                              "reason_codes"], kinds={"notional": "money", "target_weight": "pct",
                                                      "current_weight": "pct"})
               if not p.empty
               else nothing(f"no order proposals for {i.as_of}", _why_missing(i, "order_proposals")))
    out.append("<h3>Human review queue</h3>")
    r = i.reviews
    if r.empty:
        out.append(nothing("no review item", "nothing was sent to a person"))
    else:
        r = r.assign(symbol=r["order_payload"].map(lambda p: (_json(p) or {}).get("symbol") if isinstance(
            _json(p), dict) else None)) if "order_payload" in r.columns else r
        out.append(html_table(r, ["item_id", "symbol", "status", "reasons", "created_at", "decided_by", "decided_at",
                                  "why"]))
    return "".join(out)


def _section_orders(i: GovernanceInputs) -> str:
    o, f = i.orders, i.fills
    window = (f"created after the close of {i.as_of} through session {i.execution_session}"
              if i.execution_session else f"created after {i.as_of}")
    if o.empty and f.empty:
        return nothing(f"no orders or fills for session {i.as_of} ({window})",
                       _why_missing(i, "ledger_orders") if "ledger_orders" in i.missing_tables else "")
    states = o["state"].value_counts() if not o.empty else pd.Series(dtype=int)
    notional = float((f["qty"] * f["price"]).sum()) if not f.empty else 0.0
    out = [cards([
        ("orders", f"{len(o)}", ""),
        ("filled", f"{int(states.get('FILLED', 0))}", "ok"),
        ("partially filled", f"{int(states.get('PARTIALLY_FILLED', 0))}", "warn" if states.get("PARTIALLY_FILLED") else ""),
        ("rejected / cancelled / expired",
         f"{int(states.get('REJECTED', 0) + states.get('CANCELLED', 0) + states.get('EXPIRED', 0))}", ""),
        ("fills", f"{len(f)}", ""),
        ("traded notional", fmt_num(notional, "money"), ""),
    ]), f'<p class="note">Orders {_esc(window)}.</p>', "<h3>Orders</h3>"]
    out.append(html_table(o, ["client_order_id", "symbol", "side", "qty", "order_type", "limit_price", "mode",
                              "state", "filled_qty", "avg_fill_price", "reduce_only", "reason_codes", "created_at"],
                          kinds={"avg_fill_price": "money", "limit_price": "money"})
               if not o.empty else nothing("no orders", "fills below belong to earlier orders"))
    out.append("<h3>Fills</h3>")
    if f.empty:
        out.append(nothing("no fills", "no order was executed"))
    else:
        f = f.assign(notional=f["qty"] * f["price"])
        out.append(html_table(f, ["fill_id", "client_order_id", "symbol", "side", "qty", "price", "fees", "notional",
                                  "ts"], kinds={"price": "money", "fees": "money", "notional": "money"}))
    return "".join(out)


def _section_pnl(i: GovernanceInputs) -> str:
    m, h = i.metrics, i.pnl
    out = []
    if m:
        dd = m.get("drawdown", math.nan)
        out.append(cards([
            ("NAV", fmt_num(m.get("nav"), "money"), ""),
            ("realized P&L", fmt_num(m.get("realized_pnl"), "money"), ""),
            ("unrealized P&L", fmt_num(m.get("unrealized_pnl"), "money"), ""),
            ("drawdown", fmt_num(dd, "pct"), "bad" if (not _is_missing(dd) and dd >= 0.03) else ""),
            ("max drawdown", fmt_num(m.get("max_drawdown"), "pct"), ""),
            ("gross exposure", fmt_num(m.get("gross_exposure"), "money"), ""),
            ("leverage", fmt_num(m.get("leverage")), ""),
            ("turnover", fmt_num(m.get("turnover")), ""),
            ("Sharpe", fmt_num(m.get("sharpe")), ""),
            ("slippage vs model", fmt_num(m.get("slippage_bps"), "bps"), ""),
        ]))
    if h.empty:
        out.append(nothing("no P&L history", "the paper book has no fills up to this session"))
    else:
        plt = _plt()
        x = pd.to_datetime(h["date"])
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
        ax1.plot(x, h["nav"], color="#2b5fb4", marker="o" if len(h) < 30 else None, lw=1.5)
        ax1.plot(x, h["high_water_mark"], color="#999", ls="--", lw=1)
        ax1.set_ylabel("NAV")
        ax1.set_title("NAV (high-water mark dashed) and drawdown", fontsize=10)
        ax2.fill_between(x, -h["drawdown"].astype(float) * 100, 0, color="#d9675e", step="mid")
        ax2.set_ylabel("drawdown %")
        _date_axis(ax2)
        out.append(_png(fig))
        out.append("<h3>Daily P&L</h3>")
        out.append(html_table(h.iloc[::-1], ["date", "nav", "daily_pnl", "daily_return", "realized_pnl",
                                             "unrealized_pnl", "drawdown", "high_water_mark", "gross_exposure"],
                              kinds={"nav": "money", "daily_pnl": "money", "daily_return": "pct", "realized_pnl": "money",
                                     "unrealized_pnl": "money", "drawdown": "pct", "high_water_mark": "money",
                                     "gross_exposure": "money"}, max_rows=30))
    out.append("<h3>Positions</h3>")
    p = i.positions
    if p.empty or not (p["qty"].abs() >= 1e-9).any():
        out.append(nothing("no open position"))
    else:
        out.append(html_table(p.loc[p["qty"].abs() >= 1e-9], ["symbol", "qty", "avg_cost", "price", "market_value",
                                                                 "unrealized_pnl", "realized_pnl", "weight"],
                              kinds={"avg_cost": "money", "price": "money", "market_value": "money",
                                     "unrealized_pnl": "money", "realized_pnl": "money", "weight": "pct"}))
    if m:
        out.append("<h3>All portfolio metrics</h3>")
        out.append(kv_table(sorted(m.items())))
    return "".join(out)


def _section_trading_state(i: GovernanceInputs) -> str:
    t = i.trading_state
    out = []
    if t.empty:
        out.append(cards([("trading state", _pill("ACTIVE"), "")]))
        out.append(nothing("no trading-state change",
                           "the ledger's history is empty, which means ACTIVE (a fresh install)"
                           if "ledger_trading_state" not in i.missing_tables else "no ledger snapshot yet"))
    else:
        cur = t.iloc[-1]
        out.append(cards([("trading state", _pill(cur["mode"]), ""),
                          ("latched", "yes" if bool(cur.get("latched")) else "no", "bad" if cur.get("latched") else ""),
                          ("since", _esc(pd.Timestamp(cur["ts"]).strftime("%Y-%m-%d %H:%M UTC")), ""),
                          ("by", _esc(cur["actor"]), "")]))
        out.append("<h3>History</h3>")
        out.append(html_table(t.iloc[::-1], ["ts", "mode", "actor", "why", "reason_codes", "latched"]))
    out.append("<h3>Human overrides</h3>")
    out.append(html_table(i.overrides, ["ts", "kind", "actor", "action", "why", "reason_codes"])
               if not i.overrides.empty else nothing("no override", "no person paused, resumed, halted or decided a "
                                                                      "review"))
    return "".join(out)


_RENDERERS = {
    "data-quality": _section_data_quality,
    "regime": _section_regime,
    "strategies": _section_strategies,
    "allocations": _section_allocations,
    "cvar": _section_cvar,
    "decisions": _section_decisions,
    "orders": _section_orders,
    "pnl": _section_pnl,
    "trading-state": _section_trading_state,
}


def _summary(i: GovernanceInputs) -> str:
    dq = i.data_quality
    tradable = f"{int((dq['status'] == 'VALID').sum())} / {len(dq)}" if not dq.empty else "—"
    mode = str(i.trading_state.iloc[-1]["mode"]) if not i.trading_state.empty else "ACTIVE"
    invested = (fmt_num(i.allocations["weight"].fillna(0).sum(), "pct")
                if not i.allocations.empty and "weight" in i.allocations.columns else "—")
    return cards([
        ("tradable symbols", tradable, ""),
        ("regime", _pill(i.regime.get("regime", "—")) if i.regime else "—", ""),
        ("p_crisis_5d", fmt_num(i.regime.get("p_crisis_5d"), "pct") if i.regime else "—", ""),
        ("invested weight", invested, ""),
        ("orders / fills", f"{len(i.orders)} / {len(i.fills)}", ""),
        ("NAV", fmt_num(i.metrics.get("nav"), "money") if i.metrics else "—", ""),
        ("drawdown", fmt_num(i.metrics.get("drawdown"), "pct") if i.metrics else "—", ""),
        ("trading state", _pill(mode), ""),
    ])


def render_governance_report(sections: GovernanceInputs) -> str:
    """One self-contained HTML document (inline CSS and PNGs; no script, no external link)."""
    i = sections
    body = []
    for anchor, title in SECTIONS:
        try:
            content = _RENDERERS[anchor](i)
        except Exception as exc:  # a broken section must not hide the others
            content = f'<p class="empty bad">This section could not be rendered: {_esc(type(exc).__name__)}: ' \
                      f"{_esc(exc)}</p>"
        lead = f'<p class="lead">{_esc(SECTION_LEADS[anchor])}</p>' if anchor in SECTION_LEADS else ""
        body.append(f'<section id="{anchor}"><h2>{_esc(title)}</h2>{lead}{content}</section>')
    notes = "".join(f"<li>{_esc(n)}</li>" for n in i.notes)
    missing = ", ".join(i.missing_tables)
    execution = f" · execution session {i.execution_session}" if i.execution_session else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>Governance report — session {_esc(i.as_of)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>Governance report — session {_esc(i.as_of)}</h1>
<p>AIS Pipelines · as-of session {_esc(i.as_of)}{_esc(execution)} · generated
{_esc(pd.Timestamp(i.generated_at).strftime('%Y-%m-%d %H:%M:%S %Z').strip())}</p></header>
<nav>{''.join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in SECTIONS)}</nav>
<main>
<section id="summary"><h2>Summary</h2>{_summary(i)}
{f'<ul class="note">{notes}</ul>' if notes else ''}
{f'<p class="note">Not in the warehouse yet (their sections say so): {_esc(missing)}.</p>' if missing else ''}
</section>
{''.join(body)}
</main>
<footer>Every number comes from the warehouse and the ledger snapshot of this session. Times are UTC;
weights, CVaR and drawdowns are fractions of NAV shown in %. Reason codes are documented in docs/reason_codes.md. Survival over profit, governance over speed, CVaR over Sharpe, fail closed.
</footer>
</body></html>
"""


# ============================================================================================
# files


def report_path(out_dir: str | Path, as_of: date | str) -> Path:
    return Path(out_dir) / f"governance_{pd.Timestamp(as_of).date()}.html"


def write_metrics_file(metrics: Mapping[str, float], as_of: date | str, metrics_dir: str | Path,
                       account: str = "paper") -> tuple[Path, Path]:
    """The §J4 metrics as Prometheus text: ``ais_metrics.prom`` (latest session written, for a
    node-exporter textfile collector) and ``by_session/ais_metrics_<D>.prom`` (archive).
    Written atomically (temp file + rename)."""
    session = str(pd.Timestamp(as_of).date())
    text = metrics_core.prometheus_text(metrics, {"account": account, "session": session})
    d = Path(metrics_dir)
    archive = d / "by_session" / f"ais_metrics_{session}.prom"
    latest = d / "ais_metrics.prom"
    for p in (archive, latest):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".prom.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
    return latest, archive


def write_governance_report(warehouse_path: str | Path, as_of: date | str, out_dir: str | Path,
                            calendars: Sequence[str] = (AS_OF_CALENDAR,)) -> Path:
    """Read the warehouse (read-only), render session ``as_of``, write
    ``<out_dir>/governance_<as_of>.html``; returns the path."""
    db = Path(warehouse_path)
    if not db.exists():
        raise FileNotFoundError(f"no warehouse at {db}")
    with connect_warehouse(str(db), read_only=True) as con:
        inputs = load_governance_inputs(con, as_of, calendars=calendars)
    path = report_path(out_dir, as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_governance_report(inputs), encoding="utf-8")
    tmp.replace(path)
    return path


def latest_as_of(con: duckdb.DuckDBPyConnection) -> date | None:
    """The newest as-of session with a data-quality assessment (what ``ais report`` defaults to)."""
    if not table_exists(con, "data_quality"):
        return None
    rows = con.execute("SELECT max(as_of) FROM data_quality").fetchall()
    return pd.Timestamp(rows[0][0]).date() if rows and rows[0][0] is not None else None
