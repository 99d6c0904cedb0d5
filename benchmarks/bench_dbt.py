"""Benchmark: the dbt marts built inside Dagster against dbt's own ``dbt build``, in one run
(issue 14: Dagster no slower than 1.5× dbt's own build).

Run: ``uv run python benchmarks/bench_dbt.py [--runtime DIR] [--runs 2]``

``--runtime`` must hold a warehouse with a demo run (``make demo``); it is copied to a temporary
directory first, so nothing of yours changes. Three ways, each timed ``--runs`` times after one
warm-up run of its own (what a second nightly run sees):

* **dbt CLI**: ``dbt build`` in ``dbt/`` with a stable target folder, warehouse from
  ``AIS_WAREHOUSE`` — the peer;
* **Dagster (now)**: ``materialize`` of the ``warehouse_marts`` asset (stable target folder next
  to the warehouse, warehouse path from the profile's environment variable);
* **Dagster, stock resource**: the same asset with dagster-dbt's own ``DbtCliResource``, which runs
  ``dbt --version`` and loads a dbt adapter in process on every run (``LeanDbtCliResource`` skips both);
* **Dagster (before)**: the previous asset body — ``--vars`` with the path and a fresh target
  folder per run, so dbt re-parses every time.

Writes ``benchmarks/results/dbt.md``.
"""


import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource
from dagster_duckdb import DuckDBResource

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "dbt.md"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", type=Path, default=REPO / "runtime")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    src = args.runtime.resolve() / "warehouse.duckdb"
    if not src.exists():
        raise SystemExit(f"no warehouse at {src}: run `make demo` first")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

    from ais_pipelines.cli_support import quiet_library_warnings

    quiet_library_warnings()
    from assets import reporting

    project = reporting.dbt_project()
    dbt_bin = reporting.dbt_executable()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / "warehouse.duckdb"
        shutil.copy(src, db)
        env = {**os.environ, "AIS_WAREHOUSE": str(db)}

        def dbt_cli() -> None:
            subprocess.run([dbt_bin, "build", "--quiet", "--target-path", str(root / "cli_target"),
                            "--log-path", str(root / "cli_logs")], cwd=REPO / "dbt", env=env, check=True,
                           capture_output=True)

        marts = reporting.build_dbt_assets(project)
        resources = {"dbt": reporting.LeanDbtCliResource(project_dir=project, dbt_executable=dbt_bin),
                     "warehouse": DuckDBResource(database=str(db))}
        log = (root / "dagster.log").open("w")

        def dagster_now() -> None:
            import contextlib

            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                assert dg.materialize([marts], resources=resources, raise_on_error=True).success

        stock = {**resources, "dbt": DbtCliResource(project_dir=project, dbt_executable=dbt_bin)}

        def dagster_stock() -> None:
            import contextlib
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                assert dg.materialize([marts], resources=stock, raise_on_error=True).success

        def dagster_before() -> None:
            import contextlib

            @dbt_assets_like(project)
            def warehouse_marts(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource):
                database = Path(warehouse.database).resolve()
                target = database.parent / "dbt_target_old" / uuid.uuid4().hex[:8]
                yield from dbt.cli(["build", "--vars", json.dumps({"warehouse_path": str(database)})],
                                   context=context, target_path=target).stream()

            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                assert dg.materialize([warehouse_marts], resources=resources, raise_on_error=True).success

        def dbt_assets_like(project):  # the same decorator arguments as build_dbt_assets
            from dagster_dbt import dbt_assets

            return dbt_assets(manifest=project.manifest_path, project=project,
                              dagster_dbt_translator=reporting.AisDbtTranslator(), name="warehouse_marts",
                              pool="duckdb")

        timings: dict[str, list[float]] = {}
        for name, fn in (("dbt CLI (`dbt build`)", dbt_cli), ("Dagster now", dagster_now),
                         ("Dagster now, stock DbtCliResource (dbt --version + adapter per run)", dagster_stock),
                         ("Dagster before (--vars, per-run target)", dagster_before)):
            fn()  # warm-up: a first parse into this target folder
            runs = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            timings[name] = runs
            print(f"{name}: {statistics.median(runs):.1f} s")
    peer = statistics.median(timings["dbt CLI (`dbt build`)"])
    lines = ["## dbt marts: inside Dagster vs dbt's own build (issue 14)", "",
             f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
             f"- machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
             f"{platform.python_version()}; load average at the end {os.getloadavg()[0]:.2f} (shared box)",
             f"- workload: `dbt build` of the project (models + tests) on a copy of `{src}`; median of {args.runs} "
             "runs after one warm-up each; target: Dagster ≤ 1.5× dbt", "",
             "| how | median (s) | runs (s) | × dbt CLI |", "|---|---:|---|---:|"]
    for name, runs in timings.items():
        lines.append(f"| {name} | {statistics.median(runs):.1f} | {', '.join(f'{r:.1f}' for r in runs)} | "
                     f"{statistics.median(runs) / peer:.2f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
