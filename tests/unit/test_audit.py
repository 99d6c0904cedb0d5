"""Hash-chained audit log (§J3): building, verification, tampering, storage failures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ais_pipelines.core.approvals import canonical_json
from ais_pipelines.core.audit import (
    GENESIS_HASH,
    AuditChain,
    AuditChainBrokenError,
    AuditRecord,
    AuditStore,
    AuditWriteError,
    BreakKind,
    InMemoryAuditStore,
    JsonlAuditStore,
    verify_chain,
    verify_store,
)
from ais_pipelines.core.reason_codes import ReasonCode

T0 = datetime(2025, 3, 4, 15, 30, tzinfo=UTC)


def fill(chain: AuditChain, n: int = 6) -> list[AuditRecord]:
    out = []
    for i in range(n):
        out.append(
            chain.append(
                event_type="policy_decision",
                actor="policy_gate",
                subject=f"ord-{i + 1}",
                payload={"decision": "APPROVE" if i % 2 else "REJECT", "qty": 10 * (i + 1), "i": i},
                reason_codes=[ReasonCode.APPROVED]
                if i % 2
                else [ReasonCode.STALE_QUOTE, ReasonCode.MARKET_CLOSED],
                now=T0 + timedelta(seconds=i),
            )
        )
    return out


@pytest.fixture
def mem() -> tuple[AuditChain, InMemoryAuditStore]:
    store = InMemoryAuditStore()
    chain = AuditChain(store)
    fill(chain)
    return chain, store


def rehash(rec: AuditRecord, **changes) -> AuditRecord:
    new = dataclasses.replace(rec, **changes)
    return dataclasses.replace(new, hash=new.compute_hash())


# --------------------------------------------------------------------------------------------
# building


def test_chain_links_and_hashes(mem) -> None:
    chain, store = mem
    recs = store.records
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[0].prev_hash == GENESIS_HASH == "0" * 64
    for prev, rec in zip(recs, recs[1:], strict=False):
        assert rec.prev_hash == prev.hash
    for rec in recs:
        body = {k: v for k, v in rec.to_dict().items() if k != "hash"}
        assert rec.hash == hashlib.sha256(canonical_json(body, allow_nonfinite=True)).hexdigest()
    assert recs[0].ts == "2025-03-04T15:30:00.000000Z"
    assert recs[0].reason_codes == ("MARKET_CLOSED", "STALE_QUOTE")  # sorted, unique
    assert chain.head() == (6, recs[-1].hash)
    assert verify_chain(recs) == verify_store(store)
    result = chain.verify()
    assert (result.ok, result.n_records, result.first_broken_seq, result.reason) == (True, 6, None, None)
    assert result.reason_code is None


def test_empty_chain_verifies() -> None:
    chain = AuditChain(InMemoryAuditStore())
    assert chain.head() == (0, GENESIS_HASH)
    r = chain.verify()
    assert (r.ok, r.n_records, r.first_broken_seq) == (True, 0, None)


def test_payload_is_stored_as_hashed() -> None:
    store = InMemoryAuditStore()
    rec = AuditChain(store).append(
        "order",
        "oms",
        "ord-1",
        {"ts": T0, "levels": (1, 2.0), "price": float("nan"), "side": ReasonCode.APPROVED},
        [],
        T0,
    )
    assert rec.payload == {
        "ts": "2025-03-04T15:30:00.000000Z",
        "levels": [1, 2],
        "price": "NaN",
        "side": "APPROVED",
    }
    assert rec.reason_codes == ()
    assert verify_chain(store.records).ok


# --------------------------------------------------------------------------------------------
# tampering is located exactly


def test_payload_edit_detected_at_that_seq(mem) -> None:
    _, store = mem
    store.records[2] = dataclasses.replace(
        store.records[2], payload={"decision": "APPROVE", "qty": 30, "i": 2}
    )
    r = verify_chain(store.records)
    assert (r.ok, r.n_records, r.first_broken_seq, r.kind) == (False, 6, 3, BreakKind.EDITED_CONTENT)
    assert "content does not match its hash" in r.reason
    assert r.reason_code is ReasonCode.AUDIT_CHAIN_BROKEN


@pytest.mark.parametrize("field", ["ts", "event_type", "actor", "subject", "reason_codes"])
def test_any_field_edit_detected(mem, field) -> None:
    _, store = mem
    value = ("HUMAN_APPROVED",) if field == "reason_codes" else "tampered"
    store.records[3] = dataclasses.replace(store.records[3], **{field: value})
    assert verify_chain(store.records).first_broken_seq == 4


def test_hash_edit_detected_at_that_seq(mem) -> None:
    _, store = mem
    store.records[3] = dataclasses.replace(store.records[3], hash="f" * 64)
    r = verify_chain(store.records)
    assert (r.ok, r.first_broken_seq, r.kind) == (False, 4, BreakKind.EDITED_HASH)


def test_edit_with_recomputed_hash_detected_at_next_seq(mem) -> None:
    _, store = mem
    store.records[1] = rehash(store.records[1], payload={"decision": "APPROVE", "qty": 999_999, "i": 1})
    r = verify_chain(store.records)
    assert (r.ok, r.first_broken_seq, r.kind) == (False, 3, BreakKind.PREV_HASH_MISMATCH)
    assert "prev_hash does not match the hash of seq 2" in r.reason


def test_prev_hash_edit_detected(mem) -> None:
    _, store = mem
    store.records[4] = dataclasses.replace(store.records[4], prev_hash="a" * 64)
    assert verify_chain(store.records).first_broken_seq == 5


def test_deletion_detected_as_seq_gap(mem) -> None:
    _, store = mem
    del store.records[2]
    r = verify_chain(store.records)
    assert (r.ok, r.first_broken_seq, r.kind) == (False, 3, BreakKind.DELETED)
    assert "expected seq 3, found seq 4" in r.reason and "gap" in r.reason


def test_deleting_the_first_record_detected(mem) -> None:
    _, store = mem
    del store.records[0]
    assert verify_chain(store.records).first_broken_seq == 1


def test_reorder_detected(mem) -> None:
    _, store = mem
    store.records[2], store.records[3] = store.records[3], store.records[2]
    r = verify_chain(store.records)
    assert (r.ok, r.first_broken_seq, r.kind) == (False, 3, BreakKind.REORDERED)
    assert "expected seq 3, found seq 4" in r.reason


def test_duplicated_record_detected(mem) -> None:
    _, store = mem
    store.records.insert(3, store.records[2])
    r = verify_chain(store.records)
    assert (r.ok, r.first_broken_seq) == (False, 4)
    assert r.kind is BreakKind.INSERTED and "found a copy of seq 3" in r.reason


def test_forged_insertion_detected_after_the_forgery(mem) -> None:
    # A forger who links the new record correctly to seq 2 and numbers it 3: the original
    # seq 3 now sits at position 4, a second seq 3 (a list store cannot tell which is forged).
    _, store = mem
    forged = rehash(store.records[2], payload={"decision": "APPROVE", "qty": 1, "i": "forged"})
    store.records.insert(2, forged)
    r = verify_chain(store.records)
    assert (r.ok, r.first_broken_seq, r.kind) == (False, 4, BreakKind.INSERTED)


def test_forged_insertion_with_renumbering_detected(mem) -> None:
    _, store = mem
    forged = rehash(store.records[2], payload={"forged": True})
    tail = [dataclasses.replace(rec, seq=rec.seq + 1) for rec in store.records[2:]]
    store.records[2:] = [forged, *tail]
    r = verify_chain(store.records)
    # the renumbered original seq 3 (now 4) still hashes as seq 3: the forgery is named
    assert (r.ok, r.first_broken_seq, r.kind) == (False, 3, BreakKind.INSERTED)
    assert r.reason == "seq 3 was inserted: the original seq 3 was renumbered to seq 4"


def test_truncation_needs_the_published_head(mem) -> None:
    chain, store = mem
    head = chain.head()
    del store.records[-2:]
    assert verify_chain(store.records).ok  # a shorter valid chain ...
    assert chain.head() != head  # ... is caught by comparing with the anchored head


def test_chain_refuses_to_extend_a_broken_tail(mem) -> None:
    chain, store = mem
    store.records[-1] = dataclasses.replace(store.records[-1], payload={"edited": True})
    with pytest.raises(AuditChainBrokenError) as exc:
        chain.append("x", "y", "z", {}, [], T0)
    assert exc.value.reason is ReasonCode.AUDIT_CHAIN_BROKEN
    assert isinstance(exc.value, AuditWriteError)
    assert len(store.records) == 6


# --------------------------------------------------------------------------------------------
# write failures


class FailingStore(InMemoryAuditStore):
    def __init__(self, fail_append: bool = True, fail_last: bool = False) -> None:
        super().__init__()
        self.fail_append = fail_append
        self.fail_last = fail_last

    def append(self, record: AuditRecord) -> None:
        if self.fail_append:
            raise OSError("disk full")
        super().append(record)

    def last(self) -> AuditRecord | None:
        if self.fail_last:
            raise ConnectionError("database gone")
        return super().last()

    def iter_records(self) -> Iterator[AuditRecord]:
        return super().iter_records()


def test_store_append_failure_raises_audit_write_error() -> None:
    store = FailingStore()
    with pytest.raises(AuditWriteError, match="disk full") as exc:
        AuditChain(store).append("order", "oms", "ord-1", {}, [], T0)
    assert exc.value.reason is ReasonCode.AUDIT_WRITE_FAILED
    assert str(exc.value).startswith("AUDIT_WRITE_FAILED: ")
    assert store.records == []


def test_store_read_failure_raises_audit_write_error() -> None:
    with pytest.raises(AuditWriteError, match="database gone"):
        AuditChain(FailingStore(fail_append=False, fail_last=True)).append(
            "order", "oms", "ord-1", {}, [], T0
        )


@pytest.mark.parametrize(
    ("payload", "codes", "now", "match"),
    [
        ({"x": object()}, [], T0, "cannot render"),
        ({1: "int key"}, [], T0, "keys must be str"),
        ({}, ["NOT_A_CODE"], T0, "NOT_A_CODE"),
        ({}, [], datetime(2025, 3, 4, 15, 30), "naive"),
    ],
)
def test_unrecordable_input_raises_audit_write_error(payload, codes, now, match) -> None:
    store = InMemoryAuditStore()
    with pytest.raises(AuditWriteError, match=match):
        AuditChain(store).append("order", "oms", "ord-1", payload, codes, now)
    assert store.records == []


def test_concurrent_writer_detected_by_store() -> None:
    store = InMemoryAuditStore()
    a, b = AuditChain(store), AuditChain(store)
    a.append("e", "a", "s", {}, [], T0)
    stale = rehash(store.records[0], seq=1, payload={"late": True})  # b built on an old tail
    with pytest.raises(ValueError, match="does not extend"):
        store.append(stale)
    b.append("e", "b", "s", {}, [], T0)  # b reading the fresh tail succeeds
    assert [r.seq for r in store.records] == [1, 2] and verify_chain(store.records).ok


def test_stores_satisfy_the_protocol(tmp_path) -> None:
    assert isinstance(InMemoryAuditStore(), AuditStore)
    assert isinstance(JsonlAuditStore(tmp_path / "a.jsonl"), AuditStore)


# --------------------------------------------------------------------------------------------
# JSONL store


def test_jsonl_roundtrip_and_shared_file(tmp_path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    fill(AuditChain(JsonlAuditStore(path)), 3)
    # A second process (another chain/store object) continues the same file.
    fill(AuditChain(JsonlAuditStore(path)), 2)
    store = JsonlAuditStore(path)
    recs = list(store.iter_records())
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert verify_store(store).ok
    assert store.last() == recs[-1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["prev_hash"] == GENESIS_HASH
    assert lines[0] == canonical_json(recs[0].to_dict(), allow_nonfinite=True).decode()


def test_jsonl_last_reads_long_records(tmp_path) -> None:
    store = JsonlAuditStore(tmp_path / "a.jsonl")
    chain = AuditChain(store)
    chain.append("e", "a", "s", {"blob": "x" * 20_000}, [], T0)
    chain.append("e", "a", "s", {"blob": "y" * 50_000}, [], T0)
    assert store.last().payload["blob"] == "y" * 50_000
    assert verify_store(store).ok


def test_jsonl_tampering_detected(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    store = JsonlAuditStore(path)
    fill(AuditChain(store), 5)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"qty":40', '"qty":41')
    path.write_text("".join(lines))
    r = verify_store(store)
    assert (r.ok, r.n_records, r.first_broken_seq) == (False, 5, 4)


def test_jsonl_deleted_line_detected(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    fill(AuditChain(JsonlAuditStore(path)), 5)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]))
    assert verify_store(JsonlAuditStore(path)).first_broken_seq == 2


def test_jsonl_torn_or_garbage_line(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    store = JsonlAuditStore(path)
    chain = AuditChain(store)
    fill(chain, 3)
    with path.open("ab") as fh:
        fh.write(b'{"seq":4,"ts":')  # crash mid-write
    r = verify_store(store)
    assert (r.ok, r.n_records, r.first_broken_seq) == (False, 3, 4)
    assert "torn" in r.reason
    with pytest.raises(AuditWriteError, match="torn"):
        chain.append("e", "a", "s", {}, [], T0)

    path.write_text(path.read_text().rsplit("\n", 1)[0] + "\nnot json\n")
    r = verify_store(store)
    assert (r.ok, r.first_broken_seq) == (False, 4) and "malformed" in r.reason


def test_jsonl_earlier_break_wins_over_later_unreadable_line(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    store = JsonlAuditStore(path)
    fill(AuditChain(store), 4)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"qty":20', '"qty":21')
    path.write_text("".join(lines) + "garbage\n")
    r = verify_store(store)
    assert (r.ok, r.first_broken_seq, r.n_records) == (False, 2, 4)
    assert "content does not match" in r.reason


def test_jsonl_os_failure_raises_audit_write_error(tmp_path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(AuditWriteError) as exc:
        AuditChain(JsonlAuditStore(blocker / "audit.jsonl")).append("e", "a", "s", {}, [], T0)
    assert exc.value.reason is ReasonCode.AUDIT_WRITE_FAILED


def test_jsonl_fsyncs_each_append(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    chain = AuditChain(JsonlAuditStore(tmp_path / "a.jsonl"))
    chain.append("e", "a", "s", {}, [], T0)  # file + directory on creation
    n_first = len(calls)
    chain.append("e", "a", "s", {}, [], T0)
    assert n_first == 2 and len(calls) == 3


def test_record_from_dict_is_strict() -> None:
    rec = fill(AuditChain(InMemoryAuditStore()), 1)[0]
    d = rec.to_dict()
    assert AuditRecord.from_dict(d) == rec
    with pytest.raises(ValueError, match="unexpected"):
        AuditRecord.from_dict({**d, "extra": 1})
    with pytest.raises(ValueError, match="missing"):
        AuditRecord.from_dict({k: v for k, v in d.items() if k != "prev_hash"})
    with pytest.raises(ValueError, match="seq"):
        AuditRecord.from_dict({**d, "seq": "1"})


def test_absent_jsonl_file_is_an_empty_chain(tmp_path: Path) -> None:
    store = JsonlAuditStore(tmp_path / "none.jsonl")
    assert store.last() is None and list(store.iter_records()) == [] and verify_store(store).ok
