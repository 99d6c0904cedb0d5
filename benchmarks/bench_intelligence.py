"""Intelligence layer per stage for 500 symbols on the embedded sample market (issue 3).

Times the core functions the nightly assets call, on 500 symbols × 1320 sessions:
features, regime fit (3-state Markov switching), model refit, forecasts, decay metrics,
lifecycle and candidate generation. Run:

    uv run python benchmarks/bench_intelligence.py [--symbols 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ais_pipelines.core import decay as decay_core
from ais_pipelines.core import features as F
from ais_pipelines.core import forecasts as FC
from ais_pipelines.core import regime as R
from ais_pipelines.core.bars import normalize_raw_bars
from ais_pipelines.core.lifecycle import (
    DEFAULT_NAV_CAPS,
    LifecycleParams,
    LifecycleState,
    Performance,
    Stage,
    step_lifecycle,
)
from ais_pipelines.core.strategies import StrategyDef, generate_candidates
from ais_pipelines.market_data.sample import generate_sample_bars, synthetic_universe


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=1320)
    ap.add_argument("--out", default="benchmarks/results/intelligence.md")
    args = ap.parse_args()
    end = pd.Timestamp("2026-11-20")
    insts = synthetic_universe(args.symbols)
    raw = generate_sample_bars(insts, end.date(), args.sessions, seed=11)
    classes = {i.symbol: i.asset_class for i in insts}
    bars = normalize_raw_bars(raw, source="bench", provider="sample", asset_classes=classes).bars
    stages: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.perf_counter()
        out = fn()
        stages[name] = time.perf_counter() - t
        return out

    feats = timed("market_features", lambda: F.compute_market_features(bars, end))
    stocks = bars[bars["asset_class"] == "STOCKS"].pivot(index="date", columns="symbol", values="adj_close")
    index = R.build_market_index(stocks)
    outcome = timed("regime fit + filter (3-state MS)", lambda: R.fit_regime_model(index.pct_change().dropna()))
    snap = timed("regime snapshot + §C3 inputs", lambda: R.regime_snapshot(
        outcome, end, inputs=R.regime_inputs(index, np.log(stocks).diff(), end)))
    labels = outcome.filtered.idxmax(axis=1)
    params = FC.ForecastParams()
    models = timed("model refit (3 models)", lambda: FC.fit_models(bars, end - pd.Timedelta(days=7), params,
                                                                    regime_labels=labels))
    probs = {r: float(snap[f"belief_{r.lower()}"]) for r in R.REGIMES}
    per_model, combined = timed("forecasts (per model + combined)", lambda: FC.forecast(
        bars, end, models, params, probs, regime_labels=labels))
    timed("model decay metrics", lambda: decay_core.decay_metrics(bars, end, models, params.decay,
                                                                  horizon=params.horizon))
    lp = LifecycleParams(nav_caps=DEFAULT_NAV_CAPS)
    specs = [StrategyDef("trend_following", "momentum"), StrategyDef("short_term_reversal", "mean_reversion", 0.5),
             StrategyDef("regime_carry", "regime_mean", -1e3)]
    timed("lifecycle step (3 strategies)", lambda: [step_lifecycle(
        LifecycleState(s.strategy_id, Stage.INCUBATING, end.date(), 1.0), Performance(0), end.date(), lp)
        for s in specs])
    quality = pd.DataFrame({"symbol": feats["symbol"], "data_quality_score": 1.0, "status": "VALID"})
    stages_map = {s.strategy_id: ("INCUBATING", 0.02) for s in specs}
    cands = timed("candidates", lambda: generate_candidates(specs, per_model, combined, feats, quality, stages_map))

    lines = [
        "# Intelligence layer benchmark",
        "",
        f"- date: {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}",
        f"- workload: {args.symbols} symbols × {args.sessions} sessions of the sample market "
        f"({len(bars):,} bars); {len(cands)} candidates produced; regime {snap['regime']}",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {k} | {v:.2f} |" for k, v in stages.items()),
        f"| **total** | **{sum(stages.values()):.2f}** |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
