"""The regime model is refitted on its declared cadence; the nights between only filter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from arch.data import sp500

from ais_pipelines.config import Policies
from ais_pipelines.core.regime import RETURN_SCALE, filter_regime_model, fit_regime_model, refit_due
from tests.unit.test_regime import hamilton_filter


@pytest.fixture(scope="module")
def returns() -> pd.Series:
    return sp500.load()["Adj Close"].pct_change().loc["2010":"2017-03-31"]


@pytest.fixture(scope="module")
def fit_2016(returns: pd.Series):
    out = fit_regime_model(returns.loc[:"2016-12-30"])
    assert out.fit is not None and out.refitted
    return out.fit


def test_refit_due_counts_new_sessions_since_the_fit(returns: pd.Series, fit_2016) -> None:
    after = returns.loc["2017-01-01":]
    assert refit_due(None, returns, 21)
    assert not refit_due(fit_2016, returns.loc[: after.index[19]], 21)  # 20 new sessions
    assert refit_due(fit_2016, returns.loc[: after.index[20]], 21)  # the 21st: refit
    assert Policies().models.regime.refit_every_sessions == 21  # declared in policies/models.yaml


def test_nightly_filter_uses_the_stored_parameters(returns: pd.Series, fit_2016) -> None:
    night = returns.loc[:"2017-01-31"]
    out = filter_regime_model(night, fit_2016)
    assert out is not None and not out.refitted and not out.is_fallback and out.reason_codes == ()
    assert out.fit is fit_2016 and out.filtered.index[-1] == night.index[-1]
    y = night.dropna().to_numpy() * RETURN_SCALE
    ref = hamilton_filter(y, fit_2016)  # independent textbook filter with the same parameters
    np.testing.assert_allclose(out.filtered.to_numpy()[-250:], ref[-250:], atol=1e-6)
    # unusable data: no silent filter, the caller fits (and records why)
    bad = night.copy()
    bad.iloc[-1] = np.inf
    assert filter_regime_model(bad, fit_2016) is None
