"""``ais ingest`` and ``ais quality show``: your own files through ingestion and quality (issue 13).

In process, no Dagster executor: the same stage functions the ``raw_daily_bars``,
``daily_bars`` and ``data_quality`` assets call (``ais_pipelines/data_stages.py``). Heavy
imports live inside the commands.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import typer

from ais_pipelines.cli_support import runtime_dir, warehouse_path

LATEST = "latest"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def universe_from_files(symbols: list[str], calendar: str | None, name: str) -> dict:
    """A universe of every symbol found in the files, classified by spelling (BTC/USD is
    crypto, EUR/USD FX, anything else a stock), on ``calendar`` when given."""
    from ais_pipelines.core.asset_classes import classify_symbol

    rows = []
    for s in sorted(symbols):
        row: dict = {"symbol": s, "asset_class": str(classify_symbol(s))}
        if calendar:
            row["calendar"] = calendar
        rows.append(row)
    return {"name": name, "symbols": rows}


def ingest(
    provider: str = typer.Option("files", help="Only 'files' (a directory of CSV/Parquet files) for now."),
    directory: Path = typer.Option(..., "--dir", exists=False, help="Directory of CSV or Parquet bars files."),
    universe: Path = typer.Option(None, help="Universe YAML (like policies/universe.yaml). Default: every symbol "
                                  "found in the files, classified by spelling."),
    calendar: str = typer.Option(None, help="Exchange calendar for every symbol of the derived universe "
                                 "(e.g. XNYS, XPHS, XLON, 24/7, 24/5)."),
    as_of: str = typer.Option(LATEST, "--as-of", help="As-of session D (YYYY-MM-DD), or 'latest': the last "
                              "session the data holds."),
    refit: bool = typer.Option(True, "--refit/--no-refit", help="Fit the forecast models as of D when none is "
                               "fitted on or before it (regime first; history up to D only)."),
) -> None:
    """Ingest your own files and assess their quality as of D: every row is stored or rejected
    with a reason code; prints a per-symbol summary (rows, window, score, status, reasons).
    Without a forecast model fitted on or before D, fits them as of D (point in time), so the
    nightly job for D can run. Policies are the versions in force on D."""
    import pandas as pd
    import yaml

    from ais_pipelines.config import Policies
    from ais_pipelines.data_stages import assess_and_store_quality, promote_staged_bars, store_ingestion
    from ais_pipelines.ingestion import ingest_universe
    from ais_pipelines.market_data.files import FilesProvider
    from ais_pipelines.warehouse_store import connect_warehouse

    if provider != "files":
        raise _fail(f"--provider {provider!r}: only 'files' is supported by `ais ingest` (the nightly job "
                    "serves the network providers)", 2)
    if not directory.is_dir():
        raise _fail(f"--dir {directory}: not a directory", 2)
    if as_of != LATEST:
        try:
            as_of_ts = pd.Timestamp(as_of).normalize()
        except ValueError:
            raise _fail(f"--as-of {as_of!r}: expected YYYY-MM-DD or 'latest'", 2) from None
    t0 = time.perf_counter()
    root = runtime_dir()
    run_id = f"ingest-{uuid.uuid4().hex[:12]}"
    files = FilesProvider(directory)
    typer.echo(f"[1/5] reading {directory} …")
    found = sorted(files.symbols())
    for err in files.file_errors():
        typer.echo(f"      unusable file: {err} [{err.reason_code}]")
    if not found:
        raise _fail(f"no usable bars file in {directory} (CSV/Parquet with date, open, high, low, close, volume)")
    typer.echo(f"      {len(found)} symbols in {len(list(directory.rglob('*.*')))} files")
    if universe is None:
        uni_file = root / "ingest" / f"universe-{directory.resolve().name}.yaml"
        uni_file.parent.mkdir(parents=True, exist_ok=True)
        uni_file.write_text(yaml.safe_dump(universe_from_files(found, calendar, f"files:{directory.name}"),
                                           sort_keys=False))
        typer.echo(f"      universe: the {len(found)} symbols found (written to {uni_file})")
    else:
        uni_file = universe
    end = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize() if as_of == LATEST else as_of_ts
    # issue 13: the policy versions in force on the as-of session (on today's for 'latest', then D's)
    pol = Policies(os.environ.get("AIS_POLICIES_DIR"), universe_file=uni_file).as_of_session(end.date())
    try:
        pol.universe  # noqa: B018 - validate now, with the file's own error message
    except Exception as exc:  # noqa: BLE001 - the policy loader names file, key and value
        raise _fail(f"universe {uni_file}: {exc}", 2) from None

    typer.echo(f"[2/5] normalizing and validating (rows dated after {end.date()} are rejected) …")
    outcome = ingest_universe(policies=pol, providers={"files": files}, configured_provider="files",
                              entitled=frozenset({"files"}), end=end.date(), archive_dir=root / "raw" / run_id)
    if outcome.bars.empty:
        reasons = outcome.log.groupby("reason_code").size().to_dict()
        raise _fail(f"no symbol has a valid bar on or before {end.date()}: {reasons}. "
                    "Check the dates (a later --as-of?) and the rejects listed by `ais quality show SYMBOL`.")
    d = pd.Timestamp(outcome.bars["date"].max()) if as_of == LATEST else end
    pol_d = pol.as_of_session(d.date())
    typer.echo(f"[3/5] storing into {warehouse_path()} …")
    with connect_warehouse(str(warehouse_path())) as con:
        acc = store_ingestion(con, outcome, run_id, end.date())
        stats, _, _ = promote_staged_bars(con, run_id)
        typer.echo(f"      rows read {acc.read:,} = stored {acc.stored:,} + rejected {acc.rejected:,}"
                   f"{'' if acc.balanced else '  (UNBALANCED: ROWS_UNACCOUNTED)'}; "
                   f"{stats.inserted:,} new, {stats.updated:,} changed")
        typer.echo(f"[4/5] assessing data quality as of {d.date()} …")
        run = assess_and_store_quality(con, pol_d, d)
        refit_problem = _ensure_models(con, pol_d, d) if refit else None
        missing_models = not refit and not _has_model(con, d)
    summary = _summary(outcome.log, run.table, run.events)
    typer.echo("")
    typer.echo(summary.to_string(index=False))
    counts = run.table["status"].value_counts().to_dict()
    typer.echo(f"\nAs of {d.date()}: {len(run.table)} symbols — {counts.get('VALID', 0)} VALID, "
               f"{counts.get('INVALID_DATA', 0)} INVALID_DATA, {counts.get('INSUFFICIENT_HISTORY', 0)} "
               f"INSUFFICIENT_HISTORY; {len(run.events):,} dated flag events ({time.perf_counter() - t0:.1f} s).")
    typer.echo("Flag events of a symbol: ais quality show SYMBOL")
    if missing_models:
        typer.echo(f"No forecast model fitted on or before {d.date()}: the nightly job for {d.date()} needs one. "
                   f"Fit them as of {d.date()}: ais ingest --dir {directory} --as-of {d.date()}")
    if refit_problem:
        typer.echo(f"No forecast model fitted on or before {d.date()}, and fitting them failed: {refit_problem}. "
                   f"Once the data is fixed: ais ingest --dir {directory} --as-of {d.date()}", err=True)
    if not acc.balanced or refit_problem:
        raise typer.Exit(1)


def _has_model(con, as_of) -> bool:
    from ais_pipelines.warehouse import fetch_one, table_exists

    if not table_exists(con, "forecast_models"):
        return False
    return bool(fetch_one(con, "SELECT count(*) FROM forecast_models WHERE fit_date <= ?", [as_of.date()])[0])


def _ensure_models(con, pol, as_of) -> str | None:
    """Fit the forecast models as of D when none is fitted on or before it — regime first, as
    ``model_refit_job`` does, on history up to D only (point in time). None, or why it failed."""
    from ais_pipelines import nightly

    if _has_model(con, as_of):
        typer.echo(f"[5/5] forecast models: fitted on or before {as_of.date()} already (kept)")
        return None
    typer.echo(f"[5/5] fitting the forecast models as of {as_of.date()} (none fitted on or before it) …")
    try:
        nightly.run_regime(con, pol, as_of)
        rows = nightly.run_model_refit(con, pol, as_of)
    except Exception as exc:  # noqa: BLE001 - reported with the command to rerun, nothing is lost
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    typer.echo(f"      {len(rows)} models fitted, fit date {as_of.date()}: {', '.join(sorted(rows['model']))}")
    return None


def _summary(log, table, events):
    """One line per symbol: rows, window, score, status, reasons and event counts."""
    import pandas as pd

    q = table.set_index("symbol")
    lg = log.set_index("symbol")
    n_events = events.groupby("symbol").size() if len(events) else pd.Series(dtype=int)
    rows = []
    for s in sorted(q.index):
        r = q.loc[s]
        rows.append({
            "symbol": s,
            "read": int(lg.loc[s, "rows_received"]) if s in lg.index else 0,
            "stored": int(lg.loc[s, "rows_valid"]) if s in lg.index else 0,
            "rejected": int(lg.loc[s, "rows_rejected"]) if s in lg.index else 0,
            "window": f"{pd.Timestamp(r['first_date']).date()}..{pd.Timestamp(r['last_date']).date()}"
            if pd.notna(r["first_date"]) else "-",
            "score": round(float(r["data_quality_score"]), 3),
            "status": r["status"],
            "events": int(n_events.get(s, 0)),
            "reason_codes": r["reason_codes"],
        })
    return pd.DataFrame(rows)


def quality_show(
    symbol: str = typer.Argument(..., help="Symbol, e.g. AAPL or BTC/USD."),
    as_of: str = typer.Option(None, "--as-of", help="As-of session (default: the latest assessed)."),
    limit: int = typer.Option(200, help="Events listed at most (the timeline counts them all)."),
) -> None:
    """A symbol's data-quality row and its dated flag events (table quality_flags)."""
    import pandas as pd

    from ais_pipelines.reports.quality_timeline import flag_timeline, symbol_events
    from ais_pipelines.warehouse import fetch_one, read_table, table_exists
    from ais_pipelines.warehouse_store import connect_warehouse

    db = warehouse_path()
    if not db.exists():
        raise _fail(f"no warehouse at {db}: run `ais ingest` or the nightly job first [WAREHOUSE_MISSING]")
    with connect_warehouse(str(db), read_only=True) as con:
        if not table_exists(con, "data_quality"):
            raise _fail("the warehouse has no data-quality assessment yet: run `ais ingest` first")
        d = pd.Timestamp(as_of).date() if as_of else fetch_one(con, "SELECT max(as_of) FROM data_quality")[0]
        q = read_table(con, "data_quality", "as_of = ? AND upper(symbol) = upper(?)", [d, symbol])
        events = read_table(con, "quality_flags", "as_of = ? AND upper(symbol) = upper(?)", [d, symbol]) \
            if table_exists(con, "quality_flags") else pd.DataFrame()
    if q.empty:
        raise _fail(f"{symbol}: not assessed as of {d}")
    r = q.iloc[0]
    typer.echo(f"{r['symbol']} as of {d}: {r['status']}, score {float(r['data_quality_score']):.3f} "
               f"({r['reason_codes']}); {int(r['valid_sessions'])} valid of {int(r['expected_sessions'])} "
               f"expected sessions from {pd.Timestamp(r['first_date']).date() if pd.notna(r['first_date']) else '-'}")
    if events.empty:
        typer.echo("No dated flag events.")
        return
    timeline = flag_timeline(events).drop(columns=["symbol"])
    typer.echo("\nTimeline (events per year):")
    typer.echo(timeline.to_string(index=False))
    ev = symbol_events(events, symbol)
    ev["session"] = pd.to_datetime(ev["session"]).dt.date
    typer.echo(f"\nEvents ({len(ev)}{f', first {limit} shown' if len(ev) > limit else ''}):")
    typer.echo(ev.head(limit).to_string(index=False))


def register(app: typer.Typer) -> None:
    """Mount ``ais ingest`` and ``ais quality show`` (on the existing ``quality`` group)."""
    app.command("ingest")(ingest)
    quality = next((g.typer_instance for g in app.registered_groups if g.name == "quality"), None)
    if quality is None:
        quality = typer.Typer(help="Data quality.", no_args_is_help=True)
        app.add_typer(quality, name="quality")
    quality.command("show")(quality_show)
