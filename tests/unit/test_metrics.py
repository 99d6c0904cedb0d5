"""§J4 metrics: drawdown, daily loss, exposure, turnover, Sharpe, slippage, gate rates, Prometheus."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ais_pipelines.core.accounting import mark_to_market, positions_from_fills
from ais_pipelines.core.metrics import (
    METRIC_KEYS,
    PNL_HISTORY_COLUMNS,
    daily_drawdown,
    daily_loss_breached,
    exposure,
    gate_pass_rates,
    max_drawdown,
    pnl_history,
    portfolio_metrics,
    prometheus_text,
    sharpe_ratio,
    slippage_bps,
    slippage_summary,
    slippage_table,
    turnover,
)
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import TradingMode, check_daily_loss, initial_status

DATES = pd.to_datetime(
    ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08", "2024-03-11", "2024-03-12"]
)
# Peaks 110 → trough 99 (10 %), then 121 → 96.8 (20 %): the max drawdown is 0.2.
NAV_PATH = [100.0, 110.0, 99.0, 104.5, 121.0, 96.8, 115.0]


def _fill(fid: str, sym: str, side: str, qty: float, price: float, day: str, cid: str | None = None) -> dict:
    return {
        "fill_id": fid,
        "client_order_id": cid or f"o-{fid}",
        "symbol": sym,
        "side": side,
        "qty": qty,
        "price": price,
        "fees": 0.0,
        "ts": pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=15),
    }


def test_pnl_history_drawdown_and_hwm_on_crafted_path():
    nav_s = pd.Series(NAV_PATH, index=DATES)
    realized = pd.Series([3.0, -2.0], index=pd.to_datetime(["2024-03-05", "2024-03-08"]))
    h = pnl_history(nav_s, realized, starting_nav=100.0)
    assert list(h.columns) == list(PNL_HISTORY_COLUMNS)
    assert str(h["date"].dtype) == "datetime64[ns]"  # the session-label convention of the bars
    assert h["high_water_mark"].tolist() == [100, 110, 110, 110, 121, 121, 121]
    assert h["drawdown"].tolist() == pytest.approx([0, 0, 0.1, 0.05, 0, 0.2, 1 - 115 / 121])
    assert h["daily_pnl"].tolist() == pytest.approx([0.0, 10.0, -11.0, 5.5, 16.5, -24.2, 18.2])
    assert h["daily_return"].tolist() == pytest.approx(
        [0.0, 0.1, -0.1, 5.5 / 99, 16.5 / 104.5, -0.2, 18.2 / 96.8]
    )
    assert h["realized_pnl"].tolist() == [0.0, 3.0, 0.0, 0.0, -2.0, 0.0, 0.0]
    # unrealized = nav - start - cumulative realized
    assert h["unrealized_pnl"].tolist() == pytest.approx([0.0, 7.0, -4.0, 1.5, 20.0, -4.2, 14.0])
    assert max_drawdown(NAV_PATH) == pytest.approx(0.2)
    assert h["drawdown"].max() == pytest.approx(0.2)


def test_pnl_history_without_starting_nav_and_with_explicit_unrealized():
    nav_s = pd.Series(NAV_PATH[:3], index=DATES[:3])
    h = pnl_history(nav_s, unrealized_by_day=pd.Series([1.0, 2.0, 3.0], index=DATES[:3]))
    assert math.isnan(h.loc[0, "daily_pnl"]) and math.isnan(h.loc[0, "daily_return"])
    assert h["unrealized_pnl"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="without a NAV"):
        pnl_history(nav_s, pd.Series([1.0], index=pd.to_datetime(["2024-03-09"])))


def test_max_drawdown_counts_loss_from_the_start_and_edge_cases():
    assert max_drawdown([95.0, 97.0], starting_nav=100.0) == pytest.approx(0.05)
    assert max_drawdown([95.0, 97.0]) == pytest.approx(0.0)
    assert math.isnan(max_drawdown([]))
    assert max_drawdown([100.0]) == 0.0


def test_daily_loss_breach_exactly_at_the_limit():
    assert daily_drawdown(100_000.0, 97_000.0) == 0.03
    assert daily_loss_breached(100_000.0, 97_000.0, 0.03) is True
    assert daily_loss_breached(250_000.0, 242_500.0, 0.03) is True  # 7 500 / 250 000 = 3 %
    assert daily_loss_breached(100_000.0, 97_000.01, 0.03) is False
    assert daily_drawdown(100_000.0, 101_000.0) == 0.0  # up on the day: no drawdown
    # Fail closed on unknowns.
    assert daily_loss_breached(100_000.0, float("nan"), 0.03) is True
    assert daily_loss_breached(0.0, 97_000.0, 0.03) is True
    with pytest.raises(ValueError):
        daily_loss_breached(100_000.0, 99_000.0, 0.0)
    # Feeds the latched kill switch of the trading-state machine.
    now = datetime(2024, 3, 5, 18, tzinfo=UTC)
    s = check_daily_loss(
        initial_status(now), daily_loss=daily_drawdown(100_000.0, 97_000.0), limit=0.03, now=now
    )
    assert s.mode is TradingMode.HALTED and ReasonCode.KILL_SWITCH_DAILY_LOSS in s.reason_codes


def test_exposure_and_leverage():
    mtm = pd.DataFrame({"market_value": [60_000.0, -20_000.0, 0.0]})
    e = exposure(mtm, 100_000.0)  # cash 60 000 + 40 000 net
    assert e == pytest.approx(
        {
            "long_exposure": 60_000.0,
            "short_exposure": 20_000.0,
            "gross_exposure": 80_000.0,
            "net_exposure": 40_000.0,
            "leverage": 0.8,
            "net_leverage": 0.4,
        }
    )
    assert math.isnan(exposure(mtm, 0.0)["leverage"])


def test_turnover_over_a_window():
    nav_s = pd.Series([90_000.0, 100_000.0, 102_000.0, 98_000.0], index=DATES[:4])
    fills = pd.DataFrame(
        [
            _fill("a", "AAPL", "BUY", 1000, 50.0, "2024-03-04"),  # before the 3-session window
            _fill("b", "AAPL", "BUY", 100, 50.0, "2024-03-05"),  # 5 000
            _fill("c", "AAPL", "SELL", 40, 55.0, "2024-03-06"),  # 2 200
            _fill("d", "AAPL", "BUY", 10, 60.0, "2024-03-07"),  # 600
        ]
    )
    # (5000 + 2200 + 600) / mean(100k, 102k, 98k)
    assert turnover(fills, nav_s, window=3) == pytest.approx(7_800 / 100_000)
    assert turnover(fills, nav_s) == pytest.approx(57_800 / 97_500)
    assert turnover(fills.iloc[:0], nav_s, window=3) == 0.0


def test_sharpe_against_a_hand_computation():
    r = [0.01, -0.02, 0.015, 0.005]
    expected = statistics.mean(r) / statistics.stdev(r) * math.sqrt(252)
    assert sharpe_ratio(r) == pytest.approx(expected)
    # by hand: mean .0025, sample var 7.25e-4 / 3
    assert sharpe_ratio(r) == pytest.approx(0.0025 / math.sqrt(7.25e-4 / 3) * math.sqrt(252))
    rf = 0.0252  # annual → 0.0001 a day
    assert sharpe_ratio(r, risk_free_rate=rf) == pytest.approx(
        (statistics.mean(r) - 0.0001) / statistics.stdev(r) * math.sqrt(252)
    )
    assert math.isnan(sharpe_ratio([0.01]))
    assert math.isnan(sharpe_ratio([0.01, 0.01, 0.01]))  # zero dispersion: undefined, not inf
    assert math.isnan(sharpe_ratio([float("nan"), 0.01]))  # one usable return


def test_slippage_is_positive_for_a_worse_fill_on_either_side():
    assert slippage_bps("BUY", 100.10, 100.0) == pytest.approx(10.0)  # paid more
    assert slippage_bps("SELL", 99.80, 100.0) == pytest.approx(20.0)  # received less
    assert slippage_bps("SELL", 100.05, 100.0) == pytest.approx(-5.0)  # better than the model
    assert slippage_bps("BUY", 99.95, 100.0) == pytest.approx(-5.0)
    fills = pd.DataFrame(
        [
            _fill("a", "AAPL", "BUY", 100, 100.10, "2024-03-05", cid="o1"),
            _fill("b", "AAPL", "SELL", 50, 99.80, "2024-03-05", cid="o2"),
            _fill("c", "AAPL", "SELL", 10, 100.0, "2024-03-05", cid="o3"),  # no expected price
        ]
    )
    table = slippage_table(fills, {"o1": 100.0, "o2": 100.0})
    assert table["slippage_bps"].tolist()[:2] == pytest.approx([10.0, 20.0])
    assert math.isnan(table["slippage_bps"].iloc[2])
    s = slippage_summary(table)
    # notional-weighted: (10 010 * 10 + 4 990 * 20) / 15 000
    assert s["slippage_bps"] == pytest.approx((10_010 * 10 + 4_990 * 20) / 15_000)
    assert s["slippage_bps_mean"] == pytest.approx(15.0)
    assert s["slippage_fills"] == 2.0


def test_gate_pass_rates_by_decision_and_check():
    decisions = pd.DataFrame(
        {
            "order_id": ["o1", "o2", "o3", "o4", "o5"],
            "decision": ["APPROVE", "APPROVE", "REVIEW", "REJECT", "REJECT"],
        }
    )
    hits = pd.DataFrame(
        {
            "order_id": ["o3", "o4", "o4", "o5", "o5"],
            "rule_id": ["low_confidence", "stale_quote", "low_confidence", "stale_quote", "market_closed"],
        }
    )
    g = gate_pass_rates(
        decisions, hits, checks=["stale_quote", "market_closed", "low_confidence", "low_liquidity"]
    )
    assert g == pytest.approx(
        {
            "gate_decisions": 5.0,
            "gate_approve_rate": 0.4,
            "gate_review_rate": 0.2,
            "gate_reject_rate": 0.4,
            "gate_check_pass_rate__stale_quote": 0.6,
            "gate_check_pass_rate__market_closed": 0.8,
            "gate_check_pass_rate__low_confidence": 0.6,
            "gate_check_pass_rate__low_liquidity": 1.0,
        }
    )
    # Without a check list only the tripped rules appear.
    assert set(gate_pass_rates(decisions, hits)) == {
        "gate_decisions",
        "gate_approve_rate",
        "gate_review_rate",
        "gate_reject_rate",
        "gate_check_pass_rate__low_confidence",
        "gate_check_pass_rate__market_closed",
        "gate_check_pass_rate__stale_quote",
    }
    empty = gate_pass_rates(decisions.iloc[:0])
    assert empty["gate_decisions"] == 0.0 and math.isnan(empty["gate_approve_rate"])
    with pytest.raises(ValueError, match="unknown decision"):
        gate_pass_rates(pd.DataFrame({"decision": ["MAYBE"]}))


def _scenario() -> dict:
    fills = pd.DataFrame(
        [
            _fill("a", "AAPL", "BUY", 100, 10.0, "2024-03-04", cid="o1"),
            _fill("b", "MSFT", "BUY", 20, 50.0, "2024-03-05", cid="o2"),
            _fill("c", "AAPL", "SELL", 40, 12.0, "2024-03-05", cid="o3"),  # realizes 40*2 = 80
        ]
    )
    positions, cash = positions_from_fills(fills, 10_000.0)  # cash 10000 - 1000 - 1000 + 480 = 8480
    mtm = mark_to_market(positions, {"AAPL": 11.0, "MSFT": 45.0}, cash=cash)  # MV 660 + 900
    nav_s = pd.Series([10_000.0, 10_100.0], index=DATES[:2])
    history = pnl_history(nav_s, pd.Series([80.0], index=DATES[1:2]), starting_nav=10_000.0)
    return {"fills": fills, "mtm": mtm, "cash": cash, "history": history}


def test_portfolio_metrics_keys_and_values():
    s = _scenario()
    m = portfolio_metrics(
        positions_mtm=s["mtm"],
        cash=s["cash"],
        history=s["history"],
        session_open_nav=10_100.0,
        fills=s["fills"],
        expected_prices={"o1": 10.0, "o2": 49.0, "o3": 12.0},
        decisions=pd.DataFrame({"order_id": ["x", "y"], "decision": ["APPROVE", "REJECT"]}),
        hits=pd.DataFrame({"order_id": ["y"], "rule_id": ["stale_quote"]}),
        turnover_window=None,
    )
    assert list(m)[: len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert all(isinstance(v, float) for v in m.values())
    assert m["cash"] == pytest.approx(8_480.0)
    assert m["nav"] == pytest.approx(10_040.0)  # 8480 + 60*11 + 20*45
    assert m["realized_pnl"] == pytest.approx(80.0)
    # AAPL 60 @ 10 marked 11: +60; MSFT 20 @ 50 marked 45: -100
    assert m["unrealized_pnl"] == pytest.approx(-40.0)
    assert m["total_pnl"] == pytest.approx(40.0) == pytest.approx(m["nav"] - 10_000.0)
    assert m["high_water_mark"] == pytest.approx(10_100.0)
    assert m["drawdown"] == pytest.approx(60.0 / 10_100.0)
    assert m["max_drawdown"] == pytest.approx(60.0 / 10_100.0)
    assert m["daily_drawdown"] == pytest.approx(60.0 / 10_100.0)
    assert m["gross_exposure"] == pytest.approx(1_560.0)
    assert m["leverage"] == pytest.approx(1_560.0 / 10_040.0)
    assert m["open_positions"] == 2.0
    assert m["turnover"] == pytest.approx(2_480.0 / 10_050.0)  # all traded notional / mean NAV
    assert m["sharpe"] == pytest.approx(
        statistics.mean([0.0, 0.01]) / statistics.stdev([0.0, 0.01]) * math.sqrt(252)
    )
    # only o2 slipped: paid 50 vs 49 → +204.08 bps on 1 000 of 2 480 notional
    assert m["slippage_bps"] == pytest.approx(1_000 * (1 / 49 * 1e4) / 2_480)
    assert m["slippage_fills"] == 3.0
    assert m["gate_reject_rate"] == 0.5
    assert m["gate_check_pass_rate__stale_quote"] == 0.5


def test_portfolio_metrics_with_missing_inputs_keeps_every_key():
    s = _scenario()
    m = portfolio_metrics(positions_mtm=s["mtm"], cash=s["cash"], history=s["history"].iloc[:0])
    assert list(m) == list(METRIC_KEYS)
    for k in ("turnover", "sharpe", "slippage_bps", "gate_approve_rate", "daily_pnl", "daily_drawdown"):
        assert math.isnan(m[k]), k
    assert m["slippage_fills"] == 0.0 and m["gate_decisions"] == 0.0


def test_prometheus_text_parses_back_to_the_same_values():
    s = _scenario()
    m = portfolio_metrics(
        positions_mtm=s["mtm"],
        cash=s["cash"],
        history=s["history"],
        fills=s["fills"],
        decisions=pd.DataFrame({"order_id": ["x"], "decision": ["APPROVE"]}),
        hits=pd.DataFrame({"order_id": ["x"], "rule_id": ["corr.book"]}),
    )
    labels = {"account": "paper", "session": "2024-03-05"}
    text = prometheus_text(m, labels)
    parsed = {}
    for fam in text_string_to_metric_families(text):
        assert fam.type == "gauge" and fam.documentation
        (sample,) = fam.samples
        assert sample.labels == labels
        parsed[sample.name] = sample.value
    assert "ais_gate_check_pass_rate__corr_book" in parsed  # '.' is not allowed in a name
    assert len(parsed) == len(m)
    for key, value in m.items():
        got = parsed["ais_" + key.replace(".", "_")]
        assert (math.isnan(got) and math.isnan(value)) or got == value, key
    assert "# HELP ais_nav Net asset value" in text


def test_prometheus_text_refuses_colliding_names_and_bad_labels():
    with pytest.raises(ValueError, match="collide"):
        prometheus_text({"a.b": 1.0, "a_b": 2.0}, {})
    with pytest.raises(ValueError, match="label"):
        prometheus_text({"nav": 1.0}, {"bad-label": "x"})
    # no labels at all is fine
    (fam,) = text_string_to_metric_families(prometheus_text({"nav": 3.5}))
    assert fam.samples[0].value == 3.5 and np.isfinite(fam.samples[0].value)


def test_metrics_do_not_depend_on_row_order_of_fills():
    s = _scenario()
    nav_s = s["history"].set_index("date")["nav"]
    a = turnover(s["fills"], nav_s)
    b = turnover(s["fills"].iloc[::-1], nav_s)
    assert a == b


def test_slippage_from_an_expected_price_column():
    fills = pd.DataFrame(
        [
            {**_fill("a", "AAPL", "SELL", 10, 49.95, "2024-03-05"), "expected_price": 50.0},
            {**_fill("b", "AAPL", "BUY", 10, 50.05, "2024-03-05"), "expected_price": 50.0},
        ]
    )
    table = slippage_table(fills.iloc[::-1])  # joined by fill_id, not by row position
    assert table.set_index("fill_id")["slippage_bps"].to_dict() == pytest.approx({"a": 10.0, "b": 10.0})


def test_portfolio_metrics_day_numbers_intraday_and_end_of_day_agree():
    s = _scenario()  # live NAV 10 040
    intraday = portfolio_metrics(
        positions_mtm=s["mtm"], cash=s["cash"], history=s["history"], session_open_nav=10_100.0
    )
    eod_history = pnl_history(
        pd.Series([10_100.0, 10_040.0], index=DATES[:2]), starting_nav=10_000.0
    )  # today's close is in the history
    eod = portfolio_metrics(positions_mtm=s["mtm"], cash=s["cash"], history=eod_history)
    for m in (intraday, eod):
        assert m["daily_pnl"] == pytest.approx(-60.0)
        assert m["daily_return"] == pytest.approx(-60.0 / 10_100.0)
        assert m["daily_drawdown"] == pytest.approx(60.0 / 10_100.0)
    assert eod["max_drawdown"] == pytest.approx(60.0 / 10_100.0)
