"""Realized paper performance per strategy (§E2 input), from each session's book and fills.

Attribution: a symbol's P&L of a session belongs to the strategy that holds the largest
allocation of that symbol in the session's auction (ties → the first strategy id). Symbol P&L
over the session = closing value − opening value − cash paid for buys + cash received for
sells − fees, so execution costs count against the strategy that traded.

The lifecycle reads one row per (strategy, session): sessions evaluated so far, and over the
rolling ``window``: annualized Sharpe of daily P&L / NAV, max drawdown of cumulative P&L as a
fraction of the starting NAV, profit factor (gains / |losses|) and the order error rate.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ais_pipelines.core.metrics import sharpe_ratio

PERFORMANCE_COLUMNS = ["strategy_id", "days_evaluated", "sharpe", "max_drawdown", "profit_factor", "error_rate",
                       "pnl_day", "pnl_cum"]


def owners(allocations: pd.DataFrame) -> dict[str, str]:
    """symbol → the strategy with the largest weight in the auction (deterministic ties)."""
    if allocations.empty:
        return {}
    a = allocations.sort_values(["symbol", "weight", "strategy_id"], ascending=[True, False, True])
    return {str(s): str(g) for s, g in a.drop_duplicates("symbol").set_index("symbol")["strategy_id"].items()}


def symbol_pnl(opening: dict[str, float], closing: pd.DataFrame, fills: pd.DataFrame) -> dict[str, float]:
    """Per-symbol P&L of one session: Δ market value − net cash spent on trades − fees."""
    close_mv = {str(s): float(v) for s, v in zip(closing.get("symbol", []), closing.get("market_value", []),
                                                  strict=True)}
    flow: dict[str, float] = {}
    if not fills.empty:
        sign = np.where(fills["side"].astype(str) == "BUY", 1.0, -1.0)
        cash = sign * fills["qty"].astype(float) * fills["price"].astype(float) + fills["fees"].astype(float)
        for s, v in zip(fills["symbol"].astype(str), cash, strict=True):
            flow[s] = flow.get(s, 0.0) + float(v)
    symbols = set(opening) | set(close_mv) | set(flow)
    return {s: close_mv.get(s, 0.0) - opening.get(s, 0.0) - flow.get(s, 0.0) for s in sorted(symbols)}


def strategy_day(pnl: dict[str, float], owner: dict[str, str], strategies: list[str],
                 orders: pd.DataFrame) -> pd.DataFrame:
    """One session's P&L, orders sent and errors per strategy (every declared strategy gets a row)."""
    rows = {s: {"strategy_id": s, "pnl": 0.0, "orders": 0, "errors": 0} for s in strategies}
    for sym, v in pnl.items():
        sid = owner.get(sym)
        if sid in rows:
            rows[sid]["pnl"] += v
    if not orders.empty and "strategy_id" in orders.columns:
        for sid, state in zip(orders["strategy_id"], orders["state"].astype(str), strict=True):
            if sid in rows:
                rows[sid]["orders"] += 1
                rows[sid]["errors"] += int(state in ("REJECTED", "REFUSED"))
    return pd.DataFrame(list(rows.values()))


def performance(history: pd.DataFrame, nav0: float, window: int = 63) -> pd.DataFrame:
    """Rolling performance per strategy from its daily rows (``as_of``, strategy_id, pnl, orders,
    errors), as of the last session in ``history``."""
    out = []
    for sid, g in history.sort_values("as_of").groupby("strategy_id", sort=True):
        tail = g.tail(window)
        pnl = tail["pnl"].astype(float).to_numpy()
        cum = np.cumsum(pnl)
        peak = np.maximum.accumulate(np.concatenate([[0.0], cum]))[1:]
        dd = float(np.max(peak - cum) / nav0) if len(cum) else 0.0
        gains, losses = float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())
        pf = gains / losses if losses > 0 else (math.inf if gains > 0 else math.nan)
        sent = int(tail["orders"].sum())
        out.append({
            "strategy_id": str(sid), "days_evaluated": int(len(g)),
            "sharpe": sharpe_ratio(pnl / nav0) if np.any(pnl != 0) else math.nan,
            "max_drawdown": max(0.0, dd), "profit_factor": pf,
            "error_rate": float(tail["errors"].sum()) / sent if sent else 0.0,
            "pnl_day": float(pnl[-1]) if len(pnl) else 0.0, "pnl_cum": float(g["pnl"].astype(float).sum()),
        })
    return pd.DataFrame(out, columns=PERFORMANCE_COLUMNS)
