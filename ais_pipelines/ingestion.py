"""Nightly ingestion of daily bars (§B1–B2): route, fetch, archive, normalize.

No Dagster here: the ``raw_daily_bars`` asset calls :func:`ingest_universe` and only adds
metadata. One symbol's failure (provider error, unusable file) is recorded with a reason
code and never stops the others.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from ais_pipelines.config import Instrument, Policies
from ais_pipelines.core.bars import BarsInputError, normalize_raw_bars
from ais_pipelines.core.calendars import calendar_days_for_sessions
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.market_data.base import (
    FetchResult,
    HistoryProvider,
    InstrumentRequest,
    ProviderError,
    RawRecords,
)
from ais_pipelines.market_data.routing import NO_VALID_PROVIDER, explain_selection

REJECT_COLUMNS = ["symbol", "date", "reason_code", "detail", "source", "provider"]
LOG_COLUMNS = [
    "symbol", "asset_class", "calendar", "provider", "status", "reason_code", "detail",
    "requested_start", "requested_end", "rows_received", "rows_valid", "rows_rejected", "raw_path",
]


@dataclass
class IngestionOutcome:
    bars: pd.DataFrame
    rejects: pd.DataFrame
    log: pd.DataFrame
    lineage: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def failed_symbols(self) -> list[str]:
        return sorted(self.log.loc[self.log["status"] != "OK", "symbol"].tolist())


def _safe_name(symbol: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", symbol)


def archive_raw(archive_dir: Path, result: FetchResult) -> Path:
    """Write the response as received to ``{archive_dir}/{provider}/{symbol}.json.gz`` (§B2)."""
    path = archive_dir / result.provider / f"{_safe_name(result.symbol)}.json.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(result.raw, RawRecords):
        # Columnar response: the same JSON document, the records' bytes spliced in as "response".
        head = _encode_archive({"symbol": result.symbol, "provider": result.provider, "lineage": result.lineage})
        data = head[:-1] + b',"response":' + result.raw.to_json() + b"}"
    else:
        data = _encode_archive({"symbol": result.symbol, "provider": result.provider, "lineage": result.lineage,
                                "response": result.raw})
    # Level 1: the archive is for audit and replay, written nightly; speed beats ratio here.
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(data)
    return path


def _archive_default(o: object) -> object:
    # json writes float subclasses (numpy.float64) as numbers and str()s the rest
    return float(o) if isinstance(o, float) else str(o)


def _encode_archive(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of ``body``; orjson (C) for speed — ``json.dump`` into gzip was a third
    of the nightly run. Dates, dataclasses and numpy scalars are written ``str()``-ed as before;
    non-finite floats become ``null`` (strict JSON); what orjson refuses (e.g. ints beyond 64 bits)
    falls back to the standard library."""
    import orjson

    opts = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS
    try:
        return orjson.dumps(body, default=_archive_default, option=opts)
    except orjson.JSONEncodeError:
        return json.dumps(body, default=str, separators=(",", ":")).encode("utf-8")


def resolve_provider_name(configured: str, inst: Instrument, history_days: int, policies: Policies,
                          entitled: frozenset[str]) -> tuple[str, ReasonCode | None, str]:
    """The provider for one symbol: the configured one (if entitled), or routed when "auto"."""
    matrix = policies.providers
    if configured == "auto":
        sel = explain_selection(
            inst.symbol, history_days, "history", entitled, matrix=matrix, asset_class=inst.resolved_class
        )
        if sel.ok:
            return sel.provider, None, ""
        why = "; ".join(f"{p}: {d}" for p, _, d in sel.skipped) or "no provider declared for history"
        return NO_VALID_PROVIDER, ReasonCode.NO_VALID_PROVIDER, why
    cap = matrix.providers.get(configured)
    if cap is None:
        return NO_VALID_PROVIDER, ReasonCode.NO_VALID_PROVIDER, f"unknown provider {configured!r}"
    if configured not in entitled:  # §A4: an unentitled provider is never called
        return NO_VALID_PROVIDER, ReasonCode.PROVIDER_NOT_ENTITLED, f"{configured}: set {cap.entitlement_env}"
    if inst.resolved_class not in cap.asset_classes:
        return NO_VALID_PROVIDER, ReasonCode.NO_VALID_PROVIDER, f"{configured} does not serve {inst.resolved_class}"
    return configured, None, ""


