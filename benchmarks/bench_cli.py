"""Benchmark: wall time of the ``ais`` commands that only read or write the ledger (issue 14:
under 2 s each), against the previous CLI measured in the same run.

Run: ``uv run python benchmarks/bench_cli.py [--runs 5] [--runtime DIR] [--peer-ref main]``

Each command runs in a fresh process through the console entry point (``ais_pipelines.cli:main``),
as an operator runs it. The peer is the CLI of git ref ``--peer-ref`` (``git archive`` into a
temporary directory, same virtualenv, same runtime directory), whose ledger commands imported
Dagster. ``--runtime`` should hold a demo run (``make demo``) and is changed: its pending review items
are approved in pairs, one by each CLI (a real approval: quote, sign, submit, fill).
Use it in place — a copied runtime is another ledger to the audit anchor. Figures: median of
``--runs``, the two CLIs interleaved; written to ``benchmarks/results/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cli.md"
TARGET_S = 2.0
ENTRY = "import sys; from ais_pipelines.cli import main; sys.argv[0] = 'ais'; main()"
PROBE = ("import sys, runpy; sys.argv = ['ais', *sys.argv[1:]]\n"
         "from ais_pipelines.cli import app\nfrom ais_pipelines.cli_errors import run_cli\n"
         "rc = run_cli(app, sys.argv[1:])\n"
         "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dbt', 'great_expectations'}))")
COMMANDS = (
    ["trading", "status"],
    ["review", "list"],
    ["review", "list", "--status", "ALL"],
    ["review", "reject", "review:none", "--actor", "jane.doe", "--why", "benchmark"],
    ["review", "approve", "review:none", "--actor", "jane.doe", "--why", "benchmark"],
    ["audit", "verify"],
)


def timed(code_dir: Path, args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=code_dir, env={**env, "PYTHONPATH": str(code_dir)},
                          capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[:1][0] \
        if (proc.stdout + proc.stderr).strip() else ""


def heavy_modules(code_dir: Path, args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=code_dir, env={**env, "PYTHONPATH": str(code_dir)},
                          capture_output=True, text=True, timeout=600)
    return next((ln.removeprefix("HEAVY ") for ln in proc.stdout.splitlines() if ln.startswith("HEAVY")), "?")


def peer_tree(ref: str, into: Path) -> Path:
    archive = into / "peer.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), ref], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "peer", filter="data")
    return into / "peer"


def pending_items(env: dict[str, str]) -> list[str]:
    import sqlite3

    db = Path(env["AIS_RUNTIME_DIR"]) / "ledger.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT item_id FROM review_queue WHERE status = 'PENDING' ORDER BY item_id")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runtime", type=Path, default=REPO / "runtime")
    ap.add_argument("--peer-ref", default="main")
    args = ap.parse_args()
    env = {**os.environ, "AIS_RUNTIME_DIR": str(args.runtime.resolve()),
           "DAGSTER_HOME": str(args.runtime.resolve() / "dagster_home"), "DAGSTER_DISABLE_TELEMETRY": "true"}
    key = args.runtime.resolve() / "approval.key"
    if key.exists() and not env.get("AIS_APPROVAL_KEY"):
        env["AIS_APPROVAL_KEY_FILE"] = str(key)  # the previous CLI had no key rule: give both the same key
    for k in ("AIS_WAREHOUSE", "AIS_LEDGER_URL"):
        env.pop(k, None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        peer = peer_tree(args.peer_ref, Path(tmp))
        timed(REPO, ["trading", "status"], env)  # migrations, caches: warm both once
        timed(peer, ["trading", "status"], env)
        for cmd in COMMANDS:
            ours, theirs = [], []
            for _ in range(args.runs):  # interleaved, so load on the shared machine hits both alike
                ours.append(timed(REPO, cmd, env)[0])
                theirs.append(timed(peer, cmd, env)[0])
            first = timed(REPO, cmd, env)[2]
            rows.append((" ".join(cmd), statistics.median(ours), statistics.median(theirs),
                         heavy_modules(REPO, cmd, env), first))
        items = pending_items(env)
        pairs = min(len(items) // 2, args.runs)
        if pairs:  # each pending item can be approved once: pairs of items, one per CLI, interleaved
            cmd = ["review", "approve", "{item}", "--actor", "jane.doe", "--why", "benchmark"]
            ours, theirs, line = [], [], ""
            for k in range(pairs):
                t, _rc, first = timed(REPO, [c.format(item=items[2 * k]) for c in cmd], env)
                ours.append(t)
                line = line or first
                theirs.append(timed(peer, [c.format(item=items[2 * k + 1]) for c in cmd], env)[0])
            rows.append((f"review approve PENDING-ITEM (real approval, median of {pairs})", statistics.median(ours),
                         statistics.median(theirs), "-", line))
    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    load = os.getloadavg()[0]
    lines = [
        "## CLI command latency (issue 14)", "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine}; load average at the end {load:.2f} (shared box)",
        f"- peer: the CLI of `{args.peer_ref}` (same virtualenv and runtime), median of {args.runs} runs, fresh process each",
        f"- target: < {TARGET_S:.0f} s per command", "",
        "| command | this CLI (s) | previous CLI (s) | speed-up | heavy modules imported | first output line |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, ours, theirs, heavy, first in rows:
        lines.append(f"| `ais {name}` | {ours:.2f} | {theirs:.2f} | {theirs / ours:.1f}× | {heavy} | "
                     f"{first[:70].replace('|', '/')} |")
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
