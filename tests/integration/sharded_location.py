"""The code location as a multiprocess step re-imports it (issue 15 tests and benchmark): the data
stages (ingestion → bars → quality) of the product's own definitions in their own job, or the
nightly job, with the executor ``AIS_SYMBOL_SHARDS`` selects.

The settings travel as arguments (``recon``), not through the environment: the multiprocess
executor's forkserver is started once per parent process and its children see the environment
of *that* moment, which in a test session may be another test's."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

DATA_STAGES = ("raw_daily_bars", "daily_bars", "data_quality")
SETTINGS = ("AIS_POLICIES_DIR", "AIS_RUNTIME_DIR", "AIS_ENV", "AIS_WAREHOUSE_STORE", "AIS_SYMBOL_SHARDS",
            "AIS_WAREHOUSE", "AIS_DATA_PROVIDER", "FRED_API_KEY")


def _apply(settings: Mapping[str, str | None] | None) -> None:
    for k, v in (settings or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def data_stages_job(settings: Mapping[str, str | None] | None = None) -> dg.JobDefinition:
    from ais_pipelines.definitions import build_definitions, nightly_executor, symbol_shards

    _apply(settings)
    defs = build_definitions()
    job = dg.define_asset_job("data_stages_job", selection=dg.AssetSelection.assets(*DATA_STAGES).without_checks(),
                              executor_def=nightly_executor(symbol_shards()))
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("data_stages_job")


def nightly_job(settings: Mapping[str, str | None] | None = None) -> dg.JobDefinition:
    """The product's own ``nightly_job`` (its executor from ``AIS_SYMBOL_SHARDS``)."""
    from ais_pipelines.definitions import build_definitions

    _apply(settings)
    return build_definitions().resolve_job_def("nightly_job")


def recon(function: str) -> dg.ReconstructableJob:
    """``function`` of this module as a reconstructable job carrying the current settings."""
    return dg.build_reconstructable_job(__name__, function,
                                        reconstructable_kwargs={"settings": {k: os.environ.get(k) for k in SETTINGS}})