def ingest_universe(
    *,
    policies: Policies,
    providers: Mapping[str, HistoryProvider],
    configured_provider: str,
    entitled: frozenset[str],
    end: date,
    archive_dir: Path,
    symbols: list[str] | None = None,
) -> IngestionOutcome:
    """Fetch every universe symbol up to ``end`` and keep all it returns (§B1).

    Range-based providers are asked for ``fetch_sessions`` sessions (what the quality gate
    assesses); whatever a provider returns — a file's whole history — is normalized and every
    row is either stored or rejected with a reason code (see :func:`row_accounting`).
    """
    universe = policies.universe
    fetch_sessions = policies.quality.history.fetch_sessions
    instruments = [i for i in universe.symbols if symbols is None or i.symbol in symbols]
    asset_classes, calendars = universe.asset_classes, universe.calendars
    timings = {"fetch": 0.0, "archive": 0.0, "normalize": 0.0}

    plan: dict[str, list[tuple[Instrument, date]]] = {}
    log_rows: list[dict[str, Any]] = []
    days_by_cal: dict[str, int] = {}  # one calendar lookup per calendar, not per symbol
    for inst in instruments:
        cal = inst.resolved_calendar
        if cal not in days_by_cal:
            days_by_cal[cal] = calendar_days_for_sessions(cal, end, fetch_sessions)
        days = days_by_cal[cal]
        start = (pd.Timestamp(end) - pd.Timedelta(days=days - 1)).date()
        name, reason, detail = resolve_provider_name(configured_provider, inst, days, policies, entitled)
        if reason is not None or name not in providers:
            log_rows.append(_log(inst, name, "FAILED", reason or ReasonCode.PROVIDER_NOT_AVAILABLE,
                                 detail or f"no client configured for {name}", start, end))
            continue
        plan.setdefault(name, []).append((inst, start))

    bars_parts: list[pd.DataFrame] = []
    reject_parts: list[pd.DataFrame] = []
    for name, items in plan.items():
        provider = providers[name]
        t0 = time.perf_counter()
        results: dict[str, FetchResult | ProviderError] = {}
        fetch_many = getattr(provider, "fetch_many", None)
        if fetch_many is not None:
            start_min = min(s for _, s in items)
            try:
                batch = fetch_many([InstrumentRequest(i.symbol, i.resolved_class) for i, _ in items], start_min, end)
                results = {r.symbol: r for r in batch}
            except ProviderError as exc:
                results = {i.symbol: exc for i, _ in items}
        else:
            for inst, start in items:
                try:
                    results[inst.symbol] = provider.fetch_daily_bars(
                        InstrumentRequest(inst.symbol, inst.resolved_class), start, end
                    )
                except ProviderError as exc:
                    results[inst.symbol] = exc
        timings["fetch"] += time.perf_counter() - t0

        fetched: list[tuple[Instrument, date, FetchResult, Path]] = []
        for inst, start in items:
            res = results.get(inst.symbol)
            if res is None:
                log_rows.append(_log(inst, name, "FAILED", ReasonCode.PROVIDER_EMPTY_RESPONSE, "no result", start, end))
                continue
            if isinstance(res, ProviderError):
                log_rows.append(_log(inst, name, "FAILED", res.reason_code, str(res), start, end))
                continue
            t1 = time.perf_counter()
            fetched.append((inst, start, res, archive_raw(archive_dir, res)))
            timings["archive"] += time.perf_counter() - t1

        t2 = time.perf_counter()
        normalized = _normalize_all(fetched, name, asset_classes, calendars)
        timings["normalize"] += time.perf_counter() - t2
        for (inst, start, res, raw_path), norm in zip(fetched, normalized, strict=True):
            if isinstance(norm, BarsInputError):
                log_rows.append(_log(inst, name, "FAILED", norm.reason_code, str(norm), start, end,
                                     rows_received=len(res.frame), raw_path=raw_path))
                continue
            bars, rejects = norm
            # The whole history the provider returned is kept (the quality gate, not ingestion,
            # decides which sessions count). Only bars after the as-of session are held back,
            # rejected with a code: storing them would let a run as of D see the future.
            late = (bars["date"] > pd.Timestamp(end)).to_numpy()
            if late.any():
                rejects = pd.concat([rejects, _after_as_of_rejects(bars[late], end, name, inst.symbol)],
                                    ignore_index=True)
                bars = bars[~late]
            bars_parts.append(bars)
            reject_parts.append(rejects)
            status = "OK" if len(bars) else "FAILED"
            log_rows.append(_log(
                inst, name, status, None if len(bars) else ReasonCode.PROVIDER_EMPTY_RESPONSE,
                "" if len(bars) else f"no valid rows on or before {end} (all {len(rejects)} rows rejected)",
                start, end, rows_received=len(res.frame), rows_valid=len(bars), rows_rejected=len(rejects),
                raw_path=raw_path,
            ))

    # Files may carry symbols that are not in the universe: every such row is rejected (never
    # ingested) so that rows read = rows stored + rows rejected holds for the whole directory.
    for name, provider in providers.items():
        if name in plan and hasattr(provider, "rows_of"):
            unknown = sorted(set(provider.symbols()) - set(asset_classes))  # type: ignore[attr-defined]
            for sym in unknown:
                rows = provider.rows_of(sym)  # type: ignore[attr-defined]
                reject_parts.append(pd.DataFrame({
                    "symbol": sym, "date": rows["date"].astype(str).to_numpy() if "date" in rows else "",
                    "reason_code": str(ReasonCode.UNKNOWN_SYMBOL),
                    "detail": "symbol is not in the universe", "source": name, "provider": name,
                }, index=range(len(rows))))
        if name in plan and hasattr(provider, "file_errors"):
            for err in provider.file_errors():  # type: ignore[attr-defined]
                reject_parts.append(pd.DataFrame([{
                    "symbol": "", "date": "", "reason_code": str(err.reason_code), "detail": str(err),
                    "source": str(err.path), "provider": name,
                }]))

    bars = pd.concat(bars_parts, ignore_index=True) if bars_parts else pd.DataFrame()
    rejects = pd.concat([r for r in reject_parts if not r.empty], ignore_index=True) if any(
        not r.empty for r in reject_parts) else pd.DataFrame(columns=REJECT_COLUMNS)
    rejects = rejects.reindex(columns=REJECT_COLUMNS).astype({c: str for c in REJECT_COLUMNS})
    log = pd.DataFrame(log_rows, columns=LOG_COLUMNS)
    lineage = {
        name: getattr(providers[name], "lineage", {}) for name in plan
    }
    return IngestionOutcome(bars=bars, rejects=rejects, log=log, lineage=lineage, timings_s=timings)


