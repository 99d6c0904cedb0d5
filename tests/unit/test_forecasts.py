"""Forecast distributions, fitted models and their combination (§D1, §D2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ais_pipelines.core.features import compute_market_features
from ais_pipelines.core.forecasts import (
    COMBINED_COLUMNS,
    PER_MODEL_COLUMNS,
    FittedModel,
    ForecastParams,
    disagreement,
    distribution_stats,
    fit_models,
    forecast,
    select_models,
)

H = 5
PARAMS = ForecastParams()


def to_bars(logp: np.ndarray, dates: pd.DatetimeIndex, prefix: str = "S") -> pd.DataFrame:
    n_sym, n_days = logp.shape
    c = 50 * np.exp(logp)
    return pd.DataFrame(
        {
            "symbol": np.repeat([f"{prefix}{i:03d}" for i in range(n_sym)], n_days),
            "date": np.tile(dates.to_numpy(), n_sym),
            "open": c.ravel(),
            "high": (c * 1.01).ravel(),
            "low": (c * 0.99).ravel(),
            "close": c.ravel(),
            "volume": 1e6,
            "adj_close": c.ravel(),
            "asset_class": "STOCKS",
            "provider": "test",
        }
    )


def planted_momentum(
    c: float, n_sym: int = 100, n_days: int = 1100, seed: int = 0
) -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    """Daily r_t = sigma_i (c z_{t-1} + eps_t) with z the clipped 12-1 momentum in vol units.
    Over H sessions the standardized forward return is ~ c sqrt(H) z: the planted slope."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-01", periods=n_days)
    sig = rng.uniform(0.01, 0.03, n_sym)
    logp = np.zeros((n_sym, n_days))
    for t in range(1, n_days):
        z = np.zeros(n_sym)
        if t - 1 >= 252:
            mom = logp[:, t - 1 - 21] - logp[:, t - 1 - 252]
            z = np.clip(mom / (sig * math.sqrt(231)), -3, 3)
        logp[:, t] = logp[:, t - 1] + sig * (c * z + rng.standard_normal(n_sym))
    return to_bars(logp, dates), dates


@pytest.fixture(scope="module")
def momentum_data() -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    return planted_momentum(0.03)


@pytest.fixture(scope="module")
def fitted(momentum_data: tuple[pd.DataFrame, pd.DatetimeIndex]) -> list[FittedModel]:
    bars, dates = momentum_data
    return fit_models(bars, dates[-40])


# --------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------


def test_fit_recovers_planted_momentum(fitted: list[FittedModel]) -> None:
    by = {m.name: m for m in fitted}
    b = by["momentum"].coefficients["beta"]
    planted = 0.03 * math.sqrt(H)  # 0.067 per unit of signal, in sigma_H units
    assert b > 0
    assert b == pytest.approx(planted, rel=0.25)
    d = by["momentum"].diagnostics
    assert d["t_stat"] > 4 and 0.95 < d["shrink"] <= 1.0
    assert d["n_obs"] == 100 * 756
    # nothing planted for the short-term reversal: its slope is within noise of zero
    mr = by["mean_reversion"]
    assert abs(mr.diagnostics["beta_ols"]) < 3 * mr.diagnostics["se"]
    assert abs(mr.coefficients["beta"]) < 0.03


def test_fit_does_not_depend_on_the_blas_thread_count(momentum_data, fitted: list[FittedModel]) -> None:
    """Issue 12: the coefficients are the same with one BLAS thread or several (the 100 × ~250
    training pairs are past OpenBLAS's 10,000-element threshold for a threaded dot, which splits
    its sum by thread), and equal ``math.fsum`` of the products — so a replay's decisions do not
    depend on the machine's core count or on the replay's one-thread limit."""
    from threadpoolctl import threadpool_limits

    bars, dates = momentum_data
    with threadpool_limits(limits=1):
        one = fit_models(bars, dates[-40])
    with threadpool_limits(limits=2):
        two = fit_models(bars, dates[-40])
    for a, b, c in zip(one, two, fitted, strict=True):
        assert json.dumps(a.coefficients) == json.dumps(b.coefficients) == json.dumps(c.coefficients)
        assert json.dumps(a.diagnostics) == json.dumps(b.diagnostics)
    mom = next(m for m in one if m.name == "momentum")
    assert mom.diagnostics["n_obs"] > 10_000


