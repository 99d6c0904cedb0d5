"""HMAC-signed, expiring, single-use approvals (§I1).

The pre-trade gate signs every approval it issues; the OMS verifies signature, expiry and
single use before any broker call. The signature is HMAC-SHA256 over the canonical JSON of

    {"approval_id": ..., "expires_at": ..., "order": {<every order field>}, "scheme": "ais-approval-v1"}

so changing *any* order field, the approval id or the expiry invalidates it. Verify against
exactly the order mapping that was signed (the proposal as approved), not an enriched copy.

Key handling is fail closed: no key (or a short one, or a key file other users can read) →
:class:`SigningKeyMissingError` and nothing starts. The key never appears in a message.

Canonical JSON (:func:`canonical_json`), also used by the audit chain:

* object keys sorted, must be strings; separators ``,`` and ``:`` with no whitespace; UTF-8
  (non-ASCII characters are written as themselves, not ``\\u`` escapes);
* ``bool`` → ``true``/``false``; ``None`` and ``pd.NA``/``NaT`` → ``null``;
* ints as decimal digits; floats that are integral (and ``|x| < 2**53``) are written as ints,
  so ``100`` and ``100.0`` sign the same; other floats use Python's shortest round-trip
  ``repr`` (deterministic across platforms); ``Decimal`` is rendered as its nearest float;
  numpy scalars are unwrapped first;
* non-finite floats (NaN, ±inf) are refused (``ValueError``) unless ``allow_nonfinite=True``,
  which writes them as the JSON *strings* ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
* ``datetime`` must be timezone-aware and is written as a UTC string with a fixed format
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (sub-microsecond digits of a ``pd.Timestamp`` are dropped);
  naive datetimes are refused; ``date`` → ``YYYY-MM-DD``;
* enums → their value; tuples, lists and sets (sets sorted by canonical form) → arrays.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ais_pipelines.core.reason_codes import ReasonCode

KEY_ENV = "AIS_APPROVAL_KEY"
KEY_FILE_ENV = "AIS_APPROVAL_KEY_FILE"
MIN_KEY_BYTES = 32
SCHEME = "ais-approval-v1"
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


# --------------------------------------------------------------------------------------------
# errors


class ApprovalError(Exception):
    """An approval must not be honoured. ``reason`` is the structured code to record."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SigningKeyMissingError(ApprovalError):
    """No usable signing key: the system must not start (fail closed)."""

    def __init__(self, message: str) -> None:
        super().__init__(ReasonCode.SIGNING_KEY_MISSING, message)


# --------------------------------------------------------------------------------------------
# canonical JSON


def format_utc(ts: datetime) -> str:
    """Fixed-width UTC ISO-8601 text for a timezone-aware datetime (naive → ``ValueError``)."""
    if not isinstance(ts, datetime):
        raise TypeError(f"expected a datetime, got {type(ts).__name__}")
    if ts.tzinfo is None or ts.tzinfo.utcoffset(ts) is None:
        raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
    return ts.astimezone(UTC).strftime(_TS_FORMAT)


def _is_missing_scalar(obj: Any) -> bool:
    # pd.NA / pd.NaT without importing pandas here.
    return type(obj).__name__ in {"NAType", "NaTType"}


def _float_text(x: float, allow_nonfinite: bool) -> str:
    if not math.isfinite(x):
        if not allow_nonfinite:
            raise ValueError(f"non-finite number {x!r} cannot be rendered canonically")
        return '"NaN"' if math.isnan(x) else ('"Infinity"' if x > 0 else '"-Infinity"')
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    return repr(x)


def _encode(obj: Any, allow_nonfinite: bool) -> str:
    if obj is None or _is_missing_scalar(obj):
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, enum.Enum):
        return _encode(obj.value, allow_nonfinite)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, int):
        return str(int(obj))
    if isinstance(obj, float):
        return _float_text(float(obj), allow_nonfinite)
    if isinstance(obj, Decimal):
        return _float_text(float(obj), allow_nonfinite)
    if isinstance(obj, datetime):
        return json.dumps(format_utc(obj))
    if isinstance(obj, date):
        return json.dumps(obj.isoformat())
    if isinstance(obj, Mapping):
        items = []
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"canonical JSON object keys must be str, got {type(k).__name__}")
        for k in sorted(obj):
            items.append(json.dumps(k, ensure_ascii=False) + ":" + _encode(obj[k], allow_nonfinite))
        return "{" + ",".join(items) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_encode(v, allow_nonfinite) for v in obj) + "]"
    if isinstance(obj, (set, frozenset)):
        return "[" + ",".join(sorted(_encode(v, allow_nonfinite) for v in obj)) + "]"
    item = getattr(obj, "item", None)  # numpy scalar
    if callable(item) and type(obj).__module__ == "numpy":
        return _encode(item(), allow_nonfinite)
    raise TypeError(f"cannot render {type(obj).__name__} as canonical JSON")


