"""Bring-your-own-data provider: a directory of CSV or Parquet files.

Either one file per symbol (the file name is the symbol, with ``/`` written as ``_`` or
``-``, e.g. ``AAPL.csv``, ``BTC_USD.parquet``) or long files with a ``symbol`` column.
Columns ``symbol,date,open,high,low,close,volume`` and optional ``adj_close`` (any case).
Values are read as text so that bad cells reach validation intact and are rejected with a
reason code instead of being coerced silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path

import pandas as pd

from ais_pipelines.core.bars import BarsInputError, read_raw_bars
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.market_data.base import (
    FetchResult,
    InstrumentRequest,
    ProviderEmptyError,
    ProviderError,
)

SUFFIXES = (".csv", ".parquet", ".pq")
REQUIRED = ("date", "open", "high", "low", "close", "volume")


class FilesInputError(ProviderError):
    """A file could not be used as a whole (unreadable, empty, missing columns)."""

    def __init__(self, message: str, reason_code: ReasonCode, path: Path):
        super().__init__(message, provider="files")
        self.reason_code = reason_code  # type: ignore[misc]
        self.path = path


def _symbol_from_filename(path: Path) -> str:
    return path.stem.upper().replace("_", "/").replace("-", "/")


def _read(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise FilesInputError(f"{path.name}: file is empty", ReasonCode.EMPTY_INPUT, path)
    try:
        frame = read_raw_bars(path)  # CSV as text: validation, not the parser, judges each value
    except BarsInputError as exc:
        raise FilesInputError(str(exc), exc.reason_code, path) from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if frame.empty:
        raise FilesInputError(f"{path.name}: no rows", ReasonCode.EMPTY_INPUT, path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise FilesInputError(
            f"{path.name}: missing columns {missing} (has {list(frame.columns)})", ReasonCode.MISSING_COLUMNS, path
        )
    return frame


@dataclass
class FilesIndex:
    frames: dict[str, list[tuple[Path, pd.DataFrame]]] = field(default_factory=dict)
    errors: list[FilesInputError] = field(default_factory=list)


class FilesProvider:
    name = "files"

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    @cached_property
    def index(self) -> FilesIndex:
        idx = FilesIndex()
        if not self.directory.is_dir():
            idx.errors.append(
                FilesInputError(f"{self.directory}: not a directory", ReasonCode.UNREADABLE_INPUT, self.directory)
            )
            return idx
        for path in sorted(p for p in self.directory.rglob("*") if p.suffix.lower() in SUFFIXES):
            try:
                frame = _read(path)
            except FilesInputError as exc:
                idx.errors.append(exc)
                continue
            if "symbol" in frame.columns:
                symbols = frame["symbol"].astype(str).str.strip().str.upper()
                for sym, part in frame.assign(symbol=symbols).groupby("symbol", sort=True):
                    idx.frames.setdefault(str(sym), []).append((path, part.reset_index(drop=True)))
            else:
                sym = _symbol_from_filename(path)
                idx.frames.setdefault(sym, []).append((path, frame.assign(symbol=sym)))
        return idx

    def symbols(self) -> set[str]:
        return set(self.index.frames)

    def rows_of(self, symbol: str) -> pd.DataFrame:
        """Every row the directory holds for ``symbol`` (used to reject rows of unknown symbols)."""
        parts = self.index.frames.get(symbol.upper(), [])
        return pd.concat([p for _, p in parts], ignore_index=True) if parts else pd.DataFrame(columns=["date"])

    def file_errors(self) -> list[FilesInputError]:
        return list(self.index.errors)

    def fetch_daily_bars(self, request: InstrumentRequest, start: date, end: date) -> FetchResult:
        parts = self.index.frames.get(request.symbol.upper())
        if not parts:
            broken = [e for e in self.index.errors if _symbol_from_filename(e.path) == request.symbol.upper()]
            if broken:
                raise broken[0]
            raise ProviderEmptyError(f"no file holds {request.symbol}", provider=self.name)
        frame = pd.concat([p for _, p in parts], ignore_index=True)
        cols = [c for c in ("symbol", *REQUIRED, "adj_close") if c in frame.columns]
        frame = frame[cols]
        # Date filtering happens after validation (bad dates must be rejected, not dropped).
        raw = {"files": [str(p) for p, _ in parts], "records": frame.astype(str).to_dict(orient="records")}
        return FetchResult(
            symbol=request.symbol,
            provider=self.name,
            frame=frame,
            raw=raw,
            lineage={"synthetic": False, "files": [str(p) for p, _ in parts], "requested": [str(start), str(end)]},
        )
