"""Bars read once per run: the nightly steps (quality, features, regime, forecasts, decay,
scenarios, data docs) all read the canonical bars table; in one run process they now share one
read and filter it in memory (the bars table was read ~8 times a night).

The entry is keyed by run id, database file and row count, so a new run, another warehouse or
a write by another process reads afresh; within a run the bars are written (``daily_bars``)
before any reader runs (every reader depends on it). One entry only: a process holds the bars
of the run it is executing, never a history of runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import duckdb
import numpy as np
import pandas as pd

from ais_pipelines.warehouse import BAR_COLUMNS, read_bars, table_exists

_entry: tuple[tuple[str, str, int], pd.DataFrame] | None = None


def _key(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[str, str, int]:
    # fetchall: a half-read result would block the connection's next statement
    dbs = con.execute("SELECT file FROM pragma_database_list WHERE name = current_database()").fetchall()
    rows = con.execute("SELECT count(*) FROM bars").fetchall()
    return run_id, str(dbs[0][0] if dbs else ""), int(rows[0][0] if rows else 0)


def run_bars(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    symbols: Sequence[str] | None = None,
    *,
    end: date | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """``read_bars(con, symbols, end=end)`` (same rows, order and columns), from the run's one read."""
    global _entry, _held_columns
    if not table_exists(con, "bars"):
        return pd.DataFrame(columns=BAR_COLUMNS)
    key = _key(con, run_id)
    if _entry is None or _entry[0] != key:
        _entry = _held_columns = None  # drop the previous run's frame before reading the next
        _entry = (key, read_bars(con))
    frame = _entry[1]
    cols = _columns(frame)
    stamp = pd.Timestamp(end) if end is not None else None
    if cols is None or (stamp is not None and stamp.tzinfo is not None):  # NaN keys or an aware end
        keep = None
        if symbols is not None:
            keep = frame["symbol"].isin(list(symbols)).to_numpy()
        if stamp is not None:
            before = (frame["date"] <= stamp).to_numpy()
            keep = before if keep is None else keep & before
    else:
        codes, names, dates = cols
        keep = None
        if symbols is not None:
            wanted = set(symbols)
            if not wanted.issuperset(names):  # a filter that keeps every row is no filter
                keep = np.isin(codes, [i for i, n in enumerate(names) if n in wanted])
        if stamp is not None and len(dates) and int(dates.max()) > stamp.as_unit("ns").value:
            before = dates <= stamp.as_unit("ns").value
            keep = before if keep is None else keep & before
    if keep is not None and not keep.any():
        return read_bars(con, symbols, end=end)  # nothing selected: the empty frame exactly as read
    out = frame.copy() if keep is None else frame.loc[keep]
    return out.reset_index(drop=True)


_held_columns: tuple[pd.DataFrame, tuple[np.ndarray, list[str], np.ndarray] | None] | None = None


def _columns(frame: pd.DataFrame) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """The held frame's symbol codes and names and its dates as int64 ns, once per held frame
    (every reader of the night filters the same frame: integer masks, no string comparison per
    read). ``None`` when a symbol or date is missing (the frame's own comparisons decide)."""
    global _held_columns
    if _held_columns is None or _held_columns[0] is not frame:
        codes, uniques = pd.factorize(frame["symbol"], use_na_sentinel=True)
        dates = frame["date"].to_numpy(dtype="datetime64[ns]")
        cols = None if (codes < 0).any() or np.isnat(dates).any() else (codes, [str(u) for u in uniques],
                                                                          dates.view("int64"))
        _held_columns = (frame, cols)
    return _held_columns[1]


def extend(con: duckdb.DuckDBPyConnection, run_id: str, added: pd.DataFrame) -> bool:
    """Carry the held read to ``run_id`` after ``added`` (``read_bars`` of exactly the rows just
    inserted, none replaced) — the walk-forward replay's next night (issue 12) then reads the
    bars table once per replay instead of once per night. Carried only when the table grew by
    exactly those rows since the held read; the frame is then ``read_bars(con)``'s: the same rows
    in (symbol, date) order. False: nothing held or not provably the same (the next read reads)."""
    global _entry, _held_columns
    if _entry is None or not len(added):
        return False
    key = _key(con, run_id)
    held_key, frame = _entry
    if held_key[1] != key[1] or held_key[2] + len(added) != key[2]:
        return False
    grown = pd.concat([frame, added[frame.columns]], ignore_index=True)
    # sort_values(["symbol", "date"], kind="stable") on integer keys: the symbols' ranks (sorted
    # uniques) and the dates, one stable lexsort instead of a string sort of every row
    rank, _ = pd.factorize(grown["symbol"], sort=True, use_na_sentinel=False)
    order = np.lexsort((grown["date"].to_numpy(dtype="datetime64[ns]").view("int64"), rank))
    _held_columns = None
    _entry = (key, grown.take(order).reset_index(drop=True))
    return True


def clear() -> None:
    global _entry, _held_columns
    _entry = _held_columns = None