def test_shrinkage_toward_zero_on_noise() -> None:
    bars, dates = planted_momentum(0.0, n_sym=20, n_days=700, seed=4)
    p = ForecastParams(fit_lookback=300, coef_prior_sd=0.02)
    m = {x.name: x for x in fit_models(bars, dates[-1], p)}["momentum"]
    d = m.diagnostics
    tau2, se2 = 0.02**2, d["se"] ** 2
    # posterior mean of a N(0, tau^2) prior: b = b_ols * tau^2 / (tau^2 + se^2)
    assert m.coefficients["beta"] == pytest.approx(d["beta_ols"] * tau2 / (tau2 + se2), rel=1e-12)
    assert abs(m.coefficients["beta"]) < abs(d["beta_ols"])


def test_regime_conditional_means() -> None:
    rng = np.random.default_rng(1)
    n_sym, n_days = 60, 900
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    regime = np.where((np.arange(n_days) // 50) % 2 == 0, "NORMAL", "CRISIS")
    drift = np.where(regime == "NORMAL", 0.1, -0.1)
    sig = rng.uniform(0.01, 0.02, n_sym)[:, None]
    # the return into day t+1 carries the drift of the regime labelled on day t
    steps = sig * (np.concatenate([[0.0], drift[:-1]])[None, :] + rng.standard_normal((n_sym, n_days)))
    steps[:, 0] = 0
    bars = to_bars(np.cumsum(steps, axis=1), dates)
    labels = pd.Series(regime, index=dates)
    models = fit_models(bars, dates[-1], ForecastParams(fit_lookback=600), regime_labels=labels)
    rm = {m.name: m for m in models}["regime_mean"]
    means = rm.coefficients["regime_mean"]
    # 5 sessions of 0.1 sigma drift = 0.1 * sqrt(5) = 0.22 sigma_H (less near regime switches)
    assert 0.15 < means["NORMAL"] < 0.25
    assert -0.25 < means["CRISIS"] < -0.15
    assert rm.coefficients["regime_freq"]["NORMAL"] == pytest.approx(0.5, abs=0.05)
    # forecast: sum_r p_r m_{symbol, r} * sigma_ewma * sqrt(H)
    feats = compute_market_features(bars, dates[-1]).set_index("symbol")
    for probs in ({"NORMAL": 1.0}, {"NORMAL": 0.5, "CRISIS": 0.5}, {"CRISIS": 0.3, "NORMAL": 0.1, "X": 0.6}):
        per_model, _ = forecast(bars, dates[-1], [rm], regime_probs=probs)
        row = per_model.set_index("symbol").loc["S007"]
        sm = rm.coefficients["symbol_mean"]["S007"]
        total = sum(probs.values())  # mass on an unseen regime has mean 0
        units = sum(probs.get(r, 0.0) / total * sm[r] for r in ("NORMAL", "CRISIS"))
        assert row["mu"] == pytest.approx(units * feats.loc["S007", "ewma_vol"] * math.sqrt(H), rel=1e-6)


# --------------------------------------------------------------------------------------------
# versions, JSON, point in time
# --------------------------------------------------------------------------------------------


def test_json_round_trip_and_versions(fitted: list[FittedModel], momentum_data) -> None:
    bars, dates = momentum_data
    restored = [FittedModel.from_json(m.to_json()) for m in fitted]
    for a, b in zip(fitted, restored, strict=True):
        assert a.to_dict() == b.to_dict()
        assert a.version == b.version
        assert a.version.startswith(f"{a.name}@{dates[-40]:%Y-%m-%d}#")
        json.loads(a.to_json())  # strict JSON (no NaN)
    as_of = dates[-1]
    pa, ca = forecast(bars, as_of, fitted)
    pb, cb = forecast(bars, as_of, restored)
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ca, cb)
    # a tampered record is refused
    d = fitted[0].to_dict()
    d["coefficients"] = {**d["coefficients"], "beta": 0.5}
    with pytest.raises(ValueError, match="does not match"):
        FittedModel.from_dict(d)
    # same fit -> same version; another fit date -> another version
    again = fit_models(bars, dates[-40])
    assert [m.version for m in again] == [m.version for m in fitted]
    later = fit_models(bars, dates[-30])
    assert all(a.version != b.version for a, b in zip(later, fitted, strict=True))


def test_fit_and_forecast_are_point_in_time(fitted: list[FittedModel], momentum_data) -> None:
    bars, dates = momentum_data
    fit_date, as_of = dates[-40], dates[-20]
    rng = np.random.default_rng(3)
    future = bars["date"] > as_of
    mutated = bars.copy()
    for col in ("open", "high", "low", "close", "adj_close"):
        mutated.loc[future, col] = mutated.loc[future, col] * rng.uniform(0.5, 2.0, int(future.sum()))
    pa, ca = forecast(bars, as_of, fitted)
    pb, cb = forecast(mutated, as_of, fitted)
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ca, cb)
    # bars after the fit date do not change the fit
    after_fit = bars["date"] > fit_date
    m2 = bars.copy()
    m2.loc[after_fit, "adj_close"] = m2.loc[after_fit, "adj_close"] * 3.0
    assert [m.version for m in fit_models(m2, fit_date)] == [m.version for m in fitted]
    with pytest.raises(ValueError, match="point in time"):
        forecast(bars, fit_date - pd.Timedelta(days=1), fitted)


