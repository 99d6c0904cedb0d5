"""§J4 accounting: average cost, realized/unrealized P&L with fees, cash and NAV, by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ais_pipelines.core.accounting import (
    MTM_COLUMNS,
    POSITION_COLUMNS,
    AccountingError,
    fill_pnl,
    mark_to_market,
    nav,
    positions_from_fills,
    realized_pnl_by_day,
    traded_notional_by_day,
    validate_fills,
)

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)


def _fills(rows: list[tuple[str, str, float, float, float, int]]) -> pd.DataFrame:
    """rows: (symbol, side, qty, price, fees, minutes after T0)."""
    return pd.DataFrame(
        [
            {
                "fill_id": f"f{i}",
                "client_order_id": f"o{i}",
                "symbol": sym,
                "side": side,
                "qty": qty,
                "price": price,
                "fees": fees,
                "ts": T0 + timedelta(minutes=m),
            }
            for i, (sym, side, qty, price, fees, m) in enumerate(rows)
        ]
    )


# AAPL: buy 100 @ 10 (fee 1), buy 50 @ 13 (fee .5), sell 60 @ 12 (fee .6), sell 30 @ 10 (fee .3)
AAPL = [
    ("AAPL", "BUY", 100, 10.0, 1.0, 0),
    ("AAPL", "BUY", 50, 13.0, 0.5, 1),
    ("AAPL", "SELL", 60, 12.0, 0.6, 2),
    ("AAPL", "SELL", 30, 10.0, 0.3, 3),
]


def test_average_cost_through_partial_sells_with_fees():
    per_fill = fill_pnl(_fills(AAPL))
    # avg after the 2nd buy: (100*10 + 50*13) / 150 = 11; sells leave it at 11.
    assert per_fill["avg_cost_after"].tolist() == pytest.approx([10.0, 11.0, 11.0, 11.0])
    assert per_fill["position_after"].tolist() == pytest.approx([100, 150, 90, 60])
    # per-fill realized, net of its fee: -1, -0.5, 60*(12-11)-0.6, 30*(10-11)-0.3
    assert per_fill["realized_pnl"].tolist() == pytest.approx([-1.0, -0.5, 59.4, -30.3])
    assert per_fill["cash_flow"].tolist() == pytest.approx([-1001.0, -650.5, 719.4, 299.7])

    positions, cash = positions_from_fills(_fills(AAPL), starting_cash=100_000.0)
    assert list(positions.columns) == list(POSITION_COLUMNS)
    row = positions.iloc[0]
    assert row["symbol"] == "AAPL"
    assert row["qty"] == pytest.approx(60.0)
    assert row["avg_cost"] == pytest.approx(11.0)
    assert row["realized_pnl"] == pytest.approx(27.6)  # -1 - 0.5 + 59.4 - 30.3
    assert row["fees"] == pytest.approx(2.4)
    assert cash == pytest.approx(99_367.6)  # 100000 - 1001 - 650.5 + 719.4 + 299.7


def test_mark_to_market_unrealized_nav_and_identity():
    fills = _fills(AAPL)
    positions, cash = positions_from_fills(fills, 100_000.0)
    mtm = mark_to_market(positions, {"AAPL": 12.5}, cash=cash)
    assert list(mtm.columns) == list(MTM_COLUMNS)
    r = mtm.iloc[0]
    assert r["market_value"] == pytest.approx(750.0)  # 60 * 12.5
    assert r["cost_basis"] == pytest.approx(660.0)  # 60 * 11
    assert r["unrealized_pnl"] == pytest.approx(90.0)
    total = nav(cash, mtm)
    assert total == pytest.approx(100_117.6)  # 99367.6 + 750
    assert r["weight"] == pytest.approx(750.0 / 100_117.6)
    # NAV = starting cash + realized + unrealized (no external flows)
    assert total == pytest.approx(100_000.0 + mtm["realized_pnl"].sum() + mtm["unrealized_pnl"].sum())


def test_sell_through_zero_flips_to_short_at_fill_price_then_closes():
    rows = [
        ("MSFT", "BUY", 10, 100.0, 0.0, 0),
        ("MSFT", "SELL", 15, 110.0, 0.0, 1),  # closes 10 (+100), opens a 5 short at 110
    ]
    positions, cash = positions_from_fills(_fills(rows), 0.0)
    p = positions.iloc[0]
    assert (p["qty"], p["avg_cost"], p["realized_pnl"]) == pytest.approx((-5.0, 110.0, 100.0))
    assert cash == pytest.approx(650.0)  # -1000 + 1650
    mtm = mark_to_market(positions, {"MSFT": 105.0}, cash=cash)
    # short 5 from 110 marked at 105: market value -525, unrealized +25
    assert mtm.loc[0, "market_value"] == pytest.approx(-525.0)
    assert mtm.loc[0, "unrealized_pnl"] == pytest.approx(25.0)
    assert nav(cash, mtm) == pytest.approx(125.0)  # 0 + 100 realized + 25 unrealized

    # Buying the 5 back at 105 realizes the 25 and leaves the symbol flat with its P&L kept.
    positions, cash = positions_from_fills(_fills([*rows, ("MSFT", "BUY", 5, 105.0, 0.0, 2)]), 0.0)
    p = positions.iloc[0]
    assert (p["qty"], p["avg_cost"], p["realized_pnl"]) == pytest.approx((0.0, 0.0, 125.0))
    assert cash == pytest.approx(125.0)
    # A flat position needs no price.
    assert nav(cash, mark_to_market(positions, {}, cash=cash)) == pytest.approx(125.0)


def test_fills_are_booked_in_time_order_not_row_order():
    shuffled = _fills(AAPL).iloc[[3, 1, 0, 2]]
    positions, cash = positions_from_fills(shuffled, 100_000.0)
    assert positions.loc[0, "realized_pnl"] == pytest.approx(27.6)
    assert cash == pytest.approx(99_367.6)


def test_accounting_agrees_with_the_ledger_position_update():
    # Independent implementation (the ledger's): same fills must give the same book.
    from ais_pipelines.ledger.store import apply_fill_to_position

    rows = [*AAPL, ("AAPL", "SELL", 80, 12.0, 0.2, 4), ("AAPL", "BUY", 30, 11.5, 0.1, 5)]
    q = avg = realized = 0.0
    for _, side, qty, price, fees, _m in rows:
        q, avg, realized = apply_fill_to_position(q, avg, realized, side, qty, price, fees)
    positions, _ = positions_from_fills(_fills(rows), 0.0)
    p = positions.iloc[0]
    assert (p["qty"], p["avg_cost"], p["realized_pnl"]) == pytest.approx((q, avg, realized))
    # by hand: after AAPL list: 60 @ 11, realized 27.6; sell 80 @ 12: close 60 (+60) → short 20 @ 12,
    # fee .2; buy 30 @ 11.5: cover 20 (+10) → long 10 @ 11.5, fee .1.
    assert (p["qty"], p["avg_cost"], p["realized_pnl"]) == pytest.approx(
        (10.0, 11.5, 27.6 + 60 - 0.2 + 10 - 0.1)
    )


def test_missing_mark_for_open_position_fails_closed():
    positions, cash = positions_from_fills(_fills(AAPL), 100_000.0)
    with pytest.raises(AccountingError, match="AAPL"):
        mark_to_market(positions, {}, cash=cash)
    with pytest.raises(AccountingError):
        mark_to_market(positions, {"AAPL": 0.0}, cash=cash)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"side": "HOLD"}, "side"),
        ({"qty": 0.0}, "qty"),
        ({"price": float("nan")}, "price"),
        ({"fees": -0.01}, "fees"),
        ({"fill_id": "f0"}, "unique"),
    ],
)
def test_invalid_fills_are_refused(change, match):
    fills = _fills(AAPL)
    for col, val in change.items():
        fills.loc[1, col] = val
    with pytest.raises(AccountingError, match=match):
        validate_fills(fills)


def test_naive_timestamps_are_refused():
    fills = _fills(AAPL)
    fills["ts"] = fills["ts"].dt.tz_localize(None)
    with pytest.raises(AccountingError, match="timezone"):
        validate_fills(fills)


def test_no_fills_gives_empty_book_and_starting_cash():
    positions, cash = positions_from_fills(_fills([]).reindex(columns=list(_fills(AAPL).columns)), 5_000.0)
    assert positions.empty and list(positions.columns) == list(POSITION_COLUMNS)
    assert cash == 5_000.0


def test_realized_and_notional_by_day():
    rows = [
        ("AAPL", "BUY", 100, 10.0, 1.0, 0),  # 2024-03-05
        ("AAPL", "SELL", 40, 12.0, 0.4, 24 * 60),  # 2024-03-06: 40*2 - .4 = 79.6
        ("AAPL", "SELL", 60, 9.0, 0.6, 24 * 60 + 5),  # 2024-03-06: 60*(-1) - .6 = -60.6
    ]
    r = realized_pnl_by_day(_fills(rows))
    assert list(r.index) == [pd.Timestamp("2024-03-05"), pd.Timestamp("2024-03-06")]
    assert r.tolist() == pytest.approx([-1.0, 19.0])
    n = traded_notional_by_day(_fills(rows))
    assert n.tolist() == pytest.approx([1000.0, 480.0 + 540.0])


def test_aware_timestamps_in_other_zones_are_ordered_as_instants():
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    fills = _fills(AAPL[:2])
    # the "later" row in UTC terms is written in New York time: 09:59 ET = 14:59 UTC, before T0.
    fills["ts"] = pd.Series([T0, datetime(2024, 3, 5, 9, 59, tzinfo=ny)], dtype=object)
    out = validate_fills(fills)
    assert out["fill_id"].tolist() == ["f1", "f0"]
    assert str(out["ts"].dt.tz) == "UTC"


def test_mark_to_market_reads_the_ledger_avg_price_column():
    ledger_rows = pd.DataFrame(
        {"symbol": ["AAPL"], "qty": [60.0], "avg_price": [11.0], "realized_pnl": [27.6]}
    )
    mtm = mark_to_market(ledger_rows, {"AAPL": 12.5}, cash=99_367.6)
    assert mtm.loc[0, "unrealized_pnl"] == pytest.approx(90.0)
    assert mtm.loc[0, "fees"] == 0.0  # unknown in that source: not invented, shown as 0
