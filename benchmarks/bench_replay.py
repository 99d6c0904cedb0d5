"""Walk-forward replay vs the Dagster per-partition backfill of the same sessions (issue 12).

Two peers, measured in the same run on the same sessions, universe and policies:

* **launched runs** (the backfill as Dagster runs it): for each session D in order, the
  ``nightly_job`` run of partition D and then the ``intraday_execution_job`` run of D, each in a
  process of its own (``dagster job execute`` with the ``dagster/partition`` tag, on a persistent
  instance) — what the backfill daemon's run launcher does for every run, minus the daemon's
  queueing and polling latency (so a lower bound of a real backfill's time). The jobs run the
  in-process executor they are defined with; each run loads the code location, as a launched run
  does.
* **in process**: the same runs through ``execute_in_process`` in this process, on an ephemeral
  instance — no process or code-location load per run: a lower bound of the lower bound.

Both start with the ``model_refit_job`` run of the first session, inside their timer. Run:

    uv run python benchmarks/bench_replay.py [--sessions 10] [--big-symbols 100 --big-sessions 252]
        [--peers launched,in-process]

The replay is measured warm: one untimed single-session replay first imports what the steps
import lazily (scipy, statsmodels, alembic, highspy … ~3 s) — the in-process peer, timed after
the replay in the same process, never paid those imports, and its code location is built before
its timer. The warm-up also spawns the replay's market worker (kept for the process, as in any
process that replays more than once; a first replay pays its ~3 s of imports, overlapped by its
own set-up). With ``--big-sessions`` under 252 the 252-session figure is extrapolated as fixed
cost + 252 × the steady per-session time (the sum of the replay's step timings per session;
fixed: set-up, the first full-window ingestion, persisting the warehouse).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def sessions_before(end: str, n: int) -> list[str]:
    from ais_pipelines.core.calendars import last_n_sessions

    days = last_n_sessions("XNYS", end, n + 1)
    return [d.date().isoformat() for d in days[:-1]]


def policies_copy(tmp: Path, symbols: int | None, history: int | None = None) -> Path:
    """The shipped policies; ``symbols``: a synthetic universe of that many; ``history``: sample
    sessions generated (a long replay's first night needs a full fetch window behind it)."""
    from ais_pipelines.config import DEFAULT_POLICIES_DIR

    d = tmp / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, d)
    if symbols:
        from ais_pipelines.market_data.sample import synthetic_universe

        uni = {"name": f"bench-{symbols}", "benchmark": "equal_weight_stocks",
               "symbols": [{"symbol": i.symbol, "asset_class": str(i.asset_class), "sector": i.sector}
                           for i in synthetic_universe(symbols + 2) if str(i.asset_class) != "CRYPTO"][:symbols]}
        # Crypto trades 24/7: the sample's 1320 crypto days are ~3.6 years, too short for the scenario window.
        (d / "universe.yaml").write_text(yaml.safe_dump(uni, sort_keys=False))
        prov = yaml.safe_load((d / "providers.yaml").read_text())
        prov["sample"]["defects"] = []  # the demo's defects name demo symbols
        if history:
            prov["sample"]["n_sessions"] = max(int(prov["sample"]["n_sessions"]), history)
        (d / "providers.yaml").write_text(yaml.safe_dump(prov, sort_keys=False))
    return d


def warm_up(pol: Path, out: Path, end: str) -> None:
    """One untimed replay of one session: the lazily imported modules are loaded for both paths."""
    time_replay(sessions_before(end, 1), pol, out)


def time_replay(sessions: list[str], pol: Path, out: Path) -> tuple[float, dict[str, float]]:
    """Seconds, and the replay's wall-clock by step plus (``worker_*``) the market worker's own
    compute time on the second core and (``phase_*``) set-up, track record and persist."""
    from datetime import date

    from ais_pipelines.replay import ReplayConfig, run_replay

    t = time.perf_counter()
    r = run_replay(ReplayConfig(date.fromisoformat(sessions[0]), date.fromisoformat(sessions[-1]), out,
                                policies_dir=pol, overwrite=True))
    seconds = time.perf_counter() - t
    manifest = json.loads((out / "replay_manifest.json").read_text())
    extra = {**manifest["worker_timings_s"], **{f"phase_{k}": v for k, v in manifest["phases_s"].items()}}
    return seconds, {**r.timings_s, **extra}


def loop_steps(t: dict[str, float]) -> dict[str, float]:
    """The replay's own wall-clock by step (the worker's time overlaps it; phases are fixed cost)."""
    return {k: v for k, v in t.items() if not k.startswith(("worker_", "phase_"))}


QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def peer_runs(sessions: list[str]) -> list[tuple[str, str]]:
    """(job, partition) in walk-forward order: the refit once, then each session's night and execution."""
    return [("model_refit_job", sessions[0])] + [(j, d) for d in sessions for j in ("nightly_job", "intraday_execution_job")]


def time_dagster(sessions: list[str], pol: Path, runtime: Path) -> float:
    import dagster as dg

    from ais_pipelines.definitions import build_definitions

    os.environ["AIS_POLICIES_DIR"] = str(pol)
    os.environ.setdefault("AIS_APPROVAL_KEY", "00" * 32)
    defs = build_definitions(env="ci", runtime_root=str(runtime))
    inst = dg.DagsterInstance.ephemeral()
    t = time.perf_counter()
    for job, d in peer_runs(sessions):
        r = defs.resolve_job_def(job).execute_in_process(partition_key=d, instance=inst, run_config=QUIET,
                                                         raise_on_error=False)
        if not r.success:
            print(f"  (peer) {job} [{d}] did not succeed")
    return time.perf_counter() - t


