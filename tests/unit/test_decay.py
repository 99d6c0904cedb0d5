"""Model decay (§D3, §D4): age, forecast-error and autocorrelation-flip factors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.stattools import acf

from ais_pipelines.core.decay import (
    DECAY_COLUMNS,
    DecayParams,
    age_factor,
    autocorr_flip_factor,
    autocorr_sign,
    decay_metrics,
    error_factor,
    error_factor_from_rmse,
    lag1_autocorr,
    standardized_rmse,
)
from ais_pipelines.core.features import forward_returns

P = DecayParams()


@dataclass(frozen=True)
class StubModel:
    name: str
    fit_date: pd.Timestamp
    version: str = "stub@v1"
    fit_autocorr: dict[str, tuple[float, int]] = field(default_factory=dict)


def ar1(phi: float, n: int, rng: np.random.Generator, sd: float = 0.01) -> np.ndarray:
    e = rng.normal(0, sd, n)
    x = np.empty(n)
    x[0] = e[0]
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def bars_from_returns(symbol: str, dates: pd.DatetimeIndex, rets: np.ndarray) -> pd.DataFrame:
    c = 100 * np.exp(np.cumsum(rets))
    return pd.DataFrame(
        {
            "symbol": symbol,
            "date": dates,
            "open": c,
            "high": c * 1.01,
            "low": c * 0.99,
            "close": c,
            "volume": 1e6,
            "adj_close": c,
            "asset_class": "STOCKS",
            "provider": "test",
        }
    )


# --------------------------------------------------------------------------------------------
# age
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("age", "expected"), [(0, 1.0), (30, 1.0), (75, 0.5), (120, 0.0), (200, 0.0)])
def test_age_factor_points(age: int, expected: float) -> None:
    # full until 30 days, then linear: (120 - 75) / (120 - 30) = 0.5
    assert age_factor(age, P) == pytest.approx(expected, abs=1e-15)


def test_age_factor_vectorised_and_monotone() -> None:
    ages = np.arange(0, 201)
    f = age_factor(ages, P)
    assert np.all(np.diff(f) <= 0)
    assert f[31] == pytest.approx((120 - 31) / 90)
    assert age_factor(60, DecayParams(full_until_days=10, expire_days=110)) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# error
# --------------------------------------------------------------------------------------------


def test_standardized_rmse_by_hand() -> None:
    # z = (1-0)/1, (2-0)/2, (-1-0)/1 -> all |z| = 1
    assert standardized_rmse([0, 0, 0], [1, 2, 1], [1, 2, -1]) == (pytest.approx(1.0), 3)
    # z = 2, 0, 0 -> sqrt(4/3); the NaN outcome is not counted
    rmse, n = standardized_rmse([0, 0, 0, 0], [1, 1, 1, 1], [2, 0, 0, np.nan])
    assert n == 3 and rmse == pytest.approx(math.sqrt(4 / 3))


def test_error_factor_mapping() -> None:
    assert error_factor_from_rmse(1.0, 63, P) == 1.0
    assert error_factor_from_rmse(1.3, 63, P) == 1.0
    # linear from (1.3, 1) to (2.5, 0.25): at 1.9 -> 1 - 0.75 * 0.6 / 1.2 = 0.625
    assert error_factor_from_rmse(1.9, 63, P) == pytest.approx(0.625)
    assert error_factor_from_rmse(3.5, 63, P) == pytest.approx(0.25)
    assert error_factor_from_rmse(3.5, 19, P) == 1.0  # too little evidence
    assert error_factor_from_rmse(np.nan, 63, P) == 1.0


def test_error_factor_falls_when_forecasts_are_systematically_wrong() -> None:
    rng = np.random.default_rng(7)
    dates = pd.bdate_range("2024-01-01", periods=80)
    sigma = pd.Series(0.04, index=dates)
    realized = pd.Series(rng.normal(0, 0.04, 80), index=dates)
    calibrated = pd.DataFrame({"mu": 0.0, "sigma": sigma})
    assert error_factor(calibrated, realized, P) == 1.0
    # always forecasting one sigma in the wrong direction
    wrong = pd.DataFrame({"mu": -np.sign(realized) * 0.04, "sigma": sigma})
    rmse, n = standardized_rmse(wrong["mu"].iloc[-63:], sigma.iloc[-63:], realized.iloc[-63:])
    assert n == 63 and rmse > 1.6
    f = error_factor(wrong, realized, P)
    assert f == pytest.approx(error_factor_from_rmse(rmse, n, P)) and f < 0.8
    # a constant bias of 1.5 sigma also decays
    biased = pd.DataFrame({"mu": 0.06, "sigma": sigma})
    assert error_factor(biased, realized, P) < 0.8
    # outcomes not yet realised (NaN) are not scored
    assert error_factor(wrong, realized.where(realized.index < dates[10]), P) == 1.0


# --------------------------------------------------------------------------------------------
# autocorrelation flip
# --------------------------------------------------------------------------------------------


def test_lag1_autocorr_matches_statsmodels() -> None:
    x = ar1(0.3, 200, np.random.default_rng(1))
    rho, n = lag1_autocorr(x)
    assert n == 200
    assert rho == pytest.approx(acf(x, nlags=1, fft=False)[1], rel=1e-12)


def test_autocorr_sign_threshold() -> None:
    # threshold 2 / sqrt(63) = 0.2520
    assert autocorr_sign(0.26, 63) == 1
    assert autocorr_sign(-0.26, 63) == -1
    assert autocorr_sign(0.24, 63) == 0
    assert autocorr_sign(np.nan, 63) == 0


def test_flip_factor_triggers_on_planted_flip_not_on_noise() -> None:
    rng = np.random.default_rng(42)
    fit = ar1(0.3, 252, rng)
    rho_fit, n_fit = lag1_autocorr(fit)
    fit_sign = autocorr_sign(rho_fit, n_fit)
    assert fit_sign == 1  # the fit window's positive autocorrelation is significant
    recent_flip = ar1(-0.5, 63, rng)
    assert autocorr_flip_factor(recent_flip, fit_sign, P) == 0.5
    assert autocorr_flip_factor(recent_flip, 0, P) == 1.0  # nothing to flip from
    assert autocorr_flip_factor(ar1(0.5, 63, rng), fit_sign, P) == 1.0  # same sign
    assert autocorr_flip_factor(rng.normal(0, 0.01, 63), fit_sign, P) == 1.0
    # false-flip rate on noise: one-sided 2/sqrt(n) test, ~2.3 % expected
    flips = sum(autocorr_flip_factor(rng.normal(0, 0.01, 63), 1, P) < 1 for _ in range(400))
    assert flips / 400 < 0.05
    # only the last autocorr_window returns count: a flip long ago is forgotten
    old_flip_then_noise = np.concatenate([ar1(-0.6, 200, rng), rng.normal(0, 0.01, 63)])
    assert autocorr_flip_factor(old_flip_then_noise[:-63], 1, P) == 0.5
    assert autocorr_flip_factor(rng.normal(0, 0.01, 10), 1, P) == 1.0  # too short to judge


# --------------------------------------------------------------------------------------------
# decay table
# --------------------------------------------------------------------------------------------


def _two_symbol_bars() -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    rng = np.random.default_rng(9)
    dates = pd.bdate_range("2023-01-02", periods=500)
    noise = rng.normal(0, 0.01, 500)
    flip = np.concatenate([ar1(0.3, 430, rng), ar1(-0.6, 70, rng)])  # flips in the last 70
    bars = pd.concat(
        [bars_from_returns("CALM", dates, noise), bars_from_returns("FLIP", dates, flip)], ignore_index=True
    )
    return bars, dates


def test_decay_table_over_three_consecutive_dates() -> None:
    bars, dates = _two_symbol_bars()
    as_ofs = list(dates[-3:])
    fit_date = as_ofs[0] - pd.Timedelta(days=45)
    model = StubModel("momentum", fit_date, fit_autocorr={"CALM": (0.01, 252), "FLIP": (0.3, 252)})
    frames = [decay_metrics(bars, d, [model], P, horizon=5) for d in as_ofs]
    for df in frames:
        assert list(df.columns) == DECAY_COLUMNS
    calm = [f.set_index("symbol").loc["CALM"] for f in frames]
    ages = [r["age_days"] for r in calm]
    assert ages == [(d - fit_date).days for d in as_ofs] and ages[0] < ages[1] < ages[2]
    af = [r["age_factor"] for r in calm]
    assert af[0] > af[1] > af[2]
    assert [r["age_factor"] for r in calm] == pytest.approx([(120 - a) / 90 for a in ages])
    dec = [r["decay_factor"] for r in calm]
    assert dec[0] > dec[1] > dec[2]
    assert all(r["reason_codes"] == "MODEL_AGE_DECAY" for r in calm)
    assert all(r["error_n"] == 0 and r["error_factor"] == 1.0 for r in calm)  # no past forecasts given
    # the planted flip on FLIP halves its factor on top of the age decay
    flip = frames[0].set_index("symbol").loc["FLIP"]
    assert flip["autocorr_recent"] < -2 / math.sqrt(63)
    assert flip["flip_factor"] == 0.5
    assert flip["decay_factor"] == pytest.approx(0.5 * flip["age_factor"])
    assert flip["reason_codes"] == "MODEL_AGE_DECAY;MODEL_AUTOCORR_FLIP"
    assert calm[0]["flip_factor"] == 1.0


def test_decay_table_expired_model_is_dead() -> None:
    bars, dates = _two_symbol_bars()
    model = StubModel("momentum", dates[-1] - pd.Timedelta(days=120))
    out = decay_metrics(bars, dates[-1], [model], P, horizon=5)
    assert (out["age_factor"] == 0).all() and (out["decay_factor"] == 0).all()
    assert out["reason_codes"].str.contains("MODEL_EXPIRED").all()
    fresh = decay_metrics(bars, dates[-1], [StubModel("m", dates[-1])], P, horizon=5)
    assert (fresh["age_days"] == 0).all() and (fresh["age_factor"] == 1).all()


def test_decay_table_error_factor_from_past_forecasts_point_in_time() -> None:
    bars, dates = _two_symbol_bars()
    as_of = dates[480]
    model = StubModel("momentum", dates[450])
    fwd = forward_returns(bars, as_of, 5)
    fwd = fwd[fwd["date"] >= dates[400]]
    sigma = 0.01 * math.sqrt(5)
    good = fwd.assign(model="momentum", mu=0.0, sigma=sigma)
    bad = fwd.assign(model="momentum", mu=-np.sign(fwd["fwd_ret"]) * 2 * sigma, sigma=sigma)
    past = pd.concat([good[good["symbol"] == "CALM"], bad[bad["symbol"] == "FLIP"]])
    out = decay_metrics(bars, as_of, [model], P, horizon=5, past_forecasts=past).set_index("symbol")
    assert out.loc["CALM", "error_n"] == 63 and out.loc["CALM", "error_factor"] == 1.0
    sub = past[past["symbol"] == "FLIP"].sort_values("date").tail(63)
    rmse, n = standardized_rmse(sub["mu"], sub["sigma"], sub["fwd_ret"])
    assert out.loc["FLIP", "error_rmse"] == pytest.approx(rmse) and n == 63
    assert out.loc["FLIP", "error_factor"] == pytest.approx(error_factor_from_rmse(rmse, n, P))
    assert out.loc["FLIP", "error_factor"] < 0.5
    assert "MODEL_ERROR_DECAY" in out.loc["FLIP", "reason_codes"]
    # forecasts dated after as_of, or whose outcome is unknown at as_of, are ignored
    late = pd.DataFrame(
        {"symbol": "CALM", "model": "momentum", "date": list(dates[477:500]), "mu": 5.0, "sigma": 0.01}
    )
    again = decay_metrics(bars, as_of, [model], P, horizon=5, past_forecasts=pd.concat([past, late]))
    pd.testing.assert_frame_equal(out.reset_index()[DECAY_COLUMNS], again)


def test_model_fitted_after_as_of_is_rejected() -> None:
    bars, dates = _two_symbol_bars()
    with pytest.raises(ValueError, match="point in time"):
        decay_metrics(bars, dates[100], [StubModel("m", dates[101])], P, horizon=5)


def test_error_table_reads_only_the_bars_from_the_first_forecast_on() -> None:
    """The error factor joins realized returns from the forecasts' first date on only; equal to
    the join over every bar, also for a symbol with gaps in its own sessions."""
    from ais_pipelines.core.decay import _error_table

    bars, dates = _two_symbol_bars()
    bars = bars.drop(index=bars.index[(bars["symbol"] == "FLIP") & bars["date"].isin(dates[430:440])])
    as_of = dates[480]
    fwd = forward_returns(bars, as_of, 5)
    past = fwd[fwd["date"] >= dates[420]].assign(model="momentum", mu=0.001, sigma=0.02)
    got = _error_table(bars, as_of, 5, past, P)
    # the join over every bar (the computation before the filter), step by step
    realized = forward_returns(bars, as_of, 5)
    j = past[["symbol", "model", "date", "mu", "sigma"]].merge(realized, on=["symbol", "date"], how="inner")
    j = j.sort_values(["symbol", "model", "date"], kind="mergesort").groupby(["symbol", "model"]).tail(P.error_window)
    agg = j.assign(z2=((j["fwd_ret"] - j["mu"]) / j["sigma"]) ** 2).groupby(["symbol", "model"])["z2"].agg(
        ["mean", "count"])
    assert got["error_rmse"].tolist() == np.sqrt(agg["mean"]).tolist()
    assert got["error_n"].tolist() == agg["count"].tolist() == [56, 46]  # CALM, FLIP (10 sessions missing)
