"""Trading state (§J2): ACTIVE / REDUCING / PAUSED / HALTED as a pure state machine.

Every order path consults it (``TradingStatus.allows``). The rules:

* Pause, forced deleverage, kill switch and system halt can only make the state *stricter*
  (severity ACTIVE < REDUCING < PAUSED < HALTED): a pause never softens a halt.
* Nothing relaxes by itself — not even a daily loss that recovers: the kill switch is latched.
  Only ``resume`` by a named person with a written reason leaves a restrictive state.

The ledger persists each ``TradingStatus`` as a history row; this module does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from ais_pipelines.core.actors import is_service_actor
from ais_pipelines.core.clock import ensure_utc
from ais_pipelines.core.reason_codes import ReasonCode

SYSTEM_ACTOR = "system"


class TradingMode(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"  # forced deleverage: reduce-only orders
    PAUSED = "PAUSED"
    HALTED = "HALTED"  # kill switch or system fault; latched


class ResumeTo(StrEnum):
    """The states a person may resume trading to (CLI option and launchpad choice alike)."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"


_SEVERITY: dict[TradingMode, int] = {
    TradingMode.ACTIVE: 0,
    TradingMode.REDUCING: 1,
    TradingMode.PAUSED: 2,
    TradingMode.HALTED: 3,
}


class TradingStateError(Exception):
    """A refused change of trading state (e.g. a resume without actor or reason)."""

    def __init__(self, message: str, reason_code: ReasonCode = ReasonCode.TRADING_HALTED):
        super().__init__(message)
        self.reason_code = reason_code


@dataclass(frozen=True)
class TradingStatus:
    mode: TradingMode
    since: datetime
    actor: str
    why: str
    reason_codes: tuple[ReasonCode, ...] = field(default_factory=tuple)

    @property
    def latched(self) -> bool:
        """A halt (kill switch or system fault) holds until a person resumes."""
        return self.mode is TradingMode.HALTED

    def allows(self, order_is_reducing: bool) -> bool:
        return self.refusal(order_is_reducing) is None

    def refusal(self, order_is_reducing: bool) -> ReasonCode | None:
        """The reason code an order would be refused with, or ``None`` if it may proceed."""
        if self.mode is TradingMode.HALTED:
            return ReasonCode.TRADING_HALTED
        if self.mode is TradingMode.PAUSED:
            return ReasonCode.TRADING_PAUSED
        if self.mode is TradingMode.REDUCING and not order_is_reducing:
            return ReasonCode.REDUCE_ONLY
        return None


def initial_status(now: datetime) -> TradingStatus:
    """The state of a fresh ledger with no history."""
    return TradingStatus(TradingMode.ACTIVE, ensure_utc(now), SYSTEM_ACTOR, "initial state", ())


