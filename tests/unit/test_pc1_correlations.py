"""The PC1 correlations behind correlated_win_share (issue 12): an approval re-assembles its
context, so the session's returns panel is decomposed once and kept — and the kept answer is
exactly a fresh SVD's, recomputed when the frame changes in place or another frame is asked."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ais_pipelines import execution as ex


def _fresh(returns: pd.DataFrame, symbols: list[str] | None = None) -> pd.Series:
    """The reference: numpy's SVD of the standardized complete panel, |corr| with component 1."""
    panel = returns.dropna(axis=1, thresh=20).dropna(axis=0)
    z = ((panel - panel.mean()) / panel.std(ddof=0)).dropna(axis=1)
    u, s, _ = np.linalg.svd(z.to_numpy(), full_matrices=False)
    pc1 = u[:, 0] * s[0]
    cols = [c for c in z.columns if symbols is None or c in symbols]
    return pd.Series({c: abs(np.corrcoef(z[c].to_numpy(), pc1)[0, 1]) for c in cols})


def _panel(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 0.01, 120)
    data = {f"S{i}": common * (i % 3) + rng.normal(0, 0.01, 120) for i in range(8)}
    return pd.DataFrame(data, index=pd.bdate_range("2024-01-01", periods=120))


def test_kept_answer_equals_a_fresh_svd_and_follows_changes() -> None:
    a = _panel(1)
    first = ex._pc1_correlations(a)
    pd.testing.assert_series_equal(first, _fresh(a), check_names=False, rtol=0, atol=1e-15)
    again = ex._pc1_correlations(a, symbols=["S1", "S4"])  # the kept decomposition, a subset asked
    pd.testing.assert_series_equal(again, first[["S1", "S4"]], rtol=0, atol=0)

    a.iloc[5, 2] = 0.5  # changed in place: the same object, other values
    pd.testing.assert_series_equal(ex._pc1_correlations(a), _fresh(a), check_names=False, rtol=0, atol=1e-15)
    assert not np.allclose(ex._pc1_correlations(a).to_numpy(), first.to_numpy())

    b = _panel(2)  # another panel
    pd.testing.assert_series_equal(ex._pc1_correlations(b), _fresh(b), check_names=False, rtol=0, atol=1e-15)
    assert ex._pc1_correlations(b, min_obs=500).empty  # too few rows for that minimum: not the kept one