def time_dagster_launched(sessions: list[str], pol: Path, runtime: Path) -> float:
    """Each run in its own process on a persistent instance, in walk-forward order (see above)."""
    home = runtime / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    quiet = runtime / "quiet.yaml"
    quiet.write_text(yaml.safe_dump(QUIET))
    env = {**os.environ, "DAGSTER_HOME": str(home), "AIS_ENV": "ci", "AIS_RUNTIME_DIR": str(runtime / "runtime"),
           "AIS_POLICIES_DIR": str(pol), "DAGSTER_DISABLE_TELEMETRY": "true"}
    env.setdefault("AIS_APPROVAL_KEY", "00" * 32)
    dagster = Path(sys.executable).parent / "dagster"
    t = time.perf_counter()
    for job, d in peer_runs(sessions):
        r = subprocess.run([str(dagster), "job", "execute", "-m", "ais_pipelines.definitions", "-a", "defs", "-j", job,
                            "-c", str(quiet), "--tags", json.dumps({"dagster/partition": d})],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            print(f"  (peer, launched) {job} [{d}] did not succeed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t


PEERS = {"launched": ("Dagster backfill, launched runs (peer)", time_dagster_launched),
         "in-process": ("Dagster backfill, runs in process (lower bound)", time_dagster)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--end", default="2026-11-20")
    ap.add_argument("--big-symbols", type=int, default=100)
    ap.add_argument("--big-sessions", type=int, default=10)
    ap.add_argument("--peers", default="launched,in-process", help="comma-separated: " + ", ".join(PEERS))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "replay.md"),
                    help="where the run's report goes (overwritten; benchmarks/RESULTS.md keeps the history)")
    args = ap.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or any(p not in PEERS for p in peers):
        ap.error(f"--peers: choose from {', '.join(PEERS)}, got {args.peers!r}")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    sessions = sessions_before(args.end, args.sessions)
    load_start = os.getloadavg()[0]
    peer_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        pol = policies_copy(tmp, None)
        warm_up(pol, tmp / "warm", args.end)
        rep_s, timings = time_replay(sessions, pol, tmp / "replay")
        print(f"replay: {len(sessions)} sessions in {rep_s:.1f} s ({rep_s / len(sessions):.2f} s/session) {timings}")
        for name in peers:
            (tmp / name).mkdir()
            peer_s[name] = PEERS[name][1](sessions, pol, tmp / name)
            print(f"{PEERS[name][0]}: {len(sessions)} partitions in {peer_s[name]:.1f} s "
                  f"({peer_s[name] / len(sessions):.2f} s/partition)")
        big = None
        if args.big_sessions > 0:
            bpol = policies_copy(tmp / "big", args.big_symbols, history=args.big_sessions + 1340)
            bs = sessions_before(args.end, args.big_sessions)
            big_s, big_t = time_replay(bs, bpol, tmp / "big" / "replay")
            big = (len(bs), big_s, big_t)
            print(f"replay at {args.big_symbols} symbols: {len(bs)} sessions in {big_s:.1f} s {big_t}")
    per_r = rep_s / len(sessions)
    lines = [
        "## Walk-forward replay benchmark (issue 12)", "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC",
        f"- machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()} (1-min load "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)",
        f"- workload: sessions {sessions[0]} → {sessions[-1]} ({len(sessions)}), demo universe, sample market;"
        " each session = nightly decisions as of D + execution in D+1 + valuation at D+1's close",
        "- peers, same run: the Dagster per-partition backfill of the same sessions (model_refit_job once, then"
        " nightly_job + intraday_execution_job per partition in order) — as launched runs (a process per run,"
        " persistent instance) and in process (ephemeral instance)", "",
        "| path | seconds | s/session | replay's speed-up |", "|---|---:|---:|---:|",
        *[f"| {PEERS[n][0]} | {v:.1f} | {v / len(sessions):.2f} | {v / len(sessions) / per_r:.1f}× |"
          for n, v in peer_s.items()],
        f"| `ais replay` | {rep_s:.1f} | {per_r:.2f} | 1.0× |",
        "", "Replay time by step (s, all sessions; `worker_*`: the market half's compute on the second core, "
        "overlapping the rest; `phase_*`: outside the session loop): "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
    ]
    if big is not None:
        n, s, t = big
        steady = sum(loop_steps(t).values()) / n
        fixed = s - sum(loop_steps(t).values())
        whole = (f"measured: {s / 60:.1f} min" if n >= 252 else
                 f"252 sessions ≈ {(fixed + 252 * steady) / 60:.1f} min extrapolated")
        lines += ["", f"At {args.big_symbols} synthetic symbols: {n} sessions in {s:.1f} s ({s / n:.2f} s/session; "
                  f"steady {steady:.2f} s/session + fixed {fixed:.1f} s) → {whole} (target < 5 min for 252). By step: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in t.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    res = Path(args.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(text)


if __name__ == "__main__":
    main()
