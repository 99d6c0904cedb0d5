"""YahooProvider with the real yfinance/curl_cffi stack against a loopback Yahoo stub."""

from __future__ import annotations

import socket
from datetime import date, time
from time import monotonic

import pandas as pd
import pytest
import yfinance.cache as yf_cache
import yfinance.const as yf_const
from yfinance.data import SingletonMeta

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.market_data.base import (
    OPTIONAL_BAR_COLUMNS,
    RAW_BAR_COLUMNS,
    InstrumentRequest,
    ProviderEmptyError,
    ProviderError,
    ProviderRejectedError,
    ProviderTransientError,
)
from ais_pipelines.market_data.yahoo import YahooProvider, to_yahoo_symbol
from tests.stubs.http_stub import (
    StubResponse,
    loopback_guard,  # noqa: F401  (autouse: loopback only)
    loopback_only,
)
from tests.stubs.yahoo_stub import CHART, COOKIE, CRUMB, CRUMB_VALUE, YahooBar, YahooStub, stamp, trading_days

DAYS = trading_days(date(2024, 1, 2), 5)  # 2024-01-02 .. 2024-01-08
AAPL = InstrumentRequest("AAPL", AssetClass.STOCKS)
BTC = InstrumentRequest("BTC/USD", AssetClass.CRYPTO)
MAX_ATTEMPTS = 3




@pytest.fixture(autouse=True)
def no_cookie_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # yfinance persists Yahoo cookies under the user's cache dir; keep tests off the disk
    monkeypatch.setattr(yf_cache._CookieCacheManager, "_Cookie_cache", yf_cache._CookieCacheDummy())


@pytest.fixture
def stub():
    with YahooStub() as s:
        s.add_equity("AAPL", DAYS)
        s.add_crypto("BTC-USD", [date(2024, 1, d) for d in range(1, 8)], first_close=42_000.0)
        yield s
    assert not s.server.unmatched, [r.path for r in s.server.unmatched]


def make_provider(stub: YahooStub, **kw) -> YahooProvider:
    opts = {"timeout_s": 1.0, "max_attempts": MAX_ATTEMPTS, "backoff_initial_s": 0.01, "backoff_max_s": 0.02}
    return YahooProvider(base_url=stub.base_url, **(opts | kw))


def test_stock_frame_columns_dates_and_values(stub: YahooStub) -> None:
    result = make_provider(stub).fetch_daily_bars(AAPL, date(2024, 1, 2), date(2024, 1, 8))

    frame = result.frame
    assert result.provider == "yahoo" and result.symbol == "AAPL"
    assert list(frame.columns) == RAW_BAR_COLUMNS + OPTIONAL_BAR_COLUMNS
    assert frame["date"].dtype == "datetime64[ns]"  # naive session dates, not 09:30 stamps
    assert list(frame["date"]) == [pd.Timestamp(d) for d in DAYS]
    bars = stub.instruments["AAPL"].bars
    assert frame["open"].tolist() == [b.open for b in bars]
    assert frame["high"].tolist() == [b.high for b in bars]
    assert frame["low"].tolist() == [b.low for b in bars]
    assert frame["close"].tolist() == [b.close for b in bars]
    assert frame["adj_close"].tolist() == [b.adjclose for b in bars]
    assert frame["volume"].tolist() == [float(b.volume) for b in bars]
    assert (frame["symbol"] == "AAPL").all()
    assert result.lineage["url"].startswith(stub.base_url + "/v8/finance/chart/AAPL?")
    assert "crumb" not in result.lineage["url"]


def test_cookie_crumb_and_chart_all_reach_the_stub(stub: YahooStub) -> None:
    make_provider(stub).fetch_daily_bars(AAPL, date(2024, 1, 2), date(2024, 1, 8))

    assert stub.server.requests_for(COOKIE), "fc.yahoo.com cookie request was not redirected"
    assert stub.server.requests_for(CRUMB), "getcrumb request was not redirected"
    (chart,) = stub.chart_requests("AAPL")
    assert chart.param("crumb") == CRUMB_VALUE and "A3=" in chart.headers["cookie"]
    assert chart.param("interval") == "1d"
    assert int(chart.param("period1")) <= stamp(DAYS[0], time(9, 30), "America/New_York")


