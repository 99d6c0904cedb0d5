"""The walk-forward replay as a Dagster job with run config (§L1, issue 12), launchable from the
launchpad. It calls :func:`ais_pipelines.replay.run_replay` (the same driver as ``ais replay``);
its outputs are assets: ``replay_tear_sheet`` (the HTML, the digest) and ``replay_session``, one
materialization per replayed session as partition, with numeric metadata (NAV, CVaR, invested
weight, turnover, orders, pass rates) so the UI plots the replayed history by partition.

Launchpad example::

    ops:
      replay_tear_sheet:
        config: {start: "2026-10-01", end: "2026-11-18", out: "runtime/replay"}
"""

import math
from datetime import date
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.partitions import as_of_partitions
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource

SESSION_KEY = dg.AssetKey("replay_session")
replay_session = dg.AssetSpec(
    SESSION_KEY, group_name="replay", partitions_def=as_of_partitions, kinds={"python", "duckdb"},
    description="One replayed session D (decisions as of D, execution in D+1, valuation at D+1's close); "
    "materialized by replay_job with the session's numbers as metadata.",
)
PLOTTED = ("nav", "pnl_day", "drawdown", "gross_exposure", "p_crisis_5d", "invested_weight", "predicted_cvar",
           "turnover", "trade_cost", "orders", "fills", "approve_rate", "approved", "review", "rejected")


class ReplayRunConfig(dg.Config):
    start: str = Field(description="First as-of session (YYYY-MM-DD).")
    end: str = Field(description="Last as-of session (its D+1 is traded).")
    out: str = Field(default="", description="Output directory (default: {runtime}/replay).")
    overwrite: bool = Field(default=True, description="Replace a replay already in out.")
    dbt_marts: bool = Field(default=True, description="Build the replay's dbt marts (schema replay of its warehouse).")


def _num(v: object) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


@dg.asset(group_name="replay", kinds={"python", "html"}, deps=[SESSION_KEY],
          description="Walk-forward replay of the governed loop over [start, end] in its own warehouse, ledger "
          "and audit chain; the tear sheet (self-contained HTML) and the determinism digest.")
def replay_tear_sheet(context: dg.AssetExecutionContext, config: ReplayRunConfig, policies: PoliciesResource,
                      runtime: RuntimeResource) -> dg.MaterializeResult:
    from ais_pipelines.replay import ReplayConfig, ReplayError, run_replay
    from ais_pipelines.reports.tear_sheet import write_tear_sheet

    pol = policies.load()
    out = Path(config.out) if config.out else Path(runtime.root) / "replay"
    try:
        result = run_replay(
            ReplayConfig(date.fromisoformat(config.start), date.fromisoformat(config.end), out.resolve(),
                         policies_dir=pol.directory, universe_file=pol.universe_file, overwrite=config.overwrite),
            progress=lambda p: context.log.info(p.line()),
        )
    except ReplayError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    valid = set(as_of_partitions.get_partition_keys())
    for row in result.track_record.to_dict("records"):
        key = str(row["as_of"])
        if key not in valid:
            continue
        meta: dict[str, object] = {k: _num(row.get(k)) for k in PLOTTED}
        meta.update({"regime": str(row.get("regime")), "trading_mode": str(row.get("trading_mode"))})
        context.log_event(dg.AssetMaterialization(asset_key=SESSION_KEY, partition=key, metadata=meta))
    sheet = write_tear_sheet(result.warehouse, result.out / "tear_sheet.html")
    from ais_pipelines.replay_marts import build_replay_marts

    marts = build_replay_marts(result.out) if config.dbt_marts else None  # schema replay of its warehouse
    if marts is not None and not marts.ok:
        raise dg.Failure(f"replay dbt marts failed: {marts.summary} (log {marts.log})", allow_retries=False)
    t = result.track_record
    return dg.MaterializeResult(metadata={
        "sessions": len(result.sessions), "digest": result.digest, "seconds": round(result.seconds, 2),
        "seconds_per_session": round(result.seconds / max(1, len(result.sessions)), 3),
        "final_nav": _num(t["nav"].iloc[-1]), "max_drawdown": _num(t["drawdown"].max()),
        "scripted_actions": result.scripted_actions,
        "dbt_marts": marts.summary if marts is not None else "not built (dbt_marts: false)",
        "tear_sheet": dg.MetadataValue.path(str(sheet)), "warehouse": dg.MetadataValue.path(str(result.warehouse)),
    })


replay_job = dg.define_asset_job(
    "replay_job", selection=dg.AssetSelection.assets(replay_tear_sheet), executor_def=dg.in_process_executor,
    description="Walk-forward replay [start, end] (run config): its own warehouse, ledger and audit chain under "
    "out; per-session metadata on replay_session; the tear sheet.",
)