def test_select_models_latest_on_or_before(momentum_data) -> None:
    bars, dates = momentum_data
    old = fit_models(bars, dates[-200], ForecastParams(models=("momentum",)))
    new = fit_models(bars, dates[-100], ForecastParams(models=("momentum",)))
    assert select_models(old + new, dates[-150])[0].version == old[0].version
    assert select_models(old + new, dates[-1])[0].version == new[0].version
    assert select_models(old + new, dates[-250]) == []
    with pytest.raises(ValueError, match="several versions"):
        forecast(bars, dates[-1], old + new)


# --------------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mu", "sigma"), [(0.004, 0.05), (-0.01, 0.03), (0.0, 0.1)])
def test_student_t_distribution_vs_scipy(mu: float, sigma: float) -> None:
    nu = PARAMS.t_dof
    s = sigma * math.sqrt((nu - 2) / nu)  # unit-variance t scaled to sd sigma
    assert stats.t.std(nu, scale=s) == pytest.approx(sigma)
    got = {k: float(v) for k, v in distribution_stats(np.array(mu), np.array(sigma), PARAMS).items()}
    assert got["p_loss"] == pytest.approx(stats.t.cdf(0.0, nu, loc=mu, scale=s), rel=1e-12)
    q = stats.t.ppf(0.05, nu, loc=mu, scale=s)
    assert got["var_95"] == pytest.approx(-q, rel=1e-12)
    tail = stats.t.expect(lambda x: x, args=(nu,), loc=mu, scale=s, ub=q, conditional=True)
    assert got["cvar_95"] == pytest.approx(-tail, rel=1e-7)
    lo, hi = stats.t.interval(0.90, nu, loc=mu, scale=s)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert got["cvar_95"] > got["var_95"] > 0


def test_normal_distribution_vs_scipy() -> None:
    p = ForecastParams(tail="normal")
    mu, sigma = 0.003, 0.04
    got = {k: float(v) for k, v in distribution_stats(np.array(mu), np.array(sigma), p).items()}
    assert got["p_loss"] == pytest.approx(stats.norm.cdf(0, mu, sigma), rel=1e-12)
    q = stats.norm.ppf(0.05, mu, sigma)
    tail = stats.norm.expect(lambda x: x, loc=mu, scale=sigma, ub=q, conditional=True)
    assert got["cvar_95"] == pytest.approx(-tail, rel=1e-7)
    # closed form: -mu + sigma * phi(1.645) / 0.05 = -0.003 + 0.04 * 2.0627
    assert got["cvar_95"] == pytest.approx(-0.003 + 0.04 * stats.norm.pdf(stats.norm.ppf(0.05)) / 0.05)