def _after_as_of_rejects(bars: pd.DataFrame, end: date, provider: str, symbol: str) -> pd.DataFrame:
    return pd.DataFrame({
        "symbol": bars["symbol"].astype(str).to_numpy(),
        "date": bars["date"].dt.strftime("%Y-%m-%d").to_numpy(),
        "reason_code": str(ReasonCode.AFTER_AS_OF),
        "detail": f"dated after the as-of session {end}: stored by a run as of that date",
        "source": f"{provider}:{symbol}", "provider": provider,
    })


@dataclass(frozen=True)
class RowAccounting:
    """Every row a provider delivered is stored or rejected: ``read == stored + rejected``."""

    read: int
    stored: int
    rejected: int
    unbalanced_symbols: tuple[str, ...]

    @property
    def balanced(self) -> bool:
        return self.read == self.stored + self.rejected and not self.unbalanced_symbols


def row_accounting(log: pd.DataFrame, bars: pd.DataFrame, rejects: pd.DataFrame) -> RowAccounting:
    """Rows read against rows stored plus rows rejected, for one ingestion run.

    Read: each universe symbol's ``rows_received`` plus every row of a symbol outside the
    universe (each rejected as UNKNOWN_SYMBOL with source = the provider's name). Whole-file
    errors (an unreadable file) carry no rows and are not counted. ``unbalanced_symbols``
    lists symbols whose own ``rows_received != rows_valid + rows_rejected``.
    """
    named = rejects[rejects["symbol"].astype(str) != ""] if len(rejects) else rejects
    providers = set(log["provider"].astype(str)) if len(log) else set()
    outside = int(((named["reason_code"] == str(ReasonCode.UNKNOWN_SYMBOL))
                   & named["source"].isin(providers)).sum()) if len(named) else 0
    read = int(log["rows_received"].sum()) + outside if len(log) else outside
    per_symbol = (log["rows_received"] != log["rows_valid"] + log["rows_rejected"]) if len(log) else []
    unbalanced = tuple(sorted(log.loc[per_symbol, "symbol"].astype(str))) if len(log) else ()
    return RowAccounting(read=read, stored=len(bars), rejected=len(named), unbalanced_symbols=unbalanced)


