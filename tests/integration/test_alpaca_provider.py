"""AlpacaHistoryProvider with the real alpaca-py/requests stack against a loopback Alpaca stub."""

from __future__ import annotations

import socket
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import requests

from ais_pipelines.core.asset_classes import AssetClass
from ais_pipelines.market_data.alpaca import AlpacaHistoryProvider, to_alpaca_symbol
from ais_pipelines.market_data.base import (
    RAW_BAR_COLUMNS,
    InstrumentRequest,
    ProviderEmptyError,
    ProviderRejectedError,
    ProviderTransientError,
)
from tests.stubs.alpaca_stub import CRYPTO_BARS, STOCK_BARS, AlpacaDataStub, make_daily_bars, rfc3339
from tests.stubs.http_stub import (
    NonLoopbackAccess,
    RecordedRequest,
    StubResponse,
    loopback_guard,  # noqa: F401  (autouse: loopback only)
    loopback_only,
)
from tests.stubs.yahoo_stub import trading_days

DAYS = trading_days(date(2024, 1, 2), 5)  # 2024-01-02 .. 2024-01-08
AAPL = InstrumentRequest("AAPL", AssetClass.STOCKS)
BTC = InstrumentRequest("BTC-USD", AssetClass.CRYPTO)
MAX_ATTEMPTS = 3




@pytest.fixture
def stub():
    with AlpacaDataStub(page_size=2) as s:  # 2 bars a page: every multi-day fetch paginates
        s.add_stock("AAPL", make_daily_bars(DAYS, tz="America/New_York"))
        s.add_stock("GLD", make_daily_bars(DAYS, tz="America/New_York", first_close=190.0))
        s.add_crypto(
            "BTC/USD", make_daily_bars([date(2024, 1, d) for d in range(1, 8)], tz="UTC", first_close=42e3)
        )
        yield s
    assert not s.server.unmatched, [r.path for r in s.server.unmatched]


def make_provider(stub: AlpacaDataStub, **kw) -> AlpacaHistoryProvider:
    opts = {"timeout_s": 1.0, "max_attempts": MAX_ATTEMPTS, "backoff_initial_s": 0.01, "backoff_max_s": 0.02}
    return AlpacaHistoryProvider(stub.api_key, stub.secret_key, url_override=stub.base_url, **(opts | kw))


def test_stock_frame_with_pagination(stub: AlpacaDataStub) -> None:
    result = make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    frame = result.frame
    assert list(frame.columns) == RAW_BAR_COLUMNS
    assert frame["date"].dtype == "datetime64[ns]"
    assert list(frame["date"]) == [pd.Timestamp(d) for d in DAYS]  # 05:00Z → naive NY session date
    bars = stub.stocks["AAPL"]
    assert frame["open"].tolist() == [b["o"] for b in bars]
    assert frame["high"].tolist() == [b["h"] for b in bars]
    assert frame["low"].tolist() == [b["l"] for b in bars]
    assert frame["close"].tolist() == [b["c"] for b in bars]
    assert frame["volume"].tolist() == [float(b["v"]) for b in bars]
    assert (frame["symbol"] == "AAPL").all()

    reqs = stub.server.requests_for(STOCK_BARS)
    assert len(reqs) == 3 and result.lineage["pages"] == 3  # 2 + 2 + 1 bars
    assert [r.param("page_token") is None for r in reqs] == [True, False, False]
    first = reqs[0]
    assert first.param("symbols") == "AAPL" and first.param("timeframe") == "1Day"
    assert first.param("adjustment") == "all" and first.param("feed") == "iex"
    assert first.headers["apca-api-key-id"] == stub.api_key


def test_raw_is_every_page_as_received(stub: AlpacaDataStub) -> None:
    result = make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert result.raw == [r.response_json() for r in stub.server.requests_for(STOCK_BARS)]
    assert result.raw[0]["next_page_token"] and result.raw[-1]["next_page_token"] is None


