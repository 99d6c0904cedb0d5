"""Ingestion + quality for 500 symbols × 1260 sessions on the embedded sample market.

Times each stage through the same core functions the assets call (fetch, archive, normalize,
warehouse upsert, quality), then the whole Dagster materialization in-process. Run:

    uv run python benchmarks/bench_ingestion.py [--symbols 500] [--sessions 1260]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import yaml

from ais_pipelines.config import DEFAULT_POLICIES_DIR, Policies
from ais_pipelines.data_stages import quality_params
from ais_pipelines.ingestion import ingest_universe
from ais_pipelines.market_data.sample import synthetic_universe
from ais_pipelines.warehouse import upsert_bars
from resources.market_data import sample_provider


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_policies(root: Path, n_symbols: int, n_sessions: int) -> Path:
    d = root / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, d)
    uni = [{"symbol": i.symbol, "asset_class": str(i.asset_class), "sector": i.sector} for i in synthetic_universe(n_symbols)]
    (d / "universe.yaml").write_text(yaml.safe_dump({"name": f"bench-{n_symbols}", "symbols": uni}))
    prov = yaml.safe_load((d / "providers.yaml").read_text())
    prov["sample"]["n_sessions"] = n_sessions + 10
    prov["sample"]["defects"] = []
    (d / "providers.yaml").write_text(yaml.safe_dump(prov))
    q = yaml.safe_load((d / "quality.yaml").read_text())
    q["history"]["fetch_sessions"] = n_sessions
    (d / "quality.yaml").write_text(yaml.safe_dump(q))
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=1260)
    ap.add_argument("--out", default="benchmarks/results/ingestion.md")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ais-bench-"))
    pol_dir = make_policies(root, args.symbols, args.sessions)
    pol = Policies(pol_dir)
    end: date = pol.providers.sample.end_session
    stages: dict[str, float] = {}

    t = time.perf_counter()
    provider = sample_provider(pol)
    outcome = ingest_universe(policies=pol, providers={"sample": provider}, configured_provider="sample",
                              entitled=frozenset({"sample"}), end=end, archive_dir=root / "raw")
    stages["ingest (total)"] = time.perf_counter() - t
    stages["  fetch/generate"] = outcome.timings_s["fetch"]
    stages["  archive raw gzip JSON"] = outcome.timings_s["archive"]
    stages["  normalize + validate"] = outcome.timings_s["normalize"]

    con = duckdb.connect(str(root / "bench.duckdb"))
    t = time.perf_counter()
    upsert_bars(con, outcome.bars, "bench")
    stages["warehouse upsert"] = time.perf_counter() - t

    from ais_pipelines.core.quality import assess_quality

    t = time.perf_counter()
    q = assess_quality(outcome.bars, outcome.rejects, end, quality_params(pol), pol.universe.calendars,
                       pol.universe.asset_classes)
    stages["quality flags + score"] = time.perf_counter() - t
    con.close()

    # The whole job: the same assets and checks through Dagster, in-process.
    from ais_pipelines.definitions import resources_for
    from assets.ingestion import daily_bars, daily_bars_schema, raw_bars_schema, raw_daily_bars
    from assets.quality import data_quality, data_quality_schema, history_gate, quality_gate

    os.environ["AIS_POLICIES_DIR"] = str(pol_dir)
    job_root = root / "job"
    job_root.mkdir()
    resources = resources_for("ci", str(job_root))
    t = time.perf_counter()
    result = dg.materialize(
        [raw_daily_bars, daily_bars, data_quality, raw_bars_schema, daily_bars_schema, quality_gate, history_gate,
         data_quality_schema],
        resources=resources, partition_key=str(end), instance=dg.DagsterInstance.ephemeral(),
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    stages["whole Dagster job (ingest → bars → quality, with checks)"] = time.perf_counter() - t
    assert result.success

    rows = len(outcome.bars)
    lines = [
        "# Ingestion and quality benchmark",
        "",
        f"- date: {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}",
        f"- workload: {args.symbols} symbols × {args.sessions} sessions on the embedded sample market "
        f"({rows:,} valid bars, {len(outcome.rejects):,} rejects, {int((q['status'] == 'VALID').sum())} VALID)",
        "",
        "| stage | seconds | rows/s |",
        "|---|---:|---:|",
    ]
    for name, secs in stages.items():
        lines.append(f"| {name} | {secs:.2f} | {rows / secs:,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
