"""The code location as a multiprocess step re-imports it (issue 15 tests and benchmark): the data
stages (ingestion → bars → quality) of the product's own definitions, in their own job, with the
executor ``AIS_SYMBOL_SHARDS`` selects. Everything else (policies, runtime, store) comes from the
environment the parent process set."""

from __future__ import annotations

import dagster as dg

DATA_STAGES = ("raw_daily_bars", "daily_bars", "data_quality")


def data_stages_job() -> dg.JobDefinition:
    from ais_pipelines.definitions import build_definitions, nightly_executor, symbol_shards

    defs = build_definitions()
    job = dg.define_asset_job("data_stages_job", selection=dg.AssetSelection.assets(*DATA_STAGES).without_checks(),
                              executor_def=nightly_executor(symbol_shards()))
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("data_stages_job")


def nightly_job() -> dg.JobDefinition:
    """The product's own ``nightly_job`` (its executor from ``AIS_SYMBOL_SHARDS``)."""
    from ais_pipelines.definitions import build_definitions

    return build_definitions().resolve_job_def("nightly_job")