def test_crypto_frame(stub: AlpacaDataStub) -> None:
    result = make_provider(stub).fetch_daily_bars(BTC, date(2024, 1, 2), date(2024, 1, 5))

    reqs = stub.server.requests_for(CRYPTO_BARS)
    assert reqs and reqs[0].path == "/v1beta3/crypto/us/bars" and reqs[0].param("symbols") == "BTC/USD"
    assert list(result.frame["date"]) == [pd.Timestamp(2024, 1, d) for d in range(2, 6)]
    assert result.frame["close"].tolist() == [b["c"] for b in stub.crypto["BTC/USD"][1:5]]
    assert result.frame["symbol"].eq("BTC-USD").all()


def test_crypto_legacy_chicago_midnight_stamps_are_daily(stub: AlpacaDataStub) -> None:
    stub.add_crypto("ETH/USD", make_daily_bars(DAYS, tz="America/Chicago"))  # 06:00Z in winter

    result = make_provider(stub).fetch_daily_bars(
        InstrumentRequest("ETH/USD", AssetClass.CRYPTO), DAYS[0], DAYS[-1]
    )

    assert list(result.frame["date"]) == [pd.Timestamp(d) for d in DAYS]


def test_commodity_etf_uses_the_stock_endpoint(stub: AlpacaDataStub) -> None:
    result = make_provider(stub).fetch_daily_bars(
        InstrumentRequest("GLD", AssetClass.COMMODITIES), DAYS[0], DAYS[-1]
    )

    assert len(result.frame) == 5 and stub.server.requests_for(STOCK_BARS)[0].param("symbols") == "GLD"


def test_intraday_stamped_row_stays_tz_aware(stub: AlpacaDataStub) -> None:
    odd = datetime.combine(date(2024, 1, 9), time(14, 30), ZoneInfo("UTC"))
    bars = [*stub.stocks["AAPL"], {**stub.stocks["AAPL"][-1], "t": rfc3339(odd)}]
    stub.add_stock("AAPL", bars)

    result = make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], date(2024, 1, 9))

    dates = list(result.frame["date"])
    assert [d.tzinfo is None for d in dates] == [True] * 5 + [False]
    assert dates[-1] == pd.Timestamp(odd)
    assert result.lineage["non_daily_rows"] == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_permanent_errors_are_rejected_after_one_request(stub: AlpacaDataStub, status: int) -> None:
    stub.server.fail(STOCK_BARS, status, times=10)

    with pytest.raises(ProviderRejectedError) as info:
        make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert info.value.status == status and info.value.provider == "alpaca"
    assert len(stub.server.requests) == 1


def test_wrong_keys_get_alpacas_own_401(stub: AlpacaDataStub) -> None:
    provider = AlpacaHistoryProvider("wrong", "keys", url_override=stub.base_url, timeout_s=1.0)

    with pytest.raises(ProviderRejectedError, match="not authorized") as info:
        provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert info.value.status == 401 and len(stub.server.requests) == 1


@pytest.mark.parametrize("status", [429, 503, 504])
def test_transient_errors_twice_then_success(stub: AlpacaDataStub, status: int) -> None:
    stub.server.fail(STOCK_BARS, status, times=2)

    result = make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    # 2 failures + 3 pages; alpaca-py's own 429/504 retry (3 s sleeps) never kicks in
    assert [r.response_status for r in stub.server.requests] == [status, status, 200, 200, 200]
    assert result.lineage["attempts"] == 3 and len(result.frame) == 5


def test_persistent_500_exhausts_max_attempts(stub: AlpacaDataStub) -> None:
    stub.server.fail(STOCK_BARS, 500, times=100)

    with pytest.raises(ProviderTransientError) as info:
        make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert info.value.status == 500 and len(stub.server.requests) == MAX_ATTEMPTS


def test_persistent_429_is_not_multiplied_by_alpaca_py_retries(stub: AlpacaDataStub) -> None:
    stub.server.fail(STOCK_BARS, 429, times=100)

    with pytest.raises(ProviderTransientError):
        make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert len(stub.server.requests) == MAX_ATTEMPTS


