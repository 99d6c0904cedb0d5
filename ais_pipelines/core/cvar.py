"""CVaR-first risk (§G): historical VaR/CVaR, Euler components, breach scaling, order checks.

Conventions
-----------
* Scenarios are rows of simple returns over the auction horizon H (see ``scenarios.py``);
  the loss of a portfolio ``w`` in scenario ``t`` is ``L_t = −r_t · w``.
* ``CVaR_α = E[L | L ≥ VaR_α]`` in the Rockafellar–Uryasev sense: the probability-weighted mean
  of the worst ``1 − α`` probability mass of losses, where the scenario straddling the boundary
  enters with the fraction of its probability that completes the tail (so the tail always has
  mass exactly ``1 − α``). This is what the RU linear program minimises, and it is exactly
  ``skfolio.measures.cvar`` (same rank convention; equal probabilities reproduce skfolio's
  unweighted branch, unequal ones its weighted branch).
* ``VaR_α`` is the lower α-quantile of the loss, as ``skfolio.measures.value_at_risk``.
* Euler (component) CVaR: with ``θ_t`` the conditional tail distribution above,
  ``CVaR = Σ_t θ_t L_t`` and the marginal CVaR of position ``i`` is ``E[−r_i | tail] = Σ_t θ_t (−r_ti)``;
  the component is ``w_i × marginal_i`` and the components sum to the portfolio CVaR exactly
  (CVaR is positively homogeneous of degree 1).

§G1 defaults: α = 0.95, portfolio limit 0.06, per-position component limit 0.01, scale on
breach, minimum scale 0. Limits are on the scenario horizon (5 sessions by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.scenarios import Scenarios

DEFAULT_ALPHA = 0.95
DEFAULT_PORTFOLIO_LIMIT = 0.06
DEFAULT_COMPONENT_LIMIT = 0.01
DEFAULT_MIN_SCALE = 0.0
_EPS = np.finfo(float).eps

ScenarioInput = np.ndarray | pd.DataFrame | Scenarios


def _as_matrix(scenarios: ScenarioInput, probs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(scenarios, Scenarios):
        return np.asarray(scenarios.returns, dtype=float), (
            scenarios.probs if probs is None else np.asarray(probs, dtype=float)
        )
    if isinstance(scenarios, pd.DataFrame):
        scenarios = scenarios.to_numpy(dtype=float)
    r = np.asarray(scenarios, dtype=float)
    if r.ndim != 2:
        raise ValueError("scenarios must be a (T, N) matrix")
    return r, None if probs is None else np.asarray(probs, dtype=float)


def _normalized_probs(probs: np.ndarray | None, n: int) -> np.ndarray | None:
    """None for equal weights (the exact unweighted rank convention applies)."""
    if probs is None:
        return None
    p = np.asarray(probs, dtype=float)
    if p.shape != (n,):
        raise ValueError(f"probs has shape {p.shape}, expected ({n},)")
    if not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError("probs must be finite, non-negative and not all zero")
    if np.all(p == p[0]):
        return None
    return p / p.sum()


def tail_weights(
    losses: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    probs: np.ndarray | None = None,
    tie_tol: float = 1e-10,
) -> np.ndarray:
    """Conditional tail distribution θ (sums to 1) such that ``CVaR_α = θ · losses``.

    Scenarios whose loss ties with the boundary loss (within ``tie_tol``, relative) share the
    boundary mass in proportion to their probabilities. At an LP optimum several scenarios sit
    exactly at VaR; without this, which of them is "in the tail" would hinge on rounding noise
    and the Euler components would jump. CVaR itself is unchanged (the tied losses are equal).
    """
    loss = np.asarray(losses, dtype=float)
    n = loss.shape[0]
    if n == 0:
        raise ValueError("no scenarios")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    p = _normalized_probs(probs, n)
    theta = np.zeros(n)
    order = np.argsort(-loss, kind="stable")  # worst loss first
    if alpha == 1.0:
        i = 0
        theta[order[0]] = 1.0
    elif p is None:
        k = (1.0 - alpha) * n  # tail size in scenarios (skfolio's convention, same float ops)
        i = max(0, int(np.ceil(k) - 1))
        theta[order[:i]] = 1.0 / k
        theta[order[i]] = 1.0 - i / k
    else:
        ps = p[order]
        cum = np.cumsum(ps)
        tail_mass = (1.0 - alpha) * cum[-1]
        i = min(int(np.searchsorted(cum, tail_mass)), n - 1)
        if i == 0:
            theta[order[0]] = 1.0
        else:
            theta[order[:i]] = ps[:i] / tail_mass
            theta[order[i]] = (tail_mass - cum[i - 1]) / tail_mass
    boundary = loss[order[i]]
    tied = np.abs(loss - boundary) <= tie_tol * max(1.0, abs(boundary))
    if tied.sum() > 1:
        mass = theta[tied].sum()
        share = np.ones(int(tied.sum())) if p is None else p[tied]
        theta[tied] = mass * share / share.sum()
    return theta


def _var_cvar_columns(
    losses: np.ndarray, alpha: float, probs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """VaR and CVaR of every column of a (T, M) loss matrix (vectorised)."""
    n = losses.shape[0]
    p = _normalized_probs(probs, n)
    desc = -np.sort(-losses, axis=0)  # worst first
    if alpha == 1.0:
        return desc[0], desc[0]
    if p is None:
        k = (1.0 - alpha) * n
        i = max(0, int(np.ceil(k) - 1))
        cvar = desc[:i].sum(axis=0) / k + desc[i] * (1.0 - i / k)
        j = min(n - 1, int(np.floor(k + 4 * _EPS * n)))
        return desc[j], cvar
    order = np.argsort(-losses, axis=0, kind="stable")
    ps = p[order]
    cum = np.cumsum(ps, axis=0)
    tail_mass = (1.0 - alpha) * cum[-1]
    cols = np.arange(losses.shape[1])
    i = np.minimum((cum < tail_mass).sum(axis=0), n - 1)
    before = np.where(i > 0, cum[np.maximum(i - 1, 0), cols], 0.0)
    head = np.where(np.arange(n)[:, None] < i[None, :], ps * desc, 0.0).sum(axis=0)
    cvar = np.where(i == 0, desc[0], (head + desc[i, cols] * (tail_mass - before)) / tail_mass)
    tol = 0.5 * np.spacing(alpha) * cum[-1] + 4 * _EPS * n * tail_mass
    j = np.minimum((cum <= tail_mass + tol).sum(axis=0), n - 1)
    return desc[j, cols], cvar


def var_cvar(
    losses: np.ndarray, alpha: float = DEFAULT_ALPHA, probs: np.ndarray | None = None
) -> tuple[float, float]:
    """Historical (VaR_α, CVaR_α) of a loss vector; NaN scenarios are dropped.

    Equals ``(skfolio.measures.value_at_risk(-losses, α), skfolio.measures.cvar(-losses, α))``.
    """
    loss = np.asarray(losses, dtype=float).ravel()
    ok = ~np.isnan(loss)
    p = None if probs is None else np.asarray(probs, dtype=float).ravel()
    if not ok.all():
        loss = loss[ok]
        p = None if p is None else p[ok]
    if loss.size == 0:
        return float("nan"), float("nan")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    v, c = _var_cvar_columns(loss[:, None], alpha, p)
    return float(v[0]), float(c[0])


@dataclass(frozen=True)
class CVaRResult:
    """Portfolio VaR/CVaR with Euler decomposition (all on the scenario horizon)."""

    var: float
    cvar: float
    component: np.ndarray  # w_i · E[−r_i | tail]; sums to cvar
    marginal: np.ndarray  # ∂CVaR/∂w_i = E[−r_i | tail]
    tail_weights: np.ndarray = field(repr=False)  # θ_t, the conditional tail distribution
    alpha: float = DEFAULT_ALPHA


def portfolio_cvar(
    weights: np.ndarray | pd.Series,
    scenarios: ScenarioInput,
    alpha: float = DEFAULT_ALPHA,
    probs: np.ndarray | None = None,
) -> CVaRResult:
    """VaR, CVaR and Euler component/marginal CVaR of ``weights`` over the scenarios.

    ``scenarios`` is a (T, N) array, a DataFrame (columns in the order of ``weights``; a Series
    of weights is aligned to the columns by label) or a :class:`Scenarios`.
    """
    if isinstance(weights, pd.Series) and isinstance(scenarios, pd.DataFrame):
        weights = weights.reindex(scenarios.columns).fillna(0.0)
    r, p = _as_matrix(scenarios, probs)
    w = np.asarray(weights, dtype=float).ravel()
    if r.shape[1] != w.shape[0]:
        raise ValueError(f"{w.shape[0]} weights for {r.shape[1]} scenario columns")
    loss = -(r @ w)
    theta = tail_weights(loss, alpha, p)
    var, _ = _var_cvar_columns(loss[:, None], alpha, p)
    marginal = -(theta @ r)
    component = w * marginal
    return CVaRResult(
        var=float(var[0]),
        cvar=float(theta @ loss),
        component=component,
        marginal=marginal,
        tail_weights=theta,
        alpha=alpha,
    )


@dataclass(frozen=True)
class ScalingDecision:
    """Outcome of the §G1/§G3 breach check for a book."""

    scale: float  # multiply every position by this (1.0 = untouched)
    portfolio_breach: bool
    component_breach: np.ndarray  # bool per position
    reason_codes: list[ReasonCode]
    cvar_after: float  # CVaR after scaling (homogeneity: scale × cvar)
    residual_breach: bool  # still in breach after scaling (min_scale floor bound)

    @property
    def in_breach(self) -> bool:
        return self.portfolio_breach or bool(self.component_breach.any())


def breach_scaling(
    result: CVaRResult,
    limit: float = DEFAULT_PORTFOLIO_LIMIT,
    component_limit: float | None = DEFAULT_COMPONENT_LIMIT,
    min_scale: float = DEFAULT_MIN_SCALE,
    tol: float = 1e-10,
) -> ScalingDecision:
    """Uniform scale factor that brings the book inside the §G1 limits.

    CVaR and every Euler component are positively homogeneous (scaling all positions by s
    scales the tail losses by s without changing which scenarios are in the tail), so
    ``s = min(1, limit / CVaR, min_i component_limit / component_i)`` restores both limits
    exactly; it is floored at ``min_scale`` (0 by default: flatten if need be), in which case
    ``residual_breach`` says the floor left the book in breach.
    """
    comp = np.asarray(result.component, dtype=float)
    port_breach = bool(result.cvar > limit + tol)
    comp_breach = (
        comp > component_limit + tol if component_limit is not None else np.zeros(comp.shape, dtype=bool)
    )
    scale = 1.0
    if port_breach:
        scale = min(scale, limit / result.cvar)
    if comp_breach.any():
        scale = min(scale, float(np.min(component_limit / comp[comp_breach])))
    codes: list[ReasonCode] = []
    if port_breach:
        codes.append(ReasonCode.PORTFOLIO_CVAR_BREACH)
    if comp_breach.any():
        codes.append(ReasonCode.COMPONENT_CVAR_BREACH)
    floored = scale < min_scale
    scale = max(scale, min_scale)
    if scale < 1.0:
        codes.append(ReasonCode.SCALED_FOR_CVAR)
    cvar_after = scale * result.cvar
    residual = floored and (
        cvar_after > limit + tol
        or (component_limit is not None and bool((scale * comp > component_limit + tol).any()))
    )
    return ScalingDecision(
        scale=float(scale),
        portfolio_breach=port_breach,
        component_breach=comp_breach,
        reason_codes=codes,
        cvar_after=float(cvar_after),
        residual_breach=bool(residual),
    )


def order_raises_cvar(
    current_w: np.ndarray | pd.Series,
    target_w: np.ndarray | pd.Series,
    scenarios: ScenarioInput,
    alpha: float = DEFAULT_ALPHA,
    probs: np.ndarray | None = None,
    limit: float = DEFAULT_PORTFOLIO_LIMIT,
    in_breach: bool | None = None,
    tol: float = 1e-12,
) -> pd.DataFrame:
    """§G3: which orders (one per position, ``target − current``) would raise portfolio CVaR.

    Each order is judged by its **actual** effect: CVaR of the current book with only that
    order executed, minus the current CVaR (exact, so large orders that jump the tail are
    judged correctly); the first-order (marginal) effect ``marginal_i × Δw_i`` is reported
    alongside. ``in_breach`` defaults to "current CVaR above ``limit``"; while in breach an order
    that raises CVaR is ``blocked`` with ``ORDER_RAISES_CVAR_IN_BREACH``.

    Returns one row per position (index = labels if Series were given) and, in ``attrs``,
    ``cvar_before`` (current book) and ``cvar_target`` (all orders executed).
    """
    index: pd.Index | None = None
    if isinstance(current_w, pd.Series) or isinstance(target_w, pd.Series):
        if isinstance(scenarios, pd.DataFrame):
            index = scenarios.columns
        elif isinstance(scenarios, Scenarios):
            index = pd.Index(scenarios.symbols)
        else:
            index = (current_w if isinstance(current_w, pd.Series) else target_w).index
        current_w = (
            pd.Series(current_w).reindex(index).fillna(0.0)
            if isinstance(current_w, pd.Series)
            else pd.Series(np.asarray(current_w, dtype=float), index=index)
        )
        target_w = (
            pd.Series(target_w).reindex(index).fillna(0.0)
            if isinstance(target_w, pd.Series)
            else pd.Series(np.asarray(target_w, dtype=float), index=index)
        )
    r, p = _as_matrix(scenarios, probs)
    cur = np.asarray(current_w, dtype=float).ravel()
    tgt = np.asarray(target_w, dtype=float).ravel()
    if not (cur.shape == tgt.shape == (r.shape[1],)):
        raise ValueError("current_w, target_w and scenario columns must have the same length")
    delta = tgt - cur
    before = portfolio_cvar(cur, r, alpha, p)
    loss0 = -(r @ cur)
    after = np.full(delta.shape, before.cvar)
    moved = np.flatnonzero(delta != 0.0)
    if moved.size:
        losses = loss0[:, None] - r[:, moved] * delta[moved][None, :]
        _, after[moved] = _var_cvar_columns(losses, alpha, p)
    change = after - before.cvar
    breach = bool(before.cvar > limit) if in_breach is None else bool(in_breach)
    raises = change > tol
    blocked = raises & breach
    out = pd.DataFrame(
        {
            "current_weight": cur,
            "target_weight": tgt,
            "delta": delta,
            "marginal_cvar": before.marginal,
            "first_order_change": before.marginal * delta,
            "cvar_before": before.cvar,
            "cvar_after": after,
            "cvar_change": change,
            "raises_cvar": raises,
            "in_breach": breach,
            "blocked": blocked,
            "reason_codes": np.where(blocked, str(ReasonCode.ORDER_RAISES_CVAR_IN_BREACH), ""),
        },
        index=index,
    )
    out.attrs["cvar_before"] = before.cvar
    out.attrs["cvar_target"] = portfolio_cvar(tgt, r, alpha, p).cvar
    return out
