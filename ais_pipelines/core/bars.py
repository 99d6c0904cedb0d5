"""Structural normalization of raw daily bars (§B1, §B3).

Every provider (and every bring-your-own CSV/Parquet file) hands over a frame with the
columns ``RAW_BAR_COLUMNS`` (+ optional ``adj_close``) exactly as delivered. This module turns
it into the one canonical bars table, and writes every row it cannot trust into a rejects
table with a structured reason code instead of guessing. Problems with the whole input
(missing columns, no rows, naive and tz-aware timestamps mixed, not a table at all) raise
``BarsInputError`` — one bad file or response excludes that input, never the system.

Row rules, in precedence order (a row gets exactly one reject, the first rule it fails):

key level (is this row a bar of a known symbol on a session?)
    1. ``MISSING_VALUE``        symbol missing
    2. ``UNKNOWN_SYMBOL``       symbol not in the declared universe / not the requested one
    3. ``MISSING_VALUE``        date missing
       ``BAD_TIMESTAMP``        date cannot be parsed (epoch numbers included: unit unknown)
    4. ``INTRADAY_TIMESTAMP``   a time of day other than midnight (tz-aware timestamps are
                                judged in the calendar's timezone: 05:00Z is midnight in New York)
    5. ``NON_SESSION_DATE``     not a session of the symbol's exchange calendar
    6. ``DUPLICATE_ROW``        same symbol+date and same values: the first is kept
       ``CONFLICTING_DUPLICATE`` same symbol+date, different values: all are rejected (fail
                                closed: we cannot know which one is right)
value level (is the bar itself sane?)
    7. ``MISSING_VALUE``        a price or the volume is missing
    8. ``NON_NUMERIC_VALUE``    a price or the volume is not a finite number
    9. ``NON_POSITIVE_PRICE``   open/high/low/close/adj_close <= 0
   10. ``NEGATIVE_VOLUME``      volume < 0
   11. ``OHLC_INCONSISTENT``    high < max(open, close), low > min(open, close) or high < low

Duplicates are detected before the value rules on purpose: two different rows for one
session are a conflict even if one of them is junk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.calendars import calendar_name, get_calendar, sessions_between
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.market_data.base import RAW_BAR_COLUMNS

CANONICAL_BAR_COLUMNS: list[str] = [
    "symbol",
    "date",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "adj_close",
    "asset_class",
    "provider",
]
REJECT_COLUMNS: list[str] = ["symbol", "date", "reason_code", "detail", "source", "provider"]
PRICE_COLUMNS: list[str] = ["open", "high", "low", "close"]
VALUE_COLUMNS: list[str] = [*PRICE_COLUMNS, "volume", "adj_close"]
STRING_DTYPE = "str"  # pandas' default string dtype (NaN as missing); used for every text column

# Spellings seen in provider payloads; applied only when the canonical name is absent.
_COLUMN_ALIASES: dict[str, str] = {
    "adjclose": "adj_close",
    "adjusted_close": "adj_close",
    "ticker": "symbol",
    "timestamp": "date",
    "datetime": "date",
}
# A time of day followed by a zone designator: the string is tz-aware.
_TZ_SUFFIX = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[Zz]|UTC|GMT|utc|gmt|[+-]\d{2}(?::?\d{2})?)$"
# Bounds of datetime64[ns]; anything outside cannot be a bar date.
_MIN_TS = pd.Timestamp("1678-01-01")
_MAX_TS = pd.Timestamp("2261-12-31")


class BarsInputError(ValueError):
    """The whole input is unusable; ``reason_code`` says why, the message names the source."""

    def __init__(self, reason_code: ReasonCode, source: str, problem: str) -> None:
        self.reason_code = reason_code
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem} [{reason_code}]")


@dataclass
class NormalizedBars:
    """Canonical bars (``CANONICAL_BAR_COLUMNS``) and rejected rows (``REJECT_COLUMNS``)."""

    bars: pd.DataFrame
    rejects: pd.DataFrame


def read_raw_bars(path: str | Path) -> pd.DataFrame:
    """Read a CSV/Parquet/JSON bars file as delivered; any failure is ``UNREADABLE_INPUT``."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    try:
        if ".parquet" in suffixes or ".pq" in suffixes:
            return pd.read_parquet(p)
        if ".json" in suffixes:
            return pd.read_json(p, dtype=False, convert_dates=False)
        if ".csv" in suffixes:
            # Read as text so that normalization, not the CSV parser, judges every value.
            return pd.read_csv(p, dtype=str, keep_default_na=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same thing here
        raise BarsInputError(ReasonCode.UNREADABLE_INPUT, p.name, f"cannot read file ({exc})") from exc
    raise BarsInputError(ReasonCode.UNREADABLE_INPUT, p.name, f"unsupported file type {p.suffix!r}")


def empty_bars() -> pd.DataFrame:
    """A canonical bars frame with no rows and the right dtypes."""
    return _typed_bars(pd.DataFrame({c: [] for c in CANONICAL_BAR_COLUMNS}))


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=STRING_DTYPE) for c in REJECT_COLUMNS})


