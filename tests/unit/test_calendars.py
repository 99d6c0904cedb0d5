"""Calendars per asset class against exchange_calendars, and the fallback classifier."""

from __future__ import annotations

import exchange_calendars as xcals
import numpy as np
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


# --- the session table of the intraday path (issue 14: one-order approve under 2 s) ----------


def _boundary_minutes(cal: xcals.ExchangeCalendar, start: str, end: str) -> list[pd.Timestamp]:
    """Every open, close and break edge of the sessions in [start, end], one minute either side,
    plus the middle of each night (closed) — where a lookup by arrays could go wrong."""
    sessions = cal.sessions_in_range(start, end)
    edges = []
    for col in (cal.opens, cal.closes, cal.break_starts, cal.break_ends):
        edges += [t for t in col.loc[sessions] if pd.notna(t)]
    out = []
    for t in edges:
        out += [t - pd.Timedelta(minutes=1), t, t + pd.Timedelta(minutes=1)]
    out += [cal.closes.loc[s] + (cal.opens.shift(-1).loc[s] - cal.closes.loc[s]) / 2
            for s in sessions[:-1] if cal.opens.shift(-1).loc[s] > cal.closes.loc[s]]
    return sorted(set(out))


@pytest.mark.parametrize("name", ["XNYS", "XLON", "XHKG", "XTKS", "24/7", "24/5"])
def test_session_table_answers_like_exchange_calendars(name):
    from ais_pipelines.core.calendars import get_calendar, session_table

    cal, table = get_calendar(name), session_table(name)
    # 2024 holds early closes (XNYS 07-03, 11-29), lunch breaks (XHKG, XTKS) and a DST change
    minutes = _boundary_minutes(cal, "2024-03-01", "2024-12-31")
    assert len(minutes) > 800
    for m in minutes:
        assert table.is_open(m) == cal.is_open_on_minute(m), (name, m)
        close = table.session_close_at(m)
        if cal.is_open_on_minute(m):
            assert close == cal.session_close(cal.minute_to_session(m, direction="none"))
        else:
            assert close is None
    for day in pd.date_range("2024-03-01", "2024-12-31"):
        nxt = cal.date_to_session(day, direction="next")
        ref = cal.next_session(nxt) if nxt <= day else nxt
        assert table.session_after(day) == (ref.tz_localize(None) if ref.tz else ref)
        assert table.session_open(table.session_after(day)) == cal.session_open(ref)
    with pytest.raises(ValueError, match="not a"):
        table.session_open(pd.Timestamp("2024-12-29") if name != "24/7" else pd.Timestamp("1900-01-01"))  # a Sunday
    with pytest.raises(ValueError, match="outside"):
        table.is_open(pd.Timestamp("1980-01-02 15:00", tz="UTC"))


def test_session_table_cache_is_used_and_a_bad_file_is_rebuilt(tmp_path, monkeypatch):
    from ais_pipelines.core import calendars as c

    monkeypatch.setenv(c.CALENDAR_CACHE_ENV, str(tmp_path))
    c.session_table.cache_clear()
    built = c.session_table("XLON")
    (path,) = tmp_path.glob("XLON-*.npz")
    c.session_table.cache_clear()

    def no_build(name):
        raise AssertionError("built from exchange_calendars although a valid cache file exists")

    monkeypatch.setattr(c, "_table_from_calendar", no_build)
    cached = c.session_table("XLON")
    for f in c._FIELDS:
        assert np.array_equal(getattr(cached, f), getattr(built, f))

    path.write_bytes(b"not an npz")  # a damaged file is rebuilt, never trusted
    monkeypatch.undo()
    monkeypatch.setenv(c.CALENDAR_CACHE_ENV, str(tmp_path))
    c.session_table.cache_clear()
    rebuilt = c.session_table("XLON")
    assert np.array_equal(rebuilt.opens, built.opens)
    c.session_table.cache_clear()
    assert np.array_equal(c._read_cached(path, "XLON").closes, built.closes)  # rewritten whole
    c.session_table.cache_clear()


def test_the_runtime_names_the_cache_folder_the_calendars_read(tmp_path, monkeypatch):
    from ais_pipelines.core import calendars as c
    from ais_pipelines.runtime_files import CALENDAR_CACHE_ENV, use_calendar_cache

    monkeypatch.delenv(CALENDAR_CACHE_ENV, raising=False)
    use_calendar_cache(tmp_path)
    assert CALENDAR_CACHE_ENV == c.CALENDAR_CACHE_ENV
    assert c._cache_file("24/7").parent == tmp_path / "cache" / "calendars"
