"""Deterministic strategies (§E1): each nominates (strategy × symbol) candidates from one
forecast model. No sizing here — sizing comes only from the capital auction (§F).

A candidate's expected return is its model's μ, shrunk by the ensemble's disagreement
factor (§D2) and the model's own decay factor (§D3), so a strategy whose model is dying or
contradicted by the others asks for less.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from ais_pipelines.core.reason_codes import ReasonCode

CANDIDATE_COLUMNS = [
    "candidate_id", "strategy_id", "symbol", "asset_class", "model", "model_version", "signal",
    "mu_model", "mu_adj", "sigma", "cvar_95", "p_loss", "confidence", "disagreement_factor",
    "decay_factor", "data_quality_score", "status", "liquidity_score", "adv_usd_20d",
    "spread_bps_est", "ewma_vol", "close", "stage", "strategy_cap", "reason_codes",
]


@dataclass(frozen=True)
class StrategyDef:
    strategy_id: str
    model: str
    min_signal: float = 0.0
    inception: date | None = None  # point in time (issue 13): no candidate before this session


def generate_candidates(
    strategies: Sequence[StrategyDef],
    per_model: pd.DataFrame,
    combined: pd.DataFrame,
    features: pd.DataFrame,
    quality: pd.DataFrame,
    stages: Mapping[str, tuple[str, float]],
    *,
    as_of: date | None = None,
    members: set[str] | None = None,
) -> pd.DataFrame:
    """Candidates for every strategy whose model signal clears ``min_signal`` with μ > 0.

    Point in time: a strategy whose ``inception`` is after ``as_of`` did not exist on D and
    nominates nothing; symbols outside ``members`` (the universe's members on D) are never
    nominated.

    ``stages`` maps strategy_id → (stage, effective NAV cap). Symbols that fail the data
    gates are still nominated, carrying their status, so the auction records *why* they got
    nothing (EXCLUDED_INVALID_DATA / EXCLUDED_INSUFFICIENT_HISTORY) instead of them silently
    disappearing.
    """
    comb = combined.set_index("symbol")[["disagreement_factor", "confidence"]]
    feat = features.set_index("symbol")[["liquidity_score", "adv_usd_20d", "spread_bps_est", "ewma_vol", "close"]]
    qual = quality.set_index("symbol")[["data_quality_score", "status"]]
    parts = []
    for strat in strategies:
        if as_of is not None and strat.inception is not None and strat.inception > as_of:
            continue
        pm = per_model[per_model["model"] == strat.model]
        if members is not None:
            pm = pm[pm["symbol"].isin(members)]
        pm = pm.set_index("symbol")
        if pm.empty:
            continue
        frame = pm.join(comb, how="left").join(feat, how="left").join(qual, how="left")
        # Models without a signal of their own (regime_mean) are judged by μ/σ.
        frame["signal"] = frame["signal"].fillna(frame["mu"] / frame["sigma"])
        frame["mu_adj"] = frame["mu"] * frame["disagreement_factor"].fillna(0.0) * frame["decay_factor"].fillna(0.0)
        keep = (frame["signal"] > strat.min_signal) & (frame["mu_adj"] > 0) & np.isfinite(frame["mu_adj"])
        frame = frame[keep].reset_index()
        if frame.empty:
            continue
        stage, cap = stages.get(strat.strategy_id, ("INCUBATING", 0.0))
        frame = frame.assign(
            strategy_id=strat.strategy_id,
            candidate_id=strat.strategy_id + ":" + frame["symbol"],
            mu_model=frame["mu"],
            stage=stage,
            strategy_cap=cap,
            status=frame["status"].fillna("INVALID_DATA"),
            data_quality_score=frame["data_quality_score"].fillna(0.0),
        )
        frame["reason_codes"] = [
            _codes(row_codes, status, stage)
            for row_codes, status in zip(frame["reason_codes"].fillna(""), frame["status"], strict=True)
        ]
        parts.append(frame)
    if not parts:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["asset_class"] = out.get("asset_class", pd.Series(index=out.index, dtype=str))
    return out.reindex(columns=CANDIDATE_COLUMNS).sort_values(["strategy_id", "symbol"]).reset_index(drop=True)


def _codes(model_codes: str, status: str, stage: str) -> str:
    codes = {c for c in str(model_codes).split(";") if c}
    if status == "INVALID_DATA":
        codes.add(ReasonCode.INVALID_DATA)
    elif status == "INSUFFICIENT_HISTORY":
        codes.add(ReasonCode.INSUFFICIENT_HISTORY)
    if stage == "DECOMMISSIONED":
        codes.add(ReasonCode.STRATEGY_DECOMMISSIONED)
    return ";".join(sorted(str(c) for c in codes))
