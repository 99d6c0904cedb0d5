"""An independent cvxpy formulation of the auction LP (docs/risk.md), for parity tests and the benchmark.

Written from the formulation, not from ``auction._build_lp``: symbol weights are an affine
expression of candidate weights, the CVaR is cvxpy's own Rockafellar–Uryasev form with a
``cp.pos``, and the §H1 trade cost is the maximum of its chord lines applied to ``|w − w_now|``
(no buy/sell segment variables). The component-CVaR limit is not linear and is not part of it:
compare with ``AuctionParams(component_cvar_limit=None)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class ReferenceSolution:
    status: str
    objective: float
    symbol_weights: pd.Series
    candidate_weights: pd.Series
    solve_time_s: float


def chord_lines(trade_cap: float, a: float, k: float, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of the chords of C(v) = v(a + k√v) between 0, cap·2^{−(J−1)}, …, cap."""
    pts = np.concatenate([[0.0], trade_cap * 2.0 ** -np.arange(n_segments - 1, -1, -1.0)])
    vals = pts * (a + k * np.sqrt(pts))
    d = np.diff(pts)
    slope = np.where(d > 0, np.diff(vals) / np.where(d > 0, d, 1.0), a)
    intercept = vals[:-1] - slope * pts[:-1]
    return slope, intercept


