"""The governance report (§K2) and the §J4 metrics file, through the real Dagster assets.

The fixture (tests/integration/test_dbt_marts.py) holds one as-of session, 2024-03-05, with
excluded symbols, allocations, a CVaR row, policy decisions, and a ledger whose execution
session (2024-03-06) bought AAPL and MSFT, sold some AAPL, had a rejected order, a manual
pause and resume by a person, and a human review.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from ais_pipelines.reports.governance import (
    SECTIONS,
    GovernanceInputs,
    load_governance_inputs,
    render_governance_report,
    write_governance_report,
)
from resources.runtime import RuntimeResource
from tests.integration.test_dbt_marts import AS_OF, build_fixture

# 100 000 − buys (2·99.6 + 6·101 + 4·101.2 + 5·200.5) + sell 4·102 − fees 2.1, plus AAPL 8 @ 102
# and MSFT 5 @ 200.5 (the session's last fills: the bars end the day before)
EXPECTED_NAV = 100_000 - (199.2 + 606 + 404.8 + 1002.5) + 408 - 2.1 + 8 * 102.0 + 5 * 200.5


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory):
    from assets.reporting import governance_report, ledger_snapshot
    from resources.trading import LedgerResource

    fx = build_fixture(tmp_path_factory.mktemp("gov"))
    runtime = fx.root / "runtime"
    result = dg.materialize(
        [ledger_snapshot, governance_report],
        partition_key=str(AS_OF),
        resources={"warehouse": DuckDBResource(database=str(fx.warehouse)),
                   "ledger": LedgerResource(url=fx.ledger_url), "runtime": RuntimeResource(root=str(runtime))},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    return fx, runtime, result


def report_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [mat] = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()
             if e.asset_key == dg.AssetKey("governance_report")]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_report_asset_writes_a_self_contained_file_with_every_section(materialized):
    _, runtime, result = materialized
    assert result.success
    meta = report_metadata(result)
    path = Path(meta["report"])
    assert path == (runtime / "reports" / "governance" / f"governance_{AS_OF}.html").resolve()
    html = path.read_text(encoding="utf-8")
    for _, title in SECTIONS:
        assert f"<h2>{title.replace('&', '&amp;')}</h2>" in html, title
    # self-contained: inline CSS and images, no script, nothing fetched from elsewhere
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', html)) >= 5
    assert "could not be rendered" not in html
    # for a risk officer (issue 14): one sentence per section, headers in plain words
    import html as html_lib

    from ais_pipelines.reports.governance import SECTION_LEADS

    for anchor, _ in SECTIONS:
        assert f'<p class="lead">{html_lib.escape(SECTION_LEADS[anchor], quote=True)}</p>' in html, anchor
    headers = re.findall(r"<th>([^<]*)</th>", html)
    assert headers and not [h for h in headers if "_" in h], headers
    assert not re.search(r"\d[eE][+-]\d", text_of(html))  # no e-notation anywhere


def test_report_shows_the_sessions_real_numbers(materialized):
    _, _, result = materialized
    text = text_of(Path(report_metadata(result)["report"]).read_text(encoding="utf-8"))
    # data quality: who was excluded and why
    assert "JPM" in text and "0.412" in text and "STALE_PRICE" in text and "INSUFFICIENT_HISTORY" in text
    # regime: p_crisis_5d, beliefs, transition matrix
    assert "4.21 %" in text and "81.23 %" in text and "97.00 %" in text
    # allocations with reason codes, the veto, CVaR against its limit
    assert "OPTIMAL" in text and "1.85 %" in text and "EXCLUDED_INVALID_DATA" in text
    assert "VETO_UNEXPLAINED_PROFIT" in text and "VETO_DATA_DEPENDENCY" in text
    assert "3.12 %" in text and "6.00 %" in text and "2.31 %" in text  # CVaR, its limit, AAPL's component
    # policy decisions, orders and fills of the execution session 2024-03-06
    assert "STALE_QUOTE" in text and "HIGH_CORRELATION_TO_BOOK" in text and "2024-03-05:AAPL:BUY" in text
    assert "o-1" in text and "o-4" in text and "REJECTED" in text and "101.20" in text
    assert "o-0" not in text  # decided on 2024-03-01: another session's order
    # P&L, drawdown and positions; trading state and the people who overrode it
    assert f"{EXPECTED_NAV:,.2f}" in text
    assert "alice" in text and "manual pause during news" in text and "bob" in text


def test_metrics_as_metadata_and_prometheus_file(materialized):
    _, runtime, result = materialized
    meta = report_metadata(result)
    assert meta["nav"] == pytest.approx(EXPECTED_NAV)
    assert meta["open_positions"] == 2.0
    assert meta["gross_exposure"] == pytest.approx(8 * 102.0 + 5 * 200.5)
    assert meta["gate_approve_rate"] == pytest.approx(1 / 3)
    assert meta["orders"] == 4 and meta["fills"] == 4
    assert meta["excluded_symbols"] == "BTC/USD, JPM"
    prom = Path(meta["prometheus_file"])
    assert prom == (runtime / "reports" / "metrics" / "by_session" / f"ais_metrics_{AS_OF}.prom").resolve()
    text = prom.read_text()
    assert re.search(r'^ais_nav\{account="paper",session="2024-03-05"\} 100011\.9', text, re.M)
    assert "# TYPE ais_drawdown gauge" in text
    assert (runtime / "reports" / "metrics" / "ais_metrics.prom").read_text() == text


def test_write_governance_report_reads_the_warehouse_file(materialized, tmp_path: Path):
    fx, _, _ = materialized
    path = write_governance_report(fx.warehouse, str(AS_OF), tmp_path / "out")
    assert path == tmp_path / "out" / "governance_2024-03-05.html"
    assert "Governance report — session 2024-03-05" in path.read_text(encoding="utf-8")


def test_an_empty_warehouse_says_nothing_recorded_in_every_section(tmp_path: Path):
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    try:
        inputs = load_governance_inputs(con, "2024-03-05")
    finally:
        con.close()
    assert "data_quality" in inputs.missing_tables and "ledger_orders" in inputs.missing_tables
    html = render_governance_report(inputs)
    assert "could not be rendered" not in html
    for anchor, _ in SECTIONS:
        section = html.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]
        assert "Nothing recorded" in section, anchor


def test_odd_inputs_never_crash_the_report():
    import pandas as pd

    inputs = GovernanceInputs(
        as_of=AS_OF,
        allocations=pd.DataFrame({"candidate_id": ["x"], "symbol": ["AAPL"]}),  # no weight column
        cvar=pd.DataFrame({"something": [1.0]}),
        decisions=pd.DataFrame({"decision": ["APPROVE"], "reason_codes": ['["APPROVED"]']}),
        regime={"regime": "CRISIS", "p_crisis_5d": float("nan"), "transition_json": "not json"},
    )
    html = render_governance_report(inputs)
    assert "could not be rendered" not in html
    assert "APPROVED" in html and "CRISIS" in html


def test_data_quality_section_shows_dated_flag_events_per_symbol_and_year(materialized):
    fx, _, _ = materialized
    con = duckdb.connect(str(fx.warehouse), read_only=True)
    try:
        inputs = load_governance_inputs(con, AS_OF)
    finally:
        con.close()
    html = render_governance_report(inputs)
    section = html.split('<section id="data-quality">', 1)[1].split("</section>", 1)[0]
    assert "Flag events by symbol and year" in section
    text = text_of(section)
    # JPM: two conflicting rows on 2024-02-14, one missing session; AAPL: an unadjusted split.
    assert "JPM duplicate_dates 2 2024-02-14 2024-02-14 2" in text
    assert "AAPL split_like_jumps 1 2024-02-20 2024-02-20 1" in text
