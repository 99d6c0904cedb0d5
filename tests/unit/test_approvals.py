"""HMAC approvals (§I1): canonical JSON, signing, verification, key loading."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.approvals import (
    ApprovalError,
    SignedApproval,
    SigningKeyMissingError,
    canonical_json,
    generate_dev_key_file,
    load_signing_key,
    make_approval_id,
    sign_approval,
    verify_approval,
)
from ais_pipelines.core.reason_codes import ReasonCode

NOW = datetime(2025, 3, 4, 15, 30, tzinfo=UTC)
EXPIRES = NOW + timedelta(seconds=120)
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

ORDER = {
    "order_id": "ord-1",
    "client_order_id": "c-1",
    "strategy_id": "trend_1",
    "symbol": "SPY",
    "side": "BUY",
    "qty": 10,
    "limit_price": 512.25,
    "order_type": "LIMIT",
    "time_in_force": "DAY",
    "session": "2025-03-04",
    "proposal_run_id": "run-9",
    "reduce_only": False,
}


def never_used(_: str) -> bool:
    return False


def signed(order: dict | None = None) -> SignedApproval:
    return sign_approval(order or ORDER, "apr-1", EXPIRES, KEY)


# --------------------------------------------------------------------------------------------
# canonical JSON


class Side(StrEnum):
    BUY = "BUY"


def test_canonical_json_format() -> None:
    obj = {"b": 1, "a": [1.5, 2.0, True, None], "é": "ünï", "c": {"z": 0.1, "y": -3}}
    assert canonical_json(obj) == '{"a":[1.5,2,true,null],"b":1,"c":{"y":-3,"z":0.1},"é":"ünï"}'.encode()


def test_canonical_json_numbers_are_deterministic() -> None:
    assert canonical_json(100.0) == canonical_json(100) == b"100"
    assert canonical_json(0.1) == b"0.1"
    assert canonical_json(1e-05) == b"1e-05"
    assert canonical_json(2.0**60) == b"1.152921504606847e+18"  # too big for an exact int rendering
    assert canonical_json(Decimal("0.1")) == b"0.1"
    assert canonical_json(np.float64(0.25)) == b"0.25"
    assert canonical_json(np.int64(7)) == b"7"
    assert canonical_json(np.bool_(True)) == b"true"
    assert canonical_json(Side.BUY) == b'"BUY"'
    assert canonical_json({3, 1, 2}) == b"[1,2,3]"


def test_canonical_json_datetimes_are_utc() -> None:
    cet = timezone(timedelta(hours=1))
    assert canonical_json(datetime(2025, 3, 4, 16, 30, tzinfo=cet)) == b'"2025-03-04T15:30:00.000000Z"'
    assert canonical_json(pd.Timestamp("2025-03-04 15:30:00.5", tz="UTC")) == b'"2025-03-04T15:30:00.500000Z"'
    assert canonical_json(date(2025, 3, 4)) == b'"2025-03-04"'
    assert canonical_json(pd.NaT) == b"null"
    with pytest.raises(ValueError, match="naive"):
        canonical_json(datetime(2025, 3, 4, 15, 30))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: "int key"}, object()])
def test_canonical_json_refuses_what_has_no_canonical_form(bad) -> None:
    with pytest.raises((ValueError, TypeError)):
        canonical_json(bad)


def test_canonical_json_nonfinite_opt_in() -> None:
    assert canonical_json([float("nan"), float("inf"), -float("inf")], allow_nonfinite=True) == (
        b'["NaN","Infinity","-Infinity"]'
    )


# --------------------------------------------------------------------------------------------
# sign / verify


def test_sign_and_verify_roundtrip() -> None:
    appr = signed()
    assert appr.approval_id == "apr-1" and appr.expires_at == EXPIRES
    assert len(appr.signature) == 64 and appr.algorithm == "HMAC-SHA256"
    verify_approval(appr, dict(ORDER), KEY, NOW, never_used)
    # Key order and int/float spelling of the same number do not matter.
    verify_approval(appr, dict(reversed(list({**ORDER, "qty": 10.0}.items()))), KEY, NOW, never_used)


def test_verifies_against_the_order_as_stored_in_json() -> None:
    # The OMS stores json.loads(canonical_json(order)); canonical JSON must be idempotent so
    # the stored copy verifies too.
    rich = {
        **ORDER,
        "decided_at": NOW,
        "session": date(2025, 3, 4),
        "notional": Decimal("5122.5"),
        "qty": np.int64(10),
        "limit_price": np.float64(512.25),
        "tags": ("a", "b"),
        "side": Side.BUY,
    }
    appr = sign_approval(rich, "apr-json", EXPIRES, KEY)
    stored = json.loads(canonical_json(rich))
    assert canonical_json(stored) == canonical_json(rich)
    verify_approval(appr, stored, KEY, NOW, never_used)


def test_signature_is_deterministic_and_storable() -> None:
    a, b = signed(), signed()
    assert a == b
    restored = SignedApproval.from_dict(a.to_dict())
    assert restored == a
    verify_approval(restored, ORDER, KEY, NOW, never_used)


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.01
    return value + "x"


@pytest.mark.parametrize("field", sorted(ORDER))
def test_any_single_field_change_invalidates(field) -> None:
    appr = signed()
    tampered = {**ORDER, field: _changed(ORDER[field])}
    with pytest.raises(ApprovalError) as exc:
        verify_approval(appr, tampered, KEY, NOW, never_used)
    assert exc.value.reason is ReasonCode.SIGNATURE_INVALID


def test_added_or_removed_field_invalidates() -> None:
    appr = signed()
    for tampered in ({**ORDER, "extra": 1}, {k: v for k, v in ORDER.items() if k != "side"}):
        with pytest.raises(ApprovalError) as exc:
            verify_approval(appr, tampered, KEY, NOW, never_used)
        assert exc.value.reason is ReasonCode.SIGNATURE_INVALID


@pytest.mark.parametrize(
    "tamper",
    [
        lambda a: SignedApproval("apr-2", a.expires_at, a.signature),
        lambda a: SignedApproval(a.approval_id, a.expires_at + timedelta(hours=1), a.signature),
        lambda a: SignedApproval(a.approval_id, a.expires_at, "0" * 64),
        lambda a: SignedApproval(a.approval_id, a.expires_at, a.signature[:-1]),
        lambda a: SignedApproval(a.approval_id, a.expires_at, "not hex ✗"),
        lambda a: SignedApproval(a.approval_id, a.expires_at, a.signature, algorithm="NONE"),
    ],
    ids=["approval_id", "expires_at", "zero_sig", "short_sig", "garbage_sig", "algorithm"],
)
def test_tampered_approval_invalid(tamper) -> None:
    with pytest.raises(ApprovalError) as exc:
        verify_approval(tamper(signed()), ORDER, KEY, NOW, never_used)
    assert exc.value.reason is ReasonCode.SIGNATURE_INVALID


def test_other_key_invalid() -> None:
    with pytest.raises(ApprovalError) as exc:
        verify_approval(signed(), ORDER, OTHER_KEY, NOW, never_used)
    assert exc.value.reason is ReasonCode.SIGNATURE_INVALID


def test_unsignable_order_at_verify_is_invalid() -> None:
    with pytest.raises(ApprovalError) as exc:
        verify_approval(signed(), {**ORDER, "limit_price": float("nan")}, KEY, NOW, never_used)
    assert exc.value.reason is ReasonCode.SIGNATURE_INVALID


def test_expiry_boundary() -> None:
    appr = signed()
    verify_approval(appr, ORDER, KEY, EXPIRES - timedelta(microseconds=1), never_used)
    for late in (EXPIRES, EXPIRES + timedelta(seconds=1)):
        with pytest.raises(ApprovalError) as exc:
            verify_approval(appr, ORDER, KEY, late, never_used)
        assert exc.value.reason is ReasonCode.APPROVAL_EXPIRED


def test_replay_refused() -> None:
    used: set[str] = set()
    appr = signed()
    verify_approval(appr, ORDER, KEY, NOW, used.__contains__)
    used.add(appr.approval_id)  # the OMS records the use with the order intent
    with pytest.raises(ApprovalError) as exc:
        verify_approval(appr, ORDER, KEY, NOW, used.__contains__)
    assert exc.value.reason is ReasonCode.APPROVAL_REPLAYED


def test_signature_checked_before_expiry_and_replay() -> None:
    with pytest.raises(ApprovalError) as exc:
        verify_approval(signed(), {**ORDER, "qty": 11}, KEY, EXPIRES + timedelta(days=1), lambda _: True)
    assert exc.value.reason is ReasonCode.SIGNATURE_INVALID


def test_replay_lookup_failure_propagates() -> None:
    def broken(_: str) -> bool:
        raise RuntimeError("ledger down")

    with pytest.raises(RuntimeError, match="ledger down"):
        verify_approval(signed(), ORDER, KEY, NOW, broken)


def test_short_key_refused_for_signing_and_verifying() -> None:
    with pytest.raises(SigningKeyMissingError):
        sign_approval(ORDER, "apr-1", EXPIRES, b"short")
    with pytest.raises(SigningKeyMissingError):
        verify_approval(signed(), ORDER, b"short", NOW, never_used)


def test_naive_expiry_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        sign_approval(ORDER, "apr-1", datetime(2025, 3, 4, 16), KEY)


def test_make_approval_id_is_deterministic() -> None:
    a = make_approval_id(ORDER, EXPIRES)
    assert a == make_approval_id(dict(reversed(list(ORDER.items()))), EXPIRES)
    assert a.startswith("apr_") and len(a) == 36
    assert a != make_approval_id({**ORDER, "qty": 11}, EXPIRES)
    assert a != make_approval_id(ORDER, EXPIRES + timedelta(seconds=1))


# --------------------------------------------------------------------------------------------
# keys


def test_key_from_env_hex_and_base64() -> None:
    key = os.urandom(32)
    assert load_signing_key({"AIS_APPROVAL_KEY": key.hex()}) == key
    assert load_signing_key({"AIS_APPROVAL_KEY": key.hex().upper()}) == key
    assert load_signing_key({"AIS_APPROVAL_KEY": base64.b64encode(key).decode()}) == key
    assert load_signing_key({"AIS_APPROVAL_KEY": base64.urlsafe_b64encode(key).decode().rstrip("=")}) == key
    assert load_signing_key({"AIS_APPROVAL_KEY": "base64:" + base64.b64encode(key).decode()}) == key
    long_key = os.urandom(64)
    assert load_signing_key({"AIS_APPROVAL_KEY": f" {long_key.hex()}\n"}) == long_key


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"AIS_APPROVAL_KEY": ""},
        {"AIS_APPROVAL_KEY": "   "},
        {"AIS_APPROVAL_KEY": os.urandom(31).hex()},
        {"AIS_APPROVAL_KEY": base64.b64encode(os.urandom(16)).decode()},
        {"AIS_APPROVAL_KEY": "correct horse battery staple!!"},
        {"AIS_APPROVAL_KEY": os.urandom(32).hex(), "AIS_APPROVAL_KEY_FILE": "/tmp/key"},
        {"AIS_APPROVAL_KEY_FILE": "/nonexistent/ais/key"},
    ],
    ids=["absent", "empty", "blank", "short_hex", "short_b64", "not_encoded", "both_set", "missing_file"],
)
def test_missing_or_short_key_refused(env) -> None:
    with pytest.raises(SigningKeyMissingError) as exc:
        load_signing_key(env)
    assert exc.value.reason is ReasonCode.SIGNING_KEY_MISSING


def test_error_message_never_contains_the_key() -> None:
    secret = os.urandom(20).hex()
    with pytest.raises(SigningKeyMissingError) as exc:
        load_signing_key({"AIS_APPROVAL_KEY": secret})
    assert secret not in str(exc.value)


def _key_file(tmp_path: Path, mode: int, content: str) -> Path:
    p = tmp_path / "approval.key"
    p.write_text(content)
    p.chmod(mode)
    return p


def test_key_file_0600_accepted(tmp_path) -> None:
    key = os.urandom(32)
    p = _key_file(tmp_path, 0o600, key.hex() + "\n")
    assert load_signing_key({"AIS_APPROVAL_KEY_FILE": str(p)}) == key
    p.chmod(0o400)
    assert load_signing_key({"AIS_APPROVAL_KEY_FILE": str(p)}) == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o620])
def test_key_file_accessible_by_others_refused(tmp_path, mode) -> None:
    p = _key_file(tmp_path, mode, os.urandom(32).hex())
    with pytest.raises(SigningKeyMissingError, match="group or others"):
        load_signing_key({"AIS_APPROVAL_KEY_FILE": str(p)})


def test_key_file_short_or_binary_or_directory_refused(tmp_path) -> None:
    p = _key_file(tmp_path, 0o600, os.urandom(8).hex())
    with pytest.raises(SigningKeyMissingError, match="8 bytes"):
        load_signing_key({"AIS_APPROVAL_KEY_FILE": str(p)})
    p.write_bytes(b"\xff\xfe" + os.urandom(40))
    with pytest.raises(SigningKeyMissingError, match="hex or base64"):
        load_signing_key({"AIS_APPROVAL_KEY_FILE": str(p)})
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SigningKeyMissingError, match="not a regular file"):
        load_signing_key({"AIS_APPROVAL_KEY_FILE": str(d)})


def test_generate_dev_key_file(tmp_path) -> None:
    path = generate_dev_key_file(tmp_path / "runtime" / "dev_approval.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_signing_key({"AIS_APPROVAL_KEY_FILE": str(path)})
    assert len(key) == 32
    with pytest.raises(FileExistsError):
        generate_dev_key_file(path)
    assert load_signing_key({"AIS_APPROVAL_KEY_FILE": str(path)}) == key  # untouched
    generate_dev_key_file(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key({"AIS_APPROVAL_KEY_FILE": str(path)}) != key
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_generated_key_is_0600_even_with_permissive_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        path = generate_dev_key_file(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
