"""Reasoning memos (issue 16): one memo per order proposal of D, after the proposals.

Thin wiring: the facts and the memos come from ``ais_pipelines.core.reasoning``; the optional
LLM provider from ``ais_pipelines.reasoning_llm``. The memo is only an input of the pre-trade
policy (``reasoning``): it never changes a proposal, a size, an approval or a broker call.
"""


from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ais_pipelines import nightly
from ais_pipelines.warehouse import read_table
from assets._common import ui_table
from assets.partitions import as_of_partitions, partition_as_of
from assets.portfolio import order_proposals
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource


@dg.asset(group_name="portfolio", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb",
          deps=[order_proposals],
          description="One reasoning memo per order proposal of D (thesis, counter-thesis, risk flags, "
          "ALLOW | ALLOW_WITH_CAUTION | DENY, provenance). An input of the pre-trade policy that can only add "
          "caution (REVIEW); it never sizes, approves or sends. Default: deterministic rules, no network.")
def reasoning_memos(context: dg.AssetExecutionContext, policies: PoliciesResource, warehouse: DuckDBResource,
                    runtime: RuntimeResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    d = as_of.date()
    prompt_dir = Path(runtime.root) / "reasoning" / str(d)
    with warehouse.get_connection() as con:
        out = nightly.run_reasoning_memos(con, pol, as_of, prompt_dir)
    frame, note = out.memos, out.provider_note
    counts = frame["verdict"].value_counts().to_dict() if len(frame) else {}
    return dg.MaterializeResult(metadata={
        "provider": note,
        "memos": len(frame),
        **{f"verdict_{k.lower()}": int(counts.get(k, 0)) for k in ("ALLOW", "ALLOW_WITH_CAUTION", "DENY", "FAILED")},
        "median_latency_ms": float(frame["latency_ms"].median()) if len(frame) else 0.0,
        "memo_table": ui_table(frame[["symbol", "side", "verdict", "risk_flags", "provider", "memo_id"]]
                               if len(frame) else frame),
    })


@dg.asset_check(asset=reasoning_memos, blocking=True, partitions_def=as_of_partitions,
                description="Every PROPOSED order of D has its memo (a FAILED memo counts: the declared rule "
                "decides it). Until this passes the execution sensor waits: no order is decided without its memo.")
def memos_cover_proposals(context: dg.AssetCheckExecutionContext, warehouse: DuckDBResource) -> dg.AssetCheckResult:
    d = partition_as_of(context).date()
    with warehouse.get_connection() as con:
        proposals = read_table(con, "order_proposals", "as_of = ?", [d])
        memos = read_table(con, "reasoning_memos", "as_of = ?", [d])
    proposed = set(proposals.loc[proposals["status"] == "PROPOSED", "symbol"]) \
        if not proposals.empty and "status" in proposals.columns else set(proposals.get("symbol", []))
    missing = sorted(proposed - set(memos.get("symbol", [])))
    return dg.AssetCheckResult(passed=not missing, metadata={
        "proposed": len(proposed), "memos": len(memos), "missing": ", ".join(missing) or "none",
        "reason_code": "REASONING_FAILED" if missing else "none",
    })