def test_crypto_frame(stub: YahooStub) -> None:
    result = make_provider(stub).fetch_daily_bars(BTC, date(2024, 1, 2), date(2024, 1, 5))

    assert stub.chart_requests("BTC-USD"), "BTC/USD must be requested as BTC-USD"
    assert list(result.frame["date"]) == [pd.Timestamp(2024, 1, d) for d in range(2, 6)]
    assert result.frame["close"].tolist() == [b.close for b in stub.instruments["BTC-USD"].bars[1:5]]
    assert result.frame["symbol"].eq("BTC/USD").all()
    assert result.lineage["exchange_timezone"] == "UTC"


def test_raw_is_the_chart_json_as_received(stub: YahooStub) -> None:
    result = make_provider(stub).fetch_daily_bars(AAPL, date(2024, 1, 2), date(2024, 1, 8))

    (chart,) = stub.chart_requests("AAPL")
    assert result.raw == chart.response_json()


def test_intraday_stamped_row_stays_tz_aware(stub: YahooStub) -> None:
    # Yahoo's "live" bar is stamped at the last trade, not at the session open
    live_ts = stamp(date(2024, 1, 9), time(15, 59, 59), "America/New_York")
    bars = [*stub.instruments["AAPL"].bars, YahooBar(live_ts, 106.0, 107.0, 105.0, 106.5, 500_000, 106.5)]
    stub.add_instrument("AAPL", bars)

    result = make_provider(stub).fetch_daily_bars(AAPL, date(2024, 1, 2), date(2024, 1, 9))

    dates = list(result.frame["date"])
    assert [d.tzinfo is None for d in dates] == [True] * 5 + [False]
    assert dates[-1] == pd.Timestamp(live_ts, unit="s", tz="UTC")
    assert str(dates[-1].tz) == "America/New_York" and dates[-1].time() == time(15, 59, 59)
    assert result.lineage["non_daily_rows"] == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_permanent_errors_are_rejected_after_one_request(stub: YahooStub, status: int) -> None:
    stub.server.fail(CHART, status, times=10)

    with pytest.raises(ProviderRejectedError) as info:
        make_provider(stub).fetch_daily_bars(AAPL, date(2024, 1, 2), date(2024, 1, 8))

    assert info.value.status == status and info.value.provider == "yahoo"
    assert len(stub.chart_requests()) == 1  # neither we nor yfinance's cookie-switch retry


def test_unknown_symbol_is_rejected(stub: YahooStub) -> None:
    with pytest.raises(ProviderRejectedError, match="No data found"):
        make_provider(stub).fetch_daily_bars(InstrumentRequest("NOPE", AssetClass.STOCKS), DAYS[0], DAYS[-1])
    assert len(stub.chart_requests()) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_transient_errors_twice_then_success(stub: YahooStub, status: int) -> None:
    stub.server.fail(CHART, status, times=2)

    result = make_provider(stub).fetch_daily_bars(AAPL, date(2024, 1, 2), date(2024, 1, 8))

    assert len(result.frame) == 5
    assert [r.response_status for r in stub.chart_requests()] == [status, status, 200]
    assert result.lineage["attempts"] == 3


def test_persistent_500_exhausts_max_attempts(stub: YahooStub) -> None:
    stub.server.fail(CHART, 500, times=100)

    with pytest.raises(ProviderTransientError) as info:
        make_provider(stub).fetch_daily_bars(AAPL, date(2024, 1, 2), date(2024, 1, 8))

    assert info.value.status == 500
    assert len(stub.chart_requests()) == MAX_ATTEMPTS


def test_timeout_is_transient(stub: YahooStub) -> None:
    stub.server.hang(CHART, seconds=5, times=10)

    with pytest.raises(ProviderTransientError):
        make_provider(stub, timeout_s=0.3, max_attempts=2).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert len(stub.chart_requests()) == 2


