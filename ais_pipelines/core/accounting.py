"""Portfolio accounting from fills (§J4): positions, cash, mark-to-market and NAV.

Pure functions over frames; no I/O, no clock. Conventions (the ledger's
``apply_fill_to_position`` follows the same ones, so both books agree):

* **Average cost.** A fill that adds to a position (or opens one) moves ``avg_cost`` to the
  quantity-weighted average of the old cost and the fill price. A fill that reduces a position
  realizes ``closed_qty × (price − avg_cost)`` (sign flipped for shorts) and leaves ``avg_cost``
  unchanged. A fill that goes *through* zero closes the whole position first and opens the
  remainder at the fill price. A flat position has ``avg_cost = 0``.
* **Fees** reduce cash when paid and count in realized P&L at once (on buys too):
  ``realized_pnl`` is trading P&L *net of all fees*; the ``fees`` column is the cumulative fees
  already inside it, kept separately for reporting.
* **Cash**: a BUY pays ``qty × price + fees``; a SELL receives ``qty × price − fees``.
  No external cash flows (deposits, withdrawals, dividends) are modelled.
* Identity (tested): ``nav = starting_cash + Σ realized_pnl + Σ unrealized_pnl``.
* Quantities with ``|qty| < QTY_EPS`` are flat (float dust from partial fills).
* Fills are applied in ``(ts, fill_id)`` order — the ledger's order — so a replay is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

QTY_EPS = 1e-9

FILL_COLUMNS: tuple[str, ...] = ("fill_id", "client_order_id", "symbol", "side", "qty", "price", "fees", "ts")
POSITION_COLUMNS: tuple[str, ...] = ("symbol", "qty", "avg_cost", "realized_pnl", "fees")
MTM_COLUMNS: tuple[str, ...] = (
    *POSITION_COLUMNS,
    "price",
    "market_value",
    "cost_basis",
    "unrealized_pnl",
    "weight",
)
FILL_PNL_COLUMNS: tuple[str, ...] = (
    *FILL_COLUMNS,
    "signed_qty",
    "cash_flow",
    "realized_pnl",
    "position_after",
    "avg_cost_after",
)
_SIDES = ("BUY", "SELL")


class AccountingError(ValueError):
    """Fills or prices that cannot be booked (bad side, non-positive qty, missing mark …)."""


@dataclass(frozen=True)
class PositionState:
    """One symbol's book: signed qty (short < 0), average cost, realized P&L net of fees, fees."""

    qty: float = 0.0
    avg_cost: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0


def apply_fill(
    state: PositionState, side: str, qty: float, price: float, fees: float
) -> tuple[PositionState, float]:
    """Book one fill; return the new state and the fill's realized P&L (net of its fees)."""
    signed = qty if side == "BUY" else -qty
    pos = 0.0 if abs(state.qty) < QTY_EPS else state.qty
    realized = -fees
    if pos == 0.0 or (pos > 0) == (signed > 0):
        new_qty = pos + signed
        avg = (abs(pos) * state.avg_cost + qty * price) / abs(new_qty)
    else:
        closing = min(abs(signed), abs(pos))
        realized += closing * (price - state.avg_cost) * (1.0 if pos > 0 else -1.0)
        new_qty = pos + signed
        if abs(new_qty) < QTY_EPS:
            new_qty, avg = 0.0, 0.0
        elif (new_qty > 0) != (pos > 0):
            avg = price  # flipped through zero: the remainder is a new position opened here
        else:
            avg = state.avg_cost
    new = PositionState(new_qty, avg, state.realized_pnl + realized, state.fees + fees)
    return new, realized