# --------------------------------------------------------------------------------------------
# combination
# --------------------------------------------------------------------------------------------


def test_disagreement_penalty_arithmetic() -> None:
    # sigma_H = 0.05, model mus 0, 0.005, 0.01 -> u = 0, 0.1, 0.2 sigma_H
    # Var(u) = (0.01 + 0 + 0.01) / 3 = 0.0066667; exp(-100 * 0.0066667) = exp(-2/3) = 0.513417
    d2, f = disagreement(np.array([[0.0, 0.005, 0.01]]), np.array([0.05]), 100.0)
    assert d2[0] == pytest.approx(0.02 / 3, rel=1e-12)
    assert f[0] == pytest.approx(math.exp(-2 / 3), rel=1e-12)
    assert 0.005 * f[0] == pytest.approx(0.0025671, abs=1e-7)  # mu_adj: shrunk, not zero
    # agreeing models: no penalty; scale-free: the same relative disagreement on a 4x
    # more volatile asset gives the same factor
    assert disagreement(np.array([[0.01, 0.01, 0.01]]), np.array([0.05]), 100.0)[1][0] == 1.0
    assert disagreement(np.array([[0.0, 0.02, 0.04]]), np.array([0.2]), 100.0)[1][0] == pytest.approx(f[0])
    # the documented table: d = 0.05 sigma_H keeps 78 %, d = 0.1 keeps 37 %
    for d, keep in ((0.05, 0.7788), (0.1, 0.3679)):
        mus = np.array([[-d, d]]) * 0.05  # population sd of (-d, d) is d
        assert disagreement(mus, np.array([0.05]), 100.0)[1][0] == pytest.approx(keep, abs=1e-4)


def hand_models(fit_date: pd.Timestamp, b_mom: float, b_mr: float, m_all: float) -> list[FittedModel]:
    spec = ForecastParams().spec()
    return [
        FittedModel("momentum", fit_date, H, spec, {"beta": b_mom}),
        FittedModel("mean_reversion", fit_date, H, spec, {"beta": b_mr}),
        FittedModel(
            "regime_mean",
            fit_date,
            H,
            spec,
            {
                "regimes": ["ALL"],
                "regime_mean": {"ALL": m_all},
                "regime_freq": {"ALL": 1.0},
                "symbol_mean": {},
            },
        ),
    ]


def test_forecast_combination_matches_per_model_arithmetic(momentum_data) -> None:
    bars, dates = momentum_data
    as_of = dates[-1]
    models = hand_models(dates[-11], 0.1, -0.1, 0.05)
    per_model, combined = forecast(bars, as_of, models)
    assert list(per_model.columns) == PER_MODEL_COLUMNS and list(combined.columns) == COMBINED_COLUMNS
    assert len(per_model) == 3 * len(combined) == 3 * 100
    feats = compute_market_features(bars, as_of).set_index("symbol")
    pm = per_model.set_index(["symbol", "model"])
    sym = "S010"
    sigma_h = feats.loc[sym, "ewma_vol"] * math.sqrt(H)
    # regime_mean: 0.05 sigma_H exactly
    assert pm.loc[(sym, "regime_mean"), "mu"] == pytest.approx(0.05 * sigma_h, rel=1e-6)
    assert pm.loc[(sym, "momentum"), "mu"] == pytest.approx(
        0.1 * pm.loc[(sym, "momentum"), "signal"] * sigma_h, rel=1e-6
    )
    assert pm.loc[(sym, "momentum"), "sigma"] == pytest.approx(sigma_h, rel=1e-6)
    assert (per_model["model_age_days"] == (as_of - dates[-11]).days).all()
    c = combined.set_index("symbol").loc[sym]
    mus = np.array([pm.loc[(sym, m), "mu"] for m in ("mean_reversion", "momentum", "regime_mean")])
    u = mus / c["sigma"]
    assert c["mu"] == pytest.approx(mus.mean(), rel=1e-12)
    assert c["disagreement_var"] == pytest.approx(np.var(u), rel=1e-9)
    assert c["mu_adj"] == pytest.approx(mus.mean() * math.exp(-100 * np.var(u)), rel=1e-9)
    strength = min(1.0, abs(c["mu_adj"]) / c["sigma"] / 0.05)
    assert c["strength"] == pytest.approx(strength)
    assert c["confidence"] == pytest.approx(c["decay_factor"] * c["agreement"] * strength)
    assert c["decay_factor"] == pytest.approx(pm.loc[sym, "decay_factor"].mean())
    assert c["cvar_95"] == pytest.approx(
        float(distribution_stats(np.array(c["mu_adj"]), np.array(c["sigma"]))["cvar_95"])
    )
    # disagreement is flagged where the factor is below 0.9
    flagged = combined["reason_codes"].str.contains("MODEL_DISAGREEMENT")
    assert (flagged == (combined["disagreement_factor"] < 0.9)).all()
    assert ((combined["confidence"] >= 0) & (combined["confidence"] <= 1)).all()


