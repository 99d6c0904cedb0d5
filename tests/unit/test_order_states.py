"""§I3: the order state machine, exhaustively."""

from __future__ import annotations

import itertools

import pytest

from ais_pipelines.core.order_states import (
    OPEN_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransitionError,
    OrderEvent,
    OrderState,
    events_between,
    is_terminal,
    transition,
)
from ais_pipelines.core.reason_codes import ReasonCode

S, E = OrderState, OrderEvent

# Written out independently of the module so a silent edit of the table fails this test.
EXPECTED = {
    (S.NEW, E.SUBMIT): S.SUBMITTED,
    (S.NEW, E.REJECT): S.REJECTED,
    (S.NEW, E.CANCEL): S.CANCELLED,
    (S.NEW, E.EXPIRE): S.EXPIRED,
    (S.SUBMITTED, E.ACCEPT): S.ACCEPTED,
    (S.SUBMITTED, E.REJECT): S.REJECTED,
    (S.SUBMITTED, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.SUBMITTED, E.FILL): S.FILLED,
    (S.SUBMITTED, E.CANCEL_REQUEST): S.CANCEL_PENDING,
    (S.SUBMITTED, E.CANCEL): S.CANCELLED,
    (S.SUBMITTED, E.EXPIRE): S.EXPIRED,
    (S.ACCEPTED, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.ACCEPTED, E.FILL): S.FILLED,
    (S.ACCEPTED, E.CANCEL_REQUEST): S.CANCEL_PENDING,
    (S.ACCEPTED, E.CANCEL): S.CANCELLED,
    (S.ACCEPTED, E.EXPIRE): S.EXPIRED,
    (S.PARTIALLY_FILLED, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.FILL): S.FILLED,
    (S.PARTIALLY_FILLED, E.CANCEL_REQUEST): S.CANCEL_PENDING,
    (S.PARTIALLY_FILLED, E.CANCEL): S.CANCELLED,
    (S.PARTIALLY_FILLED, E.EXPIRE): S.EXPIRED,
    (S.CANCEL_PENDING, E.CANCEL): S.CANCELLED,
    (S.CANCEL_PENDING, E.CANCEL_REJECT): S.ACCEPTED,
    (S.CANCEL_PENDING, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.CANCEL_PENDING, E.FILL): S.FILLED,
    (S.CANCEL_PENDING, E.EXPIRE): S.EXPIRED,
}
ALL_PAIRS = list(itertools.product(OrderState, OrderEvent))
ILLEGAL = [p for p in ALL_PAIRS if p not in EXPECTED]


def test_table_is_exactly_the_expected_one():
    assert TRANSITIONS == EXPECTED
    assert len(ALL_PAIRS) == 9 * 9
    assert len(ILLEGAL) == 81 - 26


@pytest.mark.parametrize(("state", "event"), list(EXPECTED), ids=lambda v: str(v))
def test_every_legal_transition(state, event):
    assert transition(state, event) is EXPECTED[(state, event)]
    # String forms (as stored in the ledger) behave identically.
    assert transition(str(state), str(event)) is EXPECTED[(state, event)]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=lambda v: str(v))
def test_every_other_pair_raises(state, event):
    with pytest.raises(IllegalTransitionError) as info:
        transition(state, event)
    assert info.value.reason_code is ReasonCode.ILLEGAL_ORDER_TRANSITION
    assert info.value.state == str(state) and info.value.event == str(event)
    assert str(ReasonCode.ILLEGAL_ORDER_TRANSITION) in str(info.value)


def test_terminal_states_have_no_way_out():
    expected_terminal = {S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED}
    assert expected_terminal == TERMINAL_STATES
    assert set(OrderState) - expected_terminal == OPEN_STATES
    assert all(from_state not in TERMINAL_STATES for from_state, _ in TRANSITIONS)
    assert all(is_terminal(s) for s in TERMINAL_STATES)
    assert not any(is_terminal(s) for s in OPEN_STATES)


def test_unknown_names_are_illegal_not_crashes():
    with pytest.raises(IllegalTransitionError):
        transition("NEW", "TELEPORT")
    with pytest.raises(IllegalTransitionError):
        transition("LIMBO", "SUBMIT")


def test_every_open_state_can_still_end():
    # No dead ends: every non-terminal state reaches some terminal state.
    for state in OPEN_STATES:
        assert any(events_between(state, t) is not None for t in TERMINAL_STATES), state


def test_events_between_takes_the_shortest_legal_path():
    assert events_between(S.NEW, S.NEW) == []
    assert events_between(S.NEW, S.FILLED) == [E.SUBMIT, E.FILL]
    assert events_between(S.NEW, S.ACCEPTED) == [E.SUBMIT, E.ACCEPT]
    assert events_between(S.SUBMITTED, S.PARTIALLY_FILLED) == [E.PARTIAL_FILL]
    assert events_between(S.ACCEPTED, S.CANCELLED) == [E.CANCEL]
    assert events_between(S.NEW, S.CANCEL_PENDING) == [E.SUBMIT, E.CANCEL_REQUEST]
    # Nothing leaves a terminal state, and nothing goes back to NEW or SUBMITTED.
    assert events_between(S.FILLED, S.ACCEPTED) is None
    assert events_between(S.ACCEPTED, S.SUBMITTED) is None
    assert events_between(S.PARTIALLY_FILLED, S.NEW) is None


def test_every_path_found_is_legal_step_by_step():
    for src, dst in itertools.product(OrderState, OrderState):
        path = events_between(src, dst)
        if path is None:
            continue
        state = src
        for ev in path:
            state = transition(state, ev)
        assert state is dst
