"""Policy effective dates, point in time (issue 13).

A policy file may declare ``effective_from: YYYY-MM-DD``: the first as-of session it governs.
When a policy changes, the previous version is kept under ``versions/<stem>/`` next to it
(``policies/versions/risk/2026-01-02.yaml``, any file name; each kept version must declare its
own ``effective_from``). As of session D the version in force is the one with the latest
``effective_from`` on or before D; a file without the key is in force since always. When no
version was in force on D, loading refuses with ``POLICY_NOT_IN_FORCE`` (a decision on D may
not use a rule written for later). No Dagster here; ``config.Policies`` calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

from ais_pipelines.config import PolicyFileError
from ais_pipelines.core.reason_codes import ReasonCode

EFFECTIVE_KEY = "effective_from"
VERSIONS_DIR = "versions"


class PolicyNotInForceError(PolicyFileError):
    """No version of a policy file was in force on the as-of session (refused like an invalid file)."""

    reason_code = ReasonCode.POLICY_NOT_IN_FORCE

    def __init__(self, path: Path, as_of: date, earliest: date):
        self.as_of, self.earliest = as_of, earliest
        super().__init__(path, [f"no version in force on {as_of}: the earliest declares {EFFECTIVE_KEY}: "
                                f"{earliest} [{ReasonCode.POLICY_NOT_IN_FORCE}]"])


@dataclass(frozen=True)
class PolicyVersion:
    path: Path
    effective_from: date | None  # None: in force since always


def parse_effective_from(data: dict, where: Path) -> date | None:
    """The validated ``effective_from`` of a loaded mapping (removed from it), or None."""
    if EFFECTIVE_KEY not in data:
        return None
    value = data.pop(EFFECTIVE_KEY)
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise PolicyFileError(where, [f"{EFFECTIVE_KEY}: not a date YYYY-MM-DD (got {value!r})"]) from None


def version_files(path: Path) -> list[Path]:
    """The kept older versions of ``path`` (``versions/<stem>/*.yaml`` beside it)."""
    d = path.parent / VERSIONS_DIR / path.stem
    return sorted(d.glob("*.yaml")) if d.is_dir() else []


def _declared(path: Path) -> date | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None  # the full load reports it, naming the file
    if not isinstance(data, dict):
        return None
    eff = parse_effective_from(data, path)
    if eff is None and path.parent.parent.name == VERSIONS_DIR:
        raise PolicyFileError(path, [f"{EFFECTIVE_KEY}: required, missing (a kept version must say when it "
                                     "took effect)"])
    return eff


def versions(path: Path) -> list[PolicyVersion]:
    """The current file and its kept versions, oldest first; two with one date are refused."""
    found = [PolicyVersion(p, _declared(p)) for p in [*version_files(path), path]]
    seen: dict[date | None, Path] = {}
    for v in found:
        if v.effective_from in seen:
            raise PolicyFileError(v.path, [f"{EFFECTIVE_KEY}: {v.effective_from or 'absent'} is also declared by "
                                           f"{seen[v.effective_from]} (got {v.effective_from})"])
        seen[v.effective_from] = v.path
    return sorted(found, key=lambda v: v.effective_from or date.min)


def in_force(path: Path, as_of: date | None, known: list[PolicyVersion] | None = None) -> PolicyVersion:
    """The version of ``path`` in force on ``as_of`` (None: the current file itself);
    ``known``: its :func:`versions`, when already read."""
    if as_of is None:
        return PolicyVersion(path, None)
    vs = versions(path) if known is None else known
    candidates = [v for v in vs if v.effective_from is None or v.effective_from <= as_of]
    if not candidates:
        raise PolicyNotInForceError(path, as_of, vs[0].effective_from or date.min)
    return candidates[-1]
