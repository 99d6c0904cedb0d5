"""Incremental nightly ingestion for the walk-forward replay (issue 12). No Dagster.

A live night ingests the whole fetch window (``quality.history.fetch_sessions`` sessions) again:
right for a live provider, whose history may be revised, but in a replay the history is one
deterministic response per symbol (:class:`ais_pipelines.replay_feed.WindowedHistory`) and night
D+1's window is night D's minus the sessions that fell out of it plus the new session. So each
replayed night calls the same :func:`ais_pipelines.ingestion.ingest_universe` (routing,
normalization, archive) for the rows dated after the previous night only, and carries the
window's valid-bar dates and rejects from the nights before: the ``bars``, ``bar_rejects`` and
``ingestion_log`` rows the night reads are those of the full-window night
(``tests/unit/test_replay_ingest.py`` proves it on a several-session case with defects).

Normalization is row-local except duplicate (symbol, date) rows, which share their date and so
fall into the same night; a whole-input failure or a reject without a parseable date falls back
to the full-window ingestion for that night (and re-seeds the carried state). What differs from a
full-window night, on purpose: ``staging_bars`` holds the new rows only (the night never reads
it), the raw archive of a night holds the rows fetched that night, and ``ingestion_log.raw_path``
names the archive of the symbol's newest rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.config import Policies
from ais_pipelines.core.calendars import calendar_days_for_sessions
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ingestion import (
    LOG_COLUMNS,
    REJECT_COLUMNS,
    IngestionOutcome,
    _log,
    ingest_universe,
    resolve_provider_name,
)


class _RowsAfter:
    """The windowed history answering only rows dated after ``after`` (the previous night)."""

    def __init__(self, history: Any, after: date) -> None:
        self.history, self.name, self.after = history, history.name, after

    def fetch_daily_bars(self, request: Any, start: date, end: date) -> Any:
        return self.history.fetch_daily_bars(request, max(start, self.after + timedelta(days=1)), end)

    def fetch_many(self, requests: Any, start: date, end: date) -> list[Any]:
        return self.history.fetch_many(requests, max(start, self.after + timedelta(days=1)), end)


@dataclass
class _SymbolWindow:
    bar_dates: np.ndarray  # datetime64[ns], sorted: the valid bars ingested so far
    rejects: pd.DataFrame  # REJECT_COLUMNS + "_date" (the raw row's date)
    raw_path: str = ""


def _dated(rejects: pd.DataFrame) -> pd.DataFrame | None:
    """The rejects with their parsed dates (``_date``); ``None`` when one has no readable date."""
    dates = pd.to_datetime(rejects["date"], errors="coerce", format="mixed") \
        if len(rejects) else pd.Series(dtype="datetime64[ns]")
    return None if dates.isna().any() else rejects.assign(_date=dates.to_numpy())


def _by_symbol(frame: pd.DataFrame, column: str | None = None) -> dict[str, Any]:
    """``frame`` (or its ``column``) per symbol, in order of appearance."""
    if not len(frame):
        return {}
    groups = frame.groupby("symbol", sort=False)
    return dict(tuple(groups[column] if column else groups))


def _dates_by_symbol(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """``_by_symbol(frame, "date")`` as datetime64[ns] arrays (one stable argsort, no groupby split)."""
    if not len(frame):
        return {}
    codes, uniques = pd.factorize(frame["symbol"], sort=False)
    order = np.argsort(codes, kind="stable")
    codes, dates = codes[order], frame["date"].to_numpy(dtype="datetime64[ns]")[order]
    bounds = np.searchsorted(codes, np.arange(len(uniques) + 1), "left")
    return {str(u): dates[bounds[i]:bounds[i + 1]] for i, u in enumerate(uniques)}


@dataclass
class IncrementalIngestion:
    """Carried window state between replayed nights (one provider: the windowed sample)."""

    providers: dict[str, Any]
    configured: str
    entitled: frozenset[str]
    last_day: date | None = None
    windows: dict[str, _SymbolWindow] = field(default_factory=dict)
    last_day_before: date | None = None  # the night before the last one (a delta night: its rows came after it)
    window_start: pd.Timestamp | None = None  # the earliest date the last night's window holds
    key: tuple[Any, ...] = ()  # what the carried window depends on (policies in force can change)
    full_nights: int = 0
    delta_nights: int = 0

    @property
    def eligible(self) -> bool:
        from ais_pipelines.replay_feed import WindowedHistory

        return len(self.providers) == 1 and all(isinstance(p, WindowedHistory) for p in self.providers.values())

    def outcome(self, pol: Policies, day: date, archive_dir: Path) -> IngestionOutcome:
        """The night's outcome for the ingestion stages: its rejects and log are the full
        window's; after the first night its bars are the new ones (what is staged and upserted;
        ``window_start`` is then set: the older rows the full night would have re-delivered)."""
        key = (tuple((i.symbol, str(i.resolved_class), i.resolved_calendar) for i in pol.universe.symbols),
               pol.quality.history.fetch_sessions, pol.providers.model_dump_json())
        same, self.key = key == self.key, key
        if self.last_day is None or day <= self.last_day or not same:  # _full leaves it None if not eligible
            return self._full(pol, day, archive_dir)
        delta = ingest_universe(policies=pol, providers={k: _RowsAfter(v, self.last_day)
                                                             for k, v in self.providers.items()},
                                configured_provider=self.configured, entitled=self.entitled, end=day,
                                archive_dir=archive_dir)
        merged = self._merge(pol, delta, day)
        if merged is None:
            return self._full(pol, day, archive_dir)
        self.last_day_before, self.last_day = self.last_day, day
        self.delta_nights += 1
        return merged

    # ----------------------------------------------------------------------------------------

    def _full(self, pol: Policies, day: date, archive_dir: Path) -> IngestionOutcome:
        out = ingest_universe(policies=pol, providers=self.providers, configured_provider=self.configured,
                              entitled=self.entitled, end=day, archive_dir=archive_dir)
        self.full_nights += 1
        self.windows, self.last_day, self.window_start, self.last_day_before = {}, None, None, None
        if not self.eligible:
            return out
        rejects = _dated(out.rejects)
        if not self._row_level(out.log).all() or rejects is None:
            return out  # not carried: every next night ingests its whole window
        by_bars = _by_symbol(out.bars, "date")
        by_rej = _by_symbol(rejects)
        for row in out.log.itertuples():
            s = str(row.symbol)
            dates = by_bars.get(s)
            self.windows[s] = _SymbolWindow(
                np.sort(dates.to_numpy(dtype="datetime64[ns]")) if dates is not None
                else np.array([], dtype="datetime64[ns]"),
                by_rej.get(s, rejects.iloc[0:0]).reset_index(drop=True), str(row.raw_path))
        self.last_day = day
        return out

    @staticmethod
    def _row_level(log: pd.DataFrame) -> pd.Series:
        """Log rows the carried state reproduces: OK, no row in the window, or every row rejected
        (row-level rules); not a whole-input failure (which is judged on the whole window)."""
        empty = log["reason_code"] == str(ReasonCode.PROVIDER_EMPTY_RESPONSE)
        all_rejected = (log["rows_valid"] == 0) & (log["rows_received"] > 0) & \
            (log["rows_rejected"] == log["rows_received"])
        return (log["status"] == "OK") | (empty & ((log["detail"] == "no result") | all_rejected))

    def _merge(self, pol: Policies, delta: IngestionOutcome, day: date) -> IngestionOutcome | None:
        universe = pol.universe
        fetch = pol.quality.history.fetch_sessions
        days_by_cal: dict[str, int] = {}
        starts: dict[str, date] = {}
        planned: list[Any] = []
        for inst in universe.symbols:
            cal = inst.resolved_calendar
            if cal not in days_by_cal:
                days_by_cal[cal] = calendar_days_for_sessions(cal, day, fetch)
            starts[inst.symbol] = (pd.Timestamp(day) - pd.Timedelta(days=days_by_cal[cal] - 1)).date()
            name, reason, _ = resolve_provider_name(self.configured, inst, days_by_cal[cal], pol, self.entitled)
            if reason is None and name in self.providers:
                planned.append((inst, name))
        if not planned:
            return None
        # fetch_many asks every symbol of a provider from the earliest start (ingest_universe)
        lo = np.datetime64(pd.Timestamp(min(starts[i.symbol] for i, _ in planned)), "ns")
        dlog = delta.log.set_index("symbol", drop=False)
        bad = dlog[~self._row_level(dlog)]
        if any(i.symbol in bad.index for i, _ in planned):
            return None  # a whole-input failure tonight: judged on the whole window instead
        new_rej = _dated(delta.rejects)
        if new_rej is None:
            return None
        raw_paths = dict(zip(dlog.index, dlog["raw_path"], strict=True))  # one lookup a symbol, not a .loc
        new_bars = _dates_by_symbol(delta.bars)
        new_by_rej = _by_symbol(new_rej)
        # ingest_universe's log order: routing failures, fetch failures, then the normalized symbols
        routed_out: list[dict[str, Any]] = []
        no_result: list[dict[str, Any]] = []
        log_rows: list[dict[str, Any]] = []
        reject_parts: list[pd.DataFrame] = []
        planned_names = {i.symbol: n for i, n in planned}
        for inst in universe.symbols:
            s = inst.symbol
            if s not in planned_names:
                routed_out.append(dlog.loc[s, LOG_COLUMNS].to_dict())  # as the full night
                continue
            w = self.windows.get(s)
            if w is None:
                w = self.windows[s] = _SymbolWindow(np.array([], dtype="datetime64[ns]"),
                                                    pd.DataFrame(columns=[*REJECT_COLUMNS, "_date"]))
            if s in new_bars:
                w.bar_dates = np.concatenate([w.bar_dates, new_bars[s]])
            w.bar_dates = w.bar_dates[np.searchsorted(w.bar_dates, lo, "left"):]
            rej = w.rejects
            if s in new_by_rej:
                rej = pd.concat([rej, new_by_rej[s]], ignore_index=True) if len(rej) else \
                    new_by_rej[s].reset_index(drop=True)
            if len(rej):
                rej = rej[rej["_date"].to_numpy() >= lo].reset_index(drop=True)
            w.rejects = rej
            if str(raw_paths.get(s, "")):
                w.raw_path = str(raw_paths[s])
            n_valid, n_rej = len(w.bar_dates), len(rej)
            start = starts[s]
            if n_valid + n_rej == 0:
                no_result.append(_log(inst, planned_names[s], "FAILED", ReasonCode.PROVIDER_EMPTY_RESPONSE,
                                      "no result", start, day))
                continue
            log_rows.append(_log(
                inst, planned_names[s], "OK" if n_valid else "FAILED",
                None if n_valid else ReasonCode.PROVIDER_EMPTY_RESPONSE,
                "" if n_valid else f"no valid rows on or before {day} (all {n_rej} rows rejected)",
                start, day, rows_received=n_valid + n_rej, rows_valid=n_valid, rows_rejected=n_rej,
                raw_path=Path(w.raw_path) if w.raw_path else None))
            if n_rej:
                reject_parts.append(rej)
        rejects = pd.concat(reject_parts, ignore_index=True).drop(columns="_date") if reject_parts \
            else pd.DataFrame(columns=REJECT_COLUMNS)
        rejects = rejects.reindex(columns=REJECT_COLUMNS).astype({c: str for c in REJECT_COLUMNS})
        log = pd.DataFrame([*routed_out, *no_result, *log_rows], columns=LOG_COLUMNS)
        self.window_start = pd.Timestamp(lo)
        return IngestionOutcome(bars=delta.bars, rejects=rejects, log=log, lineage=delta.lineage,
                                timings_s=delta.timings_s)
