"""Strategy lifecycle (§E2): stages, NAV caps, evidence-based transitions, capital decay.

A strategy moves INCUBATING → SCALING → HARVESTING on realized paper performance, steps down
when the evidence turns, and is DECOMMISSIONED (cap 0 %) on severe failure. Two asymmetries
are deliberate:

* No judgement before ``min_evaluation_days`` of paper history: a new strategy is never
  decommissioned for lack of history (it stays INCUBATING with EVALUATION_PERIOD).
* Capital decays by default. After the evaluation period the capital multiplier shrinks
  by ``decay_per_session`` every session in which the rolling performance does not prove
  the strategy again, down to ``decay_floor``; a proving session restores it to 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import date
from enum import StrEnum

from ais_pipelines.core.reason_codes import ReasonCode


class Stage(StrEnum):
    INCUBATING = "INCUBATING"
    SCALING = "SCALING"
    HARVESTING = "HARVESTING"
    DECOMMISSIONED = "DECOMMISSIONED"


DEFAULT_NAV_CAPS: dict[Stage, float] = {
    Stage.INCUBATING: 0.02, Stage.SCALING: 0.05, Stage.HARVESTING: 0.10, Stage.DECOMMISSIONED: 0.0,
}
_UP = {Stage.INCUBATING: Stage.SCALING, Stage.SCALING: Stage.HARVESTING}
_DOWN = {Stage.HARVESTING: Stage.SCALING, Stage.SCALING: Stage.INCUBATING}


@dataclass(frozen=True)
class LifecycleParams:
    nav_caps: dict[Stage, float]
    min_evaluation_days: int = 60
    promote_sharpe: float = 1.0
    promote_max_drawdown: float = 0.05
    promote_profit_factor: float = 1.3
    max_error_rate: float = 0.02
    demote_sharpe: float = 0.0
    demote_drawdown: float = 0.08
    decommission_drawdown: float = 0.15
    decommission_error_rate: float = 0.10
    decommission_sharpe: float = -1.0
    decay_per_session: float = 0.01
    decay_floor: float = 0.25

    def __post_init__(self) -> None:
        if set(self.nav_caps) != set(Stage):
            raise ValueError("nav_caps must give a cap for every stage")
        if self.nav_caps[Stage.DECOMMISSIONED] != 0:
            raise ValueError("a decommissioned strategy must have a 0 % NAV cap")


@dataclass(frozen=True)
class Performance:
    """Realized paper performance over the rolling window (from the ledger's fills and P&L)."""

    days_evaluated: int
    sharpe: float = float("nan")
    max_drawdown: float = 0.0  # positive fraction of NAV
    profit_factor: float = float("nan")
    error_rate: float = 0.0  # rejected or failed orders / orders sent


@dataclass(frozen=True)
class LifecycleState:
    strategy_id: str
    stage: Stage
    stage_since: date
    capital_multiplier: float = 1.0
    inception: date | None = None

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["stage"] = str(self.stage)
        return d


@dataclass(frozen=True)
class LifecycleDecision:
    state: LifecycleState
    previous_stage: Stage
    nav_cap: float
    effective_cap: float  # nav_cap × capital_multiplier: the auction's upper bound for this strategy
    reason_codes: tuple[ReasonCode, ...]
    proving: bool


def _finite(x: float) -> bool:
    return x is not None and not math.isnan(x)


def proves(perf: Performance, p: LifecycleParams) -> bool:
    return (
        _finite(perf.sharpe) and perf.sharpe >= p.promote_sharpe
        and perf.max_drawdown <= p.promote_max_drawdown
        and _finite(perf.profit_factor) and perf.profit_factor >= p.promote_profit_factor
        and perf.error_rate <= p.max_error_rate
    )


def step_lifecycle(state: LifecycleState, perf: Performance, as_of: date, p: LifecycleParams) -> LifecycleDecision:
    """One session of the lifecycle: the new state and why."""
    prev = state.stage
    if prev == Stage.DECOMMISSIONED:  # terminal: reinstating a strategy is a human decision
        return LifecycleDecision(state, prev, 0.0, 0.0, (ReasonCode.STRATEGY_DECOMMISSIONED,), False)
    if perf.days_evaluated < p.min_evaluation_days:
        cap = p.nav_caps[prev]
        return LifecycleDecision(
            state, prev, cap, cap * state.capital_multiplier, (ReasonCode.EVALUATION_PERIOD,), False
        )

    codes: list[ReasonCode] = []
    stage = prev
    severe = (
        perf.max_drawdown >= p.decommission_drawdown
        or perf.error_rate >= p.decommission_error_rate
        or (_finite(perf.sharpe) and perf.sharpe <= p.decommission_sharpe)
    )
    proving = proves(perf, p)
    if severe:
        stage = Stage.DECOMMISSIONED
        codes.append(ReasonCode.STRATEGY_DECOMMISSIONED)
    elif (_finite(perf.sharpe) and perf.sharpe < p.demote_sharpe) or perf.max_drawdown >= p.demote_drawdown:
        if prev in _DOWN:
            stage = _DOWN[prev]
            codes.append(ReasonCode.STAGE_DEMOTED)
        else:
            codes.append(ReasonCode.STAGE_UNCHANGED)
    elif proving and prev in _UP:
        stage = _UP[prev]
        codes.append(ReasonCode.STAGE_PROMOTED)
    else:
        codes.append(ReasonCode.STAGE_UNCHANGED)

    if proving:
        multiplier = 1.0
    else:
        multiplier = max(p.decay_floor, state.capital_multiplier * (1.0 - p.decay_per_session))
        codes.append(ReasonCode.CAPITAL_DECAY)
    if stage == Stage.DECOMMISSIONED:
        multiplier = 0.0
    new_state = replace(
        state, stage=stage, capital_multiplier=multiplier,
        stage_since=as_of if stage != prev else state.stage_since,
    )
    cap = p.nav_caps[stage]
    return LifecycleDecision(new_state, prev, cap, cap * multiplier, tuple(codes), proving)
