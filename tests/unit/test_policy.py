"""Pre-trade policy and governance vetoes (§H3, §H4): shipped rules, engine semantics, loader errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.policy import (
    CONTEXT_FIELDS,
    POLICY_DIR,
    Action,
    PolicyError,
    PolicySet,
    evaluate_orders,
    load_policies,
    load_policy,
    shipped_policy,
)
from ais_pipelines.core.reason_codes import ReasonCode

NOW = datetime(2025, 3, 4, 15, 30, tzinfo=UTC)
TTL = 120


def clean_order(order_id: str = "o1", **overrides: Any) -> dict[str, Any]:
    """An order that passes every shipped rule; overrides make it hit one."""
    base: dict[str, Any] = {
        "order_id": order_id,
        "qty": 100,
        "market_open": True,
        "quote_age_s": 2.0,
        "symbol_allowed": True,
        "daily_drawdown": 0.01,
        "event_blackout": False,
        "liquidity_score": 0.9,
        "gross_exposure_after": 0.8,
        "gross_exposure_limit": 1.0,
        "risk_per_trade_nav": 0.002,
        "confidence": 0.8,
        "reasoning": "ALLOW",
        "correlation_to_book": 0.1,
        "reduces_position": False,
        "pnl_obs_days": 60,
        "pnl_z_vs_model": 0.5,
        "exec_fill_count": 50,
        "exec_fill_rate": 0.95,
        "exec_slippage_bps": 4.0,
        "exec_slippage_err_bps": 2.0,
        "data_provider_count": 2,
        "data_quality_score": 0.95,
        "win_count": 20,
        "correlated_win_share": 0.3,
    }
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return shipped_policy()


def run(policy: PolicySet, *orders: dict[str, Any]):
    return evaluate_orders(pd.DataFrame(list(orders)), policy, NOW, TTL)


# --------------------------------------------------------------------------------------------
# shipped rules at their boundaries

# (rule id, action, reason code, overrides that hit, overrides just on the passing side)
BOUNDARIES = [
    ("market_closed", "REJECT", "MARKET_CLOSED", {"market_open": False}, {"market_open": True}),
    ("stale_quote", "REJECT", "STALE_QUOTE", {"quote_age_s": 30.000001}, {"quote_age_s": 30.0}),
    ("quote_from_future", "REJECT", "STALE_QUOTE", {"quote_age_s": -5.000001}, {"quote_age_s": -5.0}),
    (
        "symbol_not_allowed",
        "REJECT",
        "SYMBOL_NOT_ALLOWED",
        {"symbol_allowed": False},
        {"symbol_allowed": True},
    ),
    (
        "daily_drawdown_limit",
        "REJECT",
        "DAILY_DRAWDOWN_LIMIT",
        {"daily_drawdown": 0.03},
        {"daily_drawdown": 0.0299999},
    ),
    ("event_blackout", "REJECT", "EVENT_BLACKOUT", {"event_blackout": True}, {"event_blackout": False}),
    ("low_liquidity", "REJECT", "LOW_LIQUIDITY", {"liquidity_score": 0.6999999}, {"liquidity_score": 0.7}),
    (
        "gross_exposure_over_mandate",
        "REJECT",
        "GROSS_EXPOSURE_LIMIT",
        {"gross_exposure_after": 1.2000001, "gross_exposure_limit": 1.2},
        {"gross_exposure_after": 1.2, "gross_exposure_limit": 1.2},
    ),
    (
        "risk_per_trade_limit",
        "REJECT",
        "RISK_PER_TRADE_LIMIT",
        {"risk_per_trade_nav": 0.0050001},
        {"risk_per_trade_nav": 0.005},
    ),
    ("low_confidence", "REVIEW", "LOW_CONFIDENCE", {"confidence": 0.5999999}, {"confidence": 0.6}),
    (
        "reasoning_caution",
        "REVIEW",
        "REASONING_CAUTION",
        {"reasoning": "ALLOW_WITH_CAUTION"},
        {"reasoning": "ALLOW"},
    ),
    ("reasoning_caution", "REVIEW", "REASONING_CAUTION", {"reasoning": "DENY"}, {"reasoning": "NONE"}),
    ("reasoning_failed", "REVIEW", "REASONING_FAILED", {"reasoning": "FAILED"}, {"reasoning": "ALLOW"}),
    (
        "high_correlation_to_book",
        "REVIEW",
        "HIGH_CORRELATION_TO_BOOK",
        {"correlation_to_book": 0.3500001},
        {"correlation_to_book": 0.35},
    ),
    # --- vetoes
    (
        "veto_unexplained_profit",
        "REJECT",
        "VETO_UNEXPLAINED_PROFIT",
        {"pnl_obs_days": 10, "pnl_z_vs_model": 3.0000001},
        {"pnl_obs_days": 10, "pnl_z_vs_model": 3.0},
    ),
    (
        "veto_unexplained_profit",
        "REJECT",
        "VETO_UNEXPLAINED_PROFIT",
        {"pnl_obs_days": 10, "pnl_z_vs_model": 8.0},
        {"pnl_obs_days": 9, "pnl_z_vs_model": 8.0},
    ),
    (
        "veto_too_perfect_execution",
        "REJECT",
        "VETO_TOO_PERFECT_EXECUTION",  # slippage ≈ model
        {"exec_fill_count": 20, "exec_slippage_err_bps": 0.4999999},
        {"exec_fill_count": 20, "exec_slippage_err_bps": 0.5},
    ),
    (
        "veto_too_perfect_execution",
        "REJECT",
        "VETO_TOO_PERFECT_EXECUTION",  # too few fills to judge
        {"exec_fill_count": 20, "exec_slippage_err_bps": 0.0},
        {"exec_fill_count": 19, "exec_slippage_err_bps": 0.0},
    ),
    (
        "veto_too_perfect_execution",
        "REJECT",
        "VETO_TOO_PERFECT_EXECUTION",  # 100 % filled, free
        {"exec_fill_count": 20, "exec_fill_rate": 1.0, "exec_slippage_bps": 0.0},
        {"exec_fill_count": 20, "exec_fill_rate": 1.0, "exec_slippage_bps": 0.0000001},
    ),
    (
        "veto_too_perfect_execution",
        "REJECT",
        "VETO_TOO_PERFECT_EXECUTION",
        {"exec_fill_count": 20, "exec_fill_rate": 1.0, "exec_slippage_bps": -1.0},
        {"exec_fill_count": 20, "exec_fill_rate": 0.9999999, "exec_slippage_bps": -1.0},
    ),
    (
        "veto_data_dependency",
        "REJECT",
        "VETO_DATA_DEPENDENCY",
        {"data_provider_count": 1},
        {"data_provider_count": 2},
    ),
    (
        "veto_data_dependency",
        "REJECT",
        "VETO_DATA_DEPENDENCY",
        {"data_quality_score": 0.7999999},
        {"data_quality_score": 0.8},
    ),
    (
        "veto_correlated_wins",
        "REJECT",
        "VETO_CORRELATED_WINS",
        {"win_count": 10, "correlated_win_share": 0.6000001},
        {"win_count": 10, "correlated_win_share": 0.6},
    ),
    (
        "veto_correlated_wins",
        "REJECT",
        "VETO_CORRELATED_WINS",
        {"win_count": 10, "correlated_win_share": 1.0},
        {"win_count": 9, "correlated_win_share": 1.0},
    ),
]


@pytest.mark.parametrize(("rule_id", "action", "code", "hit", "passing"), BOUNDARIES)
def test_rule_triggers_at_threshold(policy, rule_id, action, code, hit, passing) -> None:
    ev = run(policy, clean_order("hit", **hit), clean_order("pass", **passing))
    d_hit = ev.decision_for("hit")
    assert d_hit["decision"] == action
    assert d_hit["reasons"] == (code,)
    assert d_hit["approved_qty"] == 0
    assert pd.isna(d_hit["expires_at"])
    hits = ev.hits_for("hit")
    assert hits["rule_id"].tolist() == [rule_id]
    assert hits.loc[0, "action"] == action and hits.loc[0, "reason_code"] == code
    assert not hits.loc[0, "undetermined"]

    d_pass = ev.decision_for("pass")
    assert d_pass["decision"] == "APPROVE"
    assert d_pass["reasons"] == ("APPROVED",)
    assert ev.hits_for("pass").empty


def test_every_h3_and_h4_rule_is_shipped_and_tested(policy) -> None:
    shipped = {r.id: (r.action.value, str(r.reason_code)) for r in policy.rules}
    tested = {b[0]: (b[1], b[2]) for b in BOUNDARIES}
    assert shipped == tested
    h3_reject = {
        "MARKET_CLOSED",
        "STALE_QUOTE",
        "SYMBOL_NOT_ALLOWED",
        "DAILY_DRAWDOWN_LIMIT",
        "EVENT_BLACKOUT",
        "LOW_LIQUIDITY",
        "GROSS_EXPOSURE_LIMIT",
        "RISK_PER_TRADE_LIMIT",
    }
    h3_review = {"LOW_CONFIDENCE", "REASONING_CAUTION", "HIGH_CORRELATION_TO_BOOK",
                 "REASONING_FAILED"}  # issue 16: no valid memo → the declared rule (REVIEW)
    vetoes = {
        "VETO_UNEXPLAINED_PROFIT",
        "VETO_TOO_PERFECT_EXECUTION",
        "VETO_DATA_DEPENDENCY",
        "VETO_CORRELATED_WINS",
    }
    assert {c for a, c in shipped.values() if a == "REJECT"} == h3_reject | vetoes
    assert {c for a, c in shipped.values() if a == "REVIEW"} == h3_review
    assert {
        n for n, r in zip(policy.policy_names, policy.rules, strict=True) if str(r.reason_code) in vetoes
    } == {"vetoes"}


@pytest.mark.parametrize("memo", ["allow_with_caution", " Allow_With_Caution ", "DENY", "SOMETHING_ELSE"])
def test_reasoning_other_than_plain_allow_goes_to_review(policy, memo) -> None:
    d = run(policy, clean_order(reasoning=memo)).decision_for("o1")
    assert (d["decision"], d["reasons"]) == ("REVIEW", ("REASONING_CAUTION",))


@pytest.mark.parametrize("memo", ["NONE", "ALLOW", "allow", None, "", np.nan])
def test_reasoning_none_or_allow_never_blocks(policy, memo) -> None:
    d = run(policy, clean_order(reasoning=memo)).decision_for("o1")
    assert d["decision"] == "APPROVE"


def test_reasoning_column_absent_never_blocks(policy) -> None:
    order = clean_order()
    del order["reasoning"]
    ev = run(policy, order)
    assert ev.decision_for("o1")["decision"] == "APPROVE"
    assert ev.hits.empty


RISK_BUDGET_BREACHES = {
    "symbol_not_allowed": {"symbol_allowed": False},
    "daily_drawdown_limit": {"daily_drawdown": 0.05},
    "gross_exposure_over_mandate": {"gross_exposure_after": 1.5},
    "risk_per_trade_limit": {"risk_per_trade_nav": 0.02},
    "low_liquidity": {"liquidity_score": 0.2},  # §C4: a position whose liquidity collapsed can still be sold
    "low_confidence": {"confidence": 0.1},
    "high_correlation_to_book": {"correlation_to_book": 0.9},
    "veto_unexplained_profit": {"pnl_z_vs_model": 9.0},
    "veto_too_perfect_execution": {"exec_slippage_err_bps": 0.0},
    "veto_data_dependency": {"data_provider_count": 1},
    "veto_correlated_wins": {"correlated_win_share": 0.99},
}


@pytest.mark.parametrize("rule_id", sorted(RISK_BUDGET_BREACHES))
def test_risk_reducing_orders_are_exempt_from_risk_budget_rules(policy, rule_id) -> None:
    breach = RISK_BUDGET_BREACHES[rule_id]
    ev = run(policy, clean_order("open", **breach), clean_order("reduce", reduces_position=True, **breach))
    assert ev.hits_for("open")["rule_id"].tolist() == [rule_id]
    assert ev.decision_for("reduce")["decision"] == "APPROVE"


@pytest.mark.parametrize(
    "breach",
    [
        {"market_open": False},
        {"quote_age_s": 45.0},
        {"event_blackout": True},
        {"reasoning": "ALLOW_WITH_CAUTION"},
    ],
)
def test_market_and_data_rules_apply_to_risk_reducing_orders_too(policy, breach) -> None:
    d = run(policy, clean_order(reduces_position=True, **breach)).decision_for("o1")
    assert d["decision"] != "APPROVE"


def test_reduces_position_absent_means_risk_increasing(policy) -> None:
    order = clean_order(daily_drawdown=0.05)
    del order["reduces_position"]
    ev = run(policy, order)
    d = ev.decision_for("o1")
    assert d["reasons"] == ("DAILY_DRAWDOWN_LIMIT",)
    assert not d["undetermined"]


def test_new_strategy_without_history_is_not_vetoed(policy) -> None:
    # Zero counts prove the veto does not apply even though the statistics are undefined.
    order = clean_order(
        pnl_obs_days=0,
        pnl_z_vs_model=np.nan,
        exec_fill_count=0,
        exec_fill_rate=np.nan,
        exec_slippage_bps=np.nan,
        exec_slippage_err_bps=np.nan,
        win_count=0,
        correlated_win_share=np.nan,
    )
    ev = run(policy, order)
    assert ev.decision_for("o1")["decision"] == "APPROVE"
    assert ev.hits.empty


# --------------------------------------------------------------------------------------------
# precedence, outputs, hits


def test_precedence_reject_over_review(policy) -> None:
    ev = run(policy, clean_order(quote_age_s=45.0, confidence=0.3, correlation_to_book=0.9))
    d = ev.decision_for("o1")
    assert d["decision"] == "REJECT"
    assert d["reasons"] == ("HIGH_CORRELATION_TO_BOOK", "LOW_CONFIDENCE", "STALE_QUOTE")
    assert d["reason_codes"] == "HIGH_CORRELATION_TO_BOOK;LOW_CONFIDENCE;STALE_QUOTE"
    assert d["approved_qty"] == 0 and pd.isna(d["expires_at"])


def test_review_only_is_review(policy) -> None:
    d = run(policy, clean_order(confidence=0.3, correlation_to_book=0.9)).decision_for("o1")
    assert d["decision"] == "REVIEW"
    assert d["reasons"] == ("HIGH_CORRELATION_TO_BOOK", "LOW_CONFIDENCE")
    assert d["approved_qty"] == 0 and pd.isna(d["expires_at"])


def test_no_hit_approves_full_size_with_expiry(policy) -> None:
    ev = run(policy, clean_order(qty=250))
    d = ev.decision_for("o1")
    assert d["decision"] == "APPROVE"
    assert d["reasons"] == ("APPROVED",) and d["reason_codes"] == "APPROVED"
    assert d["approved_qty"] == 250 and d["requested_qty"] == 250
    assert d["expires_at"] == pd.Timestamp(NOW + timedelta(seconds=TTL))
    assert str(ev.decisions["expires_at"].dtype) == "datetime64[ns, UTC]"
    assert d["n_hits"] == 0 and not d["undetermined"]
    assert ev.policy_digest == policy.digest
    assert ev.evaluated_at == NOW


def test_every_hit_is_recorded_with_observed_values(policy) -> None:
    many = clean_order(
        "bad",
        market_open=False,
        quote_age_s=99.0,
        symbol_allowed=False,
        daily_drawdown=0.04,
        event_blackout=True,
        liquidity_score=0.1,
        gross_exposure_after=2.0,
        risk_per_trade_nav=0.01,
        confidence=0.1,
        reasoning="ALLOW_WITH_CAUTION",
        correlation_to_book=0.8,
        pnl_z_vs_model=5.0,
        exec_slippage_err_bps=0.0,
        data_provider_count=1,
        correlated_win_share=0.9,
    )
    ev = run(policy, clean_order("good"), many)
    hits = ev.hits
    # a memo verdict is either FAILED or a recommendation: reasoning_failed cannot fire with it
    expected = [r.id for r in policy.rules if r.id not in ("quote_from_future", "reasoning_failed")]
    assert hits["rule_id"].tolist() == expected  # ordered by order, then by rule order
    assert set(hits["order_id"]) == {"bad"}
    assert ev.decision_for("bad")["n_hits"] == len(expected)
    assert ev.decision_for("bad")["reasons"] == tuple(
        sorted({str(policy.rule(r).reason_code) for r in expected})
    )
    observed = dict(zip(hits["rule_id"], hits["observed"].map(json.loads), strict=True))
    assert observed["stale_quote"] == {"quote_age_s": 99}
    assert observed["gross_exposure_over_mandate"] == {
        "gross_exposure_after": 2,
        "gross_exposure_limit": 1,
        "reduces_position": False,
    }
    assert observed["reasoning_caution"] == {"reasoning": "ALLOW_WITH_CAUTION"}
    assert observed["veto_data_dependency"] == {
        "reduces_position": False,
        "data_provider_count": 1,
        "data_quality_score": 0.95,
    }
    assert list(hits.columns) == [
        "order_id",
        "rule_id",
        "policy",
        "action",
        "reason_code",
        "undetermined",
        "observed",
    ]
    assert set(hits["policy"]) == {"pre_trade", "vetoes"}


def test_hits_sorted_by_order_then_rule_and_decisions_keep_input_order(policy) -> None:
    ev = run(
        policy,
        clean_order("c", confidence=0.1),
        clean_order("a"),
        clean_order("b", market_open=False, correlation_to_book=0.9),
    )
    assert ev.decisions["order_id"].tolist() == ["c", "a", "b"]
    assert ev.decisions["decision"].tolist() == ["REVIEW", "APPROVE", "REJECT"]
    assert list(zip(ev.hits["order_id"], ev.hits["rule_id"], strict=True)) == [
        ("c", "low_confidence"),
        ("b", "market_closed"),
        ("b", "high_correlation_to_book"),
    ]


def test_empty_batch(policy) -> None:
    ev = evaluate_orders(pd.DataFrame(columns=list(clean_order())), policy, NOW, TTL)
    assert ev.decisions.empty and ev.hits.empty
    assert "decision" in ev.decisions.columns and "observed" in ev.hits.columns


def test_batch_equals_one_by_one(policy) -> None:
    rng = np.random.default_rng(7)
    n = 300
    df = pd.DataFrame([clean_order(f"o{i}") for i in range(n)])
    df["quote_age_s"] = rng.uniform(-10, 40, n)
    df["confidence"] = rng.uniform(0.4, 1.0, n)
    df["daily_drawdown"] = rng.uniform(0, 0.04, n)
    df["correlation_to_book"] = rng.uniform(-0.2, 0.5, n)
    df["reduces_position"] = rng.random(n) < 0.3
    df.loc[rng.random(n) < 0.05, "liquidity_score"] = np.nan
    batch = evaluate_orders(df, policy, NOW, TTL)
    for i in range(n):
        single = evaluate_orders(df.iloc[[i]], policy, NOW, TTL)
        b = batch.decisions.iloc[i]
        s = single.decisions.iloc[0]
        assert (b["decision"], b["reasons"], b["n_hits"]) == (s["decision"], s["reasons"], s["n_hits"])
        assert batch.hits_for(b["order_id"])["observed"].tolist() == single.hits["observed"].tolist()


# --------------------------------------------------------------------------------------------
# fail closed on missing inputs


def test_missing_context_column_fails_closed(policy) -> None:
    df = pd.DataFrame([clean_order("o1"), clean_order("o2")]).drop(columns=["quote_age_s"])
    ev = evaluate_orders(df, policy, NOW, TTL)
    for oid in ("o1", "o2"):
        d = ev.decision_for(oid)
        assert d["decision"] == "REJECT"
        assert d["reasons"] == ("MISSING_VALUE", "STALE_QUOTE")
        assert d["undetermined"]
        hits = ev.hits_for(oid)
        assert hits["rule_id"].tolist() == ["stale_quote", "quote_from_future"]
        assert hits["undetermined"].all()
        assert hits["observed"].tolist() == ['{"quote_age_s":null}'] * 2


@pytest.mark.parametrize(
    ("column", "code"),
    [
        ("market_open", "MARKET_CLOSED"),
        ("symbol_allowed", "SYMBOL_NOT_ALLOWED"),
        ("liquidity_score", "LOW_LIQUIDITY"),
        ("gross_exposure_limit", "GROSS_EXPOSURE_LIMIT"),
        ("confidence", "LOW_CONFIDENCE"),
        ("data_quality_score", "VETO_DATA_DEPENDENCY"),
        ("exec_slippage_err_bps", "VETO_TOO_PERFECT_EXECUTION"),
        ("pnl_z_vs_model", "VETO_UNEXPLAINED_PROFIT"),
    ],
)
def test_each_missing_column_hits_its_rule(policy, column, code) -> None:
    df = pd.DataFrame([clean_order()]).drop(columns=[column])
    d = evaluate_orders(df, policy, NOW, TTL).decision_for("o1")
    assert d["reasons"] == tuple(sorted({code, "MISSING_VALUE"}))
    assert d["decision"] == ("REVIEW" if code == "LOW_CONFIDENCE" else "REJECT")


@pytest.mark.parametrize("bad", [None, np.nan, "thirty", "", pd.NA, True, [0.9]])
def test_unusable_cell_fails_closed_for_that_order_only(policy, bad) -> None:
    df = pd.DataFrame([clean_order("bad"), clean_order("ok")], dtype=object)
    df.loc[0, "liquidity_score"] = bad
    ev = evaluate_orders(df, policy, NOW, TTL)
    assert ev.decision_for("bad")["reasons"] == ("LOW_LIQUIDITY", "MISSING_VALUE")
    assert ev.decision_for("ok")["decision"] == "APPROVE"


@pytest.mark.parametrize("bad", [None, "yes", 2, np.nan])
def test_non_boolean_flag_is_unknown(policy, bad) -> None:
    df = pd.DataFrame([clean_order("bad"), clean_order("ok")], dtype=object)
    df.loc[0, "event_blackout"] = bad
    ev = evaluate_orders(df, policy, NOW, TTL)
    assert ev.decision_for("bad")["reasons"] == ("EVENT_BLACKOUT", "MISSING_VALUE")
    assert ev.hits_for("bad")["observed"].tolist() == ['{"event_blackout":null}']
    assert ev.decision_for("ok")["decision"] == "APPROVE"


def test_missing_count_makes_veto_undetermined(policy) -> None:
    # A high share with an unknown number of wins cannot be waved through ...
    d = run(policy, clean_order(win_count=None, correlated_win_share=0.9)).decision_for("o1")
    assert d["reasons"] == ("MISSING_VALUE", "VETO_CORRELATED_WINS")
    # ... but a known low share proves the veto false whatever the count is.
    assert (
        run(policy, clean_order(win_count=None, correlated_win_share=0.3)).decision_for("o1")["decision"]
        == "APPROVE"
    )


def test_known_false_part_beats_missing_part(policy) -> None:
    # all(false, unknown) is false: too few fills, so unknown slippage statistics do not matter.
    df = pd.DataFrame([clean_order(exec_fill_count=3)]).drop(
        columns=["exec_fill_rate", "exec_slippage_bps", "exec_slippage_err_bps"]
    )
    assert evaluate_orders(df, policy, NOW, TTL).decision_for("o1")["decision"] == "APPROVE"


def test_numbers_as_text_timedeltas_and_flags(policy) -> None:
    df = pd.DataFrame([clean_order("text"), clean_order("td"), clean_order("flag")])
    df["quote_age_s"] = pd.Series(["12.5", pd.Timedelta(seconds=40), 3.0], dtype=object)
    ev = evaluate_orders(df, policy, NOW, TTL)
    assert ev.decision_for("text")["decision"] == "APPROVE"  # numeric text is a number
    assert ev.decision_for("td")["reasons"] == ("MISSING_VALUE", "STALE_QUOTE")  # mixed object: unknown
    td = pd.DataFrame([clean_order("td")]).assign(quote_age_s=pd.to_timedelta([40], unit="s"))
    assert evaluate_orders(td, policy, NOW, TTL).hits["observed"].tolist() == ['{"quote_age_s":40}']
    flags = pd.DataFrame([clean_order("flag")]).assign(liquidity_score=True)  # a bool column is not a score
    assert evaluate_orders(flags, policy, NOW, TTL).decision_for("flag")["reasons"] == (
        "LOW_LIQUIDITY",
        "MISSING_VALUE",
    )


def test_integer_order_ids_keep_their_type(policy) -> None:
    ev = run(policy, clean_order(7), clean_order(8, market_open=False))
    assert ev.decisions["order_id"].tolist() == [7, 8]
    assert ev.hits["order_id"].tolist() == [8]
    assert ev.decision_for(8)["decision"] == "REJECT"


def test_quote_age_is_derived_from_quote_ts(policy) -> None:
    orders = [clean_order(f"age{s}", quote_ts=NOW - timedelta(seconds=s)) for s in (30, 31)]
    for o in orders:
        del o["quote_age_s"]
    ev = run(policy, *orders)
    assert ev.decision_for("age30")["decision"] == "APPROVE"
    assert ev.decision_for("age31")["reasons"] == ("STALE_QUOTE",)
    assert ev.hits_for("age31")["observed"].tolist() == ['{"quote_age_s":31}']


# --------------------------------------------------------------------------------------------
# input validation


def test_input_contract(policy) -> None:
    df = pd.DataFrame([clean_order()])
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_orders(df, policy, datetime(2025, 1, 1), TTL)
    with pytest.raises(ValueError, match="approval_ttl_s"):
        evaluate_orders(df, policy, NOW, 0)
    with pytest.raises(ValueError, match="qty"):
        evaluate_orders(df.drop(columns=["qty"]), policy, NOW, TTL)
    with pytest.raises(ValueError, match="unique"):
        evaluate_orders(pd.concat([df, df]), policy, NOW, TTL)
    with pytest.raises(ValueError, match="finite"):
        evaluate_orders(df.assign(qty=np.nan), policy, NOW, TTL)


# --------------------------------------------------------------------------------------------
# the engine's operators on a synthetic policy


def write(tmp_path: Path, body: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


OPERATOR_POLICY = """
version: 1
name: ops
rules:
  - {id: r_lt, description: d, action: REJECT, reason_code: LOW_LIQUIDITY, when: {field: liquidity_score, op: lt, value: 0.5}}
  - {id: r_le, description: d, action: REJECT, reason_code: LOW_LIQUIDITY, when: {field: liquidity_score, op: le, value: 0.5}}
  - {id: r_gt, description: d, action: REJECT, reason_code: STALE_QUOTE, when: {field: quote_age_s, op: gt, value: 10}}
  - {id: r_ge, description: d, action: REJECT, reason_code: STALE_QUOTE, when: {field: quote_age_s, op: ge, value: 10}}
  - {id: r_eq, description: d, action: REVIEW, reason_code: LOW_CONFIDENCE, when: {field: confidence, op: eq, value: 0.5}}
  - {id: r_ne, description: d, action: REVIEW, reason_code: LOW_CONFIDENCE, when: {field: confidence, op: ne, value: 0.5}}
  - {id: r_in, description: d, action: REJECT, reason_code: VETO_DATA_DEPENDENCY, when: {field: data_provider_count, op: in, value: [0, 1]}}
  - {id: r_not_in, description: d, action: REJECT, reason_code: VETO_DATA_DEPENDENCY, when: {field: data_provider_count, op: not_in, value: [0, 1]}}
  - {id: r_is_true, description: d, action: REJECT, reason_code: EVENT_BLACKOUT, when: {field: event_blackout, op: is_true}}
  - {id: r_is_false, description: d, action: REJECT, reason_code: EVENT_BLACKOUT, when: {field: event_blackout, op: is_false}}
  - {id: r_bool_eq, description: d, action: REJECT, reason_code: MARKET_CLOSED, when: {field: market_open, op: eq, value: false}}
  - {id: r_field_ge, description: d, action: REJECT, reason_code: GROSS_EXPOSURE_LIMIT, when: {field: gross_exposure_after, op: ge, value_field: gross_exposure_limit}}
  - {id: r_field_bool_eq, description: d, action: REJECT, reason_code: MARKET_CLOSED, when: {field: market_open, op: eq, value_field: symbol_allowed}}
  - {id: r_cat_in, description: d, action: REVIEW, reason_code: REASONING_CAUTION, when: {field: reasoning, op: in, value: [DENY]}}
  - id: r_not
    description: d
    action: REJECT
    reason_code: MARKET_CLOSED
    when: {not: {field: market_open, op: is_true}}
  - id: r_any_all
    description: d
    action: REVIEW
    reason_code: LOW_CONFIDENCE
    params: {lo: 0.2, hi: 0.9}
    when:
      any:
        - {field: confidence, op: lt, value_param: lo}
        - all:
            - {field: confidence, op: gt, value_param: hi}
            - {not: {field: market_open, op: is_false}}