def test_timeout_then_success(stub: YahooStub) -> None:
    stub.server.hang(CHART, seconds=5, times=1)

    result = make_provider(stub, timeout_s=0.3).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert len(result.frame) == 5 and result.lineage["attempts"] == 2


def test_hanging_cookie_and_crumb_endpoints_cost_at_most_our_timeout() -> None:
    # yfinance gives cookie/crumb requests 30 s; the provider's session caps them at timeout_s
    with YahooStub(require_crumb=False) as stub:
        stub.add_equity("AAPL", DAYS)
        stub.server.hang(COOKIE, seconds=10, times=10)
        stub.server.hang(CRUMB, seconds=10, times=10)
        started = monotonic()
        result = make_provider(stub, timeout_s=0.3).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
        assert monotonic() - started < 3
    assert len(result.frame) == 5 and len(stub.chart_requests()) == 1


def test_outage_page_is_transient_other_non_json_is_not(stub: YahooStub) -> None:
    stub.server.script(CHART, StubResponse(body="<html>Will be right back...</html>"), times=1)
    assert len(make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1]).frame) == 5
    assert len(stub.chart_requests()) == 2

    stub.server.script(CHART, StubResponse(body="<html>something else</html>"), times=10)
    with pytest.raises(ProviderError) as info:
        make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert not isinstance(info.value, ProviderTransientError)
    assert len(stub.chart_requests()) == 3


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = YahooProvider(base_url=f"http://127.0.0.1:{port}", timeout_s=0.5, max_attempts=2,
                             backoff_initial_s=0.01, backoff_max_s=0.02)  # fmt: skip
    with pytest.raises(ProviderTransientError):
        provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])


def test_empty_range_is_empty_error(stub: YahooStub) -> None:
    with pytest.raises(ProviderEmptyError):
        make_provider(stub).fetch_daily_bars(AAPL, date(2023, 6, 1), date(2023, 6, 30))
    assert len(stub.chart_requests()) == 1  # an empty answer is not retried


def test_override_does_not_leak_into_yfinance_globals(stub: YahooStub) -> None:
    provider = make_provider(stub)
    provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert yf_const._BASE_URL_ == "https://query2.finance.yahoo.com"
    for instance in SingletonMeta._instances.values():
        assert getattr(instance, "_session", None) is not provider._session


def test_rejection_drops_the_session_so_the_next_fetch_gets_a_fresh_crumb(stub: YahooStub) -> None:
    provider = make_provider(stub)
    provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    crumbs_before = len(stub.server.requests_for(CRUMB))
    provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert len(stub.server.requests_for(CRUMB)) == crumbs_before  # crumb reused while healthy

    stub.server.fail(CHART, 401, times=1)
    with pytest.raises(ProviderRejectedError):
        provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert len(stub.server.requests_for(CRUMB)) == crumbs_before + 1


@pytest.mark.parametrize(
    ("symbol", "klass", "expected"),
    [
        ("EUR/USD", AssetClass.FX, "EURUSD=X"),
        ("EURUSD", AssetClass.FX, "EURUSD=X"),
        ("USDJPY=X", AssetClass.FX, "USDJPY=X"),
        ("BTC/USD", AssetClass.CRYPTO, "BTC-USD"),
        ("ethusdt", AssetClass.CRYPTO, "ETH-USDT"),
        ("BTC-USD", AssetClass.CRYPTO, "BTC-USD"),
        ("aapl", AssetClass.STOCKS, "AAPL"),
        ("GC=F", AssetClass.COMMODITIES, "GC=F"),
        ("GLD", AssetClass.COMMODITIES, "GLD"),
    ],
)
def test_yahoo_symbols(symbol: str, klass: AssetClass, expected: str) -> None:
    assert to_yahoo_symbol(symbol, klass) == expected


def test_guard_blocks_the_real_yahoo() -> None:
    # the guard itself: without base_url the provider targets yahoo.com, which must be refused
    with loopback_only() as violations, pytest.raises(ProviderError):
        YahooProvider(max_attempts=1).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert violations and "yahoo.com" in violations[0]
