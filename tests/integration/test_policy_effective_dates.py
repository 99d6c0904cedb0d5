"""Issue 13: policy effective dates, point in time. As of D the version of a policy file in force
on D is used; a change dated after D is not applied at D, and is applied from its date on."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import exchange_calendars as xcals
import pytest
import yaml

from ais_pipelines.config import Policies, PolicyFileError
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.policy_versions import PolicyNotInForceError
from tests.integration.test_as_of_partitions import materialize_night, us_stocks_2008_2013

CHANGE = date(2013, 12, 2)


def _change_quality(policies_dir: Path, since: date = CHANGE, kept_since: date | None = date(2000, 1, 3)) -> None:
    """Keep the shipped quality.yaml as the version in force from ``kept_since``; the current
    file demands 2,000 valid sessions from ``since`` on."""
    current = policies_dir / "quality.yaml"
    old = yaml.safe_load(current.read_text())
    kept = policies_dir / "versions" / "quality" / "before-change.yaml"
    kept.parent.mkdir(parents=True)
    kept.write_text(yaml.safe_dump({**({"effective_from": kept_since} if kept_since else {}), **old}))
    new = {**old, "effective_from": since, "history": {"min_valid_sessions": 2000, "fetch_sessions": 2000}}
    current.write_text(yaml.safe_dump(new))


def test_the_version_in_force_on_d_is_loaded(policies_dir: Path) -> None:
    _change_quality(policies_dir)
    pol = Policies(policies_dir)
    assert pol.quality.history.min_valid_sessions == 2000  # no as-of: the current file
    assert pol.as_of_session(date(2013, 11, 29)).quality.history.min_valid_sessions == 1260
    assert pol.as_of_session(CHANGE).quality.history.min_valid_sessions == 2000  # applied on its date
    assert pol.as_of_session(date(2026, 1, 2)).quality.history.min_valid_sessions == 2000
    assert pol.as_of_session(date(2013, 11, 29)).risk == pol.risk  # unversioned files: in force since always
    with pytest.raises(PolicyNotInForceError) as exc:
        pol.as_of_session(date(1999, 12, 31)).quality  # noqa: B018
    assert exc.value.reason_code == ReasonCode.POLICY_NOT_IN_FORCE
    assert "quality.yaml: no version in force on 1999-12-31" in str(exc.value) and "2000-01-03" in str(exc.value)
    assert [e.reason_code for e in pol.as_of_session(date(1999, 12, 31)).check()] == [ReasonCode.POLICY_NOT_IN_FORCE]
    assert pol.check() == []  # kept versions validate


def test_bad_effective_dates_are_refused_naming_file_key_and_value(policies_dir: Path) -> None:
    risk = policies_dir / "risk.yaml"
    risk.write_text("effective_from: soon\n" + risk.read_text())
    with pytest.raises(PolicyFileError) as exc:
        Policies(policies_dir).risk  # noqa: B018
    assert str(exc.value).endswith("risk.yaml: effective_from: not a date YYYY-MM-DD (got 'soon')")

    _change_quality(policies_dir, kept_since=None)  # a kept version must say when it took effect
    problems = [f"{e.path}: {p}" for e in Policies(policies_dir).check() for p in e.problems]
    assert any("versions/quality/before-change.yaml: effective_from: required" in p for p in problems), problems

    kept = policies_dir / "versions" / "quality" / "before-change.yaml"
    data = yaml.safe_load(kept.read_text())
    kept.write_text(yaml.safe_dump({**data, "effective_from": CHANGE, "score": {**data["score"], "invalid_below": 7}}))
    problems = [f"{e.path}: {p}" for e in Policies(policies_dir).check() for p in e.problems]
    assert any("/quality.yaml: effective_from: 2013-12-02 is also declared by" in p and p.endswith(
        "versions/quality/before-change.yaml (got 2013-12-02)") for p in problems), problems
    assert any("before-change.yaml: score.invalid_below:" in p and "got 7" in p for p in problems), problems


def test_the_nightly_quality_step_applies_a_change_only_from_its_date(policies_dir: Path, tmp_path: Path) -> None:
    from assets.ingestion import daily_bars, raw_daily_bars
    from assets.quality import data_quality

    us_stocks_2008_2013(policies_dir, tmp_path)
    _change_quality(policies_dir)
    materialize_night(policies_dir, tmp_path, str(CHANGE), [raw_daily_bars, daily_bars, data_quality])
    materialize_night(policies_dir, tmp_path, "2013-11-29", [data_quality])
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT as_of, status, expected_sessions FROM data_quality WHERE symbol = 'IBM' "
                           "ORDER BY as_of").fetchall()
    finally:
        con.close()
    held = len(xcals.get_calendar("XNYS").sessions_in_range("2008-01-02", CHANGE))
    assert rows == [(date(2013, 11, 29), "VALID", 1320),  # the change is dated after D: not applied
                    (CHANGE, "INSUFFICIENT_HISTORY", held)]  # from its date: 2,000 sessions asked, fewer held


def _tighten_risk_per_trade(policies_dir: Path, since: date = CHANGE) -> None:
    """The shipped pre_trade.yaml kept as in force from 2000-01-03; the current one, from
    ``since``, halves the per-trade risk limit."""
    current = policies_dir / "pre_trade.yaml"
    text = current.read_text()
    kept = policies_dir / "versions" / "pre_trade" / "shipped.yaml"
    kept.parent.mkdir(parents=True)
    kept.write_text("effective_from: 2000-01-03\n" + text)
    assert "params: {max_risk_per_trade_nav: 0.005}" in text
    current.write_text(f"effective_from: {since}\n"
                       + text.replace("params: {max_risk_per_trade_nav: 0.005}", "params: {max_risk_per_trade_nav: 0.0025}"))


def _limit(policy) -> float:
    return next(r for r in policy.rules if r.id == "risk_per_trade_limit").params["max_risk_per_trade_nav"]


def test_pre_trade_rules_are_the_version_in_force_on_d(policies_dir: Path) -> None:
    """The governance rules (pre_trade.yaml, vetoes.yaml) follow effective dates too: the
    execution path of D (and an approval of an item decided on D) evaluates D's rules, and the
    digest recorded with each decision says which version decided."""
    from ais_pipelines.core.policy import PolicyError
    from ais_pipelines.execution import load_environment_policy, load_execution_policies

    _tighten_risk_per_trade(policies_dir)
    pol = Policies(policies_dir)
    before, after = pol.as_of_session(date(2013, 11, 29)), pol.as_of_session(CHANGE)
    assert _limit(before.pre_trade_policy()) == 0.005 and _limit(after.pre_trade_policy()) == 0.0025
    assert _limit(pol.pre_trade_policy()) == 0.0025  # no as-of: the current files
    old = load_execution_policies(before, "ci")
    new = load_execution_policies(after, "ci")
    assert _limit(old.policy) == 0.005 and _limit(new.policy) == 0.0025
    assert old.digest != new.digest
    assert load_environment_policy("ci", policies_dir, as_of=date(2014, 6, 2)).digest == new.digest
    with pytest.raises(PolicyError) as exc:
        load_environment_policy("ci", policies_dir, as_of=date(1999, 12, 31))
    assert exc.value.reason == ReasonCode.POLICY_NOT_IN_FORCE
    assert "pre_trade.yaml: no version in force on 1999-12-31" in str(exc.value)
    assert pol.check() == [] and before.check() == []


def test_a_broken_kept_rule_version_is_refused_by_validation(policies_dir: Path) -> None:
    _tighten_risk_per_trade(policies_dir)
    kept = policies_dir / "versions" / "pre_trade" / "shipped.yaml"
    kept.write_text(kept.read_text().replace("action: REJECT", "action: MAYBE", 1))
    problems = [f"{e.path}: {p}" for e in Policies(policies_dir).check() for p in e.problems]
    assert any("versions/pre_trade/shipped.yaml" in p and "MAYBE" in p for p in problems), problems
