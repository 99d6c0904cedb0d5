"""Fail closed on configuration, one-line errors, owner-only files (issue 10, items 5, 7, 8).

Measured on the main before the fix: with ``policies/risk.yaml`` unreadable, ``ais execute``
sent 3 orders before failing (the daily-loss check never ran); a bad ``--as-of``, a corrupt
ledger or an audit failure printed a traceback; a missing warehouse was reported as
NO_PROPOSALS; ``ledger.sqlite`` and ``warehouse.duckdb`` were readable by every user.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ais_pipelines.cli import app
from ais_pipelines.cli_errors import run_cli
from ais_pipelines.ledger.store import LedgerStore
from resources.trading import BrokerResource
from tests.faults.crash_harness import run_job
from tests.faults.test_crash_recovery import ASSETS, TWO, _paper_orders, _resources
from tests.integration.test_execution import D, write_nightly

REPO = Path(__file__).parents[2]


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "runtime"
    r.mkdir()
    write_nightly(r / "warehouse.duckdb", spec=TWO)
    monkeypatch.setenv("AIS_APPROVAL_KEY", "5a" * 32)
    monkeypatch.delenv("AIS_APPROVAL_KEY_FILE", raising=False)
    monkeypatch.setenv("AIS_ENV", "ci")
    return r


def _first_failure(result) -> tuple[str, str]:  # noqa: ANN001
    e = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return e.step_key, e.event_specific_data.error.message


@pytest.mark.parametrize(
    "damage",
    ["risk_is_a_directory", "risk_missing", "risk_malformed", "risk_limit_missing", "mandate_invalid",
     "vetoes_min_providers_negative", "overlay_unknown_rule"],
)
def test_a_bad_policy_stops_the_run_before_the_first_quote(root: Path, policies_dir: Path, damage: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    risk = policies_dir / "risk.yaml"
    if damage == "risk_is_a_directory":  # unreadable as a file (chmod 000 does not stop root)
        risk.unlink()
        risk.mkdir()
    elif damage == "risk_missing":
        risk.unlink()
    elif damage == "risk_malformed":
        risk.write_text("daily_loss_limit: [unclosed\n")
    elif damage == "risk_limit_missing":
        risk.write_text("\n".join(line for line in risk.read_text().splitlines()
                                  if not line.startswith("portfolio_cvar_limit")) + "\n")
    elif damage == "mandate_invalid":
        p = policies_dir / "mandate.yaml"
        p.write_text(p.read_text().replace("nav:", "nav: -5\nunused_nav:", 1))
    elif damage == "vetoes_min_providers_negative":
        p = policies_dir / "vetoes.yaml"
        p.write_text(p.read_text().replace("min_providers: 2", "min_providers: -3"))
    elif damage == "overlay_unknown_rule":
        p = policies_dir / "environments" / "ci.yaml"
        p.write_text("environment: ci\nparam_overrides:\n  no_such_rule:\n    why: test\n    x: 1\n")
    quotes: list[str] = []
    import ais_pipelines.execution as ex

    real_fetch = ex.fetch_quotes
    monkeypatch.setattr(ex, "fetch_quotes", lambda *a, **k: quotes.append("asked") or real_fetch(*a, **k))
    result = run_job(ASSETS, D, _resources(root, policies_dir, BrokerResource(kind="paper")))
    assert not result.success
    step, message = _first_failure(result)
    assert step == "execution_context" and "Failure: POLICY_UNREADABLE: " in message, message
    assert quotes == []  # not even a quote was asked for
    assert _paper_orders(root / "ledger.sqlite") == {}
    assert LedgerStore.open(f"sqlite:///{root / 'ledger.sqlite'}").list_orders() == []


# --------------------------------------------------------------------------------------------
# one-line errors


def _cli(args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        code = run_cli(app, args)
    finally:
        os.environ.clear()
        os.environ.update(old)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"AIS_RUNTIME_DIR": str(tmp_path / "rt"), "DAGSTER_HOME": str(tmp_path / "dh")}
    for args in (["execute", "--as-of", "notadate"], ["execute", "--as-of", "2024-13-45"], ["execute", "--bogus"],
                 ["no-such-command"]):
        code, text = _cli(args, env, capsys)
        assert code == 2, (args, text)
        assert text.startswith("USAGE_ERROR: ") and len(text.strip().splitlines()) == 1, text
        assert "Traceback" not in text


def test_a_missing_warehouse_is_named_not_no_proposals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"AIS_RUNTIME_DIR": str(tmp_path / "rt"), "DAGSTER_HOME": str(tmp_path / "dh"),
           "AIS_WAREHOUSE": str(tmp_path / "nowhere.duckdb"), "AIS_ENV": "ci"}
    code, text = _cli(["execute", "--as-of", D], env, capsys)
    assert code == 1 and "WAREHOUSE_MISSING" in text and "NO_PROPOSALS" not in text, text
    assert not (tmp_path / "nowhere.duckdb").exists()  # looking did not create an empty one


def test_a_corrupt_ledger_is_one_line_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rt = tmp_path / "rt"
    rt.mkdir()
    (rt / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    env = {"AIS_RUNTIME_DIR": str(rt), "DAGSTER_HOME": str(tmp_path / "dh"), "AIS_ENV": "ci"}
    code, text = _cli(["trading", "status"], env, capsys)
    assert code == 1 and text.startswith("LEDGER_UNREADABLE: ") and len(text.strip().splitlines()) == 1, text
    os.environ.update(env)
    try:
        with pytest.raises(Exception, match="not a database"):  # --debug: the real exception
            run_cli(app, ["--debug", "trading", "status"])
    finally:
        for k in env:
            os.environ.pop(k, None)


def test_runtime_files_are_owner_only(tmp_path: Path) -> None:
    rt = tmp_path / "fresh-runtime"
    env = {**os.environ, "AIS_RUNTIME_DIR": str(rt), "DAGSTER_HOME": str(rt / "dagster_home"), "AIS_ENV": "ci"}
    env.pop("AIS_LEDGER_URL", None)
    # A real process through the console entry point (umask 022 as a login shell has it).
    proc = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0o022); sys.argv=['ais','trading','status']; "
                               "from ais_pipelines.cli import main; main()"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((rt / "ledger.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    import duckdb

    old = os.umask(0o022)
    try:
        from ais_pipelines.runtime_files import private_umask

        private_umask()
        duckdb.connect(str(rt / "warehouse.duckdb")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((rt / "warehouse.duckdb").stat().st_mode) == 0o600
