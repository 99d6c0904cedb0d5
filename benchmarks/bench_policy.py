"""Benchmark: evaluate 10,000 orders against the shipped pre-trade policy and vetoes.

Run: ``uv run python benchmarks/bench_policy.py [--orders 10000] [--runs 15] [--check]``

Two batches: a *typical* one (most orders pass; a few percent hit a rule, as in practice) and a
*stress* one where every order hits every rule (the hits table is as large as it can be).
Reports the median wall time of ``--runs`` timed runs after one warm-up, and writes
``benchmarks/results/policy.md``. ``--check`` exits 1 when the typical median misses the target.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ais_pipelines.core.policy import evaluate_orders, shipped_policy

TARGET_MS = 100.0
NOW = datetime(2025, 3, 4, 15, 30, tzinfo=UTC)  # evaluation clock (injected, fixed)
RESULTS = Path(__file__).resolve().parent / "results" / "policy.md"


def typical_batch(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "order_id": [f"ord-{i:06d}" for i in range(n)],
            "qty": rng.integers(1, 1_000, n),
            "market_open": rng.random(n) > 0.005,
            "quote_age_s": rng.exponential(4.0, n),
            "symbol_allowed": rng.random(n) > 0.005,
            "daily_drawdown": rng.uniform(0.0, 0.0305, n),
            "event_blackout": rng.random(n) < 0.005,
            "liquidity_score": rng.uniform(0.69, 1.0, n),
            "gross_exposure_after": rng.uniform(0.3, 1.01, n),
            "gross_exposure_limit": 1.0,
            "risk_per_trade_nav": rng.uniform(0.0, 0.00505, n),
            "confidence": rng.uniform(0.58, 1.0, n),
            "reasoning": rng.choice(["NONE", "ALLOW", "ALLOW_WITH_CAUTION"], n, p=[0.6, 0.39, 0.01]),
            "correlation_to_book": rng.uniform(-0.3, 0.36, n),
            "reduces_position": rng.random(n) < 0.2,
            "pnl_obs_days": rng.integers(0, 250, n),
            "pnl_z_vs_model": rng.normal(0.0, 1.0, n),
            "exec_fill_count": rng.integers(0, 200, n),
            "exec_fill_rate": rng.uniform(0.85, 1.0, n),
            "exec_slippage_bps": rng.normal(4.0, 1.5, n),
            "exec_slippage_err_bps": rng.uniform(0.5, 8.0, n),
            "data_provider_count": rng.integers(2, 4, n),
            "data_quality_score": rng.uniform(0.8, 1.0, n),
            "win_count": rng.integers(0, 80, n),
            "correlated_win_share": rng.uniform(0.0, 0.62, n),
        }
    )


def stress_batch(n: int) -> pd.DataFrame:
    """Every order breaks every rule that can be broken together (quote_from_future excepted)."""
    df = typical_batch(n, seed=1)
    df = df.assign(
        market_open=False,
        quote_age_s=45.0,
        symbol_allowed=False,
        daily_drawdown=0.05,
        event_blackout=True,
        liquidity_score=0.2,
        gross_exposure_after=1.5,
        risk_per_trade_nav=0.01,
        confidence=0.2,
        reasoning="ALLOW_WITH_CAUTION",
        correlation_to_book=0.9,
        reduces_position=False,
        pnl_obs_days=30,
        pnl_z_vs_model=6.0,
        exec_fill_count=50,
        exec_slippage_err_bps=0.1,
        data_provider_count=1,
        win_count=30,
        correlated_win_share=0.9,
    )
    return df


def time_it(orders: pd.DataFrame, runs: int) -> tuple[float, list[float], object]:
    policy = shipped_policy()
    ev = evaluate_orders(orders, policy, NOW, 120)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        ev = evaluate_orders(orders, policy, NOW, 120)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), times, ev


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--orders", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--check", action="store_true", help="exit 1 if the typical median exceeds the target")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    rows = []
    for name, batch in (
        ("typical", typical_batch(args.orders)),
        ("stress (every rule hits)", stress_batch(args.orders)),
    ):
        med, times, ev = time_it(batch, args.runs)
        counts = ev.decisions["decision"].value_counts().to_dict()  # type: ignore[attr-defined]
        rows.append((name, med, min(times), max(times), len(ev.hits), counts))  # type: ignore[attr-defined]
        print(
            f"{name:26s} median {med:7.1f} ms  min {min(times):7.1f}  max {max(times):7.1f}  "
            f"hits {len(ev.hits):7d}  {counts}"
        )  # type: ignore[attr-defined]

    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    typical_ms = rows[0][1]
    verdict = "meets" if typical_ms < TARGET_MS else "MISSES"
    lines = [
        "# Policy engine benchmark",
        "",
        f"`uv run python benchmarks/bench_policy.py --orders {args.orders} --runs {args.runs}`: "
        f"`evaluate_orders` over {args.orders:,} orders against `policies/pre_trade.yaml` + "
        f"`policies/vetoes.yaml` ({len(shipped_policy().rules)} rules), median of {args.runs} timed runs "
        "after one warm-up. Times include building the decisions table and the long hits table "
        "(with the observed-values JSON of every hit).",
        "",
        "| batch | median ms | min ms | max ms | hits | decisions |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, med, lo, hi, n_hits, counts in rows:
        dec = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        lines.append(f"| {name} | {med:.1f} | {lo:.1f} | {hi:.1f} | {n_hits:,} | {dec} |")
    lines += [
        "",
        f"Target: typical batch < {TARGET_MS:.0f} ms — **{verdict}** it ({typical_ms:.1f} ms).",
        "",
        "Machine:",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}; nproc {nproc}; load average at the end of the run {load}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}",
        "",
        "The machine was shared with other jobs while this ran, so max times are noisy; the "
        "median is the figure to compare.",
        "",
    ]
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines))
        print(f"wrote {RESULTS}")
    return 1 if args.check and typical_ms >= TARGET_MS else 0


if __name__ == "__main__":
    sys.exit(main())
