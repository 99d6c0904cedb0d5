"""Where the dbt project and this environment's dbt executable are (no dbt or Dagster import)."""

from __future__ import annotations

import sys
from pathlib import Path

DBT_DIR = Path(__file__).resolve().parents[1] / "dbt"


def dbt_executable() -> str:
    """The dbt of this environment (next to the interpreter), so a code server or a replay
    started without the virtualenv on PATH still finds it."""
    here = Path(sys.executable).parent / "dbt"
    return str(here) if here.exists() else "dbt"