def normalize_raw_bars(
    frame: pd.DataFrame,
    *,
    source: str,
    provider: str,
    asset_classes: Mapping[str, AssetClass],
    calendars: Mapping[str, str] | None = None,
    expected_symbol: str | None = None,
) -> NormalizedBars:
    """Validate and canonicalize one raw bars input (see the module docstring for the rules).

    ``asset_classes`` maps every known symbol to its class; ``calendars`` optionally overrides
    the exchange calendar per symbol. ``expected_symbol``: the symbol this input was requested
    for — rows of any other symbol are rejected, and a frame without a symbol column takes it.
    """
    if not isinstance(frame, pd.DataFrame):
        raise BarsInputError(
            ReasonCode.UNREADABLE_INPUT, source, f"expected a table of bars, got {type(frame).__name__}"
        )
    df = _canonical_column_names(frame, source)
    if len(df) == 0:
        raise BarsInputError(ReasonCode.EMPTY_INPUT, source, "no rows delivered")
    if "symbol" not in df.columns and expected_symbol is not None:
        df["symbol"] = expected_symbol
    missing = [c for c in RAW_BAR_COLUMNS if c not in df.columns]
    if missing:
        raise BarsInputError(
            ReasonCode.MISSING_COLUMNS,
            source,
            f"missing required column(s): {', '.join(missing)} (found: {', '.join(map(str, df.columns))})",
        )
    df = df.reset_index(drop=True)
    n = len(df)
    calendars = calendars or {}
    rej = _Rejections(n)
    raw_date = df["date"]  # as delivered; converted to text only for rejected rows

    # --- symbol (resolved once per distinct spelling, not per row) -------------------------
    sym_text = _as_text(df["symbol"]).str.strip()
    sym_codes, sym_uniques = pd.factorize(sym_text)
    by_upper = {k.upper(): k for k in asset_classes}
    resolved = [k if k in asset_classes else by_upper.get(k.upper()) for k in sym_uniques]
    if expected_symbol is not None:
        resolved = [r if r == expected_symbol else None for r in resolved]
    resolved_arr = np.array([*resolved, None], dtype=object)  # code -1 (missing) → None
    symbol_arr = resolved_arr[sym_codes]
    sym_text_arr = np.array([*sym_uniques.tolist(), None], dtype=object)[sym_codes]
    rej.add(
        (sym_codes == -1) | (sym_text == "").to_numpy(dtype=bool),
        ReasonCode.MISSING_VALUE,
        "symbol is missing",
    )
    if expected_symbol is None:
        unknown_detail = _fmt("symbol {} is not in the universe", sym_text_arr)
    else:
        unknown_detail = _fmt(
            f"symbol {{}} is not the requested symbol {expected_symbol} (or not in the universe)",
            sym_text_arr,
        )
    rej.add(pd.isna(symbol_arr), ReasonCode.UNKNOWN_SYMBOL, unknown_detail)
    symbol_arr[rej.rejected] = None
    symbol = pd.Series(symbol_arr, index=df.index, dtype=object)
    cal_of_symbol = {s: calendar_name(asset_classes[s], calendars.get(s)) for s in set(symbol.dropna())}
    cal = symbol.map(cal_of_symbol)

    # --- date -----------------------------------------------------------------------------
    parsed = _parse_dates(df["date"])
    if parsed.aware.any() and parsed.naive.any():
        ex_naive = raw_date[parsed.naive].iloc[0]
        ex_aware = raw_date[parsed.aware].iloc[0]
        raise BarsInputError(
            ReasonCode.MIXED_TIMEZONES,
            source,
            f"mixes timezone-naive and timezone-aware timestamps (e.g. {str(ex_naive)!r} and {str(ex_aware)!r})",
        )
    rej.add(parsed.missing, ReasonCode.MISSING_VALUE, "date is missing")
    rej.add(parsed.bad, ReasonCode.BAD_TIMESTAMP, _fmt("date {!r} cannot be parsed", raw_date))
    day, intraday = _session_labels(parsed, cal)
    rej.add(
        intraday,
        ReasonCode.INTRADAY_TIMESTAMP,
        _fmt(
            "timestamp {} is not a daily bar (time of day is not midnight in the calendar's timezone)",
            raw_date,
        ),
    )
    day_arr = day.to_numpy()
    cal_arr = cal.to_numpy(dtype=object)
    rej.add(
        ~rej.rejected & ~_is_session(day, cal),
        ReasonCode.NON_SESSION_DATE,
        lambda idx: [f"date {pd.Timestamp(day_arr[i]).date()} is not a session of {cal_arr[i]}" for i in idx],
    )

    # --- numbers --------------------------------------------------------------------------
    values: dict[str, pd.Series] = {}
    missing_val: dict[str, np.ndarray] = {}
    non_numeric: dict[str, np.ndarray] = {}
    has_adj = "adj_close" in df.columns and not df["adj_close"].isna().all()
    for col in VALUE_COLUMNS:
        if col == "adj_close" and not has_adj:
            continue
        values[col], missing_val[col], non_numeric[col] = _parse_numbers(df[col])

    # --- duplicates (among rows with a valid key; see module docstring) --------------------
    key_ok = ~rej.rejected
    if key_ok.any():
        ident = pd.DataFrame({"symbol": symbol, "day": day})[key_ok]
        key_dup = ident.duplicated(["symbol", "day"], keep=False).to_numpy()
        if key_dup.any():
            rows = ident.index[key_dup]
            groups = ident.loc[rows].copy()
            for col, v in values.items():
                # Compare parsed numbers, but keep unparseable raw text distinct from a missing value.
                raw_text = _as_text(df.loc[rows, col]).fillna("<NA>")
                groups[col] = v.loc[rows].map(repr).where(v.loc[rows].notna(), "raw:" + raw_text)
            variants = (
                groups.drop_duplicates().groupby(["symbol", "day"], sort=False).size().rename("variants")
            )
            conflicted = (groups.join(variants, on=["symbol", "day"])["variants"] > 1).to_numpy()
            extra = groups.duplicated(keep="first").to_numpy() & ~conflicted
            conflict_mask = np.zeros(n, dtype=bool)
            conflict_mask[rows[conflicted]] = True
            extra_mask = np.zeros(n, dtype=bool)
            extra_mask[rows[extra]] = True
            rej.add(
                conflict_mask,
                ReasonCode.CONFLICTING_DUPLICATE,
                lambda idx: [
                    f"different bars for {symbol_arr[i]} on {pd.Timestamp(day_arr[i]).date()}: all rejected"
                    for i in idx
                ],
            )
            rej.add(extra_mask, ReasonCode.DUPLICATE_ROW, "exact duplicate of an earlier row (one copy kept)")

    # --- value rules ----------------------------------------------------------------------
    for col in values:
        rej.add(missing_val[col], ReasonCode.MISSING_VALUE, f"{col} is missing")
    for col in values:
        rej.add(
            non_numeric[col],
            ReasonCode.NON_NUMERIC_VALUE,
            _fmt(f"{col}={{!r}} is not a finite number", df[col]),
        )
    for col in [*PRICE_COLUMNS, "adj_close"]:
        if col in values:
            arr = values[col].to_numpy()
            rej.add(arr <= 0, ReasonCode.NON_POSITIVE_PRICE, _fmt(f"{col}={{}} <= 0", arr))
    vol = values["volume"]
    rej.add(vol.to_numpy() < 0, ReasonCode.NEGATIVE_VOLUME, _fmt("volume={} < 0", vol.to_numpy()))
    o, h, lo, c = (values[k].to_numpy() for k in PRICE_COLUMNS)
    with np.errstate(invalid="ignore"):
        ohlc_bad = (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (h < lo)
    rej.add(
        ohlc_bad,
        ReasonCode.OHLC_INCONSISTENT,
        lambda idx: [f"open={o[i]} high={h[i]} low={lo[i]} close={c[i]}" for i in idx],
    )

    # --- assemble -------------------------------------------------------------------------
    keep = ~rej.rejected
    kept_symbols = symbol[keep]
    class_of = {s: str(AssetClass(asset_classes[s])) for s in set(kept_symbols)}
    bars = pd.DataFrame(
        {
            "symbol": kept_symbols,
            "date": day[keep],
            "open": o[keep],
            "high": h[keep],
            "low": lo[keep],
            "close": c[keep],
            "volume": vol[keep],
            "adj_close": values["adj_close"][keep] if has_adj else c[keep],
            "asset_class": kept_symbols.map(class_of),
            "provider": provider,
        }
    )
    bars = _typed_bars(bars).sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)

    bad = np.flatnonzero(rej.rejected)
    if len(bad) == 0:
        return NormalizedBars(bars=bars, rejects=empty_rejects())
    rejects = pd.DataFrame(
        {
            # The declared spelling when the symbol is known, else the text as delivered.
            "symbol": [symbol_arr[i] if symbol_arr[i] is not None else sym_text_arr[i] for i in bad],
            "date": [None if _is_missing(v) else str(v) for v in raw_date.iloc[bad].tolist()],
            "reason_code": rej.code[bad],
            "detail": rej.detail[bad],
            "source": source,
            "provider": provider,
        }
    )
    return NormalizedBars(bars=bars, rejects=rejects.astype(STRING_DTYPE))