def test_failure_on_a_later_page_restarts_the_fetch(stub: AlpacaDataStub) -> None:
    calls = {"n": 0}
    answer = stub._stock_bars

    def flaky(req: RecordedRequest) -> StubResponse:  # the second page fails once with 503
        calls["n"] += 1
        return StubResponse(status=503, body={"message": "busy"}) if calls["n"] == 2 else answer(req)

    stub.server.route("GET", STOCK_BARS, flaky)
    result = make_provider(stub).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert [r.response_status for r in stub.server.requests] == [200, 503, 200, 200, 200]
    assert len(result.raw) == 3 and len(result.frame) == 5  # raw holds the successful attempt only


def test_timeout_is_transient(stub: AlpacaDataStub) -> None:
    stub.server.hang(STOCK_BARS, seconds=5, times=10)

    with pytest.raises(ProviderTransientError):
        make_provider(stub, timeout_s=0.3, max_attempts=2).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert len(stub.server.requests) == 2


def test_timeout_then_success(stub: AlpacaDataStub) -> None:
    stub.server.hang(STOCK_BARS, seconds=5, times=1)

    result = make_provider(stub, timeout_s=0.3).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])

    assert len(result.frame) == 5 and result.lineage["attempts"] == 2


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = AlpacaHistoryProvider("k", "s", url_override=f"http://127.0.0.1:{port}", timeout_s=0.5,
                                     max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02)  # fmt: skip
    with pytest.raises(ProviderTransientError):
        provider.fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])


def test_empty_answer_is_empty_error(stub: AlpacaDataStub) -> None:
    with pytest.raises(ProviderEmptyError):
        make_provider(stub).fetch_daily_bars(InstrumentRequest("MSFT", AssetClass.STOCKS), DAYS[0], DAYS[-1])
    assert len(stub.server.requests) == 1


@pytest.mark.parametrize(
    "request_",
    [InstrumentRequest("EUR/USD", AssetClass.FX), InstrumentRequest("GC=F", AssetClass.COMMODITIES)],
)
def test_unserved_instruments_are_rejected_without_a_request(stub: AlpacaDataStub, request_) -> None:
    with pytest.raises(ProviderRejectedError, match="Alpaca"):
        make_provider(stub).fetch_daily_bars(request_, DAYS[0], DAYS[-1])
    assert stub.server.requests == []


def test_stub_single_symbol_route_paginates_like_alpaca(stub: AlpacaDataStub) -> None:
    # alpaca-py 0.44 only calls the multi-symbol endpoints; the single-symbol one is for other clients
    headers = {"APCA-API-KEY-ID": stub.api_key, "APCA-API-SECRET-KEY": stub.secret_key}
    url = f"{stub.base_url}/v2/stocks/AAPL/bars"
    params = {"timeframe": "1Day", "start": "2024-01-02", "end": "2024-01-09"}
    first = requests.get(url, params=params, headers=headers, timeout=2).json()
    second = requests.get(
        url, params=params | {"page_token": first["next_page_token"]}, headers=headers, timeout=2
    )

    assert first["symbol"] == "AAPL" and first["bars"] == stub.stocks["AAPL"][:2]
    assert second.json()["bars"] == stub.stocks["AAPL"][2:4]
    assert requests.get(url, params=params, timeout=2).status_code == 401


@pytest.mark.parametrize(
    ("symbol", "klass", "expected"),
    [
        ("BTC-USD", AssetClass.CRYPTO, "BTC/USD"),
        ("btcusd", AssetClass.CRYPTO, "BTC/USD"),
        ("ETH/USDT", AssetClass.CRYPTO, "ETH/USDT"),
        ("aapl", AssetClass.STOCKS, "AAPL"),
        ("BRK-B", AssetClass.STOCKS, "BRK.B"),
    ],
)
def test_alpaca_symbols(symbol: str, klass: AssetClass, expected: str) -> None:
    assert to_alpaca_symbol(symbol, klass) == expected


def test_keys_stay_out_of_repr() -> None:
    assert "secret" not in repr(AlpacaHistoryProvider("key-id", "secret-value"))


def test_guard_blocks_the_real_alpaca() -> None:
    # the guard itself: without url_override the client targets data.alpaca.markets
    with loopback_only() as violations, pytest.raises(NonLoopbackAccess):
        AlpacaHistoryProvider("k", "s", max_attempts=1).fetch_daily_bars(AAPL, DAYS[0], DAYS[-1])
    assert violations and "alpaca.markets" in violations[0]