def _normalize_all(
    fetched: list[tuple[Instrument, date, FetchResult, Path]], provider: str,
    asset_classes: Mapping[str, Any], calendars: Mapping[str, str],
) -> list[tuple[pd.DataFrame, pd.DataFrame] | BarsInputError]:
    """Normalize every symbol's frame; one vectorized pass when possible, per symbol otherwise.

    The batch pass is only an optimisation: if the combined input has a whole-input problem,
    each symbol is normalized alone so one bad response never costs the others.
    """
    def one(inst: Instrument, res: FetchResult) -> tuple[pd.DataFrame, pd.DataFrame] | BarsInputError:
        try:
            n = normalize_raw_bars(res.frame, source=f"{provider}:{inst.symbol}", provider=provider,
                                   asset_classes=asset_classes, calendars=calendars, expected_symbol=inst.symbol)
        except BarsInputError as exc:
            return exc
        return n.bars, n.rejects

    # Batch only inputs with the same columns: concatenating a file without adj_close with one
    # that has it would make every row of the first "adj_close is missing".
    groups: dict[tuple[str, ...], list[int]] = {}
    for k, (_, _, res, _) in enumerate(fetched):
        groups.setdefault(tuple(sorted(map(str, res.frame.columns))), []).append(k)
    out: list[tuple[pd.DataFrame, pd.DataFrame] | BarsInputError | None] = [None] * len(fetched)
    for cols, idx in groups.items():
        if len(idx) > 1 and "symbol" in cols:
            try:
                n = normalize_raw_bars(pd.concat([fetched[k][2].frame for k in idx], ignore_index=True),
                                       source=f"{provider}:batch", provider=provider, asset_classes=asset_classes,
                                       calendars=calendars)
            except BarsInputError:
                pass
            else:
                bars_by = dict(tuple(n.bars.groupby("symbol", sort=False)))
                rej_by = dict(tuple(n.rejects.groupby("symbol", sort=False)))
                empty_b, empty_r = n.bars.iloc[0:0], n.rejects.iloc[0:0]
                for k in idx:
                    sym = fetched[k][0].symbol
                    out[k] = (bars_by.get(sym, empty_b), rej_by.get(sym, empty_r))
                continue
        for k in idx:
            out[k] = one(fetched[k][0], fetched[k][2])
    return [o for o in out if o is not None]


def _log(inst: Instrument, provider: str, status: str, reason: ReasonCode | None, detail: str,
         start: date, end: date, *, rows_received: int = 0, rows_valid: int = 0, rows_rejected: int = 0,
         raw_path: Path | None = None) -> dict[str, Any]:
    return {
        "symbol": inst.symbol, "asset_class": str(inst.resolved_class), "calendar": inst.resolved_calendar,
        "provider": provider, "status": status, "reason_code": str(reason) if reason else "",
        "detail": detail, "requested_start": str(start), "requested_end": str(end),
        "rows_received": rows_received, "rows_valid": rows_valid, "rows_rejected": rows_rejected,
        "raw_path": str(raw_path) if raw_path else "",
    }
