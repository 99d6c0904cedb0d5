"""The nightly job at N symbols × 1260+ sessions: wall time and peak RSS next to Dagster's floor.

Each size runs in a fresh child process (so peak RSS is that run's own): the model refit job
for the fit date, then ``nightly_job`` for session D — the product's own definitions, in-process
executor, ephemeral instance, the embedded sample market. The floor is the same asset graph
(same keys, dependencies and partitions) with empty bodies, run the same way in the same child.
The fitted exponent is the slope of log(our time − floor) against log(N). Run:

    nice uv run python benchmarks/bench_nightly.py --symbols 500 2000 5000 [--sessions 1270]
    nice uv run python benchmarks/bench_nightly.py --symbols 500 --profile /tmp/nightly.prof
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


NIGHTLY_GROUPS = ("ingestion", "quality", "intelligence", "portfolio")  # nightly_job's selection


def _empty_graph(defs):  # type: ignore[no-untyped-def]
    """The nightly graph (same asset keys, dependencies, partitions and checks) with no-op
    bodies: Dagster's own cost for the same steps."""
    import dagster as dg

    out = []
    keys = set()
    for ad in defs.assets or []:
        if not isinstance(ad, dg.AssetsDefinition):
            continue
        specs = [s for s in ad.specs if s.group_name in NIGHTLY_GROUPS]
        if not specs:
            continue
        keys |= {s.key for s in specs}

        def _make_body(keys_of: list):  # type: ignore[no-untyped-def]
            def _body(context):  # type: ignore[no-untyped-def]
                for k in keys_of:
                    yield dg.MaterializeResult(asset_key=k)

            return _body

        name = "floor_" + "_".join(specs[0].key.path)
        out.append(dg.multi_asset(name=name, specs=specs, partitions_def=ad.partitions_def,
                                  can_subset=False)(_make_body([sp.key for sp in specs])))
    for cd in defs.asset_checks or []:
        for ck in cd.check_keys:
            if ck.asset_key not in keys:
                continue

            @dg.asset_check(asset=ck.asset_key, name=ck.name)
            def _check():  # type: ignore[no-untyped-def]
                return dg.AssetCheckResult(passed=True)

            out.append(_check)
    return out


def child(n_symbols: int, n_sessions: int, profile: str | None) -> None:
    """Runs in a fresh interpreter; prints one JSON line."""
    t_import = time.perf_counter()
    import dagster as dg

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_ingestion import make_policies

    from ais_pipelines.config import Policies
    from ais_pipelines.core.calendars import last_n_sessions

    root = Path(tempfile.mkdtemp(prefix=f"ais-bench-nightly-{n_symbols}-"))
    pol_dir = make_policies(root, n_symbols, n_sessions)
    os.environ["AIS_POLICIES_DIR"] = str(pol_dir)
    os.environ["AIS_RUNTIME_DIR"] = str(root / "runtime")
    os.environ.pop("AIS_WAREHOUSE", None)
    pol = Policies(pol_dir)
    d = pol.providers.sample.end_session
    fit = last_n_sessions("XNYS", d, 6)[0].date()

    from ais_pipelines.definitions import build_definitions

    defs = build_definitions(env="ci", runtime_root=str(root / "runtime"))
    t_defs = time.perf_counter() - t_import
    instance = dg.DagsterInstance.ephemeral()
    t = time.perf_counter()
    r = defs.resolve_job_def("model_refit_job").execute_in_process(
        instance=instance, partition_key=str(fit), run_config=QUIET, raise_on_error=False)
    t_refit = time.perf_counter() - t
    assert r.success, "model refit failed"
    job = defs.resolve_job_def("nightly_job")
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    r = job.execute_in_process(instance=instance, partition_key=str(d), run_config=QUIET, raise_on_error=False)
    t_nightly = time.perf_counter() - t
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    steps: dict[str, float] = {}
    starts: dict[str, float] = {}
    for e in instance.all_logs(r.run_id):
        ev = e.dagster_event
        if ev is None:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = e.timestamp
        elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
            steps[ev.step_key] = e.timestamp - starts[ev.step_key]
    ok = r.success
    failed = [c.check_name for c in r.get_asset_check_evaluations() if not c.passed]
    rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    print(json.dumps({"n": n_symbols, "nightly_s": t_nightly, "rss_mb": rss_ours, "partial": True}), flush=True)
    floor_assets = _empty_graph(defs)
    t = time.perf_counter()
    fr = dg.materialize(floor_assets, instance=instance, partition_key=str(d), run_config=QUIET)
    t_floor = time.perf_counter() - t
    assert fr.success
    print(json.dumps({
        "n": n_symbols, "sessions": n_sessions, "ok": ok, "failed_checks": failed, "defs_s": t_defs,
        "refit_s": t_refit, "nightly_s": t_nightly, "floor_s": t_floor, "rss_mb": rss_ours,
        "steps": dict(sorted(steps.items(), key=lambda kv: -kv[1])),
    }))
    shutil.rmtree(root, ignore_errors=True)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, nargs="+", default=[500])
    ap.add_argument("--sessions", type=int, default=1270)
    ap.add_argument("--profile", default=None, help="cProfile output of the nightly run (one size)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results/nightly.md")
    args = ap.parse_args()
    if args.child:
        child(args.symbols[0], args.sessions, args.profile)
        return

    import numpy as np

    rows = []
    load = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    for n in args.symbols:
        cmd = [sys.executable, __file__, "--child", "--symbols", str(n), "--sessions", str(args.sessions)]
        if args.profile:
            cmd += ["--profile", args.profile]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            print(p.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"N={n}: child failed")
        row = json.loads(p.stdout.strip().splitlines()[-1])
        row["process_s"] = wall
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        "## Nightly job benchmark",
        "",
        f"- started: {started} UTC; load average at start "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- machine: {os.cpu_count()} cores, {_cpu_model()}, Python {platform.python_version()}",
        f"- workload: the sample market, {args.sessions} sessions per symbol; `nightly_job` in-process after "
        "`model_refit_job`; floor = the same asset graph with empty bodies, same run",
        "",
        "| N | nightly (s) | floor (s) | ours − floor (s) | × floor | peak RSS (MB) | code location load (s) | "
        "all checks passed |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']} | {r['nightly_s']:.1f} | {r['floor_s']:.1f} | {r['nightly_s'] - r['floor_s']:.1f} | "
                     f"{r['nightly_s'] / r['floor_s']:.1f}× | {r['rss_mb']:.0f} | {r['defs_s']:.1f} | "
                     f"{'yes' if r['ok'] and not r['failed_checks'] else 'no: ' + ','.join(r['failed_checks'])} |")
    if len(rows) >= 2:
        n = np.log([r["n"] for r in rows])
        tot = np.polyfit(n, np.log([r["nightly_s"] for r in rows]), 1)[0]
        net = np.polyfit(n, np.log([max(r["nightly_s"] - r["floor_s"], 1e-3) for r in rows]), 1)[0]
        lines += ["", f"Fitted exponent of cost in N: {tot:.2f} (total), {net:.2f} (ours − floor)."]
    lines += ["", "Slowest steps at the largest N (s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in list(rows[-1]["steps"].items())[:8])]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