# --- helpers ------------------------------------------------------------------------------


_Detail = Callable[[np.ndarray], Iterable[str]]


class _Rejections:
    """First-rule-wins bookkeeping: a row keeps the code of the first rule it fails."""

    def __init__(self, n: int) -> None:
        self.code = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)
        self.rejected = np.zeros(n, dtype=bool)

    def add(self, mask: np.ndarray | pd.Series, code: ReasonCode, detail: str | _Detail) -> None:
        m = np.asarray(mask, dtype=bool) & ~self.rejected
        if not m.any():
            return
        idx = np.flatnonzero(m)
        self.code[idx] = str(code)
        # Details are built only for the rejected rows: formatting every row is the slow part.
        self.detail[idx] = detail if isinstance(detail, str) else list(detail(idx))
        self.rejected |= m


def _fmt(template: str, values: np.ndarray | pd.Series) -> _Detail:
    """A lazy detail builder: ``template.format(value)`` for each rejected row."""
    if isinstance(values, pd.Series):
        return lambda idx: [template.format(v) for v in values.iloc[idx].tolist()]
    return lambda idx: [template.format(values[i]) for i in idx]


def _as_text(s: pd.Series) -> pd.Series:
    """Values as text (missing stays missing), vectorized when they already are strings."""
    if isinstance(s.dtype, pd.StringDtype) or pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
        return s.astype(STRING_DTYPE)
    return s.map(lambda v: None if _is_missing(v) else str(v)).astype(STRING_DTYPE)


