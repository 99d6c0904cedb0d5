"""Pure pieces of the replay (issue 12): refit cadence, scripted rules, realized strategy
performance, the CVaR backtest — against hand-computed references."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.config import PolicyFileError
from ais_pipelines.core.strategy_performance import owners, performance, strategy_day, symbol_pnl
from ais_pipelines.replay import add_realized_risk, cron_fires_on, refit_due
from ais_pipelines.replay_rules import ReviewRule, load_replay_rules
from ais_pipelines.reports.tear_sheet import cvar_backtest


def test_monthly_refit_fires_on_the_last_session_before_the_first_of_the_month() -> None:
    cron = "0 20 1 * *"
    assert cron_fires_on(cron, date(2026, 8, 1)) and not cron_fires_on(cron, date(2026, 8, 2))
    # 2026-08-01 is a Saturday: the refit's fit date is Friday 2026-07-31 (last session ≤ the 1st).
    assert refit_due(cron, date(2026, 7, 31), date(2026, 8, 3))
    assert not refit_due(cron, date(2026, 7, 30), date(2026, 7, 31))
    assert refit_due(cron, date(2026, 9, 1), date(2026, 9, 2))  # a Tuesday: that session itself
    assert cron_fires_on("0 6 * * 1-5", date(2026, 8, 3)) and not cron_fires_on("0 6 * * 1-5", date(2026, 8, 2))


def test_review_rule_decides_by_declared_confidence_and_file_errors_name_the_key(tmp_path: Path) -> None:
    rule = ReviewRule(rule="approve_if_confidence", min_confidence=0.3)
    assert [rule.decide(c) for c in (0.29, 0.3, None)] == ["REJECT", "APPROVE", "REJECT"]
    assert ReviewRule(rule="reject_all").decide(0.99) == "REJECT"
    (tmp_path / "replay.yaml").write_text("review: {rule: approve_some}\n")
    with pytest.raises(PolicyFileError, match=r"replay.yaml.*review.rule"):
        load_replay_rules(tmp_path)
    assert load_replay_rules(tmp_path / "absent").review.rule == "reject_all"  # fail closed: no approvals


def test_symbol_pnl_counts_trades_and_fees_and_attributes_to_the_largest_allocation() -> None:
    opening = {"AAA": 1000.0}
    closing = pd.DataFrame({"symbol": ["AAA", "BBB"], "market_value": [1100.0, 495.0]})
    fills = pd.DataFrame({"symbol": ["BBB", "AAA"], "side": ["BUY", "SELL"], "qty": [5.0, 1.0],
                          "price": [100.0, 110.0], "fees": [1.0, 0.5]})
    pnl = symbol_pnl(opening, closing, fills)
    # AAA: 1100 − 1000 − (−110 + 0.5) = 209.5; BBB: 495 − 0 − (500 + 1) = −6
    assert pnl == pytest.approx({"AAA": 209.5, "BBB": -6.0})
    alloc = pd.DataFrame({"symbol": ["AAA", "AAA", "BBB"], "strategy_id": ["s1", "s2", "s2"],
                          "weight": [0.01, 0.02, 0.01]})
    own = owners(alloc)
    assert own == {"AAA": "s2", "BBB": "s2"}
    day = strategy_day(pnl, own, ["s1", "s2"], pd.DataFrame({"strategy_id": ["s2", "s2"],
                                                             "state": ["FILLED", "REJECTED"]}))
    assert day.set_index("strategy_id")["pnl"].to_dict() == pytest.approx({"s1": 0.0, "s2": 203.5})
    assert day.set_index("strategy_id")["errors"].to_dict() == {"s1": 0, "s2": 1}


def test_rolling_performance_matches_an_independent_formulation() -> None:
    rng = np.random.default_rng(3)
    pnl = rng.normal(50, 400, 80)
    hist = pd.DataFrame({"as_of": pd.bdate_range("2026-01-02", periods=80), "strategy_id": "s",
                         "pnl": pnl, "orders": 2, "errors": 0})
    nav0 = 1e6
    row = performance(hist, nav0, window=63).iloc[0]
    tail = pnl[-63:]
    r = tail / nav0
    assert row["days_evaluated"] == 80
    assert row["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252), rel=1e-12)
    equity = np.cumsum(tail)
    dd = max(np.maximum.accumulate(np.concatenate([[0], equity]))[1:] - equity)
    assert row["max_drawdown"] == pytest.approx(dd / nav0, rel=1e-12)
    assert row["profit_factor"] == pytest.approx(tail[tail > 0].sum() / -tail[tail < 0].sum(), rel=1e-12)
    assert row["error_rate"] == 0.0


def test_cvar_backtest_counts_exceedances_of_the_predicted_var() -> None:
    track = pd.DataFrame({"nav": [100.0, 98.0, 97.0, 99.0, 101.0, 95.0], "pnl_day": [0.0] * 6,
                          "predicted_var": [0.01] * 6, "predicted_cvar": [0.02] * 6})
    t = add_realized_risk(track, horizon=2)
    # windows: start NAV 100 (session 0's open), then NAV[i−1]; end NAV[i+1]
    expected = [-(98 - 100) / 100, -(97 - 100) / 100, -(99 - 98) / 98, -(101 - 97) / 97, -(95 - 99) / 99, np.nan]
    np.testing.assert_allclose(t["realized_loss_h"].to_numpy(), expected)
    bt = cvar_backtest(t).iloc[0]
    assert bt["windows"] == 5 and bt["exceedances"] == 3  # 2 %, 3 %, 4.04 % > 1 %
    assert bt["mean_loss_on_exceedance"] == pytest.approx((0.02 + 0.03 + 4 / 99) / 3)


def _warehouse(path: Path, decisions: list[tuple[str, str, str]], hits: list[tuple[str, str, str]],
               navs: list[float]) -> Path:
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE governance_decisions (as_of DATE, order_id VARCHAR, decision VARCHAR)")
    con.executemany("INSERT INTO governance_decisions VALUES (?, ?, ?)", decisions)
    con.execute("CREATE TABLE governance_rule_hits (as_of DATE, order_id VARCHAR, rule_id VARCHAR)")
    con.executemany("INSERT INTO governance_rule_hits VALUES (?, ?, ?)", hits)
    con.execute("CREATE TABLE replay_sessions (session_as_of DATE, nav DOUBLE, drawdown DOUBLE, predicted_cvar DOUBLE,"
                " turnover DOUBLE, invested_weight DOUBLE, orders BIGINT)")
    con.executemany("INSERT INTO replay_sessions VALUES (?, ?, 0, 0.01, 0.1, 0.02, 1)",
                    [(f"2026-11-{18 + i}", n) for i, n in enumerate(navs)])
    con.close()
    return path


def test_what_if_lists_changed_decisions_with_the_rule_hits_that_differ(tmp_path: Path) -> None:
    from ais_pipelines.reports.what_if import decision_diff, write_what_if

    d = "2026-11-18"
    base = _warehouse(tmp_path / "base.duckdb",
                      [(d, f"{d}:AAPL:BUY", "REVIEW"), (d, f"{d}:MSFT:BUY", "APPROVE")],
                      [(d, f"{d}:AAPL:BUY", "low_confidence")], [1e6, 1.001e6])
    prop = _warehouse(tmp_path / "prop.duckdb",
                      [(d, f"{d}:AAPL:BUY", "REJECT"), (d, f"{d}:MSFT:BUY", "APPROVE")],
                      [(d, f"{d}:AAPL:BUY", "risk_per_trade")], [1e6, 0.999e6])
    diff = decision_diff(base, prop)
    assert diff[["symbol", "decision_old", "decision_new", "rule_hits_changed"]].values.tolist() == [
        ["AAPL", "REVIEW", "REJECT", "-low_confidence, +risk_per_trade"]]
    text = write_what_if(base, prop, tmp_path / "what_if.md").read_text()
    assert "Decisions that changed (1)" in text and "nav_proposed" in text and "999000" in text


def test_a_first_partition_larger_than_a_row_group_is_readable_by_parameter(tmp_path: Path) -> None:
    """Regression (DuckDB 2.0): CREATE + DELETE + a multi-row-group INSERT in one transaction left the
    new table answering parameterized filters with no rows in the same database instance."""
    import duckdb

    from ais_pipelines.warehouse import read_table, replace_partition

    n = 125_600  # > one DuckDB row group (122,880): what 100 symbols × 1256 scenarios write
    frame = pd.DataFrame({"k": np.arange(n), "v": np.arange(n) * 0.5})
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    try:
        replace_partition(con, "t", frame, "as_of", date(2026, 11, 18))
        assert len(read_table(con, "t", "as_of = ?", [date(2026, 11, 18)])) == n
    finally:
        con.close()


def test_windowed_history_returns_exactly_what_the_sample_provider_returns_for_each_window() -> None:
    from ais_pipelines.core.asset_classes import AssetClass
    from ais_pipelines.market_data.base import InstrumentRequest, ProviderEmptyError
    from ais_pipelines.market_data.sample import SampleInstrument, SampleProvider
    from ais_pipelines.replay_feed import WindowedHistory

    inst = [SampleInstrument("AAPL", AssetClass.STOCKS, "Information Technology"),
            SampleInstrument("BTC/USD", AssetClass.CRYPTO, "Digital Assets")]
    provider = SampleProvider(inst, end=date(2026, 11, 20), n_sessions=150, seed=7)
    windowed = WindowedHistory(provider)
    reqs = [InstrumentRequest(i.symbol, i.asset_class) for i in inst]
    for start, end in ((date(2026, 6, 1), date(2026, 9, 30)), (date(2026, 6, 2), date(2026, 10, 1)),
                       (date(2025, 1, 1), date(2026, 11, 20))):
        mine, theirs = windowed.fetch_many(reqs, start, end), provider.fetch_many(reqs, start, end)
        assert [r.symbol for r in mine] == [r.symbol for r in theirs] == ["AAPL", "BTC/USD"]
        for a, b in zip(mine, theirs, strict=True):
            pd.testing.assert_frame_equal(a.frame, b.frame)
            assert a.raw == b.raw and a.lineage == b.lineage and a.provider == b.provider
    with pytest.raises(ProviderEmptyError):  # a window without bars fails like the provider's
        windowed.fetch_daily_bars(reqs[0], date(2030, 1, 1), date(2030, 2, 1))
    assert windowed.fetch_many([InstrumentRequest("NOPE", AssetClass.STOCKS)], date(2026, 1, 5),
                               date(2026, 6, 30)) == []


def test_replay_and_report_walk_the_universes_calendar_not_xnys():
    """Issue 13 for the replay and the report: a universe on XLON replays XLON sessions and
    trades D's decisions on the next XLON session (the UK August bank holiday is skipped, the
    NYSE's 4 July is not), as exchange_calendars says."""
    import exchange_calendars as xcals

    from ais_pipelines.replay import next_session, replay_sessions
    from ais_pipelines.reports.governance import next_session as report_next

    xlon = xcals.get_calendar("XLON")
    assert replay_sessions(date(2024, 6, 28), date(2024, 9, 2), ("XLON",)) == \
        [d.date() for d in xlon.sessions_in_range("2024-06-28", "2024-09-02")]
    assert date(2024, 7, 4) in replay_sessions(date(2024, 7, 1), date(2024, 7, 5), ("XLON",))
    assert date(2024, 7, 4) not in replay_sessions(date(2024, 7, 1), date(2024, 7, 5))  # XNYS default
    assert next_session(date(2024, 8, 23), ("XLON",)) == date(2024, 8, 27)  # Mon 26 Aug: bank holiday
    assert next_session(date(2024, 8, 23)) == date(2024, 8, 26)
    assert report_next(date(2024, 8, 23), ("XLON",)) == date(2024, 8, 27)
    assert next_session(date(2024, 8, 23), ("XLON", "24/7")) == date(2024, 8, 24)  # a round-the-clock book
