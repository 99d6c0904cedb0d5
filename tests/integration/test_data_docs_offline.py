"""Issue 13: Data Docs work offline and name what was rejected and which symbols failed.

Reproduces: the pages loaded CSS/JS from CDNs (offline the index was empty) and the suite ran
over the cleaned bars only, so rejected rows never appeared and "Failed" named no symbol.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from ais_pipelines.reports.governance import GovernanceInputs, render_governance_report
from ais_pipelines.reports.offline_html import VENDORED, external_references, rewrite_html

pytestmark = pytest.mark.slow  # one Great Expectations build (~30 s, mostly its import)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from ais_pipelines.reports.data_docs import build_data_docs

    d = pd.bdate_range("2024-01-01", periods=5)
    bars = pd.DataFrame({"symbol": "AAPL", "date": d, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
                         "volume": 1.0, "adj_close": 1.0, "asset_class": "STOCKS"})
    quality = pd.DataFrame({"symbol": ["AAPL", "MSFT"], "data_quality_score": [1.0, 0.2],
                            "status": ["VALID", "INVALID_DATA"], "valid_sessions": [5, 5],
                            "missing_sessions_rate": [0.0, 0.5],
                            "reason_codes": ["DATA_VALID", "INVALID_DATA;UNADJUSTED_SPLIT"]})
    rejects = pd.DataFrame({"symbol": ["MSFT", "MSFT"], "date": ["2024-01-03", "2024-01-04"],
                            "reason_code": ["NEGATIVE_VOLUME", "NON_POSITIVE_PRICE"],
                            "detail": ["volume=-5.0 < 0", "close=-1.0 <= 0"], "source": "f", "provider": "files"})
    out = tmp_path_factory.mktemp("docs") / "data_docs"
    return out, build_data_docs(bars, quality, out, min_valid_sessions=1, rejects=rejects)


def _pages(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.html") if "_vendor" not in p.parts]


def test_no_page_references_an_external_url_and_every_local_asset_exists(docs) -> None:
    out, _ = docs
    pages = _pages(out)
    assert len(pages) >= 9  # index + 4 suites + 4 validation results
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert external_references(html) == [], page.name
        for ref in re.findall(r'(?:src|href)="(_vendor[^"]*|\.\./[^"]*_vendor[^"]*)"', html):
            assert (page.parent / ref).resolve().is_file(), (page.name, ref)
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "_vendor/jquery-3.7.1.min.js" in index and "_vendor/bootstrap-table-1.19.1.min.js" in index


def test_rejected_rows_and_failed_symbols_are_named_in_the_validation_results(docs) -> None:
    out, result = docs
    assert result.success  # the bars suite passes; the others list problems by design
    assert result.suites["bar_rejects"]["unsuccessful"] == 1 and result.suites["bar_rejects"]["rows"] == 2
    [rej] = (out / "validations" / "bar_rejects_suite").rglob("*.html")
    text = rej.read_text(encoding="utf-8")
    assert "MSFT 2024-01-03 NEGATIVE_VOLUME" in text
    assert "MSFT 2024-01-04 NON_POSITIVE_PRICE" in text
    [fail] = (out / "validations" / "symbol_failures_suite").rglob("*.html")
    assert "MSFT: INVALID_DATA (INVALID_DATA;UNADJUSTED_SPLIT)" in fail.read_text(encoding="utf-8")


def test_rewrite_vendors_known_cdns_and_drops_the_rest() -> None:
    html = ('<link href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css" rel="stylesheet">'
            '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>'
            '<img src="https://example.com/logo.png"/><a class="x" href="https://greatexpectations.io">GE</a>')
    out = rewrite_html(html, "../_vendor")
    assert out == '<link href="../_vendor/bootstrap-4.3.1.min.css" rel="stylesheet"><a class="x">GE</a>'
    assert external_references(out) == []
    assert all(u.startswith("https://") for u in VENDORED)


def test_the_governance_report_has_no_external_reference() -> None:
    html = render_governance_report(GovernanceInputs(as_of=pd.Timestamp("2024-03-05").date()))
    assert external_references(html) == []