"""


def test_operators(tmp_path) -> None:
    pol = load_policy(write(tmp_path, OPERATOR_POLICY))
    rows = [
        {
            "order_id": "a",
            "qty": 1,
            "liquidity_score": 0.5,
            "quote_age_s": 10.0,
            "confidence": 0.5,
            "data_provider_count": 1,
            "event_blackout": True,
            "market_open": True,
            "symbol_allowed": True,
            "gross_exposure_after": 1.0,
            "gross_exposure_limit": 1.0,
            "reasoning": "deny",
        },
        {
            "order_id": "b",
            "qty": 1,
            "liquidity_score": 0.49,
            "quote_age_s": 10.5,
            "confidence": 0.95,
            "data_provider_count": 3,
            "event_blackout": False,
            "market_open": False,
            "symbol_allowed": True,
            "gross_exposure_after": 0.9,
            "gross_exposure_limit": 1.0,
            "reasoning": "ALLOW",
        },
        {
            "order_id": "c",
            "qty": 1,
            "liquidity_score": 0.9,
            "quote_age_s": 1.0,
            "confidence": 0.95,
            "data_provider_count": 2,
            "event_blackout": False,
            "market_open": True,
            "symbol_allowed": False,
            "gross_exposure_after": 0.9,
            "gross_exposure_limit": 1.0,
            "reasoning": None,
        },
    ]
    ev = evaluate_orders(pd.DataFrame(rows), pol, NOW, TTL)
    got = {oid: set(ev.hits_for(oid)["rule_id"]) for oid in "abc"}
    assert got["a"] == {
        "r_le",
        "r_ge",
        "r_eq",
        "r_in",
        "r_is_true",
        "r_field_ge",
        "r_field_bool_eq",
        "r_cat_in",
    }
    assert got["b"] == {
        "r_lt",
        "r_le",
        "r_gt",
        "r_ge",
        "r_ne",
        "r_not_in",
        "r_is_false",
        "r_bool_eq",
        "r_not",
    }
    assert got["c"] == {"r_ne", "r_not_in", "r_is_false", "r_any_all"}


# --------------------------------------------------------------------------------------------
# loader errors name the file, the rule and the key


RULE = """
version: 1
name: t
rules:
  - id: first
    description: fine
    action: REJECT
    reason_code: MARKET_CLOSED
    when: {{field: market_open, op: is_false}}
  - id: broken
    description: the rule under test
    action: {action}
    reason_code: {code}
    when: {when}
