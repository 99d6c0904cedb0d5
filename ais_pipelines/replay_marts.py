"""dbt marts over a replay's own warehouse (issue 12): ``dbt build --select tag:replay`` with
``replay_marts`` enabled and the warehouse path pointing under ``--out``.

The replay models (``dbt/models/replay/``) are disabled unless that variable is set, so the
live ``dbt build`` over the main warehouse never sees them. The build writes its manifest and
logs under ``out`` (``dbt_target/``, ``dbt_logs/``), never into the project's ``target/``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ais_pipelines.dbt_cli import DBT_DIR, dbt_executable

REPLAY_SCHEMA = "replay"


@dataclass(frozen=True)
class MartsResult:
    ok: bool
    summary: str  # dbt's own "Done. PASS=… TOTAL=…" line, or the failure
    log: Path


def build_replay_marts(out: Path, timeout_s: float = 600.0) -> MartsResult:
    """Build the replay marts into schema ``replay`` of ``out/warehouse.duckdb``."""
    out = Path(out).resolve()
    log = out / "dbt_logs" / "dbt_build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    dbt_vars = {"replay_marts": True}  # the warehouse comes from AIS_WAREHOUSE (the profile reads it)
    cmd = [dbt_executable(), "build", "--select", "tag:replay", "--vars", json.dumps(dbt_vars),
           "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR),
           "--target-path", str(out / "dbt_target"), "--log-path", str(out / "dbt_logs")]
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "AIS_WAREHOUSE": str(out / "warehouse.duckdb")}
    try:
        proc = subprocess.run(cmd, cwd=DBT_DIR, env=env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.write_text(str(exc))
        return MartsResult(False, f"dbt could not run: {exc}", log)
    log.write_text(proc.stdout + proc.stderr)
    done = [ln.split("Done. ", 1)[1].strip() for ln in proc.stdout.splitlines() if "Done. " in ln]
    summary = done[-1] if done else (proc.stdout.strip().splitlines() or ["no output"])[-1][-300:]
    return MartsResult(proc.returncode == 0, summary, log)
