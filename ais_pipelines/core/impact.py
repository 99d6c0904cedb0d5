"""Market impact, execution style and order proposals (§H1, §H2, §G3, §C4).

Impact model (§H1), per order of ``|qty|`` shares::

    participation = |qty| / ADV                          (ADV in shares per session)
    temporary     = σ_daily · √participation · 0.1 · 10⁴  bps
    permanent     = 0.5 × temporary                        bps
    half spread   = spread_bps / 2                          bps
    total         = m(regime) × (temporary + permanent + half spread)

with declared regime multipliers ``REGIME_MULTIPLIERS`` (NORMAL 1.0, VOLATILE 1.5, CRISIS 2.5:
stressed markets are thinner and wider; applied to every component, the reported components
are after the multiplier). An unknown regime gets the CRISIS multiplier and style (fail closed).
An order whose inputs are missing or not positive (price, ADV), or not finite (σ, spread) has
**no** estimate and is rejected with ``MISSING_IMPACT_ESTIMATE``: every order carries an impact
estimate or does not exist.

Execution style (§H2): NORMAL → PASSIVE, VOLATILE → SLICED, CRISIS → REDUCE_ONLY.

The auction charges the impact on the *trade* ``|w − w_now|``: :func:`trade_cost_coefficients`
rewrites the same model in weights, ``cost(v) = v·(a + k·√v)`` with ``a`` the half spread and
``k·√v`` the temporary + permanent impact (after the regime multiplier), which the auction
turns into a convex piecewise-linear function of the trade.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import numpy as np
import pandas as pd

from ais_pipelines.core.cvar import DEFAULT_ALPHA, DEFAULT_PORTFOLIO_LIMIT, order_raises_cvar
from ais_pipelines.core.reason_codes import ReasonCode, codes_str
from ais_pipelines.core.scenarios import Scenarios

TEMPORARY_COEFF = 0.1
PERMANENT_RATIO = 0.5
BPS = 1e4
REGIME_MULTIPLIERS: dict[str, float] = {"NORMAL": 1.0, "VOLATILE": 1.5, "CRISIS": 2.5}
FEATURE_COLUMNS = ("adv_shares", "sigma_daily", "spread_bps")

ORDER_COLUMNS = [
    "symbol",
    "side",
    "qty",
    "price",
    "notional",
    "current_qty",
    "target_qty",
    "current_weight",
    "target_weight",
    "participation",
    "temporary_bps",
    "permanent_bps",
    "half_spread_bps",
    "regime_multiplier",
    "impact_bps",
    "impact_cost",
    "regime",
    "style",
    "reduce_only",
    "cvar_change",
    "status",
    "reason_codes",
]


class ExecutionStyle(StrEnum):
    PASSIVE = "PASSIVE"
    SLICED = "SLICED"
    REDUCE_ONLY = "REDUCE_ONLY"


_STYLE = {
    "NORMAL": ExecutionStyle.PASSIVE,
    "VOLATILE": ExecutionStyle.SLICED,
    "CRISIS": ExecutionStyle.REDUCE_ONLY,
}


def _regime_key(regime: object) -> str:
    return str(getattr(regime, "value", regime)).upper()


def execution_style(regime: object) -> ExecutionStyle:
    """§H2 style for a regime; unknown regimes are treated as CRISIS (fail closed)."""
    return _STYLE.get(_regime_key(regime), ExecutionStyle.REDUCE_ONLY)


def regime_multiplier(regime: object, multipliers: Mapping[str, float] | None = None) -> float:
    table = dict(REGIME_MULTIPLIERS if multipliers is None else multipliers)
    key = _regime_key(regime)
    return float(table.get(key, table.get("CRISIS", REGIME_MULTIPLIERS["CRISIS"])))


def _impact_arrays(
    qty: np.ndarray,
    price: np.ndarray,
    adv_shares: np.ndarray,
    sigma_daily: np.ndarray,
    spread_bps: np.ndarray,
    mult: float,
) -> dict[str, np.ndarray]:
    size = np.abs(qty)
    valid = (
        np.isfinite(size)
        & np.isfinite(price)
        & (price > 0)
        & np.isfinite(adv_shares)
        & (adv_shares > 0)
        & np.isfinite(sigma_daily)
        & (sigma_daily >= 0)
        & np.isfinite(spread_bps)
        & (spread_bps >= 0)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        participation = np.where(valid, size / np.where(adv_shares > 0, adv_shares, np.nan), np.nan)
        temporary = mult * sigma_daily * np.sqrt(participation) * TEMPORARY_COEFF * BPS
        permanent = PERMANENT_RATIO * temporary
        half_spread = mult * spread_bps / 2.0
        total = temporary + permanent + half_spread
        notional = size * price
    nan = np.nan
    return {
        "valid": valid,
        "participation": np.where(valid, participation, nan),
        "temporary_bps": np.where(valid, temporary, nan),
        "permanent_bps": np.where(valid, permanent, nan),
        "half_spread_bps": np.where(valid, half_spread, nan),
        "impact_bps": np.where(valid, total, nan),
        "impact_cost": np.where(valid, notional * total / BPS, nan),
        "notional": notional,
    }


def impact_estimate(
    qty: float,
    price: float,
    adv_shares: float,
    sigma_daily: float,
    spread_bps: float,
    regime: object = "NORMAL",
    multipliers: Mapping[str, float] | None = None,
) -> dict[str, object]:
    """§H1 impact of one order (``qty`` shares, either sign).

    Returns ``valid``, ``reason_code`` (``MISSING_IMPACT_ESTIMATE`` when not computable, else
    None), ``participation``, ``temporary_bps``, ``permanent_bps``, ``half_spread_bps``,
    ``regime_multiplier``, ``total_bps``, ``notional`` and ``impact_cost`` (currency).
    """
    mult = regime_multiplier(regime, multipliers)

    def arr(x: object) -> np.ndarray:
        try:
            return np.array([float(x)])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return np.array([np.nan])

    out = _impact_arrays(arr(qty), arr(price), arr(adv_shares), arr(sigma_daily), arr(spread_bps), mult)
    valid = bool(out["valid"][0])
    return {
        "valid": valid,
        "reason_code": None if valid else ReasonCode.MISSING_IMPACT_ESTIMATE,
        "participation": float(out["participation"][0]),
        "temporary_bps": float(out["temporary_bps"][0]),
        "permanent_bps": float(out["permanent_bps"][0]),
        "half_spread_bps": float(out["half_spread_bps"][0]),
        "regime_multiplier": mult,
        "total_bps": float(out["impact_bps"][0]),
        "notional": float(out["notional"][0]),
        "impact_cost": float(out["impact_cost"][0]),
    }


def impact_frame(
    orders: pd.DataFrame, regime: object = "NORMAL", multipliers: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """Vectorised :func:`impact_estimate` over a DataFrame with columns ``qty``, ``price``,
    ``adv_shares``, ``sigma_daily``, ``spread_bps`` (a missing column makes every estimate
    invalid). Returns a copy with the impact columns, ``impact_valid`` and ``regime_multiplier``.
    """
    mult = regime_multiplier(regime, multipliers)

    def col(name: str) -> np.ndarray:
        if name not in orders.columns:
            return np.full(len(orders), np.nan)
        return pd.to_numeric(orders[name], errors="coerce").to_numpy(dtype=float)

    est = _impact_arrays(
        col("qty"), col("price"), col("adv_shares"), col("sigma_daily"), col("spread_bps"), mult
    )
    out = orders.copy()
    out["impact_valid"] = est.pop("valid")
    est.pop("notional")
    for k, v in est.items():
        out[k] = v
    out["regime_multiplier"] = mult
    return out


def trade_cost_coefficients(
    nav: float,
    price: np.ndarray | pd.Series | float,
    adv_shares: np.ndarray | pd.Series | float,
    sigma_daily: np.ndarray | pd.Series | float,
    spread_bps: np.ndarray | pd.Series | float,
    regime: object = "NORMAL",
    multipliers: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(a, k) with the §H1 one-way cost of trading ``v`` (weight of NAV) = ``v · (a + k·√v)``.

    Same model as :func:`impact_estimate`, rewritten in weights for the auction: with
    participation ``v·NAV / (price·ADV)``, ``a = m·spread/2`` and ``k = m·1.5·0.1·σ·√(NAV/(price·ADV))``
    (return fractions). NaN where no estimate is computable (the auction then cannot trade it).
    """
    px, adv, sig, spr = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (price, adv_shares, sigma_daily, spread_bps)))
    m = regime_multiplier(regime, multipliers)
    valid = (
        np.isfinite(px) & (px > 0) & np.isfinite(adv) & (adv > 0) & np.isfinite(sig) & (sig >= 0)
        & np.isfinite(spr) & (spr >= 0) & np.isfinite(nav) & (nav > 0)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        a = m * spr / 2.0 / BPS
        k = m * (1.0 + PERMANENT_RATIO) * TEMPORARY_COEFF * sig * np.sqrt(nav / (px * adv))
    return np.where(valid, a, np.nan), np.where(valid, k, np.nan)


def _as_series(x: pd.Series | pd.DataFrame | Mapping[str, float] | None, value_col: str) -> pd.Series:
    if x is None:
        return pd.Series(dtype=float)
    if isinstance(x, pd.DataFrame):
        if "symbol" in x.columns and value_col in x.columns:
            return x.groupby(x["symbol"].astype(str))[value_col].sum().astype(float)
        if value_col in x.columns:
            return x[value_col].astype(float)
        raise ValueError(f"expected columns 'symbol' and {value_col!r}")
    s = pd.Series(x, dtype=float)
    s.index = s.index.astype(str)
    return s.groupby(level=0).sum()


def order_proposals(
    targets: pd.Series | pd.DataFrame | Mapping[str, float],
    current_positions: pd.Series | pd.DataFrame | Mapping[str, float] | None,
    prices: pd.Series | Mapping[str, float],
    nav: float,
    features: pd.DataFrame,
    regime: object = "NORMAL",
    in_breach: bool = False,
    *,
    scenarios: pd.DataFrame | Scenarios | None = None,
    probs: np.ndarray | None = None,
    alpha: float = DEFAULT_ALPHA,
    cvar_limit: float = DEFAULT_PORTFOLIO_LIMIT,
    multipliers: Mapping[str, float] | None = None,
    fractional: bool = False,
    min_notional: float = 0.0,
) -> pd.DataFrame:
    """Orders that move the book from ``current_positions`` to ``targets``.

    Parameters
    ----------
    targets:
        Target weight per symbol (NAV fraction) — a Series, or the auction's allocation table
        (``symbol`` / ``weight``, summed per symbol). Sizing comes only from the auction.
    current_positions:
        Current quantity (shares/units) per symbol — a Series or a table with ``symbol``/``qty``.
    prices, nav:
        Reference prices per symbol and the NAV the weights refer to.
    features:
        Per-symbol (index) ``adv_shares``, ``sigma_daily`` (daily return σ) and ``spread_bps``.
    regime:
        NORMAL / VOLATILE / CRISIS: sets the impact multiplier and the style; in CRISIS only
        orders that reduce an existing position are proposed (§C4) — others are rejected with
        ``CRISIS_REGIME``.
    in_breach:
        Portfolio CVaR breach (§G3): no order may raise CVaR. With ``scenarios`` each order is
        checked exactly by :func:`cvar.order_raises_cvar`; without them only position-reducing
        orders are allowed (the conservative proxy). Rejected: ``ORDER_RAISES_CVAR_IN_BREACH``.
    fractional:
        Allow fractional quantities (crypto/FX); otherwise quantities are rounded toward zero
        to whole units, except that a zero target closes the position exactly.
    min_notional:
        Orders below this notional are not proposed (except closing a position).

    Returns
    -------
    One row per proposed or rejected order (columns :data:`ORDER_COLUMNS`); sells first.
    Accepted orders have ``status == "PROPOSED"``; rejected ones ``"REJECTED"`` with reasons.
    """
    if not np.isfinite(nav) or nav <= 0:
        raise ValueError("nav must be positive")
    tgt = _as_series(targets, "weight").fillna(0.0)
    cur = _as_series(current_positions, "qty").fillna(0.0)
    px = pd.Series(prices, dtype=float)
    px.index = px.index.astype(str)
    feats = features.copy()
    feats.index = feats.index.astype(str)
    symbols = sorted(set(tgt.index) | set(cur.index))
    mult = regime_multiplier(regime, multipliers)
    style = execution_style(regime)
    crisis = style is ExecutionStyle.REDUCE_ONLY

    rows: list[dict[str, object]] = []
    for sym in symbols:
        w_t = float(tgt.get(sym, 0.0))
        q_c = float(cur.get(sym, 0.0))
        price = float(px.get(sym, np.nan))
        if np.isfinite(price) and price > 0:
            q_t_exact = w_t * nav / price
            delta = q_t_exact - q_c
            if w_t == 0.0:
                delta = -q_c  # close exactly
            elif not fractional:
                delta = float(np.trunc(delta))
            if delta == 0.0:
                continue
            closing = w_t == 0.0
            if abs(delta) * price < min_notional and not closing:
                continue
        else:
            if w_t == 0.0 and q_c == 0.0:
                continue
            delta = np.nan
        q_t = q_c + delta if np.isfinite(delta) else np.nan
        reduces = bool(
            np.isfinite(delta) and q_c != 0 and np.sign(q_t) * np.sign(q_c) >= 0 and abs(q_t) < abs(q_c)
        )
        f = feats.loc[sym] if sym in feats.index else pd.Series(dtype=float)
        est = impact_estimate(
            delta if np.isfinite(delta) else np.nan,
            price,
            f.get("adv_shares", np.nan),
            f.get("sigma_daily", np.nan),
            f.get("spread_bps", np.nan),
            regime,
            multipliers,
        )
        rows.append(
            {
                "symbol": sym,
                "side": ("BUY" if delta > 0 else "SELL") if np.isfinite(delta) else "UNKNOWN",
                "qty": abs(delta) if np.isfinite(delta) else np.nan,
                "price": price,
                "notional": abs(delta) * price if np.isfinite(delta) else np.nan,
                "current_qty": q_c,
                "target_qty": q_t,
                "current_weight": q_c * price / nav if np.isfinite(price) else np.nan,
                "target_weight": q_t * price / nav if np.isfinite(q_t) else w_t,
                "participation": est["participation"],
                "temporary_bps": est["temporary_bps"],
                "permanent_bps": est["permanent_bps"],
                "half_spread_bps": est["half_spread_bps"],
                "regime_multiplier": mult,
                "impact_bps": est["total_bps"],
                "impact_cost": est["impact_cost"],
                "regime": _regime_key(regime),
                "style": str(style),
                "reduce_only": reduces,
                "cvar_change": np.nan,
                "_valid": bool(est["valid"]),
                "_reduces": reduces,
            }
        )

    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=ORDER_COLUMNS)

    raises = np.zeros(len(out), dtype=bool)
    if in_breach:
        if scenarios is not None:
            frame = scenarios.to_frame() if isinstance(scenarios, Scenarios) else scenarios
            if probs is None and isinstance(scenarios, Scenarios):
                probs = scenarios.probs
            cols = pd.Index(frame.columns.astype(str))
            all_px = px.reindex(cols)
            cur_w = (cur.reindex(cols).fillna(0.0) * all_px / nav).fillna(0.0)
            tgt_w = cur_w.copy()
            known = out[out["symbol"].isin(cols) & out["target_qty"].notna()]
            tgt_w.loc[known["symbol"]] = (known["target_qty"] * known["price"] / nav).to_numpy()
            frame = frame.set_axis(cols, axis=1)
            check = order_raises_cvar(cur_w, tgt_w, frame, alpha, probs, cvar_limit, in_breach=True)
            out["cvar_change"] = out["symbol"].map(check["cvar_change"])
            # A symbol without scenarios cannot be shown not to raise CVaR: reducing only.
            raises = np.where(out["symbol"].isin(cols), out["cvar_change"] > 1e-12, ~out["_reduces"])
        else:
            raises = ~out["_reduces"].to_numpy()

    status, reasons = [], []
    for i, row in out.iterrows():
        codes: list[ReasonCode] = []
        if not row["_valid"]:
            codes.append(ReasonCode.MISSING_IMPACT_ESTIMATE)
        if crisis and not row["_reduces"]:
            codes.append(ReasonCode.CRISIS_REGIME)
        if in_breach and bool(raises[i]):
            codes.append(ReasonCode.ORDER_RAISES_CVAR_IN_BREACH)
        rejected = bool(codes)
        if (crisis or in_breach) and (row["_reduces"] or rejected):
            codes.append(ReasonCode.REDUCE_ONLY)  # the mode the book is in
        if in_breach:
            codes.append(ReasonCode.PORTFOLIO_CVAR_BREACH)
        status.append("REJECTED" if rejected else "PROPOSED")
        reasons.append(codes_str(codes))
    out["status"] = status
    out["reason_codes"] = reasons
    out = out.sort_values(["side", "symbol"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return out[ORDER_COLUMNS]
