"""Calendars per asset class against exchange_calendars, and the fallback classifier."""

from __future__ import annotations

import exchange_calendars as xcals
import pandas as pd
import pytest

from ais_pipelines.core.asset_classes import AssetClass, classify_symbol
from ais_pipelines.core.calendars import (
    calendar_days_for_sessions,
    calendar_name,
    is_open_at,
    is_session,
    last_n_sessions,
    sessions_between,
)


def test_xnys_sessions_match_exchange_calendars():
    ref = xcals.get_calendar("XNYS").sessions_in_range("2024-01-01", "2024-12-31")
    ours = sessions_between("XNYS", "2024-01-01", "2024-12-31")
    assert len(ours) == len(ref) == 252
    assert list(ours) == list(ref.tz_localize(None) if ref.tz else ref)
    assert not is_session("XNYS", "2024-07-04")  # Independence Day
    assert not is_session("XNYS", "2024-11-28")  # Thanksgiving


def test_crypto_trades_every_day_and_fx_five_days():
    assert len(sessions_between("24/7", "2024-01-01", "2024-01-31")) == 31
    fx = sessions_between("24/5", "2024-01-01", "2024-01-31")
    assert len(fx) == 23 and all(d.dayofweek < 5 for d in fx)


def test_calendar_days_cover_1260_sessions():
    end = pd.Timestamp("2026-11-20")
    for cal in ("XNYS", "24/5", "24/7"):
        days = calendar_days_for_sessions(cal, end, 1260)
        got = sessions_between(cal, end - pd.Timedelta(days=days - 1), end)
        assert len(got) == 1260, cal
    assert calendar_days_for_sessions("24/7", end, 1260) == 1260
    assert list(last_n_sessions("XNYS", "2026-11-21", 2)) == [pd.Timestamp("2026-11-19"), pd.Timestamp("2026-11-20")]


def test_market_hours():
    ny = "America/New_York"
    assert is_open_at("XNYS", pd.Timestamp("2026-11-20 10:00", tz=ny))
    assert not is_open_at("XNYS", pd.Timestamp("2026-11-20 16:30", tz=ny))
    assert not is_open_at("XNYS", pd.Timestamp("2026-11-21 12:00", tz=ny))  # Saturday
    assert is_open_at("24/7", pd.Timestamp("2026-11-21 12:00", tz=ny))
    with pytest.raises(ValueError):
        is_open_at("XNYS", pd.Timestamp("2026-11-20 10:00"))


@pytest.mark.parametrize(
    ("symbol", "klass"),
    [("AAPL", AssetClass.STOCKS), ("BTC/USD", AssetClass.CRYPTO), ("ETH-USD", AssetClass.CRYPTO),
     ("EURUSD=X", AssetClass.FX), ("USD/JPY", AssetClass.FX), ("GC=F", AssetClass.COMMODITIES),
     ("GLD", AssetClass.COMMODITIES), ("SPY", AssetClass.STOCKS)],
)
def test_fallback_classifier(symbol, klass):
    assert classify_symbol(symbol) == klass
    assert calendar_name(klass) in {"XNYS", "24/5", "24/7"}
