"""Issue 13: declared start dates are honoured as of D (a strategy starting 2026-01-02 traded at
an as-of date in 2023); so are universe membership dates."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from ais_pipelines.config import Instrument, Policies, Universe
from ais_pipelines.core.strategies import StrategyDef, generate_candidates


def _inputs() -> tuple[pd.DataFrame, ...]:
    per_model = pd.DataFrame({"symbol": ["AAPL", "AAPL"], "model": ["momentum", "mean_reversion"], "mu": [0.01, 0.02],
                              "sigma": [0.1, 0.1], "signal": [1.0, 1.0], "decay_factor": [1.0, 1.0],
                              "reason_codes": ["", ""]})
    combined = pd.DataFrame({"symbol": ["AAPL"], "disagreement_factor": [1.0], "confidence": [0.8]})
    feats = pd.DataFrame({"symbol": ["AAPL"], "liquidity_score": [1.0], "adv_usd_20d": [1e9], "spread_bps_est": [1.0],
                          "ewma_vol": [0.2], "close": [100.0]})
    quality = pd.DataFrame({"symbol": ["AAPL"], "data_quality_score": [1.0], "status": ["VALID"]})
    return per_model, combined, feats, quality


def test_a_strategy_nominates_nothing_before_its_inception() -> None:
    specs = [StrategyDef("trend", "momentum", 0.0, date(2026, 1, 2)), StrategyDef("rev", "mean_reversion", 0.0,
                                                                                  date(2020, 1, 2))]
    stages = {"trend": ("INCUBATING", 0.02), "rev": ("INCUBATING", 0.02)}
    early = generate_candidates(specs, *_inputs(), stages, as_of=date(2023, 6, 1))
    assert early["strategy_id"].tolist() == ["rev"]
    on_day = generate_candidates(specs, *_inputs(), stages, as_of=date(2026, 1, 2))
    assert sorted(on_day["strategy_id"]) == ["rev", "trend"]


def test_the_shipped_strategies_start_on_their_declared_inception() -> None:
    specs = [StrategyDef(s.id, s.model, s.min_signal, s.inception) for s in Policies().strategies.strategies]
    assert {s.inception for s in specs} == {date(2026, 1, 2)}
    stages = {s.strategy_id: ("INCUBATING", 0.02) for s in specs}
    assert generate_candidates(specs, *_inputs(), stages, as_of=date(2023, 3, 1)).empty


def test_universe_membership_dates_are_honoured_as_of_d() -> None:
    uni = Universe(name="t", symbols=[Instrument(symbol="AAPL", member_from=date(2024, 1, 2)),
                                      Instrument(symbol="MSFT", member_until=date(2023, 12, 29))])
    assert uni.members_on(date(2023, 6, 1)) == {"MSFT"} and uni.members_on(date(2024, 6, 3)) == {"AAPL"}
    specs = [StrategyDef("rev", "mean_reversion", 0.0, date(2020, 1, 2))]
    stages = {"rev": ("INCUBATING", 0.02)}
    assert generate_candidates(specs, *_inputs(), stages, as_of=date(2023, 6, 1),
                               members=uni.members_on(date(2023, 6, 1))).empty
    assert generate_candidates(specs, *_inputs(), stages, as_of=date(2024, 6, 3),
                               members=uni.members_on(date(2024, 6, 3)))["symbol"].tolist() == ["AAPL"]
    with pytest.raises(ValueError, match="before member_from"):
        Instrument(symbol="X", member_from=date(2024, 1, 2), member_until=date(2023, 1, 2))