@dataclass
class _ParsedDates:
    naive: np.ndarray  # bool: parsed, no timezone
    aware: np.ndarray  # bool: parsed, with timezone
    missing: np.ndarray
    bad: np.ndarray
    values: pd.Series  # datetime64[ns] naive for naive rows, UTC wall time for aware rows


def _canonical_column_names(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    df = frame.copy(deep=False)  # copy-on-write: renaming here never touches the caller's frame
    if "date" not in {str(c).strip().lower() for c in df.columns} and str(df.index.name).lower() == "date":
        df = df.reset_index()
    names = [re.sub(r"[\s\-]+", "_", str(c).strip().lower()) for c in df.columns]
    names = [
        _COLUMN_ALIASES[n] if n in _COLUMN_ALIASES and _COLUMN_ALIASES[n] not in names else n for n in names
    ]
    seen = [n for n in names if n in (*RAW_BAR_COLUMNS, "adj_close")]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise BarsInputError(
            ReasonCode.UNREADABLE_INPUT, source, f"ambiguous columns, more than one named {', '.join(dupes)}"
        )
    df.columns = names
    return df


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NaT or v is pd.NA:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _parse_one(v: Any) -> pd.Timestamp | None:
    """Fallback for one value the vectorized ISO parser could not handle."""
    if isinstance(v, bool | int | float | np.integer | np.floating):
        return None  # epoch numbers are ambiguous (s? ms?): refuse rather than guess
    if isinstance(v, datetime | date | np.datetime64 | str):
        try:
            ts = pd.Timestamp(v)
        except (ValueError, TypeError, OverflowError):
            return None
        return None if ts is pd.NaT else ts
    return None


def _parse_dates(raw: pd.Series) -> _ParsedDates:
    n = len(raw)
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        missing = raw.isna().to_numpy()
        ok = ~missing
        out[:] = raw.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
        return _ParsedDates(np.zeros(n, bool), ok, missing, np.zeros(n, bool), out)
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        missing = raw.isna().to_numpy()
        out[:] = raw.astype("datetime64[ns]")
        return _ParsedDates(~missing, np.zeros(n, bool), missing, np.zeros(n, bool), out)

    aware = np.zeros(n, bool)
    naive = np.zeros(n, bool)
    if isinstance(raw.dtype, pd.StringDtype) or pd.api.types.infer_dtype(raw, skipna=True) in (
        "string",
        "empty",
    ):
        # All text (the usual CSV/JSON case): vectorized.
        na = raw.isna().to_numpy(dtype=bool)
        missing = na | (raw.astype(STRING_DTYPE).str.strip() == "").to_numpy(dtype=bool)
        is_str = ~missing
    else:
        missing = raw.map(_is_missing).to_numpy(dtype=bool)
        is_str = raw.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool) & ~missing
    fallback = ~is_str & ~missing

    if is_str.any():
        s = raw[is_str].astype(STRING_DTYPE).str.strip()
        # Only strings longer than a bare date can carry a zone; the pattern stays plain text and
        # case-sensitive so pyarrow's regex engine runs it instead of a Python loop.
        tz_str = ((s.str.len() > 10) & s.str.contains(_TZ_SUFFIX, regex=True)).to_numpy(dtype=bool)
        for tz_flag in (False, True):
            sub = s[tz_str == tz_flag]
            if sub.empty:
                continue
            ts = pd.to_datetime(sub, format="ISO8601", utc=tz_flag, errors="coerce")
            ok = ts.notna() & (ts.dt.tz_localize(None) if tz_flag else ts).between(_MIN_TS, _MAX_TS)
            good = ts[ok]
            if tz_flag:
                good = good.dt.tz_localize(None)
            out.loc[good.index] = good.astype("datetime64[ns]")
            pos = raw.index.get_indexer(good.index)
            (aware if tz_flag else naive)[pos] = True
            fallback[raw.index.get_indexer(sub.index[~ok.to_numpy()])] = True

    for pos in np.flatnonzero(fallback):
        ts = _parse_one(raw.iloc[pos])
        if ts is None:
            continue
        wall = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
        if not (_MIN_TS <= wall <= _MAX_TS):
            continue
        out.iloc[pos] = wall
        (aware if ts.tzinfo is not None else naive)[pos] = True
    bad = ~missing & ~aware & ~naive
    return _ParsedDates(naive, aware, missing, bad, out)


