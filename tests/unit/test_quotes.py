"""§H3/§I5: fresh quotes for the intraday path — the sample quote walk and Alpaca's latest quote."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ais_pipelines.brokers import BrokerRejectedError, PaperBroker, Quote
from ais_pipelines.core.clock import FixedClock
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.ledger import LedgerStore
from ais_pipelines.market_data.quotes import AlpacaQuoteSource, SampleQuoteSource
from tests.stubs.http_stub import StubHTTPServer, StubResponse, loopback_only

OPEN = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)


def source(**kw: object) -> SampleQuoteSource:
    args: dict = {"last_closes": {"AAPL": 180.0, "MSFT": 400.0, "BAD": float("nan")},
                  "spreads_bps": {"AAPL": 4.0}, "sigma_daily": {"AAPL": 0.02, "MSFT": 0.01},
                  "session_open": OPEN, "seed": 7}
    args.update(kw)
    return SampleQuoteSource(**args)


def test_quote_shape_spread_and_timestamp() -> None:
    now = OPEN + timedelta(minutes=30)
    q = source()("AAPL", now)
    assert isinstance(q, Quote)
    mid = (q.bid + q.ask) / 2
    assert (q.ask - q.bid) / mid * 1e4 == pytest.approx(4.0)
    assert q.ts == now  # stamped with the clock's now: fresh by construction
    lagged = source(ts_lag_s=45)("AAPL", now)
    assert lagged.ts == now - timedelta(seconds=45) and lagged.bid == q.bid
    assert source()("MSFT", now).ask - source()("MSFT", now).bid == pytest.approx(
        source().mid("MSFT", now) * 10.0 / 1e4)  # default spread 10 bps


def test_deterministic_per_seed_symbol_and_instant() -> None:
    t = OPEN + timedelta(minutes=47, seconds=13)
    assert source()("AAPL", t) == source()("AAPL", t)
    assert source(seed=8).mid("AAPL", t) != source().mid("AAPL", t)
    assert source().mid("AAPL", t) != source().mid("MSFT", t) * 180 / 400


def test_starts_at_the_close_and_moves_after_the_open() -> None:
    s = source()
    assert s.mid("AAPL", OPEN - timedelta(hours=3)) == 180.0
    assert s.mid("AAPL", OPEN) == 180.0
    later = s.mid("AAPL", OPEN + timedelta(minutes=30))
    assert later != 180.0  # the fill price is never the decision close by construction
    assert abs(math.log(later / 180.0)) < 6 * 0.02 * math.sqrt(30 / 390)


def test_path_is_continuous_including_chunk_boundaries() -> None:
    s = source()
    step = 5.0
    for seconds in (61.0, 4096 * step - 1, 4096 * step, 4096 * step + 2.5, 3 * 4096 * step + 7):
        a = s.mid("AAPL", OPEN + timedelta(seconds=seconds))
        b = s.mid("AAPL", OPEN + timedelta(seconds=seconds + 1))
        assert abs(math.log(b / a)) < 5 * 0.02 * math.sqrt(step / 23400)
    # asking out of order gives the same answer as asking in order
    fresh = source()
    far = fresh.mid("AAPL", OPEN + timedelta(hours=20))
    assert far == s.mid("AAPL", OPEN + timedelta(hours=20))


def test_diffuses_with_the_daily_sigma() -> None:
    closes = {f"S{i}": 100.0 for i in range(600)}
    s = SampleQuoteSource(closes, {}, dict.fromkeys(closes, 0.02), OPEN, seed=3)
    end = OPEN + timedelta(hours=6, minutes=30)  # one full session
    logs = np.array([math.log(s.mid(k, end) / 100.0) for k in closes])
    assert logs.std() == pytest.approx(0.02, rel=0.1)
    assert abs(logs.mean()) < 0.003


def test_unknown_or_unusable_symbols_have_no_quote() -> None:
    s = source()
    assert s("NOPE", OPEN) is None
    assert s("BAD", OPEN) is None  # a NaN close is no price at all
    with pytest.raises(KeyError):
        s.mid("NOPE", OPEN)
    with pytest.raises(ValueError):
        s("AAPL", datetime(2024, 3, 5, 15, 0))  # naive instants are refused


def test_paper_broker_trades_on_the_sample_quotes(tmp_path) -> None:
    clock = FixedClock(OPEN + timedelta(minutes=30))
    ledger = LedgerStore.open(f"sqlite:///{tmp_path / 'l.sqlite'}")
    broker = PaperBroker(ledger, clock, source(), adv={"AAPL": 5e7, "MSFT": 5e7}, sigma={"AAPL": 0.02})
    order = broker.submit_order("c1", "AAPL", "BUY", 10)
    assert order.filled_qty == 10 and order.avg_fill_price != 180.0
    mid = source().mid("AAPL", clock.now())
    assert order.avg_fill_price > mid  # a buy pays half the spread plus impact above the mid
    with pytest.raises(BrokerRejectedError) as err:
        broker.submit_order("c2", "NOPE", "BUY", 1)
    assert err.value.reason_code is ReasonCode.UNKNOWN_SYMBOL


# --------------------------------------------------------------------------------------------
# Alpaca latest quotes, against a local stub over real HTTP


def test_alpaca_quote_source_reads_the_latest_quote() -> None:
    with loopback_only(), StubHTTPServer() as server:
        seen = []

        def stocks(req):  # noqa: ANN001, ANN202
            seen.append(req)
            return {"quotes": {"AAPL": {"t": "2024-03-05T15:00:01.5Z", "bp": 180.1, "bs": 3, "ap": 180.2, "as": 2,
                                        "bx": "V", "ax": "V", "c": ["R"], "z": "C"}}}

        def crypto(req):  # noqa: ANN001, ANN202
            return {"quotes": {"BTC/USD": {"t": "2024-03-05T15:00:00Z", "bp": 65000.0, "bs": 1, "ap": 65010.0,
                                           "as": 1}}}

        server.route("GET", "/v2/stocks/quotes/latest", stocks)
        server.route("GET", "/v1beta3/crypto/us/latest/quotes", crypto)
        src = AlpacaQuoteSource("key", "secret", url_override=server.base_url)
        q = src("AAPL", datetime(2024, 3, 5, 15, 0, 5, tzinfo=UTC))
        assert q == Quote(180.1, 180.2, datetime(2024, 3, 5, 15, 0, 1, 500000, tzinfo=UTC))
        assert seen[0].param("symbols") == "AAPL" and seen[0].param("feed") == "iex"
        assert seen[0].headers["apca-api-key-id"] == "key"
        btc = src("BTC/USD", datetime(2024, 3, 5, 15, 0, 5, tzinfo=UTC))
        assert (btc.bid, btc.ask) == (65000.0, 65010.0)
        assert src("EUR/USD", datetime(2024, 3, 5, 15, 0, tzinfo=UTC)) is None  # FX: not served, no request
        assert "secret" not in repr(src)
        server.script("/v2/stocks/quotes/latest", StubResponse(status=500, body={"message": "boom"}), times=5)
        with pytest.raises(Exception):  # noqa: B017 - any failure propagates: the caller records "no quote"
            src("AAPL", datetime(2024, 3, 5, 15, 0, 5, tzinfo=UTC))
