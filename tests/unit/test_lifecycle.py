"""§E2 lifecycle: caps, evaluation period, promotions, demotions, decommissioning, decay."""

from __future__ import annotations

from datetime import date

import pytest

from ais_pipelines.core.lifecycle import (
    DEFAULT_NAV_CAPS,
    LifecycleParams,
    LifecycleState,
    Performance,
    Stage,
    step_lifecycle,
)
from ais_pipelines.core.reason_codes import ReasonCode

P = LifecycleParams(nav_caps=DEFAULT_NAV_CAPS)
D0 = date(2026, 1, 2)
GOOD = Performance(days_evaluated=120, sharpe=1.5, max_drawdown=0.03, profit_factor=1.6, error_rate=0.0)
BAD = Performance(days_evaluated=120, sharpe=-0.5, max_drawdown=0.09, profit_factor=0.8, error_rate=0.0)


def state(stage: Stage, mult: float = 1.0) -> LifecycleState:
    return LifecycleState("trend", stage, D0, mult, D0)


def test_stage_caps_are_2_5_10_0_percent():
    assert [DEFAULT_NAV_CAPS[s] for s in Stage] == [0.02, 0.05, 0.10, 0.0]
    with pytest.raises(ValueError):
        LifecycleParams(nav_caps={**DEFAULT_NAV_CAPS, Stage.DECOMMISSIONED: 0.01})


def test_new_strategy_is_never_decommissioned_for_lack_of_history():
    terrible_but_young = Performance(days_evaluated=10, sharpe=-5, max_drawdown=0.5, profit_factor=0.1, error_rate=0.5)
    d = step_lifecycle(state(Stage.INCUBATING), terrible_but_young, date(2026, 1, 20), P)
    assert d.state.stage == Stage.INCUBATING
    assert d.reason_codes == (ReasonCode.EVALUATION_PERIOD,)
    assert d.effective_cap == pytest.approx(0.02)
    no_history = step_lifecycle(state(Stage.INCUBATING), Performance(days_evaluated=0), date(2026, 1, 20), P)
    assert no_history.state.stage == Stage.INCUBATING and no_history.state.capital_multiplier == 1.0


def test_promotion_path_on_proven_performance():
    d1 = step_lifecycle(state(Stage.INCUBATING), GOOD, date(2026, 6, 1), P)
    assert d1.state.stage == Stage.SCALING and ReasonCode.STAGE_PROMOTED in d1.reason_codes
    assert d1.state.stage_since == date(2026, 6, 1) and d1.effective_cap == pytest.approx(0.05)
    d2 = step_lifecycle(d1.state, GOOD, date(2026, 6, 2), P)
    assert d2.state.stage == Stage.HARVESTING and d2.nav_cap == pytest.approx(0.10)
    d3 = step_lifecycle(d2.state, GOOD, date(2026, 6, 3), P)
    assert d3.state.stage == Stage.HARVESTING and ReasonCode.STAGE_UNCHANGED in d3.reason_codes


def test_demotion_and_decommissioning():
    d = step_lifecycle(state(Stage.HARVESTING), BAD, date(2026, 6, 1), P)
    assert d.state.stage == Stage.SCALING and ReasonCode.STAGE_DEMOTED in d.reason_codes
    severe = Performance(days_evaluated=120, sharpe=0.2, max_drawdown=0.16, profit_factor=0.9)
    d = step_lifecycle(state(Stage.SCALING), severe, date(2026, 6, 1), P)
    assert d.state.stage == Stage.DECOMMISSIONED and d.effective_cap == 0.0
    # Terminal: even perfect numbers do not bring it back by themselves.
    again = step_lifecycle(d.state, GOOD, date(2026, 6, 2), P)
    assert again.state.stage == Stage.DECOMMISSIONED and again.effective_cap == 0.0
    errors = Performance(days_evaluated=120, sharpe=1.5, max_drawdown=0.01, profit_factor=2, error_rate=0.12)
    assert step_lifecycle(state(Stage.INCUBATING), errors, date(2026, 6, 1), P).state.stage == Stage.DECOMMISSIONED


def test_capital_decays_unless_performance_keeps_proving_it():
    meh = Performance(days_evaluated=120, sharpe=0.5, max_drawdown=0.04, profit_factor=1.1)
    s = state(Stage.SCALING)
    mults = []
    for i in range(3):
        d = step_lifecycle(s, meh, date(2026, 6, 1 + i), P)
        s = d.state
        mults.append(s.capital_multiplier)
        assert ReasonCode.CAPITAL_DECAY in d.reason_codes
    assert mults == pytest.approx([0.99, 0.99**2, 0.99**3])
    assert d.effective_cap == pytest.approx(0.05 * 0.99**3)
    s_low = state(Stage.SCALING, mult=0.2501)
    assert step_lifecycle(s_low, meh, date(2026, 6, 1), P).state.capital_multiplier == pytest.approx(0.25)
    # A proving session restores full capital (and promotes).
    restored = step_lifecycle(s, GOOD, date(2026, 6, 9), P)
    assert restored.state.capital_multiplier == 1.0 and restored.state.stage == Stage.HARVESTING
