"""The order state machine (§I3): one explicit (state, event) → state table.

Anything not in ``TRANSITIONS`` is illegal and raises ``IllegalTransitionError`` — there is no
"default" branch, so a surprising broker message can never silently move an order.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

from ais_pipelines.core.reason_codes import ReasonCode


class OrderState(StrEnum):
    NEW = "NEW"  # intent written to the ledger, not yet sent
    SUBMITTED = "SUBMITTED"  # sent (or being sent); broker outcome not yet known
    ACCEPTED = "ACCEPTED"  # broker acknowledged, working
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCEL_PENDING = "CANCEL_PENDING"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class OrderEvent(StrEnum):
    SUBMIT = "SUBMIT"
    ACCEPT = "ACCEPT"
    PARTIAL_FILL = "PARTIAL_FILL"
    FILL = "FILL"
    CANCEL_REQUEST = "CANCEL_REQUEST"
    CANCEL = "CANCEL"
    CANCEL_REJECT = "CANCEL_REJECT"
    REJECT = "REJECT"
    EXPIRE = "EXPIRE"


S, E = OrderState, OrderEvent

TRANSITIONS: dict[tuple[OrderState, OrderEvent], OrderState] = {
    # An intent that never left the building can be sent, refused or dropped.
    (S.NEW, E.SUBMIT): S.SUBMITTED,
    (S.NEW, E.REJECT): S.REJECTED,
    (S.NEW, E.CANCEL): S.CANCELLED,
    (S.NEW, E.EXPIRE): S.EXPIRED,  # approval expired before the order could be sent
    # Brokers may report fills or cancels before (or instead of) an explicit ack.
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
    # Self-loop: every further partial fill is an event of its own in the history.
    (S.PARTIALLY_FILLED, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.FILL): S.FILLED,
    (S.PARTIALLY_FILLED, E.CANCEL_REQUEST): S.CANCEL_PENDING,
    (S.PARTIALLY_FILLED, E.CANCEL): S.CANCELLED,
    (S.PARTIALLY_FILLED, E.EXPIRE): S.EXPIRED,
    # A cancel races with fills: a fill that lands first wins; a refused cancel resumes work.
    (S.CANCEL_PENDING, E.CANCEL): S.CANCELLED,
    (S.CANCEL_PENDING, E.CANCEL_REJECT): S.ACCEPTED,
    (S.CANCEL_PENDING, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.CANCEL_PENDING, E.FILL): S.FILLED,
    (S.CANCEL_PENDING, E.EXPIRE): S.EXPIRED,
}

TERMINAL_STATES: frozenset[OrderState] = frozenset({S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED})
# Orders the broker may still be working (or may have received): what recovery must ask about.
OPEN_STATES: frozenset[OrderState] = frozenset(set(OrderState) - TERMINAL_STATES)

del S, E


class IllegalTransitionError(Exception):
    """A (state, event) pair outside the transition table."""

    reason_code = ReasonCode.ILLEGAL_ORDER_TRANSITION

    def __init__(self, state: OrderState | str, event: OrderEvent | str):
        self.state = str(state)
        self.event = str(event)
        super().__init__(
            f"{ReasonCode.ILLEGAL_ORDER_TRANSITION}: {self.event} is not allowed in state {self.state}"
        )


def transition(state: OrderState | str, event: OrderEvent | str) -> OrderState:
    """The next state, or ``IllegalTransitionError``. Unknown strings are illegal, not crashes."""
    try:
        key = (OrderState(state), OrderEvent(event))
    except ValueError as exc:
        raise IllegalTransitionError(state, event) from exc
    try:
        return TRANSITIONS[key]
    except KeyError as exc:
        raise IllegalTransitionError(state, event) from exc


def is_terminal(state: OrderState | str) -> bool:
    return OrderState(state) in TERMINAL_STATES


def events_between(start: OrderState | str, target: OrderState | str) -> list[OrderEvent] | None:
    """Shortest legal event path from ``start`` to ``target`` (``[]`` if equal), else ``None``.

    Reconciliation uses this to catch the ledger up with the broker (broker state is the truth,
    §J1) through the table rather than by overwriting the state: an order the broker reports in
    a state the ledger cannot legally reach is a mismatch, not something to paper over.
    Ties are broken by the table's declaration order, so the path is deterministic.
    """
    src, dst = OrderState(start), OrderState(target)
    if src == dst:
        return []
    queue: deque[tuple[OrderState, list[OrderEvent]]] = deque([(src, [])])
    seen = {src}
    while queue:
        state, path = queue.popleft()
        for (from_state, event), to_state in TRANSITIONS.items():
            if from_state != state or to_state in seen:
                continue
            if to_state == dst:
                return [*path, event]
            seen.add(to_state)
            queue.append((to_state, [*path, event]))
    return None
