"""Append-only, hash-chained audit log (§J3), independent of the storage engine.

Every decision, approval, order, fill, risk event and override is appended as an
:class:`AuditRecord`. Each record's ``hash`` is SHA-256 (hex) over the canonical JSON
(:func:`ais_pipelines.core.approvals.canonical_json`) of all its other fields, including
``prev_hash`` = the previous record's hash (64 zeros for the first record, ``seq`` 1). Editing,
deleting, inserting or reordering records therefore breaks the chain at a precise ``seq``,
which :func:`verify_chain` names.

What the chain cannot detect on its own: someone who rewrites the whole tail and recomputes
every hash. Publish :meth:`AuditChain.head` (seq + hash) somewhere else (run metadata, the
governance report) to anchor it.

Failure to record is a system-level fault: :class:`AuditWriteError` (reason
AUDIT_WRITE_FAILED, or AUDIT_CHAIN_BROKEN when the stored tail no longer hashes correctly).
Callers must halt trading when they see it.

Storage contract (:class:`AuditStore`) — three methods, kept small so a SQL store is easy:

* ``append(record)``: persist durably before returning; must refuse (raise) a record whose
  ``seq`` is not ``last().seq + 1`` or whose ``prev_hash`` is not ``last().hash``, e.g. with a
  unique constraint on ``seq`` inside a transaction. That is how concurrent writers are caught.
  Never update or delete rows.
* ``last()``: the record with the highest ``seq``, or ``None`` when empty. Read fresh (other
  processes may have appended) rather than from a cache.
* ``iter_records()``: every record in storage order (ascending ``seq`` for a SQL store:
  ``ORDER BY seq``). Store the fields exactly as given; ``payload`` is already plain JSON
  (dicts, lists, str, int, float, bool, None).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ais_pipelines.core.approvals import canonical_json, format_utc
from ais_pipelines.core.reason_codes import ReasonCode

GENESIS_HASH = "0" * 64
RECORD_FIELDS = (
    "seq",
    "ts",
    "event_type",
    "actor",
    "subject",
    "payload",
    "reason_codes",
    "prev_hash",
    "hash",
)


class AuditWriteError(Exception):
    """The audit log could not be written: halt trading."""

    reason: ReasonCode = ReasonCode.AUDIT_WRITE_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.reason}: {message}")


class AuditChainBrokenError(AuditWriteError):
    """Refused to append on top of a tail record whose hash does not verify."""

    reason = ReasonCode.AUDIT_CHAIN_BROKEN


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: str  # UTC, fixed format YYYY-MM-DDTHH:MM:SS.ffffffZ
    event_type: str
    actor: str
    subject: str
    payload: Any  # plain JSON (already normalised through canonical JSON)
    reason_codes: tuple[str, ...]
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """All fields except ``hash``: what the hash covers."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "event_type": self.event_type,
            "actor": self.actor,
            "subject": self.subject,
            "payload": self.payload,
            "reason_codes": list(self.reason_codes),
            "prev_hash": self.prev_hash,
        }

    def compute_hash(self) -> str:
        return compute_record_hash(self.body())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reason_codes"] = list(self.reason_codes)
        return d

    def to_json(self) -> str:
        return canonical_json(self.to_dict(), allow_nonfinite=True).decode("utf-8")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditRecord:
        keys = set(d)
        if keys != set(RECORD_FIELDS):
            raise ValueError(
                f"audit record fields differ: missing {sorted(set(RECORD_FIELDS) - keys)}, "
                f"unexpected {sorted(keys - set(RECORD_FIELDS))}"
            )
        if not isinstance(d["seq"], int) or isinstance(d["seq"], bool):
            raise ValueError(f"seq must be an int, got {d['seq']!r}")
        codes = d["reason_codes"]
        if not isinstance(codes, (list, tuple)):
            raise ValueError("reason_codes must be a list")
        return cls(
            seq=d["seq"],
            ts=str(d["ts"]),
            event_type=str(d["event_type"]),
            actor=str(d["actor"]),
            subject=str(d["subject"]),
            payload=d["payload"],
            reason_codes=tuple(str(c) for c in codes),
            prev_hash=str(d["prev_hash"]),
            hash=str(d["hash"]),
        )