def validate_fills(fills: pd.DataFrame) -> pd.DataFrame:
    """Check a fills frame and return a clean copy sorted by ``(ts, fill_id)``.

    Raises :class:`AccountingError` on a missing column, a duplicate ``fill_id`` (it would be
    booked twice), a side other than BUY/SELL, qty ≤ 0, price ≤ 0, fees < 0, any non-finite
    number, or a naive/missing timestamp. ``ts`` is returned in UTC.
    """
    missing = [c for c in FILL_COLUMNS if c not in fills.columns]
    if missing:
        raise AccountingError(f"fills lack column(s) {missing}")
    out = fills.loc[:, list(FILL_COLUMNS)].copy()
    if out.empty:
        out["ts"] = pd.to_datetime(out["ts"], utc=True)
        for c in ("qty", "price", "fees"):
            out[c] = out[c].astype("float64")
        return out.reset_index(drop=True)
    if out["fill_id"].isna().any() or out["fill_id"].duplicated().any():
        dup = out.loc[out["fill_id"].duplicated(keep=False), "fill_id"].tolist()[:5]
        raise AccountingError(f"fill_id must be present and unique; duplicates include {dup}")
    out["side"] = out["side"].astype("str").str.upper()
    bad_side = ~out["side"].isin(_SIDES)
    if bad_side.any():
        raise AccountingError(
            f"side must be BUY or SELL; got {out.loc[bad_side, 'side'].unique().tolist()[:5]}"
        )
    for col, ok in (("qty", lambda v: v > 0), ("price", lambda v: v > 0), ("fees", lambda v: v >= 0)):
        vals = pd.to_numeric(out[col], errors="coerce").astype("float64")
        bad = ~(np.isfinite(vals.to_numpy()) & ok(vals.fillna(-1.0)).to_numpy())
        if bad.any():
            ids = out.loc[bad, "fill_id"].tolist()[:5]
            raise AccountingError(f"{col} invalid (non-finite or out of range) for fills {ids}")
        out[col] = vals
    ts = out["ts"]
    if ts.isna().any():
        raise AccountingError("ts must not be missing")
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        # Aware datetimes (possibly in different zones) are instants; a naive one is ambiguous.
        if pd.api.types.is_datetime64_dtype(ts.dtype) or any(
            getattr(v, "tzinfo", None) is None or v.tzinfo.utcoffset(v) is None for v in ts
        ):
            raise AccountingError("ts must be timezone-aware (UTC)")
        try:
            ts = pd.to_datetime(ts, utc=True)
        except (TypeError, ValueError) as exc:
            raise AccountingError(f"ts is not a timestamp column: {exc}") from exc
    out["ts"] = ts.dt.tz_convert("UTC")
    return out.sort_values(["ts", "fill_id"], kind="mergesort").reset_index(drop=True)


def fill_pnl(fills: pd.DataFrame) -> pd.DataFrame:
    """Every fill with what it did to the book (``FILL_PNL_COLUMNS``), in booking order.

    ``signed_qty`` (+buy/−sell), ``cash_flow`` (signed cash change incl. fees), ``realized_pnl``
    (this fill's realized P&L net of its fees), ``position_after`` and ``avg_cost_after``.
    """
    f = validate_fills(fills)
    books: dict[str, PositionState] = {}
    realized = np.zeros(len(f))
    pos_after = np.zeros(len(f))
    avg_after = np.zeros(len(f))
    for i, (sym, side, qty, price, fees) in enumerate(
        zip(f["symbol"], f["side"], f["qty"], f["price"], f["fees"], strict=True)
    ):
        state, realized[i] = apply_fill(books.get(sym, PositionState()), side, qty, price, fees)
        books[sym] = state
        pos_after[i], avg_after[i] = state.qty, state.avg_cost
    signed = np.where(f["side"].to_numpy() == "BUY", 1.0, -1.0) * f["qty"].to_numpy()
    f["signed_qty"] = signed
    f["cash_flow"] = -signed * f["price"].to_numpy() - f["fees"].to_numpy()
    f["realized_pnl"] = realized
    f["position_after"] = pos_after
    f["avg_cost_after"] = avg_after
    return f.loc[:, list(FILL_PNL_COLUMNS)]


def positions_from_fills(fills: pd.DataFrame, starting_cash: float) -> tuple[pd.DataFrame, float]:
    """Replay fills into positions (``POSITION_COLUMNS``, one row per symbol ever traded, sorted
    by symbol; flat symbols keep their realized P&L with ``qty = avg_cost = 0``) and cash."""
    if not math.isfinite(starting_cash):
        raise AccountingError("starting_cash must be finite")
    per_fill = fill_pnl(fills)
    cash = float(starting_cash) + float(per_fill["cash_flow"].sum())
    if per_fill.empty:
        return _empty_positions(), cash
    last = per_fill.groupby("symbol", sort=True).agg(
        qty=("position_after", "last"),
        avg_cost=("avg_cost_after", "last"),
        realized_pnl=("realized_pnl", "sum"),
        fees=("fees", "sum"),
    )
    positions = last.reset_index().loc[:, list(POSITION_COLUMNS)]
    return positions.astype({c: "float64" for c in POSITION_COLUMNS[1:]}), cash


def _empty_positions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": pd.Series([], dtype="str"),
            **{c: pd.Series([], dtype="float64") for c in POSITION_COLUMNS[1:]},
        }
    )


