"""The reasoning_memos asset between order proposals and the pre-trade policy: a cautious memo
sends an otherwise approved order to REVIEW, the decision links its memo, nothing else moves."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.warehouse import replace_partition
from assets.reasoning import memos_cover_proposals, reasoning_memos
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource
from tests.integration.test_execution import D, decisions_of, make_rig, query, signing_env, write_nightly  # noqa: F401


def test_memo_adds_caution_and_is_linked_from_the_decision(tmp_path: Path, policies_dir: Path,
                                                           signing_env: None) -> None:  # noqa: F811
    rig = make_rig(tmp_path, policies_dir)
    write_nightly(rig.db)
    day = pd.Timestamp(D).date()
    con = duckdb.connect(str(rig.db))
    # AAPL's models disagree (keep 40 % of mu): the rules flag it; the others agree.
    fc = pd.DataFrame({"symbol": ["AAPL", "MSFT", "JPM", "PLD"], "mu_adj": 0.004, "sigma": 0.03, "cvar_95": 0.06,
                       "confidence": [0.8, 0.4, 0.85, 0.9], "n_models": 3,
                       "disagreement_factor": [0.4, 0.97, 0.97, 0.97]})
    replace_partition(con, "forecasts", fc, "as_of", day)
    replace_partition(con, "regime_probabilities",
                      pd.DataFrame([{"regime": "NORMAL", "p_crisis_5d": 0.05, "threshold": 0.15}]), "as_of", day)
    con.close()

    memo_run = dg.materialize(
        [reasoning_memos, memos_cover_proposals], partition_key=D, instance=rig.instance,
        resources={"policies": PoliciesResource(directory=str(policies_dir)),
                   "warehouse": DuckDBResource(database=str(rig.db)), "runtime": RuntimeResource(root=str(rig.root))},
    )
    assert memo_run.success
    assert [e.passed for e in memo_run.get_asset_check_evaluations()] == [True]  # the sensor's gate
    memos = query(rig.db, "SELECT * FROM reasoning_memos WHERE as_of = ?", [day]).set_index("symbol")
    assert set(memos.index) == {"AAPL", "MSFT", "JPM"}  # PLD was refused upstream: no memo
    assert memos.loc["AAPL", "verdict"] == "ALLOW_WITH_CAUTION"
    assert memos.loc["AAPL", "risk_flags"] == "REASONING_FORECAST_DISAGREEMENT"
    assert memos.loc["MSFT", "verdict"] == "ALLOW" and memos.loc["MSFT", "provider"] == "rules"

    assert rig.run().success
    dec = decisions_of(rig.db).set_index("symbol")
    # AAPL was approved without a memo (tests/integration/test_execution.py): now a person decides
    assert dec.loc["AAPL", "decision"] == "REVIEW" and dec.loc["AAPL", "reason_codes"] == "REASONING_CAUTION"
    assert dec.loc["AAPL", "approved_qty"] == 0
    assert dec.loc["AAPL", "reasoning_memo_id"] == memos.loc["AAPL", "memo_id"]
    # an ALLOW memo neither approves MSFT's low confidence nor softens JPM's reject
    assert dec.loc["MSFT", "decision"] == "REVIEW" and dec.loc["MSFT", "reason_codes"] == "LOW_CONFIDENCE"
    assert dec.loc["JPM", "decision"] == "REJECT"
    orders = query(rig.db, "SELECT * FROM execution_orders WHERE as_of = ?", [day]) \
        if "execution_orders" in query(rig.db, "SHOW TABLES")["name"].tolist() else pd.DataFrame()
    assert orders.empty or "AAPL" not in set(orders["symbol"])  # nothing in REVIEW reaches the broker

    from ais_pipelines.reports.governance import write_governance_report

    html = write_governance_report(rig.db, D, tmp_path / "reports").read_text()
    decisions = html[html.index("Pre-trade policy decisions"):html.index("Governance vetoes")]
    aapl_row = next(row for row in decisions.split("<tr>") if "AAPL" in row)
    assert "REVIEW" in aapl_row and "ALLOW_WITH_CAUTION" in aapl_row and "REASONING_FORECAST_DISAGREEMENT" in aapl_row
    assert "memo counter thesis" in decisions  # plain header (issue 14)


def _memos_only(rig, policies_dir: Path) -> pd.DataFrame:
    result = dg.materialize(
        [reasoning_memos, memos_cover_proposals], partition_key=D, instance=rig.instance,
        resources={"policies": PoliciesResource(directory=str(policies_dir)),
                   "warehouse": DuckDBResource(database=str(rig.db)), "runtime": RuntimeResource(root=str(rig.root))},
    )
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    return query(rig.db, "SELECT * FROM reasoning_memos WHERE as_of = ? ORDER BY symbol", [pd.Timestamp(D).date()])


def test_llm_provider_from_policy_and_environment(tmp_path: Path, policies_dir: Path, monkeypatch) -> None:
    import json

    from tests.stubs.http_stub import StubHTTPServer, StubResponse

    (policies_dir / "reasoning.yaml").write_text("provider: llm\nllm: {model: stub-model, soft_timeout_s: 2, hard_timeout_s: 5}\n")
    rig = make_rig(tmp_path, policies_dir)
    write_nightly(rig.db)
    monkeypatch.delenv("AIS_REASONING_LLM_URL", raising=False)
    monkeypatch.delenv("AIS_REASONING_LLM_KEY", raising=False)
    unset = _memos_only(rig, policies_dir)  # no URL/key: FAILED memos (→ reasoning_failed → REVIEW)
    assert set(unset["verdict"]) == {"FAILED"} and unset["detail"].str.contains("AIS_REASONING_LLM_URL").all()

    answer = {"thesis": "t", "counter_thesis": "c", "risk_flags": [], "recommendation": "ALLOW"}
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(answer)}}]}
    with StubHTTPServer() as server:
        server.route("POST", "/v1/chat/completions", StubResponse(body=body))
        monkeypatch.setenv("AIS_REASONING_LLM_URL", f"{server.base_url}/v1")
        monkeypatch.setenv("AIS_REASONING_LLM_KEY", "sk-stub-secret-000")
        memos = _memos_only(rig, policies_dir)
        assert len(server.requests) == 3  # one call per PROPOSED order
    assert set(memos["verdict"]) == {"ALLOW"} and set(memos["provider"]) == {"llm"}
    assert set(memos["model_version"]) == {"stub-model"}
    for path in memos["prompt_path"]:
        assert Path(path).parent == rig.root / "reasoning" / D and "sk-stub-secret-000" not in Path(path).read_text()
