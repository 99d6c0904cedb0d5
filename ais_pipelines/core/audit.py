"""Append-only, hash-chained audit log (§J3), independent of the storage engine.

Every decision, approval, order, fill, risk event and override is appended as an
:class:`AuditRecord`. Each record's ``hash`` is SHA-256 (hex) over the canonical JSON
(:func:`ais_pipelines.core.approvals.canonical_json`) of all its other fields, including
``prev_hash`` = the previous record's hash (64 zeros for the first record, ``seq`` 1). Editing,
deleting, inserting or reordering records therefore breaks the chain at a precise ``seq``,
which :func:`verify_chain` names.

What the chain cannot detect on its own: a deleted tail, or someone who rewrites the whole
tail and recomputes every hash. So each append publishes the head (seq, hash, ts, ledger id) to
an :class:`AuditAnchor`, a file outside the ledger that only ever advances, and
:func:`verify_store` checks the chain against it (tail missing → TRUNCATED at the first missing
seq; another hash at the anchored seq → ANCHOR_MISMATCH).

Failure to record is a system-level fault: :class:`AuditWriteError` (reason
AUDIT_WRITE_FAILED, or AUDIT_CHAIN_BROKEN when the stored tail no longer hashes correctly or
no longer reaches the anchored head). Callers must halt trading when they see it.

Storage contract (:class:`AuditStore`) — three methods, kept small so a SQL store is easy:

* ``append(record)``: persist durably before returning; must refuse (raise
  :class:`AuditConflictError`) a record whose ``seq`` is not ``last().seq + 1`` or whose
  ``prev_hash`` is not ``last().hash``, e.g. with a unique constraint on ``seq`` inside a
  transaction. That is how concurrent writers are caught. Never update or delete rows.
* ``last()``: the record with the highest ``seq``, or ``None`` when empty. Read fresh (other
  processes may have appended) rather than from a cache.
* ``iter_records()``: every record in storage order (ascending ``seq`` for a SQL store:
  ``ORDER BY seq``). Store the fields exactly as given; ``payload`` is already plain JSON
  (dicts, lists, str, int, float, bool, None). A record that cannot be parsed raises
  :class:`AuditRecordUnreadableError` naming its seq.

Optional (:class:`AtomicAuditStore`): ``append_next(build)`` reads the head, calls
``build(head)`` and appends the result under ONE lock/transaction, so concurrent writers queue
instead of losing the race (a lost race used to be a false AUDIT_WRITE_FAILED halt). Every
store here implements it; :class:`AuditChain` falls back to ``last()`` + ``append()`` (with a
few retries on conflict) for stores that do not.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
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

RecordBuilder = Callable[[AuditRecord | None], AuditRecord]


class AuditConflictError(ValueError):
    """The record does not extend the stored chain (another writer appended first)."""


class AuditRecordUnreadableError(ValueError):
    """A stored record cannot be parsed; ``seq`` names it when the storage knows it."""

    def __init__(self, seq: int | None, message: str) -> None:
        super().__init__(message)
        self.seq = seq


@runtime_checkable
class AuditStore(Protocol):
    """Where records live. See the module docstring for the exact contract."""

    def append(self, record: AuditRecord) -> None: ...

    def last(self) -> AuditRecord | None: ...

    def iter_records(self) -> Iterator[AuditRecord]: ...


@runtime_checkable
class AtomicAuditStore(AuditStore, Protocol):
    """A store that reads the head and appends under one lock (no lost race between them)."""

    def append_next(self, build: RecordBuilder) -> AuditRecord: ...


def check_link(last: AuditRecord | None, record: AuditRecord) -> None:
    """Raise :class:`AuditConflictError` unless ``record`` is the successor of ``last``."""
    want_seq = 1 if last is None else last.seq + 1
    want_prev = GENESIS_HASH if last is None else last.hash
    if record.seq != want_seq or record.prev_hash != want_prev:
        raise AuditConflictError(
            f"record seq {record.seq} does not extend the stored chain (expected seq {want_seq}); "
            "another writer appended concurrently?"
        )


class InMemoryAuditStore:
    """A list in memory; ``records`` is public so tests can tamper with it."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self._lock = threading.RLock()

    def append(self, record: AuditRecord) -> None:
        with self._lock:
            check_link(self.last(), record)
            self.records.append(record)

    def append_next(self, build: RecordBuilder) -> AuditRecord:
        with self._lock:
            record = build(self.last())
            self.append(record)
            return record

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
        self._locked_append(lambda last: record)

    def append_next(self, build: RecordBuilder) -> AuditRecord:
        return self._locked_append(build)

    def _locked_append(self, build: RecordBuilder) -> AuditRecord:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = self._last_from_fd(fd)
            record = build(last)
            check_link(last, record)
            view = memoryview((record.to_json() + "\n").encode("utf-8"))
            while view:  # os.write may write less than asked
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        if created:  # make the new directory entry durable too
            _fsync_dir(self.path.parent)
        return record

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


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------------------------
# the anchor: the head published outside the ledger