def mark_to_market(positions: pd.DataFrame, prices: Mapping[str, float], *, cash: float) -> pd.DataFrame:
    """Add ``price``, ``market_value`` (qty × price, negative for shorts), ``cost_basis``
    (qty × avg_cost), ``unrealized_pnl`` (market_value − cost_basis) and ``weight``
    (market_value / NAV, NAV = cash + Σ market_value) to a positions frame.

    ``cash`` is required because a weight is a share of NAV, not of invested capital.
    Fails closed: an open position without a finite positive price raises — an unmarked book
    has no NAV. Flat rows need no price (price NaN, values 0). With NAV ≤ 0 weights are NaN.
    """
    if "avg_cost" not in positions.columns and "avg_price" in positions.columns:
        positions = positions.rename(columns={"avg_price": "avg_cost"})  # the ledger's name for it
    missing = [c for c in ("symbol", "qty", "avg_cost") if c not in positions.columns]
    if missing:
        raise AccountingError(f"positions lack column(s) {missing}")
    out = positions.copy()
    qty = out["qty"].to_numpy(dtype="float64")
    open_ = np.abs(qty) >= QTY_EPS
    px = np.array([_price(prices, s) for s in out["symbol"]], dtype="float64")
    bad = open_ & ~(np.isfinite(px) & (px > 0))
    if bad.any():
        raise AccountingError(f"no valid price for open position(s) {out.loc[bad, 'symbol'].tolist()}")
    qty = np.where(open_, qty, 0.0)
    mv = np.where(open_, qty * np.where(open_, px, 0.0), 0.0)
    basis = qty * out["avg_cost"].to_numpy(dtype="float64")
    out["price"] = np.where(np.isfinite(px), px, np.nan)
    out["market_value"] = mv
    out["cost_basis"] = basis
    out["unrealized_pnl"] = mv - basis
    total = float(cash) + float(mv.sum())
    out["weight"] = mv / total if total > 0 else np.nan
    for c in ("realized_pnl", "fees"):
        if c not in out.columns:
            out[c] = 0.0
    extra = [c for c in out.columns if c not in MTM_COLUMNS]
    return out.loc[:, [*MTM_COLUMNS, *extra]].reset_index(drop=True)


def _price(prices: Mapping[str, float], symbol: str) -> float:
    v = prices.get(symbol)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def nav(cash: float, positions_mtm: pd.DataFrame) -> float:
    """Net asset value: cash plus the signed market value of every position."""
    if not math.isfinite(cash):
        raise AccountingError("cash must be finite")
    if positions_mtm.empty:
        return float(cash)
    return float(cash) + float(positions_mtm["market_value"].to_numpy(dtype="float64").sum())


def realized_pnl_by_day(fills: pd.DataFrame, tz: str = "UTC") -> pd.Series:
    """Realized P&L (net of fees) summed per calendar day of the fill time in ``tz``.

    Index: tz-naive midnight timestamps (the session-label convention of the bars), name
    ``date``; days without fills are absent. For US equities the UTC day is the session day
    (09:30–16:00 ET never crosses UTC midnight); pass the market's zone for others.
    """
    per_fill = fill_pnl(fills)
    if per_fill.empty:
        return pd.Series([], dtype="float64", index=pd.DatetimeIndex([], name="date"), name="realized_pnl")
    day = per_fill["ts"].dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    s = per_fill.groupby(day.rename("date"), sort=True)["realized_pnl"].sum()
    s.index = pd.DatetimeIndex(s.index, name="date").as_unit("ns")
    return s.rename("realized_pnl").astype("float64")


def traded_notional_by_day(fills: pd.DataFrame, tz: str = "UTC") -> pd.Series:
    """Σ qty × price of the fills per day (same day convention as :func:`realized_pnl_by_day`)."""
    f = validate_fills(fills)
    if f.empty:
        return pd.Series([], dtype="float64", index=pd.DatetimeIndex([], name="date"), name="traded_notional")
    day = f["ts"].dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    notional = (f["qty"] * f["price"]).groupby(day.rename("date"), sort=True).sum()
    notional.index = pd.DatetimeIndex(notional.index, name="date").as_unit("ns")
    return notional.rename("traded_notional").astype("float64")


# --------------------------------------------------------------------------------------------
# the book per session (issue 14: one truth for NAV, P&L, drawdown and exposure)

SESSION_TZ = "America/New_York"  # a fill belongs to the market-local date it happened on
DAILY_BOOK_COLUMNS: tuple[str, ...] = ("date", "nav", "cash", "realized_pnl", "unrealized_pnl", "gross_exposure",
                                       "open_positions")


def local_session_date(ts: pd.Series, tz: str = SESSION_TZ) -> pd.Series:
    """Market-local date of naive-UTC (or aware) timestamps."""
    t = pd.to_datetime(ts)
    if t.dt.tz is None:
        t = t.dt.tz_localize("UTC")
    return t.dt.tz_convert(tz).dt.date


