"""``scipy.special.logsumexp`` for the call statsmodels' Markov-switching model makes (issue 12).

``MarkovSwitching.transform_params`` calls ``logsumexp`` on a 3-element vector once per regime
on every likelihood evaluation — and the optimiser's complex-step gradient makes one evaluation
per parameter — so a regime fit makes ~3,000 calls. SciPy's array-API implementation spends
~190 µs a call dispatching, half of a whole fit (0.58 of 1.17 s in a profile of one cold fit).
:func:`logsumexp` runs the same NumPy operations in the same order for that call (a 1-D float64
or complex128 array, no axis, no weights) and hands anything else to SciPy; :func:`install`
puts it in statsmodels' module only after checking it bit for bit against SciPy on real,
complex, tied, infinite and NaN inputs, so a SciPy whose arithmetic differs keeps SciPy's
(``tests/unit/test_markov_logsumexp.py`` compares thousands more).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp as scipy_logsumexp

_ONE_COMPLEX = np.ones(1, dtype=np.complex128)


def logsumexp(a: Any, axis: Any = None, b: Any = None, keepdims: bool = False, return_sign: bool = False) -> Any:
    """SciPy's ``logsumexp(a)`` for a finite 1-D float64 / complex128 ``a``; SciPy's own otherwise."""
    if (axis is not None or b is not None or keepdims or return_sign or type(a) is not np.ndarray or a.ndim != 1
            or a.size == 0 or a.dtype not in (np.float64, np.complex128) or not np.isfinite(a).all()):
        return scipy_logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
    # SciPy's steps on finite input (no overflow, no NaN: its infinite-result and sign fixes are
    # no-ops), on arrays of SciPy's shapes. The largest element (the last of complex ties) is
    # taken out of the sum for precision and added back as log1p(s / m) + log(m) + max.
    if a.dtype == np.complex128:
        real_a = a.real
        mask = real_a == real_a.max(axis=0, keepdims=True)
        i = np.arange(a.size)
        i[~mask] = -1
        mask = i == i.max(axis=0, keepdims=True)
        a_max = np.where(mask, a, 0.0).sum(axis=0, keepdims=True, dtype=np.complex128)
        m = _ONE_COMPLEX  # the sum of the one-hot mask: exactly 1 + 0j
    else:
        a_max = a.max(axis=0, keepdims=True)
        mask = a == a_max
        m = mask.sum(axis=0, keepdims=True, dtype=np.float64)  # ties: each counts
    shifted = a.copy()
    shifted[mask] = -np.inf
    s = np.exp(shifted - a_max).sum(axis=0, keepdims=True, dtype=a.dtype)
    if s[0] != 0:
        s = s / m
    out = np.log1p(s) + np.log(m) + a_max
    if a.dtype == np.complex128:
        imag = out.imag  # wrapped to (-pi, pi] (a complex step's imaginary part never needs it)
        wrapped = imag if abs(imag[0]) < np.pi else -((-imag + np.pi) % (2 * np.pi) - np.pi)
        out = out.real + wrapped.astype(np.complex128) * 1j
    return out[0]


def same_as_scipy(samples: list[np.ndarray]) -> bool:
    """Bit-for-bit equal to SciPy's answer (NaN where NaN) on every sample."""
    for x in samples:
        ours, theirs = np.asarray(logsumexp(x)), np.asarray(scipy_logsumexp(x))
        differ = ours.dtype != theirs.dtype or ours.tobytes() != theirs.tobytes()
        if differ and not (np.isnan(ours).all() and np.isnan(theirs).all()):
            return False
    return True


def check_samples(n: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Inputs like statsmodels' (``np.r_[0, x]``, complex-step ``x + 1e-20j``) plus edge cases."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for _ in range(n):
        x = np.r_[0.0, rng.normal(0, 5, 2)]
        out += [x, x + 1e-20j * rng.standard_normal(3), x * 200, np.r_[0.0, x[1], x[1]]]
    out += [np.array([0.0, 0.0, 0.0]), np.array([0.0, np.inf, 1.0]), np.array([0.0, -np.inf, 1.0]),
            np.array([-np.inf] * 3), np.array([0.0, np.nan, 1.0]), np.array([0.0, 1.0 + 4j, 1.0 - 4j]),
            np.array([0.0, 700.0, 710.0]), np.array([0.0, -745.0, -800.0]), np.array([5.0])]
    return out


_INSTALLED: bool | None = None


def install() -> bool:
    """Use :func:`logsumexp` in statsmodels' Markov-switching module if it equals SciPy's here."""
    global _INSTALLED
    if _INSTALLED is None:
        from statsmodels.tsa.regime_switching import markov_switching

        _INSTALLED = markov_switching.logsumexp is scipy_logsumexp and same_as_scipy(check_samples())
        if _INSTALLED:
            markov_switching.logsumexp = logsumexp
    return bool(_INSTALLED)
