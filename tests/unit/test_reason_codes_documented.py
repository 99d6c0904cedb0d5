"""Every reason code in the catalog is documented in docs/reason_codes.md (and vice versa)."""

from __future__ import annotations

import re
from pathlib import Path

from ais_pipelines.core.reason_codes import ReasonCode

DOC = Path(__file__).resolve().parents[2] / "docs" / "reason_codes.md"


def test_catalog_and_docs_agree():
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", DOC.read_text(), flags=re.M))
    catalog = {str(c) for c in ReasonCode}
    assert catalog - documented == set(), "undocumented codes"
    assert documented - catalog == set(), "documented codes that do not exist"


def test_codes_are_their_own_names():
    assert all(c.value == c.name for c in ReasonCode)