def compute_record_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body, allow_nonfinite=True)).hexdigest()


def _normalise_payload(payload: Any) -> Any:
    # Store exactly what is hashed: tuples → lists, datetimes → UTC text, 2.0 → 2, NaN → "NaN".
    return json.loads(canonical_json(payload, allow_nonfinite=True))


# --------------------------------------------------------------------------------------------
# storage


@runtime_checkable
class AuditStore(Protocol):
    """Where records live. See the module docstring for the exact contract."""

    def append(self, record: AuditRecord) -> None: ...

    def last(self) -> AuditRecord | None: ...

    def iter_records(self) -> Iterator[AuditRecord]: ...


def _check_link(last: AuditRecord | None, record: AuditRecord) -> None:
    want_seq = 1 if last is None else last.seq + 1
    want_prev = GENESIS_HASH if last is None else last.hash
    if record.seq != want_seq or record.prev_hash != want_prev:
        raise ValueError(
            f"record seq {record.seq} does not extend the stored chain (expected seq {want_seq}); "
            "another writer appended concurrently?"
        )


class InMemoryAuditStore:
    """A list in memory; ``records`` is public so tests can tamper with it."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def append(self, record: AuditRecord) -> None:
        _check_link(self.last(), record)
        self.records.append(record)

    def last(self) -> AuditRecord | None:
        return self.records[-1] if self.records else None

    def iter_records(self) -> Iterator[AuditRecord]:
        return iter(list(self.records))


class JsonlAuditStore:
    """One canonical-JSON record per line, append-only, fsynced, for tests and the CLI.

    Appends take an exclusive ``flock`` and re-read the tail, so several processes can share a
    file safely. A torn last line (crash mid-write) makes further appends fail until a person
    inspects the file: the log is never silently repaired.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: AuditRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        line = (record.to_json() + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _check_link(self._last_from_fd(fd), record)
            view = memoryview(line)
            while view:  # os.write may write less than asked
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        if created:  # make the new directory entry durable too
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def last(self) -> AuditRecord | None:
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._last_from_fd(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _last_from_fd(fd: int) -> AuditRecord | None:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        # Read backwards in growing chunks until the last complete line is in the buffer.
        chunk = 4096
        while True:
            start = max(0, size - chunk)
            data = os.pread(fd, size - start, start)
            if not data.endswith(b"\n"):
                raise ValueError("audit file ends with a torn (incomplete) line")
            body = data[:-1]
            nl = body.rfind(b"\n")
            if nl >= 0 or start == 0:
                return AuditRecord.from_dict(json.loads(body[nl + 1 :].decode("utf-8")))
            chunk *= 4

    def iter_records(self) -> Iterator[AuditRecord]:
        """Yield records in file order; a malformed line raises ``ValueError`` naming the line."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    raise ValueError(f"{self.path}:{lineno}: torn (incomplete) last line")
                try:
                    rec = AuditRecord.from_dict(json.loads(raw.decode("utf-8")))
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(f"{self.path}:{lineno}: malformed audit record: {exc}") from exc
                yield rec


# --------------------------------------------------------------------------------------------
# the chain


class AuditChain:
    """Builds, hashes and appends records through an :class:`AuditStore`."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self._lock = threading.Lock()  # one in-process writer at a time; the store guards processes

    def append(
        self,
        event_type: str,
        actor: str,
        subject: str,
        payload: Any,
        reason_codes: Sequence[ReasonCode | str],
        now: datetime,
    ) -> AuditRecord:
        """Append one record and return it. Any failure → ``AuditWriteError`` (halt trading)."""
        try:
            ts = format_utc(now)
            codes = tuple(sorted({str(ReasonCode(c)) for c in reason_codes}))
            body_payload = _normalise_payload(payload)
            for name, value in (("event_type", event_type), ("actor", actor), ("subject", subject)):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{name} must be a non-empty string")
        except (TypeError, ValueError) as exc:
            raise AuditWriteError(f"cannot build audit record: {exc}") from exc
        with self._lock:
            try:
                last = self.store.last()
            except Exception as exc:  # any storage failure means "not recorded"
                raise AuditWriteError(f"cannot read audit tail: {exc}") from exc
            if last is not None and last.compute_hash() != last.hash:
                raise AuditChainBrokenError(f"stored tail record seq {last.seq} does not match its hash")
            body = {
                "seq": 1 if last is None else last.seq + 1,
                "ts": ts,
                "event_type": event_type,
                "actor": actor,
                "subject": subject,
                "payload": body_payload,
                "reason_codes": list(codes),
                "prev_hash": GENESIS_HASH if last is None else last.hash,
            }
            record = AuditRecord(**{**body, "reason_codes": codes}, hash=compute_record_hash(body))
            try:
                self.store.append(record)
            except Exception as exc:  # the store failed: the record does not exist
                raise AuditWriteError(f"cannot append audit record seq {record.seq}: {exc}") from exc
            return record

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest record (``(0, GENESIS_HASH)`` when empty): publish it to anchor the chain."""
        last = self.store.last()
        return (0, GENESIS_HASH) if last is None else (last.seq, last.hash)

    def verify(self) -> VerifyResult:
        return verify_store(self.store)


# --------------------------------------------------------------------------------------------
# verification


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    n_records: int  # records read (all of them, or up to an unreadable one)
    first_broken_seq: int | None  # the seq position where verification first fails
    reason: str | None

    @property
    def reason_code(self) -> ReasonCode | None:
        return None if self.ok else ReasonCode.AUDIT_CHAIN_BROKEN


class _ChainVerifier:
    """Feeds records one at a time; remembers the first break and keeps counting after it."""

    def __init__(self) -> None:
        self.n = 0
        self.prev_hash = GENESIS_HASH
        self.broken: tuple[int, str] | None = None

    def feed(self, rec: AuditRecord) -> None:
        self.n += 1
        if self.broken is not None:
            return
        n = self.n
        if rec.seq != n:
            kind = "gap (record deleted?)" if rec.seq > n else "out of order or duplicated"
            self.broken = (n, f"expected seq {n}, found seq {rec.seq}: {kind}")
        elif rec.prev_hash != self.prev_hash:
            self.broken = (n, f"seq {n}: prev_hash does not match the hash of seq {n - 1}")
        elif rec.compute_hash() != rec.hash:
            self.broken = (n, f"seq {n}: content does not match its hash (edited)")
        self.prev_hash = rec.hash

    def result(self) -> VerifyResult:
        if self.broken is None:
            return VerifyResult(True, self.n, None, None)
        return VerifyResult(False, self.n, self.broken[0], self.broken[1])


def verify_chain(records: Iterable[AuditRecord]) -> VerifyResult:
    """Walk all records in order and name the first seq position that does not verify.

    Record *i* (1-based position) must have ``seq == i``, ``prev_hash`` equal to the hash of
    record *i-1* (64 zeros for *i = 1*), and a ``hash`` that matches its own content. So:

    * payload (or any field) edited, or the hash field edited → that record's seq;
    * a record edited *and* its hash recomputed → the next record's seq (its ``prev_hash`` no
      longer matches);
    * a record deleted → the missing seq (the next record arrives with a seq gap);
    * records swapped → the first position holding the wrong seq;
    * a record inserted → the first position where the inserted record or its successor
      breaks one of the rules above.

    ``n_records`` counts every record given, also those after the break.
    """
    v = _ChainVerifier()
    for rec in records:
        v.feed(rec)
    return v.result()


def verify_store(store: AuditStore) -> VerifyResult:
    """:func:`verify_chain` over a store; an unreadable record is a break at its position
    (unless an earlier break was found), and reading stops there."""
    v = _ChainVerifier()
    try:
        for rec in store.iter_records():
            v.feed(rec)
    except Exception as exc:  # unreadable storage is a broken chain, not a crash
        if v.broken is None:
            pos = v.n + 1
            return VerifyResult(False, v.n, pos, f"record at position {pos} unreadable: {exc}")
    return v.result()
