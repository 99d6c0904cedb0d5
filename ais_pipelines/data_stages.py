"""The data stages as plain functions over a warehouse connection (issue 13).

Ingestion → staged bars → stored bars → quality, exactly as the ``raw_daily_bars``,
``daily_bars`` and ``data_quality`` assets run them; ``ais ingest`` calls the same functions in
process (one code path). No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd

from ais_pipelines.bars_cache import run_bars
from ais_pipelines.config import Policies
from ais_pipelines.core.corporate_actions import CorporateActionParams
from ais_pipelines.core.data_health import DataHealthReport, HealthLimits, assess_data_health
from ais_pipelines.core.quality import QualityParams, assess, unavailable_quality_rows
from ais_pipelines.ingestion import IngestionOutcome, RowAccounting, row_accounting
from ais_pipelines.warehouse import (
    UpsertStats,
    append_rows,
    ensure_table,
    fetch_one,
    read_bars,
    read_table,
    replace_partition,
    table_exists,
    upsert_staged_bars,
)

STAGING_TABLE = "staging_bars"
QUALITY_TABLE = "data_quality"
HEALTH_TABLE = "data_health"
FLAGS_TABLE = "quality_flags"
_BAR_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume", "adj_close", "asset_class", "provider"]


def quality_params(pol: Policies) -> QualityParams:
    q = pol.quality
    return QualityParams(
        spike_sigma=q.score.spike_sigma,
        stale_min_run=q.score.stale_min_run,
        corporate_actions=CorporateActionParams(
            split_ratios=tuple(q.corporate_actions.split_ratios), split_tolerance=q.score.split_tolerance,
            asset_classes=tuple(str(c) for c in q.corporate_actions.asset_classes),
            **q.corporate_actions.model_dump(exclude={"split_ratios", "asset_classes"}),
        ),
        weights=dict(q.score.weights),
        invalid_below=q.score.invalid_below,
        min_valid_sessions=q.history.min_valid_sessions,
        window_sessions=q.history.fetch_sessions,
    )


def store_ingestion(con, outcome: IngestionOutcome, run_id: str, end: date,
                    stamp: pd.Timestamp | None = None) -> RowAccounting:
    """Stage this run's valid bars; append its rejects and log (tables exist even when empty).
    ``stamp``: when the run ingested (default now; the replay passes the night of ``end``)."""
    if stamp is None:
        stamp = pd.Timestamp.now(tz="UTC").tz_localize(None)
    bars = outcome.bars if not outcome.bars.empty else pd.DataFrame(columns=_BAR_COLUMNS)
    con.register("staging_in", bars.assign(run_id=run_id))
    try:
        con.execute(f"CREATE OR REPLACE TABLE {STAGING_TABLE} AS SELECT * FROM staging_in")
    finally:
        con.unregister("staging_in")
    ensure_table(con, "bar_rejects")
    ensure_table(con, "ingestion_log")
    append_rows(con, "bar_rejects", outcome.rejects.assign(run_id=run_id, ingested_at=stamp))
    append_rows(con, "ingestion_log", outcome.log.assign(run_id=run_id, ingested_at=stamp, as_of=end))
    return row_accounting(outcome.log, outcome.bars, outcome.rejects)


def promote_staged_bars(con, fallback_run_id: str, *, summarize: bool = True) -> tuple[UpsertStats, pd.DataFrame, int]:
    """Upsert the staged bars into ``bars`` (never deletes); the stored summary per class and the
    row count (metadata; ``summarize=False``: not computed — the replay, which shows neither,
    skips two scans of the whole bars table a night)."""
    # issue 15: upserted inside DuckDB (store_ingestion stamps every staged row with one run id)
    stats = upsert_staged_bars(con, STAGING_TABLE)
    if not summarize:
        return stats, pd.DataFrame(), 0
    summary = con.execute(
        "SELECT asset_class, count(DISTINCT symbol) AS symbols, count(*) AS rows, "
        "min(date)::DATE AS first, max(date)::DATE AS last FROM bars GROUP BY 1 ORDER BY 1"
    ).df() if table_exists(con, "bars") else pd.DataFrame()
    total = int(fetch_one(con, "SELECT count(*) FROM bars")[0]) if table_exists(con, "bars") else 0
    return stats, summary, total


def latest_ingestion(con, as_of: pd.Timestamp) -> str | None:
    """The newest ingestion run whose as-of covers ``as_of`` (its rejects are the evidence)."""
    if not table_exists(con, "ingestion_log"):
        return None
    # In SQL: the log grows by one row per symbol a night (a long replay read all of it nightly).
    # Runs are stamped one instant each; of two stamped alike the later-written row wins.
    row = fetch_one(con, 'SELECT run_id FROM "ingestion_log" WHERE CAST(as_of AS TIMESTAMP) >= ? '
                         "ORDER BY ingested_at DESC, rowid DESC LIMIT 1", [pd.Timestamp(as_of).to_pydatetime()])
    return str(row[0]) if row else None


def trailing_mean_scores(con, as_of: pd.Timestamp, n: int) -> list[float]:
    """Mean data-quality score of each of the last ``n`` assessed sessions before D (oldest first)."""
    if not table_exists(con, QUALITY_TABLE):
        return []
    rows = con.execute(f'SELECT as_of, avg(data_quality_score) FROM "{QUALITY_TABLE}" WHERE as_of < ? '
                       "GROUP BY as_of ORDER BY as_of DESC LIMIT ?", [as_of.date(), n]).fetchall()
    return [float(r[1]) for r in reversed(rows)]


class NoIngestionError(LookupError):
    """No ingestion run covers the as-of session."""


@dataclass(frozen=True)
class QualityRun:
    table: pd.DataFrame
    events: pd.DataFrame
    health: DataHealthReport


def assess_and_store_quality(con, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None) -> QualityRun:
    """The ``data_quality`` stage for session D: assess, then replace D's partitions of
    ``data_quality``, ``quality_flags`` and ``data_health``. ``run_id``: the Dagster run, whose
    one bars read is shared by the night's steps (``bars_cache``)."""
    universe = pol.universe
    ingestion_run = latest_ingestion(con, as_of)
    if ingestion_run is None:
        raise NoIngestionError(f"no ingestion covers {as_of.date()}: ingest first (raw_daily_bars, or "
                               "`ais ingest --as-of` a session on or after it)")
    symbols = [i.symbol for i in universe.symbols]
    bars = run_bars(con, run_id, symbols, end=as_of) if run_id else read_bars(con, symbols, end=as_of)
    rejects = read_table(con, "bar_rejects", "run_id = ?", [ingestion_run])
    rejects = rejects[rejects["symbol"].isin(universe.asset_classes)] if not rejects.empty else rejects
    params = quality_params(pol)
    assessed = assess(bars, rejects, as_of.date(), params, universe.calendars, universe.asset_classes)
    table = assessed.table
    ensure_table(con, FLAGS_TABLE)
    replace_partition(con, FLAGS_TABLE, assessed.events.assign(session=assessed.events["session"].dt.date),
                      "as_of", as_of.date())
    # Symbols the provider could not deliver at all still get a row: never silently absent.
    log = read_table(con, "ingestion_log", "run_id = ?", [ingestion_run])
    missing = sorted(set(universe.asset_classes) - set(table["symbol"]))
    if missing:
        reasons = {k: v for k, v in log.set_index("symbol")["reason_code"].items() if v} if not log.empty else {}
        absent = unavailable_quality_rows(
            missing, as_of.date(), asset_classes=universe.asset_classes, calendars=universe.calendars,
            reason_codes=reasons, params=params,
        )
        table = pd.concat([table, absent], ignore_index=True)
    replace_partition(con, QUALITY_TABLE, table, "as_of", as_of.date())
    health = store_data_health(con, pol, as_of, table, log)
    return QualityRun(table=table, events=assessed.events, health=health)


def store_data_health(con, pol: Policies, as_of: pd.Timestamp, table: pd.DataFrame,
                      log: pd.DataFrame) -> DataHealthReport:
    """Replace D's ``data_health`` row from the whole universe's quality table and ingestion log
    (issue 15: the fan-in of the symbol shards calls it once their quality rows are stored)."""
    health = assess_data_health(table, log, trailing_mean_scores(con, as_of, pol.quality.health.trailing_sessions),
                                HealthLimits.from_policy(pol.quality.health), as_of.date())
    replace_partition(con, HEALTH_TABLE, health.table, "as_of", as_of.date())
    return health