def daily_marks(closes: pd.DataFrame, per_fill: pd.DataFrame) -> pd.DataFrame:
    """One mark per (symbol, session day): the close if there is one, else the day's last fill.

    ``closes``: ``symbol, date, close``; ``per_fill``: :func:`fill_pnl` rows with a ``day`` column.
    """
    parts = []
    if not closes.empty:
        b = closes.loc[closes["close"] > 0, ["symbol", "date", "close"]].copy()
        b["day"] = pd.to_datetime(b["date"]).dt.normalize()
        parts.append(pd.DataFrame({"symbol": b["symbol"], "day": b["day"], "price": b["close"], "prio": 1,
                                   "ts": pd.NaT}))
    if not per_fill.empty:
        parts.append(pd.DataFrame({"symbol": per_fill["symbol"], "day": per_fill["day"], "price": per_fill["price"],
                                   "prio": 2, "ts": per_fill["ts"].dt.tz_localize(None)}))
    if not parts:
        return pd.DataFrame(columns=["symbol", "day", "price"])
    m = pd.concat(parts, ignore_index=True)
    m = m.sort_values(["symbol", "day", "prio", "ts"], ascending=[True, True, True, False], na_position="last")
    return m.drop_duplicates(["symbol", "day"], keep="first")[["symbol", "day", "price"]]


def daily_book(
    fills: pd.DataFrame, closes: pd.DataFrame, *, starting_cash: float, end: date, tz: str = SESSION_TZ
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The paper book at the end of every session from the first fill up to ``end`` (market-local).

    The one definition of NAV, cash, P&L and exposure (issue 14) behind the ``ais`` commands, the
    governance report, the §J4 metrics and — in SQL, tested equal — the ``pnl_history`` mart:
    average-cost positions from the ledger's fills (:func:`fill_pnl`), each marked at the
    session's close, else the day's last fill price. Returns ``(book, per_fill, marks)``:
    ``book`` has :data:`DAILY_BOOK_COLUMNS` (``gross_exposure`` in money, ``realized_pnl`` that
    day's), ``per_fill`` the booked fills up to ``end`` with their ``day``, ``marks`` the marks.
    """
    f = fills.copy()
    ts = pd.to_datetime(f["ts"])
    f["ts"] = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    f = f.loc[local_session_date(f["ts"], tz) <= end]
    per_fill = fill_pnl(f)
    per_fill["day"] = pd.to_datetime(local_session_date(per_fill["ts"], tz))
    if per_fill.empty:
        return pd.DataFrame(columns=list(DAILY_BOOK_COLUMNS)), per_fill, daily_marks(closes.iloc[0:0], per_fill)
    traded = sorted(per_fill["symbol"].unique())
    first_day = per_fill["day"].min()
    b = closes.loc[closes["symbol"].isin(traded)] if not closes.empty else closes
    if not b.empty:
        b = b.loc[(pd.to_datetime(b["date"]).dt.normalize() >= first_day)
                  & (pd.to_datetime(b["date"]).dt.normalize() <= pd.Timestamp(end))]
    days = sorted(set(per_fill["day"]) | (set(pd.to_datetime(b["date"]).dt.normalize()) if not b.empty else set()))
    marks = daily_marks(closes.loc[closes["symbol"].isin(traded)] if not closes.empty else closes, per_fill)
    last_fill = per_fill.sort_values(["ts", "fill_id"]).drop_duplicates(["symbol", "day"], keep="last")
    realized = per_fill.groupby("day")["realized_pnl"].sum()
    rows = []
    for d in days:
        mv = gross = unreal = 0.0
        n_open = 0
        for sym in traded:
            book_rows = last_fill.loc[(last_fill["symbol"] == sym) & (last_fill["day"] <= d)]
            if book_rows.empty:
                continue
            qty = float(book_rows.iloc[-1]["position_after"])
            if abs(qty) < QTY_EPS:
                continue
            avg = float(book_rows.iloc[-1]["avg_cost_after"])
            mk = marks.loc[(marks["symbol"] == sym) & (marks["day"] <= d)]
            price = float(mk.iloc[-1]["price"])
            mv += qty * price
            gross += abs(qty * price)
            unreal += qty * (price - avg)
            n_open += 1
        cash = float(starting_cash) + float(per_fill.loc[per_fill["day"] <= d, "cash_flow"].sum())
        rows.append({"date": d, "nav": cash + mv, "cash": cash, "realized_pnl": float(realized.get(d, 0.0)),
                     "unrealized_pnl": unreal, "gross_exposure": gross, "open_positions": n_open})
    return pd.DataFrame(rows, columns=list(DAILY_BOOK_COLUMNS)), per_fill, marks
