"""Polygon, Binance and FRED providers with the real HTTP client against loopback stubs that
answer in each API's wire format: pagination, 429 + Retry-After, 401/403/400 without retry,
empty ranges, malformed payloads."""

from __future__ import annotations

import time
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.market_data.base import (
    RAW_BAR_COLUMNS,
    InstrumentRequest,
    ProviderEmptyError,
    ProviderMalformedError,
    ProviderRateLimitedError,
    ProviderRejectedError,
    ProviderTransientError,
)
from ais_pipelines.market_data.binance import BinanceProvider, to_binance_symbol
from ais_pipelines.market_data.fred import FredProvider, fx_series_for
from ais_pipelines.market_data.http import parse_retry_after, redact_url
from ais_pipelines.market_data.polygon import PolygonProvider, to_polygon_ticker
from tests.stubs.binance_stub import KLINES, BinanceStub, make_klines
from tests.stubs.fred_stub import OBSERVATIONS, FredStub
from tests.stubs.http_stub import StubResponse, loopback_guard  # noqa: F401  (autouse: loopback only)
from tests.stubs.polygon_stub import AGGS, PolygonStub, make_aggs
from tests.stubs.yahoo_stub import trading_days

DAYS = trading_days(date(2024, 1, 2), 7)
AAPL = InstrumentRequest("AAPL", AssetClass.STOCKS)
BTC = InstrumentRequest("BTC/USD", AssetClass.CRYPTO)
FAST = {"timeout_s": 1.0, "max_attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.02}


class Sleeps(list):
    """Records the waits the retry policy asks for instead of sleeping them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --------------------------------------------------------------------------------------------
# polygon


@pytest.fixture
def poly():
    with PolygonStub(page_size=3) as s:
        s.add("AAPL", make_aggs(DAYS, tz="America/New_York"))
        s.add("X:BTCUSD", make_aggs([date(2024, 1, d) for d in range(1, 8)], tz="UTC", first_close=42e3))
        yield s
    assert not s.server.unmatched, [r.path for r in s.server.unmatched]


def polygon(stub: PolygonStub, **kw) -> PolygonProvider:
    return PolygonProvider(stub.api_key, base_url=stub.base_url, **(FAST | kw))


def test_polygon_follows_next_url_with_the_key_and_dates_ny_midnight(poly: PolygonStub) -> None:
    result = polygon(poly).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    frame = result.frame
    assert list(frame.columns) == RAW_BAR_COLUMNS and frame["date"].dtype == "datetime64[ns]"
    assert list(frame["date"]) == [pd.Timestamp(d) for d in DAYS]  # 05:00Z → the NY session date
    assert frame["close"].tolist() == [b["c"] for b in poly.aggs["AAPL"]]
    assert frame["volume"].tolist() == [float(b["v"]) for b in poly.aggs["AAPL"]]
    reqs = poly.server.requests_for(AGGS)
    assert len(reqs) == 3 and result.lineage["pages"] == 3  # 3 + 3 + 1
    assert all(r.param("apiKey") == poly.api_key for r in reqs)  # re-appended to every next_url
    assert [r.param("cursor") is None for r in reqs] == [True, False, False]
    assert reqs[0].path == "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-10"
    assert reqs[0].param("adjusted") == "true" and reqs[0].param("sort") == "asc"
    assert result.raw == [r.response_json() for r in reqs]
    assert all("poly-key" not in u and "apiKey=***" in u for u in result.lineage["urls"])


def test_polygon_crypto_ticker_and_utc_stamps(poly: PolygonStub) -> None:
    result = polygon(poly).fetch_daily_bars(BTC, date(2024, 1, 2), date(2024, 1, 5))

    assert poly.server.requests[0].path.startswith("/v2/aggs/ticker/X:BTCUSD/")
    assert list(result.frame["date"]) == [pd.Timestamp(2024, 1, d) for d in range(2, 6)]


def test_polygon_intraday_stamp_stays_aware(poly: PolygonStub) -> None:
    bars = make_aggs(DAYS[:3], tz="America/New_York")
    bars[1]["t"] += 14 * 3600 * 1000  # 19:00Z: not a daily window start
    poly.add("AAPL", bars)

    result = polygon(poly).fetch_daily_bars(AAPL, DAYS[0], DAYS[2])

    assert [d.tzinfo is None for d in result.frame["date"]] == [True, False, True]
    assert result.lineage["non_daily_rows"] == 1


def test_polygon_empty_range_has_no_results_key(poly: PolygonStub) -> None:
    with pytest.raises(ProviderEmptyError) as info:
        polygon(poly).fetch_daily_bars(AAPL, date(2023, 6, 1), date(2023, 6, 5))
    assert "results" not in poly.server.requests[0].response_json()
    assert info.value.reason_code is ReasonCode.PROVIDER_EMPTY_RESPONSE


@pytest.mark.parametrize("status", [401, 403])
def test_polygon_auth_errors_are_not_retried(poly: PolygonStub, status: int) -> None:
    body = {"status": "NOT_AUTHORIZED", "request_id": "r", "message": "You are not entitled to this data."}
    poly.server.script(AGGS, StubResponse(status=status, body=body), times=10)

    with pytest.raises(ProviderRejectedError, match="not entitled") as info:
        polygon(poly).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert info.value.status == status and len(poly.server.requests) == 1
    assert info.value.reason_code is ReasonCode.PROVIDER_REJECTED


def test_polygon_wrong_key_gets_polygons_401_once(poly: PolygonStub) -> None:
    with pytest.raises(ProviderRejectedError, match="Unknown API Key") as info:
        PolygonProvider("wrong", base_url=poly.base_url, **FAST).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert info.value.status == 401 and len(poly.server.requests) == 1
    assert "wrong" not in str(info.value)  # the key never reaches a message


def test_polygon_429_waits_retry_after_then_succeeds(poly: PolygonStub) -> None:
    poly.server.script(AGGS, StubResponse(status=429, body={"status": "ERROR", "error": "too many"},
                                          headers={"Retry-After": "7"}), times=2)
    sleeps = Sleeps()

    result = polygon(poly, sleep=sleeps).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert sleeps == [7.0, 7.0]  # exactly Retry-After, not the 0.01 s backoff
    assert [r.response_status for r in poly.server.requests] == [429, 429, 200, 200, 200]
    assert result.lineage["attempts"] == 5 and len(result.frame) == 7


def test_retry_after_is_really_slept(poly: PolygonStub) -> None:
    poly.server.script(AGGS, StubResponse(status=429, headers={"Retry-After": "1"}), times=1)
    t0 = time.monotonic()
    polygon(poly).fetch_daily_bars(AAPL, DAYS[0], DAYS[2])
    assert time.monotonic() - t0 >= 1.0


def test_polygon_retry_after_beyond_the_cap_is_not_waited_for(poly: PolygonStub) -> None:
    poly.server.script(AGGS, StubResponse(status=429, headers={"Retry-After": "3600"}), times=5)
    sleeps = Sleeps()

    with pytest.raises(ProviderRateLimitedError) as info:
        polygon(poly, sleep=sleeps, max_retry_after_s=30).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert sleeps == [] and len(poly.server.requests) == 1
    assert info.value.reason_code is ReasonCode.PROVIDER_RATE_LIMITED and "3600" in str(info.value)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_polygon_5xx_backs_off_and_exhausts(poly: PolygonStub, status: int) -> None:
    poly.server.fail(AGGS, status, times=100)
    sleeps = Sleeps()

    with pytest.raises(ProviderTransientError) as info:
        polygon(poly, sleep=sleeps).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert len(poly.server.requests) == 3 and len(sleeps) == 2 and max(sleeps) <= 0.02
    assert info.value.reason_code is ReasonCode.PROVIDER_TRANSIENT_EXHAUSTED


def test_polygon_timeout_is_transient_then_success(poly: PolygonStub) -> None:
    poly.server.hang(AGGS, seconds=5, times=1)
    result = polygon(poly, timeout_s=0.3).fetch_daily_bars(AAPL, DAYS[0], DAYS[2])
    assert result.lineage["attempts"] == result.lineage["pages"] + 1 and len(result.frame) == 3


@pytest.mark.parametrize(
    "body",
    ["<html>gateway</html>", {"ticker": "AAPL"}, {"status": "OK", "results": {"t": 1}},
     {"status": "OK", "results": [{"o": 1.0, "c": 1.0}]}],
    ids=["not-json", "no-status", "results-not-list", "no-timestamp"],
)
def test_polygon_malformed_payload_is_not_retried(poly: PolygonStub, body) -> None:
    poly.server.script(AGGS, StubResponse(status=200, body=body), times=5)

    with pytest.raises(ProviderMalformedError) as info:
        polygon(poly).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert len(poly.server.requests) == 1
    assert info.value.reason_code is ReasonCode.PROVIDER_MALFORMED_RESPONSE


@pytest.mark.parametrize(
    ("symbol", "klass", "expected"),
    [("BRK-B", AssetClass.STOCKS, "BRK.B"), ("BTC/USD", AssetClass.CRYPTO, "X:BTCUSD"),
     ("eth-usdt", AssetClass.CRYPTO, "X:ETHUSDT"), ("SOL", AssetClass.CRYPTO, "X:SOLUSD"),
     ("EUR/USD", AssetClass.FX, "C:EURUSD"), ("USDJPY=X", AssetClass.FX, "C:USDJPY")],
)
def test_polygon_tickers(symbol: str, klass: AssetClass, expected: str) -> None:
    assert to_polygon_ticker(symbol, klass) == expected


def test_polygon_refuses_commodities_without_a_request(poly: PolygonStub) -> None:
    with pytest.raises(ProviderRejectedError):
        polygon(poly).fetch_daily_bars(InstrumentRequest("GLD", AssetClass.COMMODITIES), DAYS[0], DAYS[-1])
    assert poly.server.requests == []


# --------------------------------------------------------------------------------------------
# binance


CAL_DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(10)]  # 24/7: weekends included


@pytest.fixture
def bnb():
    with BinanceStub() as s:
        s.add("BTCUSDT", make_klines(CAL_DAYS))
        yield s
    assert not s.server.unmatched


def binance(stub: BinanceStub, **kw) -> BinanceProvider:
    return BinanceProvider(base_url=stub.base_url, **(FAST | kw))


def test_binance_pages_by_start_time_over_a_24_7_calendar(bnb: BinanceStub) -> None:
    result = binance(bnb, page_limit=4).fetch_daily_bars(BTC, CAL_DAYS[0], CAL_DAYS[-1])

    frame = result.frame
    assert list(frame["date"]) == [pd.Timestamp(d) for d in CAL_DAYS]  # Saturdays and Sundays too
    assert frame["close"].tolist() == [float(k[4]) for k in bnb.klines["BTCUSDT"]]
    assert frame["high"].tolist() == [float(k[2]) for k in bnb.klines["BTCUSDT"]]
    reqs = bnb.server.requests_for(KLINES)
    assert len(reqs) == 3 and [len(p) for p in result.raw] == [4, 4, 2]
    starts = [int(r.param("startTime") or 0) for r in reqs]
    assert starts[1] == bnb.klines["BTCUSDT"][3][0] + 1 and starts[2] == bnb.klines["BTCUSDT"][7][0] + 1
    assert {r.param("symbol") for r in reqs} == {"BTCUSDT"} and reqs[0].param("interval") == "1d"
    assert result.lineage["usd_mapped_to_usdt"] is True


def test_binance_exact_page_boundary_ends_with_an_empty_page(bnb: BinanceStub) -> None:
    result = binance(bnb, page_limit=5).fetch_daily_bars(BTC, CAL_DAYS[0], CAL_DAYS[-1])
    assert len(result.frame) == 10 and [len(p) for p in result.raw] == [5, 5, 0]


def test_binance_invalid_symbol_is_binances_400_once(bnb: BinanceStub) -> None:
    with pytest.raises(ProviderRejectedError, match="Invalid symbol") as info:
        binance(bnb).fetch_daily_bars(InstrumentRequest("DOGE/USD", AssetClass.CRYPTO), CAL_DAYS[0], CAL_DAYS[-1])
    assert info.value.status == 400 and len(bnb.server.requests) == 1


@pytest.mark.parametrize("status", [401, 403, 418])
def test_binance_refusals_and_bans_are_not_retried(bnb: BinanceStub, status: int) -> None:
    bnb.server.script(KLINES, StubResponse(status=status, body={"code": -1003, "msg": "banned"},
                                           headers={"Retry-After": "5"}), times=5)
    with pytest.raises(ProviderRejectedError):
        binance(bnb).fetch_daily_bars(BTC, CAL_DAYS[0], CAL_DAYS[-1])
    assert len(bnb.server.requests) == 1


def test_binance_429_honours_retry_after(bnb: BinanceStub) -> None:
    bnb.server.script(KLINES, StubResponse(status=429, body={"code": -1003, "msg": "Too many requests"},
                                           headers={"Retry-After": "2"}), times=1)
    sleeps = Sleeps()
    result = binance(bnb, sleep=sleeps).fetch_daily_bars(BTC, CAL_DAYS[0], CAL_DAYS[-1])
    assert sleeps == [2.0] and len(result.frame) == 10


def test_binance_persistent_429_is_rate_limited(bnb: BinanceStub) -> None:
    bnb.server.script(KLINES, StubResponse(status=429, body={"code": -1003, "msg": "Too many requests"}), times=9)
    with pytest.raises(ProviderRateLimitedError) as info:
        binance(bnb, sleep=Sleeps()).fetch_daily_bars(BTC, CAL_DAYS[0], CAL_DAYS[-1])
    assert len(bnb.server.requests) == 3 and info.value.reason_code is ReasonCode.PROVIDER_RATE_LIMITED


def test_binance_empty_range(bnb: BinanceStub) -> None:
    with pytest.raises(ProviderEmptyError):
        binance(bnb).fetch_daily_bars(BTC, date(2023, 1, 1), date(2023, 1, 9))


@pytest.mark.parametrize("body", [{"code": 0}, [[1704067200000, "1"]], [["x", "1", "1", "1", "1", "1"]]],
                         ids=["object", "short-row", "bad-time"])
def test_binance_malformed(bnb: BinanceStub, body) -> None:
    bnb.server.script(KLINES, StubResponse(body=body), times=3)
    with pytest.raises(ProviderMalformedError):
        binance(bnb).fetch_daily_bars(BTC, CAL_DAYS[0], CAL_DAYS[-1])
    assert len(bnb.server.requests) == 1


@pytest.mark.parametrize(("symbol", "expected"), [("BTC/USD", "BTCUSDT"), ("BTC-USD", "BTCUSDT"),
                                                  ("BTCUSD", "BTCUSDT"), ("eth/btc", "ETHBTC"),
                                                  ("SOLUSDT", "SOLUSDT"), ("ETH", "ETHUSDT")])
def test_binance_symbols(symbol: str, expected: str) -> None:
    assert to_binance_symbol(symbol, AssetClass.CRYPTO) == expected


def test_binance_normalizes_on_the_24_7_calendar(bnb: BinanceStub) -> None:
    from ais_pipelines.core.bars import normalize_raw_bars

    result = binance(bnb).fetch_daily_bars(BTC, CAL_DAYS[0], CAL_DAYS[-1])
    n = normalize_raw_bars(result.frame, source="binance:BTC/USD", provider="binance",
                           asset_classes={"BTC/USD": AssetClass.CRYPTO}, calendars={"BTC/USD": "24/7"})
    assert len(n.bars) == 10 and n.rejects.empty


# --------------------------------------------------------------------------------------------
# fred


VIX = [(date(2024, 1, 1), "."), (date(2024, 1, 2), "13.20"), (date(2024, 1, 3), "14.04"),
       (date(2024, 1, 4), "14.13"), (date(2024, 1, 5), "13.35"), (date(2024, 1, 8), "13.08")]


@pytest.fixture
def fred():
    with FredStub() as s:
        s.add("VIXCLS", VIX)
        s.add("DEXUSEU", [(date(2024, 1, 1), "."), (date(2024, 1, 2), "1.0956"), (date(2024, 1, 3), "1.0919")])
        yield s
    assert not s.server.unmatched


def fred_provider(stub: FredStub, **kw) -> FredProvider:
    return FredProvider(stub.api_key, base_url=stub.base_url, **(FAST | kw))


def test_fred_series_pages_by_offset_and_dot_is_missing(fred: FredStub) -> None:
    frame, raw, lineage = fred_provider(fred, page_limit=4).fetch_series("VIXCLS", date(2024, 1, 1), date(2024, 1, 8))

    assert frame["date"].dt.date.tolist() == [d for d, _ in VIX]
    assert np.isnan(frame["value"].iloc[0]) and frame["value"].iloc[1:].tolist() == [13.20, 14.04, 14.13, 13.35, 13.08]
    assert [int(r.param("offset") or 0) for r in fred.server.requests] == [0, 4]
    assert len(raw) == 2 and lineage["missing_values"] == 1
    assert all(fred.api_key not in u and "api_key=***" in u for u in lineage["urls"])
    first = fred.server.requests[0]
    assert first.param("file_type") == "json" and first.param("series_id") == "VIXCLS"
    assert frame["realtime_start"].eq("2026-11-20").all()


def test_fred_bad_key_is_400_without_retry(fred: FredStub) -> None:
    with pytest.raises(ProviderRejectedError, match="api_key is not registered") as info:
        FredProvider("b" * 32, base_url=fred.base_url, **FAST).fetch_series("VIXCLS", date(2024, 1, 1), date(2024, 1, 8))
    assert info.value.status == 400 and len(fred.server.requests) == 1
    assert "b" * 32 not in str(info.value)


def test_fred_429_then_success(fred: FredStub) -> None:
    fred.server.script(OBSERVATIONS, StubResponse(status=429, body={"error_code": 429, "error_message": "Too Many"},
                                                  headers={"Retry-After": "20"}))
    sleeps = Sleeps()
    frame, _, lineage = fred_provider(fred, sleep=sleeps).fetch_series("VIXCLS", date(2024, 1, 1), date(2024, 1, 8))
    assert sleeps == [20.0] and lineage["attempts"] == 2 and len(frame) == 6


def test_fred_empty_range_and_malformed_value(fred: FredStub) -> None:
    frame, _, _ = fred_provider(fred).fetch_series("VIXCLS", date(2023, 1, 1), date(2023, 1, 9))
    assert frame.empty
    fred.add("BROKEN", [(date(2024, 1, 2), "n/a")])
    with pytest.raises(ProviderMalformedError, match="not a number"):
        fred_provider(fred).fetch_series("BROKEN", date(2024, 1, 1), date(2024, 1, 8))


def test_fred_fx_bars_are_daily_fixings(fred: FredStub) -> None:
    result = fred_provider(fred).fetch_daily_bars(InstrumentRequest("EUR/USD", AssetClass.FX),
                                                  date(2024, 1, 1), date(2024, 1, 3))
    f = result.frame
    assert list(f["date"]) == [pd.Timestamp(2024, 1, 2), pd.Timestamp(2024, 1, 3)]  # holiday "." dropped
    assert f["close"].tolist() == [1.0956, 1.0919] and (f["open"] == f["close"]).all() and (f["volume"] == 0).all()

    inverse = fred_provider(fred).fetch_daily_bars(InstrumentRequest("USD/EUR", AssetClass.FX),
                                                   date(2024, 1, 1), date(2024, 1, 3))
    assert inverse.frame["close"].tolist() == pytest.approx([1 / 1.0956, 1 / 1.0919])
    assert inverse.lineage["inverted"] is True


def test_fred_fx_mapping() -> None:
    assert fx_series_for("EUR/USD") == ("DEXUSEU", False)
    assert fx_series_for("USDJPY=X") == ("DEXJPUS", False)
    assert fx_series_for("JPY/USD") == ("DEXJPUS", True)
    with pytest.raises(ProviderRejectedError):
        fx_series_for("XAU/XAG")


# --------------------------------------------------------------------------------------------
# the shared client's helpers


def test_retry_after_forms() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_redact_url() -> None:
    url = redact_url("http://h/x?a=1&apiKey=SECRET&api_key=S2", ("apiKey", "api_key"))
    assert "SECRET" not in url and "S2" not in url and url.count("***") == 2


# --------------------------------------------------------------------------------------------
# routed by the capability matrix and entitlements, archived raw (through ingest_universe)


def test_auto_routing_ingests_through_the_stubs_and_archives_raw(policies_dir, runtime_root, monkeypatch,
                                                                 poly, bnb, fred) -> None:
    import gzip
    import json

    from ais_pipelines.config import Policies
    from ais_pipelines.ingestion import ingest_universe
    from resources.market_data import MarketDataResource

    for var in ("AIS_YAHOO_ENABLED", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "POLYGON_API_KEY",
                "AIS_DATA_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FRED_API_KEY", fred.api_key)
    end = date(2026, 11, 20)
    week = [date(2026, 11, 16) + timedelta(days=i) for i in range(5)]
    bnb.add("BTCUSDT", make_klines([date(2026, 11, 14) + timedelta(days=i) for i in range(7)]))
    fred.add("DEXUSEU", [(d, f"{1.05 + i / 100:.4f}") for i, d in enumerate(week)])
    poly.add("AAPL", make_aggs(week, tz="America/New_York"))
    pol = Policies(policies_dir)
    resource = MarketDataResource(provider="auto", polygon_base_url=poly.base_url,
                                  binance_base_url=bnb.base_url, fred_base_url=fred.base_url)

    def ingest(archive: str):
        configured, providers = resource.providers_for_run(pol)
        return ingest_universe(policies=pol, providers=providers, configured_provider=configured,
                               entitled=resource.entitled(pol), end=end, archive_dir=runtime_root / archive,
                               symbols=["AAPL", "EUR/USD", "BTC/USD"])

    out = ingest("raw1")
    log = out.log.set_index("symbol")
    assert log.loc["BTC/USD", "provider"] == "binance" and log.loc["BTC/USD", "rows_valid"] == 7
    assert log.loc["EUR/USD", "provider"] == "fred" and log.loc["EUR/USD", "rows_valid"] == 5
    assert log.loc["AAPL", "status"] == "FAILED" and log.loc["AAPL", "reason_code"] == "NO_VALID_PROVIDER"
    assert "polygon" in log.loc["AAPL", "detail"] and poly.server.requests == []  # unentitled: never called
    with gzip.open(log.loc["BTC/USD", "raw_path"], "rt") as fh:
        body = json.load(fh)
    assert body["provider"] == "binance" and body["response"][0][0][4] == bnb.klines["BTCUSDT"][0][4]
    with gzip.open(log.loc["EUR/USD", "raw_path"], "rt") as fh:
        assert fred.api_key not in fh.read()  # the key never reaches the archive
    bars = out.bars.set_index(["symbol", "date"])
    assert bars.loc[("EUR/USD", pd.Timestamp(week[0])), "provider"] == "fred"

    monkeypatch.setenv("POLYGON_API_KEY", poly.api_key)
    log2 = ingest("raw2").log.set_index("symbol")
    assert log2.loc["AAPL", "provider"] == "polygon" and log2.loc["AAPL", "rows_valid"] == 5
    assert log2.loc["BTC/USD", "provider"] == "polygon"  # polygon precedes binance in the routing
