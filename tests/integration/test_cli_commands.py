"""Issue 14: the ``ais`` commands as an operator meets them — in a real process, with the real
entry point's error handling, against a fresh runtime directory.

* commands that only read or write the ledger import no Dagster, dbt or Great Expectations
  (behavioural: ``sys.modules`` after the commands ran; the timing is in benchmarks/bench_cli.py);
* fixed-value options are validated (exit 2 naming the allowed values), dates are checked against
  the calendar, each refusal carries its own reason code, and every error is one line.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("dagster", "dagster_dbt", "dagster_duckdb", "dbt", "great_expectations")

# Runs several commands in ONE process (as the entry point does, one after the other), capturing
# each one's exit code, stdout and stderr, then reports which heavy packages got imported.
DRIVER = """
import contextlib, io, json, sys
from ais_pipelines.cli import app
from ais_pipelines.cli_errors import run_cli
out = []
for args in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = run_cli(app, args)
    out.append({"args": args, "rc": rc, "out": o.getvalue(), "err": e.getvalue()})
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"results": out, "heavy": heavy}))
"""


def run_commands(commands: list[list[str]], env: dict[str, str]) -> tuple[list[dict], list[str]]:
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands), json.dumps(HEAVY)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    return report["results"], report["heavy"]


@pytest.fixture()
def fresh_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AIS_APPROVAL_KEY", "AIS_APPROVAL_KEY_FILE", "AIS_LEDGER_URL", "AIS_WAREHOUSE",
                        "AIS_POLICIES_DIR", "AIS_EXECUTION_NOW", "AIS_EXECUTION_CLOCK")}
    env.update({"AIS_ENV": "ci", "AIS_RUNTIME_DIR": str(tmp_path / "runtime"),
                "DAGSTER_HOME": str(tmp_path / "runtime" / "dagster_home")})
    return env


def test_ledger_commands_are_light_strict_and_one_line(fresh_env: dict[str, str], tmp_path: Path) -> None:
    commands = [
        ["trading", "status"],
        ["review", "list"],
        ["review", "list", "--status", "FOO"],
        ["review", "list", "--status", "all"],
        ["review", "approve", "review:nope", "--actor", "jane.doe", "--why", "checked"],
        ["review", "reject", "review:nope", "--actor", "jane.doe", "--why", "checked"],
        ["trading", "pause", "--actor", "ops", "--why", "maintenance"],
        ["trading", "status"],
        ["trading", "resume", "--actor", "ops", "--why", "done", "--to", "SIDEWAYS"],
        ["trading", "resume", "--actor", "ops", "--why", " "],
        ["trading", "resume", "--actor", "ops", "--why", "done", "--to", "active"],
        ["audit", "verify"],
        ["key", "init"],
        ["paths"],
        ["execute", "--as-of", "notadate"],
        ["execute", "--as-of", "2024-03-09"],
        ["report", "--as-of", "2024-02-30"],
    ]
    results, heavy = run_commands(commands, fresh_env)
    assert heavy == [], f"ledger-only commands imported {heavy}"
    r = {" ".join(x["args"]): x for x in results}  # a repeated command: its last result

    status = results[0]  # on a fresh ledger
    assert status["rc"] == 0
    assert status["out"].splitlines()[0] == (
        "ACTIVE (initial state: nobody has changed it since the ledger was created)")
    assert "1970" not in status["out"]
    assert r["review list"]["out"].strip() == "no PENDING review items"
    foo = r["review list --status FOO"]
    assert foo["rc"] == 2 and foo["out"] == "" and len(foo["err"].splitlines()) == 1
    assert foo["err"].startswith("USAGE_ERROR: ") and all(v in foo["err"].lower()
                                                          for v in ("pending", "approved", "rejected", "all"))
    assert r["review list --status all"]["rc"] == 0

    for verb in ("approve", "reject"):  # a missing item is not a human rejection
        res = r[f"review {verb} review:nope --actor jane.doe --why checked"]
        assert res["rc"] == 1 and len(res["err"].splitlines()) == 1
        assert res["err"].startswith("REVIEW_ITEM_NOT_FOUND: review item review:nope does not exist")
        assert "HUMAN_REJECTED" not in res["err"]

    assert r["trading pause --actor ops --why maintenance"]["out"].startswith("PAUSED")
    paused = r["trading status"]["out"]
    assert paused.startswith("PAUSED since ") and " by ops: maintenance [TRADING_PAUSED]" in paused
    sideways = r["trading resume --actor ops --why done --to SIDEWAYS"]
    assert sideways["rc"] == 2 and "'active', 'reducing'" in sideways["err"].lower()
    blank = r["trading resume --actor ops --why  "]
    assert blank["rc"] == 1 and blank["err"].startswith("OVERRIDE_UNJUSTIFIED: ")
    assert r["trading resume --actor ops --why done --to active"]["out"].startswith("ACTIVE")

    verify = r["audit verify"]
    assert verify["rc"] == 0 and verify["out"].startswith("audit chain OK: 2 records")

    key = Path(fresh_env["AIS_RUNTIME_DIR"]) / "approval.key"
    assert r["key init"]["out"].strip() == f"created development key: {key}"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    where = dict(line.split(":", 1) for line in r["paths"]["out"].splitlines())
    assert where["Warehouse"].strip().startswith(str(Path(fresh_env["AIS_RUNTIME_DIR"]) / "warehouse.duckdb"))
    assert "(not yet written)" in where["Warehouse"]

    notadate = r["execute --as-of notadate"]
    assert notadate["rc"] == 2 and notadate["err"].splitlines() == [
        "USAGE_ERROR: Invalid value for --as-of: 'notadate' is not a date (YYYY-MM-DD) (see: ais execute --help)"]
    saturday = r["execute --as-of 2024-03-09"]
    assert saturday["rc"] == 2 and saturday["err"].startswith("NOT_A_SESSION: ")
    assert "previous one is 2024-03-08, the next 2024-03-11" in saturday["err"]
    assert r["report --as-of 2024-02-30"]["rc"] == 2


def test_prod_never_creates_or_finds_a_default_key(fresh_env: dict[str, str]) -> None:
    env = {**fresh_env, "AIS_ENV": "prod", "AIS_EXECUTION_CLOCK": "system"}
    key = Path(env["AIS_RUNTIME_DIR"]) / "approval.key"
    results, heavy = run_commands([["key", "init"]], env)
    res = results[0]
    assert res["rc"] == 1 and res["err"].startswith("SIGNING_KEY_MISSING: ") and not key.exists()
    assert heavy == []
