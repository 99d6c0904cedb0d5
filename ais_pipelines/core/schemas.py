"""Pandera schemas of the canonical bars and the data-quality table (§B3–§B5).

Assets attach these as checks; ``validate_frame`` turns a lazy validation into plain
records (one per failure case) so a failed check can be stored, shown and given the
``SCHEMA_VIOLATION`` reason code instead of crashing a run.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors
from pandera.typing import Series

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.quality import DataStatus
from ais_pipelines.core.reason_codes import ReasonCode

_ASSET_CLASSES = [str(c) for c in AssetClass]
_STATUSES = [str(s) for s in DataStatus]
_UNIT = {"in_range": {"min_value": 0.0, "max_value": 1.0}}


class CanonicalBarsSchema(pa.DataFrameModel):
    """Canonical daily bars: exactly ``CANONICAL_BAR_COLUMNS``, one row per symbol and session."""

    symbol: Series[str] = pa.Field(str_length={"min_value": 1})
    date: Series[pa.DateTime] = pa.Field()
    open: Series[float] = pa.Field(gt=0)
    high: Series[float] = pa.Field(gt=0)
    low: Series[float] = pa.Field(gt=0)
    close: Series[float] = pa.Field(gt=0)
    volume: Series[float] = pa.Field(ge=0)
    adj_close: Series[float] = pa.Field(gt=0)
    asset_class: Series[str] = pa.Field(isin=_ASSET_CLASSES)
    provider: Series[str] = pa.Field(str_length={"min_value": 1})

    class Config:
        strict = True
        ordered = True
        unique = ["symbol", "date"]

    @pa.check("date", name="date_at_midnight")
    @classmethod
    def date_at_midnight(cls, s: Series[pd.Timestamp]) -> Series[bool]:
        # Bars are labelled by session; any time of day means an intraday bar slipped through.
        return s == s.dt.normalize()

    @pa.check("date", name="date_naive_ns")
    @classmethod
    def date_naive_ns(cls, s: Series[pd.Timestamp]) -> bool:
        # One date convention everywhere: tz-naive datetime64[ns] session labels.
        return str(s.dtype) == "datetime64[ns]"

    @pa.dataframe_check(name="high_ge_max_open_close")
    @classmethod
    def high_covers_body(cls, df: pd.DataFrame) -> Series[bool]:
        return df["high"] >= np.maximum(df["open"], df["close"])

    @pa.dataframe_check(name="low_le_min_open_close")
    @classmethod
    def low_covers_body(cls, df: pd.DataFrame) -> Series[bool]:
        return df["low"] <= np.minimum(df["open"], df["close"])


class DataQualitySchema(pa.DataFrameModel):
    """The per-symbol data-quality table (``QUALITY_COLUMNS``)."""

    as_of: Series[pa.DateTime] = pa.Field(required=False)  # optional: some views drop it
    symbol: Series[str] = pa.Field(str_length={"min_value": 1}, unique=True)
    asset_class: Series[str] = pa.Field(isin=_ASSET_CLASSES)
    calendar: Series[str] = pa.Field(str_length={"min_value": 1})
    first_date: Series[pa.DateTime] = pa.Field(nullable=True)
    last_date: Series[pa.DateTime] = pa.Field(nullable=True)
    expected_sessions: Series[int] = pa.Field(ge=0)
    observed_sessions: Series[int] = pa.Field(ge=0)
    valid_sessions: Series[int] = pa.Field(ge=0)
    rejected_rows: Series[int] = pa.Field(ge=0)
    missing_sessions: Series[int] = pa.Field(ge=0)
    duplicate_dates: Series[int] = pa.Field(ge=0)
    non_positive_prices: Series[int] = pa.Field(ge=0)
    ohlc_inconsistent: Series[int] = pa.Field(ge=0)
    return_spikes: Series[int] = pa.Field(ge=0)
    volume_spikes: Series[int] = pa.Field(ge=0)
    stale_prices: Series[int] = pa.Field(ge=0)
    split_like_jumps: Series[int] = pa.Field(ge=0)
    missing_sessions_rate: Series[float] = pa.Field(**_UNIT)
    duplicate_dates_rate: Series[float] = pa.Field(**_UNIT)
    non_positive_prices_rate: Series[float] = pa.Field(**_UNIT)
    ohlc_inconsistent_rate: Series[float] = pa.Field(**_UNIT)
    return_spikes_rate: Series[float] = pa.Field(**_UNIT)
    volume_spikes_rate: Series[float] = pa.Field(**_UNIT)
    stale_prices_rate: Series[float] = pa.Field(**_UNIT)
    split_like_jumps_rate: Series[float] = pa.Field(**_UNIT)
    data_quality_score: Series[float] = pa.Field(**_UNIT)
    status: Series[str] = pa.Field(isin=_STATUSES)
    reason_codes: Series[str] = pa.Field(str_length={"min_value": 1})
    tradable: Series[bool] = pa.Field()

    class Config:
        strict = True
        ordered = True

    @pa.dataframe_check(name="tradable_iff_valid")
    @classmethod
    def tradable_iff_valid(cls, df: pd.DataFrame) -> Series[bool]:
        # Fail closed: nothing but a VALID symbol may be marked tradable.
        return df["tradable"] == (df["status"] == str(DataStatus.VALID))

    @pa.dataframe_check(name="valid_le_expected")
    @classmethod
    def valid_le_expected(cls, df: pd.DataFrame) -> Series[bool]:
        return df["valid_sessions"] <= df["expected_sessions"]


def validate_frame(
    schema: type[pa.DataFrameModel] | pa.DataFrameSchema, frame: pd.DataFrame
) -> list[dict[str, Any]]:
    """Validate lazily; return every failure case as a plain record (empty list if valid).

    Record keys: ``reason_code`` (SCHEMA_VIOLATION), ``schema_context``, ``column``, ``check``,
    ``check_number``, ``failure_case``, ``index`` — values are plain Python (None for missing).
    """
    if len(frame) == 0:
        frame = _typed_empty(schema, frame)
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
    except SchemaError as exc:  # raised eagerly for some frame-level problems
        cases = (
            exc.failure_cases
            if isinstance(exc.failure_cases, pd.DataFrame)
            else pd.DataFrame(
                [
                    {
                        "schema_context": "DataFrameSchema",
                        "column": None,
                        "check": str(exc.check),
                        "check_number": None,
                        "failure_case": exc.failure_cases,
                        "index": None,
                    }
                ]
            )
        )
    else:
        return []
    records: list[dict[str, Any]] = []
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in cases.to_dict("records"):
        clean = {"reason_code": str(ReasonCode.SCHEMA_VIOLATION), **{k: _plain(v) for k, v in rec.items()}}
        if clean.get("schema_context") == "DataFrameSchema" and clean.get("index") is not None:
            # A dataframe-wide check reports every column of a failing row: one record per row.
            key = (clean["check"], clean["check_number"], clean["index"])
            if key not in merged:
                merged[key] = {**clean, "column": None, "failure_case": {}}
                records.append(merged[key])
            merged[key]["failure_case"][clean["column"]] = clean["failure_case"]
        else:
            records.append(clean)
    return records


def _typed_empty(schema: type[pa.DataFrameModel] | pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    """Give an empty frame the schema's dtypes: with no rows, an ``object`` column is an artifact
    of how the empty frame was built (e.g. read back from an empty table), not a violation.
    Column presence, order and extras are still checked."""
    obj = schema.to_schema() if isinstance(schema, type) else schema
    out = frame.copy()
    for name, col in obj.columns.items():
        if name in out.columns and col.dtype is not None:
            with contextlib.suppress(Exception):  # a failed coercion is left to validation to report
                out[name] = col.dtype.coerce(out[name])
    return out


def _plain(v: Any) -> Any:
    """numpy/pandas scalars → Python scalars; missing → None (records are stored as JSON)."""
    if v is None or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, np.generic):
        v = v.item()
        return None if isinstance(v, float) and math.isnan(v) else v
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v
