"""Average pairwise-complete Pearson correlations in O(N·T), not O(N²) pairs.

For columns observed on every row (the usual case: one calendar, no gaps) the sum of the
correlations of column ``a`` with all columns ``b`` is ``z_a · Σ_b z_b / (T − 1)`` with ``z`` the
standardised columns, so the whole cross-section costs one pass. Columns with gaps need
pairwise-complete statistics: these go through masked matrix products (``n = Mᵀ M``,
``Σx = X₀ᵀ M``, ``Σx² = (X₀²)ᵀ M``, ``Σxy = X₀ᵀ Y₀``), i.e. BLAS in O(gappy × N × T), in blocks to
bound memory. A pair counts (like ``pandas.DataFrame.corr(min_periods=…)``) when it has at least
``min_obs`` common rows and both columns vary on them.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 256  # rows of the masked products per block: 256 × N float64 matrices
_REL_TOL = 1e-12  # a column whose spread is below this fraction of its scale is constant
_CANCEL_TOL = 1e-10  # variance below this share of the raw sum of squares: constant on the rows


def _centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x − column nanmean with NaN → 0, finite mask as float, per-column scale)."""
    m = np.isfinite(x)
    cnt = m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(m, x, 0.0).sum(axis=0) / np.maximum(cnt, 1)
    x0 = np.where(m, x - mean, 0.0)
    scale = np.where(m, np.abs(x), 0.0).max(axis=0, initial=0.0)
    return x0, m.astype(np.float64), scale


def _masked_sums(x: np.ndarray, y: np.ndarray, min_obs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x``: Σ over columns of ``y`` of the pairwise-complete correlation, and how
    many pairs counted. Masked matrix products, blocked over the columns of ``x``."""
    a, b = x.shape[1], y.shape[1]
    sums, counts = np.zeros(a), np.zeros(a, dtype=np.int64)
    if a == 0 or b == 0:
        return sums, counts
    y0, my, ys = _centred(y)
    y2 = y0 * y0
    for lo in range(0, a, _BLOCK):
        x0, mx, xs = _centred(x[:, lo : lo + _BLOCK])
        n = mx.T @ my
        sx, sy = x0.T @ my, mx.T @ y0
        with np.errstate(invalid="ignore", divide="ignore"):
            sxx, syy = (x0 * x0).T @ my, mx.T @ y2
            vx, vy = sxx - sx * sx / n, syy - sy * sy / n
            cov = x0.T @ y0 - sx * sy / n
            c = cov / np.sqrt(vx * vy)
            # constant on the common rows: the one-pass variance is cancellation noise there
            varies_x = (vx > _CANCEL_TOL * sxx) & (sxx > n * (_REL_TOL * xs[:, None]) ** 2)
            varies_y = (vy > _CANCEL_TOL * syy) & (syy > n * (_REL_TOL * ys[None, :]) ** 2)
        ok = (n >= min_obs) & varies_x & varies_y & np.isfinite(c)
        sums[lo : lo + _BLOCK] = np.where(ok, c, 0.0).sum(axis=1)
        counts[lo : lo + _BLOCK] = ok.sum(axis=1)
    return sums, counts


def _standardised(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Complete columns: (z with ddof 1, varies?) — constant columns get z = 0."""
    d = x - x.mean(axis=0)
    ss = (d * d).sum(axis=0)
    scale = np.abs(x).max(axis=0, initial=0.0)
    varies = ss > x.shape[0] * (_REL_TOL * scale) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(varies, d / np.sqrt(ss / max(x.shape[0] - 1, 1)), 0.0)
    return z, varies


def corr_sums(x: np.ndarray, y: np.ndarray, min_obs: int) -> tuple[np.ndarray, np.ndarray]:
    """For each column of ``x`` (rows = dates, NaN = not observed): the sum of its
    pairwise-complete Pearson correlations with every column of ``y`` (same rows) that has
    ≥ ``min_obs`` common rows and varies with it on them, and the number of such columns.
    A column present in both is paired with itself (correlation 1): callers drop it."""
    t = x.shape[0]
    sums, counts = np.zeros(x.shape[1]), np.zeros(x.shape[1], dtype=np.int64)
    if x.shape[1] == 0 or y.shape[1] == 0 or t < max(min_obs, 2):
        return sums, counts
    xf, yf = np.isfinite(x).all(axis=0), np.isfinite(y).all(axis=0)
    # complete × complete: one pass through the standardised sum
    if xf.any() and yf.any():
        zx, vx = _standardised(x[:, xf])
        zy, vy = _standardised(y[:, yf])
        s = zx.T @ zy.sum(axis=1) / (t - 1)
        sums[xf] += np.where(vx, s, 0.0)
        counts[xf] += np.where(vx, int(vy.sum()), 0)
    # every pair with a gappy side: pairwise complete through masked products
    if (~yf).any():
        s, c = _masked_sums(x, y[:, ~yf], min_obs)
        sums += s
        counts += c
    if (~xf).any() and yf.any():
        s, c = _masked_sums(x[:, ~xf], y[:, yf], min_obs)
        sums[~xf] += s
        counts[~xf] += c
    return sums, counts


def self_pairs(x: np.ndarray, min_obs: int) -> np.ndarray:
    """Which columns of ``x`` :func:`corr_sums` pairs with themselves (observed ≥ ``min_obs``
    times and not constant), each contributing a correlation of 1."""
    x0, m, scale = _centred(x)
    n = m.sum(axis=0)
    return (n >= max(min_obs, 2)) & ((x0 * x0).sum(axis=0) > n * (_REL_TOL * scale) ** 2)


def mean_pairwise_corr(x: np.ndarray, min_obs: int) -> float:
    """Mean of the pairwise-complete correlations over all column pairs ``i < j`` that have
    ≥ ``min_obs`` common rows (``pandas.DataFrame.corr(min_periods=min_obs)`` upper triangle,
    NaNs dropped), NaN when no pair counts."""
    if x.shape[1] < 2:
        return float("nan")
    sums, counts = corr_sums(x, x, min_obs)
    own = self_pairs(x, min_obs) if x.shape[0] >= max(min_obs, 2) else np.zeros(x.shape[1], dtype=bool)
    pairs = int(counts.sum()) - int(own.sum())
    if pairs <= 0:
        return float("nan")
    return float((sums.sum() - own.sum()) / pairs)