def _require_text(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TradingStateError(f"{name} is required", ReasonCode.TRADING_HALTED)
    return value.strip()


def _stricter(
    status: TradingStatus,
    target: TradingMode,
    *,
    actor: str,
    why: str,
    now: datetime,
    reason_codes: Iterable[ReasonCode],
) -> TradingStatus:
    actor = _require_text(actor, "actor")
    why = _require_text(why, "why")
    codes = tuple(dict.fromkeys(ReasonCode(c) for c in reason_codes))
    mode = target if _SEVERITY[target] >= _SEVERITY[status.mode] else status.mode
    if mode is status.mode:
        # No escalation: keep the original cause (who halted and why) and add the new codes,
        # so the latch's explanation is never overwritten by a later or milder event.
        merged = tuple(dict.fromkeys((*status.reason_codes, *codes)))
        return replace(status, reason_codes=merged)
    return TradingStatus(mode, ensure_utc(now), actor, why, codes)


def pause(
    status: TradingStatus,
    *,
    actor: str,
    why: str,
    now: datetime,
    reason_codes: Iterable[ReasonCode] = (ReasonCode.TRADING_PAUSED,),
) -> TradingStatus:
    """Manual pause (or an automatic one, e.g. a reconciliation mismatch, §J1)."""
    return _stricter(status, TradingMode.PAUSED, actor=actor, why=why, now=now, reason_codes=reason_codes)


def deleverage(status: TradingStatus, *, actor: str, why: str, now: datetime) -> TradingStatus:
    """Forced deleverage: only reduce-only orders may pass."""
    return _stricter(
        status,
        TradingMode.REDUCING,
        actor=actor,
        why=why,
        now=now,
        reason_codes=(ReasonCode.FORCED_DELEVERAGE,),
    )


def kill_switch(status: TradingStatus, *, actor: str, why: str, now: datetime) -> TradingStatus:
    """The manual kill switch: HALTED, latched until ``resume``."""
    return _stricter(
        status,
        TradingMode.HALTED,
        actor=actor,
        why=why,
        now=now,
        reason_codes=(ReasonCode.KILL_SWITCH_MANUAL,),
    )


def halt(
    status: TradingStatus,
    *,
    reason_code: ReasonCode,
    why: str,
    now: datetime,
    actor: str = SYSTEM_ACTOR,
) -> TradingStatus:
    """System-level fault (audit failure, broken chain, missing key …): HALTED, latched."""
    codes = (ReasonCode.TRADING_HALTED, ReasonCode(reason_code))
    return _stricter(status, TradingMode.HALTED, actor=actor, why=why, now=now, reason_codes=codes)


def data_health_breach(
    status: TradingStatus, *, mode: TradingMode | str, why: str, now: datetime, actor: str = SYSTEM_ACTOR
) -> TradingStatus:
    """Issue 17: a mostly bad feed is a system fault — REDUCING (reduce-only) or HALTED, as declared."""
    target = TradingMode(mode)
    if target not in (TradingMode.REDUCING, TradingMode.HALTED):
        raise TradingStateError(f"a data-health breach moves trading to REDUCING or HALTED, not {target}")
    extra = ReasonCode.FORCED_DELEVERAGE if target is TradingMode.REDUCING else ReasonCode.TRADING_HALTED
    return _stricter(status, target, actor=actor, why=why, now=now,
                     reason_codes=(ReasonCode.DATA_HEALTH_BREACH, extra))


def check_daily_loss(
    status: TradingStatus, *, daily_loss: float, limit: float, now: datetime
) -> TradingStatus:
    """Trip the kill switch when ``daily_loss`` (a positive fraction of NAV) reaches ``limit``.

    Never relaxes: a loss back under the limit leaves an earlier halt in place (latched).
    A non-finite loss is treated as a breach — an unknown P&L must not keep the book trading.
    """
    if limit <= 0:
        raise ValueError("daily loss limit must be positive")
    breached = not math.isfinite(daily_loss) or daily_loss >= limit
    if not breached:
        return status
    return _stricter(
        status,
        TradingMode.HALTED,
        actor=SYSTEM_ACTOR,
        why=f"daily loss {daily_loss:.4%} >= limit {limit:.4%}",
        now=now,
        reason_codes=(ReasonCode.KILL_SWITCH_DAILY_LOSS,),
    )


def resume(
    status: TradingStatus,
    *,
    actor: str,
    why: str,
    now: datetime,
    to: TradingMode = TradingMode.ACTIVE,
) -> TradingStatus:
    """A person lifts a pause/halt. Needs a named actor and a written reason."""
    actor = _require_text(actor, "actor")
    why = _require_text(why, "why")
    if is_service_actor(actor):
        # The latch exists precisely so that no automatic process can lift it (any spelling).
        raise TradingStateError(
            f"resume must be done by a person, not by the service identity {actor!r}",
            ReasonCode.ACTOR_NOT_AUTHORIZED,
        )
    to = TradingMode(to)
    if to not in (TradingMode.ACTIVE, TradingMode.REDUCING):
        raise TradingStateError(f"resume target must be ACTIVE or REDUCING, not {to}")
    return TradingStatus(to, ensure_utc(now), actor, why, (ReasonCode.TRADING_RESUMED,))
