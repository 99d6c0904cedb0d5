"""Reasoning memos (issue 16): one memo per order proposal of D, after the proposals.

Thin wiring: the facts and the memos come from ``ais_pipelines.core.reasoning``; the optional
LLM provider from ``ais_pipelines.reasoning_llm``. The memo is only an input of the pre-trade
policy (``reasoning``): it never changes a proposal, a size, an approval or a broker call.
"""


import os
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from ais_pipelines.config import Policies
from ais_pipelines.core import reasoning as reasoning_core
from ais_pipelines.warehouse import read_table, replace_partition
from assets._common import md_table
from assets.partitions import as_of_partitions, partition_as_of
from assets.portfolio import order_proposals
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource


def memo_reference_time(as_of: pd.Timestamp) -> datetime:
    """Event proximity is measured from the start of D+1 (UTC): deterministic for replays."""
    return datetime.combine(as_of.date() + timedelta(days=1), time(), UTC)


def memo_provider(pol: Policies, prompt_dir: Path) -> tuple[Any, str]:
    """(LLM provider or None for the rules, a note). An LLM without URL/key → a provider that fails."""
    cfg = pol.reasoning
    if cfg.provider == "rules":
        return None, "rules"
    from ais_pipelines.reasoning_llm import LlmMemoProvider, LlmSettings

    url, key = os.environ.get(cfg.llm.url_env, "").strip(), os.environ.get(cfg.llm.key_env, "").strip()
    settings = LlmSettings(url=url, api_key=key, model=cfg.llm.model, soft_timeout_s=cfg.llm.soft_timeout_s,
                           hard_timeout_s=cfg.llm.hard_timeout_s, max_input_tokens=cfg.llm.max_input_tokens,
                           max_output_tokens=cfg.llm.max_output_tokens)
    if not url or not key:
        return _Unconfigured(f"{cfg.llm.url_env} and {cfg.llm.key_env} must be set for provider llm"), "llm (unset)"
    return LlmMemoProvider(settings, prompt_dir), f"llm {cfg.llm.model}"


class _Unconfigured:
    name = "llm"

    def __init__(self, why: str) -> None:
        self.why = why

    def memo(self, facts: Any) -> "reasoning_core.ReasoningMemo":
        return reasoning_core.failed_memo(facts, provider="llm", model_version="unconfigured", prompt_digest="",
                                          latency_ms=0.0, attempts=0, reason_codes=(), detail=self.why)


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
    llm, note = memo_provider(pol, prompt_dir)
    with warehouse.get_connection() as con:
        proposals = read_table(con, "order_proposals", "as_of = ?", [d])
        if not proposals.empty and "status" in proposals.columns:
            proposals = proposals[proposals["status"] == "PROPOSED"]
        regime = read_table(con, "regime_probabilities", "as_of = ?", [d])
        facts = reasoning_core.memo_inputs(
            proposals, regime=regime.iloc[0].to_dict() if not regime.empty else {},
            quality=read_table(con, "data_quality", "as_of = ?", [d]),
            forecasts=read_table(con, "forecasts", "as_of = ?", [d]),
            blackouts=pol.mandate.event_blackouts, now=memo_reference_time(as_of),
        )
        memos = reasoning_core.produce_memos(facts, pol.reasoning.rules, llm)
        frame = reasoning_core.memos_frame(memos)
        replace_partition(con, "reasoning_memos", frame, "as_of", d)
    counts = frame["verdict"].value_counts().to_dict() if len(frame) else {}
    return dg.MaterializeResult(metadata={
        "provider": note,
        "memos": len(frame),
        **{f"verdict_{k.lower()}": int(counts.get(k, 0)) for k in ("ALLOW", "ALLOW_WITH_CAUTION", "DENY", "FAILED")},
        "median_latency_ms": float(frame["latency_ms"].median()) if len(frame) else 0.0,
        "memo_table": md_table(frame[["symbol", "side", "verdict", "risk_flags", "provider", "memo_id"]]
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
