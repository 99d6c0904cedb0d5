"""statsmodels' Markov-switching fit with SciPy's logsumexp arithmetic minus its dispatch
(issue 12): bit for bit SciPy's answer, and the same regime fit on real S&P 500 returns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp as scipy_logsumexp

from ais_pipelines.core import markov_logsumexp as mls
from ais_pipelines.core.regime import fit_regime_model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bit_for_bit_scipy_on_statsmodels_inputs_and_edge_cases(seed: int) -> None:
    samples = mls.check_samples(1500, seed)
    rng = np.random.default_rng(100 + seed)
    samples += [np.r_[0.0, z] + 1j * rng.normal(0, 3, 3) for z in rng.normal(0, 2, (200, 2))]  # imag past pi
    samples += [np.r_[0.0, z] for z in rng.normal(0, 1, (200, 6))]  # longer than statsmodels' 3
    assert mls.same_as_scipy(samples)
    for x in samples[:50]:
        assert type(mls.logsumexp(x)) is type(scipy_logsumexp(x))


def test_everything_else_is_scipys_own() -> None:
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert np.array_equal(mls.logsumexp(a, axis=0), scipy_logsumexp(a, axis=0))
    assert mls.logsumexp(np.array([0.0, 1.0]), b=np.array([1.0, -1.0]), return_sign=True) == \
        scipy_logsumexp(np.array([0.0, 1.0]), b=np.array([1.0, -1.0]), return_sign=True)
    assert mls.logsumexp([0.0, 1.0]) == scipy_logsumexp([0.0, 1.0])
    assert np.isnan(mls.logsumexp(np.array([0.0, np.nan]))) and mls.logsumexp(np.array([0.0, np.inf])) == np.inf


def test_a_regime_fit_on_real_returns_is_scipys() -> None:
    from arch.data import sp500
    from statsmodels.tsa.regime_switching import markov_switching

    px = sp500.load()["Adj Close"]
    returns = px.pct_change().dropna().iloc[-600:]
    assert mls.install() and markov_switching.logsumexp is mls.logsumexp
    ours = fit_regime_model(returns)
    markov_switching.logsumexp = scipy_logsumexp
    try:
        theirs = fit_regime_model(returns)
    finally:
        markov_switching.logsumexp = mls.logsumexp
    assert ours.fit is not None and ours.fit == theirs.fit
    pd.testing.assert_frame_equal(ours.filtered, theirs.filtered, check_exact=True)
