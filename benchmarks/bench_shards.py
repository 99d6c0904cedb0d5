"""Symbol shards over processes against the unsharded run (issue 15), same invocation.

The data stages (``raw_daily_bars`` → ``daily_bars`` → ``data_quality``; the per-symbol part of
the night, without their checks) at N symbols × 1,260+ sessions of the sample market, three ways,
each in a fresh child process:

* ``duckdb``: unsharded, the DuckDB file, in-process executor (the default deployment: the peer);
* ``parquet``: unsharded, the Parquet store, in-process executor (the cost of the store itself);
* ``sharded``: K symbol shards, the Parquet store, the multiprocess executor (a process per step,
  K at a time, forkserver with the code location preloaded).

With ``--nightly``, also the whole ``nightly_job`` after the model refit: unsharded on the DuckDB
file in process (the default) against K shards on the Parquet store under the multiprocess
executor (every step and check a process).

Printed: wall time of the run, each step's compute (start → success) and its process start-up
(worker starting → start), and the ratios against ``duckdb``. Run:

    nice uv run python benchmarks/bench_shards.py --symbols 500 [--shards 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
MODES = ("duckdb", "parquet", "sharded")
NIGHTLY_MODES = ("nightly-duckdb", "nightly-sharded")  # --nightly: the whole job after the refit


def _steps(instance, run_id: str) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    marks: dict[str, dict[str, float]] = {}
    for e in instance.all_logs(run_id):
        ev = e.dagster_event
        if ev is not None and ev.step_key and ev.event_type_value in ("STEP_WORKER_STARTING", "STEP_START",
                                                                      "STEP_SUCCESS"):
            marks.setdefault(ev.step_key, {})[ev.event_type_value] = e.timestamp
    out = {}
    for step, m in marks.items():
        row = {"compute_s": m.get("STEP_SUCCESS", 0.0) - m.get("STEP_START", 0.0)}
        if "STEP_WORKER_STARTING" in m:
            row["startup_s"] = m["STEP_START"] - m["STEP_WORKER_STARTING"]
        out[step] = row
    return out


def child(mode: str, n_symbols: int, n_sessions: int, shards: int) -> None:
    import dagster as dg

    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from bench_ingestion import make_policies

    from ais_pipelines.config import Policies

    root = Path(tempfile.mkdtemp(prefix=f"ais-bench-shards-{mode}-"))
    pol_dir = make_policies(root, n_symbols, n_sessions)
    os.environ.update({"AIS_POLICIES_DIR": str(pol_dir), "AIS_RUNTIME_DIR": str(root / "runtime"), "AIS_ENV": "ci",
                       "AIS_WAREHOUSE_STORE": "duckdb" if mode.endswith("duckdb") else "parquet",
                       "AIS_SYMBOL_SHARDS": str(shards if mode.endswith("sharded") else 1)})
    os.environ.pop("AIS_WAREHOUSE", None)
    d = str(Policies(pol_dir).providers.sample.end_session)
    from tests.integration.sharded_location import data_stages_job, recon

    (root / "home").mkdir()
    if mode.startswith("nightly"):
        _nightly_child(mode, root, d)
        return
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        t = time.perf_counter()
        if mode == "sharded":
            r = dg.execute_job(recon("data_stages_job"), instance=instance, run_config=QUIET,
                               tags={"dagster/partition": d}, raise_on_error=False)
        else:
            r = data_stages_job().execute_in_process(instance=instance, partition_key=d, run_config=QUIET,
                                                     raise_on_error=False)
        wall = time.perf_counter() - t
        steps = _steps(instance, r.run_id)
    print(json.dumps({"mode": mode, "n": n_symbols, "ok": r.success, "wall_s": wall, "steps": steps}))


def _nightly_child(mode: str, root: Path, d: str) -> None:
    import dagster as dg

    from ais_pipelines.config import Policies
    from ais_pipelines.core.calendars import last_n_sessions
    from tests.integration.sharded_location import nightly_job, recon

    fit = str(last_n_sessions("XNYS", Policies().providers.sample.end_session, 6)[0].date())
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        from ais_pipelines.definitions import build_definitions

        refit = build_definitions().resolve_job_def("model_refit_job").execute_in_process(
            instance=instance, partition_key=fit, run_config=QUIET)
        assert refit.success
        t = time.perf_counter()
        if mode == "nightly-sharded":
            r = dg.execute_job(recon("nightly_job"), instance=instance, run_config=QUIET,
                               tags={"dagster/partition": d}, raise_on_error=False)
        else:
            r = nightly_job().execute_in_process(instance=instance, partition_key=d, run_config=QUIET,
                                                 raise_on_error=False)
        wall = time.perf_counter() - t
        steps = _steps(instance, r.run_id)
    print(json.dumps({"mode": mode, "ok": r.success, "wall_s": wall, "steps": steps}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=1270)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--nightly", action="store_true", help="also the whole nightly job (several minutes)")
    ap.add_argument("--mode", choices=MODES + NIGHTLY_MODES, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results/shards.md")
    args = ap.parse_args()
    if args.mode:
        child(args.mode, args.symbols, args.sessions, args.shards)
        return
    load, started = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    rows = {}
    for mode in MODES + (NIGHTLY_MODES if args.nightly else ()):
        cmd = [sys.executable, __file__, "--mode", mode, "--symbols", str(args.symbols), "--sessions",
               str(args.sessions), "--shards", str(args.shards)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            print(p.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{mode}: child failed")
        rows[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[mode]), flush=True)
    from bench_ingestion import cpu_model

    peer = rows["duckdb"]["wall_s"]
    lines = [
        "## Symbol shards benchmark (data stages)",
        "",
        f"- started: {started} UTC; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}",
        f"- workload: {args.symbols} symbols × {args.sessions} sessions of the sample market; raw_daily_bars → "
        f"daily_bars → data_quality without checks; sharded = {args.shards} shards, multiprocess executor",
        "",
        "| mode | wall (s) | × duckdb | all steps succeeded |",
        "|---|---:|---:|---|",
    ]
    for mode, r in rows.items():
        base = rows["nightly-duckdb"]["wall_s"] if mode.startswith("nightly") else peer
        lines.append(f"| {mode} | {r['wall_s']:.1f} | {r['wall_s'] / base:.2f}× | {'yes' if r['ok'] else 'NO'} |")
    if args.nightly:
        lines += ["", "(nightly-* rows: × nightly-duckdb, the whole job after the refit.)"]
    lines += ["", "| mode | step | compute (s) | process start-up (s) |", "|---|---|---:|---:|"]
    for mode, r in rows.items():
        if mode.startswith("nightly"):
            st = r["steps"].values()
            lines.append(f"| {mode} | {len(st)} steps | {sum(x['compute_s'] for x in st):.1f} in all | "
                         f"{sum(x.get('startup_s', 0.0) for x in st):.1f} in all |")
            continue
        for step, s in r["steps"].items():
            lines.append(f"| {mode} | {step} | {s['compute_s']:.2f} | "
                         f"{s['startup_s']:.2f} |" if "startup_s" in s else f"| {mode} | {step} | "
                         f"{s['compute_s']:.2f} | — |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
