"""The regime's FRED inputs (§C3, issue 16): one partition of observations per as-of session D."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from ais_pipelines import nightly
from assets._common import ui_table
from assets.partitions import as_of_partitions, partition_as_of
from resources.market_data import MarketDataResource, rest_provider
from resources.policies import PoliciesResource
from resources.runtime import RuntimeResource


@dg.asset(group_name="ingestion", partitions_def=as_of_partitions, kinds={"python", "duckdb"}, pool="duckdb",
          description="FRED VIXCLS and the declared macro series as known on D (real-time period = D), archived "
          "raw; tables macro_observations and macro_fetch_log. Without FRED_API_KEY nothing is called and the "
          "regime records the VIX proxy with VIX_PROXY_FALLBACK.")
def macro_series(context: dg.AssetExecutionContext, policies: PoliciesResource, market_data: MarketDataResource,
                 warehouse: DuckDBResource, runtime: RuntimeResource) -> dg.MaterializeResult:
    pol, as_of = policies.load(), partition_as_of(context)
    entitled = "fred" in market_data.entitled(pol) and pol.providers.providers["fred"].implemented
    fred = rest_provider("fred", pol, market_data) if entitled else None
    archive = runtime.raw_archive_dir(context.run_id)
    with warehouse.get_connection() as con:
        outcome = nightly.run_macro_series(con, pol, as_of, fred, archive)
    return dg.MaterializeResult(metadata={
        "entitled": entitled,
        "series": len(outcome.status),
        "series_ok": int((outcome.status["status"] == "OK").sum()),
        "observations": len(outcome.observations),
        "fetch_log": ui_table(outcome.status.drop(columns=["raw_path"])),
        "lineage": dg.MetadataValue.json(outcome.lineage),
    })
