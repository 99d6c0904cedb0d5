"""The dbt marts (§K1) on a tiny warehouse + ledger built in tmp_path.

The fixture writes the Python assets' tables directly (a handful of rows, so this stays fast)
and fills a real SQLite ledger through ``LedgerStore`` (approvals consumed, partial fills,
positions, a paused-and-resumed trading state, a human review). Then:

* the Dagster assets (``ledger_snapshot`` + the dbt assets) materialize it, every dbt test
  passes as an asset check, and the marts hold the expected rows and numbers;
* the ``pnl_history`` mart equals ``core.metrics.pnl_history`` on the same fills and marks;
* a planted violation makes the governance singular test fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource
from sqlalchemy import insert

from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.trading_state import pause, resume
from ais_pipelines.ledger import FillRecord, LedgerStore, OrderIntent
from ais_pipelines.ledger import models as m
from ais_pipelines.warehouse import replace_partition, upsert_bars

AS_OF = date(2024, 3, 5)  # a Tuesday; the execution session is Wednesday 2024-03-06
PREV_AS_OF = date(2024, 3, 1)
DBT_DIR = Path(__file__).resolve().parents[2] / "dbt"
SYMBOLS = {"AAPL": "STOCKS", "MSFT": "STOCKS", "JPM": "STOCKS", "BTC/USD": "CRYPTO"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@dataclass(frozen=True)
class Fixture:
    root: Path
    warehouse: Path
    ledger_url: str
    as_of: date


# --- warehouse tables the Python assets write -------------------------------------------------
def _bars() -> pd.DataFrame:
    days = pd.bdate_range("2024-02-01", "2024-03-05")
    rows = []
    for k, (sym, cls) in enumerate(SYMBOLS.items()):
        base = {"AAPL": 98.0, "MSFT": 198.0, "JPM": 170.0, "BTC/USD": 50_000.0}[sym]
        for i, d in enumerate(days):
            close = base + 0.1 * i + (k % 2) * 0.05
            rows.append({"symbol": sym, "date": d, "open": close, "high": close * 1.01, "low": close * 0.99,
                         "close": close, "volume": 1e6, "adj_close": close, "asset_class": cls,
                         "provider": "sample"})
    return pd.DataFrame(rows)


def _data_quality() -> pd.DataFrame:
    rows = [
        ("AAPL", "STOCKS", 0.991, "VALID", "DATA_VALID", 1300),
        ("MSFT", "STOCKS", 0.972, "VALID", "DATA_VALID;RETURN_SPIKE", 1300),
        ("JPM", "STOCKS", 0.412, "INVALID_DATA", "INVALID_DATA;STALE_PRICE;RETURN_SPIKE", 1290),
        ("BTC/USD", "CRYPTO", 0.953, "INSUFFICIENT_HISTORY", "INSUFFICIENT_HISTORY", 900),
    ]
    return pd.DataFrame([{
        "symbol": s, "asset_class": c, "calendar": "XNYS" if c == "STOCKS" else "24/7",
        "expected_sessions": 1320, "observed_sessions": v, "valid_sessions": v, "rejected_rows": 0,
        "missing_sessions": 1320 - v, "duplicate_dates": 0, "non_positive_prices": 0, "ohlc_inconsistent": 0,
        "return_spikes": 2, "volume_spikes": 0, "stale_prices": 7 if s == "JPM" else 0, "split_like_jumps": 0,
        "data_quality_score": q, "status": st, "reason_codes": rc, "tradable": st == "VALID",
    } for s, c, q, st, rc, v in rows])


def _regime() -> tuple[pd.DataFrame, pd.DataFrame]:
    P = [[0.97, 0.025, 0.005], [0.04, 0.94, 0.02], [0.01, 0.05, 0.94]]
    row = {"threshold": 0.15, "min_scale": 0.25, "horizon_sessions": 5, "regime": "NORMAL", "fail_closed": False,
           "belief_normal": 0.8123, "belief_volatile": 0.1654, "belief_crisis": 0.0223, "p_crisis_5d": 0.0421,
           "derisk": False, "reduce_only": False, "exposure_scale": 1.0, "reason_codes": "",
           "fit_is_fallback": False, "fit_model_version": "msr-3-v1", "index_vs_sma200": 0.034,
           "vol_percentile": 0.41, "vix_proxy": 17.2, "corr_spike": 0.05, "transition_json": json.dumps(P)}
    days = pd.bdate_range("2024-01-01", "2024-03-05")
    n = np.linspace(0.9, 0.8123, len(days))
    beliefs = pd.DataFrame({"date": days, "NORMAL": n, "VOLATILE": (1 - n) * 0.85, "CRISIS": (1 - n) * 0.15})
    beliefs["label"] = "NORMAL"
    return pd.DataFrame([row]), beliefs


def _intelligence() -> dict[str, pd.DataFrame]:
    decay = pd.DataFrame([{
        "symbol": s, "model": mdl, "model_version": f"{mdl}-v1", "fit_date": pd.Timestamp("2024-02-01"),
        "age_days": 33, "age_factor": 1.0, "error_n": 20, "error_rmse": 0.02, "error_factor": 0.9,
        "autocorr_recent": 0.1, "autocorr_fit": 0.12, "flip_factor": 1.0, "decay_factor": 0.9,
        "reason_codes": "MODEL_ERROR_DECAY"} for s in SYMBOLS for mdl in ("momentum", "meanrev")])
    lifecycle = pd.DataFrame([
        {"strategy_id": "trend", "model": "momentum", "stage": "INCUBATING", "previous_stage": "INCUBATING",
         "stage_since": date(2024, 1, 2), "capital_multiplier": 1.0, "nav_cap": 0.02, "effective_cap": 0.02,
         "proving": True, "reason_codes": "STAGE_UNCHANGED"},
        {"strategy_id": "revert", "model": "meanrev", "stage": "SCALING", "previous_stage": "INCUBATING",
         "stage_since": AS_OF, "capital_multiplier": 1.0, "nav_cap": 0.05, "effective_cap": 0.05,
         "proving": False, "reason_codes": "STAGE_PROMOTED"},
    ])
    candidates = pd.DataFrame([{
        "candidate_id": f"{st}:{s}", "strategy_id": st, "symbol": s, "asset_class": SYMBOLS[s],
        "sector": "x", "status": "VALID" if s in ("AAPL", "MSFT") else ("INVALID_DATA" if s == "JPM" else
                                                                        "INSUFFICIENT_HISTORY"),
        "stage": "INCUBATING", "mu_adj": 0.004, "sigma": 0.03, "cvar_95": 0.05, "confidence": 0.7,
        "data_quality_score": 0.9, "liquidity_score": 0.9, "strategy_cap": 0.02, "reason_codes": ""}
        for st in ("trend", "revert") for s in SYMBOLS])
    weights = {"trend:AAPL": 0.0185, "trend:MSFT": 0.0152, "revert:AAPL": 0.0213}
    alloc_rows = []
    for r, cid in enumerate(candidates["candidate_id"]):
        st, s = cid.split(":")
        w = weights.get(cid, 0.0)
        vetoed = cid == "revert:MSFT"
        codes = ("ALLOCATED" if w > 0 else "EXCLUDED_INVALID_DATA" if s == "JPM" else
                 "EXCLUDED_INSUFFICIENT_HISTORY" if s == "BTC/USD" else "VETO_UNEXPLAINED_PROFIT" if vetoed
                 else "NOT_ALLOCATED")
        alloc_rows.append({
            "candidate_id": cid, "strategy_id": st, "symbol": s,
            "eligibility": "VALID" if s in ("AAPL", "MSFT") else "EXCLUDED",
            "allocated": w > 0, "weight": w, "rank": r + 1, "decision": "ALLOCATED" if w > 0 else "NOT_ALLOCATED",
            "reason_codes": codes, "mu_adj": 0.004, "cost": 0.0002, "mu_contribution": w * 0.004,
            "liquidity_cost": 0.00001, "cvar_contribution": w * 0.05, "marginal_cvar": 0.05, "correlation": 0.2,
            "data_quality_penalty": 0.0, "model_decay_penalty": 0.1, "vetoed": vetoed,
            "veto_reason": "VETO_UNEXPLAINED_PROFIT" if vetoed else None, "cap": 0.02, "binding_cap": "stage"})
    # the portfolio assets' tables (assets/portfolio.py)
    auction = pd.DataFrame([{"status": "OPTIMAL", "cvar": 0.0312, "var": 0.0213, "invested": 0.055, "cash": 0.945,
                             "n_allocated": 3, "n_candidates": 8, "reason_codes": "ALLOCATED", "message": ""}])
    cvar = pd.DataFrame([{"var": 0.0213, "cvar": 0.0312, "cvar_after": 0.0312, "limit": 0.06,
                          "component_limit": 0.01, "scale": 1.0, "portfolio_breach": False, "component_breaches": 0,
                          "residual_breach": False, "gross_weight": 0.055, "alpha": 0.95, "horizon_sessions": 5,
                          "reason_codes": ""}])
    components = pd.DataFrame({"symbol": ["AAPL", "MSFT"], "weight": [0.0398, 0.0152],
                               "target_weight": [0.0398, 0.0152], "component_cvar": [0.0231, 0.0081],
                               "component_after": [0.0231, 0.0081], "marginal_cvar": [0.58, 0.53],
                               "component_breach": [True, False]})
    proposals = pd.DataFrame([
        {"order_id": f"{AS_OF}:{s}:BUY", "symbol": s, "side": "BUY", "qty": q, "notional": q * px,
         "target_weight": w, "impact_bps": 3.1, "style": "PASSIVE", "status": st, "reason_codes": rc}
        for s, q, px, w, st, rc in (("AAPL", 10.0, 100.9, 0.0398, "PROPOSED", ""),
                                    ("MSFT", 5.0, 200.0, 0.0152, "PROPOSED", ""),
                                    ("JPM", 3.0, 172.0, 0.0, "REJECTED", "EXCLUDED_INVALID_DATA"))])
    # ais_pipelines.execution.DECISION_COLUMNS; a governance veto is a REJECT with a VETO_* code
    decisions = pd.DataFrame([
        {"order_id": "p-aapl", "symbol": "AAPL", "side": "BUY", "requested_qty": 10.0, "approved_qty": 10.0,
         "decision": "APPROVE", "reason_codes": "APPROVED", "n_hits": 0, "undetermined": False,
         "environment": "local", "evaluated_at": pd.Timestamp("2024-03-06 14:34:00")},
        {"order_id": "p-msft", "symbol": "MSFT", "side": "BUY", "requested_qty": 5.0, "approved_qty": 0.0,
         "decision": "REVIEW", "reason_codes": "HIGH_CORRELATION_TO_BOOK", "n_hits": 1, "undetermined": False,
         "environment": "local", "evaluated_at": pd.Timestamp("2024-03-06 14:34:00")},
        {"order_id": "p-jpm", "symbol": "JPM", "side": "BUY", "requested_qty": 3.0, "approved_qty": 0.0,
         "decision": "REJECT", "reason_codes": "STALE_QUOTE;VETO_DATA_DEPENDENCY", "n_hits": 2,
         "undetermined": False, "environment": "local", "evaluated_at": pd.Timestamp("2024-03-06 14:34:00")},
    ])
    return {"model_decay_metrics": decay, "strategy_lifecycle": lifecycle, "strategy_candidates": candidates,
            "capital_allocations": pd.DataFrame(alloc_rows), "auction_summary": auction, "portfolio_cvar": cvar,
            "portfolio_cvar_components": components, "order_proposals": proposals,
            "governance_decisions": decisions}


def _quality_flags() -> pd.DataFrame:
    """Dated events as the data_quality asset writes them (two conflicting rows on one session)."""
    rows = [("JPM", date(2024, 2, 14), "missing_sessions", "MISSING_SESSIONS", None, "expected session without a valid bar"),
            ("JPM", date(2024, 2, 14), "duplicate_dates", "CONFLICTING_DUPLICATE", None, "row 1"),
            ("JPM", date(2024, 2, 14), "duplicate_dates", "CONFLICTING_DUPLICATE", None, "row 2"),
            ("AAPL", date(2024, 2, 20), "split_like_jumps", "UNADJUSTED_SPLIT", 2.0, "close x0.5012 matches 2:1")]
    return pd.DataFrame(rows, columns=["symbol", "session", "flag", "reason_code", "value", "detail"])


def build_warehouse(path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        upsert_bars(con, _bars(), run_id="fixture")
        replace_partition(con, "data_quality", _data_quality(), "as_of", AS_OF)
        replace_partition(con, "quality_flags", _quality_flags(), "as_of", AS_OF)
        regime, beliefs = _regime()
        replace_partition(con, "regime_probabilities", regime, "as_of", AS_OF)
        replace_partition(con, "regime_beliefs", beliefs, "as_of", AS_OF)
        for table, frame in _intelligence().items():
            replace_partition(con, table, frame, "as_of", AS_OF)
    finally:
        con.close()


# --- the ledger, written through the real store ----------------------------------------------
def _order(store: LedgerStore, cid: str, symbol: str, side: str, qty: float, at: datetime, as_of: date,
           expected: float, fills: list[tuple[float, float, float, datetime]], final: OrderState) -> None:
    payload = {"symbol": symbol, "side": side, "qty": qty, "as_of": str(as_of), "expected_price": expected}
    store.create_order_intent(
        OrderIntent(client_order_id=cid, idempotency_key=f"key-{cid}", approval_id=f"appr-{cid}",
                    payload_hash=f"h-{cid}", payload=payload, symbol=symbol, side=side, qty=qty,
                    order_type="MARKET", mode="PAPER"),
        signature="ab" * 32, expires_at=at + timedelta(minutes=15), now=at)
    if final is OrderState.REJECTED:
        store.apply_broker_state(cid, target_state=OrderState.REJECTED, now=at + timedelta(seconds=1))
        return
    store.apply_broker_state(cid, target_state=OrderState.ACCEPTED, now=at + timedelta(seconds=1),
                             broker_order_id=f"b-{cid}")
    done = 0.0
    for k, (q, px, fee, ts) in enumerate(fills):
        done += q
        state = OrderState.FILLED if abs(done - qty) < 1e-9 else OrderState.PARTIALLY_FILLED
        store.apply_broker_state(cid, target_state=state, now=ts, fills=[FillRecord(
            f"f-{cid}-{k}", cid, symbol, side, q, px, fee, ts)])


def build_ledger(url: str) -> None:
    store = LedgerStore.open(url)
    try:
        with store.transaction() as conn:
            conn.execute(insert(m.paper_account).values(account_id="paper", starting_cash=100_000.0,
                                                        created_at=utc(2024, 2, 1)))
        # session 2024-03-04 (decided on as-of 2024-03-01): an earlier AAPL buy
        _order(store, "o-0", "AAPL", "BUY", 2.0, utc(2024, 3, 4, 14, 35), PREV_AS_OF, 99.5,
               [(2.0, 99.6, 0.1, utc(2024, 3, 4, 14, 36))], OrderState.FILLED)
        # session 2024-03-06 (decided on as-of 2024-03-05)
        _order(store, "o-1", "AAPL", "BUY", 10.0, utc(2024, 3, 6, 14, 35), AS_OF, 100.9,
               [(6.0, 101.0, 0.5, utc(2024, 3, 6, 14, 36)), (4.0, 101.2, 0.3, utc(2024, 3, 6, 14, 37))],
               OrderState.FILLED)
        _order(store, "o-2", "MSFT", "BUY", 5.0, utc(2024, 3, 6, 14, 40), AS_OF, 200.0,
               [(5.0, 200.5, 1.0, utc(2024, 3, 6, 14, 41))], OrderState.FILLED)
        _order(store, "o-3", "AAPL", "SELL", 4.0, utc(2024, 3, 6, 19, 0), AS_OF, 102.0,
               [(4.0, 102.0, 0.2, utc(2024, 3, 6, 19, 1))], OrderState.FILLED)
        _order(store, "o-4", "MSFT", "BUY", 3.0, utc(2024, 3, 6, 19, 5), AS_OF, 200.0, [], OrderState.REJECTED)
        store.change_trading_status(lambda s: pause(s, actor="alice", why="manual pause during news",
                                                    now=utc(2024, 3, 6, 16, 0)))
        store.change_trading_status(lambda s: resume(s, actor="alice", why="news digested",
                                                     now=utc(2024, 3, 6, 16, 30)))
        store.enqueue_review("r-1", {"symbol": "MSFT", "side": "BUY", "qty": 5.0}, ["HIGH_CORRELATION_TO_BOOK"],
                             utc(2024, 3, 6, 14, 30))
        store.decide_review("r-1", approve=True, actor="bob", why="correlation acceptable at this size",
                            now=utc(2024, 3, 6, 14, 39))
    finally:
        store.dispose()


def build_fixture(tmp: Path) -> Fixture:
    tmp.mkdir(parents=True, exist_ok=True)
    warehouse = tmp / "warehouse.duckdb"
    url = f"sqlite:///{tmp / 'ledger.sqlite'}"
    build_warehouse(warehouse)
    build_ledger(url)
    return Fixture(tmp, warehouse, url, AS_OF)


# --- running dbt -----------------------------------------------------------------------------
def dbt(args: list[str], fx: Fixture):
    """dbt in-process (dbtRunner) against the fixture warehouse; returns {node name: status}."""
    from dbt.cli.main import dbtRunner

    res = dbtRunner().invoke([
        *args, "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR),
        "--target-path", str(fx.root / "dbt_target"), "--log-path", str(fx.root / "dbt_logs"),
        "--vars", json.dumps({"warehouse_path": str(fx.warehouse)}), "--quiet",
    ])
    assert res.exception is None, res.exception
    return {r.node.name: str(r.status) for r in res.result.results}


def marts_resources(fx: Fixture) -> dict[str, object]:
    from assets.reporting import dbt_resource
    from resources.trading import LedgerResource

    return {
        "warehouse": DuckDBResource(database=str(fx.warehouse)),
        "ledger": LedgerResource(url=fx.ledger_url),
        "dbt": dbt_resource(),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fixture, dg.ExecuteInProcessResult]:
    """The fixture, materialized once through Dagster: ledger_snapshot, then dbt build."""
    from assets.reporting import build_dbt_assets, ledger_snapshot

    fx = build_fixture(tmp_path_factory.mktemp("marts"))
    result = dg.materialize([ledger_snapshot, build_dbt_assets()], resources=marts_resources(fx),
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    return fx, result


def query(fx: Fixture, sql: str) -> pd.DataFrame:
    con = duckdb.connect(str(fx.warehouse), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def test_dagster_builds_marts_and_every_dbt_test_passes(built):
    fx, result = built
    assert result.success
    keys = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"ledger_snapshot", "marts/orders", "marts/fills", "marts/positions", "marts/pnl_history",
            "marts/data_quality", "marts/quality_flags", "marts/capital_allocations", "marts/governance_decisions",
            "marts/strategy_lifecycle", "marts/model_decay_metrics", "staging/stg_orders"} <= keys
    checks = result.get_asset_check_evaluations()
    names = {c.check_name for c in checks}
    assert {"ledger_fills_bookable", "assert_no_allocation_to_excluded_symbol", "assert_no_fill_without_order",
            "assert_no_overfill", "assert_order_consumed_its_approval", "assert_positions_match_fills",
            "unique_orders_client_order_id"} <= names
    failed = [c.check_name for c in checks if not c.passed]
    assert failed == []


def test_mart_row_counts(built):
    fx, _ = built
    counts = {t: int(query(fx, f"SELECT count(*) n FROM marts.{t}")["n"][0]) for t in (
        "data_quality", "model_decay_metrics", "capital_allocations", "governance_decisions", "strategy_lifecycle",
        "orders", "fills", "positions", "pnl_history")}
    assert counts == {
        "data_quality": 4, "model_decay_metrics": 8, "capital_allocations": 8,
        # 3 policy decisions + 1 human review + 2 trading-state changes
        "governance_decisions": 6,
        "strategy_lifecycle": 2, "orders": 5, "fills": 5, "positions": 2,
        # 2024-03-04 (fill), 2024-03-05 (close), 2024-03-06 (fills, no close yet)
        "pnl_history": 3,
    }


def test_quality_flags_mart_dates_every_event(built):
    fx, _ = built
    flags = query(fx, "SELECT * FROM marts.quality_flags ORDER BY symbol, session, flag, event_seq")
    assert flags[["symbol", "flag", "event_seq"]].values.tolist() == [
        ["AAPL", "split_like_jumps", 1], ["JPM", "duplicate_dates", 1], ["JPM", "duplicate_dates", 2],
        ["JPM", "missing_sessions", 1]]
    assert flags["quality_flag_key"].is_unique and set(flags["session_year"]) == {2024}
    assert flags.set_index("symbol").loc["AAPL", "symbol_status"] == query(
        fx, "SELECT status FROM marts.data_quality WHERE symbol = 'AAPL'")["status"][0]


def test_marts_explain_exclusions_allocations_and_overrides(built):
    fx, _ = built
    dq = query(fx, "SELECT * FROM marts.data_quality").set_index("symbol")
    assert dq.loc["JPM", "excluded"] and "STALE_PRICE" in dq.loc["JPM", "exclusion_reason"]
    assert pd.isna(dq.loc["AAPL", "exclusion_reason"])
    alloc = query(fx, "SELECT * FROM marts.capital_allocations").set_index("candidate_id")
    assert alloc.loc["trend:AAPL", "symbol_status"] == "VALID" and alloc.loc["trend:AAPL", "weight"] == 0.0185
    assert alloc.loc["trend:JPM", "symbol_status"] == "INVALID_DATA" and alloc.loc["trend:JPM", "weight"] == 0
    assert alloc.loc["revert:AAPL", "strategy_stage"] == "SCALING"
    gov = query(fx, "SELECT * FROM marts.governance_decisions ORDER BY decided_at")
    assert set(gov["kind"]) == {"POLICY", "REVIEW", "TRADING_STATE"}
    overrides = gov.loc[gov["is_override"]]
    assert sorted(overrides["actor"]) == ["alice", "alice", "bob"]
    assert list(gov.loc[gov["kind"] == "TRADING_STATE", "decision"]) == ["PAUSED", "ACTIVE"]
    veto = gov.set_index("subject").loc["p-jpm"]
    assert veto["vetoed"] and veto["veto_reason"] == "VETO_DATA_DEPENDENCY" and veto["decision"] == "REJECT"


def test_order_fill_and_position_marts(built):
    fx, _ = built
    orders = query(fx, "SELECT * FROM marts.orders").set_index("client_order_id")
    assert orders.loc["o-1", "fill_count"] == 2 and orders.loc["o-1", "fill_qty"] == pytest.approx(10.0)
    assert orders.loc["o-1", "fill_vwap"] == pytest.approx((6 * 101.0 + 4 * 101.2) / 10)
    # slippage vs the model's expected price, worse fill positive (core.metrics convention)
    assert orders.loc["o-1", "slippage_bps"] == pytest.approx(((101.08 - 100.9) / 100.9) * 1e4)
    assert orders.loc["o-4", "state"] == "REJECTED" and orders.loc["o-4", "fill_count"] == 0
    assert str(orders.loc["o-1", "as_of"])[:10] == str(AS_OF)
    assert orders.loc["o-1", "session_date"] == pd.Timestamp("2024-03-06")
    pos = query(fx, "SELECT * FROM marts.positions").set_index("symbol")
    assert pos.loc["AAPL", "qty"] == pytest.approx(8.0) and pos.loc["AAPL", "fills_qty"] == pytest.approx(8.0)
    assert pos.loc["AAPL", "mark_source"] == "last_fill" and pos.loc["AAPL", "mark_price"] == pytest.approx(102.0)
    fills = query(fx, "SELECT * FROM marts.fills").set_index("fill_id")
    # sold 4 AAPL at 102 against an average cost of (2·99.6 + 6·101 + 4·101.2)/12; fees are realized at once
    avg = (2 * 99.6 + 6 * 101.0 + 4 * 101.2) / 12
    assert fills.loc["f-o-3-0", "realized_pnl"] == pytest.approx(4 * (102.0 - avg) - 0.2)


def test_pnl_history_mart_equals_core_metrics(built):
    from ais_pipelines.core.metrics import PNL_HISTORY_COLUMNS
    from ais_pipelines.reports.governance import build_book

    fx, _ = built
    mart = query(fx, "SELECT * FROM marts.pnl_history ORDER BY date")
    fills = query(fx, "SELECT * FROM ledger_fills")
    bars = query(fx, "SELECT symbol, date, close FROM bars")
    book = build_book(fills, bars, starting_cash=100_000.0, end=date(2024, 3, 6))
    core = book.history
    assert list(pd.to_datetime(mart["date"])) == list(pd.to_datetime(core["date"]))
    for col in PNL_HISTORY_COLUMNS[1:]:
        np.testing.assert_allclose(mart[col].to_numpy(float), core[col].to_numpy(float), rtol=1e-9, atol=1e-9,
                                   err_msg=col)
    # the identity of core.accounting: NAV = starting cash + Σ realized + unrealized
    last = mart.iloc[-1]
    assert last["nav"] == pytest.approx(100_000.0 + mart["realized_pnl"].sum() + last["unrealized_pnl"])
    assert book.metrics["nav"] == pytest.approx(last["nav"])


def test_one_truth_cli_report_metrics_and_mart_agree(built, monkeypatch):
    """Issue 14 (runs before the planted violations below change the warehouse): for the same session, ``ais execute``/the demo (cli_ops.session_book), the
    governance report, the §J4 metrics file and the pnl_history mart give the same NAV, P&L,
    drawdown and exposure — one function (core.metrics.book_history) behind the Python three, and
    an independent SQL formulation in the mart."""
    from ais_pipelines import cli_ops
    from ais_pipelines.reports.governance import load_governance_inputs

    fx, result = built
    assert result.success
    session = date(2024, 3, 6)  # AS_OF's orders execute in the next session
    for k, v in {"AIS_ENV": "ci", "AIS_RUNTIME_DIR": str(fx.root), "AIS_WAREHOUSE": str(fx.warehouse),
                 "AIS_LEDGER_URL": fx.ledger_url}.items():
        monkeypatch.setenv(k, v)
    cli = cli_ops.session_book(cli_ops.ops_env(), str(AS_OF))
    con = duckdb.connect(str(fx.warehouse), read_only=True)
    try:
        report = load_governance_inputs(con, AS_OF)
        mart = con.execute("SELECT * FROM marts.pnl_history WHERE date = ?", [session]).df().iloc[0]
    finally:
        con.close()
    last = report.pnl.iloc[-1]
    assert cli["session"] == session == pd.Timestamp(last["date"]).date() == pd.Timestamp(mart["date"]).date()
    assert 100_000.0 - 1_000 < cli["nav"] < 100_000.0 + 1_000 and cli["nav"] != 100_000.0  # a real book moved
    for col in ("nav", "daily_pnl", "drawdown", "gross_exposure", "cash", "unrealized_pnl"):
        assert cli[col] == pytest.approx(last[col], abs=1e-9), col
        assert cli[col] == pytest.approx(mart[col], abs=1e-6), col
    m = report.metrics  # what write_metrics_file exports (ais_metrics.prom) and the report prints
    assert m["nav"] == pytest.approx(cli["nav"], abs=1e-9)
    assert m["drawdown"] == pytest.approx(cli["drawdown"], abs=1e-9)
    assert m["daily_pnl"] == pytest.approx(cli["daily_pnl"], abs=1e-9)
    assert cli_ops.book_line(cli).startswith(f"Book at the end of {session} ")


def test_marts_on_the_parquet_store_equal_the_duckdb_files(built, tmp_path):
    """Issue 15: with the Parquet store, ledger_snapshot writes into the store and dbt builds the
    same marts in a DuckDB copy beside it (``warehouse_marts.duckdb``); every dbt test passes.
    (Runs before the planted violations below change the reference warehouse.)"""
    from ais_pipelines.warehouse_store import copy_duckdb_to_parquet, forget_cached
    from assets.reporting import MARTS_FILE_OF_PARQUET_STORE, build_dbt_assets, ledger_snapshot
    from resources.warehouse import WarehouseResource

    fx, _ = built
    other = build_fixture(tmp_path / "p")
    store = tmp_path / "p" / "warehouse_parquet"
    copy_duckdb_to_parquet(other.warehouse, store)
    other.warehouse.unlink()
    resources = {**marts_resources(other), "warehouse": WarehouseResource(database=str(store), store="parquet")}
    try:
        result = dg.materialize([ledger_snapshot, build_dbt_assets()], resources=resources,
                                instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    finally:
        forget_cached()
    assert result.success
    assert [c.check_name for c in result.get_asset_check_evaluations() if not c.passed] == []
    marts = tmp_path / "p" / MARTS_FILE_OF_PARQUET_STORE
    assert not other.warehouse.exists() and (store / "ledger_orders" / "main.parquet").exists()
    for mart in ("orders", "fills", "pnl_history", "positions", "capital_allocations", "governance_decisions"):
        con = duckdb.connect(str(marts), read_only=True)
        try:
            got = con.execute(f"SELECT * FROM marts.{mart} ORDER BY ALL").df()
        finally:
            con.close()
        pd.testing.assert_frame_equal(got, query(fx, f"SELECT * FROM marts.{mart} ORDER BY ALL"), obj=mart)


def test_planted_violations_fail_the_governance_tests(built):
    fx, _ = built
    con = duckdb.connect(str(fx.warehouse))
    try:
        con.execute("""INSERT INTO capital_allocations (as_of, candidate_id, strategy_id, symbol, weight, allocated,
                       decision, reason_codes, vetoed) VALUES (?, 'trend:JPM-x', 'trend', 'JPM', 0.01, true,
                       'ALLOCATED', 'ALLOCATED', false)""", [AS_OF])
        con.execute("""INSERT INTO ledger_fills VALUES ('f-ghost', 'o-ghost', 'AAPL', 'BUY', 1, 100, 0,
                       TIMESTAMP '2024-03-06 15:00:00')""")
    finally:
        con.close()
    status = dbt(["build", "--select", "capital_allocations", "fills", "stg_fills", "stg_capital_allocations",
                  "--exclude", "test_type:unit"], fx)
    assert status["assert_no_allocation_to_excluded_symbol"] == "fail"
    assert status["assert_no_fill_without_order"] == "fail"
    assert status["relationships_fills_client_order_id__client_order_id__ref_orders_"] == "fail"
    # everything else on those marts still holds
    assert status["unique_fills_fill_id"] == "pass"
    assert status["unique_capital_allocations_allocation_key"] == "pass"


def test_ledger_copy_replaces_whole_tables_with_explicit_types(tmp_path: Path):
    from ais_pipelines.reports.ledger_copy import LEDGER_TABLES, snapshot_ledger

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    warehouse = tmp_path / "w.duckdb"
    missing = snapshot_ledger(f"sqlite:///{tmp_path / 'absent.sqlite'}", warehouse)
    assert set(missing.missing) == set(LEDGER_TABLES) and missing.total_rows == 0
    assert not (tmp_path / "absent.sqlite").exists()  # reading never creates a ledger
    build_ledger(url)
    first = snapshot_ledger(url, warehouse)
    again = snapshot_ledger(url, warehouse)  # replaced whole: same rows, not doubled
    assert first.rows == again.rows and first.missing == () and first.accounting_error is None
    assert first.rows["ledger_orders"] == 5 and first.rows["ledger_fills"] == 5
    assert first.rows["ledger_fill_pnl"] == 5 and first.rows["ledger_trading_state"] == 2
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'ledger_orders'").fetchall())
        row = con.execute("SELECT created_at, payload, reason_codes, reduce_only FROM ledger_orders "
                          "WHERE client_order_id = 'o-1'").fetchall()[0]
        meta = con.execute("SELECT count(*) FROM ledger_snapshot_meta").fetchall()[0][0]
    finally:
        con.close()
    assert types["created_at"] == "TIMESTAMP" and types["qty"] == "DOUBLE" and types["reduce_only"] == "BOOLEAN"
    assert row[0] == datetime(2024, 3, 6, 14, 35)  # naive UTC, as in the ledger
    assert json.loads(row[1])["as_of"] == "2024-03-05" and json.loads(row[2]) == []
    assert meta == len(LEDGER_TABLES) + 1



def test_lean_dbt_resource_reports_the_version_of_the_dbt_it_runs():
    """LeanDbtCliResource skips ``dbt --version`` and the in-process adapter: the version it
    reports must be the executable's, and the two dagster-dbt hooks it overrides must still
    exist (a dagster-dbt upgrade that renames them would silently bring the cost back)."""
    import re
    import subprocess

    from dagster_dbt import DbtCliResource

    from assets.reporting import LeanDbtCliResource, dbt_executable

    assert callable(getattr(DbtCliResource, "_initialize_dbt_core_adapter", None))
    assert "_cli_version" in vars(DbtCliResource)
    out = subprocess.run([dbt_executable(), "--version"], capture_output=True, text=True, check=True).stdout
    cli = re.search(r"(\d+\.\d+\.\d+)", out).group(1)
    lean = LeanDbtCliResource(project_dir=str(Path(__file__).resolve().parents[2] / "dbt"),
                              dbt_executable=dbt_executable())
    assert str(lean._cli_version) == cli
    assert lean._initialize_dbt_core_adapter([]) is None

