"""Reasoning memos: the rule-based memo, the schema, and that a memo can only add caution."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from ais_pipelines.config import EventBlackout, Policies, ReasoningRules
from ais_pipelines.core import reasoning as r
from ais_pipelines.core.policy import evaluate_orders

NOW = datetime(2026, 11, 21, tzinfo=UTC)
RULES = ReasoningRules()


def proposals(**over) -> pd.DataFrame:
    row = {"as_of": "2026-11-20", "symbol": "AAPL", "side": "BUY", "qty": 10.0, "notional": 2000.0,
           "status": "PROPOSED", "reduce_only": False, "strategy_id": "momentum"}
    return pd.DataFrame([row | over])


def facts(blackouts=(), regime=None, dq=0.95, qcodes="", dis=0.97, **over) -> dict:
    reg = {"regime": "NORMAL", "p_crisis_5d": 0.05, "threshold": 0.15} | (regime or {})
    quality = pd.DataFrame([{"symbol": "AAPL", "data_quality_score": dq, "reason_codes": qcodes}])
    fc = pd.DataFrame([{"symbol": "AAPL", "mu_adj": 0.004, "confidence": 0.8, "n_models": 3,
                        "disagreement_factor": dis}])
    return r.memo_inputs(proposals(**over), regime=reg, quality=quality, forecasts=fc, blackouts=list(blackouts),
                         now=NOW)[0]


def blackout(hours_from_now: float, length_h: float = 24) -> EventBlackout:
    start = pd.Timestamp(NOW) + pd.Timedelta(hours=hours_from_now)
    return EventBlackout(symbol="AAPL", start=start.to_pydatetime(),
                         end=(start + pd.Timedelta(hours=length_h)).to_pydatetime(), why="earnings")


def test_clean_facts_allow() -> None:
    memo = r.rule_based_memo(facts(), RULES)
    assert memo.status == "OK" and memo.recommendation == "ALLOW" and memo.verdict == "ALLOW"
    assert memo.risk_flags == [] and memo.signal_id == "2026-11-20:momentum:AAPL:BUY"
    assert memo.provenance.provider == "rules" and len(memo.provenance.input_digest) == 64


@pytest.mark.parametrize(
    ("kw", "flag"),
    [({"blackouts": [blackout(48)]}, "REASONING_EVENT_PROXIMITY"),
     ({"blackouts": [blackout(-2)]}, "REASONING_EVENT_PROXIMITY"),
     ({"regime": {"p_crisis_5d": 0.2}}, "REASONING_REGIME_STRESS"),
     ({"regime": {"regime": "CRISIS"}}, "REASONING_REGIME_STRESS"),
     ({"dq": 0.79}, "REASONING_DATA_QUALITY"),
     ({"dis": 0.49}, "REASONING_FORECAST_DISAGREEMENT")],
)
def test_each_flag_adds_caution(kw, flag) -> None:
    memo = r.rule_based_memo(facts(**kw), RULES)
    assert memo.risk_flags == [flag] and memo.recommendation == "ALLOW_WITH_CAUTION"
    assert flag in memo.reason_codes


def test_thresholds_are_exclusive_where_declared() -> None:
    assert r.rule_based_memo(facts(blackouts=[blackout(73)]), RULES).risk_flags == []
    assert r.rule_based_memo(facts(dq=0.8, dis=0.5, regime={"p_crisis_5d": 0.15}), RULES).risk_flags == []
    # quality flags count through the score only: a lone historical spike with a 0.99 score is no caution
    assert r.rule_based_memo(facts(dq=0.99, qcodes="DATA_VALID;RETURN_SPIKE"), RULES).risk_flags == []
    low = r.rule_based_memo(facts(dq=0.7, qcodes="DATA_VALID;STALE_PRICES"), RULES)
    assert "STALE_PRICES" in low.counter_thesis and "DATA_VALID" not in low.counter_thesis


def test_unknown_facts_are_flags_not_safe() -> None:
    f = facts()
    f |= {"data_quality_score": float("nan"), "disagreement_factor": float("nan"), "p_crisis_5d": float("nan")}
    memo = r.rule_based_memo(f, RULES)
    assert len(memo.risk_flags) == 3 and memo.recommendation == "DENY"


def test_deny_needs_enough_flags_and_a_risk_increasing_order() -> None:
    bad = {"blackouts": [blackout(10)], "regime": {"regime": "CRISIS"}, "dq": 0.5}
    assert r.rule_based_memo(facts(**bad), RULES).recommendation == "DENY"
    assert r.rule_based_memo(facts(**bad, reduce_only=True), RULES).recommendation == "ALLOW_WITH_CAUTION"
    assert r.rule_based_memo(facts(**bad), ReasoningRules(deny_min_flags=4)).recommendation == "ALLOW_WITH_CAUTION"


def test_memo_is_deterministic() -> None:
    a, b = r.rule_based_memo(facts(dq=0.5), RULES), r.rule_based_memo(facts(dq=0.5), RULES)
    assert a == b and a.memo_id == b.memo_id


@pytest.mark.parametrize(
    ("text", "problem"),
    [("sure, ALLOW", "not JSON"),
     ('{"thesis": "t", "counter_thesis": "c", "risk_flags": [], "recommendation": "YES"}', "recommendation"),
     ('{"thesis": "t", "counter_thesis": "c", "recommendation": "ALLOW", "size": 100}', "size"),
     ('{"thesis": "", "counter_thesis": "c", "recommendation": "ALLOW"}', "thesis")],
)
def test_invalid_answers_are_refused_with_the_reason(text, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        r.parse_answer(text)


def test_fenced_json_is_accepted() -> None:
    body = {"thesis": "t", "counter_thesis": "c", "risk_flags": ["x"], "recommendation": "DENY"}
    assert r.parse_answer("```json\n" + json.dumps(body) + "\n```").recommendation == "DENY"


def test_a_failing_provider_is_a_failed_memo_not_a_failed_stage() -> None:
    class Broken:
        name = "llm"

        def memo(self, _facts):
            raise RuntimeError("boom")

    memo = r.produce_memos([facts()], RULES, Broken())[0]
    assert memo.status == "FAILED" and memo.verdict == "FAILED" and memo.recommendation is None
    assert "REASONING_FAILED" in memo.reason_codes


# --- the memo only adds caution --------------------------------------------------------------


def base_order(order_id: str, reasoning: str) -> dict:
    return {"order_id": order_id, "symbol": "AAPL", "side": "BUY", "qty": 10.0, "market_open": True,
            "quote_age_s": 1.0, "quote_ts": pd.Timestamp(NOW), "symbol_allowed": True, "daily_drawdown": 0.0,
            "event_blackout": False, "liquidity_score": 0.9, "gross_exposure_after": 0.5,
            "gross_exposure_limit": 1.0, "risk_per_trade_nav": 0.001, "confidence": 0.9,
            "reasoning": reasoning, "correlation_to_book": 0.1, "reduces_position": False, "pnl_obs_days": 0.0,
            "pnl_z_vs_model": 0.0, "exec_fill_count": 0.0, "exec_fill_rate": 1.0, "exec_slippage_bps": 0.0,
            "exec_slippage_err_bps": 1.0, "win_count": 0.0, "correlated_win_share": 0.0,
            "data_provider_count": 2.0, "data_quality_score": 0.95}


def test_memo_verdicts_map_to_review_and_never_change_size_or_a_reject() -> None:
    policy = Policies().pre_trade_policy()
    verdicts = ["NONE", "ALLOW", "ALLOW_WITH_CAUTION", "DENY", "FAILED"]
    orders = pd.DataFrame([base_order(v, v) for v in verdicts]
                          + [base_order("closed-allow", "ALLOW") | {"market_open": False}])
    ev = evaluate_orders(orders, policy, NOW, 300)
    d = {o: ev.decision_for(o) for o in [*verdicts, "closed-allow"]}
    assert [d[v]["decision"] for v in verdicts] == ["APPROVE", "APPROVE", "REVIEW", "REVIEW", "REVIEW"]
    assert d["FAILED"]["reasons"] == ("REASONING_FAILED",) and d["DENY"]["reasons"] == ("REASONING_CAUTION",)
    assert d["ALLOW"]["approved_qty"] == d["NONE"]["approved_qty"] == 10.0  # ALLOW adds nothing, removes nothing
    assert all(d[v]["approved_qty"] == 0 for v in ("ALLOW_WITH_CAUTION", "DENY", "FAILED"))
    assert d["closed-allow"]["decision"] == "REJECT"  # a memo never approves what a hard rule rejects


def test_verdict_by_symbol_reads_a_stored_partition() -> None:
    memos = r.memos_frame([r.rule_based_memo(facts(dq=0.5), RULES)])
    assert r.verdict_by_symbol(memos) == {"AAPL": ("ALLOW_WITH_CAUTION", memos["memo_id"].iloc[0])}
    assert r.verdict_by_symbol(pd.DataFrame()) == {}


def test_reasoning_policy_is_validated_with_file_key_and_value(tmp_path) -> None:
    import shutil

    from ais_pipelines.config import DEFAULT_POLICIES_DIR, PolicyFileError

    d = tmp_path / "p"
    shutil.copytree(DEFAULT_POLICIES_DIR, d)
    assert Policies(d).reasoning.provider == "rules" and Policies(d).reasoning.llm.max_output_tokens == 700
    for body, words in [("provider: gpt\n", ["provider", "gpt"]),
                        ("llm: {soft_timeout_s: 20, hard_timeout_s: 15}\n", ["soft_timeout_s", "20"]),
                        ("llm: {max_input_tokens: 9000}\n", ["max_input_tokens", "9000"]),
                        ("rules: {deny_min_flag: 2}\n", ["deny_min_flag"])]:
        (d / "reasoning.yaml").write_text(body)
        with pytest.raises(PolicyFileError) as info:
            _ = Policies(d).reasoning
        assert "reasoning.yaml" in str(info.value) and all(w in str(info.value) for w in words), str(info.value)
