"""Single flight per as-of session (§I2, issue 10): an execution lease in the ledger.

At most one execution of a session runs at a time. The lease row (session, owner, pid, host,
expiry) is taken in one ledger transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL an advisory
transaction lock), so two processes racing for it serialise and exactly one wins. The loser
gets :class:`ExecutionInProgressError` (reason ``EXECUTION_IN_PROGRESS``) before it has touched
a broker.

A lease is taken over only when its owner is provably gone: the expiry passed, the owner
process on this host no longer exists (kill -9), or the caller's own liveness check (e.g. the
owner's Dagster run is finished) says so. Expiry is wall-clock time — the market clock of a
simulated session says nothing about whether a process is alive.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select, update

from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger import models as m
from ais_pipelines.ledger.store import LedgerError, LedgerStore, _serialize

DEFAULT_TTL_S = 900.0  # longer than any execution step; renewed by every step of the run


@dataclass(frozen=True)
class Lease:
    session: str
    owner: str
    owner_pid: int
    owner_host: str
    acquired_at: datetime
    expires_at: datetime
    taken_over_from: str | None = None  # the dead owner this lease replaced, if any


class ExecutionInProgressError(LedgerError):
    """Another live execution holds the session's lease: refuse, touch nothing."""

    reason_code = ReasonCode.EXECUTION_IN_PROGRESS

    def __init__(self, holder: Lease):
        self.holder = holder
        super().__init__(
            f"{ReasonCode.EXECUTION_IN_PROGRESS}: session {holder.session} is being executed by {holder.owner} "
            f"(pid {holder.owner_pid} on {holder.owner_host}, lease until {holder.expires_at:%Y-%m-%d %H:%M:%S}Z)"
        )


def _row(r: object) -> Lease:
    return Lease(r.session, r.owner, r.owner_pid, r.owner_host, r.acquired_at, r.expires_at)  # type: ignore[attr-defined]


def process_alive(pid: int, host: str) -> bool:
    """Whether ``pid`` on ``host`` may still be running. Another host: assume alive (expiry decides)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed, not yet reaped child is a zombie: it will never run again
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def lease_is_stale(lease: Lease, owner_gone: Callable[[Lease], bool] | None = None,
                   now: datetime | None = None) -> bool:
    """Whether ``lease`` may be taken over: expired, its process dead, or its owner declared gone."""
    now = now or datetime.now(UTC)
    return (lease.expires_at <= now or not process_alive(lease.owner_pid, lease.owner_host)
            or bool(owner_gone and owner_gone(lease)))


def list_leases(store: LedgerStore) -> list[Lease]:
    """Every session lease held now (for the operator's ``ais runs stuck``)."""
    with store.transaction() as conn:
        return [_row(r) for r in conn.execute(select(m.execution_leases).order_by(m.execution_leases.c.session))]


def current_lease(store: LedgerStore, session: str) -> Lease | None:
    with store.transaction() as conn:
        r = conn.execute(select(m.execution_leases).where(m.execution_leases.c.session == session)).first()
    return None if r is None else _row(r)


def acquire_lease(
    store: LedgerStore,
    session: str,
    owner: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    now: datetime | None = None,
    owner_gone: Callable[[Lease], bool] | None = None,
) -> Lease:
    """Take (or renew, for the same owner) the lease of ``session``; raise if a live owner holds it.

    ``owner_gone(lease)`` lets the caller declare a holder dead by its own knowledge (a finished
    Dagster run); a holder is also gone when its lease expired or its process is dead.
    """
    now = now or datetime.now(UTC)
    pid, host = os.getpid(), socket.gethostname()
    expires = now + timedelta(seconds=ttl_s)
    t = m.execution_leases.c
    with store.transaction() as conn:
        _serialize(conn, f"ais-execution-lease:{session}")
        r = conn.execute(select(m.execution_leases).where(t.session == session)).first()
        if r is None:
            conn.execute(insert(m.execution_leases).values(session=session, owner=owner, owner_pid=pid,
                                                           owner_host=host, acquired_at=now, expires_at=expires))
            return Lease(session, owner, pid, host, now, expires)
        held = _row(r)
        if held.owner == owner:
            conn.execute(update(m.execution_leases).where(t.session == session, t.owner == owner)
                         .values(owner_pid=pid, owner_host=host, expires_at=expires))
            return Lease(session, owner, pid, host, held.acquired_at, expires)
        if not lease_is_stale(held, owner_gone, now):
            raise ExecutionInProgressError(held)
        won = conn.execute(
            update(m.execution_leases)
            .where(t.session == session, t.owner == held.owner)
            .values(owner=owner, owner_pid=pid, owner_host=host, acquired_at=now, expires_at=expires)
        ).rowcount
        if won != 1:  # pragma: no cover - the lock above makes this unreachable
            raise ExecutionInProgressError(held)
        return Lease(session, owner, pid, host, now, expires, taken_over_from=held.owner)


def release_lease(store: LedgerStore, session: str, owner: str) -> bool:
    """Give the lease back (only its owner can). Returns whether a row was released."""
    t = m.execution_leases.c
    with store.transaction() as conn:
        return conn.execute(delete(m.execution_leases).where(t.session == session, t.owner == owner)).rowcount == 1


def force_release(store: LedgerStore, session: str) -> Lease | None:
    """Operator action for a stuck run (audited by the caller): drop whatever lease ``session`` has."""
    held = current_lease(store, session)
    if held is not None:
        with store.transaction() as conn:
            conn.execute(delete(m.execution_leases).where(m.execution_leases.c.session == session))
    return held