def solve_reference(
    candidates: pd.DataFrame,
    scenarios: pd.DataFrame,
    book: pd.DataFrame | None,
    params: object,
    strategy_caps: Mapping[str, float] | None = None,
    group_caps: Mapping[str, Mapping[str, float]] | None = None,
    solver: str = "HIGHS",
    solver_options: Mapping[str, object] | None = None,
) -> ReferenceSolution:
    """Solve the auction LP with cvxpy. Supports the features the parity tests use: candidate caps
    (``cap_*``), symbol caps (``cap_symbol*``), exits, trade caps, impact (``half_spread`` /
    ``impact_coef``), strategy and group caps, budget, turnover limit/penalty, reduce-only, CVaR limit."""
    import time

    import cvxpy as cp

    p = params
    cand = candidates.reset_index(drop=True)
    bk = book.copy() if book is not None else pd.DataFrame({"symbol": []})
    symbols = sorted(set(cand["symbol"].astype(str)) | set(bk["symbol"].astype(str)))
    bk = bk.set_index(bk["symbol"].astype(str)).reindex(symbols)
    s_n, k_n = len(symbols), len(cand)

    def col(frame: pd.DataFrame, name: str, default: float) -> np.ndarray:
        return frame[name].astype(float).to_numpy() if name in frame.columns else np.full(len(frame), default)

    w_now = np.nan_to_num(col(bk, "current_weight", 0.0))
    tc = np.nan_to_num(col(bk, "trade_cap", np.inf), nan=0.0)
    a = np.nan_to_num(col(bk, "half_spread", 0.0))
    kk = np.nan_to_num(col(bk, "impact_coef", 0.0))
    caps = [np.nan_to_num(col(bk, c, np.inf), nan=0.0) for c in bk.columns if str(c).startswith("cap_symbol")]
    sym_cap = np.min(np.vstack(caps), axis=0) if caps else np.full(s_n, np.inf)
    if "exit_reason" in bk.columns:
        sym_cap = np.where(bk["exit_reason"].fillna("").astype(str) != "", 0.0, sym_cap)
    reduce_only = bool(p.reduce_only)
    r = scenarios.reindex(columns=symbols).to_numpy(dtype=float)
    t = r.shape[0]
    probs = np.full(t, 1.0 / t)
    loss_now = -(r @ w_now)
    if p.cvar_limit is not None and w_now.any():
        # held book in breach → reduce-only (§G3); plain sort-based CVaR of the current book
        srt = np.sort(loss_now)[::-1]
        kt = (1 - p.alpha) * t
        i = int(np.ceil(kt) - 1)
        cv_now = srt[:i].sum() / kt + srt[i] * (1 - i / kt)
        reduce_only = reduce_only or cv_now > p.cvar_limit * (1 + 1e-9)

    mu = cand["mu_adj"].astype(float).to_numpy()
    cand_caps = [cand[c].astype(float).fillna(0.0).to_numpy() for c in cand.columns if c in (
        "cap_mandate", "cap_stage", "cap_liquidity", "cap_quality", "cap_crisis")]
    x_ub = np.min(np.vstack(cand_caps), axis=0) if cand_caps else np.full(k_n, np.inf)
    if p.require_positive_mu:
        x_ub = np.where(mu > 0, x_ub, 0.0)
    x_ub = np.minimum(x_ub, p.budget)
    member = np.zeros((s_n, k_n))
    member[[symbols.index(s) for s in cand["symbol"].astype(str)], np.arange(k_n)] = 1.0

    x = cp.Variable(k_n, nonneg=True)
    h = cp.Variable(s_n, nonneg=True)
    w = member @ x + h
    d = w - w_now
    finite_tc = np.where(np.isfinite(tc), tc, w_now + np.minimum(sym_cap, p.budget))
    floor = np.clip(w_now - finite_tc, 0.0, None)
    upper = np.minimum(sym_cap, w_now) if reduce_only else sym_cap
    upper = np.maximum(upper, floor)
    fin = np.isfinite(upper)
    cons = [x <= x_ub, h <= w_now, cp.abs(d) <= finite_tc]
    if fin.any():
        cons.append(w[np.flatnonzero(fin)] <= upper[fin])
    if reduce_only:
        cons.append(d <= 0)
    lines = [chord_lines(float(finite_tc[s]), float(a[s]), float(kk[s]), p.impact_segments) for s in range(s_n)]
    slopes = np.array([ln[0] for ln in lines]).reshape(s_n, p.impact_segments)
    icpts = np.array([ln[1] for ln in lines]).reshape(s_n, p.impact_segments)
    # cost_s = max_j (slope_sj·|d_s| + intercept_sj), the convex chord interpolant, as an epigraph
    v = cp.Variable(s_n)
    cons += [v >= cp.multiply(slopes[:, j], cp.abs(d)) + icpts[:, j] for j in range(p.impact_segments)]
    cost = cp.sum(v)
    sid = cand["strategy_id"].astype(str).to_numpy()
    for g, cap in (strategy_caps or {}).items():
        m = sid == g
        if m.any():
            cons.append(cp.sum(x[np.flatnonzero(m)]) <= cap)
    forced = float(np.clip(w_now - upper, 0.0, None).sum())
    for kind, gcaps in (group_caps or {}).items():
        lab = bk[kind].fillna("").astype(str).to_numpy() if kind in bk.columns else np.full(s_n, "")
        if kind in cand.columns:
            first = cand.groupby(cand["symbol"].astype(str))[kind].first()
            lab = np.array([lab[i] or str(first.get(s, "")) for i, s in enumerate(symbols)])
        for name, cap in gcaps.items():
            m = np.flatnonzero(lab == name)
            if len(m):
                cap_eff = max(cap, float(floor[m].sum()))
                cons.append(cp.sum(w[m]) <= cap_eff)
                forced += max(0.0, float(w_now[m].sum()) - cap_eff)
    cons.append(cp.sum(w) <= max(p.budget, float(floor.sum())))
    if p.budget_equality:
        cons.append(cp.sum(w) >= p.budget)
    elif p.min_investment > 0:
        cons.append(cp.sum(w) >= p.min_investment)
    if p.turnover_limit is not None and not reduce_only:
        cons.append(cp.sum(cp.abs(d)) <= p.turnover_limit + forced)
    zeta = cp.Variable()
    cvar = zeta + cp.sum(cp.multiply(probs, cp.pos(-(r @ w) - zeta))) / (1 - p.alpha)
    if p.cvar_limit is not None:
        cons.append(cvar <= p.cvar_limit)
    obj = cp.Maximize(mu @ x - cost - p.turnover_penalty * cp.sum(cp.abs(d)) - p.risk_aversion * cvar)
    prob = cp.Problem(obj, cons)
    t0 = time.perf_counter()
    opts = dict(solver_options or {})
    if solver == "HIGHS":  # tight tolerances: this is the reference the product is held to
        opts.setdefault("primal_feasibility_tolerance", 1e-10)
        opts.setdefault("dual_feasibility_tolerance", 1e-10)
    prob.solve(solver=solver, **opts)
    elapsed = time.perf_counter() - t0
    ok = prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
    wv = np.asarray(w.value).ravel() if ok else np.full(s_n, np.nan)
    xv = np.asarray(x.value).ravel() if ok else np.full(k_n, np.nan)
    return ReferenceSolution(
        status="OPTIMAL" if ok else str(prob.status).upper(),
        objective=float(prob.value) if ok else float("nan"),
        symbol_weights=pd.Series(wv, index=symbols),
        candidate_weights=pd.Series(xv, index=cand["candidate_id"].to_numpy()),
        solve_time_s=elapsed,
    )
