"""Pandera schemas: each rule is caught on a crafted violation, failures come back as records."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.bars import CANONICAL_BAR_COLUMNS, normalize_raw_bars
from ais_pipelines.core.calendars import sessions_between
from ais_pipelines.core.quality import QUALITY_COLUMNS, assess_quality
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.schemas import CanonicalBarsSchema, DataQualitySchema, validate_frame

DAYS = sessions_between("XNYS", "2024-01-02", "2024-01-31")


@pytest.fixture
def bars() -> pd.DataFrame:
    n = len(DAYS)
    raw = pd.DataFrame(
        {
            "symbol": ["AAPL"] * n + ["BTC-USD"] * n,
            "date": list(DAYS) * 2,
            "open": 10.0,
            "high": 11.0,
            "low": 9.0,
            "close": np.linspace(9.5, 10.5, 2 * n),
            "volume": 100.0,
        }
    )
    out = normalize_raw_bars(
        raw,
        source="fixture",
        provider="sample",
        asset_classes={"AAPL": AssetClass.STOCKS, "BTC-USD": AssetClass.CRYPTO},
    )
    assert out.rejects.empty
    return out.bars


@pytest.fixture
def quality(bars: pd.DataFrame) -> pd.DataFrame:
    return assess_quality(bars, pd.DataFrame(columns=["symbol", "date", "reason_code"]), DAYS[-1])


def _checks(failures: list[dict]) -> set[tuple[str | None, str]]:
    return {(f["column"], f["check"]) for f in failures}


# --- canonical bars -----------------------------------------------------------------------


def test_normalized_bars_are_valid(bars: pd.DataFrame) -> None:
    assert list(bars.columns) == CANONICAL_BAR_COLUMNS
    assert validate_frame(CanonicalBarsSchema, bars) == []


@pytest.mark.parametrize("col", ["open", "high", "low", "close", "adj_close"])
def test_non_positive_price_is_caught(bars: pd.DataFrame, col: str) -> None:
    bad = bars.copy()
    bad.loc[3, col] = 0.0
    failures = validate_frame(CanonicalBarsSchema, bad)
    assert (col, "greater_than(0)") in _checks(failures)
    hit = next(f for f in failures if f["column"] == col and f["check"] == "greater_than(0)")
    assert (hit["index"], hit["failure_case"], hit["reason_code"]) == (3, 0.0, ReasonCode.SCHEMA_VIOLATION)


def test_negative_volume_is_caught(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[5, "volume"] = -1.0
    assert _checks(validate_frame(CanonicalBarsSchema, bad)) == {("volume", "greater_than_or_equal_to(0)")}


def test_high_below_open_or_close_is_caught_as_one_record_per_row(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[2, "high"] = 9.6  # above low, below open 10
    failures = validate_frame(CanonicalBarsSchema, bad)
    assert [(f["check"], f["index"], f["column"]) for f in failures] == [("high_ge_max_open_close", 2, None)]
    assert failures[0]["failure_case"]["high"] == 9.6 and failures[0]["failure_case"]["open"] == 10.0


def test_low_above_open_or_close_is_caught(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[4, "low"] = 10.4  # below high, above open 10
    failures = validate_frame(CanonicalBarsSchema, bad)
    assert [(f["check"], f["index"]) for f in failures] == [("low_le_min_open_close", 4)]


def test_duplicate_symbol_date_is_caught(bars: pd.DataFrame) -> None:
    bad = pd.concat([bars, bars.iloc[[0]]], ignore_index=True)
    failures = validate_frame(CanonicalBarsSchema, bad)
    assert failures and all(f["check"] == "multiple_fields_uniqueness" for f in failures)
    assert {f["index"] for f in failures} == {0, len(bars)}


def test_intraday_date_is_caught(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[1, "date"] = bad.loc[1, "date"] + pd.Timedelta(hours=16)
    failures = validate_frame(CanonicalBarsSchema, bad)
    assert [(f["column"], f["check"], f["index"]) for f in failures] == [("date", "date_at_midnight", 1)]
    assert failures[0]["failure_case"] == "2024-01-03T16:00:00"


def test_date_must_be_naive_nanoseconds(bars: pd.DataFrame) -> None:
    bad = bars.assign(date=bars["date"].astype("datetime64[us]"))
    assert ("date", "date_naive_ns") in _checks(validate_frame(CanonicalBarsSchema, bad))
    aware = bars.assign(date=bars["date"].dt.tz_localize("UTC"))
    assert validate_frame(CanonicalBarsSchema, aware) != []


def test_unknown_asset_class_is_caught(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[0, "asset_class"] = "BONDS"
    failures = validate_frame(CanonicalBarsSchema, bad)
    assert len(failures) == 1 and failures[0]["column"] == "asset_class"
    assert failures[0]["check"].startswith("isin") and failures[0]["failure_case"] == "BONDS"


def test_missing_extra_and_reordered_columns_are_caught(bars: pd.DataFrame) -> None:
    assert _checks(validate_frame(CanonicalBarsSchema, bars.drop(columns="adj_close"))) == {
        ("CanonicalBarsSchema", "column_in_dataframe")
    }
    failures = validate_frame(CanonicalBarsSchema, bars.assign(extra=1))
    assert any(f["check"] == "column_in_schema" and f["failure_case"] == "extra" for f in failures)
    assert validate_frame(CanonicalBarsSchema, bars[CANONICAL_BAR_COLUMNS[::-1]]) != []


def test_null_price_is_caught(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[0, "close"] = np.nan
    assert ("close", "not_nullable") in _checks(validate_frame(CanonicalBarsSchema, bad))


def test_every_violation_is_reported_at_once(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[0, "volume"] = -5.0
    bad.loc[1, "asset_class"] = "X"
    bad.loc[2, "close"] = -1.0
    checks = _checks(validate_frame(CanonicalBarsSchema, bad))
    assert {("volume", "greater_than_or_equal_to(0)"), ("close", "greater_than(0)")} <= checks
    assert any(c == "asset_class" for c, _ in checks)


def test_failure_records_are_plain_json(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[0, "high"] = 1.0
    bad.loc[1, "date"] = bad.loc[1, "date"] + pd.Timedelta(minutes=1)
    failures = validate_frame(CanonicalBarsSchema, bad)
    assert failures
    json.dumps(failures)  # no numpy scalars or Timestamps left
    assert set(failures[0]) >= {"reason_code", "schema_context", "column", "check", "failure_case", "index"}


# --- data-quality table -------------------------------------------------------------------


def test_quality_table_is_valid(quality: pd.DataFrame) -> None:
    assert list(quality.columns) == QUALITY_COLUMNS
    assert validate_frame(DataQualitySchema, quality) == []


@pytest.mark.parametrize(
    ("col", "value", "check_prefix"),
    [
        ("data_quality_score", 1.2, "in_range"),
        ("data_quality_score", -0.1, "in_range"),
        ("missing_sessions_rate", 1.5, "in_range"),
        ("stale_prices_rate", -0.01, "in_range"),
        ("return_spikes", -1, "greater_than_or_equal_to"),
        ("valid_sessions", -3, "greater_than_or_equal_to"),
        ("status", "MAYBE", "isin"),
        ("asset_class", "BONDS", "isin"),
    ],
)
def test_quality_rule_violations_are_caught(
    quality: pd.DataFrame, col: str, value: object, check_prefix: str
) -> None:
    bad = quality.copy()
    bad.loc[0, col] = value
    failures = validate_frame(DataQualitySchema, bad)
    hits = [f for f in failures if f["column"] == col]
    assert hits and hits[0]["check"].startswith(check_prefix) and hits[0]["index"] == 0


def test_tradable_only_when_valid(quality: pd.DataFrame) -> None:
    assert quality["status"].tolist() == ["INSUFFICIENT_HISTORY", "INSUFFICIENT_HISTORY"]
    bad = quality.copy()
    bad.loc[1, "tradable"] = True
    failures = validate_frame(DataQualitySchema, bad)
    assert [(f["check"], f["index"]) for f in failures] == [("tradable_iff_valid", 1)]


def test_duplicate_symbol_in_quality_table_is_caught(quality: pd.DataFrame) -> None:
    bad = pd.concat([quality, quality.iloc[[0]]], ignore_index=True)
    assert ("symbol", "field_uniqueness") in _checks(validate_frame(DataQualitySchema, bad))


def test_more_valid_than_expected_sessions_is_caught(quality: pd.DataFrame) -> None:
    bad = quality.copy()
    bad.loc[0, "valid_sessions"] = int(bad.loc[0, "expected_sessions"]) + 1
    assert ("valid_le_expected", 0) in {
        (f["check"], f["index"]) for f in validate_frame(DataQualitySchema, bad)
    }


def test_an_empty_untyped_frame_passes_but_must_still_have_the_columns() -> None:
    assert validate_frame(CanonicalBarsSchema, pd.DataFrame(columns=CANONICAL_BAR_COLUMNS)) == []
    assert validate_frame(DataQualitySchema, pd.DataFrame(columns=QUALITY_COLUMNS)) == []
    failures = validate_frame(CanonicalBarsSchema, pd.DataFrame(columns=CANONICAL_BAR_COLUMNS[:-1]))
    assert [(f["check"], f["failure_case"]) for f in failures] == [("column_in_dataframe", "provider")]
