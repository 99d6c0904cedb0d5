"""Structural normalization of raw bars (§B1, §B3): every reject rule and whole-input error."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.bars import (
    CANONICAL_BAR_COLUMNS,
    REJECT_COLUMNS,
    BarsInputError,
    NormalizedBars,
    normalize_raw_bars,
    read_raw_bars,
)
from ais_pipelines.core.reason_codes import ReasonCode

UNIVERSE = {
    "AAPL": AssetClass.STOCKS,
    "MSFT": AssetClass.STOCKS,
    "BTC-USD": AssetClass.CRYPTO,
    "EURUSD": AssetClass.FX,
}
# XNYS: 2024-01-02..05 and 01-08 are sessions, 01-06 is a Saturday, 01-15 is MLK day.
GOOD = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1000.0}


def _row(symbol: str = "AAPL", day: object = "2024-01-02", **over: object) -> dict[str, object]:
    return {"symbol": symbol, "date": day, **GOOD, **over}


def _norm(rows: list[dict[str, object]] | pd.DataFrame, **kw: object) -> NormalizedBars:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    args: dict[str, object] = {"source": "test.csv", "provider": "local", "asset_classes": UNIVERSE}
    args.update(kw)
    return normalize_raw_bars(frame, **args)  # type: ignore[arg-type]


def _only_reject(result: NormalizedBars) -> pd.Series:
    assert len(result.rejects) == 1, result.rejects
    return result.rejects.iloc[0]


# --- canonical output ---------------------------------------------------------------------


def test_canonical_columns_dtypes_order_and_values() -> None:
    raw = pd.DataFrame(
        {
            "VOLUME": [300, 100, 200],
            "Close": [12.0, 10.5, 11.0],
            "Symbol": ["MSFT", "AAPL", "AAPL"],
            "LOW": [11.0, 9.0, 10.0],
            "Open": [11.5, 10.0, 10.8],
            "High": [12.5, 11.0, 11.2],
            "Date": ["2024-01-03", "2024-01-03", "2024-01-02"],
            "comment": ["x", "y", "z"],  # extra columns are ignored
        }
    )
    out = _norm(raw)
    bars = out.bars
    assert list(bars.columns) == CANONICAL_BAR_COLUMNS
    assert out.rejects.empty and list(out.rejects.columns) == REJECT_COLUMNS
    assert str(bars["date"].dtype) == "datetime64[ns]"
    for col in ("open", "high", "low", "close", "volume", "adj_close"):
        assert bars[col].dtype == np.float64
    for col in ("symbol", "asset_class", "provider"):
        assert bars[col].dtype == "str"
    # sorted by symbol, date
    assert bars["symbol"].tolist() == ["AAPL", "AAPL", "MSFT"]
    assert bars["date"].tolist() == [
        pd.Timestamp("2024-01-02"),
        pd.Timestamp("2024-01-03"),
        pd.Timestamp("2024-01-03"),
    ]
    assert bars["close"].tolist() == [11.0, 10.5, 12.0]
    assert bars["adj_close"].tolist() == bars["close"].tolist()  # no adj_close: defaults to close
    assert bars["volume"].tolist() == [200.0, 100.0, 300.0]
    assert set(bars["asset_class"]) == {"STOCKS"}
    assert set(bars["provider"]) == {"local"}


def test_adj_close_is_kept_when_given_under_any_spelling() -> None:
    raw = pd.DataFrame([_row(**{"Adj Close": 9.9}), _row(day="2024-01-03", **{"Adj Close": 10.1})])
    out = _norm(raw)
    assert out.bars["adj_close"].tolist() == [9.9, 10.1]
    assert out.bars["close"].tolist() == [10.5, 10.5]


def test_adj_close_column_entirely_empty_defaults_to_close() -> None:
    out = _norm([_row(adj_close=None), _row(day="2024-01-03", adj_close=np.nan)])
    assert out.bars["adj_close"].tolist() == [10.5, 10.5]


def test_partially_missing_adj_close_rejects_the_row() -> None:
    out = _norm([_row(adj_close=10.4), _row(day="2024-01-03", adj_close=None)])
    assert len(out.bars) == 1
    rej = _only_reject(out)
    assert rej["reason_code"] == ReasonCode.MISSING_VALUE
    assert "adj_close" in rej["detail"]


@pytest.mark.parametrize(
    "dates",
    [
        ["2024-01-02", "2024-01-03"],
        ["2024/01/02", "2024/01/03"],
        [date(2024, 1, 2), date(2024, 1, 3)],
        [datetime(2024, 1, 2), datetime(2024, 1, 3)],
        list(pd.to_datetime(["2024-01-02", "2024-01-03"])),
        pd.to_datetime(["2024-01-02", "2024-01-03"]).as_unit("us"),
        ["2024-01-02T00:00:00", "2024-01-03 00:00:00"],
    ],
)
def test_dates_in_every_accepted_form_give_the_same_sessions(dates: object) -> None:
    raw = pd.DataFrame([_row(), _row()])
    raw["date"] = dates
    out = _norm(raw)
    assert out.rejects.empty
    assert out.bars["date"].tolist() == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]
    assert str(out.bars["date"].dtype) == "datetime64[ns]"


def test_tz_aware_midnight_in_calendar_timezone_becomes_naive_session() -> None:
    # 05:00Z is midnight in New York (EST): the daily bar of 2024-01-02.
    out = _norm([_row(day="2024-01-02T05:00:00Z"), _row(day="2024-01-03 00:00:00-05:00")])
    assert out.rejects.empty
    assert out.bars["date"].tolist() == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]
    assert out.bars["date"].dt.tz is None


def test_tz_aware_datetime_column_is_converted_per_calendar() -> None:
    raw = pd.DataFrame([_row(), _row("BTC-USD")])
    raw["date"] = [
        pd.Timestamp("2024-01-02 00:00", tz="America/New_York").tz_convert("UTC"),
        pd.Timestamp("2024-01-06 00:00", tz="UTC"),
    ]
    raw["date"] = pd.to_datetime(raw["date"], utc=True)
    out = _norm(raw)
    assert out.rejects.empty
    assert list(zip(out.bars["symbol"], out.bars["date"], strict=True)) == [
        ("AAPL", pd.Timestamp("2024-01-02")),
        ("BTC-USD", pd.Timestamp("2024-01-06")),  # a Saturday: a 24/7 session
    ]


def test_utc_midnight_is_intraday_for_a_new_york_stock_but_not_for_crypto() -> None:
    out = _norm([_row(day="2024-01-03T00:00:00Z"), _row("BTC-USD", day="2024-01-03T00:00:00Z")])
    assert out.bars["symbol"].tolist() == ["BTC-USD"]
    rej = _only_reject(out)
    assert (rej["symbol"], rej["reason_code"]) == ("AAPL", ReasonCode.INTRADAY_TIMESTAMP)
    assert rej["date"] == "2024-01-03T00:00:00Z"  # as delivered


def test_symbols_match_the_declared_spelling_case_insensitively() -> None:
    out = _norm([_row(" aapl ")])
    assert out.bars["symbol"].tolist() == ["AAPL"]


def test_missing_symbol_column_takes_the_expected_symbol() -> None:
    raw = pd.DataFrame([_row()]).drop(columns="symbol")
    out = _norm(raw, expected_symbol="MSFT")
    assert out.bars["symbol"].tolist() == ["MSFT"]


def test_calendar_override_per_symbol() -> None:
    rows = [_row(day="2024-01-06")]  # Saturday
    assert _only_reject(_norm(rows))["reason_code"] == ReasonCode.NON_SESSION_DATE
    out = _norm(rows, calendars={"AAPL": "24/7"})
    assert out.rejects.empty and len(out.bars) == 1


# --- row-level reject rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "code", "detail_part"),
    [
        (_row(close="abc"), ReasonCode.NON_NUMERIC_VALUE, "close='abc'"),
        (_row(volume="1,000"), ReasonCode.NON_NUMERIC_VALUE, "volume='1,000'"),
        (_row(high=float("inf")), ReasonCode.NON_NUMERIC_VALUE, "high=inf"),
        (_row(open=None), ReasonCode.MISSING_VALUE, "open is missing"),
        (_row(low=np.nan), ReasonCode.MISSING_VALUE, "low is missing"),
        (_row(volume=""), ReasonCode.MISSING_VALUE, "volume is missing"),
        (_row(day=None), ReasonCode.MISSING_VALUE, "date is missing"),
        (_row(None), ReasonCode.MISSING_VALUE, "symbol is missing"),
        (_row(day="not a date"), ReasonCode.BAD_TIMESTAMP, "'not a date'"),
        (_row(day="2024-02-30"), ReasonCode.BAD_TIMESTAMP, "2024-02-30"),
        (_row(day=1704153600), ReasonCode.BAD_TIMESTAMP, "1704153600"),  # epoch: ambiguous unit
        (_row(day="2024-01-02 15:30:00"), ReasonCode.INTRADAY_TIMESTAMP, "2024-01-02 15:30:00"),
        (_row(volume=-5.0), ReasonCode.NEGATIVE_VOLUME, "volume=-5.0"),
        (_row(day="2024-01-06"), ReasonCode.NON_SESSION_DATE, "2024-01-06 is not a session of XNYS"),
        (_row(day="2024-01-15"), ReasonCode.NON_SESSION_DATE, "2024-01-15 is not a session of XNYS"),
        (_row(close=0.0, low=0.0), ReasonCode.NON_POSITIVE_PRICE, "low=0.0"),
        (_row(open=-1.0, low=-2.0), ReasonCode.NON_POSITIVE_PRICE, "open=-1.0"),
        (_row(adj_close=-3.0), ReasonCode.NON_POSITIVE_PRICE, "adj_close=-3.0"),
        (_row(high=10.2), ReasonCode.OHLC_INCONSISTENT, "high=10.2"),  # high < close
        (_row(low=10.2), ReasonCode.OHLC_INCONSISTENT, "low=10.2"),  # low > open
        (_row(open=10.0, close=10.0, high=9.0, low=9.5), ReasonCode.OHLC_INCONSISTENT, "high=9.0"),
        (_row("TSLA"), ReasonCode.UNKNOWN_SYMBOL, "TSLA"),
    ],
)
def test_each_row_rule_rejects_with_its_code(
    row: dict[str, object], code: ReasonCode, detail_part: str
) -> None:
    good = _row(day="2024-01-04", **({"adj_close": 10.4} if "adj_close" in row else {}))
    out = _norm([good, row])
    assert len(out.bars) == 1 and out.bars["date"].iloc[0] == pd.Timestamp("2024-01-04")
    rej = _only_reject(out)
    assert rej["reason_code"] == code
    assert detail_part in rej["detail"]
    assert (rej["source"], rej["provider"]) == ("test.csv", "local")


def test_high_below_low_alone_is_inconsistent() -> None:
    # open/close inside neither bound check by themselves, but high < low is impossible.
    out = _norm(
        [
            _row(open=10.0, close=10.0, high=10.0, low=10.0),
            _row(day="2024-01-03", open=10.0, close=10.0, high=10.0, low=10.0),
        ]
    )
    assert out.rejects.empty  # a flat bar is fine
    out = _norm([_row(open=10.0, close=10.0, high=9.0, low=11.0)])
    assert _only_reject(out)["reason_code"] == ReasonCode.OHLC_INCONSISTENT


def test_reject_keeps_the_date_as_delivered_and_the_declared_symbol() -> None:
    out = _norm([_row("aapl", day="2024/01/06")])
    rej = _only_reject(out)
    assert (rej["symbol"], rej["date"], rej["reason_code"]) == (
        "AAPL",
        "2024/01/06",
        ReasonCode.NON_SESSION_DATE,
    )
    assert all(out.rejects[c].dtype == "str" for c in REJECT_COLUMNS)


def test_expected_symbol_rejects_other_symbols() -> None:
    out = _norm([_row("AAPL"), _row("MSFT")], expected_symbol="AAPL")
    assert out.bars["symbol"].tolist() == ["AAPL"]
    rej = _only_reject(out)
    assert (rej["symbol"], rej["reason_code"]) == ("MSFT", ReasonCode.UNKNOWN_SYMBOL)
    assert "requested symbol AAPL" in rej["detail"]


def test_exact_duplicates_keep_one_and_reject_the_rest() -> None:
    rows = [_row(), _row(), _row(day="2024-01-03"), _row(close="10.5")]  # "10.5" == 10.5: same bar
    out = _norm(rows)
    assert out.bars["date"].tolist() == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]
    assert out.rejects["reason_code"].tolist() == [ReasonCode.DUPLICATE_ROW] * 2
    assert set(out.rejects["date"]) == {"2024-01-02"}


def test_duplicates_in_different_date_formats_are_the_same_session() -> None:
    out = _norm([_row(day="2024-01-02"), _row(day=date(2024, 1, 2))])
    assert len(out.bars) == 1
    assert _only_reject(out)["reason_code"] == ReasonCode.DUPLICATE_ROW


def test_conflicting_duplicates_reject_all_copies() -> None:
    rows = [_row(close=10.5), _row(close=10.6), _row(close=10.5), _row(day="2024-01-03")]
    out = _norm(rows)
    assert out.bars["date"].tolist() == [pd.Timestamp("2024-01-03")]
    assert out.rejects["reason_code"].tolist() == [ReasonCode.CONFLICTING_DUPLICATE] * 3
    assert "AAPL on 2024-01-02" in out.rejects["detail"].iloc[0]


def test_a_junk_copy_still_makes_the_session_conflicting() -> None:
    # Fail closed: with two different rows for one session we cannot know which one is right.
    out = _norm([_row(), _row(close=-1.0)])
    assert out.bars.empty
    assert out.rejects["reason_code"].tolist() == [ReasonCode.CONFLICTING_DUPLICATE] * 2


def test_duplicate_of_a_bad_row_is_a_duplicate_and_the_kept_copy_fails_its_value_rule() -> None:
    out = _norm([_row(close="abc"), _row(close="abc")])
    assert out.bars.empty
    assert sorted(out.rejects["reason_code"]) == sorted(
        [ReasonCode.DUPLICATE_ROW, ReasonCode.NON_NUMERIC_VALUE]
    )


def test_missing_and_non_numeric_copies_are_not_identical() -> None:
    out = _norm([_row(close=None), _row(close="abc")])
    assert out.rejects["reason_code"].tolist() == [ReasonCode.CONFLICTING_DUPLICATE] * 2


def test_first_failing_rule_wins() -> None:
    # Non-positive and OHLC-inconsistent at once: counted as non-positive (precedence).
    out = _norm([_row(open=5.0, high=-1.0, low=1.0, close=5.0)])
    assert _only_reject(out)["reason_code"] == ReasonCode.NON_POSITIVE_PRICE
    # Unknown symbol beats a bad date.
    out = _norm([_row("TSLA", day="garbage")])
    assert _only_reject(out)["reason_code"] == ReasonCode.UNKNOWN_SYMBOL


def test_mixed_good_and_bad_rows_are_split_exactly() -> None:
    rows = [
        _row(day="2024-01-02"),
        _row(day="2024-01-03", close="n/a"),
        _row(day="2024-01-04", volume=-1),
        _row(day="2024-01-05"),
        _row("BTC-USD", day="2024-01-06"),
        _row("EURUSD", day="2024-01-06"),  # FX is 24/5: Saturday is not a session
    ]
    out = _norm(rows)
    assert list(zip(out.bars["symbol"], out.bars["date"].dt.strftime("%Y-%m-%d"), strict=True)) == [
        ("AAPL", "2024-01-02"),
        ("AAPL", "2024-01-05"),
        ("BTC-USD", "2024-01-06"),
    ]
    assert out.bars.set_index("symbol")["asset_class"].to_dict() == {"AAPL": "STOCKS", "BTC-USD": "CRYPTO"}
    assert out.rejects[["symbol", "reason_code"]].values.tolist() == [
        ["AAPL", ReasonCode.NON_NUMERIC_VALUE],
        ["AAPL", ReasonCode.NEGATIVE_VOLUME],
        ["EURUSD", ReasonCode.NON_SESSION_DATE],
    ]


def test_all_rows_rejected_gives_empty_typed_bars() -> None:
    out = _norm([_row(close=-1.0)])
    assert out.bars.empty
    assert list(out.bars.columns) == CANONICAL_BAR_COLUMNS
    assert str(out.bars["date"].dtype) == "datetime64[ns]"


def test_input_frame_is_not_modified() -> None:
    raw = pd.DataFrame([_row(Close=1.0)]).rename(columns={"close": "CLOSE"}).drop(columns="Close")
    before = raw.copy()
    _norm(raw)
    pd.testing.assert_frame_equal(raw, before)


# --- whole-input errors -------------------------------------------------------------------


def test_missing_columns_names_source_and_columns() -> None:
    raw = pd.DataFrame([_row()]).drop(columns=["high", "volume"])
    with pytest.raises(BarsInputError) as exc:
        _norm(raw, source="prices_2024.csv")
    assert exc.value.reason_code == ReasonCode.MISSING_COLUMNS
    msg = str(exc.value)
    assert "prices_2024.csv" in msg and "high" in msg and "volume" in msg and "MISSING_COLUMNS" in msg


def test_empty_input() -> None:
    with pytest.raises(BarsInputError) as exc:
        _norm(
            pd.DataFrame(columns=["symbol", "date", "open", "high", "low", "close", "volume"]),
            source="yahoo:AAPL",
        )
    assert exc.value.reason_code == ReasonCode.EMPTY_INPUT
    assert "yahoo:AAPL" in str(exc.value) and "no rows" in str(exc.value)


def test_mixed_timezones() -> None:
    with pytest.raises(BarsInputError) as exc:
        _norm([_row(day="2024-01-02"), _row(day="2024-01-03T05:00:00Z")], source="alpaca:AAPL")
    assert exc.value.reason_code == ReasonCode.MIXED_TIMEZONES
    msg = str(exc.value)
    assert "alpaca:AAPL" in msg and "2024-01-02" in msg and "2024-01-03T05:00:00Z" in msg


def test_mixed_timezones_with_timestamp_objects() -> None:
    raw = pd.DataFrame([_row(), _row()])
    raw["date"] = pd.Series([pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03", tz="UTC")], dtype=object)
    with pytest.raises(BarsInputError) as exc:
        _norm(raw)
    assert exc.value.reason_code == ReasonCode.MIXED_TIMEZONES


@pytest.mark.parametrize("frame", [None, [1, 2, 3], "a,b,c"])
def test_not_a_table_is_unreadable(frame: object) -> None:
    with pytest.raises(BarsInputError) as exc:
        normalize_raw_bars(frame, source="polygon:MSFT", provider="polygon", asset_classes=UNIVERSE)  # type: ignore[arg-type]
    assert exc.value.reason_code == ReasonCode.UNREADABLE_INPUT
    assert "polygon:MSFT" in str(exc.value)


def test_ambiguous_columns_are_unreadable() -> None:
    raw = pd.DataFrame([_row()])
    raw["Close "] = 1.0  # normalizes to a second "close"
    with pytest.raises(BarsInputError) as exc:
        _norm(raw)
    assert exc.value.reason_code == ReasonCode.UNREADABLE_INPUT
    assert "close" in str(exc.value)


def test_bars_input_error_is_a_value_error() -> None:
    assert issubclass(BarsInputError, ValueError)


# --- files --------------------------------------------------------------------------------


def test_read_raw_bars_csv_keeps_text_for_normalization(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "Date,Symbol,Open,High,Low,Close,Volume\n2024-01-02,AAPL,10,11,9,10.5,100\n2024-01-03,AAPL,x,11,9,10.5,100\n"
    )
    out = _norm(read_raw_bars(path), source=path.name)
    assert out.bars["close"].tolist() == [10.5]
    assert _only_reject(out)["reason_code"] == ReasonCode.NON_NUMERIC_VALUE


def test_read_raw_bars_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(BarsInputError) as exc:
        read_raw_bars(path)
    assert exc.value.reason_code == ReasonCode.UNREADABLE_INPUT
    assert "broken.parquet" in str(exc.value)
    with pytest.raises(BarsInputError) as exc2:
        read_raw_bars(tmp_path / "bars.xlsx")
    assert exc2.value.reason_code == ReasonCode.UNREADABLE_INPUT
