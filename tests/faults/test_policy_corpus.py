"""A corpus of malformed policy, overlay and universe files (issue 10 item 5, issue 17).

Each case writes a modified copy of the shipped policies into tmp_path and must be refused by
the validator (:meth:`Policies.check`) and by ``ais policies validate`` (exit 1) with one line
naming the file, the key and the bad value. The shipped policies validate clean, and
:func:`require_execution_policies` fails closed on every file the execution path reads.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ais_pipelines.cli import app
from ais_pipelines.config import DEFAULT_POLICIES_DIR, Policies, PolicyFileError, require_execution_policies
from ais_pipelines.core.reason_codes import ReasonCode

Data = dict[str, Any]


@dataclass(frozen=True)
class Case:
    id: str
    file: str  # relative to the policies directory
    edit: Callable[[Data], None]
    key: tuple[str, ...]  # fragments that together name the key
    value: str  # how the bad value appears in the line

    def apply(self, policies_dir: Path) -> None:
        path = policies_dir / self.file
        data = yaml.safe_load(path.read_text())
        self.edit(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def rule(rule_id: str, param: str, value: Any) -> Callable[[Data], None]:
    def edit(d: Data) -> None:
        next(r for r in d["rules"] if r["id"] == rule_id)["params"][param] = value

    return edit


def put(dotted: str, value: Any) -> Callable[[Data], None]:
    def edit(d: Data) -> None:
        *parents, last = dotted.split(".")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]
        d[last] = value

    return edit


def drop(key: str) -> Callable[[Data], None]:
    return lambda d: d.pop(key)


def override(rule_id: str, **params: Any) -> Callable[[Data], None]:
    return lambda d: d.__setitem__("param_overrides", {rule_id: {"why": "test", **params}})


def veto(param: str, value: Any, value_text: str | None = None) -> Case:
    return Case(f"vetoes-{param}={value}", "vetoes.yaml", rule(_VETO_OF[param], param, value),
                (_VETO_OF[param], f"params.{param}"), f"got {value_text or value!r}")


def pre_trade(rule_id: str, param: str, value: Any) -> Case:
    return Case(f"pre_trade-{param}={value}", "pre_trade.yaml", rule(rule_id, param, value),
                (rule_id, f"params.{param}"), f"got {value!r}")


_VETO_OF = {
    "min_providers": "veto_data_dependency", "min_quality": "veto_data_dependency",
    "max_correlated_share": "veto_correlated_wins", "min_wins": "veto_correlated_wins",
    "full_fill_rate": "veto_too_perfect_execution", "min_fills": "veto_too_perfect_execution",
    "min_slippage_err_bps": "veto_too_perfect_execution", "min_obs_days": "veto_unexplained_profit",
}

CASES: list[Case] = [
    # --- governance vetoes: thresholds that would silently disable a veto, or mean nothing
    veto("min_providers", -3),
    veto("min_providers", 0),
    veto("min_providers", 1.5),
    veto("min_quality", 1.2),
    veto("min_quality", -0.1),
    veto("max_correlated_share", 1.0),
    veto("max_correlated_share", 1.5),
    veto("min_wins", -1),
    veto("full_fill_rate", 1.1),
    veto("min_fills", -20),
    veto("min_slippage_err_bps", -0.5),
    veto("min_obs_days", 2.5),
    # --- pre-trade rules
    pre_trade("low_liquidity", "min_liquidity_score", 1.3),
    pre_trade("low_liquidity", "min_liquidity_score", 0),
    pre_trade("low_confidence", "min_confidence", -0.2),
    pre_trade("high_correlation_to_book", "max_correlation_to_book", 1.5),
    pre_trade("daily_drawdown_limit", "max_daily_drawdown", 1.5),
    pre_trade("daily_drawdown_limit", "max_daily_drawdown", -0.03),
    pre_trade("risk_per_trade_limit", "max_risk_per_trade_nav", 2),
    pre_trade("stale_quote", "max_quote_age_s", "thirty"),
    # --- risk limits: required (no silent default), fractions in range, not negative
    Case("risk-missing-portfolio_cvar_limit", "risk.yaml", drop("portfolio_cvar_limit"),
         ("portfolio_cvar_limit",), "missing"),
    Case("risk-missing-daily_loss_limit", "risk.yaml", drop("daily_loss_limit"), ("daily_loss_limit",), "missing"),
    Case("risk-missing-component_cvar_limit", "risk.yaml", drop("component_cvar_limit"),
         ("component_cvar_limit",), "missing"),
    Case("risk-negative-portfolio_cvar_limit", "risk.yaml", put("portfolio_cvar_limit", -0.06),
         ("portfolio_cvar_limit",), "got -0.06"),
    Case("risk-component_cvar_limit>1", "risk.yaml", put("component_cvar_limit", 1.5),
         ("component_cvar_limit",), "got 1.5"),
    Case("risk-component-above-portfolio", "risk.yaml", put("component_cvar_limit", 0.1),
         ("component_cvar_limit",), "got 0.1"),
    Case("risk-daily_loss_limit>1", "risk.yaml", put("daily_loss_limit", 1.2), ("daily_loss_limit",), "got 1.2"),
    Case("risk-budget>1", "risk.yaml", put("budget", 1.5), ("budget",), "got 1.5"),
    Case("risk-min_scale<0", "risk.yaml", put("min_scale", -0.1), ("min_scale",), "got -0.1"),
    Case("risk-negative-risk_aversion", "risk.yaml", put("risk_aversion", -1), ("risk_aversion",), "got -1"),
    Case("risk-alpha>1", "risk.yaml", put("alpha", 1.5), ("alpha",), "got 1.5"),
    # --- mandate caps and symbols
    Case("mandate-max_position_weight>1", "mandate.yaml", put("max_position_weight", 1.5),
         ("max_position_weight",), "got 1.5"),
    Case("mandate-negative-max_gross_exposure", "mandate.yaml", put("max_gross_exposure", -1),
         ("max_gross_exposure",), "got -1"),
    Case("mandate-missing-max_adv_participation", "mandate.yaml", drop("max_adv_participation"),
         ("max_adv_participation",), "missing"),
    Case("mandate-negative-min_order_notional", "mandate.yaml", put("min_order_notional", -100),
         ("min_order_notional",), "got -100"),
    Case("mandate-denied-symbol-not-in-universe", "mandate.yaml", put("denied_symbols", ["AAPL", "TSLA"]),
         ("denied_symbols[1]",), "got 'TSLA'"),
    Case("mandate-blackout-symbol-not-in-universe", "mandate.yaml",
         put("event_blackouts", [{"symbol": "zzzz", "start": "2026-11-20T13:00:00Z", "end": "2026-11-20T15:00:00Z"}]),
         ("event_blackouts[0].symbol",), "got 'ZZZZ'"),
    Case("mandate-blackout-ends-before-start", "mandate.yaml",
         put("event_blackouts", [{"symbol": "AAPL", "start": "2026-11-20T15:00:00Z", "end": "2026-11-20T13:00:00Z"}]),
         ("event_blackouts[0].end",), "2026-11-20T13:00:00"),
    # --- universe
    Case("universe-unknown-calendar", "universe.yaml", put("symbols.0.calendar", "XNYZ"),
         ("symbols[0].calendar",), "got 'XNYZ'"),
    Case("universe-unknown-asset-class", "universe.yaml", put("symbols.2.asset_class", "STONKS"),
         ("symbols[2].asset_class",), "got 'STONKS'"),
    Case("universe-empty", "universe.yaml", put("symbols", []), ("symbols",), "got []"),
    # --- quality gate (issue 17: min_tradable_symbols >= 1) and scores
    Case("quality-min_tradable_symbols=0", "quality.yaml", put("gate.min_tradable_symbols", 0),
         ("gate.min_tradable_symbols",), "got 0"),
    Case("quality-min_tradable_symbols<0", "quality.yaml", put("gate.min_tradable_symbols", -1),
         ("gate.min_tradable_symbols",), "got -1"),
    Case("quality-min_tradable_symbols>universe", "quality.yaml", put("gate.min_tradable_symbols", 100),
         ("gate.min_tradable_symbols",), "got 100"),
    Case("quality-invalid_below>1", "quality.yaml", put("score.invalid_below", 1.5),
         ("score.invalid_below",), "got 1.5"),
    # --- other fractions
    Case("strategies-max_error_rate>1", "strategies.yaml", put("lifecycle.max_error_rate", 1.5),
         ("lifecycle.max_error_rate",), "got 1.5"),
    Case("strategies-drawdown>1", "strategies.yaml", put("lifecycle.decommission_drawdown", 2.0),
         ("lifecycle.decommission_drawdown",), "got 2.0"),
    Case("models-crisis_threshold>1", "models.yaml", put("regime.crisis_threshold", 1.5),
         ("regime.crisis_threshold",), "got 1.5"),
    # --- environment overlays: refused by validation, not at execution time
    Case("overlay-ci-min_providers=-3", "environments/ci.yaml", override("veto_data_dependency", min_providers=-3),
         ("param_overrides.veto_data_dependency.min_providers",), "got -3"),
    Case("overlay-local-min_providers=0", "environments/local.yaml",
         override("veto_data_dependency", min_providers=0),
         ("param_overrides.veto_data_dependency.min_providers",), "got 0"),
    Case("overlay-prod-min_quality>1", "environments/prod.yaml", override("veto_data_dependency", min_quality=1.5),
         ("param_overrides.veto_data_dependency.min_quality",), "got 1.5"),
    Case("overlay-prod-unknown-rule", "environments/prod.yaml", override("veto_nonexistent", min_providers=1),
         ("param_overrides.veto_nonexistent",), "'veto_nonexistent'"),
    Case("overlay-ci-unknown-param", "environments/ci.yaml", override("veto_data_dependency", min_provider=1),
         ("param_overrides.veto_data_dependency.min_provider",), "'min_provider'"),
    Case("overlay-local-wrong-environment", "environments/local.yaml", put("environment", "prod"),
         ("environment",), "'prod'"),
    # --- operators
    Case("operators-unknown-role", "operators.yaml", lambda d: d["people"]["jane.doe"].__setitem__("roles", ["ghost"]),
         ("people.jane.doe.roles[0]",), "'ghost'"),
    Case("operators-service-as-role", "operators.yaml", put("roles.system", {"may": ["resume"]}),
         ("roles.system",), "'system'"),
]


def _problem_lines(policies_dir: Path) -> list[str]:
    return [f"{e.path}: {p}" for e in Policies(policies_dir).check() for p in e.problems]


def _names_file_key_value(lines: list[str], case: Case) -> bool:
    return any(
        case.file in line and all(k in line for k in case.key) and case.value in line for line in lines
    )


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AIS_POLICIES_DIR", "AIS_UNIVERSE_FILE"):
        monkeypatch.delenv(var, raising=False)


def test_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_malformed_file_is_refused_naming_file_key_and_value(policies_dir: Path, case: Case) -> None:
    case.apply(policies_dir)
    lines = _problem_lines(policies_dir)
    assert lines and _names_file_key_value(lines, case), lines
    assert all("\n" not in line for line in lines)

    result = CliRunner().invoke(app, ["policies", "validate", "--directory", str(policies_dir)])
    assert result.exit_code == 1, result.output
    out = result.output.splitlines()
    assert _names_file_key_value(out, case), result.output
    assert all(line.startswith("INVALID ") for line in out)


# --------------------------------------------------------------------------------------------
# files that cannot be read at all


def make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000; as root (which reads anyway) the read itself is made to fail the same way."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        real = Path.read_text

        def read_text(self: Path, *a: Any, **kw: Any) -> str:
            if self.resolve() == path.resolve():
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *a, **kw)

        monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.parametrize(
    ("file", "damage", "fragment"),
    [
        ("risk.yaml", "unreadable", "cannot read"),
        ("risk.yaml", "missing", "cannot read"),
        ("mandate.yaml", "malformed", "not valid YAML"),
        ("universe.yaml", "malformed", "not valid YAML"),
        ("operators.yaml", "missing", "cannot read"),
        ("vetoes.yaml", "malformed", "malformed YAML"),
        ("pre_trade.yaml", "unreadable", "cannot read"),
        ("environments/ci.yaml", "malformed", "malformed YAML"),
        ("environments/prod.yaml", "missing", "cannot read environment overlay"),
    ],
)
def test_missing_unreadable_or_malformed_file_is_refused(
    policies_dir: Path, monkeypatch: pytest.MonkeyPatch, file: str, damage: str, fragment: str
) -> None:
    path = policies_dir / file
    if damage == "missing":
        path.unlink()
    elif damage == "malformed":
        path.write_text("rules: [unclosed\n  - {id: x")
    else:
        make_unreadable(path, monkeypatch)
    lines = _problem_lines(policies_dir)
    assert any(file in line and fragment in line for line in lines), lines
    result = CliRunner().invoke(app, ["policies", "validate", "--directory", str(policies_dir)])
    assert result.exit_code == 1 and any(file in ln and fragment in ln for ln in result.output.splitlines())
    if path.exists():  # let tmp_path be cleaned up
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_every_problem_is_listed_one_line_each(policies_dir: Path) -> None:
    for case in (CASES[0], CASES[20], CASES[41]):  # vetoes, risk, quality: three files at once
        case.apply(policies_dir)
    result = CliRunner().invoke(app, ["policies", "validate", "--directory", str(policies_dir)])
    assert result.exit_code == 1
    assert len(result.output.splitlines()) == 3, result.output


# --------------------------------------------------------------------------------------------
# the shipped policies


def test_shipped_policies_validate_clean() -> None:
    assert Policies(DEFAULT_POLICIES_DIR).check() == []
    result = CliRunner().invoke(app, ["policies", "validate", "--directory", str(DEFAULT_POLICIES_DIR)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK ") and "environments local, ci, prod" in result.output


def test_the_test_copy_of_the_policies_validates_clean(policies_dir: Path) -> None:
    assert _problem_lines(policies_dir) == []


def test_cli_smoke_in_a_subprocess(policies_dir: Path) -> None:
    """The real entry point (console script), one process: exit 1 and the named problem."""
    CASES[0].apply(policies_dir)
    ais = Path(sys.executable).parent / "ais"
    env = {k: v for k, v in os.environ.items() if k not in ("AIS_POLICIES_DIR", "AIS_UNIVERSE_FILE")}
    proc = subprocess.run([str(ais), "policies", "validate", "--directory", str(policies_dir)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "vetoes.yaml" in proc.stderr and "params.min_providers" in proc.stderr and "got -3" in proc.stderr


# --------------------------------------------------------------------------------------------
# require_execution_policies: what an execution run calls before its first quote


@pytest.mark.parametrize("env", ["local", "ci", "prod"])
def test_require_execution_policies_passes_on_the_shipped_policies(policies_dir: Path, env: str) -> None:
    require_execution_policies(Policies(policies_dir), env)


def test_require_execution_policies_unreadable_risk_file(policies_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_unreadable(policies_dir / "risk.yaml", monkeypatch)
    with pytest.raises(PolicyFileError) as exc:
        require_execution_policies(Policies(policies_dir), "ci")
    assert "risk.yaml" in str(exc.value) and "cannot read" in str(exc.value)
    assert exc.value.reason_code is ReasonCode.POLICY_UNREADABLE


@pytest.mark.parametrize(
    "case_id",
    ["risk-missing-portfolio_cvar_limit", "mandate-denied-symbol-not-in-universe", "vetoes-min_providers=-3",
     "pre_trade-max_daily_drawdown=1.5", "overlay-ci-min_providers=-3", "operators-unknown-role"],
)
def test_require_execution_policies_refuses_what_execution_reads(policies_dir: Path, case_id: str) -> None:
    case = next(c for c in CASES if c.id == case_id)
    case.apply(policies_dir)
    with pytest.raises(PolicyFileError) as exc:
        require_execution_policies(Policies(policies_dir), "ci")
    assert _names_file_key_value([str(exc.value)], case), str(exc.value)


def test_require_execution_policies_checks_only_its_own_environment(policies_dir: Path) -> None:
    next(c for c in CASES if c.id == "overlay-prod-min_quality>1").apply(policies_dir)
    require_execution_policies(Policies(policies_dir), "ci")  # the prod overlay is not ci's business
    with pytest.raises(PolicyFileError, match=r"prod.yaml.*min_quality"):
        require_execution_policies(Policies(policies_dir), "prod")
    with pytest.raises(PolicyFileError, match="staging"):
        require_execution_policies(Policies(policies_dir), "staging")
