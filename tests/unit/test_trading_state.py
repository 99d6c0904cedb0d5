"""§J2 trading state (pure machine) and the injected clocks it is timed with (§I5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ais_pipelines.core.calendars import is_open_at
from ais_pipelines.core.clock import Clock, FixedClock, SimulatedClock, SystemClock, ensure_utc
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.trading_state import (
    TradingMode,
    TradingStateError,
    check_daily_loss,
    deleverage,
    halt,
    initial_status,
    kill_switch,
    pause,
    resume,
)

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
T2 = T0 + timedelta(minutes=10)


def test_initial_state_allows_everything():
    s = initial_status(T0)
    assert s.mode is TradingMode.ACTIVE
    assert s.allows(order_is_reducing=False) and s.allows(order_is_reducing=True)
    assert s.refusal(False) is None
    assert not s.latched


def test_kill_switch_latches_until_a_person_resumes_with_a_reason():
    s = kill_switch(initial_status(T0), actor="alice", why="desk limit", now=T1)
    assert s.mode is TradingMode.HALTED and s.latched
    assert s.reason_codes == (ReasonCode.KILL_SWITCH_MANUAL,)
    assert (s.actor, s.why, s.since) == ("alice", "desk limit", T1)
    assert not s.allows(False) and not s.allows(True)
    assert s.refusal(True) is ReasonCode.TRADING_HALTED

    # Nothing automatic or milder lifts it: the loss receding, a pause, a deleverage.
    assert check_daily_loss(s, daily_loss=0.0, limit=0.03, now=T2) == s
    assert pause(s, actor="bob", why="x", now=T2).mode is TradingMode.HALTED
    assert deleverage(s, actor="bob", why="x", now=T2).mode is TradingMode.HALTED
    # The milder event does not overwrite who halted and why.
    p = pause(s, actor="bob", why="x", now=T2)
    assert (p.actor, p.why, p.since) == ("alice", "desk limit", T1)

    with pytest.raises(TradingStateError):
        resume(s, actor="alice", why="", now=T2)
    with pytest.raises(TradingStateError):
        resume(s, actor="alice", why="   ", now=T2)
    with pytest.raises(TradingStateError):
        resume(s, actor="", why="limits reviewed", now=T2)
    with pytest.raises(TradingStateError):
        resume(s, actor="system", why="auto-resume", now=T2)

    r = resume(s, actor="alice", why="limits reviewed with risk", now=T2)
    assert r.mode is TradingMode.ACTIVE and not r.latched
    assert r.reason_codes == (ReasonCode.TRADING_RESUMED,)
    assert (r.actor, r.why, r.since) == ("alice", "limits reviewed with risk", T2)


@pytest.mark.parametrize(
    ("loss", "tripped"), [(0.0, False), (0.0299, False), (0.03, True), (0.05, True), (float("nan"), True)]
)
def test_daily_loss_kill_switch_at_the_limit(loss, tripped):
    s = check_daily_loss(initial_status(T0), daily_loss=loss, limit=0.03, now=T1)
    if tripped:
        assert s.mode is TradingMode.HALTED and s.latched
        assert s.reason_codes == (ReasonCode.KILL_SWITCH_DAILY_LOSS,)
        assert s.actor == "system" and s.since == T1
    else:
        assert s == initial_status(T0)


def test_daily_loss_limit_must_be_positive():
    with pytest.raises(ValueError):
        check_daily_loss(initial_status(T0), daily_loss=0.01, limit=0.0, now=T1)


def test_manual_pause_refuses_everything_and_needs_a_resume():
    s = pause(initial_status(T0), actor="ops", why="broker maintenance", now=T1)
    assert s.mode is TradingMode.PAUSED and not s.latched
    assert s.refusal(True) is ReasonCode.TRADING_PAUSED and s.refusal(False) is ReasonCode.TRADING_PAUSED
    assert s.reason_codes == (ReasonCode.TRADING_PAUSED,)
    with pytest.raises(TradingStateError):
        pause(initial_status(T0), actor="ops", why="", now=T1)
    assert resume(s, actor="ops", why="maintenance over", now=T2).mode is TradingMode.ACTIVE


def test_forced_deleverage_admits_only_reducing_orders():
    s = deleverage(initial_status(T0), actor="risk", why="gross over mandate", now=T1)
    assert s.mode is TradingMode.REDUCING
    assert s.allows(order_is_reducing=True)
    assert not s.allows(order_is_reducing=False)
    assert s.refusal(False) is ReasonCode.REDUCE_ONLY
    assert s.reason_codes == (ReasonCode.FORCED_DELEVERAGE,)
    # Stricter states still win over REDUCING, and a resume can land in REDUCING.
    assert pause(s, actor="ops", why="x", now=T2).mode is TradingMode.PAUSED
    h = kill_switch(s, actor="ops", why="x", now=T2)
    assert (
        resume(h, actor="ops", why="partial restart", now=T2, to=TradingMode.REDUCING).mode
        is TradingMode.REDUCING
    )
    with pytest.raises(TradingStateError):
        resume(h, actor="ops", why="x", now=T2, to=TradingMode.PAUSED)


def test_system_halt_records_its_cause_and_merges_later_causes():
    s = halt(initial_status(T0), reason_code=ReasonCode.AUDIT_WRITE_FAILED, why="disk full", now=T1)
    assert s.mode is TradingMode.HALTED and s.actor == "system"
    assert s.reason_codes == (ReasonCode.TRADING_HALTED, ReasonCode.AUDIT_WRITE_FAILED)
    s2 = halt(s, reason_code=ReasonCode.RECONCILIATION_MISMATCH, why="later", now=T2)
    assert s2.why == "disk full" and s2.since == T1
    assert s2.reason_codes == (
        ReasonCode.TRADING_HALTED,
        ReasonCode.AUDIT_WRITE_FAILED,
        ReasonCode.RECONCILIATION_MISMATCH,
    )


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError):
        kill_switch(initial_status(T0), actor="a", why="b", now=datetime(2024, 3, 5, 15, 0))


# --- clocks ---------------------------------------------------------------------------------


def test_fixed_clock_is_utc_and_only_moves_forward():
    c = FixedClock(
        datetime(2024, 3, 5, 10, 0, tzinfo=pd.Timestamp("2024-03-05", tz="America/New_York").tzinfo)
    )
    assert isinstance(c, Clock)
    assert c.now() == T0 and c.now().tzinfo is UTC
    assert c.now() == c.now()  # no hidden wall-clock reads
    assert c.advance(seconds=30) == T0 + timedelta(seconds=30)
    c.set(T1)
    assert c.now() == T1
    with pytest.raises(ValueError):
        c.set(T0)
    with pytest.raises(ValueError):
        c.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError):
        FixedClock(datetime(2024, 3, 5, 15, 0))
    with pytest.raises(ValueError):
        ensure_utc(datetime(2024, 3, 5))


def test_simulated_session_after_the_last_bar_is_open_even_on_a_weekend():
    # Last sample bar on Friday 2024-03-08 → the simulated session is Monday 2024-03-11, which
    # is already daylight-saving time in New York (open 13:30 UTC).
    c = SimulatedClock.session_after(pd.Timestamp("2024-03-08"), "XNYS", minutes_after_open=30)
    assert c.now() == datetime(2024, 3, 11, 14, 0, tzinfo=UTC)
    assert is_open_at("XNYS", pd.Timestamp(c.now()))
    c.advance(hours=7)  # 21:00 UTC = 17:00 New York: closed
    assert not is_open_at("XNYS", pd.Timestamp(c.now()))
    # A Saturday "last bar" also lands on the next session, not on the weekend.
    assert SimulatedClock.session_after("2024-03-09").now() == datetime(2024, 3, 11, 14, 0, tzinfo=UTC)


def test_system_clock_is_aware_utc():
    assert SystemClock().now().tzinfo is UTC
