"""Issue 10 §4: every kind of tampering with a real SQLite audit log is named at its exact seq.

Twenty records are appended through an anchored :class:`AuditChain`, then the table is
tampered with in raw SQL the way someone with database access would, and
:func:`verify_store` (what ``ais audit verify`` runs) must name the seq and the kind of break.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from ais_pipelines.core.audit import (
    AuditAnchor,
    AuditChain,
    AuditChainBrokenError,
    BreakKind,
    compute_record_hash,
    verify_store,
)
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger import LedgerStore, SqlAuditStore

T0 = datetime(2025, 3, 4, 15, 30, tzinfo=UTC)
N = 20


class Log:
    def __init__(self, tmp: Path) -> None:
        self.ledger = LedgerStore.open(f"sqlite:///{tmp}/ledger.sqlite")
        self.engine: Engine = self.ledger.engine
        self.store = SqlAuditStore(self.engine)
        self.anchor = AuditAnchor(tmp / "audit_anchor.json", self.store.ledger_id)
        self.chain = AuditChain(self.store, anchor=self.anchor)

    def sql(self, *statements: str, **params: object) -> None:
        with self.engine.begin() as conn:
            for stmt in statements:
                conn.execute(text(stmt), params)

    def row(self, seq: int) -> dict:
        with self.engine.begin() as conn:
            r = conn.execute(text("SELECT * FROM audit_log WHERE seq = :s"), {"s": seq}).mappings().one()
        return dict(r)


@pytest.fixture
def log(tmp_path: Path):
    lg = Log(tmp_path)
    for i in range(N):
        lg.chain.append(
            "order.intent" if i % 2 else "policy_decision",
            "oms",
            f"order:cid-{i + 1}",
            {"i": i, "qty": 10 * (i + 1), "symbol": "AAPL"},
            [ReasonCode.APPROVED],
            T0 + timedelta(seconds=i),
        )
    yield lg
    lg.ledger.dispose()


def test_untampered_log_verifies_against_its_anchor(log: Log, tmp_path: Path) -> None:
    r = verify_store(log.store, log.anchor)
    assert (r.ok, r.n_records, r.first_broken_seq, r.kind) == (True, N, None, None)
    head = log.anchor.read()
    last = log.store.last()
    assert (head.seq, head.hash, head.ts, head.ledger) == (N, last.hash, last.ts, log.store.ledger_id)
    assert (
        r.anchor == head and r.summary() == f"audit chain OK: {N} records, anchor seq {N} ({last.ts}) matches"
    )
    path = tmp_path / "audit_anchor.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "format": 1,
        "ledger": log.store.ledger_id,
        "seq": N,
        "hash": last.hash,
        "ts": last.ts,
    }
    # The ledger id is a digest: no path, no password in the file.
    assert str(tmp_path) not in path.read_text()


def test_the_anchor_never_moves_back(log: Log) -> None:
    first = log.store.last()
    head = log.anchor.publish(3, "ab" * 32, T0.isoformat())  # a slower process publishing later
    assert (head.seq, head.hash) == (N, first.hash)
    assert log.anchor.read() == head
    with pytest.raises(AuditChainBrokenError, match="another hash for seq 20"):
        log.anchor.publish(N, "cd" * 32, T0.isoformat())
    assert log.anchor.read() == head


def _rehash(row: dict, **changes: object) -> dict:
    body = {
        "seq": row["seq"],
        "ts": row["ts"],
        "event_type": row["event_type"],
        "actor": row["actor"],
        "subject": row["subject"],
        "payload": json.loads(row["payload"]),
        "reason_codes": json.loads(row["reason_codes"]),
        "prev_hash": row["prev_hash"],
        **changes,
    }
    return {**body, "hash": compute_record_hash(body)}


def _insert(log: Log, rec: dict) -> None:
    log.sql(
        "INSERT INTO audit_log (seq, ts, event_type, actor, subject, payload, reason_codes, prev_hash, hash) "
        "VALUES (:seq, :ts, :event_type, :actor, :subject, :payload, :reason_codes, :prev_hash, :hash)",
        **{**rec, "payload": json.dumps(rec["payload"]), "reason_codes": json.dumps(rec["reason_codes"])},
    )


def edit_payload(log: Log) -> None:
    log.sql("UPDATE audit_log SET payload = :p WHERE seq = 7", p='{"i": 6, "qty": 7000, "symbol": "AAPL"}')


def edit_hash(log: Log) -> None:
    log.sql("UPDATE audit_log SET hash = :h WHERE seq = 7", h="f" * 64)


def edit_and_rehash(log: Log) -> None:
    forged = _rehash(log.row(5), payload={"i": 4, "qty": 5000, "symbol": "AAPL"})
    log.sql("DELETE FROM audit_log WHERE seq = 5")
    _insert(log, forged)


def edit_prev_hash(log: Log) -> None:
    log.sql("UPDATE audit_log SET prev_hash = :h WHERE seq = 11", h="a" * 64)


def delete_middle(log: Log) -> None:
    log.sql("DELETE FROM audit_log WHERE seq = 9")


def delete_middle_and_renumber(log: Log) -> None:
    log.sql(
        "DELETE FROM audit_log WHERE seq = 9",
        "UPDATE audit_log SET seq = -(seq - 1) WHERE seq > 9",
        "UPDATE audit_log SET seq = -seq WHERE seq < 0",
    )


def delete_tail(log: Log) -> None:
    log.sql("DELETE FROM audit_log WHERE seq >= 18")


def delete_all(log: Log) -> None:
    log.sql("DELETE FROM audit_log")


def reorder(log: Log) -> None:
    log.sql(
        "UPDATE audit_log SET seq = -12 WHERE seq = 12",
        "UPDATE audit_log SET seq = 12 WHERE seq = 13",
        "UPDATE audit_log SET seq = 13 WHERE seq = -12",
    )


def insert_forged(log: Log) -> None:
    # A forger who links a new record to seq 7 with a valid hash and shifts the rest up by one.
    forged = _rehash(log.row(8), payload={"i": "forged", "qty": 1, "symbol": "AAPL"}, actor="mallory")
    log.sql(
        "UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= 8",
        "UPDATE audit_log SET seq = -seq WHERE seq < 0",
    )
    _insert(log, forged)


def bad_json(log: Log) -> None:
    log.sql("UPDATE audit_log SET payload = :p WHERE seq = 10", p='{"i": 9, "qty": ')


def rewrite_tail(log: Log) -> None:
    # Delete the last 5 and append 6 fresh, perfectly chained records (no anchor: the forger's).
    log.sql("DELETE FROM audit_log WHERE seq > 15")
    forger = AuditChain(SqlAuditStore(log.engine))
    for i in range(6):
        forger.append("order.intent", "oms", f"order:forged-{i}", {"i": i}, [], T0 + timedelta(hours=1))


CASES: list[tuple[Callable[[Log], None], int, BreakKind, str]] = [
    (edit_payload, 7, BreakKind.EDITED_CONTENT, "content does not match its hash (content edited)"),
    (
        edit_hash,
        7,
        BreakKind.EDITED_HASH,
        "hash field edited (the content matches the hash the chain links to)",
    ),
    (
        edit_and_rehash,
        6,
        BreakKind.PREV_HASH_MISMATCH,
        "prev_hash does not match the hash of seq 5 (seq 5 rewritten with a recomputed hash, or this link rewritten)",
    ),
    (
        edit_prev_hash,
        11,
        BreakKind.PREV_HASH_MISMATCH,
        "prev_hash does not match the hash of seq 10 (edited: the record does not match its own hash either)",
    ),
    (delete_middle, 9, BreakKind.DELETED, "seq 9 missing: expected seq 9, found seq 10 (gap: deleted)"),
    (delete_middle_and_renumber, 9, BreakKind.DELETED, "seq 9 deleted and the records after it renumbered"),
    (
        delete_tail,
        18,
        BreakKind.TRUNCATED,
        "record missing: the chain ends at seq 17 but seq 20 was anchored at",
    ),
    (delete_all, 1, BreakKind.TRUNCATED, "record missing: the audit log is empty but seq 20 was anchored at"),
    (reorder, 12, BreakKind.REORDERED, "seq 12 and seq 13 swapped (seq 12 links to the record after it)"),
    (insert_forged, 8, BreakKind.INSERTED, "seq 8 was inserted: the original seq 8 was renumbered to seq 9"),
    (
        bad_json,
        10,
        BreakKind.UNREADABLE,
        "payload is not valid JSON (Expecting value: line 1 column 17 (char 16))",
    ),
    (rewrite_tail, 20, BreakKind.ANCHOR_MISMATCH, "hash differs from the one anchored at"),
]


@pytest.mark.parametrize(("tamper", "seq", "kind", "reason"), CASES, ids=[c[0].__name__ for c in CASES])
def test_tampering_is_named_at_its_exact_seq(
    log: Log, tamper, seq: int, kind: BreakKind, reason: str
) -> None:
    tamper(log)
    r = verify_store(log.store, log.anchor)
    assert (r.ok, r.first_broken_seq, r.kind) == (False, seq, kind), r
    assert r.reason.startswith(reason), r.reason
    assert r.reason_code is ReasonCode.AUDIT_CHAIN_BROKEN
    assert r.summary().startswith(f"AUDIT_CHAIN_BROKEN at seq {seq}: {reason}")


@pytest.mark.parametrize("tamper", [delete_tail, delete_all], ids=["delete_tail", "delete_all"])
def test_a_deleted_tail_is_invisible_without_the_anchor_and_stops_appends_with_it(log: Log, tamper) -> None:
    tamper(log)
    assert verify_store(log.store).ok  # what the chain alone sees: a shorter valid chain
    with pytest.raises(AuditChainBrokenError, match="seq 20 was anchored") as exc:
        log.chain.append("order.intent", "oms", "order:x", {}, [], T0 + timedelta(hours=1))
    assert exc.value.reason is ReasonCode.AUDIT_CHAIN_BROKEN
    assert log.anchor.read().seq == N  # refused before writing: nothing to hide the gap with


def test_bad_json_in_the_tail_stops_appends_naming_the_seq(log: Log) -> None:
    log.sql("UPDATE audit_log SET reason_codes = 'APPROVED' WHERE seq = 20")
    with pytest.raises(Exception, match="reason_codes is not valid JSON") as exc:
        log.chain.append("order.intent", "oms", "order:x", {}, [], T0 + timedelta(hours=1))
    assert exc.value.reason is ReasonCode.AUDIT_WRITE_FAILED
    r = verify_store(log.store, log.anchor)
    assert (r.first_broken_seq, r.kind, r.n_records) == (20, BreakKind.UNREADABLE, 19)


def test_an_anchor_of_another_ledger_is_refused(log: Log, tmp_path: Path) -> None:
    other = AuditAnchor(tmp_path / "audit_anchor.json", "0123456789abcdef")
    r = verify_store(log.store, other)
    assert (r.ok, r.first_broken_seq, r.kind) == (False, None, BreakKind.ANCHOR_INVALID)
    assert (
        r.reason == f"audit anchor {tmp_path / 'audit_anchor.json'} belongs to ledger {log.store.ledger_id}, "
        "not 0123456789abcdef"
    )
    (tmp_path / "audit_anchor.json").write_text("{not json")
    r = verify_store(log.store, log.anchor)
    assert (r.ok, r.kind) == (False, BreakKind.ANCHOR_INVALID) and "unreadable" in r.reason
