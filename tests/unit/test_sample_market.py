"""The embedded sample market: schema, stylized facts, determinism, defects, provider."""

from __future__ import annotations

import json
import math
from datetime import date

import numpy as np
import pandas as pd
import pytest

from ais_pipelines.core.asset_classes import AssetClass, classify_symbol
from ais_pipelines.core.calendars import last_n_sessions, sessions_between
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.market_data.base import InstrumentRequest, ProviderEmptyError
from ais_pipelines.market_data.sample import (
    DEFECT_KINDS,
    GICS_SECTORS,
    SAMPLE_COLUMNS,
    SP500_CALIBRATION,
    SampleDefect,
    SampleInstrument,
    SampleProvider,
    calibrate_from_sp500,
    crisis_window,
    generate_sample_bars,
    market_factor_returns,
    synthetic_universe,
)

END = date(2026, 11, 21)  # a Saturday: stocks end Friday 2026-11-20, crypto on the Saturday
N = 1300
STOCKS = AssetClass.STOCKS
STOCKS40 = [SampleInstrument(f"T{i:03d}", STOCKS, GICS_SECTORS[i % 11]) for i in range(40)]
MIXED = [
    SampleInstrument("AAPL", STOCKS, "Information Technology"),
    SampleInstrument("XOM", STOCKS, "Energy"),
    SampleInstrument("EUR/USD", AssetClass.FX, "Currencies"),
    SampleInstrument("USD/JPY", AssetClass.FX, "Currencies"),
    SampleInstrument("BTC/USD", AssetClass.CRYPTO, "Digital Assets"),
    SampleInstrument("ETH/USD", AssetClass.CRYPTO, "Digital Assets"),
    SampleInstrument("GLD", AssetClass.COMMODITIES, "Precious Metals"),
    SampleInstrument("USO", AssetClass.COMMODITIES, "Energy Commodities"),
]
SPY = {STOCKS: 252.0, AssetClass.FX: 261.0, AssetClass.CRYPTO: 365.0, AssetClass.COMMODITIES: 252.0}


@pytest.fixture(scope="module")
def stocks() -> pd.DataFrame:
    return generate_sample_bars(STOCKS40, END, N)


@pytest.fixture(scope="module")
def mixed() -> pd.DataFrame:
    return generate_sample_bars(MIXED, END, N)


