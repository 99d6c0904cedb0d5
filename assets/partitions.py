"""As-of-session partitions: one partition per XNYS session, so every day's decision is a
reproducible artefact and a backfill is a walk-forward replay (§0, §L1)."""

import dagster as dg
import pandas as pd

from ais_pipelines.core.calendars import sessions_between

AS_OF_CALENDAR = "XNYS"
FIRST_AS_OF = "2022-01-03"
LAST_AS_OF = "2030-12-31"

as_of_partitions = dg.StaticPartitionsDefinition(
    [d.strftime("%Y-%m-%d") for d in sessions_between(AS_OF_CALENDAR, FIRST_AS_OF, LAST_AS_OF)]
)


def partition_as_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> pd.Timestamp:
    return pd.Timestamp(context.partition_key)