def test_confidence_decays_with_age_and_dies_at_expiry(momentum_data) -> None:
    bars, dates = momentum_data
    as_ofs = list(dates[-3:])
    models = hand_models(as_ofs[0] - pd.Timedelta(days=60), 0.1, 0.0, 0.05)
    decays = []
    for d in as_ofs:
        _, comb = forecast(bars, d, models)
        decays.append(comb["decay_factor"].to_numpy())
        assert comb["reason_codes"].str.contains("MODEL_AGE_DECAY").all()
    assert (decays[0] > decays[1]).all() and (decays[1] > decays[2]).all()
    dead = hand_models(dates[-1] - pd.Timedelta(days=120), 0.1, 0.0, 0.05)
    per_model, comb = forecast(bars, dates[-1], dead)
    assert (comb["confidence"] == 0).all() and (comb["decay_factor"] == 0).all()
    assert comb["reason_codes"].str.contains("MODEL_EXPIRED").all()
    assert np.isfinite(comb["mu_adj"]).all()  # still recorded, just not trusted


def test_insufficient_history_gets_nan_and_zero_confidence(momentum_data) -> None:
    bars, dates = momentum_data
    short = to_bars(np.cumsum(np.full((1, 100), 0.001), axis=1), dates[-100:], prefix="NEW")
    per_model, comb = forecast(
        pd.concat([bars, short], ignore_index=True), dates[-1], hand_models(dates[-5], 0.1, 0.1, 0.0)
    )
    row = comb.set_index("symbol").loc["NEW000"]
    assert math.isnan(row["mu_adj"]) and math.isnan(row["cvar_95"])
    assert row["confidence"] == 0.0 and not row["features_ok"]
    assert "INSUFFICIENT_FEATURES" in row["reason_codes"]
    assert per_model[per_model["symbol"] == "NEW000"]["mu"].isna().all()


def test_error_factor_from_out_of_sample_backcasts(momentum_data) -> None:
    bars, dates = momentum_data
    # a model that bets hard against the planted momentum is systematically wrong
    wrong = hand_models(dates[-75], -2.0, 0.0, 0.0)
    per_model, _ = forecast(bars, dates[-1], wrong)
    mom = per_model[per_model["model"] == "momentum"]
    assert (mom["error_n"] == 63).all()
    strong = mom[mom["signal"].abs() > 1.5]
    assert len(strong) > 5
    assert (strong["error_factor"] < 1).all()
    assert strong["reason_codes"].str.contains("MODEL_ERROR_DECAY").all()
    # the regime model forecasting 0 is consistent with its sigma on most names
    reg = per_model[per_model["model"] == "regime_mean"]
    assert (reg["error_factor"] == 1.0).mean() > 0.9
