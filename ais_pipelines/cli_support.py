"""What every ``ais`` command module shares, without importing Dagster, dbt or Great Expectations:
where things are (runtime directory, warehouse, ledger, reports), strict option types (fixed
choices, calendar-checked sessions) and the Dagster home for the commands that do run jobs.

A ``cli_<topic>.py`` module imports from here at module top and keeps its heavy imports inside
its command functions, so mounting it costs nothing at CLI start (issue 14).
"""

from __future__ import annotations

import os
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from ais_pipelines.core.reason_codes import ReasonCode

# Dagster's console logger at WARNING: a job run by the CLI prints only our own summary lines.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def runtime_dir() -> Path:
    return Path(os.environ.get("AIS_RUNTIME_DIR", "runtime")).resolve()


def warehouse_path(root: Path | None = None) -> Path:
    """The configured warehouse (``AIS_WAREHOUSE``, else the store's default under the runtime)."""
    from ais_pipelines.warehouse_location import default_location

    return Path(os.environ.get("AIS_WAREHOUSE") or default_location(root or runtime_dir())).resolve()


def ledger_url(root: Path | None = None) -> str:
    return os.environ.get("AIS_LEDGER_URL") or f"sqlite:///{(root or runtime_dir()) / 'ledger.sqlite'}"


def environment() -> str:
    return os.environ.get("AIS_ENV", "local")


def ensure_dagster_home() -> Path:
    """A project-local DAGSTER_HOME (git-ignored) with telemetry off."""
    from ais_pipelines.config import REPO_ROOT

    home = Path(os.environ.get("DAGSTER_HOME") or runtime_dir() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", cfg)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def where_everything_is(root: Path | None = None) -> list[tuple[str, Path | str]]:
    """(what, where) of every file an operator looks for, in the order the demo prints them."""
    root = root or runtime_dir()
    reports = root / "reports"
    governance = sorted((reports / "governance").glob("*.html"))
    return [
        ("Warehouse", warehouse_path(root)),
        ("Ledger", _without_password(ledger_url(root))),
        ("Raw archive", root / "raw"),
        ("Data docs", reports / "data_docs" / "index.html"),
        ("Governance report", governance[-1] if governance else reports / "governance"),
        ("Metrics", reports / "metrics" / "ais_metrics.prom"),
        ("dbt log", root / "logs" / "dbt.log"),
        ("Dagster home", Path(os.environ.get("DAGSTER_HOME") or root / "dagster_home").resolve()),
    ]


def _without_password(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------------------------
# strict options


class ReviewStatus(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    ALL = "ALL"


class SessionError(typer.BadParameter):
    """A date that parses but is no session of the calendar (exit 2, NOT_A_SESSION)."""

    reason_code = ReasonCode.NOT_A_SESSION


def parse_session(value: str | None) -> str | None:
    """``--as-of``: an ISO date (YYYY-MM-DD) that is a session of the as-of calendar; else a usage
    error (exit 2) naming the previous and the next session."""
    if value is None:
        return None
    from datetime import date

    try:
        day = date.fromisoformat(value.strip()) if len(value.strip()) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint="--as-of")
    import pandas as pd

    from ais_pipelines.as_of_calendar import as_of_calendars, session_problem
    from ais_pipelines.config import Policies

    # issue 13: the sessions of the universe's as-of calendars (assets/partitions.py)
    problem = session_problem(as_of_calendars(Policies().universe), pd.Timestamp(day))
    if problem:
        raise SessionError(problem, param_hint="--as-of")
    return str(day)


# --------------------------------------------------------------------------------------------
# quiet output: one line per stage, the libraries' output in a log file


# Known, harmless library warnings printed at every import of the code location (Dagster's
# preview/beta markers on APIs this project uses deliberately).
QUIET_WARNINGS = (r".*is currently in (preview|beta).*", r".*is (a )?(preview|beta) (feature|API).*")


def quiet_library_warnings() -> None:
    import warnings

    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class Stage:
    """One line on the terminal per stage — ``[2/5] nightly materialization [D] … OK in 41.2 s: detail``
    — while everything printed inside the stage (Dagster, dbt, pandas, warnings) goes to ``log``."""

    def __init__(self, title: str, log: Any, number: int, total: int = 5) -> None:
        self.title, self.log, self.number, self.total = title, log, number, total
        self.detail: str | None = None
        self.ok = True
        self.notes: list[str] = []

    def done(self, detail: str, ok: bool = True) -> None:
        self.detail, self.ok = detail, ok

    def note(self, line: str) -> None:
        self.notes.append(line)

    def __enter__(self) -> Stage:
        import contextlib
        import sys
        import time

        self._out = sys.stdout
        self._t0 = time.perf_counter()
        self._ctx = contextlib.ExitStack()
        print(f"[{self.number}/{self.total}] {self.title} …", end="", flush=True, file=self._out)
        print(f"\n===== [{self.number}/{self.total}] {self.title}", file=self.log, flush=True)
        self._ctx.enter_context(contextlib.redirect_stdout(self.log))
        self._ctx.enter_context(contextlib.redirect_stderr(self.log))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        import time

        self._ctx.close()
        took = time.perf_counter() - self._t0
        if exc is not None and not isinstance(exc, typer.Exit):
            import traceback

            from ais_pipelines.cli_errors import one_line

            traceback.print_exception(exc, file=self.log)
            self.ok, self.detail = False, one_line(exc)
        status = "OK" if self.ok else "FAILED"
        print(f" {status} in {took:.1f} s" + (f": {self.detail}" if self.detail else ""), file=self._out)
        for line in self.notes:
            print(f"      {line}", file=self._out)
        self.log.flush()