def _closes(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.pivot(index="date", columns="symbol", values="close")


def _log_returns(frame: pd.DataFrame) -> pd.DataFrame:
    return np.log(_closes(frame)).diff().iloc[1:]


def _equal_weight_index(frame: pd.DataFrame) -> pd.Series:
    simple = np.exp(_log_returns(frame)) - 1.0
    return (1.0 + simple.mean(axis=1)).cumprod()


# --- schema and calendars ---------------------------------------------------------------------
def test_schema_dtypes_and_calendar_sessions(mixed: pd.DataFrame) -> None:
    assert list(mixed.columns) == SAMPLE_COLUMNS
    assert str(mixed["date"].dtype) == "datetime64[ns]"
    assert (mixed["date"] == mixed["date"].dt.normalize()).all()  # midnight session labels
    assert mixed["volume"].dtype == np.int64
    assert mixed[["open", "high", "low", "close", "adj_close"]].dtypes.eq(np.float64).all()
    assert list(mixed["symbol"].unique()) == sorted(i.symbol for i in MIXED)
    expected_cal = {
        STOCKS: "XNYS",
        AssetClass.FX: "24/5",
        AssetClass.CRYPTO: "24/7",
        AssetClass.COMMODITIES: "XNYS",
    }
    for inst in MIXED:
        dates = pd.DatetimeIndex(mixed.loc[mixed["symbol"] == inst.symbol, "date"])
        assert len(dates) == N
        assert dates.equals(last_n_sessions(expected_cal[inst.asset_class], END, N))
    last = mixed.groupby("symbol")["date"].max()
    assert last["AAPL"] == pd.Timestamp("2026-11-20")  # Friday: the Saturday is no NYSE session
    assert last["EUR/USD"] == pd.Timestamp("2026-11-20")
    assert last["BTC/USD"] == pd.Timestamp("2026-11-21")
    # FX never trades at the weekend, crypto does
    fx_days = mixed.loc[mixed["symbol"] == "EUR/USD", "date"].dt.day_of_week
    btc_days = mixed.loc[mixed["symbol"] == "BTC/USD", "date"].dt.day_of_week
    assert fx_days.max() == 4 and set(btc_days) == set(range(7))


def test_calendar_override_is_honoured() -> None:
    inst = SampleInstrument("SAP", STOCKS, "Information Technology", calendar="XETR")
    bars = generate_sample_bars([inst], END, 50)
    assert pd.DatetimeIndex(bars["date"]).equals(last_n_sessions("XETR", END, 50))


def test_bars_are_consistent_and_plausible(mixed: pd.DataFrame) -> None:
    body_max = mixed[["open", "close"]].max(axis=1)
    body_min = mixed[["open", "close"]].min(axis=1)
    assert (mixed["high"] >= body_max).all() and (mixed["low"] <= body_min).all()
    assert (mixed[["open", "high", "low", "close"]] > 0).all().all()
    assert (mixed["volume"] > 0).all()
    assert (mixed["adj_close"] == mixed["close"]).all()
    assert not mixed.duplicated(["symbol", "date"]).any()

    first = mixed.groupby("symbol")["close"].first()
    assert 1.0 < first["EUR/USD"] < 1.25 and 120 < first["USD/JPY"] < 150
    assert 20_000 < first["BTC/USD"] < 40_000 and 1_500 < first["ETH/USD"] < 2_600
    assert 150 < first["GLD"] < 200

    rets = _log_returns(mixed)
    by_class = {i.symbol: i.asset_class for i in MIXED}
    vols = {s: rets[s].dropna().std() * math.sqrt(SPY[by_class[s]]) for s in rets}
    assert all(0.05 < vols[s] < 0.11 for s in ("EUR/USD", "USD/JPY"))
    assert all(0.15 < vols[s] < 0.50 for s in ("AAPL", "XOM"))
    assert all(0.17 < vols[s] < 0.35 for s in ("GLD", "USO"))
    assert all(0.45 < vols[s] < 1.00 for s in ("BTC/USD", "ETH/USD"))


def test_stock_universe_levels(stocks: pd.DataFrame) -> None:
    first = stocks.groupby("symbol")["close"].first()
    assert first.between(8, 600).all()
    dollar_volume = (stocks["close"] * stocks["volume"]).groupby(stocks["symbol"]).mean()
    assert dollar_volume.between(3e6, 8e8).all()
    ann_vol = _log_returns(stocks).std() * math.sqrt(252)
    assert ann_vol.between(0.15, 0.50).all()
    assert 0.22 < ann_vol.mean() < 0.40


# --- stylized facts (40 stocks × 1300 sessions) ------------------------------------------------
def test_fat_tails_and_volatility_clustering(stocks: pd.DataFrame) -> None:
    rets = _log_returns(stocks)
    assert rets.kurt().mean() > 1.0  # pandas kurt() is excess kurtosis
    assert (rets.kurt() > 1.0).mean() > 0.9
    abs_ac1 = np.mean([rets[s].abs().autocorr(1) for s in rets])
    assert abs_ac1 > 0.1


def test_cross_sectional_correlation(stocks: pd.DataFrame) -> None:
    corr = _log_returns(stocks).corr().to_numpy()
    avg = corr[np.triu_indices_from(corr, 1)].mean()
    assert 0.15 <= avg <= 0.6
    # sector factors: same-sector pairs are more correlated than cross-sector pairs
    sector = np.array([i.sector for i in sorted(STOCKS40, key=lambda i: i.symbol)])
    same = sector[:, None] == sector[None, :]
    off = ~np.eye(len(sector), dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean() + 0.03


def test_crisis_episode_and_calm_tail(stocks: pd.DataFrame) -> None:
    cs, ce = crisis_window(END)
    sessions = last_n_sessions("XNYS", END, N)
    # default placement: ends ~1.75 years (440 sessions) before the end
    assert sessions.get_loc(ce) == N - 1 - 440  # 440 sessions follow the crisis
    assert 1.4 < (sessions[-1] - ce).days / 365.25 < 2.1
    index = _equal_weight_index(stocks)
    drawdown = index / index.cummax() - 1.0
    assert drawdown.min() <= -0.25
    assert cs <= drawdown.idxmin() <= ce + pd.Timedelta(days=30)
    ret = np.log(index).diff().dropna()
    calm = ret.rolling(60).std().median()
    assert ret.loc[cs:ce].std() >= 3.0 * calm
    assert ret.iloc[-120:].std() < 1.5 * calm  # the demo does not end in a crisis
    # correlation spikes in the crisis (idiosyncratic vol rises less than the factors')
    rets = _log_returns(stocks)
    c_in = rets.loc[cs:ce].corr().to_numpy()
    c_all = rets.corr().to_numpy()
    iu = np.triu_indices_from(c_in, 1)
    assert c_in[iu].mean() > c_all[iu].mean() + 0.1


def test_crisis_placement_parameter() -> None:
    bars = generate_sample_bars(STOCKS40[:20], END, 900, crisis_end_offset_sessions=150)
    cs, ce = crisis_window(END, 150)
    index = _equal_weight_index(bars)
    # the fall happens inside the moved window: from the pre-crisis peak to the crisis low
    assert index.loc[cs:ce].min() / index.loc[:cs].max() - 1.0 <= -0.25
    default_cs, default_ce = crisis_window(END)
    assert default_ce < cs or default_cs > ce  # it really moved


def test_volume_and_range_respond_to_volatility(stocks: pd.DataFrame) -> None:
    cs, ce = crisis_window(END)
    in_crisis = stocks["date"].between(cs, ce)
    log_range = np.log(stocks["high"] / stocks["low"])
    assert log_range[in_crisis].median() > 2.0 * log_range[~in_crisis].median()
    vol_ratio = (
        stocks[in_crisis].groupby("symbol")["volume"].median() / stocks.groupby("symbol")["volume"].median()
    )
    assert (vol_ratio > 1.1).mean() > 0.9
    rets = _log_returns(stocks)
    log_v = np.log(stocks.pivot(index="date", columns="symbol", values="volume").astype(float)).iloc[1:]
    corr = [np.corrcoef(rets[s].abs(), log_v[s])[0, 1] for s in rets]
    assert np.mean(corr) > 0.15


def test_weekend_market_moves_reach_monday_stock_returns() -> None:
    many = [i for i in synthetic_universe(150) if i.asset_class == STOCKS]
    bars = generate_sample_bars(many, END, N)
    ew = _log_returns(bars).mean(axis=1)
    factor = market_factor_returns(END, N)
    mondays = ew[ew.index.day_of_week == 0]
    weekend = np.array(
        [factor.loc[d - pd.Timedelta(days=2) : d - pd.Timedelta(days=1)].sum() for d in mondays.index]
    )
    monday = factor.reindex(mondays.index).to_numpy()
    design = np.column_stack([np.ones(len(mondays)), weekend, monday])
    coef, *_ = np.linalg.lstsq(design, mondays.to_numpy(), rcond=None)
    assert 0.75 < coef[1] < 1.25  # weekend factor moves load on Monday like the average beta
    assert 0.75 < coef[2] < 1.25
    assert factor.loc[factor.index.day_of_week >= 5].abs().sum() > 0  # weekends do move


# --- determinism and independence --------------------------------------------------------------
def test_deterministic(stocks: pd.DataFrame) -> None:
    again = generate_sample_bars(list(reversed(STOCKS40)), END, N)
    pd.testing.assert_frame_equal(stocks, again)
    other_seed = generate_sample_bars(STOCKS40[:3], END, N, seed=8)
    same_seed = stocks[stocks["symbol"].isin([i.symbol for i in STOCKS40[:3]])].reset_index(drop=True)
    assert not np.allclose(other_seed["close"].to_numpy(), same_seed["close"].to_numpy())


def test_symbol_path_independent_of_universe(stocks: pd.DataFrame, mixed: pd.DataFrame) -> None:
    small = generate_sample_bars(STOCKS40[:3] + MIXED[4:5], END, N)
    for sym in [i.symbol for i in STOCKS40[:3]]:
        pd.testing.assert_frame_equal(
            small[small["symbol"] == sym].reset_index(drop=True),
            stocks[stocks["symbol"] == sym].reset_index(drop=True),
        )
    pd.testing.assert_frame_equal(
        small[small["symbol"] == "BTC/USD"].reset_index(drop=True),
        mixed[mixed["symbol"] == "BTC/USD"].reset_index(drop=True),
    )


def test_invalid_arguments() -> None:
    assert generate_sample_bars([], END, 10).columns.tolist() == SAMPLE_COLUMNS
    with pytest.raises(ValueError, match="duplicate"):
        generate_sample_bars([STOCKS40[0], STOCKS40[0]], END, 10)
    with pytest.raises(ValueError):
        generate_sample_bars(STOCKS40[:1], END, 1)


# --- defects -----------------------------------------------------------------------------------
def _max_equal_close_run(g: pd.DataFrame) -> int:
    same = (g["close"].diff() == 0).to_numpy()
    best = run = 1
    for s in same[1:]:
        run = run + 1 if s else 1
        best = max(best, run)
    return best


def _robust_sigma(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _bad_prints(g: pd.DataFrame) -> int:
    """Rows that jump away and straight back by more than 10 robust σ each way."""
    lc = np.log(g["close"].to_numpy())
    r = np.diff(lc)
    s = _robust_sigma(r)
    into, out = r[:-1], r[1:]
    return int(np.sum((np.abs(into) > 10 * s) & (np.abs(out) > 10 * s) & (np.sign(into) == -np.sign(out))))


def _volume_spikes(g: pd.DataFrame) -> int:
    """Log volume more than 6 robust σ above its centred 21-session median."""
    lv = np.log(g["volume"].astype(float))
    dev = (lv - lv.rolling(21, center=True, min_periods=5).median()).to_numpy()
    return int(np.sum(dev > 6 * _robust_sigma(dev)))


def _split_like(g: pd.DataFrame) -> int:
    c, a = g["close"].to_numpy(), g["adj_close"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):  # zero closes from other defects
        ratio, adj_ratio = c[1:] / c[:-1], a[1:] / a[:-1]
    return int(np.sum((np.abs(ratio - 0.5) < 0.05) & (np.abs(adj_ratio - 1.0) < 0.2)))


def _missing(g: pd.DataFrame) -> int:
    expected = sessions_between("XNYS", g["date"].min(), g["date"].max())
    return len(expected.difference(pd.DatetimeIndex(g["date"])))


DETECTORS = {
    "missing_sessions": _missing,
    "short_history": len,
    "stale": _max_equal_close_run,
    "split_jump": _split_like,
    "ohlc_inconsistent": lambda g: int((g["high"] < g[["open", "close"]].max(axis=1)).sum()),
    "duplicate_dates": lambda g: int(g.duplicated(["date"]).sum()),
    "non_positive": lambda g: int((g["close"] <= 0).sum()),
    "return_spike": _bad_prints,
    "volume_spike": _volume_spikes,
}
# (defect, count the detector must report on the defective symbol)
DEFECTS = {
    "missing_sessions": (SampleDefect("T000", "missing_sessions", fraction=0.1), 80),
    "short_history": (SampleDefect("T001", "short_history", sessions=300), 300),
    "stale": (SampleDefect("T002", "stale", sessions=6), 6),
    "split_jump": (SampleDefect("T003", "split_jump", on=date(2025, 12, 7)), 1),
    "ohlc_inconsistent": (SampleDefect("T004", "ohlc_inconsistent", rows=4), 4),
    "duplicate_dates": (SampleDefect("T005", "duplicate_dates", rows=2), 2),
    "non_positive": (SampleDefect("T006", "non_positive", rows=3), 3),
    "return_spike": (SampleDefect("T007", "return_spike", rows=2), 2),
    "volume_spike": (SampleDefect("T008", "volume_spike", rows=3), 3),
}
DEFECT_N = 800


@pytest.fixture(scope="module")
def clean_small() -> pd.DataFrame:
    return generate_sample_bars(STOCKS40[:12], END, DEFECT_N)


@pytest.fixture(scope="module")
def defective() -> pd.DataFrame:
    extra = [SampleDefect("NOT_IN_UNIVERSE", "stale")]  # ignored, not an error
    return generate_sample_bars(
        STOCKS40[:12], END, DEFECT_N, defects=[d for d, _ in DEFECTS.values()] + extra
    )


def test_every_defect_kind_is_covered() -> None:
    assert set(DEFECTS) == set(DEFECT_KINDS) == set(DETECTORS)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_is_present_and_detectable(
    kind: str, clean_small: pd.DataFrame, defective: pd.DataFrame
) -> None:
    defect, expected = DEFECTS[kind]
    detect = DETECTORS[kind]
    bad = defective[defective["symbol"] == defect.symbol].reset_index(drop=True)
    clean = clean_small[clean_small["symbol"] == defect.symbol].reset_index(drop=True)
    assert detect(bad) == expected
    if kind == "short_history":
        assert detect(clean) == DEFECT_N
    elif kind == "stale":
        assert detect(clean) < 3  # policies/quality.yaml: stale_min_run 3
    else:
        assert detect(clean) == 0
    # every other symbol is untouched by this defect
    other = clean_small[clean_small["symbol"] == "T011"].reset_index(drop=True)
    pd.testing.assert_frame_equal(defective[defective["symbol"] == "T011"].reset_index(drop=True), other)


def test_split_jump_details(clean_small: pd.DataFrame, defective: pd.DataFrame) -> None:
    bad = defective[defective["symbol"] == "T003"].set_index("date")
    clean = clean_small[clean_small["symbol"] == "T003"].set_index("date")
    split_day = pd.Timestamp("2025-12-08")  # 2025-12-07 is a Sunday: first session on or after
    before, after = bad.index < split_day, bad.index >= split_day
    np.testing.assert_allclose(bad.loc[before, "close"], clean.loc[before, "close"])
    np.testing.assert_allclose(bad.loc[after, "close"], clean.loc[after, "close"] / 2, rtol=1e-6)
    np.testing.assert_allclose(bad["adj_close"], clean["close"] / 2, rtol=1e-6)  # continuous
    assert (bad.loc[after, "close"] == bad.loc[after, "adj_close"]).all()
    np.testing.assert_array_equal(bad.loc[after, "volume"], clean.loc[after, "volume"] * 2)
    jump = np.log(bad["close"]).diff().loc[split_day]
    assert abs(jump - math.log(0.5)) < 0.1


def test_defect_row_details(clean_small: pd.DataFrame, defective: pd.DataFrame) -> None:
    def sym(frame: pd.DataFrame, s: str) -> pd.DataFrame:
        return frame[frame["symbol"] == s].reset_index(drop=True)

    # short history: exactly the last 300 sessions
    assert pd.DatetimeIndex(sym(defective, "T001")["date"]).equals(last_n_sessions("XNYS", END, 300))
    # stale: O = H = L = C on the repeated rows
    st = sym(defective, "T002")
    flat = st[(st["open"] == st["close"]) & (st["high"] == st["close"]) & (st["low"] == st["close"])]
    assert len(flat) == 5 and flat["close"].nunique() == 1
    # duplicates are adjacent and differ by 0.1–0.5 %
    dup = sym(defective, "T005")
    first = dup[dup.duplicated(["date"], keep="last")]
    second = dup[dup.duplicated(["date"], keep="first")]
    assert (second.index - first.index == 1).all()
    rel = (second["close"].to_numpy() / first["close"].to_numpy()) - 1.0
    assert np.all((np.abs(rel) > 0.0009) & (np.abs(rel) < 0.0051))
    # non-positive: one zero, the rest negative
    npos = sym(defective, "T006")["close"]
    assert (npos == 0).sum() == 1 and (npos < 0).sum() == 2
    # volume spikes are 50× the clean volume
    vb, vc = sym(defective, "T008"), sym(clean_small, "T008")
    ratio = vb["volume"] / vc["volume"]
    assert ((ratio - 50).abs() < 0.01).sum() == 3 and (ratio == 1).sum() == DEFECT_N - 3
    # missing sessions: first and last kept, only session dates
    miss = sym(defective, "T000")
    assert len(miss) == DEFECT_N - 80
    assert miss["date"].iloc[0] == sym(clean_small, "T000")["date"].iloc[0]
    assert miss["date"].iloc[-1] == sym(clean_small, "T000")["date"].iloc[-1]


def test_combined_defects_on_one_symbol() -> None:
    kinds = ["split_jump", "stale", "ohlc_inconsistent", "duplicate_dates", "non_positive", "volume_spike"]
    defects = [DEFECTS[k][0].__class__(**{**DEFECTS[k][0].__dict__, "symbol": "T010"}) for k in kinds]
    g = generate_sample_bars(STOCKS40[10:11], END, DEFECT_N, defects=defects)
    for kind in kinds:
        assert DETECTORS[kind](g) == DEFECTS[kind][1], kind


def test_defect_spec_validation() -> None:
    with pytest.raises(ValueError):
        SampleDefect("X", "gremlins")
    with pytest.raises(ValueError):
        SampleDefect("X", "missing_sessions", fraction=1.5)
    with pytest.raises(ValueError):
        SampleDefect("X", "split_jump", ratio=1.0)
    # the shape used in policies/providers.yaml
    d = SampleDefect.from_mapping({"symbol": "PLD", "kind": "missing_sessions", "fraction": 0.45})
    assert d.fraction == 0.45
    assert SampleDefect("X", "split_jump", on="2025-01-02").on == date(2025, 1, 2)  # type: ignore[arg-type]


# --- synthetic universe ------------------------------------------------------------------------
def test_synthetic_universe() -> None:
    uni = synthetic_universe(500)
    assert len(uni) == 500 and len({i.symbol for i in uni}) == 500
    assert uni == synthetic_universe(500)
    assert uni != synthetic_universe(500, seed=8)
    classes = pd.Series([i.asset_class for i in uni]).value_counts()
    assert classes[STOCKS] == 479 and classes[AssetClass.FX] == classes[AssetClass.CRYPTO] == 7
    sectors = pd.Series([i.sector for i in uni if i.asset_class == STOCKS]).value_counts()
    assert set(sectors.index) == set(GICS_SECTORS) and sectors.max() - sectors.min() <= 1
    assert all(classify_symbol(i.symbol) == i.asset_class for i in uni)
    assert all(i.asset_class == STOCKS for i in synthetic_universe(10))
    small = synthetic_universe(20)
    assert {i.asset_class for i in small} == set(AssetClass) and len(small) == 20


# --- provider ----------------------------------------------------------------------------------
def test_provider_fetch_slice_raw_and_lineage(mixed: pd.DataFrame) -> None:
    provider = SampleProvider(MIXED, END, N, defects=[SampleDefect("XOM", "stale")])
    assert provider.name == "sample"
    res = provider.fetch_daily_bars(InstrumentRequest("AAPL", STOCKS), date(2026, 1, 1), date(2026, 3, 31))
    assert res.symbol == "AAPL" and res.provider == "sample"
    assert list(res.frame.columns) == SAMPLE_COLUMNS
    assert pd.DatetimeIndex(res.frame["date"]).equals(
        sessions_between("XNYS", date(2026, 1, 1), date(2026, 3, 31))
    )
    expected = mixed[(mixed["symbol"] == "AAPL") & mixed["date"].between("2026-01-01", "2026-03-31")]
    pd.testing.assert_frame_equal(res.frame, expected.reset_index(drop=True))
    json.dumps(res.raw.to_records())
    assert len(res.raw) == len(res.frame)
    assert res.raw[0]["date"] == res.frame["date"].iloc[0].date().isoformat()
    assert res.raw[-1]["close"] == res.frame["close"].iloc[-1]
    assert res.lineage["synthetic"] is True
    assert res.lineage["generator"] == "ais_pipelines.market_data.sample"
    assert res.lineage["seed"] == 7 and "S&P 500" in res.lineage["calibration"]
    assert res.lineage["defects"] == []
    json.dumps(res.lineage)
    xom = provider.fetch_daily_bars(InstrumentRequest("XOM", STOCKS), date(2020, 1, 1), END)
    assert xom.lineage["defects"] == [{"symbol": "XOM", "kind": "stale"}]


def test_provider_errors() -> None:
    provider = SampleProvider(MIXED, END, 100)
    with pytest.raises(ProviderEmptyError) as err:
        provider.fetch_daily_bars(InstrumentRequest("NOPE", STOCKS), date(2026, 1, 1), END)
    assert err.value.reason_code is ReasonCode.PROVIDER_EMPTY_RESPONSE and err.value.provider == "sample"
    with pytest.raises(ProviderEmptyError):  # known symbol, but nothing in the window
        provider.fetch_daily_bars(InstrumentRequest("AAPL", STOCKS), date(2010, 1, 1), date(2010, 12, 31))
    # a batch leaves unknown symbols out instead of failing everyone (§B5)
    batch = provider.fetch_many(
        [InstrumentRequest("NOPE", STOCKS), InstrumentRequest("GLD", AssetClass.COMMODITIES)],
        date(2026, 1, 1),
        END,
    )
    assert [r.symbol for r in batch] == ["GLD"] and len(batch[0].frame) > 0


def test_provider_batch_equals_single(mixed: pd.DataFrame) -> None:
    provider = SampleProvider(MIXED, END, N)
    requests = [InstrumentRequest(i.symbol, i.asset_class) for i in MIXED]
    batch = provider.fetch_many(requests, date(2020, 1, 1), END)
    assert [r.symbol for r in batch] == [i.symbol for i in MIXED]
    for req, res in zip(requests, batch, strict=True):
        single = SampleProvider(MIXED, END, N).fetch_daily_bars(req, date(2020, 1, 1), END)
        pd.testing.assert_frame_equal(single.frame, res.frame)
        assert single.raw == res.raw and single.lineage == res.lineage
        assert len(res.frame) == N
    full = pd.concat([r.frame for r in batch]).sort_values(["symbol", "date"], kind="stable")
    pd.testing.assert_frame_equal(full.reset_index(drop=True), mixed)


# --- calibration -------------------------------------------------------------------------------
@pytest.mark.slow  # importing arch and fitting costs a few seconds
def test_frozen_calibration_matches_sp500_fit() -> None:
    fit = calibrate_from_sp500()
    for field, frozen in SP500_CALIBRATION.__dict__.items():
        assert getattr(fit, field) == pytest.approx(frozen, rel=0.02), field
    assert 0.12 < SP500_CALIBRATION.calm_daily_vol * math.sqrt(252) < 0.18
