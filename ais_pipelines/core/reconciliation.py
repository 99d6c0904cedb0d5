"""Ledger-vs-broker reconciliation (§J1). The broker's state is the truth.

:func:`reconcile` compares positions by symbol and orders by ``client_order_id`` and returns
a :class:`ReconciliationReport`: a mismatch table and an ``ok`` flag with reason code
RECONCILED or RECONCILIATION_MISMATCH. On a mismatch the *caller* raises the alert and pauses
trading (``trading_state.pause(..., reason_codes=(RECONCILIATION_MISMATCH,))``).

This module only reports. It never fabricates fills and never "fixes" the ledger: a fill
invented to make the books agree would hide exactly the failure reconciliation exists to
catch (a lost fill, a duplicate order, a trade made outside the system). Corrections are
explicit, audited actions taken by a person; :func:`propose_adjustments` lists what such a
correction would be, as data, for that person to review — nothing applies it.

Fail closed: duplicate keys, missing or non-finite quantities are mismatches, not skipped rows.
Order rows the ledger never sent (state NEW, or mode SHADOW) may be unknown to the broker;
if the broker does know them, they are compared like any other order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.core.reason_codes import ReasonCode

MISMATCH_COLUMNS: tuple[str, ...] = (
    "kind",
    "symbol",
    "client_order_id",
    "field",
    "ledger_value",
    "broker_value",
    "difference",
    "reason_code",
)
ADJUSTMENT_COLUMNS: tuple[str, ...] = (
    "action",
    "symbol",
    "client_order_id",
    "field",
    "from_value",
    "to_value",
    "delta",
    "reason_code",
    "requires_approval",
    "note",
)
UNSENT_STATES: frozenset[str] = frozenset({"NEW"})
UNSENT_MODES: frozenset[str] = frozenset({"SHADOW"})


class MismatchKind(StrEnum):
    POSITION_QTY_MISMATCH = "POSITION_QTY_MISMATCH"
    POSITION_MISSING_AT_BROKER = "POSITION_MISSING_AT_BROKER"  # ledger holds it, broker does not
    POSITION_MISSING_IN_LEDGER = "POSITION_MISSING_IN_LEDGER"  # broker holds it, ledger does not
    DUPLICATE_POSITION = "DUPLICATE_POSITION"  # a symbol listed twice on one side: ambiguous
    ORDER_UNKNOWN_TO_BROKER = "ORDER_UNKNOWN_TO_BROKER"
    ORDER_UNKNOWN_TO_LEDGER = "ORDER_UNKNOWN_TO_LEDGER"
    ORDER_STATE_MISMATCH = "ORDER_STATE_MISMATCH"
    ORDER_FILLED_QTY_MISMATCH = "ORDER_FILLED_QTY_MISMATCH"
    ORDER_SYMBOL_MISMATCH = "ORDER_SYMBOL_MISMATCH"
    ORDER_SIDE_MISMATCH = "ORDER_SIDE_MISMATCH"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"


class ReconciliationInputError(ValueError):
    """An input frame lacks the columns needed to compare (a programming error, not a mismatch)."""


@dataclass(frozen=True)
class ReconciliationReport:
    """Outcome of one comparison. ``mismatches`` has ``MISMATCH_COLUMNS``; values are text
    (``ledger_value``/``broker_value``, None when the side has no row) so one table holds
    quantities and states; ``difference`` is broker − ledger for quantities, else NaN."""

    ok: bool
    reason_code: ReasonCode
    mismatches: pd.DataFrame
    positions_checked: int
    orders_checked: int

    @property
    def reason_codes(self) -> tuple[ReasonCode, ...]:
        return (self.reason_code,)

    @property
    def should_pause(self) -> bool:
        """§J1: any mismatch pauses trading until a person has looked."""
        return not self.ok

    def summary(self) -> dict[str, Any]:
        """Plain-JSON summary for the audit log and asset metadata."""
        counts = self.mismatches["kind"].value_counts().sort_index() if len(self.mismatches) else pd.Series()
        return {
            "ok": self.ok,
            "reason_code": str(self.reason_code),
            "positions_checked": self.positions_checked,
            "orders_checked": self.orders_checked,
            "mismatches": len(self.mismatches),
            "by_kind": {str(k): int(v) for k, v in counts.items()},
        }


# --- input coercion ---------------------------------------------------------------------------


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return None


def _text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return str(v.value if isinstance(v, StrEnum) else v)


def positions_frame(positions: pd.DataFrame | Mapping[str, Any] | Iterable[Any]) -> pd.DataFrame:
    """``symbol``/``qty`` frame from a DataFrame, a ``{symbol: qty}`` mapping, a
    ``{symbol: position object}`` mapping (``broker.get_positions()``, ``ledger.positions()``)
    or an iterable of objects/dicts with ``symbol`` and ``qty``."""
    if isinstance(positions, pd.DataFrame):
        missing = [c for c in ("symbol", "qty") if c not in positions.columns]
        if missing:
            raise ReconciliationInputError(f"positions lack column(s) {missing}")
        rows = list(zip(positions["symbol"], positions["qty"], strict=True))
    elif isinstance(positions, Mapping):
        rows = [
            (sym, v if isinstance(v, int | float | np.number) or v is None else _get(v, "qty"))
            for sym, v in positions.items()
        ]
    else:
        rows = [(_get(p, "symbol"), _get(p, "qty")) for p in positions]
    return pd.DataFrame(
        {
            "symbol": pd.Series([_text(s) for s, _ in rows], dtype="object"),
            "qty": pd.Series([_num(q) for _, q in rows], dtype="float64"),
        }
    )


def orders_frame(orders: pd.DataFrame | Iterable[Any]) -> pd.DataFrame:
    """``client_order_id``/``state``/``filled_qty`` (+ ``symbol``, ``side``, ``mode`` when known)
    from a DataFrame or an iterable of order objects/dicts. ``status`` (the broker's name) is
    read as ``state``."""
    if isinstance(orders, pd.DataFrame):
        df = orders.rename(columns={"status": "state"}) if "state" not in orders.columns else orders
        missing = [c for c in ("client_order_id", "state", "filled_qty") if c not in df.columns]
        if missing:
            raise ReconciliationInputError(f"orders lack column(s) {missing}")
        records = df.to_dict("records")
    else:
        records = list(orders)
    cols: dict[str, list[Any]] = {
        c: [] for c in ("client_order_id", "state", "filled_qty", "symbol", "side", "mode")
    }
    for r in records:
        cols["client_order_id"].append(_text(_get(r, "client_order_id")))
        state = _text(_get(r, "state", "status"))
        cols["state"].append(state.upper() if state else state)  # some brokers spell states in lowercase
        cols["filled_qty"].append(_num(_get(r, "filled_qty")))
        for c in ("symbol", "side", "mode"):
            cols[c].append(_text(_get(r, c)))
    return pd.DataFrame(
        {c: pd.Series(v, dtype="float64" if c == "filled_qty" else "object") for c, v in cols.items()}
    )


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...], dtypes: Mapping[str, str]) -> pd.DataFrame:
    # Object columns built explicitly: inference would turn a missing side (None) into NaN.
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=dtypes.get(c, "object")) for c in columns})


# --- the comparison ---------------------------------------------------------------------------


def _row(
    kind: MismatchKind,
    *,
    symbol: str | None = None,
    client_order_id: str | None = None,
    field: str,
    ledger: Any = None,
    broker: Any = None,
    difference: float = math.nan,
) -> dict[str, Any]:
    return {
        "kind": str(kind),
        "symbol": symbol,
        "client_order_id": client_order_id,
        "field": field,
        "ledger_value": _fmt(ledger),
        "broker_value": _fmt(broker),
        "difference": difference,
        "reason_code": str(ReasonCode.RECONCILIATION_MISMATCH),
    }


def _fmt(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float | np.floating):
        return repr(float(v))  # full precision: a 1e-7 share difference must stay visible
    return str(v)


def _same_qty(a: float, b: float, tol: float) -> bool:
    # NaN compares False: an unknown quantity never reconciles.
    return abs(a - b) <= tol


def _positions(ledger: pd.DataFrame, broker: pd.DataFrame, tol: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for side, df in (("ledger", ledger), ("broker", broker)):
        dup = df["symbol"][df["symbol"].duplicated(keep=False) | df["symbol"].isna()]
        for sym in sorted({str(s) for s in dup}):
            rows.append(
                _row(
                    MismatchKind.DUPLICATE_POSITION,
                    symbol=sym,
                    field="symbol",
                    **{side: "duplicate or missing symbol"},
                )
            )
    led = ledger.dropna(subset=["symbol"]).drop_duplicates("symbol", keep=False).set_index("symbol")["qty"]
    brk = broker.dropna(subset=["symbol"]).drop_duplicates("symbol", keep=False).set_index("symbol")["qty"]
    dups = {r["symbol"] for r in rows}
    for sym in sorted((set(led.index) | set(brk.index)) - dups):
        lq, bq = led.get(sym), brk.get(sym)
        l_open = lq is not None and not _same_qty(lq, 0.0, tol)
        b_open = bq is not None and not _same_qty(bq, 0.0, tol)
        diff = (0.0 if bq is None else bq) - (0.0 if lq is None else lq)
        if l_open and b_open:
            if not _same_qty(lq, bq, tol):
                rows.append(
                    _row(
                        MismatchKind.POSITION_QTY_MISMATCH,
                        symbol=sym,
                        field="qty",
                        ledger=lq,
                        broker=bq,
                        difference=diff,
                    )
                )
        elif l_open:
            rows.append(
                _row(
                    MismatchKind.POSITION_MISSING_AT_BROKER,
                    symbol=sym,
                    field="qty",
                    ledger=lq,
                    broker=bq,
                    difference=diff,
                )
            )
        elif b_open:
            rows.append(
                _row(
                    MismatchKind.POSITION_MISSING_IN_LEDGER,
                    symbol=sym,
                    field="qty",
                    ledger=lq,
                    broker=bq,
                    difference=diff,
                )
            )
    return rows


def _orders(
    ledger: pd.DataFrame,
    broker: pd.DataFrame,
    tol: float,
    unsent_states: frozenset[str],
    unsent_modes: frozenset[str],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for side, df in (("ledger", ledger), ("broker", broker)):
        bad = df["client_order_id"][
            df["client_order_id"].duplicated(keep=False) | df["client_order_id"].isna()
        ]
        for cid in sorted({str(c) for c in bad}):
            rows.append(
                _row(
                    MismatchKind.DUPLICATE_ORDER,
                    client_order_id=cid,
                    field="client_order_id",
                    **{side: "duplicate or missing client_order_id"},
                )
            )
    dups = {r["client_order_id"] for r in rows}
    led = {r["client_order_id"]: r for r in ledger.to_dict("records") if r["client_order_id"] not in dups}
    brk = {r["client_order_id"]: r for r in broker.to_dict("records") if r["client_order_id"] not in dups}
    for cid in sorted(set(led) | set(brk)):
        lo, bo = led.get(cid), brk.get(cid)
        if bo is None:
            assert lo is not None
            if lo["state"] in unsent_states or lo.get("mode") in unsent_modes:
                continue  # never sent (intent only, or shadow): the broker cannot know it
            rows.append(
                _row(
                    MismatchKind.ORDER_UNKNOWN_TO_BROKER,
                    symbol=lo.get("symbol"),
                    client_order_id=cid,
                    field="state",
                    ledger=lo["state"],
                )
            )
            continue
        if lo is None:
            rows.append(
                _row(
                    MismatchKind.ORDER_UNKNOWN_TO_LEDGER,
                    symbol=bo.get("symbol"),
                    client_order_id=cid,
                    field="state",
                    broker=bo["state"],
                )
            )
            continue
        sym = bo.get("symbol") or lo.get("symbol")
        for field, kind in (
            ("symbol", MismatchKind.ORDER_SYMBOL_MISMATCH),
            ("side", MismatchKind.ORDER_SIDE_MISMATCH),
        ):
            lv, bv = lo.get(field), bo.get(field)
            if lv is not None and bv is not None and lv.upper() != bv.upper():
                rows.append(_row(kind, symbol=sym, client_order_id=cid, field=field, ledger=lv, broker=bv))
        if lo["state"] != bo["state"]:
            rows.append(
                _row(
                    MismatchKind.ORDER_STATE_MISMATCH,
                    symbol=sym,
                    client_order_id=cid,
                    field="state",
                    ledger=lo["state"],
                    broker=bo["state"],
                )
            )
        lf, bf = lo["filled_qty"], bo["filled_qty"]
        if not _same_qty(lf, bf, tol):
            rows.append(
                _row(
                    MismatchKind.ORDER_FILLED_QTY_MISMATCH,
                    symbol=sym,
                    client_order_id=cid,
                    field="filled_qty",
                    ledger=lf,
                    broker=bf,
                    difference=bf - lf,
                )
            )
    return rows


def reconcile(
    ledger_positions: pd.DataFrame | Mapping[str, Any] | Iterable[Any],
    broker_positions: pd.DataFrame | Mapping[str, Any] | Iterable[Any],
    ledger_orders: pd.DataFrame | Iterable[Any] | None = None,
    broker_orders: pd.DataFrame | Iterable[Any] | None = None,
    qty_tolerance: float = 1e-9,
    *,
    unsent_states: Iterable[str] = UNSENT_STATES,
    unsent_modes: Iterable[str] = UNSENT_MODES,
) -> ReconciliationReport:
    """Compare the ledger with the broker; report, never repair.

    Positions (by symbol): |qty| ≤ ``qty_tolerance`` is flat, so a flat ledger row without a
    broker row is fine. Both open and |Δqty| > tolerance → POSITION_QTY_MISMATCH; open on one
    side only → POSITION_MISSING_AT_BROKER / POSITION_MISSING_IN_LEDGER.

    Orders (by ``client_order_id``; pass both or neither): state differs → ORDER_STATE_MISMATCH;
    |Δfilled_qty| > tolerance → ORDER_FILLED_QTY_MISMATCH; symbol/side differ → ORDER_SYMBOL_/
    ORDER_SIDE_MISMATCH; present on one side only → ORDER_UNKNOWN_TO_BROKER /
    ORDER_UNKNOWN_TO_LEDGER, except ledger rows in ``unsent_states`` or ``unsent_modes``.
    The broker list should cover the same period as the ledger list (e.g. all orders of the
    session); an order the broker reports that the ledger never wrote is a trade made outside
    the system and is reported.
    """
    if not math.isfinite(qty_tolerance) or qty_tolerance < 0:
        raise ValueError("qty_tolerance must be a finite number ≥ 0")
    if (ledger_orders is None) != (broker_orders is None):
        raise ReconciliationInputError("pass both ledger_orders and broker_orders, or neither")
    lp, bp = positions_frame(ledger_positions), positions_frame(broker_positions)
    rows = _positions(lp, bp, qty_tolerance)
    n_orders = 0
    if ledger_orders is not None and broker_orders is not None:
        lo, bo = orders_frame(ledger_orders), orders_frame(broker_orders)
        rows += _orders(
            lo, bo, qty_tolerance, frozenset(map(str, unsent_states)), frozenset(map(str, unsent_modes))
        )
        n_orders = len(set(lo["client_order_id"].dropna()) | set(bo["client_order_id"].dropna()))
    mismatches = _frame(rows, MISMATCH_COLUMNS, {"difference": "float64"})
    ok = mismatches.empty
    return ReconciliationReport(
        ok=ok,
        reason_code=ReasonCode.RECONCILED if ok else ReasonCode.RECONCILIATION_MISMATCH,
        mismatches=mismatches,
        positions_checked=len(set(lp["symbol"].dropna()) | set(bp["symbol"].dropna())),
        orders_checked=n_orders,
    )


# --- proposed corrections (data only) --------------------------------------------------------

_ACTIONS: dict[str, tuple[str, str]] = {
    MismatchKind.POSITION_QTY_MISMATCH: (
        "ADJUST_POSITION_QTY",
        "find the broker fills missing from (or extra in) the ledger by fill_id first",
    ),
    MismatchKind.POSITION_MISSING_AT_BROKER: (
        "ADJUST_POSITION_QTY",
        "broker holds none: check for fills booked twice or an unrecorded close",
    ),
    MismatchKind.POSITION_MISSING_IN_LEDGER: (
        "ADJUST_POSITION_QTY",
        "broker holds a position the ledger never booked: trade outside the system?",
    ),
    MismatchKind.ORDER_STATE_MISMATCH: (
        "SET_ORDER_STATE",
        "sync the order from the broker through the OMS transition table",
    ),
    MismatchKind.ORDER_FILLED_QTY_MISMATCH: (
        "IMPORT_BROKER_FILLS",
        "import the broker's own fills (with their fill_ids); never synthesize one",
    ),
    MismatchKind.ORDER_UNKNOWN_TO_BROKER: (
        "INVESTIGATE_ORDER",
        "the ledger believes it was sent; OMS recovery decides by client_order_id",
    ),
    MismatchKind.ORDER_UNKNOWN_TO_LEDGER: (
        "IMPORT_BROKER_ORDER",
        "an order the system did not place: review before importing",
    ),
    MismatchKind.ORDER_SYMBOL_MISMATCH: ("INVESTIGATE_ORDER", "same client_order_id, different symbol"),
    MismatchKind.ORDER_SIDE_MISMATCH: ("INVESTIGATE_ORDER", "same client_order_id, different side"),
    MismatchKind.DUPLICATE_POSITION: ("INVESTIGATE_INPUT", "one side lists a symbol twice"),
    MismatchKind.DUPLICATE_ORDER: ("INVESTIGATE_INPUT", "one side lists a client_order_id twice"),
}


def propose_adjustments(report: ReconciliationReport) -> pd.DataFrame:
    """What a person would change in the ledger to match the broker — proposals, not actions.

    One row per mismatch (``ADJUSTMENT_COLUMNS``): the action, the field, its ledger value
    (``from_value``) and the broker's (``to_value``), ``delta`` (broker − ledger for
    quantities), ``requires_approval`` (always True) and a note on what to check first. No row
    is a fill: a filled-qty gap proposes importing the broker's *own* fills, never a made-up one.
    """
    rows = []
    for m in report.mismatches.to_dict("records"):
        action, note = _ACTIONS[m["kind"]]
        rows.append(
            {
                "action": action,
                "symbol": m["symbol"],
                "client_order_id": m["client_order_id"],
                "field": m["field"],
                "from_value": m["ledger_value"],
                "to_value": m["broker_value"],
                "delta": m["difference"],
                "reason_code": str(ReasonCode.RECONCILIATION_MISMATCH),
                "requires_approval": True,
                "note": note,
            }
        )
    return _frame(rows, ADJUSTMENT_COLUMNS, {"delta": "float64", "requires_approval": "bool"})
