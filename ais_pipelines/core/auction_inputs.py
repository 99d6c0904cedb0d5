"""From the nightly frames to the auction's inputs (§F0, §F1): candidates, the book, caps.

Plain function of frames, no Dagster, no warehouse: the ``capital_auction`` asset reads the
tables and calls :func:`auction_inputs`; the replay can call it the same way.

The book is the positions held at the as-of close of D: quantities from the last
``positions_snapshot`` written before D's decision (the intraday ``portfolio_state`` of the
session that ended at D's close, broker truth reconciled with the ledger, §J1), valued at D's
closing prices, as weights of ``NAV_D = cash + Σ qty·close_D``. It needs no broker connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ais_pipelines.core.impact import trade_cost_coefficients

VALID = "VALID"


@dataclass(frozen=True)
class AuctionInputs:
    candidates: pd.DataFrame
    book: pd.DataFrame  # one row per symbol (held or nominated)
    strategy_caps: dict[str, float]
    group_caps: dict[str, dict[str, float]]
    reduce_only: bool
    nav: float


def book_nav(positions: pd.DataFrame, closes: Mapping[str, float], cash: float | None, fallback_nav: float) -> float:
    """NAV at the as-of close: cash + positions at D's closes (marks where a close is missing)."""
    if cash is None or not np.isfinite(cash):
        return float(fallback_nav)
    if positions.empty:
        return float(cash)
    px = positions["symbol"].map(closes).astype(float)
    if "mark" in positions.columns:
        px = px.fillna(positions["mark"].astype(float))
    value = (positions["qty"].astype(float) * px).fillna(
        positions["market_value"].astype(float) if "market_value" in positions.columns else 0.0
    )
    return float(cash + value.sum())


def auction_inputs(
    cands: pd.DataFrame,
    features: pd.DataFrame,
    positions: pd.DataFrame,
    nav: float,
    regime: Mapping[str, object],
    *,
    symbol_status: Mapping[str, str],
    quality_score: Mapping[str, float],
    allowed: Mapping[str, bool],
    sectors: Mapping[str, str],
    asset_classes: Mapping[str, str],
    max_position_weight: float,
    max_adv_participation: float,
    quality_full_weight: float,
    max_sector_weight: float,
    sector_caps: Mapping[str, float],
    asset_class_caps: Mapping[str, float],
) -> AuctionInputs:
    """Build the auction's candidate table, book, strategy caps and group caps.

    ``features``: per symbol (index) ``close``, ``adv_usd_20d``, ``ewma_vol``, ``spread_bps_est``
    as of D. ``positions``: ``symbol``, ``qty`` (and ``market_value`` / ``mark`` as fallbacks).
    Unknown or missing inputs fail closed: no mandate permission → cap 0 and an exit; no
    liquidity data → no trade (the order would have no impact estimate).
    """
    if not np.isfinite(nav) or nav <= 0:
        raise ValueError("nav must be positive")
    c = cands.copy()
    c["eligibility"] = np.where(c["stage"].astype(str) == "DECOMMISSIONED", "DECOMMISSIONED", c["status"].astype(str))
    c["cap_stage"] = c["strategy_cap"].astype(float)
    c["data_quality_penalty"] = 1.0 - c["data_quality_score"].astype(float)
    c["model_decay_penalty"] = 1.0 - c["decay_factor"].astype(float)
    strategy_caps = {str(k): float(v) for k, v in c.groupby("strategy_id")["strategy_cap"].first().items()}

    pos = positions.copy()
    pos["symbol"] = pos["symbol"].astype(str)
    pos = pos[pos["qty"].astype(float) != 0]
    symbols = sorted(set(c["symbol"].astype(str)) | set(pos["symbol"]))
    f = features.reindex(symbols)
    close = f["close"].astype(float)
    qty = pos.set_index("symbol")["qty"].astype(float).reindex(symbols).fillna(0.0)
    value = qty * close
    if "market_value" in pos.columns:  # no close tonight: last recorded value
        value = value.fillna(pos.set_index("symbol")["market_value"].astype(float).reindex(symbols))
    w_now = (value / nav).fillna(0.0).clip(lower=0.0)  # long-only book

    adv_usd = f["adv_usd_20d"].astype(float)
    a, k = trade_cost_coefficients(nav, close, adv_usd / close, f["ewma_vol"], f["spread_bps_est"],
                                   regime.get("regime", "CRISIS"))
    score = pd.Series({s: quality_score.get(s, np.nan) for s in symbols}, dtype=float)
    scale = float(regime.get("exposure_scale", 0.0) or 0.0)
    ok = pd.Series({s: bool(allowed.get(s, False)) for s in symbols})
    status = pd.Series({s: str(symbol_status.get(s, "UNKNOWN")) for s in symbols})

    elig = c.groupby(c["symbol"].astype(str))["eligibility"].agg(lambda e: set(e))
    exit_reason = []
    for s in symbols:
        if w_now[s] <= 0:
            exit_reason.append("")
        elif not ok[s]:
            exit_reason.append("INELIGIBLE_SYMBOL")
        elif status[s] == "INVALID_DATA":
            exit_reason.append("INVALID_DATA")
        elif status[s] != VALID:
            exit_reason.append("INELIGIBLE_SYMBOL")
        elif s in elig.index and elig[s] == {"DECOMMISSIONED"}:
            exit_reason.append("DECOMMISSIONED")
        else:
            exit_reason.append("")
    book = pd.DataFrame(
        {
            "symbol": symbols,
            "current_weight": w_now.to_numpy(),
            "trade_cap": (max_adv_participation * adv_usd / nav).to_numpy(),
            "half_spread": a,
            "impact_coef": k,
            "cap_symbol": np.where(ok.to_numpy(), max_position_weight, 0.0),
            "cap_symbol_quality": max_position_weight * np.clip(score.to_numpy() / quality_full_weight, 0.0, 1.0),
            "cap_symbol_crisis": np.full(len(symbols), max_position_weight * scale),
            "exit_reason": exit_reason,
            "sector": [sectors.get(s, "Unclassified") for s in symbols],
            "asset_class": [str(asset_classes.get(s, "UNKNOWN")) for s in symbols],
        }
    )
    group_caps: dict[str, dict[str, float]] = {
        "sector": {sec: float(sector_caps.get(sec, max_sector_weight)) for sec in sorted(set(book["sector"]))},
        "asset_class": {str(getattr(ac, "value", ac)): float(cap) for ac, cap in asset_class_caps.items()},
    }
    return AuctionInputs(c, book, strategy_caps, group_caps, bool(regime.get("reduce_only")), float(nav))