ANCHOR_FORMAT = 1
_HEX = frozenset("0123456789abcdef")


class AuditAnchorError(AuditWriteError):
    """The anchor cannot be read or written, or belongs to another ledger: halt trading."""


def ledger_identifier(description: str) -> str:
    """A stable, secret-free id of a ledger from its description (the URL *without* password)."""
    return hashlib.sha256(description.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class AnchorHead:
    """A published chain head: the record at ``seq`` must carry ``hash`` for as long as the ledger lives."""

    seq: int
    hash: str
    ts: str  # the ts of that record
    ledger: str  # :func:`ledger_identifier` of the ledger the chain lives in

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ANCHOR_FORMAT,
            "ledger": self.ledger,
            "seq": self.seq,
            "hash": self.hash,
            "ts": self.ts,
        }

    def to_metadata(self) -> dict[str, Any]:
        """Flat values for run / materialization metadata."""
        return {
            "audit_head_seq": self.seq,
            "audit_head_hash": self.hash,
            "audit_head_ts": self.ts,
            "audit_ledger": self.ledger,
        }

    @classmethod
    def from_dict(cls, d: Any) -> AnchorHead:
        if not isinstance(d, dict) or set(d) != {"format", "ledger", "seq", "hash", "ts"}:
            raise ValueError(f"anchor fields differ from format {ANCHOR_FORMAT}: {d!r}"[:300])
        if d["format"] != ANCHOR_FORMAT:
            raise ValueError(f"unknown anchor format {d['format']!r}")
        seq, digest = d["seq"], d["hash"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError(f"anchor seq must be an int >= 1, got {seq!r}")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise ValueError(f"anchor hash must be 64 lowercase hex digits, got {digest!r}")
        if not isinstance(d["ts"], str) or not isinstance(d["ledger"], str) or not d["ledger"]:
            raise ValueError("anchor ts and ledger must be strings")
        return cls(seq=seq, hash=digest, ts=d["ts"], ledger=d["ledger"])


class AuditAnchor:
    """The last published head of one ledger's chain, in a JSON file outside that ledger.

    It only ever advances (a lower seq is ignored: another process is ahead), is replaced
    atomically (temp file + ``os.replace`` under an exclusive ``flock`` on ``<path>.lock``) and
    is owner-only (0600). A truncated or emptied log cannot lower it, so :func:`verify_store`
    sees the records that are missing.
    """

    def __init__(self, path: str | os.PathLike[str], ledger: str) -> None:
        if not ledger:
            raise ValueError("an anchor needs the identifier of its ledger")
        self.path = Path(path)
        self.ledger = ledger

    def read(self) -> AnchorHead | None:
        """The stored head, ``None`` when never published; unreadable → :class:`AuditAnchorError`."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditAnchorError(f"cannot read audit anchor {self.path}: {exc}") from exc
        try:
            return AnchorHead.from_dict(json.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuditAnchorError(f"audit anchor {self.path} is unreadable: {exc}") from exc

    def check_ledger(self, head: AnchorHead | None) -> None:
        if head is not None and head.ledger != self.ledger:
            raise AuditAnchorError(
                f"audit anchor {self.path} belongs to ledger {head.ledger}, not {self.ledger}"
            )

    def publish(self, seq: int, digest: str, ts: str) -> AnchorHead:
        """Advance the anchor to ``(seq, digest)``; return the head now stored (maybe newer)."""
        new = AnchorHead.from_dict(
            {"format": ANCHOR_FORMAT, "ledger": self.ledger, "seq": seq, "hash": digest, "ts": ts}
        )
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.read()
            self.check_ledger(current)
            if current is not None and current.seq > seq:
                return current  # a concurrent writer already published a later head
            if current is not None and current.seq == seq:
                if current.hash != digest:
                    raise AuditChainBrokenError(
                        f"audit anchor {self.path} holds another hash for seq {seq}: the chain was rewritten"
                    )
                return current
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, canonical_json(new.to_dict()) + b"\n")  # ~200 bytes: one write
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
            return new
        finally:
            os.close(lock_fd)


# --------------------------------------------------------------------------------------------
# the chain


class AuditChain:
    """Builds, hashes and appends records through an :class:`AuditStore`.

    With an ``anchor``, every append first checks that the stored chain still reaches the
    anchored head (a truncated or emptied log refuses further records: AUDIT_CHAIN_BROKEN), and
    afterwards publishes the new head.
    """

    def __init__(self, store: AuditStore, anchor: AuditAnchor | None = None) -> None:
        self.store = store
        self.anchor = anchor
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

        def build(last: AuditRecord | None) -> AuditRecord:
            # Runs with the store's lock held when the store supports append_next.
            if last is not None and last.compute_hash() != last.hash:
                raise AuditChainBrokenError(f"stored tail record seq {last.seq} does not match its hash")
            self._check_anchor(last)
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
            return AuditRecord(**{**body, "reason_codes": codes}, hash=compute_record_hash(body))

        with self._lock:
            record = self._append(build)
            if self.anchor is not None:
                try:
                    self.anchor.publish(record.seq, record.hash, record.ts)
                except AuditWriteError:
                    raise
                except Exception as exc:  # the record exists, but unanchored: still a halt
                    raise AuditWriteError(
                        f"cannot publish audit anchor after seq {record.seq}: {exc}"
                    ) from exc
            return record

    def _append(self, build: RecordBuilder) -> AuditRecord:
        if isinstance(self.store, AtomicAuditStore):
            try:
                return self.store.append_next(build)
            except AuditWriteError:
                raise
            except Exception as exc:  # any storage failure means "not recorded"
                raise AuditWriteError(f"cannot append audit record: {exc}") from exc
        # A store without append_next: read, then append; retry a lost race a few times.
        for attempt in range(5):
            try:
                last = self.store.last()
            except Exception as exc:
                raise AuditWriteError(f"cannot read audit tail: {exc}") from exc
            record = build(last)
            try:
                self.store.append(record)
                return record
            except AuditConflictError as exc:
                if attempt == 4:
                    raise AuditWriteError(f"cannot append audit record seq {record.seq}: {exc}") from exc
            except Exception as exc:  # the store failed: the record does not exist
                raise AuditWriteError(f"cannot append audit record seq {record.seq}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_anchor(self, last: AuditRecord | None) -> None:
        # Anchors are published after commit, so a legitimate anchor never exceeds the head
        # read under the store's lock: anything else means records were removed.
        if self.anchor is None:
            return
        head = self.anchor.read()
        self.anchor.check_ledger(head)
        if head is None:
            return
        last_seq = 0 if last is None else last.seq
        if last_seq < head.seq:
            raise AuditChainBrokenError(
                f"the audit log ends at seq {last_seq} but seq {head.seq} was anchored at {head.ts}: "
                f"seq {last_seq + 1} onwards deleted"
            )
        if last is not None and last.seq == head.seq and last.hash != head.hash:
            raise AuditChainBrokenError(f"stored tail seq {last.seq} differs from the anchored hash")

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest record (``(0, GENESIS_HASH)`` when empty): publish it to anchor the chain."""
        last = self.store.last()
        return (0, GENESIS_HASH) if last is None else (last.seq, last.hash)

    def publish_anchor(self) -> AnchorHead | None:
        """Publish the current head to the anchor (no-op without anchor or records); return the anchored head.

        For run / materialization metadata: ``chain.publish_anchor().to_metadata()``.
        """
        if self.anchor is None:
            return None
        last = self.store.last()
        if last is None:
            head = self.anchor.read()
            self.anchor.check_ledger(head)
            return head
        return self.anchor.publish(last.seq, last.hash, last.ts)

    def verify(self) -> VerifyResult:
        return verify_store(self.store, self.anchor)


# --------------------------------------------------------------------------------------------
# verification


class BreakKind(StrEnum):
    """What is wrong with the first broken record."""

    EDITED_CONTENT = "edited_content"  # content changed, hash field kept
    EDITED_HASH = "edited_hash"  # hash field changed, content kept
    EDITED = "edited"  # content does not match its hash; which of the two changed is unknown
    PREV_HASH_MISMATCH = "prev_hash_mismatch"
    DELETED = "deleted"  # a gap in seq
    REORDERED = "reordered"
    INSERTED = "inserted"
    UNREADABLE = "unreadable"  # e.g. bad JSON
    TRUNCATED = "truncated"  # the chain ends before the anchored seq
    ANCHOR_MISMATCH = "anchor_mismatch"  # the record at the anchored seq has another hash
    ANCHOR_INVALID = "anchor_invalid"  # the anchor is unreadable or belongs to another ledger


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    n_records: int  # records read (all of them, or up to an unreadable one)
    first_broken_seq: int | None  # the seq where verification first fails (None: anchor invalid)
    reason: str | None
    kind: BreakKind | None = None
    anchor: AnchorHead | None = None  # the anchor checked against, if any

    @property
    def reason_code(self) -> ReasonCode | None:
        return None if self.ok else ReasonCode.AUDIT_CHAIN_BROKEN

    def anchor_status(self) -> str:
        if self.anchor is None:
            return "no anchor published (a deleted tail cannot be detected)"
        return f"anchor seq {self.anchor.seq} ({self.anchor.ts}) {'matches' if self.ok else 'checked'}"

    def summary(self) -> str:
        """One line for operators: ``AUDIT_CHAIN_BROKEN at seq N: …`` or ``audit chain OK: …``."""
        if not self.ok:
            where = f" at seq {self.first_broken_seq}" if self.first_broken_seq is not None else ""
            return f"{ReasonCode.AUDIT_CHAIN_BROKEN}{where}: {self.reason} ({self.n_records} records read)"
        return f"audit chain OK: {self.n_records} records, {self.anchor_status()}"


@dataclass(frozen=True)
class _Unreadable:
    seq: int | None
    message: str


def _hash_as(rec: AuditRecord, seq: int) -> str:
    return compute_record_hash({**rec.body(), "seq": seq})


def _check(
    n: int, rec: AuditRecord, prev: AuditRecord | None, nxt: AuditRecord | None, anchor: AnchorHead | None
) -> tuple[int, BreakKind, str] | None:
    """The break at position ``n`` (records 1..n-1 verified), or ``None``; ``nxt`` is a lookahead."""
    if rec.seq != n:
        if rec.seq > n:
            if nxt is not None and nxt.seq == n:
                return (
                    n,
                    BreakKind.REORDERED,
                    f"expected seq {n}, found seq {rec.seq} with seq {n} after it (reordered)",
                )
            missing = f"seq {n}" if rec.seq == n + 1 else f"seqs {n}..{rec.seq - 1}"
            return (
                n,
                BreakKind.DELETED,
                f"{missing} missing: expected seq {n}, found seq {rec.seq} (gap: deleted)",
            )
        if prev is not None and rec.seq == prev.seq:
            what = "a copy of" if rec.hash == prev.hash else "a second record with"
            return (
                n,
                BreakKind.INSERTED,
                f"expected seq {n}, found {what} seq {rec.seq} (duplicated / inserted)",
            )
        return n, BreakKind.REORDERED, f"expected seq {n}, found seq {rec.seq} (reordered)"
    want_prev = GENESIS_HASH if prev is None else prev.hash
    if rec.prev_hash != want_prev:
        if nxt is not None and rec.prev_hash == nxt.hash and nxt.prev_hash == want_prev:
            return (
                n,
                BreakKind.REORDERED,
                f"seq {n} and seq {n + 1} swapped (seq {n} links to the record after it)",
            )
        if prev is not None and rec.prev_hash == prev.prev_hash and _hash_as(rec, n - 1) == rec.hash:
            return (
                n - 1,
                BreakKind.INSERTED,
                f"seq {n - 1} was inserted: the original seq {n - 1} was renumbered to seq {n}",
            )
        if _hash_as(rec, n + 1) == rec.hash:
            return n, BreakKind.DELETED, f"seq {n} deleted and the records after it renumbered"
        target = "the genesis hash" if prev is None else f"the hash of seq {n - 1}"
        if rec.compute_hash() == rec.hash:
            why = f"seq {n - 1} rewritten with a recomputed hash, or this link rewritten"
        else:
            why = "edited: the record does not match its own hash either"
        return n, BreakKind.PREV_HASH_MISMATCH, f"prev_hash does not match {target} ({why})"
    actual = rec.compute_hash()
    if actual != rec.hash:
        # What the chain says this record's hash was: the next record's link, or the anchor.
        ref = (
            nxt.prev_hash
            if nxt is not None
            else (anchor.hash if anchor is not None and anchor.seq == n else None)
        )
        if ref is not None and ref == actual:
            return (
                n,
                BreakKind.EDITED_HASH,
                "hash field edited (the content matches the hash the chain links to)",
            )
        if ref is not None and ref == rec.hash:
            return n, BreakKind.EDITED_CONTENT, "content does not match its hash (content edited)"
        return n, BreakKind.EDITED, "content does not match its hash (content and hash edited)"
    if anchor is not None and anchor.seq == n and rec.hash != anchor.hash:
        return (
            n,
            BreakKind.ANCHOR_MISMATCH,
            f"hash differs from the one anchored at {anchor.ts} (chain rewritten)",
        )
    return None


def _verify(items: Iterable[AuditRecord | _Unreadable], anchor: AnchorHead | None) -> VerifyResult:
    n = 0
    prev: AuditRecord | None = None
    broken: tuple[int, BreakKind, str] | None = None
    it = iter(items)
    cur = next(it, None)
    while isinstance(cur, AuditRecord):
        nxt = next(it, None)
        n += 1
        if broken is None:
            broken = _check(n, cur, prev, nxt if isinstance(nxt, AuditRecord) else None, anchor)
        prev, cur = cur, nxt
    if isinstance(cur, _Unreadable) and broken is None:
        broken = (n + 1 if cur.seq is None else cur.seq, BreakKind.UNREADABLE, cur.message)
    if broken is None and anchor is not None and n < anchor.seq:
        what = "the audit log is empty" if n == 0 else f"the chain ends at seq {n}"
        broken = (
            n + 1,
            BreakKind.TRUNCATED,
            f"record missing: {what} but seq {anchor.seq} was anchored at {anchor.ts} (tail deleted)",
        )
    if broken is None:
        return VerifyResult(True, n, None, None, None, anchor)
    return VerifyResult(False, n, broken[0], broken[2], broken[1], anchor)


def verify_chain(records: Iterable[AuditRecord], anchor: AnchorHead | None = None) -> VerifyResult:
    """Walk all records in order and name the first record that does not verify, and how.

    Record *i* (1-based position) must have ``seq == i``, ``prev_hash`` equal to the hash of
    record *i-1* (64 zeros for *i = 1*), and a ``hash`` that matches its own content. So:

    * payload (or any field) edited → that seq, ``EDITED_CONTENT``; the hash field edited →
      that seq, ``EDITED_HASH`` (told apart by the next record's link, or the anchor);
    * a record edited *and* its hash recomputed → the next seq, ``PREV_HASH_MISMATCH``;
    * a record deleted → the missing seq, ``DELETED``;
    * records swapped → the first position holding the wrong record, ``REORDERED``;
    * a record inserted (tail renumbered) → the inserted seq, ``INSERTED``;
    * with an anchor at seq N: a chain ending at M < N → seq M+1, ``TRUNCATED``; the record at
      N with another hash → N, ``ANCHOR_MISMATCH``.

    ``n_records`` counts every record given, also those after the break.
    """
    return _verify(records, anchor)


def _read(store: AuditStore) -> Iterator[AuditRecord | _Unreadable]:
    try:
        yield from store.iter_records()
    except Exception as exc:  # unreadable storage is a broken chain, not a crash; reading stops
        yield _Unreadable(getattr(exc, "seq", None), str(exc))


def verify_store(store: AuditStore, anchor: AuditAnchor | AnchorHead | None = None) -> VerifyResult:
    """:func:`verify_chain` over a store, checked against ``anchor`` (the file, or a head).

    An unreadable record is a break at its seq (as named by the store, else its position),
    unless an earlier break was found. An unreadable anchor, or one of another ledger, makes
    the result not OK (``ANCHOR_INVALID``) when the chain itself verifies.
    """
    head: AnchorHead | None = None
    anchor_error: str | None = None
    if isinstance(anchor, AuditAnchor):
        try:
            head = anchor.read()
            anchor.check_ledger(head)
        except AuditAnchorError as exc:
            head, anchor_error = None, str(exc).removeprefix(f"{AuditAnchorError.reason}: ")
    else:
        head = anchor
    result = _verify(_read(store), head)
    if anchor_error is not None and result.ok:
        return VerifyResult(False, result.n_records, None, anchor_error, BreakKind.ANCHOR_INVALID, None)
    return result
