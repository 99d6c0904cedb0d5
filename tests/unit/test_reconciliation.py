"""§J1 reconciliation: broker state is the truth; mismatches are reported, never repaired."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd
import pytest

from ais_pipelines.brokers.base import BrokerOrder, BrokerPosition, OrderSide, OrderType
from ais_pipelines.core.order_states import OrderState
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.reconciliation import (
    ADJUSTMENT_COLUMNS,
    MISMATCH_COLUMNS,
    MismatchKind,
    ReconciliationInputError,
    propose_adjustments,
    reconcile,
)

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)


def _positions(**qty: float) -> pd.DataFrame:
    return pd.DataFrame({"symbol": list(qty), "qty": list(qty.values())})


def _orders(*rows: tuple[str, str, float], symbol: str = "AAPL", mode: str | None = None) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["client_order_id", "state", "filled_qty"])
    df["symbol"] = symbol
    df["side"] = "BUY"
    if mode is not None:
        df["mode"] = mode
    return df


LEDGER_ORDERS = _orders(("c1", "FILLED", 100.0), ("c2", "ACCEPTED", 0.0))


def _kinds(report) -> list[tuple[str, str | None, str | None]]:
    m = report.mismatches
    return list(zip(m["kind"], m["symbol"], m["client_order_id"], strict=True))


def test_clean_books_reconcile():
    r = reconcile(
        _positions(AAPL=100.0, MSFT=-5.0),
        _positions(MSFT=-5.0, AAPL=100.0),
        LEDGER_ORDERS,
        LEDGER_ORDERS.copy(),
    )
    assert r.ok and not r.should_pause
    assert r.reason_code is ReasonCode.RECONCILED and r.reason_codes == (ReasonCode.RECONCILED,)
    assert r.mismatches.empty and list(r.mismatches.columns) == list(MISMATCH_COLUMNS)
    assert (r.positions_checked, r.orders_checked) == (2, 2)
    assert propose_adjustments(r).empty
    assert r.summary() == {
        "ok": True,
        "reason_code": "RECONCILED",
        "positions_checked": 2,
        "orders_checked": 2,
        "mismatches": 0,
        "by_kind": {},
    }


def test_position_qty_mismatch_reports_both_values_and_difference():
    r = reconcile(_positions(AAPL=100.0), _positions(AAPL=60.0))
    assert not r.ok and r.should_pause and r.reason_code is ReasonCode.RECONCILIATION_MISMATCH
    (row,) = r.mismatches.to_dict("records")
    assert row["kind"] == MismatchKind.POSITION_QTY_MISMATCH
    assert (row["symbol"], row["field"], row["ledger_value"], row["broker_value"]) == (
        "AAPL",
        "qty",
        "100.0",
        "60.0",
    )
    assert row["difference"] == -40.0  # broker − ledger
    assert row["reason_code"] == "RECONCILIATION_MISMATCH"


def test_missing_symbol_on_each_side():
    r = reconcile(_positions(AAPL=100.0, JPM=0.0), _positions(MSFT=7.0))
    assert _kinds(r) == [
        ("POSITION_MISSING_AT_BROKER", "AAPL", None),  # the ledger holds it, the broker does not
        ("POSITION_MISSING_IN_LEDGER", "MSFT", None),  # the broker holds it: trade outside the system?
    ]  # JPM is flat in the ledger and absent at the broker: not a mismatch
    rows = r.mismatches.set_index("symbol")
    assert rows.loc["AAPL", "broker_value"] is None and rows.loc["AAPL", "difference"] == -100.0
    assert rows.loc["MSFT", "ledger_value"] is None and rows.loc["MSFT", "difference"] == 7.0


def test_order_state_and_filled_qty_mismatch():
    broker = _orders(("c1", "FILLED", 100.0), ("c2", "PARTIALLY_FILLED", 30.0))
    r = reconcile(_positions(), _positions(), LEDGER_ORDERS, broker)
    assert _kinds(r) == [
        ("ORDER_STATE_MISMATCH", "AAPL", "c2"),
        ("ORDER_FILLED_QTY_MISMATCH", "AAPL", "c2"),
    ]
    state, filled = r.mismatches.to_dict("records")
    assert (state["ledger_value"], state["broker_value"]) == ("ACCEPTED", "PARTIALLY_FILLED")
    assert math.isnan(state["difference"])
    assert (filled["ledger_value"], filled["broker_value"], filled["difference"]) == ("0.0", "30.0", 30.0)


def test_unknown_order_on_each_side():
    ledger = _orders(("c1", "FILLED", 100.0), ("c2", "ACCEPTED", 0.0))
    broker = _orders(("c1", "FILLED", 100.0), ("x9", "FILLED", 5.0))
    r = reconcile(_positions(), _positions(), ledger, broker)
    assert _kinds(r) == [
        ("ORDER_UNKNOWN_TO_BROKER", "AAPL", "c2"),
        ("ORDER_UNKNOWN_TO_LEDGER", "AAPL", "x9"),
    ]
    assert r.mismatches["ledger_value"].tolist() == ["ACCEPTED", None]
    assert r.mismatches["broker_value"].tolist() == [None, "FILLED"]
    assert r.orders_checked == 3


def test_unsent_and_shadow_orders_may_be_unknown_to_the_broker():
    ledger = pd.concat(
        [_orders(("n1", "NEW", 0.0)), _orders(("s1", "CANCELLED", 0.0), mode="SHADOW")], ignore_index=True
    )
    assert reconcile(_positions(), _positions(), ledger, _orders()).ok
    # ...but if the broker does know a "NEW" order, it was sent after all: compared as usual.
    r = reconcile(_positions(), _positions(), ledger, _orders(("n1", "ACCEPTED", 0.0)))
    assert _kinds(r) == [("ORDER_STATE_MISMATCH", "AAPL", "n1")]


def test_tolerance():
    assert reconcile(_positions(AAPL=10.0), _positions(AAPL=10.0 + 5e-10)).ok
    tight = reconcile(_positions(AAPL=10.0), _positions(AAPL=10.000001))
    assert _kinds(tight) == [("POSITION_QTY_MISMATCH", "AAPL", None)]
    assert tight.mismatches.loc[0, "broker_value"] == "10.000001"  # full precision kept
    assert reconcile(_positions(AAPL=10.0), _positions(AAPL=10.000001), qty_tolerance=1e-5).ok
    # dust below the tolerance is flat on either side
    assert reconcile(_positions(AAPL=1e-12), _positions()).ok
    # filled qty uses the same tolerance
    b = _orders(("c1", "FILLED", 100.0 + 1e-6), ("c2", "ACCEPTED", 0.0))
    assert not reconcile(_positions(), _positions(), LEDGER_ORDERS, b).ok
    assert reconcile(_positions(), _positions(), LEDGER_ORDERS, b, qty_tolerance=1e-5).ok
    with pytest.raises(ValueError):
        reconcile(_positions(), _positions(), qty_tolerance=-1.0)


def test_fail_closed_on_duplicates_and_unknown_quantities():
    dup = pd.DataFrame({"symbol": ["AAPL", "AAPL"], "qty": [50.0, 50.0]})
    r = reconcile(dup, _positions(AAPL=100.0))
    assert _kinds(r) == [("DUPLICATE_POSITION", "AAPL", None)]
    r = reconcile(_positions(AAPL=float("nan")), _positions(AAPL=100.0))
    assert _kinds(r) == [("POSITION_QTY_MISMATCH", "AAPL", None)]
    dup_orders = _orders(("c1", "FILLED", 100.0), ("c1", "FILLED", 100.0))
    r = reconcile(_positions(), _positions(), dup_orders, _orders(("c1", "FILLED", 100.0)))
    assert _kinds(r) == [("DUPLICATE_ORDER", None, "c1")]
    with pytest.raises(ReconciliationInputError):
        reconcile(_positions(), _positions(), LEDGER_ORDERS, None)


def test_accepts_broker_and_ledger_objects():
    broker_positions = {
        "AAPL": BrokerPosition("AAPL", 100.0, 10.0),
        "MSFT": BrokerPosition("MSFT", 3.0, 50.0),
    }
    bo = BrokerOrder(
        broker_order_id="b1",
        client_order_id="c1",
        symbol="AAPL",
        side=OrderSide.BUY,
        qty=100.0,
        order_type=OrderType.MARKET,
        limit_price=None,
        status=OrderState.FILLED,
        filled_qty=100.0,
        avg_fill_price=10.0,
        created_at=T0,
        updated_at=T0,
    )
    ledger_orders = [
        {"client_order_id": "c1", "state": "FILLED", "filled_qty": 100.0, "symbol": "AAPL", "side": "SELL"}
    ]
    r = reconcile({"AAPL": 100.0}, broker_positions, ledger_orders, [bo])
    assert _kinds(r) == [
        ("POSITION_MISSING_IN_LEDGER", "MSFT", None),
        ("ORDER_SIDE_MISMATCH", "AAPL", "c1"),
    ]


def test_reconcile_never_touches_the_ledger_and_proposals_are_not_fills():
    ledger_pos = _positions(AAPL=100.0, JPM=10.0)
    ledger_orders = LEDGER_ORDERS.copy()
    before = (ledger_pos.copy(), ledger_orders.copy())
    broker_pos = _positions(AAPL=130.0, MSFT=5.0)
    broker_orders = _orders(("c1", "FILLED", 130.0), ("c2", "ACCEPTED", 0.0), ("x9", "FILLED", 5.0))
    r = reconcile(ledger_pos, broker_pos, ledger_orders, broker_orders)
    pd.testing.assert_frame_equal(ledger_pos, before[0])
    pd.testing.assert_frame_equal(ledger_orders, before[1])

    adj = propose_adjustments(r)
    assert list(adj.columns) == list(ADJUSTMENT_COLUMNS)
    assert adj["requires_approval"].all()
    assert set(adj["reason_code"]) == {"RECONCILIATION_MISMATCH"}
    # A filled-qty gap proposes importing the broker's own fills: no row invents one.
    assert "note" in adj.columns and "fill_id" not in adj.columns
    got = adj[["action", "symbol", "client_order_id", "from_value", "to_value", "delta"]].to_dict("records")
    assert got == [
        {
            "action": "ADJUST_POSITION_QTY",
            "symbol": "AAPL",
            "client_order_id": None,
            "from_value": "100.0",
            "to_value": "130.0",
            "delta": 30.0,
        },
        {
            "action": "ADJUST_POSITION_QTY",
            "symbol": "JPM",
            "client_order_id": None,
            "from_value": "10.0",
            "to_value": None,
            "delta": -10.0,
        },
        {
            "action": "ADJUST_POSITION_QTY",
            "symbol": "MSFT",
            "client_order_id": None,
            "from_value": None,
            "to_value": "5.0",
            "delta": 5.0,
        },
        {
            "action": "IMPORT_BROKER_FILLS",
            "symbol": "AAPL",
            "client_order_id": "c1",
            "from_value": "100.0",
            "to_value": "130.0",
            "delta": 30.0,
        },
        {
            "action": "IMPORT_BROKER_ORDER",
            "symbol": "AAPL",
            "client_order_id": "x9",
            "from_value": None,
            "to_value": "FILLED",
            "delta": pytest.approx(float("nan"), nan_ok=True),
        },
    ]