"""


def broken(
    tmp_path: Path,
    when: str = "{field: quote_age_s, op: gt, value: 30}",
    action: str = "REJECT",
    code: str = "STALE_QUOTE",
) -> Path:
    return write(tmp_path, RULE.format(when=when, action=action, code=code))


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"when": "{field: quote_agе_s, op: gt, value: 30}"}, ["when.field", "unknown field", "quote_agе_s"]),
        ({"when": "{field: quote_age, op: gt, value: 30}"}, ["when.field", "unknown field 'quote_age'"]),
        ({"when": "{field: quote_age_s, op: gte, value: 30}"}, ["when.op", "unknown operator 'gte'"]),
        ({"when": "{field: quote_age_s, op: gt, value: thirty}"}, ["value", "is a number", "'thirty'"]),
        ({"when": "{field: quote_age_s, op: gt, value: true}"}, ["value", "is a number", "True"]),
        ({"when": "{field: market_open, op: eq, value: 1}"}, ["value", "is a bool", "1"]),
        ({"when": "{field: reasoning, op: eq, value: ALLOW_WITH_CAUTON}"}, ["value", "ALLOW_WITH_CAUTON"]),
        ({"when": "{field: quote_age_s, op: in, value: 30}"}, ["value", "non-empty list"]),
        ({"when": "{field: market_open, op: gt, value: 1}"}, ["op 'gt'", "bool field 'market_open'"]),
        ({"when": "{field: quote_age_s, op: gt}"}, ["needs exactly one of value"]),
        ({"when": "{field: market_open, op: is_true, value: true}"}, ["value", "takes no value"]),
        ({"when": "{field: quote_age_s, op: gt, value: 1, limit: 2}"}, ["when.limit", "Extra inputs"]),
        ({"when": "{field: quote_age_s, op: gt, value_field: market_open}"}, ["value_field", "market_open"]),
        (
            {"when": "{field: quote_age_s, op: gt, value_field: nope}"},
            ["when.value_field", "unknown field 'nope'"],
        ),
        (
            {"when": "{field: quote_age_s, op: gt, value_param: max_age}"},
            ["value_param", "max_age", "not declared"],
        ),
        ({"when": "{bogus: 1}"}, ["when", "exactly one of 'field', 'all', 'any', 'not'"]),
        ({"when": "{all: []}"}, ["when.all", "at least 1"]),
        ({"when": "{all: [{field: confidence, op: lt, value: low}]}"}, ["when.all[0]", "value", "'low'"]),
        ({"code": "STALE_QUOT"}, ["reason_code", "unknown reason code 'STALE_QUOT'"]),
        ({"action": "BLOCK"}, ["action", "'BLOCK'"]),
    ],
)
def test_loader_errors_name_file_rule_and_key(tmp_path, kwargs, fragments) -> None:
    path = broken(tmp_path, **kwargs)
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: rule 'broken': "), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert exc.value.rule_id == "broken" and exc.value.path == str(path)
    assert exc.value.reason is ReasonCode.POLICY_UNREADABLE


def test_loader_rejects_unknown_rule_key_and_unused_param(tmp_path) -> None:
    p1 = write(
        tmp_path,
        RULE.format(
            when="{field: quote_age_s, op: gt, value: 30}\n    severity: high",
            action="REJECT",
            code="STALE_QUOTE",
        ),
    )
    with pytest.raises(
        PolicyError, match=r"rule 'broken': severity: Extra inputs are not permitted \(got 'high'\)"
    ):
        load_policy(p1)
    p2 = write(
        tmp_path,
        RULE.format(
            when="{field: quote_age_s, op: gt, value: 30}\n    params: {spare: 1}",
            action="REJECT",
            code="STALE_QUOTE",
        ),
        "p2.yaml",
    )
    with pytest.raises(PolicyError, match=r"rule 'broken': params: \['spare'\] declared but never used"):
        load_policy(p2)
    p3 = write(
        tmp_path,
        RULE.format(
            when="{field: quote_age_s, op: gt, value_param: m}\n    params: {m: fast}",
            action="REJECT",
            code="STALE_QUOTE",
        ),
        "p3.yaml",
    )
    with pytest.raises(
        PolicyError, match=r"rule 'broken': params.m: field 'quote_age_s' is a number; got 'fast'"
    ):
        load_policy(p3)


def test_duplicate_rule_id(tmp_path) -> None:
    path = write(
        tmp_path,
        RULE.format(
            when="{field: quote_age_s, op: gt, value: 30}", action="REJECT", code="STALE_QUOTE"
        ).replace("id: broken", "id: first"),
    )
    with pytest.raises(PolicyError, match=rf"^{path}: rule 'first': id: duplicate rule id 'first'$"):
        load_policy(path)


def test_duplicate_rule_id_across_files(tmp_path) -> None:
    a = write(
        tmp_path,
        RULE.format(when="{field: quote_age_s, op: gt, value: 30}", action="REJECT", code="STALE_QUOTE"),
        "a.yaml",
    )
    b = write(tmp_path, a.read_text().replace("name: t", "name: u"), "b.yaml")
    with pytest.raises(PolicyError, match="duplicate rule id") as exc:
        load_policies([a, b])
    assert str(a) in str(exc.value) and str(b) in str(exc.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("version: 1\nname: t\nrules:\n  - id: x\n    when: {field: a, op: [\n", "malformed YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("version: 2\nname: t\nrules: [{id: x}]\n", "unsupported policy version 2"),
        ("version: 1\nname: t\nrules: []\n", "rules: List should have at least 1 item"),
        ("version: 1\nname: t\nrules: [{id: x}]\nextra: 1\n", "extra: Extra inputs are not permitted"),
        ("", "top level must be a mapping"),
    ],
)
def test_file_level_errors(tmp_path, body, fragment) -> None:
    path = write(tmp_path, body)
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert fragment in str(exc.value)


def test_rule_missing_keys_named(tmp_path) -> None:
    path = write(tmp_path, "version: 1\nname: t\nrules:\n  - id: lonely\n    action: REJECT\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: rule 'lonely': ")
    for key in ("description: Field required", "reason_code: Field required", "when: Field required"):
        assert key in msg


def test_empty_policy_set_refused() -> None:
    with pytest.raises(PolicyError, match="at least one rule"):
        PolicySet((), (), ())


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------------
# shipped files and schema


def test_shipped_policy_files_load_and_digest_is_stable() -> None:
    a = shipped_policy()
    b = load_policies([POLICY_DIR / "pre_trade.yaml", POLICY_DIR / "vetoes.yaml"])
    assert a.digest == b.digest and len(a.digest) == 64
    assert all(r.action in (Action.REJECT, Action.REVIEW) for r in a.rules)
    vetoes = load_policy(POLICY_DIR / "vetoes.yaml")
    assert {r.action for r in vetoes.rules} == {Action.REJECT}
    assert set(a.fields) <= set(CONTEXT_FIELDS)


def test_digest_changes_with_a_threshold(tmp_path) -> None:
    text = (POLICY_DIR / "pre_trade.yaml").read_text()
    changed = write(tmp_path, text.replace("max_quote_age_s: 30", "max_quote_age_s: 31"))
    assert load_policy(changed).digest != load_policy(POLICY_DIR / "pre_trade.yaml").digest


def test_every_context_field_is_documented_in_the_yaml() -> None:
    text = (POLICY_DIR / "pre_trade.yaml").read_text() + (POLICY_DIR / "vetoes.yaml").read_text()
    for name, spec in CONTEXT_FIELDS.items():
        assert spec.description
        assert f"#   {name} " in text, name