def _session_labels(parsed: _ParsedDates, cal: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Session label per row (tz-naive midnight) and an intraday mask.

    A tz-aware timestamp is converted to the calendar's timezone before the midnight test:
    daily bars stamped 05:00Z are midnight New York time, i.e. the session label.
    """
    local = parsed.values.copy()
    aware_rows = np.flatnonzero(parsed.aware & cal.notna().to_numpy())
    if len(aware_rows):
        tz_of = {name: str(get_calendar(name).tz) for name in cal.dropna().unique().tolist()}
        tz = cal.iloc[aware_rows].map(tz_of)
        for zone in tz.unique().tolist():
            rows = aware_rows[(tz == zone).to_numpy()]
            wall = parsed.values.iloc[rows].dt.tz_localize("UTC").dt.tz_convert(zone).dt.tz_localize(None)
            local.iloc[rows] = wall.astype("datetime64[ns]").to_numpy()
    intraday = (local.notna() & (local != local.dt.normalize())).to_numpy()
    return local.astype("datetime64[ns]"), intraday


def _is_session(day: pd.Series, cal: pd.Series) -> np.ndarray:
    out = np.zeros(len(day), dtype=bool)
    ok = day.notna() & cal.notna()
    for name in cal[ok].unique().tolist():
        rows = (ok & (cal == name)).to_numpy()
        d = day[rows]
        sessions = sessions_between(name, d.min(), d.max())
        out[rows] = d.isin(sessions).to_numpy()
    return out


def _parse_numbers(raw: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Float values plus masks: missing (None/NaN/blank) and non-numeric (incl. inf)."""
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        v = raw.astype("float64")
        missing = v.isna().to_numpy()
        non_num = np.isinf(v.to_numpy())
    elif isinstance(raw.dtype, pd.StringDtype) or pd.api.types.infer_dtype(raw, skipna=True) in (
        "string",
        "empty",
    ):
        text = raw.astype(STRING_DTYPE).str.strip()
        missing = (raw.isna() | (text == "")).to_numpy(dtype=bool)
        v = pd.to_numeric(text.where(~missing), errors="coerce").astype("float64")
        non_num = ~missing & (v.isna().to_numpy() | np.isinf(v.to_numpy()))
    else:
        missing = raw.map(_is_missing).to_numpy(dtype=bool)
        text = raw.map(lambda x: x.strip() if isinstance(x, str) else x)
        text = text.where(~pd.Series(missing, index=raw.index) & text.map(lambda x: not isinstance(x, bool)))
        v = pd.to_numeric(text, errors="coerce").astype("float64")
        non_num = ~missing & (v.isna().to_numpy() | np.isinf(v.to_numpy()))
    v = v.where(~pd.Series(non_num, index=raw.index))  # inf never reaches a bar
    return v, missing, non_num


def _typed_bars(df: pd.DataFrame) -> pd.DataFrame:
    out = df[CANONICAL_BAR_COLUMNS].copy()
    for col in ("symbol", "asset_class", "provider"):
        out[col] = out[col].astype(STRING_DTYPE)
    out["date"] = pd.to_datetime(out["date"]).astype("datetime64[ns]")
    for col in VALUE_COLUMNS:
        out[col] = out[col].astype("float64")
    return out