def canonical_json(obj: Any, *, allow_nonfinite: bool = False) -> bytes:
    """Deterministic JSON bytes for hashing and signing (rules in the module docstring)."""
    return _encode(obj, allow_nonfinite).encode("utf-8")


# --------------------------------------------------------------------------------------------
# signing


@dataclass(frozen=True)
class SignedApproval:
    approval_id: str
    expires_at: datetime  # timezone-aware, UTC
    signature: str  # lowercase hex HMAC-SHA256
    algorithm: str = "HMAC-SHA256"

    def to_dict(self) -> dict[str, str]:
        """Storage form (ledger row / run config)."""
        return {
            "approval_id": self.approval_id,
            "expires_at": format_utc(self.expires_at),
            "signature": self.signature,
            "algorithm": self.algorithm,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SignedApproval:
        exp = d["expires_at"]
        if isinstance(exp, str):
            exp = datetime.fromisoformat(exp.replace("Z", "+00:00"))
        return cls(
            approval_id=str(d["approval_id"]),
            expires_at=exp,
            signature=str(d["signature"]),
            algorithm=str(d.get("algorithm", "HMAC-SHA256")),
        )


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise SigningKeyMissingError(f"signing key must be at least {MIN_KEY_BYTES} bytes")


def _signing_payload(order: Mapping[str, Any], approval_id: str, expires_at: datetime) -> bytes:
    return canonical_json(
        {"scheme": SCHEME, "approval_id": approval_id, "expires_at": expires_at, "order": dict(order)}
    )


def make_approval_id(order: Mapping[str, Any], expires_at: datetime) -> str:
    """A deterministic approval id (same order and expiry → same id), so replays (§L1) match."""
    digest = hashlib.sha256(canonical_json({"order": dict(order), "expires_at": expires_at})).hexdigest()
    return f"apr_{digest[:32]}"


def sign_approval(
    order: Mapping[str, Any], approval_id: str, expires_at: datetime, key: bytes
) -> SignedApproval:
    """Sign every field of ``order`` together with ``approval_id`` and ``expires_at``.

    Raises ``SigningKeyMissingError`` for a short key and ``ValueError``/``TypeError`` if the
    order holds something that has no canonical form (NaN, naive datetime, arbitrary objects):
    such an order is never approved.
    """
    _check_key(key)
    if not approval_id:
        raise ValueError("approval_id must be a non-empty string")
    format_utc(expires_at)  # refuse naive expiry up front
    mac = hmac.new(bytes(key), _signing_payload(order, approval_id, expires_at), hashlib.sha256)
    return SignedApproval(
        approval_id=approval_id,
        expires_at=expires_at.astimezone(UTC),
        signature=mac.hexdigest(),
    )


def verify_approval(
    approval: SignedApproval,
    order: Mapping[str, Any],
    key: bytes,
    now: datetime,
    is_used: Callable[[str], bool],
) -> None:
    """Return ``None`` if the approval may be honoured now, else raise ``ApprovalError``.

    Checks, in this order (the signature first, because an unsigned expiry means nothing):
    SIGNATURE_INVALID (any order field, the id or the expiry changed, another key, a malformed
    signature), APPROVAL_EXPIRED (``now >= expires_at``), APPROVAL_REPLAYED (``is_used(id)``).
    This function does not mark the approval used: the caller records the use atomically with
    the order intent. An exception raised by ``is_used`` propagates (single use unproven → no trade).
    """
    _check_key(key)
    if approval.algorithm != "HMAC-SHA256":
        raise ApprovalError(ReasonCode.SIGNATURE_INVALID, f"unsupported algorithm {approval.algorithm!r}")
    try:
        payload = _signing_payload(order, approval.approval_id, approval.expires_at)
    except (TypeError, ValueError) as exc:
        raise ApprovalError(ReasonCode.SIGNATURE_INVALID, f"order cannot be canonicalised: {exc}") from exc
    expected = hmac.new(bytes(key), payload, hashlib.sha256).hexdigest()
    if not isinstance(approval.signature, str) or not hmac.compare_digest(
        expected.encode("ascii"), approval.signature.lower().encode("ascii", "replace")
    ):
        raise ApprovalError(
            ReasonCode.SIGNATURE_INVALID, f"signature does not match approval {approval.approval_id!r}"
        )
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if now >= approval.expires_at:
        raise ApprovalError(
            ReasonCode.APPROVAL_EXPIRED,
            f"approval {approval.approval_id!r} expired at {format_utc(approval.expires_at)}",
        )
    if is_used(approval.approval_id):
        raise ApprovalError(
            ReasonCode.APPROVAL_REPLAYED, f"approval {approval.approval_id!r} was already used"
        )


# --------------------------------------------------------------------------------------------
# keys


def _decode_key_text(text: str, source: str) -> bytes:
    """Hex (tried first) or standard/URL-safe base64; an optional ``hex:``/``base64:`` prefix forces one."""
    s = text.strip()
    if s.startswith("hex:"):
        candidates = [("hex", s[4:])]
    elif s.startswith("base64:"):
        candidates = [("base64", s[7:])]
    else:
        candidates = [("hex", s), ("base64", s)]
    for kind, body in candidates:
        try:
            if kind == "hex":
                if _HEX_RE.match(body):
                    return bytes.fromhex(body)
            else:
                padded = body + "=" * (-len(body) % 4)
                alt = padded.replace("-", "+").replace("_", "/")
                return base64.b64decode(alt, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise SigningKeyMissingError(f"{source} is neither hex nor base64")


def load_signing_key(environ: Mapping[str, str]) -> bytes:
    """The approval signing key from ``AIS_APPROVAL_KEY`` (hex/base64) or ``AIS_APPROVAL_KEY_FILE``.

    Exactly one of the two must be set. The key file holds hex or base64 text and may not grant
    any permission to group or others (mode must be within 0o700, like ssh keys). Decoded keys
    shorter than 32 bytes are refused. Every failure is ``SigningKeyMissingError``.
    """
    raw = environ.get(KEY_ENV, "").strip()
    path = environ.get(KEY_FILE_ENV, "").strip()
    if raw and path:
        raise SigningKeyMissingError(f"set only one of {KEY_ENV} and {KEY_FILE_ENV}")
    if raw:
        key = _decode_key_text(raw, KEY_ENV)
        source = KEY_ENV
    elif path:
        key = _read_key_file(Path(path))
        source = f"{KEY_FILE_ENV} ({path})"
    else:
        raise SigningKeyMissingError(f"no approval signing key: set {KEY_ENV} or {KEY_FILE_ENV}")
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyMissingError(
            f"key from {source} is {len(key)} bytes; at least {MIN_KEY_BYTES} required"
        )
    return key


DEV_KEY_FILE = "approval.key"  # under the runtime directory; local/ci only
DEV_KEY_ENVIRONMENTS = ("local", "ci")


def dev_key_path(runtime_root: str | os.PathLike[str]) -> Path:
    return Path(runtime_root).resolve() / DEV_KEY_FILE


def find_signing_key(environ: Mapping[str, str], env: str, runtime_root: str | os.PathLike[str] | None) -> bytes:
    """The one key rule every command, job and sensor follows (issue 14):

    1. ``AIS_APPROVAL_KEY`` or ``AIS_APPROVAL_KEY_FILE`` when set (:func:`load_signing_key`);
    2. in local/ci only, the development key file ``{runtime_root}/approval.key`` if it exists;
    3. otherwise ``SigningKeyMissingError`` saying how to create one. Never a default path in prod.
    """
    if environ.get(KEY_ENV, "").strip() or environ.get(KEY_FILE_ENV, "").strip():
        return load_signing_key(environ)
    if env in DEV_KEY_ENVIRONMENTS and runtime_root is not None:
        path = dev_key_path(runtime_root)
        if path.exists():
            return load_signing_key({KEY_FILE_ENV: str(path)})
        raise SigningKeyMissingError(
            f"no approval signing key: set {KEY_ENV} or {KEY_FILE_ENV}, or create the development key "
            f"{path} with `uv run ais key init`"
        )
    raise SigningKeyMissingError(
        f"no approval signing key: set {KEY_ENV} or {KEY_FILE_ENV}"
        + (" (prod never falls back to a key file by default)" if env == "prod" else "")
    )


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SigningKeyMissingError(f"cannot open key file {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)  # check the file we actually opened (no stat/open race)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyMissingError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SigningKeyMissingError(
                f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                "it must not be accessible by group or others (chmod 600)"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read()
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SigningKeyMissingError(f"key file {path} must hold hex or base64 text") from exc
    return _decode_key_text(text, f"key file {path}")


def generate_dev_key_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a fresh random 32-byte key as hex text to ``path`` with mode 0600. Development only.

    Refuses to replace an existing file unless ``overwrite`` (so a real key is never clobbered).
    The write is atomic (temp file + rename) and the file is never readable by others.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # independent of the umask
        os.write(fd, (secrets.token_bytes(MIN_KEY_BYTES).hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return target
