"""Splits and dividends in daily bars (issue 13): what the raw close and adj_close reveal.

Pure functions over bars sorted by (symbol, date), one integer code per symbol. Three kinds
of event, each on the session it takes effect:

``SPLIT_ADJUSTED``
    The symbol has its own ``adj_close`` and the adjustment factor ``k = adj_close / close``
    steps by a standard split ratio n (``k_t / k_{t-1}`` within ``adjustment_tolerance`` of n):
    the raw close jumped, the adjusted series absorbs it. Informational — returns are taken
    from ``adj_close``.
``DIVIDEND_ADJUSTED``
    ``k`` steps up by a dividend-sized factor: ``y = 1 − k_{t-1}/k_t`` in
    [``min_dividend_yield``, ``max_dividend_yield``]. Informational.
``UNADJUSTED_SPLIT``
    The series the returns are computed from (``adj_close``, which is the close when the file
    has none) moves by a split's price factor ``1/n`` — ``|r · n − 1| ≤ split_tolerance``, a
    tolerance wide enough to allow the day's own move (a real 2:1 split closed at 0.549 of the
    prior close) — and the share volume corroborates it: the median volume of the sessions
    ``volume_skip`` … ``volume_skip + volume_window`` after the jump over the median of the
    ``volume_window`` sessions before lies within ``[n^(1−b), n^(1+b)]`` (b =
    ``volume_band``). A split multiplies the share count and so the volume level, for good; a
    crash's volume burst decays. A move matching a ratio whose volume contradicts it is a
    return spike, not a split. Where the volume cannot testify (no usable volume, or fewer than
    ``volume_min_obs`` sessions on either side) the ratio alone decides: fail closed. The open
    must sit at the new level too (``|open_t / close_{t-1} · n − 1| ≤ split_tolerance``): a split
    takes effect before the open, a crash that happens during the session is no split. Returns
    across an unadjusted split are wrong by a factor n, so the symbol is INVALID_DATA with
    ``UNADJUSTED_SPLIT`` until adjusted data arrives.

Standard ratios are declared as ``"shares_after:shares_before"`` (``"2:1"``, ``"3:2"``,
``"1:10"`` for a reverse split); the nearest one in log distance is the match. Only asset
classes that have corporate actions are examined (stocks and exchange-traded commodity funds,
not coins or currencies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_SPLIT_RATIOS: tuple[str, ...] = (
    "2:1", "3:2", "3:1", "4:1", "5:1", "7:1", "10:1",
    "1:2", "2:3", "1:3", "1:4", "1:5", "1:7", "1:10",
)
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")

EVENT_COLUMNS: list[str] = ["row", "flag", "value", "detail"]


def parse_ratio(text: str) -> float:
    """``"2:1"`` → 2.0 (shares after per share before); raises ValueError naming the text."""
    m = _RATIO.match(str(text))
    if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0 or float(m.group(1)) == float(m.group(2)):
        raise ValueError(f"split ratio {text!r} is not of the form 'after:before' with two different positive numbers")
    return float(m.group(1)) / float(m.group(2))


@dataclass(frozen=True)
class CorporateActionParams:
    split_ratios: tuple[str, ...] = DEFAULT_SPLIT_RATIOS
    split_tolerance: float = 0.12
    adjustment_tolerance: float = 0.02
    volume_window: int = 40
    volume_skip: int = 5
    volume_min_obs: int = 5
    volume_band: float = 0.4
    min_dividend_yield: float = 0.0005
    max_dividend_yield: float = 0.25
    # Only securities split; a −27 % day of a coin is a move, never a 3:2 split.
    asset_classes: tuple[str, ...] = ("STOCKS", "COMMODITIES")

    def __post_init__(self) -> None:
        for r in self.split_ratios:
            parse_ratio(r)
        if not 0 < self.split_tolerance < 0.5 or not 0 < self.adjustment_tolerance < 0.5:
            raise ValueError("split_tolerance and adjustment_tolerance must be in (0, 0.5)")
        if self.volume_window < 1 or self.volume_skip < 0 or self.volume_min_obs < 1 or not 0 < self.volume_band < 1:
            raise ValueError("volume_window >= 1, volume_skip >= 0, volume_min_obs >= 1, 0 < volume_band < 1")
        if not 0 < self.min_dividend_yield < self.max_dividend_yield < 1:
            raise ValueError("0 < min_dividend_yield < max_dividend_yield < 1 is required")

    @property
    def share_factors(self) -> np.ndarray:
        return np.array([parse_ratio(r) for r in self.split_ratios], dtype=float)


def _nearest(x: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Index of the factor nearest to each x in log distance (x finite and > 0)."""
    return np.argmin(np.abs(np.log(x)[:, None] - np.log(factors)[None, :]), axis=1)


