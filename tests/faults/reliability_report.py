"""Rerunnable fault trials → ``docs/reliability.md`` (issue 10).

    uv run python -m tests.faults.reliability_report [--repeat N] [--random N] [--out docs/reliability.md]

Runs every kill -9 point of the crash harness on both orders of a two-order session, on the
embedded paper broker and on the Alpaca paper adapter (stub server on 127.0.0.1), plus kills at
random moments of the run, and counts per fault: trials, lost orders (a valid approval that
never reached the broker), duplicated orders (a second broker order for one approval), false
halts (trading not ACTIVE after the restart) and sessions left open.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ais_pipelines.config import DEFAULT_POLICIES_DIR
from tests.conftest import SMALL_UNIVERSE


def _policies(where: Path) -> Path:
    d = where / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, d)
    (d / "universe.yaml").write_text(yaml.safe_dump(SMALL_UNIVERSE, sort_keys=False))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="trials per (point, order, broker)")
    ap.add_argument("--random", type=int, default=10, help="kills at random moments (paper broker)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parents[2] / "docs" / "reliability.md")
    args = ap.parse_args()
    os.environ.update({"AIS_APPROVAL_KEY": "5a" * 32, "AIS_ENV": "ci", "DAGSTER_DISABLE_TELEMETRY": "true"})
    os.environ.pop("AIS_APPROVAL_KEY_FILE", None)

    from tests.faults.crash_harness import POINTS, RigSpec, crash_at_random_then_restart, rig_env
    from tests.faults.test_crash_recovery import (
        CHILD_ENV,
        TWO,
        _paper_orders,
        alpaca_trial,
        outcome,
        paper_trial,
    )
    from tests.integration.test_execution import D, write_nightly

    rows: dict[str, dict[str, Any]] = {}

    def add(fault: str, got: dict[str, Any]) -> None:
        r = rows.setdefault(fault, {"trials": 0, "killed": 0, "lost": 0, "duplicated": 0, "false_halts": 0,
                                    "open_sessions": 0})
        r["trials"] += 1
        r["killed"] += int(got["killed"])
        r["lost"] += got["lost"]
        r["duplicated"] += got["duplicated"]
        r["false_halts"] += int(got["halted"])
        r["open_sessions"] += int(not got["marker"] or got["unresolved"] > 0)

    started = time.monotonic()
    for broker, trial in (("paper", paper_trial), ("alpaca_paper (stub)", alpaca_trial)):
        for point in POINTS:
            for k in (1, 2):
                for _ in range(args.repeat):
                    with tempfile.TemporaryDirectory() as tmp:
                        work = Path(tmp)
                        add(f"kill -9 {point} ({broker})", trial(work, _policies(work), point, k))
    rng = random.Random(args.seed)
    for _ in range(args.random):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            pol = _policies(work)
            root = work / "runtime"
            root.mkdir()
            write_nightly(root / "warehouse.duckdb", spec=TWO)
            spec = RigSpec(str(root), str(pol), env=rig_env(*CHILD_ENV))
            killed, _res = crash_at_random_then_restart(rng.uniform(0.3, 2.5), spec, D)
            add("kill -9 at a random moment (paper)", {"killed": killed,
                                                        **outcome(root, _paper_orders(root / "ledger.sqlite"))})
    took = time.monotonic() - started

    lines = [
        "# Reliability: faults injected, orders lost or duplicated",
        "",
        "Written by `uv run python -m tests.faults.reliability_report` (rerun it to refresh this page; "
        f"this run: {took:.0f} s, seed {args.seed}). Each trial runs the intraday execution of a two-order "
        "session in a child process, SIGKILLs it at the fault, then restarts the way the product restarts "
        "(a new run of `intraday_execution_job`: recovery by client order id first). The same trials run "
        "in `make test` (`tests/faults/test_crash_recovery.py`), together with the concurrency faults of "
        "`tests/faults/` (three processes submitting the same approvals, two executions of one session, a "
        "killed run followed by a new one) and the audit tampering suite.",
        "",
        "| fault | trials | killed at the fault | lost | duplicated | false halts | sessions left open |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fault, r in rows.items():
        lines.append(f"| {fault} | {r['trials']} | {r['killed']} | {r['lost']} | {r['duplicated']} | "
                     f"{r['false_halts']} | {r['open_sessions']} |")
    total = {k: sum(r[k] for r in rows.values()) for k in ("trials", "lost", "duplicated", "false_halts")}
    lines += [
        "",
        f"Total: {total['trials']} trials, {total['lost']} lost, {total['duplicated']} duplicated, "
        f"{total['false_halts']} false halts.",
        "",
        "*lost*: an approval still valid at the restart that never became a broker order. *duplicated*: more "
        "than one broker order for one approval (the broker is idempotent on the deterministic client order id, "
        "and recovery adopts what the broker has). *false halt*: trading not ACTIVE after the restart. *left "
        "open*: no executed marker, or an intent neither at the broker nor closed. A random kill can land "
        "after the run finished (then *killed* is lower than *trials*).",
        "",
        "Before the fix (issue 10, measured on the previous main): 6 of 10 orders lost after kills between "
        "intent and broker call, 5 of 6 at random kill moments; 2 orders lost and 3 false AUDIT_WRITE_FAILED "
        "halts with three concurrent submitters. With the start-of-run recovery switched off, this harness "
        "fails 4 of the 10 paper trials (every after_intent and after_submitted kill leaves an order unsent).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
