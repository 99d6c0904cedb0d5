"""Great Expectations suites over the warehouse and their Data Docs (§K2).

The data-quality report a risk officer reads: every expectation, its result and the failing
values, as static HTML under ``runtime/reports/data_docs/`` that works offline. Besides the
bars and the quality table it validates the rejected rows (each listed by symbol, date and
reason) and the per-symbol failures (each excluded symbol named, with its reason codes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass(frozen=True)
class DataDocsResult:
    index_path: Path
    success: bool
    suites: dict[str, dict[str, int | bool]]


def _bars_expectations(gx) -> list:
    e = gx.expectations
    return [
        *(e.ExpectColumnToExist(column=c) for c in ("symbol", "date", "open", "high", "low", "close", "volume")),
        *(e.ExpectColumnValuesToNotBeNull(column=c) for c in ("symbol", "date", "open", "high", "low", "close")),
        *(e.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True) for c in ("open", "high", "low", "close")),
        e.ExpectColumnValuesToBeBetween(column="volume", min_value=0),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="low", or_equal=True),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="close", or_equal=True),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="close", column_B="low", or_equal=True),
        e.ExpectCompoundColumnsToBeUnique(column_list=["symbol", "date"]),
        e.ExpectColumnValuesToBeInSet(column="asset_class", value_set=[str(a) for a in AssetClass]),
    ]


def _quality_expectations(gx, min_valid_sessions: int) -> list:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeBetween(column="data_quality_score", min_value=0, max_value=1),
        e.ExpectColumnValuesToBeInSet(column="status", value_set=["VALID"]),  # shows every excluded symbol
        e.ExpectColumnValuesToBeBetween(column="valid_sessions", min_value=min_valid_sessions),
        e.ExpectColumnValuesToBeBetween(column="missing_sessions_rate", min_value=0, max_value=0.05),
        e.ExpectColumnValuesToBeUnique(column="symbol"),
    ]


def _rejects_expectations(gx) -> list:
    # Every row the ingestion rejected is listed by name (symbol, date, reason, detail).
    return [gx.expectations.ExpectColumnValuesToBeNull(column="rejected_row")]


def _failures_expectations(gx) -> list:
    # Every symbol that is not tradable, with why (status and reason codes), by name.
    return [gx.expectations.ExpectColumnValuesToBeNull(column="symbol_failure")]


def rejected_rows_frame(rejects: pd.DataFrame) -> pd.DataFrame:
    """One text per rejected row: ``SYMBOL DATE REASON_CODE: detail`` (issue 13)."""
    if rejects is None or rejects.empty:
        return pd.DataFrame({"rejected_row": pd.Series([], dtype=object)})
    r = rejects.fillna("")
    text = (r["symbol"].astype(str) + " " + r["date"].astype(str) + " " + r["reason_code"].astype(str) + ": "
            + r["detail"].astype(str).str.slice(0, 160))
    return pd.DataFrame({"rejected_row": text.to_numpy(dtype=object)})


def symbol_failures_frame(quality: pd.DataFrame) -> pd.DataFrame:
    """One row per symbol; ``symbol_failure`` names the symbol and why it is excluded (else null)."""
    if quality is None or quality.empty:
        return pd.DataFrame({"symbol": pd.Series([], dtype=object), "symbol_failure": pd.Series([], dtype=object)})
    bad = quality["status"].astype(str) != "VALID"
    text = quality["symbol"].astype(str) + ": " + quality["status"].astype(str) + " (" + \
        quality["reason_codes"].astype(str) + ")"
    return pd.DataFrame({"symbol": quality["symbol"].astype(str).to_numpy(dtype=object),
                         "symbol_failure": text.where(bad, None).to_numpy(dtype=object)})


def build_data_docs(
    bars: pd.DataFrame, quality: pd.DataFrame, out_dir: Path, *, min_valid_sessions: int = 1260,
    rejects: pd.DataFrame | None = None,
) -> DataDocsResult:
    """Validate bars, the rejects and the quality table with GE and write offline Data Docs
    into ``out_dir`` (no external URL in any page, see ``offline_html``)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from ais_pipelines.reports.offline_html import make_offline

    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(
        site_name="ais_data_quality",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out_dir)},
        },
    )
    source = ctx.data_sources.add_pandas("warehouse")
    suites: dict[str, dict[str, int | bool]] = {}
    ok = True
    for name, frame, expectations in (
        ("daily_bars", bars, _bars_expectations(gx)),
        ("bar_rejects", rejected_rows_frame(rejects), _rejects_expectations(gx)),
        ("data_quality", quality, _quality_expectations(gx, min_valid_sessions)),
        ("symbol_failures", symbol_failures_frame(quality), _failures_expectations(gx)),
    ):
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("latest")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
        for exp in expectations:
            suite.add_expectation(exp)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"{name}_checkpoint", validation_definitions=[vd],
            result_format={"result_format": "COMPLETE"} if name in ("bar_rejects", "symbol_failures") else "SUMMARY",
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=["ais_data_quality"])],
        ))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        stats = next(iter(result.run_results.values())).statistics
        suites[name] = {
            "success": bool(result.success),
            "evaluated": int(stats["evaluated_expectations"]),
            "successful": int(stats["successful_expectations"]),
            "unsuccessful": int(stats["unsuccessful_expectations"]),
            "rows": len(frame),
        }
        # The bars suite must pass; the quality suite lists excluded symbols by design.
        ok = ok and (name != "daily_bars" or bool(result.success))
    make_offline(out_dir)
    return DataDocsResult(index_path=out_dir / "index.html", success=ok, suites=suites)


def data_docs_from_warehouse(con, policies, out_dir: Path, bars: pd.DataFrame | None = None) -> DataDocsResult:
    """The report over what the warehouse holds now (latest quality partition); ``bars``: the
    universe's bars when the caller has read them already."""
    from ais_pipelines.warehouse import read_bars, read_table

    if bars is None:
        bars = read_bars(con, [i.symbol for i in policies.universe.symbols])
    quality = read_table(con, "data_quality")
    if not quality.empty:
        quality = quality[quality["as_of"] == quality["as_of"].max()].reset_index(drop=True)
    rejects = None
    log = read_table(con, "ingestion_log")
    if not log.empty:  # the newest ingestion run's rejects: what tonight's data lost
        run_id = str(log.sort_values("ingested_at").iloc[-1]["run_id"])
        rejects = read_table(con, "bar_rejects", "run_id = ?", [run_id])
    return build_data_docs(bars, quality, out_dir, min_valid_sessions=policies.quality.history.min_valid_sessions,
                           rejects=rejects)