def _median_or_nan(v: np.ndarray, min_obs: int) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) >= min_obs else float("nan")


def detect_corporate_actions(
    code: np.ndarray,
    close: np.ndarray,
    adj: np.ndarray,
    volume: np.ndarray,
    own_adj: np.ndarray,
    p: CorporateActionParams | None = None,
    eligible: np.ndarray | None = None,
    open_: np.ndarray | None = None,
) -> pd.DataFrame:
    """Events (columns ``EVENT_COLUMNS``; ``row`` indexes the input arrays), sorted by row.

    Inputs are per bar, sorted by (code, date); ``own_adj`` is per bar: whether the bar's
    symbol has an ``adj_close`` of its own (not defaulted to the close); ``eligible`` per bar:
    whether its asset class can have corporate actions (default: all); ``open_`` per bar: the
    raw open (a split takes effect before the open, so the open already sits at the new level).
    """
    p = p or CorporateActionParams()
    n = len(code)
    if n < 2:
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in
                             zip(EVENT_COLUMNS, ("int64", str, "float64", str), strict=True)})
    factors = p.share_factors
    same = np.r_[False, code[1:] == code[:-1]]
    if eligible is not None:
        same &= eligible
    with np.errstate(divide="ignore", invalid="ignore"):
        r_raw = np.where(same, close / np.r_[np.nan, close[:-1]], np.nan)
        r_adj = np.where(same, adj / np.r_[np.nan, adj[:-1]], np.nan)
        step = r_adj / r_raw  # k_t / k_{t-1}, k = adj_close / close
    rows: list[tuple[int, str, float, str]] = []

    # Adjustment-factor steps: what the provider's adj_close says happened.
    ok_step = own_adj & same & np.isfinite(step) & (step > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cand = np.flatnonzero(ok_step & (np.abs(np.log(np.where(ok_step, step, 1.0))) >= np.log1p(p.min_dividend_yield)))
    if len(cand):
        near = _nearest(step[cand], factors)
        for i, k in zip(cand.tolist(), near.tolist(), strict=True):
            f = float(factors[k])
            if abs(step[i] / f - 1.0) <= p.adjustment_tolerance:
                rows.append((i, "SPLIT_ADJUSTED", f, f"close x{r_raw[i]:.4f}, adj_close x{r_adj[i]:.4f}: "
                             f"split {p.split_ratios[k]} absorbed by adj_close"))
                continue
            y = 1.0 - 1.0 / step[i]
            if p.min_dividend_yield <= y <= p.max_dividend_yield:
                rows.append((i, "DIVIDEND_ADJUSTED", y, f"adj_close reveals a distribution of {y:.2%} of the price"))

    # Split-sized moves left in the series the returns are computed from. Pre-filter: no move
    # smaller than the smallest declared factor allows (with its tolerance) can match.
    ok_r = same & np.isfinite(r_adj) & (r_adj > 0)
    thr = float(np.min(np.abs(np.log(factors)))) + np.log(1.0 - p.split_tolerance)
    cand = np.flatnonzero(ok_r & (np.abs(np.log(np.where(ok_r, r_adj, 1.0))) >= thr))
    if len(cand):
        near = _nearest(1.0 / r_adj[cand], factors)
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        ends = np.r_[starts[1:], n]
        pos = np.searchsorted(starts, cand, side="right") - 1
        for i, k, s0, s1 in zip(cand.tolist(), near.tolist(), starts[pos].tolist(), ends[pos].tolist(), strict=True):
            f = float(factors[k])
            if not abs(r_adj[i] * f - 1.0) <= p.split_tolerance:
                continue
            if open_ is not None and not abs(open_[i] / close[i - 1] * f - 1.0) <= p.split_tolerance:
                continue  # the move happened during the session, not overnight: not a split
            pre = _median_or_nan(volume[max(s0, i - p.volume_window):i], p.volume_min_obs)
            post = _median_or_nan(volume[min(s1, i + p.volume_skip):min(s1, i + p.volume_skip + p.volume_window)],
                                  p.volume_min_obs)
            if np.isfinite(pre) and np.isfinite(post) and pre > 0 and post > 0:
                vr = post / pre
                lo, hi = sorted((f ** (1 - p.volume_band), f ** (1 + p.volume_band)))
                if not lo <= vr <= hi:
                    continue  # the volume contradicts a split: a real move (a return spike)
                why = f"volume level x{vr:.2f}"
            else:
                why = "no volume evidence (fail closed)"
            rows.append((i, "UNADJUSTED_SPLIT", f, f"close x{r_adj[i]:.4f} matches split {p.split_ratios[k]}; {why}"))

    ev = pd.DataFrame(rows, columns=EVENT_COLUMNS).sort_values("row", kind="stable").reset_index(drop=True)
    return ev.astype({"row": "int64", "flag": str, "value": "float64", "detail": str})
