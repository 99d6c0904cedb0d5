"""Portfolio metrics (§J4): P&L history, drawdown, exposure, leverage, turnover, Sharpe,
backtest-vs-paper slippage and gate pass rates — plus their Prometheus text form.

Conventions, the same everywhere in this module:

* **Drawdowns are positive fractions** of the reference NAV: 0.25 means 25 % below the peak.
  ``drawdown`` is measured from the running high-water mark; ``daily_drawdown`` from the
  session's opening NAV (what the kill switch and the 3 % pre-trade rule read).
* **Returns** are simple daily returns ``nav_t / nav_{t−1} − 1``.
* **Sharpe** = mean / sample std (ddof = 1) of daily excess returns × √252. NaN when fewer
  than 2 returns or zero dispersion: an undefined ratio is reported as undefined, never as
  ±inf or 0 (a fake number would pass a threshold it should not).
* **Turnover** = traded notional (Σ qty × price, both sides) / average NAV over the window.
* **Slippage** in bps against the model's expected price, signed by side so a *worse* fill is
  positive: BUY ``(fill − expected) / expected``, SELL ``(expected − fill) / expected``.
* Undefined numbers are NaN, never silently 0; counts are floats so every metric is a gauge.

Nothing here reads a clock: dates come in with the data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from ais_pipelines.core.accounting import QTY_EPS, SESSION_TZ, daily_book, validate_fills

TRADING_DAYS = 252
PNL_HISTORY_COLUMNS: tuple[str, ...] = (
    "date",
    "nav",
    "daily_pnl",
    "daily_return",
    "realized_pnl",
    "unrealized_pnl",
    "drawdown",
    "high_water_mark",
)
SLIPPAGE_COLUMNS: tuple[str, ...] = (
    "fill_id",
    "client_order_id",
    "symbol",
    "side",
    "qty",
    "price",
    "expected_price",
    "notional",
    "slippage_bps",
)
DECISIONS = ("APPROVE", "REVIEW", "REJECT")
METRIC_PREFIX = "ais_"
GATE_CHECK_PREFIX = "gate_check_pass_rate__"

# Fixed keys of ``portfolio_metrics`` (gate checks add ``gate_check_pass_rate__<rule_id>``).
METRIC_HELP: dict[str, str] = {
    "nav": "Net asset value (cash + signed market value)",
    "cash": "Cash balance",
    "realized_pnl": "Cumulative realized P&L, net of fees",
    "unrealized_pnl": "Unrealized P&L of open positions at the marks",
    "total_pnl": "Realized plus unrealized P&L",
    "fees": "Cumulative fees paid",
    "daily_pnl": "NAV change of the session (so far, intraday)",
    "daily_return": "Simple return of the session (so far, intraday)",
    "high_water_mark": "Highest NAV so far",
    "drawdown": "Current drawdown from the high-water mark (fraction, positive)",
    "max_drawdown": "Maximum drawdown over the history (fraction, positive)",
    "daily_drawdown": "Loss since the session's opening NAV (fraction, positive)",
    "long_exposure": "Sum of long market values",
    "short_exposure": "Sum of absolute short market values",
    "gross_exposure": "Sum of absolute market values",
    "net_exposure": "Sum of signed market values",
    "leverage": "Gross exposure / NAV",
    "net_leverage": "Net exposure / NAV",
    "open_positions": "Number of non-flat positions",
    "turnover": "Traded notional / average NAV over the turnover window",
    "sharpe": "Annualized Sharpe ratio of daily returns (sqrt(252))",
    "slippage_bps": "Notional-weighted paper-vs-model slippage in bps (worse fill positive)",
    "slippage_bps_mean": "Unweighted mean slippage in bps (worse fill positive)",
    "slippage_fills": "Fills with an expected price (slippage sample size)",
    "gate_decisions": "Pre-trade decisions in the sample",
    "gate_approve_rate": "Share of pre-trade decisions APPROVE",
    "gate_review_rate": "Share of pre-trade decisions REVIEW",
    "gate_reject_rate": "Share of pre-trade decisions REJECT",
}
METRIC_KEYS: tuple[str, ...] = tuple(METRIC_HELP)


# --- P&L history and drawdown ---------------------------------------------------------------


def _daily_index(idx: Any) -> pd.DatetimeIndex:
    """Session labels as tz-naive midnight timestamps (the bars' date convention)."""
    di = pd.DatetimeIndex(pd.to_datetime(idx))
    if di.tz is not None:
        di = di.tz_localize(None)
    return di.normalize().as_unit("ns")  # one unit everywhere (pandas 3 infers "s" from dates)


def _as_daily_series(s: pd.Series, name: str) -> pd.Series:
    out = pd.Series(pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64"), index=_daily_index(s.index))
    if out.index.duplicated().any():
        raise ValueError(f"{name} has duplicate dates")
    return out.sort_index()


def pnl_history(
    nav_series: pd.Series,
    realized_by_day: pd.Series | None = None,
    unrealized_by_day: pd.Series | None = None,
    *,
    starting_nav: float | None = None,
) -> pd.DataFrame:
    """The ``pnl_history`` table (§K1): one row per session of ``nav_series`` (end-of-day NAV
    indexed by session date), columns ``PNL_HISTORY_COLUMNS``.

    * ``daily_pnl`` = NAV change; on the first row it is ``nav − starting_nav`` when
      ``starting_nav`` is given, else NaN (no previous NAV). ``daily_return`` likewise.
    * ``realized_pnl``: that day's realized P&L net of fees (0 on days without fills), from
      ``realized_by_day`` (e.g. ``accounting.realized_pnl_by_day``). A realized date outside the
      NAV series raises: dropping it would lose P&L.
    * ``unrealized_pnl``: end-of-day unrealized P&L of the open book (a level). Taken from
      ``unrealized_by_day`` when given; otherwise derived from the no-external-flows identity
      ``nav − starting_nav = Σ realized + unrealized`` (NaN without ``starting_nav``).
    * ``high_water_mark`` = running max of NAV (including ``starting_nav``);
      ``drawdown`` = 1 − nav / high_water_mark (positive fraction).
    """
    nav_s = _as_daily_series(nav_series, "nav_series")
    if not np.isfinite(nav_s.to_numpy()).all():
        raise ValueError("nav_series must be finite")
    realized = pd.Series(0.0, index=nav_s.index)
    if realized_by_day is not None and len(realized_by_day):
        r = _as_daily_series(realized_by_day, "realized_by_day")
        outside = r.index.difference(nav_s.index)
        if len(outside):
            raise ValueError(f"realized P&L on dates without a NAV: {[d.date() for d in outside[:5]]}")
        realized = r.reindex(nav_s.index, fill_value=0.0)
    prev = nav_s.shift(1)
    if starting_nav is not None and len(nav_s):
        prev.iloc[0] = float(starting_nav)
    daily_pnl = nav_s - prev
    daily_return = daily_pnl / prev.where(prev > 0)
    if unrealized_by_day is not None:
        unrealized = _as_daily_series(unrealized_by_day, "unrealized_by_day").reindex(nav_s.index)
    elif starting_nav is not None:
        unrealized = nav_s - float(starting_nav) - realized.cumsum()
    else:
        unrealized = pd.Series(np.nan, index=nav_s.index)
    hwm = nav_s.cummax()
    if starting_nav is not None:
        hwm = np.maximum(hwm, float(starting_nav))
    drawdown = 1.0 - nav_s / hwm.where(hwm > 0)
    out = pd.DataFrame(
        {
            "date": nav_s.index,
            "nav": nav_s.to_numpy(),
            "daily_pnl": daily_pnl.to_numpy(),
            "daily_return": daily_return.to_numpy(),
            "realized_pnl": realized.to_numpy(dtype="float64"),
            "unrealized_pnl": unrealized.to_numpy(dtype="float64"),
            "drawdown": drawdown.to_numpy(dtype="float64"),
            "high_water_mark": np.asarray(hwm, dtype="float64"),
        }
    )
    return out.loc[:, list(PNL_HISTORY_COLUMNS)]


BOOK_HISTORY_COLUMNS: tuple[str, ...] = (*PNL_HISTORY_COLUMNS, "cash", "gross_exposure", "open_positions")


def book_history(
    fills: pd.DataFrame, closes: pd.DataFrame, *, starting_cash: float, end: Any, tz: str = SESSION_TZ
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """NAV, P&L, drawdown and exposure per session up to ``end``: :func:`accounting.daily_book`
    through :func:`pnl_history` (``BOOK_HISTORY_COLUMNS``; ``gross_exposure`` in money). What the
    CLI, the governance report and the metrics show (issue 14). Also returns ``per_fill, marks``."""
    daily, per_fill, marks = daily_book(fills, closes, starting_cash=starting_cash, end=end, tz=tz)
    if daily.empty:
        return pd.DataFrame(columns=list(BOOK_HISTORY_COLUMNS)), per_fill, marks
    d = daily.set_index("date")
    history = pnl_history(d["nav"], d["realized_pnl"], d["unrealized_pnl"], starting_nav=starting_cash)
    history["cash"] = d["cash"].to_numpy()
    history["gross_exposure"] = d["gross_exposure"].to_numpy()
    history["open_positions"] = d["open_positions"].to_numpy()
    return history, per_fill, marks


def max_drawdown(
    nav_values: pd.Series | np.ndarray | Iterable[float], starting_nav: float | None = None
) -> float:
    """Largest peak-to-trough fall as a positive fraction of the peak; NaN for an empty path.

    ``starting_nav`` (if given) counts as the first peak, so a loss from day one shows.
    """
    v = np.asarray(
        list(nav_values) if not isinstance(nav_values, pd.Series | np.ndarray) else nav_values,
        dtype="float64",
    )
    if starting_nav is not None:
        v = np.concatenate([[float(starting_nav)], v])
    if v.size == 0:
        return math.nan
    if not np.isfinite(v).all() or (v <= 0).any():
        return math.nan  # a non-positive NAV has no meaningful drawdown fraction
    peak = np.maximum.accumulate(v)
    return float(np.max(1.0 - v / peak))


def daily_drawdown(open_nav: float, current_nav: float) -> float:
    """Loss since the session's opening NAV as a positive fraction (0 when up on the day).

    Computed as ``(open − current) / open``: the subtraction is exact for nearby values, so a
    loss that is exactly the limit in the inputs compares equal to it. NaN when either NAV is
    non-finite or ``open_nav ≤ 0`` (the caller treats NaN as a breach).
    """
    if not (math.isfinite(open_nav) and math.isfinite(current_nav)) or open_nav <= 0:
        return math.nan
    return max(0.0, (open_nav - current_nav) / open_nav)


def daily_loss_breached(open_nav: float, current_nav: float, limit: float) -> bool:
    """Kill-switch test (§J2): loss since the open ≥ ``limit`` (fraction). Fails closed: an
    unknown loss (NaN) counts as a breach. Latching is the trading-state machine's job."""
    if not math.isfinite(limit) or limit <= 0:
        raise ValueError("daily loss limit must be a positive fraction")
    dd = daily_drawdown(open_nav, current_nav)
    return math.isnan(dd) or dd >= limit


# --- exposure, turnover, Sharpe --------------------------------------------------------------


def exposure(positions_mtm: pd.DataFrame, nav_value: float) -> dict[str, float]:
    """Long/short/gross/net exposure (currency) and gross/net leverage (÷ NAV; NaN if NAV ≤ 0)."""
    mv = positions_mtm["market_value"].to_numpy(dtype="float64") if len(positions_mtm) else np.zeros(0)
    long_ = float(mv[mv > 0].sum())
    short = abs(float(mv[mv < 0].sum()))  # abs, not negation: no "-0.0" gauge when flat
    gross, net = long_ + short, long_ - short
    ok = math.isfinite(nav_value) and nav_value > 0
    return {
        "long_exposure": long_,
        "short_exposure": short,
        "gross_exposure": gross,
        "net_exposure": net,
        "leverage": gross / nav_value if ok else math.nan,
        "net_leverage": net / nav_value if ok else math.nan,
    }


def turnover(
    fills: pd.DataFrame,
    nav_series: pd.Series,
    window: int | None = None,
    tz: str = "UTC",
) -> float:
    """Traded notional / average NAV over the last ``window`` sessions of ``nav_series``
    (all of it when None). Fills count when their day (in ``tz``) falls within the window's
    first and last session. NaN when there is no NAV or the average NAV is ≤ 0."""
    nav_s = _as_daily_series(nav_series, "nav_series")
    if window is not None:
        if window < 1:
            raise ValueError("window must be ≥ 1")
        nav_s = nav_s.iloc[-window:]
    if nav_s.empty:
        return math.nan
    avg_nav = float(nav_s.mean())
    if not math.isfinite(avg_nav) or avg_nav <= 0:
        return math.nan
    f = validate_fills(fills)
    if f.empty:
        return 0.0
    day = f["ts"].dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    inside = ((day >= nav_s.index[0]) & (day <= nav_s.index[-1])).to_numpy()
    notional = float((f["qty"].to_numpy() * f["price"].to_numpy())[inside].sum())
    return notional / avg_nav


def sharpe_ratio(
    daily_returns: pd.Series | np.ndarray | Iterable[float],
    risk_free_rate: float = 0.0,
    periods_per_year: int = TRADING_DAYS,
) -> float:
    """Annualized Sharpe: mean / std (ddof=1) of daily excess returns × √periods_per_year.

    NaNs in the input are dropped. Returns NaN with fewer than 2 returns or zero std.
    ``risk_free_rate`` is annual, spread evenly over the periods.
    """
    r = np.asarray(
        daily_returns if isinstance(daily_returns, pd.Series | np.ndarray) else list(daily_returns),
        dtype="float64",
    )
    r = r[np.isfinite(r)] - risk_free_rate / periods_per_year
    if r.size < 2:
        return math.nan
    sd = float(np.std(r, ddof=1))
    if not sd > 0:
        return math.nan
    return float(np.mean(r)) / sd * math.sqrt(periods_per_year)


# --- slippage and gate pass rates -----------------------------------------------------------


def slippage_bps(side: str | Iterable[str], fill_price: Any, expected_price: Any) -> Any:
    """Signed slippage in bps; a worse fill (paid more / received less) is positive.

    Works on scalars (returns float) or arrays (returns ndarray). Non-positive expected → NaN.
    """
    sides = np.asarray(side, dtype=object)
    sign = np.where(np.char.upper(sides.astype(str)) == "BUY", 1.0, -1.0)
    if not np.isin(np.char.upper(sides.astype(str)), ["BUY", "SELL"]).all():
        raise ValueError("side must be BUY or SELL")
    fill = np.asarray(fill_price, dtype="float64")
    exp = np.asarray(expected_price, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        bps = np.where(exp > 0, sign * (fill - exp) / exp * 1e4, np.nan)
    return float(bps) if np.ndim(bps) == 0 else bps


def slippage_table(
    fills: pd.DataFrame, expected_prices: Mapping[str, float] | pd.Series | None = None
) -> pd.DataFrame:
    """Per fill: model's expected price, notional and signed slippage (``SLIPPAGE_COLUMNS``).

    The expected price comes from an ``expected_price`` column of ``fills`` or, when given,
    from ``expected_prices`` keyed by ``client_order_id`` (the model price the order was sized
    on). Fills without one get NaN and are left out of the summaries.
    """
    has_col = "expected_price" in fills.columns
    f = validate_fills(fills)
    if expected_prices is not None:
        lookup = (
            dict(expected_prices.items()) if isinstance(expected_prices, pd.Series) else dict(expected_prices)
        )
        exp = f["client_order_id"].map(lambda c: lookup.get(c, np.nan))
    elif has_col:
        by_id = pd.Series(
            pd.to_numeric(fills["expected_price"], errors="coerce").to_numpy(dtype="float64"),
            index=fills["fill_id"].to_numpy(),
        )
        exp = f["fill_id"].map(by_id)
    else:
        raise ValueError("no expected prices: pass expected_prices or an expected_price column")
    f["expected_price"] = pd.to_numeric(exp, errors="coerce").astype("float64")
    f["notional"] = f["qty"] * f["price"]
    f["slippage_bps"] = (
        slippage_bps(f["side"].to_numpy(), f["price"].to_numpy(), f["expected_price"].to_numpy())
        if len(f)
        else np.zeros(0)
    )
    return f.loc[:, list(SLIPPAGE_COLUMNS)]


def slippage_summary(table: pd.DataFrame) -> dict[str, float]:
    """``slippage_bps`` (notional-weighted), ``slippage_bps_mean`` and ``slippage_fills``."""
    ok = table.loc[np.isfinite(table["slippage_bps"].to_numpy(dtype="float64"))]
    n = float(len(ok))
    if ok.empty:
        return {"slippage_bps": math.nan, "slippage_bps_mean": math.nan, "slippage_fills": 0.0}
    w = ok["notional"].to_numpy(dtype="float64")
    s = ok["slippage_bps"].to_numpy(dtype="float64")
    return {
        "slippage_bps": float((w * s).sum() / w.sum()),
        "slippage_bps_mean": float(s.mean()),
        "slippage_fills": n,
    }


def gate_pass_rates(
    decisions: pd.DataFrame,
    hits: pd.DataFrame | None = None,
    checks: Iterable[str] | None = None,
) -> dict[str, float]:
    """Shares of APPROVE / REVIEW / REJECT in ``decisions`` (column ``decision``) and, per
    check, the share of orders that passed it.

    Per-check rates come from the policy ``hits`` table (``order_id``, ``rule_id``): pass share =
    1 − distinct orders hit by the rule / orders. ``checks`` lists the rule ids to report, so a
    rule nobody tripped shows 1.0 (without it, only rules with hits appear). Keys:
    ``gate_decisions``, ``gate_{approve,review,reject}_rate`` and
    ``gate_check_pass_rate__<rule_id>``. Rates are NaN with no decisions.
    """
    if "decision" not in decisions.columns:
        raise ValueError("decisions need a 'decision' column")
    d = decisions["decision"].astype("str").str.upper()
    unknown = sorted(set(d) - set(DECISIONS))
    if unknown:
        raise ValueError(f"unknown decision value(s) {unknown}")
    n = len(d)
    out: dict[str, float] = {"gate_decisions": float(n)}
    for dec in DECISIONS:
        out[f"gate_{dec.lower()}_rate"] = float((d == dec).sum()) / n if n else math.nan
    rule_ids: list[str] = list(dict.fromkeys(checks)) if checks is not None else []
    hit_orders: dict[str, int] = {}
    if hits is not None and len(hits):
        if not {"order_id", "rule_id"} <= set(hits.columns):
            raise ValueError("hits need 'order_id' and 'rule_id' columns")
        if "order_id" in decisions.columns:
            unknown_orders = set(hits["order_id"]) - set(decisions["order_id"])
            if unknown_orders:
                raise ValueError(
                    f"hits for orders without a decision: {sorted(map(str, unknown_orders))[:5]}"
                )
        hit_orders = hits.groupby("rule_id")["order_id"].nunique().astype(int).to_dict()
        if checks is None:
            rule_ids = sorted(hit_orders)
    for rid in rule_ids:
        out[f"{GATE_CHECK_PREFIX}{rid}"] = 1.0 - hit_orders.get(rid, 0) / n if n else math.nan
    return out


# --- everything at once, and the Prometheus form ---------------------------------------------


def portfolio_metrics(
    *,
    positions_mtm: pd.DataFrame,
    cash: float,
    history: pd.DataFrame,
    session_open_nav: float | None = None,
    fills: pd.DataFrame | None = None,
    expected_prices: Mapping[str, float] | pd.Series | None = None,
    decisions: pd.DataFrame | None = None,
    hits: pd.DataFrame | None = None,
    checks: Iterable[str] | None = None,
    turnover_window: int | None = 21,
    risk_free_rate: float = 0.0,
    tz: str = "UTC",
) -> dict[str, float]:
    """Every §J4 number under a stable key (``METRIC_KEYS`` plus ``gate_check_pass_rate__*``).

    ``positions_mtm``: ``accounting.mark_to_market`` output (the live book: ``nav``, P&L,
    exposure come from it and ``cash``); ``history``: :func:`pnl_history` output.

    Two modes for the day's numbers (``daily_pnl``, ``daily_return``, ``daily_drawdown``):
    intraday, pass ``session_open_nav`` (history ends yesterday) and they are measured from it;
    at end of day, omit it (history ends today) and they are the last history row's, with the
    previous close as the session's open. Slippage uses
    ``fills`` with ``expected_prices`` (or an ``expected_price`` column); gate rates use the
    policy ``decisions``/``hits``. Every key is always present: NaN (or 0 for counts) when its
    input is absent. Values are plain floats (Dagster metadata, Prometheus gauges).
    """
    current_nav = float(cash) + (float(positions_mtm["market_value"].sum()) if len(positions_mtm) else 0.0)
    navs = history["nav"].to_numpy(dtype="float64") if len(history) else np.zeros(0)
    hwm_hist = float(history["high_water_mark"].max()) if len(history) else math.nan
    hwm = max(hwm_hist, current_nav) if math.isfinite(hwm_hist) else current_nav
    if session_open_nav is not None:
        # Intraday: today's P&L so far against the session's opening NAV.
        open_nav = float(session_open_nav)
        day_pnl = current_nav - open_nav
        day_ret = day_pnl / open_nav if open_nav > 0 else math.nan
    elif len(history):
        # End of day: the last history row is today; its open is the previous close.
        day_pnl = float(history["daily_pnl"].iloc[-1])
        day_ret = float(history["daily_return"].iloc[-1])
        open_nav = float(navs[-1]) - day_pnl
    else:
        open_nav = day_pnl = day_ret = math.nan
    realized = float(positions_mtm["realized_pnl"].sum()) if len(positions_mtm) else 0.0
    unrealized = float(positions_mtm["unrealized_pnl"].sum()) if len(positions_mtm) else 0.0
    qty = positions_mtm["qty"].to_numpy(dtype="float64") if len(positions_mtm) else np.zeros(0)
    # The NAV path for max drawdown: the NAV before the first row (if known), the sessions, now.
    before = _first_prev(history) if len(history) else None
    path = np.concatenate([[before] if before is not None else [], navs, [current_nav]])
    m: dict[str, float] = {
        "nav": current_nav,
        "cash": float(cash),
        "realized_pnl": realized,
        "unrealized_pnl": unrealized,
        "total_pnl": realized + unrealized,
        "fees": float(positions_mtm["fees"].sum()) if len(positions_mtm) else 0.0,
        "daily_pnl": day_pnl,
        "daily_return": day_ret,
        "high_water_mark": hwm,
        "drawdown": 1.0 - current_nav / hwm if hwm > 0 else math.nan,
        "max_drawdown": max_drawdown(path),
        "daily_drawdown": daily_drawdown(open_nav, current_nav),
    }
    m.update(exposure(positions_mtm, current_nav))
    m["open_positions"] = float((np.abs(qty) >= QTY_EPS).sum())
    if fills is not None and len(history):
        m["turnover"] = turnover(fills, history.set_index("date")["nav"], turnover_window, tz)
    else:
        m["turnover"] = math.nan
    m["sharpe"] = sharpe_ratio(history["daily_return"] if len(history) else [], risk_free_rate)
    if fills is not None and (expected_prices is not None or "expected_price" in fills.columns):
        m.update(slippage_summary(slippage_table(fills, expected_prices)))
    else:
        m.update({"slippage_bps": math.nan, "slippage_bps_mean": math.nan, "slippage_fills": 0.0})
    if decisions is not None:
        m.update(gate_pass_rates(decisions, hits, checks))
    else:
        m.update(
            {
                "gate_decisions": 0.0,
                "gate_approve_rate": math.nan,
                "gate_review_rate": math.nan,
                "gate_reject_rate": math.nan,
            }
        )
    ordered = {k: float(m[k]) for k in METRIC_KEYS}
    ordered.update({k: float(v) for k, v in sorted(m.items()) if k.startswith(GATE_CHECK_PREFIX)})
    return ordered


def _first_prev(history: pd.DataFrame) -> float | None:
    """The NAV before the first history row, recovered from its daily P&L (None if unknown)."""
    first = history.iloc[0]
    prev = float(first["nav"]) - float(first["daily_pnl"])
    return prev if math.isfinite(prev) else None


_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")
_LABEL_OK = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def metric_name(key: str) -> str:
    """Prometheus name of a metric key: ``ais_`` + key with invalid characters as ``_``."""
    return METRIC_PREFIX + _NAME_OK.sub("_", key)


def prometheus_text(metrics: Mapping[str, float], labels: Mapping[str, str] | None = None) -> str:
    """Exposition text (format 0.0.4) with one gauge per metric, ``ais_``-prefixed, all sharing
    ``labels`` (e.g. ``{"account": "paper", "session": "2024-03-05"}``). A fresh registry per
    call, so nothing leaks between calls or into the process-global registry."""
    labels = dict(labels or {})
    for name in labels:
        if not _LABEL_OK.match(name) or name.startswith("__"):
            raise ValueError(f"invalid Prometheus label name {name!r}")
    registry = CollectorRegistry()
    seen: dict[str, str] = {}
    for key, value in metrics.items():
        name = metric_name(key)
        if name in seen:
            raise ValueError(f"metric keys {seen[name]!r} and {key!r} collide as {name!r}")
        seen[name] = key
        help_text = METRIC_HELP.get(key) or (
            f"Pass share of pre-trade check {key[len(GATE_CHECK_PREFIX) :]}"
            if key.startswith(GATE_CHECK_PREFIX)
            else key
        )
        gauge = Gauge(name, help_text, labelnames=sorted(labels), registry=registry)
        (gauge.labels(**labels) if labels else gauge).set(float(value))
    return generate_latest(registry).decode("utf-8")
