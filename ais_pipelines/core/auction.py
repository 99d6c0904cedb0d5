"""Capital auction (§F): every candidate competes for capital in one holdings-aware mean–CVaR LP.

The problem (Rockafellar–Uryasev, on the scenario horizon H; all weights are NAV fractions)::

    maximise   Σ_k x_k μ_k  −  Σ_s C_s(b_s) − Σ_s C_s(q_s)  −  π Σ_s (b_s + q_s)  −  λ (ζ + Σ_t p_t u_t / (1−α))

    subject to w_s = Σ_{k∈s} x_k + h_s                          (symbol total across strategies)
               w_s − b_s + q_s = w_now_s                           (trade = buy leg − sell leg)
               0 ≤ w_s ≤ U_s                                       (exact per-symbol cap)
               Σ_{k∈g} x_k ≤ cap_g                                 (exact per-strategy lifecycle cap)
               Σ_{s∈G} w_s ≤ cap_G                                 (sector / asset-class caps)
               min_investment ≤ Σ_s w_s ≤ budget                   (gross ≤ mandate, long-only)
               Σ_s (b_s + q_s) ≤ turnover_limit + forced           (declared daily turnover limit)
               0 ≤ b_s, q_s ≤ trade_cap_s                          (ADV participation on the trade)
               b_s = 0                                             (reduce-only: §C4 crisis, §G3 breach)
               u_t ≥ −r_t·w − ζ, u_t ≥ 0,  ζ + Σ_t p_t u_t/(1−α) ≤ CVaR limit
               0 ≤ x_k ≤ cap_k,  0 ≤ h_s ≤ w_now_s

* ``x_k`` is candidate k's capital (strategy × symbol), ``μ_k = mu_adj`` its expected H-session
  return; ``w_s`` the symbol's target weight; ``w_now_s`` the weight held at the as-of close.
* ``h_s`` is the part of a held position that no candidate claims (the strategy stopped
  nominating it): it earns nothing (μ = 0) and can only shrink; the LP keeps it only while
  selling costs more than the risk it carries. It counts toward every symbol, group, gross and
  CVaR limit, not toward a strategy's cap (no strategy owns it).
* ``C_s`` is the §H1 one-way impact of a trade of size ``v`` (weight):
  ``C(v) = v·(a_s + k_s·√v)`` (``a`` = half spread, ``k·√v`` = temporary + permanent impact,
  after the regime multiplier; see ``impact.trade_cost_coefficients``), convex, replaced by its
  chord interpolation on ``impact_segments`` geometric breakpoints ``trade_cap·2^{−j}``: each leg
  is J bounded segment variables with increasing slopes, so the LP fills them in order and the
  charged cost is never below the §H1 cost. Holding costs nothing; a round trip costs both legs.
* ``U_s = min(symbol caps, component-CVaR cap)`` — but a position already above it can only be
  cut as fast as participation allows, so ``U_s ← max(U_s, w_now_s − trade_cap_s)`` (the cut is
  then forced and reported). Exits (ineligible symbol, decommissioned strategy, INVALID data)
  have ``U_s = 0`` with the same relaxation: sold down within participation caps, never left alone.
  Group and budget rows are relaxed the same way (to what can be sold tonight); ``forced`` in the
  turnover row is the turnover those forced cuts need. In reduce-only mode the turnover row is
  dropped (only sells remain and de-risking must stay possible).

Units and the default λ (§F1a)
------------------------------
μ and CVaR must be on the same horizon. ``horizon`` H = 5 sessions (one trading week: the
forecasts' horizon). Expected returns grow like H and tail losses like √H, so λ is meaningless
without its horizon. λ is the hurdle "expected H-return demanded per unit of H-CVaR". Measured on
skfolio's S&P 500 sample (20 large caps, last 1260 sessions to 2022-12-28, μ = historical mean):

=====================  ==========  ===========
ratio μ/CVaR₉₅          H = 1        H = 5
=====================  ==========  ===========
single name, median     0.015        0.036
single name, best       0.037        0.091
equal-weight book       0.024        0.057
best long-only book     0.042        0.103
=====================  ==========  ===========

So λ = 1 on daily returns allocates nothing (the §F1a trap), and ``DEFAULT_RISK_AVERSION = 0.03``
(a book must expect > 3 % of its 5-session CVaR per 5 sessions) produces a diversified book on the
sample (tested).

Component (per-position) CVaR ≤ limit (§G1/§G4)
-----------------------------------------------
Euler components ``w_s · m_s(w)``, ``m_s = E[−r_s | tail(w)]``, depend on which scenarios are in
the tail, so they are not linear. For a *fixed* tail they are, and the constraint is a bound
``w_s ≤ limit / m_s``. (1) Cap loop: solve, and for every symbol over the limit tighten its cap
to ``limit / m_s`` at this tail and re-solve warm — monotone, so it ends within the limit.
(2) Tail-region polish: around the best such book, hold the ranking of the tail fixed with
linear rows (``L_t ≥ L_b ≥ L_s`` for tail t, boundary b, the rest s); inside that region CVaR
and every component are exactly linear, so one LP gives the best book of the region with the
component limits as exact bounds; the neighbouring regions (boundary swapped with the nearest
outside scenarios, or with the weakest tail member) are solved too, and the round repeats from
the best book (``polish_rounds``, ``polish_neighbors``) while it improves. Every
accepted book is checked on the exact historical components (a tie at the boundary can share the
tail differently: the book is then scaled down by the hair it needs). If no round is feasible
the last book is scaled down (homogeneity) with ``SCALED_FOR_CVAR``. The objective lost against
the solve without component limits is reported as ``component_gap_bound`` (≥ the true gap); the
gap to the true optimum is measured against an exact solve (enumerating the tail sets, one LP
each) in ``tests/unit/test_auction_book.py`` and reported in ``docs/risk.md``.

Solvers and warm start
----------------------
The LP is passed to HiGHS (dual simplex, no presolve/scaling: ≈ 3× faster on this well-scaled
LP). Every column and row has a stable key (``x:<candidate>``, ``w:<symbol>``, ``u:<scenario end
date>`` …). :class:`WarmStart` is the optimal basis keyed that way; given the previous night's,
the next solve maps it onto the new layout (rolled scenario windows, new or dropped candidates
line up by key) and starts the dual simplex from it. It is plain data (numpy arrays), persisted
by the nightly asset next to the warehouse and carried from partition D−1 to D. If the structure
differs (segments, α, which rows exist) or too few keys match, the solve is cold and carries
``WARM_START_SHAPE_CHANGED``; if the warm run fails it is re-run cold with ``WARM_START_FAILED``.

Failure is an outcome (§F3)
---------------------------
Infeasible problems, solver failures and "no eligible candidate" allocate nothing (every
candidate weight 0, every symbol target = its current weight: the auction does not trade on a
decision it could not make; ``portfolio_cvar`` still scales a book in breach) and carry
``AUCTION_INFEASIBLE`` / ``AUCTION_SOLVER_FAILED`` / ``AUCTION_NO_CANDIDATES``; they never raise.
Contract violations by the caller (missing columns, scenario shape or horizon mismatch) raise.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ais_pipelines.core.cvar import (
    DEFAULT_ALPHA,
    DEFAULT_COMPONENT_LIMIT,
    DEFAULT_PORTFOLIO_LIMIT,
    portfolio_cvar,
)
from ais_pipelines.core.reason_codes import ReasonCode, codes_str
from ais_pipelines.core.scenarios import DEFAULT_HORIZON, Scenarios

DEFAULT_RISK_AVERSION = 0.03  # λ on the 5-session horizon; see module docstring (§F1a)
DEFAULT_IMPACT_SEGMENTS = 6
# Measured on this LP (N = 100…2000, T = 1260): the data are already well scaled and
# presolve/scaling only cost time — about 3× faster without.
DEFAULT_HIGHS_OPTIONS: tuple[tuple[str, Any], ...] = (("presolve", "off"), ("simplex_scale_strategy", 0))
MIN_WARM_MATCH = 0.5  # below this share of matched keys a mapped basis is not worth it

REQUIRED_COLUMNS = ("candidate_id", "strategy_id", "symbol", "mu_adj")
CAP_SOURCES: dict[str, tuple[str, ReasonCode]] = {
    # candidate column -> (short name for `binding_cap`, reason code)
    "cap_mandate": ("mandate", ReasonCode.CAPPED_BY_MANDATE),
    "cap_stage": ("stage", ReasonCode.CAPPED_BY_STAGE),
    "cap_liquidity": ("liquidity", ReasonCode.CAPPED_BY_LIQUIDITY),
    "cap_quality": ("quality", ReasonCode.CAPPED_BY_DATA_QUALITY),
    "cap_crisis": ("crisis", ReasonCode.CAPPED_BY_CRISIS_SCALING),
}
SYMBOL_CAP_SOURCES: dict[str, tuple[str, ReasonCode]] = {
    # book column -> (name, code): caps on a symbol's total across strategies
    "cap_symbol": ("symbol_cap", ReasonCode.CAPPED_BY_SYMBOL_LIMIT),
    "cap_symbol_quality": ("quality", ReasonCode.CAPPED_BY_DATA_QUALITY),
    "cap_symbol_crisis": ("crisis", ReasonCode.CAPPED_BY_CRISIS_SCALING),
}
ELIGIBILITY_EXCLUSIONS: dict[str, ReasonCode] = {
    "INVALID_DATA": ReasonCode.EXCLUDED_INVALID_DATA,
    "INSUFFICIENT_HISTORY": ReasonCode.EXCLUDED_INSUFFICIENT_HISTORY,
    "DECOMMISSIONED": ReasonCode.EXCLUDED_DECOMMISSIONED,
}
EXIT_REASONS: dict[str, ReasonCode] = {
    "INELIGIBLE_SYMBOL": ReasonCode.EXIT_INELIGIBLE_SYMBOL,
    "DECOMMISSIONED": ReasonCode.EXIT_STRATEGY_DECOMMISSIONED,
    "INVALID_DATA": ReasonCode.EXIT_INVALID_DATA,
}
COMPONENT_CAP = "component_cvar"

OUTPUT_COLUMNS = [
    "candidate_id",
    "strategy_id",
    "symbol",
    "eligibility",
    "allocated",
    "weight",
    "rank",
    "decision",
    "reason_codes",
    "mu_adj",
    "cost",
    "mu_contribution",
    "liquidity_cost",
    "cvar_contribution",
    "marginal_cvar",
    "correlation",
    "data_quality_penalty",
    "model_decay_penalty",
    "vetoed",
    "veto_reason",
    "cap",
    "binding_cap",
]
SYMBOL_COLUMNS = [
    "symbol",
    "current_weight",
    "target_weight",
    "trade",
    "buy",
    "sell",
    "trade_cost",
    "trade_cap",
    "cap",
    "n_candidates",
    "claimed_weight",
    "unclaimed_weight",
    "cvar_contribution",
    "marginal_cvar",
    "decision",
    "binding_constraint",
    "reason_codes",
]

STATUS_OPTIMAL = "OPTIMAL"
STATUS_INFEASIBLE = "INFEASIBLE"
STATUS_FAILED = "SOLVER_FAILED"
STATUS_NO_CANDIDATES = "NO_CANDIDATES"

_TOL = 1e-9  # primal tolerance for "this constraint is tight"


@dataclass(frozen=True)
class AuctionParams:
    """Auction settings. Every return-like number is on the ``horizon`` (H sessions)."""

    horizon: int = DEFAULT_HORIZON
    alpha: float = DEFAULT_ALPHA
    risk_aversion: float = DEFAULT_RISK_AVERSION  # λ
    cvar_limit: float | None = DEFAULT_PORTFOLIO_LIMIT  # hard; None = no limit
    component_cvar_limit: float | None = DEFAULT_COMPONENT_LIMIT  # per symbol; None = off
    budget: float = 1.0  # Σw ≤ budget (rest is cash); pass min(budget, gross limit)
    budget_equality: bool = False  # Σw = budget (fully invested, as skfolio's default)
    min_investment: float = 0.0  # Σw ≥ min_investment
    require_positive_mu: bool = True  # μ ≤ 0 → not eligible for capital
    max_component_iterations: int = 10
    polish_rounds: int = 2  # rounds of tail-region LPs after the component loop (0 = off)
    polish_neighbors: int = 2  # neighbouring tail regions tried per round (besides the book's own)
    turnover_limit: float | None = None  # Σ|Δw| per night (one-way, NAV fraction); None = none
    turnover_penalty: float = 0.0  # charged per unit of Σ|Δw| on top of the impact
    impact_segments: int = DEFAULT_IMPACT_SEGMENTS  # J pieces of the convex impact per leg
    reduce_only: bool = False  # no position may grow (§C4 crisis); §G3 breach sets it too
    time_limit_s: float | None = None
    weight_tol: float = 1e-9  # weights below are reported as 0
    highs_options: tuple[tuple[str, Any], ...] = DEFAULT_HIGHS_OPTIONS  # (name, value) pairs

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError("horizon must be >= 1")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if self.risk_aversion < 0:
            raise ValueError("risk_aversion must be >= 0")
        if self.budget <= 0:
            raise ValueError("budget must be > 0")
        if self.impact_segments < 1:
            raise ValueError("impact_segments must be >= 1")
        if self.turnover_limit is not None and self.turnover_limit < 0:
            raise ValueError("turnover_limit must be >= 0")
        if self.turnover_penalty < 0:
            raise ValueError("turnover_penalty must be >= 0")


# --- warm start ----------------------------------------------------------------------------


@dataclass
class WarmStart:
    """An optimal HiGHS basis keyed by column/row names: plain data, saved between nights."""

    structure: str
    col_keys: np.ndarray  # str
    col_status: np.ndarray  # int8, HighsBasisStatus values
    row_keys: np.ndarray
    row_status: np.ndarray
    label: str = ""  # e.g. the partition that produced it

    def save(self, path: Any) -> None:
        np.savez_compressed(
            path,
            structure=np.array(self.structure),
            col_keys=self.col_keys,
            col_status=self.col_status,
            row_keys=self.row_keys,
            row_status=self.row_status,
            label=np.array(self.label),
        )

    @classmethod
    def load(cls, path: Any) -> WarmStart:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                structure=str(z["structure"]),
                col_keys=z["col_keys"],
                col_status=z["col_status"],
                row_keys=z["row_keys"],
                row_status=z["row_status"],
                label=str(z["label"]),
            )


# --- the LP --------------------------------------------------------------------------------


@dataclass
class _Problem:
    """Everything the LP needs, in arrays (built by :func:`run_capital_auction`)."""

    cand_keys: list[str]
    cand_sym: np.ndarray  # (K,) symbol index of each candidate
    mu: np.ndarray  # (K,)
    cand_ub: np.ndarray  # (K,) 0 for inactive candidates
    sym_keys: list[str]
    w_now: np.ndarray  # (S,)
    sym_ub: np.ndarray  # (S,) U_s after relaxation
    sym_ub_raw: np.ndarray  # (S,) U_s before relaxation (caps, component caps, reduce-only)
    seg_len: np.ndarray  # (S, J)
    seg_slope: np.ndarray  # (S, J) one-way cost per unit weight (impact + penalty)
    buy_ok: np.ndarray  # (S,) bool
    strat_keys: list[str]
    strat_members: list[np.ndarray]  # candidate indices
    strat_cap: np.ndarray
    group_keys: list[str]
    group_members: list[np.ndarray]  # symbol indices
    group_cap: np.ndarray
    budget_lo: float
    budget_hi: float
    turnover_hi: float | None
    returns: np.ndarray  # (T, S)
    pt: np.ndarray  # (T,) p_t / (1 − α)
    scen_keys: list[str]
    lam: float
    cvar_limit: float | None
    # Tail-region mode (component polish): CVaR = m·w with the tail set held fixed by `region_rows`.
    region_m: np.ndarray | None = None  # (S,) marginal CVaR of each symbol for the fixed tail
    region_rows: np.ndarray | None = None  # (M, S): each row · w ≥ 0 keeps the tail ranking

    def structure(self) -> str:
        j = self.seg_len.shape[1]
        reg = 0 if self.region_rows is None else len(self.region_rows)
        return (
            f"J={j};cvar={self.cvar_limit is not None};turnover={self.turnover_hi is not None};"
            f"lam>0={self.lam > 0};region={reg}"
        )


@dataclass
class _Layout:
    n_col: int
    n_row: int
    col_keys: list[str]
    row_keys: list[str]
    ox: int
    oh: int
    ow: int
    ob: int
    oq: int
    oz: int
    ou: int
    r_link: int
    r_trade: int
    r_strat: int
    r_group: int
    r_budget: int
    r_turn: int  # -1 if absent
    r_scen: int
    r_cvar: int  # -1 if absent
    r_region: int  # -1 if absent


@dataclass
class _Solution:
    status: str
    x: np.ndarray
    h: np.ndarray
    w: np.ndarray
    buy: np.ndarray
    sell: np.ndarray
    row_value: np.ndarray
    objective: float
    iterations: int
    time_s: float
    message: str = ""


def _layout(p: _Problem) -> _Layout:
    k, s, j, t = len(p.cand_keys), len(p.sym_keys), p.seg_len.shape[1], len(p.scen_keys)
    ox, oh, ow = 0, k, k + s
    ob = ow + s
    oq = ob + s * j
    oz = oq + s * j
    ou = oz + 1
    n_col = ou + t
    col_keys = (
        [f"x:{c}" for c in p.cand_keys]
        + [f"h:{y}" for y in p.sym_keys]
        + [f"w:{y}" for y in p.sym_keys]
        + [f"b:{y}:{i}" for y in p.sym_keys for i in range(j)]
        + [f"q:{y}:{i}" for y in p.sym_keys for i in range(j)]
        + ["zeta"]
        + [f"u:{e}" for e in p.scen_keys]
    )
    r_link, r_trade = 0, s
    r_strat = 2 * s
    r_group = r_strat + len(p.strat_keys)
    r_budget = r_group + len(p.group_keys)
    r = r_budget + 1
    r_turn = -1
    if p.turnover_hi is not None:
        r_turn, r = r, r + 1
    r_scen = r
    r += t
    r_cvar = -1
    if p.cvar_limit is not None:
        r_cvar, r = r, r + 1
    r_region = -1
    n_reg = 0 if p.region_rows is None else len(p.region_rows)
    if n_reg:
        r_region, r = r, r + n_reg
    row_keys = (
        [f"link:{y}" for y in p.sym_keys]
        + [f"trade:{y}" for y in p.sym_keys]
        + [f"strat:{g}" for g in p.strat_keys]
        + [f"group:{g}" for g in p.group_keys]
        + ["budget"]
        + (["turnover"] if r_turn >= 0 else [])
        + [f"scen:{e}" for e in p.scen_keys]
        + (["cvar"] if r_cvar >= 0 else [])
        + [f"region:{i}" for i in range(n_reg)]
    )
    return _Layout(
        n_col,
        r,
        col_keys,
        row_keys,
        ox,
        oh,
        ow,
        ob,
        oq,
        oz,
        ou,
        r_link,
        r_trade,
        r_strat,
        r_group,
        r_budget,
        r_turn,
        r_scen,
        r_cvar,
        r_region,
    )


def _build_lp(p: _Problem, lay: _Layout) -> Any:
    import highspy

    inf = highspy.kHighsInf
    k, s, j, t = len(p.cand_keys), len(p.sym_keys), p.seg_len.shape[1], len(p.scen_keys)
    cost = np.zeros(lay.n_col)
    lo = np.zeros(lay.n_col)
    up = np.zeros(lay.n_col)
    cost[lay.ox : lay.ox + k] = -p.mu  # HiGHS minimises
    up[lay.ox : lay.ox + k] = p.cand_ub
    up[lay.oh : lay.oh + s] = p.w_now
    up[lay.ow : lay.ow + s] = p.sym_ub
    seg_ub_buy = np.where(p.buy_ok[:, None], p.seg_len, 0.0)
    cost[lay.ob : lay.oq] = p.seg_slope.ravel()
    up[lay.ob : lay.oq] = seg_ub_buy.ravel()
    cost[lay.oq : lay.oz] = p.seg_slope.ravel()
    up[lay.oq : lay.oz] = p.seg_len.ravel()
    cost[lay.oz] = p.lam
    lo[lay.oz], up[lay.oz] = -inf, inf
    cost[lay.ou :] = p.lam * p.pt
    up[lay.ou :] = inf
    if p.region_m is not None:  # the risk term is linear inside a fixed tail region
        cost[lay.ow : lay.ow + s] += p.lam * p.region_m
        cost[lay.oz] = 0.0
        cost[lay.ou :] = 0.0

    # Triplets (row, col, value), then one column-wise sort.
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray | float) -> None:
        r = np.asarray(r, dtype=np.int64).ravel()
        c = np.asarray(c, dtype=np.int64).ravel()
        rows.append(r)
        cols.append(c)
        arr = np.asarray(v, dtype=float)
        vals.append(np.broadcast_to(arr.ravel() if arr.ndim else arr, r.shape))

    sym_idx = np.arange(s)
    # link_s: w_s − Σ x − h_s = 0
    add(lay.r_link + sym_idx, lay.ow + sym_idx, 1.0)
    add(lay.r_link + p.cand_sym, lay.ox + np.arange(k), -1.0)
    add(lay.r_link + sym_idx, lay.oh + sym_idx, -1.0)
    # trade_s: w_s − Σ b + Σ q = w_now_s
    add(lay.r_trade + sym_idx, lay.ow + sym_idx, 1.0)
    seg_sym = np.repeat(sym_idx, j)
    add(lay.r_trade + seg_sym, lay.ob + np.arange(s * j), -1.0)
    add(lay.r_trade + seg_sym, lay.oq + np.arange(s * j), 1.0)
    for g, members in enumerate(p.strat_members):
        add(np.full(len(members), lay.r_strat + g), lay.ox + members, 1.0)
    for g, members in enumerate(p.group_members):
        add(np.full(len(members), lay.r_group + g), lay.ow + members, 1.0)
    add(np.full(s, lay.r_budget), lay.ow + sym_idx, 1.0)
    if lay.r_turn >= 0:
        add(np.full(2 * s * j, lay.r_turn), lay.ob + np.arange(2 * s * j), 1.0)
    # scenario_t: ζ + u_t + Σ_s r_ts w_s ≥ 0
    tt = np.arange(t)
    dense = sparse.coo_matrix(p.returns)  # the T × S scenario block, converted in C
    rows.append(dense.row.astype(np.int64) + lay.r_scen)
    cols.append(dense.col.astype(np.int64) + lay.ow)
    vals.append(dense.data)
    add(lay.r_scen + tt, np.full(t, lay.oz), 1.0)
    add(lay.r_scen + tt, lay.ou + tt, 1.0)
    if lay.r_cvar >= 0:
        add([lay.r_cvar], [lay.oz], 1.0)
        add(np.full(t, lay.r_cvar), lay.ou + tt, p.pt)
    if lay.r_region >= 0:
        m_reg = len(p.region_rows)  # type: ignore[arg-type]
        add(lay.r_region + np.repeat(np.arange(m_reg), s), lay.ow + np.tile(sym_idx, m_reg), p.region_rows)

    # COO → CSC in scipy's C code (a lexsort of ~2.5M triplets at N = 2000 took 0.4 s).
    mat = sparse.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(lay.n_row, lay.n_col)
    )
    mat.eliminate_zeros()
    mat.sort_indices()

    row_lo = np.full(lay.n_row, -inf)
    row_up = np.full(lay.n_row, inf)
    row_lo[lay.r_link : lay.r_link + s] = 0.0
    row_up[lay.r_link : lay.r_link + s] = 0.0
    row_lo[lay.r_trade : lay.r_trade + s] = p.w_now
    row_up[lay.r_trade : lay.r_trade + s] = p.w_now
    row_up[lay.r_strat : lay.r_strat + len(p.strat_keys)] = p.strat_cap
    row_up[lay.r_group : lay.r_group + len(p.group_keys)] = p.group_cap
    row_lo[lay.r_budget], row_up[lay.r_budget] = p.budget_lo, p.budget_hi
    if lay.r_turn >= 0:
        row_up[lay.r_turn] = float(p.turnover_hi)  # type: ignore[arg-type]
    row_lo[lay.r_scen : lay.r_scen + t] = 0.0
    if lay.r_cvar >= 0:
        row_up[lay.r_cvar] = float(p.cvar_limit)  # type: ignore[arg-type]
    if lay.r_region >= 0:
        row_lo[lay.r_region :] = 0.0

    # Arrays go to HiGHS through the array overload of passModel: assigning them to a HighsLp's
    # fields converts element by element (≈ 0.25 s for the 2.5M coefficients of N = 2000).
    lp = (
        lay.n_col,
        lay.n_row,
        int(mat.nnz),
        int(highspy.MatrixFormat.kColwise),
        int(highspy.ObjSense.kMinimize),
        0.0,
        cost,
        lo,
        up,
        row_lo,
        row_up,
        mat.indptr.astype(np.int32),
        mat.indices.astype(np.int32),
        mat.data.astype(np.float64),
        np.zeros(lay.n_col, dtype=np.int32),  # all continuous
    )
    return lp, row_lo, row_up, lo, up


def _map_basis(warm: WarmStart, lay: _Layout, row_lo: np.ndarray, row_up: np.ndarray) -> tuple[Any, float]:
    """Previous basis onto this layout by key; new columns at a bound, new rows basic, count repaired."""
    import highspy

    basic = int(highspy.HighsBasisStatus.kBasic)
    lower = int(highspy.HighsBasisStatus.kLower)
    upper = int(highspy.HighsBasisStatus.kUpper)
    zero = int(highspy.HighsBasisStatus.kZero)

    def mapped(
        keys: list[str], old_keys: np.ndarray, old_status: np.ndarray, default: np.ndarray
    ) -> tuple[np.ndarray, int]:
        pos = pd.Index(old_keys).get_indexer(keys)
        out = default.copy()
        hit = pos >= 0
        out[hit] = old_status[pos[hit]]
        return out, int(hit.sum())

    col_default = np.full(lay.n_col, lower, dtype=np.int64)
    col_default[lay.oz] = zero  # ζ is free
    col, nc = mapped(lay.col_keys, warm.col_keys, warm.col_status, col_default)
    row, nr = mapped(lay.row_keys, warm.row_keys, warm.row_status, np.full(lay.n_row, basic, dtype=np.int64))
    n_basic = int((col == basic).sum() + (row == basic).sum())
    if n_basic > lay.n_row:  # too many basics: make surplus basic rows nonbasic at a finite bound
        idx = np.flatnonzero(row == basic)[::-1][: n_basic - lay.n_row]
        row[idx] = np.where(np.isfinite(row_lo[idx]), lower, upper)
    elif n_basic < lay.n_row:  # too few: promote nonbasic rows
        idx = np.flatnonzero(row != basic)[: lay.n_row - n_basic]
        row[idx] = basic
    table = [highspy.HighsBasisStatus(i) for i in range(5)]  # enum objects once, then look them up
    b = highspy.HighsBasis()
    b.col_status = [table[v] for v in col.tolist()]
    b.row_status = [table[v] for v in row.tolist()]
    b.valid = True
    return b, (nc + nr) / (lay.n_col + lay.n_row)


class AuctionSolver:
    """Solves the auction LP with HiGHS; remembers the last optimal basis for the next solve."""

    def __init__(self, params: AuctionParams) -> None:
        self.params = params
        self.warm: WarmStart | None = None
        self.solves = 0
        self.warm_codes: list[ReasonCode] = []
        self.warm_match = 0.0

    def _name(self) -> str:
        return "highspy-simplex"

    def _new_highs(self) -> Any:
        import highspy

        h = highspy.Highs()
        h.silent()
        h.setOptionValue("solver", "simplex")
        for key, value in self.params.highs_options:
            h.setOptionValue(key, value)
        if self.params.time_limit_s is not None:
            h.setOptionValue("time_limit", float(self.params.time_limit_s))
        return h

    def solve(self, p: _Problem) -> tuple[_Solution, bool]:
        """(solution, warm_started). Never raises: a crash is a SOLVER_FAILED outcome (§F3)."""
        t0 = time.perf_counter()
        self.solves += 1
        try:
            sol, warm = self._solve(p)
        except Exception as exc:
            self.warm = None  # do not reuse state of unknown quality
            z = np.zeros(0)
            return _Solution(
                STATUS_FAILED, z, z, z, z, z, z, float("nan"), 0, time.perf_counter() - t0, repr(exc)
            ), False
        sol.time_s = time.perf_counter() - t0
        return sol, warm

    def _solve(self, p: _Problem) -> tuple[_Solution, bool]:
        import highspy

        lay = _layout(p)
        lp, row_lo, row_up, _, _ = _build_lp(p, lay)
        h = self._new_highs()
        st = h.passModel(*lp)
        if st == highspy.HighsStatus.kError:
            raise RuntimeError(f"HiGHS refused the model: {st}")
        warm = False
        if self.warm is not None:
            if self.warm.structure != p.structure():
                self._code(ReasonCode.WARM_START_SHAPE_CHANGED)
            else:
                basis, match = _map_basis(self.warm, lay, row_lo, row_up)
                self.warm_match = match
                if match < MIN_WARM_MATCH:
                    self._code(ReasonCode.WARM_START_SHAPE_CHANGED)
                elif h.setBasis(basis) == highspy.HighsStatus.kOk:
                    warm = True
                else:
                    self._code(ReasonCode.WARM_START_FAILED)
        h.run()
        ms = highspy.HighsModelStatus
        status = h.getModelStatus()
        if warm and status not in (ms.kOptimal, ms.kInfeasible):
            self._code(ReasonCode.WARM_START_FAILED)  # re-run cold rather than trust it
            h = self._new_highs()
            h.passModel(*lp)
            h.run()
            status = h.getModelStatus()
            warm = False
        info = h.getInfo()
        iters = int(info.simplex_iteration_count)
        k, s, j = len(p.cand_keys), len(p.sym_keys), p.seg_len.shape[1]
        z = np.zeros(0)
        if status == ms.kOptimal:
            sol = h.getSolution()
            col = np.asarray(sol.col_value, dtype=float)
            basis = h.getBasis()
            self.warm = WarmStart(
                structure=p.structure(),
                col_keys=np.array(lay.col_keys),
                col_status=np.array(basis.col_status, dtype=np.int8),
                row_keys=np.array(lay.row_keys),
                row_status=np.array(basis.row_status, dtype=np.int8),
            )
            return _Solution(
                STATUS_OPTIMAL,
                col[lay.ox : lay.ox + k],
                col[lay.oh : lay.oh + s],
                col[lay.ow : lay.ow + s],
                col[lay.ob : lay.oq].reshape(s, j).sum(axis=1),
                col[lay.oq : lay.oz].reshape(s, j).sum(axis=1),
                np.asarray(sol.row_value, dtype=float),
                -float(info.objective_function_value),
                iters,
                0.0,
            ), warm
        st = STATUS_INFEASIBLE if status in (ms.kInfeasible, ms.kUnboundedOrInfeasible) else STATUS_FAILED
        return _Solution(st, z, z, z, z, z, z, float("nan"), iters, 0.0, h.modelStatusToString(status)), warm

    def _code(self, code: ReasonCode) -> None:
        if code not in self.warm_codes:
            self.warm_codes.append(code)


# --- result --------------------------------------------------------------------------------


@dataclass
class AuctionResult:
    """Outcome of one auction: per-candidate (§F2) and per-symbol tables, portfolio summary."""

    allocations: pd.DataFrame
    symbols: pd.DataFrame
    status: str  # OPTIMAL / INFEASIBLE / SOLVER_FAILED / NO_CANDIDATES
    objective: float  # Σ x μ − trade costs − penalty − λ CVaR(w), CVaR exact
    expected_return: float  # Σ x μ (H sessions)
    total_cost: float  # impact of tonight's trades (return fraction of NAV)
    turnover: float  # Σ |w − w_now|
    cvar: float
    var: float
    invested: float  # Σ w (incl. unclaimed holdings)
    solve_time_s: float
    total_time_s: float
    solver: str
    iterations: int
    component_iterations: int
    scale: float  # uniform scale applied after the solve (1.0 = none)
    warm_started: bool
    reason_codes: list[ReasonCode]
    params: AuctionParams
    solver_state: AuctionSolver | None = field(default=None, repr=False)
    message: str = ""
    component_gap_bound: float = float("nan")  # objective lost to the component loop vs round 0 (≥ true gap)

    @property
    def cash(self) -> float:
        return self.params.budget - self.invested

    @property
    def weights(self) -> pd.Series:
        """Weight per candidate_id."""
        return self.allocations.set_index("candidate_id")["weight"]

    def symbol_weights(self) -> pd.Series:
        """Target weight per symbol (all candidates plus unclaimed holdings)."""
        return self.symbols.set_index("symbol")["target_weight"].sort_index()

    @property
    def warm_start(self) -> WarmStart | None:
        return self.solver_state.warm if self.solver_state is not None else None

    def summary(self) -> dict[str, Any]:
        """Portfolio-level governance record (JSON-friendly)."""
        return {
            "status": self.status,
            "objective": self.objective,
            "expected_return": self.expected_return,
            "total_cost": self.total_cost,
            "turnover": self.turnover,
            "turnover_limit": self.params.turnover_limit,
            "cvar": self.cvar,
            "var": self.var,
            "invested": self.invested,
            "cash": self.cash,
            "n_allocated": int(self.allocations["allocated"].sum()) if len(self.allocations) else 0,
            "n_candidates": len(self.allocations),
            "n_trades": int((self.symbols["trade"].abs() > self.params.weight_tol).sum())
            if len(self.symbols)
            else 0,
            "horizon": self.params.horizon,
            "alpha": self.params.alpha,
            "risk_aversion": self.params.risk_aversion,
            "cvar_limit": self.params.cvar_limit,
            "component_cvar_limit": self.params.component_cvar_limit,
            "reduce_only": self.params.reduce_only or ReasonCode.REDUCE_ONLY in self.reason_codes,
            "scale": self.scale,
            "solver": self.solver,
            "solve_time_s": self.solve_time_s,
            "total_time_s": self.total_time_s,
            "iterations": self.iterations,
            "component_iterations": self.component_iterations,
            "component_gap_bound": self.component_gap_bound,
            "warm_started": self.warm_started,
            "reason_codes": codes_str(self.reason_codes),
            "message": self.message,
        }


# --- inputs --------------------------------------------------------------------------------


def _resolve_scenarios(
    symbols: list[str],
    scenarios: np.ndarray | pd.DataFrame | Scenarios,
    probs: np.ndarray | None,
    params: AuctionParams,
    scenario_keys: list[Any] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(T×S matrix in `symbols` order, probs, per-symbol 'has complete scenarios', keys)."""
    if isinstance(scenarios, Scenarios):
        if scenarios.horizon != params.horizon:
            raise ValueError(
                f"scenarios are on a {scenarios.horizon}-session horizon, the auction on "
                f"{params.horizon}: μ and CVaR must share the horizon (§F1a)"
            )
        if probs is None:
            probs = scenarios.probs
        if scenario_keys is None:
            scenario_keys = list(scenarios.end_dates)
        scenarios = scenarios.to_frame()
    if isinstance(scenarios, pd.DataFrame):
        if scenario_keys is None:
            scenario_keys = list(scenarios.index)
        r = scenarios.reindex(columns=pd.Index(symbols)).to_numpy(dtype=float)
    else:
        r = np.asarray(scenarios, dtype=float)
        if r.ndim != 2 or r.shape[1] != len(symbols):
            raise ValueError(
                f"scenario matrix has shape {r.shape}; expected (T, {len(symbols)}) in symbol order"
            )
    t = r.shape[0]
    if probs is None:
        p = np.full(t, 1.0 / t) if t else np.empty(0)
    else:
        p = np.asarray(probs, dtype=float)
        if p.shape != (t,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("probs must be a non-negative vector of length T with positive mass")
        p = p / p.sum()
    has = np.isfinite(r).all(axis=0) if t else np.zeros(len(symbols), dtype=bool)
    keys = [str(getattr(k, "isoformat", lambda k=k: k)()) for k in scenario_keys] if scenario_keys else []
    if len(keys) != t or len(set(keys)) != t:
        keys = [str(i) for i in range(t)]
    return np.where(np.isfinite(r), r, 0.0), p, has, keys


def impact_segments(
    trade_cap: np.ndarray, half_spread: np.ndarray, impact_coef: np.ndarray, n_segments: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chord interpolation of ``C(v) = v·(a + k·√v)`` on ``[0, trade_cap]`` at ``cap·2^{−j}``.

    Returns (segment lengths, slopes), each (S, J); slopes increase along a row (C is convex),
    and the interpolant is ≥ C everywhere (chords of a convex function lie above it).
    """
    cap = np.asarray(trade_cap, dtype=float)
    j = n_segments
    frac = np.concatenate([[0.0], 2.0 ** -np.arange(j - 1, -1, -1.0)])  # 0, 2^{-(J-1)}, …, 1
    brk = cap[:, None] * frac[None, :]
    c = brk * (half_spread[:, None] + impact_coef[:, None] * np.sqrt(brk))
    length = np.diff(brk, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(
            length > 0, np.diff(c, axis=1) / np.where(length > 0, length, 1.0), half_spread[:, None]
        )
    return length, slope


def trade_cost(trade: np.ndarray, seg_len: np.ndarray, seg_slope: np.ndarray) -> np.ndarray:
    """The LP's cost of |trade| per symbol: fill the segments in order (they are convex)."""
    v = np.abs(np.asarray(trade, dtype=float))
    cum = np.cumsum(seg_len, axis=1)
    start = cum - seg_len
    fill = np.clip(v[:, None] - start, 0.0, seg_len)
    return (fill * seg_slope).sum(axis=1)


def _col(frame: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in frame.columns:
        return np.full(len(frame), default)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def run_capital_auction(
    candidates: pd.DataFrame,
    scenarios: np.ndarray | pd.DataFrame | Scenarios,
    probs: np.ndarray | None = None,
    params: AuctionParams | None = None,
    solver_state: AuctionSolver | None = None,
    *,
    scenario_keys: list[Any] | None = None,
    book: pd.DataFrame | None = None,
    strategy_caps: Mapping[str, float] | None = None,
    group_caps: Mapping[str, Mapping[str, float]] | None = None,
    warm_start: WarmStart | None = None,
) -> AuctionResult:
    """Run the capital auction (§F). Pure: same inputs → same result; never raises on solve failure.

    Parameters
    ----------
    candidates:
        One row per candidate. Required: ``candidate_id``, ``strategy_id``, ``symbol``, ``mu_adj``
        (expected simple return over the horizon, after §D penalties). Optional: ``cost`` (linear
        one-way cost per unit of traded weight, used for symbols the ``book`` gives no impact
        for; NaN → vetoed with ``MISSING_IMPACT_ESTIMATE``), candidate caps ``cap_mandate``,
        ``cap_stage``, ``cap_liquidity``, ``cap_quality``, ``cap_crisis`` (a missing column
        imposes nothing, NaN caps at 0 — fail closed), ``eligibility`` (VALID / INVALID_DATA /
        INSUFFICIENT_HISTORY / DECOMMISSIONED; other → INVALID_DATA), ``sector``/``asset_class``
        (for ``group_caps``), pass-through ``data_quality_penalty``, ``model_decay_penalty``.
    scenarios:
        H-session simple-return scenarios: :class:`Scenarios`, a DataFrame (columns = symbols) or
        a (T, S) array whose columns follow the sorted symbol list of candidates ∪ book.
    book:
        One row per symbol (held or tradable), optional: ``symbol``, ``current_weight`` (weight of
        NAV held at the as-of close), ``trade_cap`` (max |Δw| tonight, ADV participation; NaN → 0),
        ``half_spread`` and ``impact_coef`` (one-way §H1 cost ``v·(a + k√v)``; NaN → no impact
        estimate → no trade), symbol caps ``cap_symbol``, ``cap_symbol_quality``,
        ``cap_symbol_crisis``, ``exit_reason`` (INELIGIBLE_SYMBOL / DECOMMISSIONED / INVALID_DATA:
        sell down to 0 within ``trade_cap``), ``sector``, ``asset_class``.
    strategy_caps:
        Exact cap on each strategy's total (§E2 lifecycle NAV cap).
    group_caps:
        ``{"sector": {name: cap}, "asset_class": {name: cap}}``: caps on group totals.
    solver_state / warm_start:
        The previous :class:`AuctionSolver` (in process) or a saved :class:`WarmStart` (across
        runs): the solve starts from that basis, mapped by key.
    """
    t_start = time.perf_counter()
    params = params or AuctionParams()
    missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidates lack required columns {missing}")
    cand = candidates.reset_index(drop=True)
    n = len(cand)
    bk = (book.copy() if book is not None else pd.DataFrame({"symbol": pd.Series(dtype=str)})).reset_index(
        drop=True
    )
    if "symbol" not in bk.columns:
        raise ValueError("book lacks a 'symbol' column")
    bk["symbol"] = bk["symbol"].astype(str)
    if bk["symbol"].duplicated().any():
        raise ValueError("book has duplicate symbols")
    cand_sym_names = cand["symbol"].astype(str).to_numpy()
    sym_keys = sorted(set(cand_sym_names) | set(bk["symbol"]))
    s_n = len(sym_keys)
    in_book = set(bk["symbol"])
    bk = bk.set_index("symbol").reindex(sym_keys)
    sym_pos = {y: i for i, y in enumerate(sym_keys)}
    cand_sym = np.array([sym_pos[y] for y in cand_sym_names], dtype=np.int64)
    r, p, has_data, keys = _resolve_scenarios(sym_keys, scenarios, probs, params, scenario_keys)
    t = r.shape[0]

    mu = pd.to_numeric(cand["mu_adj"], errors="coerce").to_numpy(dtype=float)
    cost_c = _col(cand, "cost", 0.0)
    eligibility = (
        cand["eligibility"].fillna("VALID").astype(str).str.upper().to_numpy()
        if "eligibility" in cand.columns
        else np.full(n, "VALID", dtype=object)
    )
    reasons: list[list[ReasonCode]] = [[] for _ in range(n)]
    veto_reason = np.full(n, "", dtype=object)
    vetoed = np.zeros(n, dtype=bool)

    def veto(i: int, code: ReasonCode, text: str | None = None) -> None:
        if not vetoed[i]:
            veto_reason[i] = text or str(code)
        vetoed[i] = True
        reasons[i].append(code)

    for i, status in enumerate(eligibility):
        if status != "VALID":
            code = ELIGIBILITY_EXCLUSIONS.get(status, ReasonCode.EXCLUDED_INVALID_DATA)
            veto(
                i,
                code,
                None if status in ELIGIBILITY_EXCLUSIONS else f"{code}: unknown eligibility {status!r}",
            )
    for i in range(n):
        if not has_data[cand_sym[i]] or t == 0:
            veto(
                i,
                ReasonCode.EXCLUDED_INSUFFICIENT_HISTORY,
                "EXCLUDED_INSUFFICIENT_HISTORY: no complete scenarios",
            )
        if not np.isfinite(mu[i]):
            veto(i, ReasonCode.INSUFFICIENT_FEATURES, "INSUFFICIENT_FEATURES: mu_adj missing")
        if not np.isfinite(cost_c[i]) or cost_c[i] < 0:
            veto(i, ReasonCode.MISSING_IMPACT_ESTIMATE)

    # Candidate caps: the tightest source wins; NaN caps at 0 (fail closed).
    cap_table = pd.DataFrame(index=cand.index)
    for c in CAP_SOURCES:
        if c in cand.columns:
            cap_table[c] = pd.to_numeric(cand[c], errors="coerce").fillna(0.0).clip(lower=0.0)
    source_cap = cap_table.min(axis=1).to_numpy(dtype=float) if len(cap_table.columns) else np.full(n, np.inf)
    source_cap = np.where(np.isnan(source_cap), np.inf, source_cap)
    non_positive = params.require_positive_mu & (np.where(np.isfinite(mu), mu, 0.0) <= 0) & ~vetoed
    for i in np.flatnonzero(non_positive):
        reasons[i].append(ReasonCode.NON_POSITIVE_EXPECTED_RETURN)
    active = ~vetoed & ~non_positive
    cand_ub = np.where(active, np.minimum(source_cap, params.budget), 0.0)

    # --- symbols: book, costs, caps, exits ---------------------------------------------------
    w_now = np.nan_to_num(_col(bk, "current_weight", 0.0), nan=0.0).clip(min=0.0)
    sym_codes: list[list[ReasonCode]] = [[] for _ in range(s_n)]
    # Linear cost from candidates where the book gives no impact (the legacy per-candidate `cost`).
    a_fallback = np.zeros(s_n)
    if n:
        np.maximum.at(a_fallback, cand_sym, np.where(np.isfinite(cost_c), cost_c, 0.0))
    has_a = "half_spread" in bk.columns
    half = _col(bk, "half_spread", np.nan) if has_a else a_fallback
    coef = np.nan_to_num(_col(bk, "impact_coef", 0.0), nan=0.0) if has_a else np.zeros(s_n)
    if has_a:  # symbols only the candidates know about fall back to the candidates' linear cost
        half = np.where(~np.isin(sym_keys, list(in_book)), a_fallback, half)
    no_impact = ~np.isfinite(half) | ~np.isfinite(coef) | (half < 0) | (coef < 0)
    half = np.where(no_impact, 0.0, half)
    coef = np.where(no_impact, 0.0, coef)
    trade_cap = _col(bk, "trade_cap", np.inf)
    trade_cap = np.where(np.isnan(trade_cap), 0.0, np.clip(trade_cap, 0.0, None))  # NaN → 0: fail closed
    trade_cap = np.where(no_impact, 0.0, trade_cap)
    for i in np.flatnonzero(no_impact):
        sym_codes[i].append(ReasonCode.MISSING_IMPACT_ESTIMATE)

    sym_cap_table = pd.DataFrame(index=range(s_n))
    for c in SYMBOL_CAP_SOURCES:
        if c in bk.columns:
            sym_cap_table[c] = pd.to_numeric(bk[c], errors="coerce").fillna(0.0).clip(lower=0.0).to_numpy()
    sym_cap = (
        sym_cap_table.min(axis=1).to_numpy(dtype=float)
        if len(sym_cap_table.columns)
        else np.full(s_n, np.inf)
    )
    sym_cap = np.where(np.isnan(sym_cap), np.inf, sym_cap)
    exit_reason = (
        bk["exit_reason"].fillna("").astype(str).str.upper().to_numpy()
        if "exit_reason" in bk.columns
        else np.full(s_n, "", dtype=object)
    )
    exiting = exit_reason != ""
    # A held symbol with no usable scenarios cannot be risk-measured: exit it (fail closed).
    no_scen = ~has_data & (w_now > 0)
    exit_reason = np.where(no_scen & ~exiting, "INVALID_DATA", exit_reason)
    exiting = exit_reason != ""
    for i in np.flatnonzero(exiting):
        sym_codes[i].append(EXIT_REASONS.get(exit_reason[i], ReasonCode.EXIT_INELIGIBLE_SYMBOL))
    sym_cap = np.where(exiting, 0.0, sym_cap)
    # Symbols without complete scenarios get no weight beyond what cannot be sold tonight.
    sym_cap = np.where(has_data, sym_cap, 0.0)

    # Reduce-only: §C4 (params.reduce_only, crisis) or §G3 (the held book breaches the limit).
    port_codes: list[ReasonCode] = []
    reduce_only = params.reduce_only
    cvar_now = portfolio_cvar(w_now, r, params.alpha, p).cvar if (t and w_now.any()) else 0.0
    if params.cvar_limit is not None and cvar_now > params.cvar_limit * (1 + 1e-9):
        reduce_only = True
        port_codes.append(ReasonCode.PORTFOLIO_CVAR_BREACH)
    if reduce_only:
        port_codes.append(ReasonCode.REDUCE_ONLY)

    lam = params.risk_aversion
    budget_hi = params.budget
    budget_lo = params.budget if params.budget_equality else params.min_investment
    # Where there is no participation cap, no trade can exceed the largest possible position change.
    finite_cap = np.where(
        np.isfinite(trade_cap),
        trade_cap,
        w_now + np.minimum(np.where(np.isfinite(sym_cap), sym_cap, budget_hi), budget_hi),
    )
    seg_len, seg_slope = impact_segments(finite_cap, half, coef, params.impact_segments)
    seg_slope = seg_slope + params.turnover_penalty
    min_reach = np.clip(w_now - finite_cap, 0.0, None)  # the lowest weight reachable tonight

    # Strategies and groups.
    strat_keys: list[str] = []
    strat_members: list[np.ndarray] = []
    strat_cap: list[float] = []
    if strategy_caps:
        sid = cand["strategy_id"].astype(str).to_numpy()
        for g in sorted(set(sid)):
            if g in strategy_caps:
                cap = float(strategy_caps[g])
                strat_keys.append(g)
                strat_members.append(np.flatnonzero(sid == g))
                strat_cap.append(0.0 if not np.isfinite(cap) else max(cap, 0.0))
    group_keys: list[str] = []
    group_members: list[np.ndarray] = []
    group_cap: list[float] = []
    group_of: dict[str, dict[int, str]] = {}
    for kind, caps in (group_caps or {}).items():
        labels = pd.Series("", index=range(s_n), dtype=object)
        if kind in bk.columns:
            labels[:] = bk[kind].fillna("").astype(str).to_numpy()
        if kind in cand.columns:
            first = pd.Series(cand[kind].astype(str).to_numpy(), index=cand_sym).groupby(level=0).first()
            blank = labels == ""
            labels[blank] = first.reindex(labels.index[blank]).fillna("").to_numpy()
        group_of[kind] = dict(labels.items())
        for name, cap in sorted(caps.items()):
            members = np.flatnonzero(labels.to_numpy() == name)
            if len(members):
                group_keys.append(f"{kind}:{name}")
                group_members.append(members)
                # relaxed to what can be sold tonight (the book may already be above it)
                group_cap.append(max(float(cap), float(min_reach[members].sum())))
    budget_hi = max(budget_hi, float(min_reach.sum()))

    def make_problem(component_cap: np.ndarray) -> _Problem:
        ub = np.minimum(sym_cap, component_cap)
        if reduce_only:
            ub = np.minimum(ub, w_now)
        ub_raw = ub
        ub = np.maximum(ub, min_reach)  # cut above a cap as fast as participation allows
        forced = np.clip(w_now - ub, 0.0, None).sum() + sum(
            max(0.0, float(w_now[m].sum()) - c) for m, c in zip(group_members, group_cap, strict=True)
        )
        turnover_hi = None
        if params.turnover_limit is not None and not reduce_only:
            turnover_hi = params.turnover_limit + forced
        return _Problem(
            cand_keys=[str(c) for c in cand["candidate_id"]],
            cand_sym=cand_sym,
            mu=np.where(np.isfinite(mu), mu, 0.0),
            cand_ub=cand_ub,
            sym_keys=sym_keys,
            w_now=w_now,
            sym_ub=ub,
            sym_ub_raw=ub_raw,
            seg_len=seg_len,
            seg_slope=seg_slope,
            buy_ok=np.full(s_n, not reduce_only),
            strat_keys=strat_keys,
            strat_members=strat_members,
            strat_cap=np.asarray(strat_cap, dtype=float),
            group_keys=group_keys,
            group_members=group_members,
            group_cap=np.asarray(group_cap, dtype=float),
            budget_lo=budget_lo,
            budget_hi=budget_hi,
            turnover_hi=turnover_hi,
            returns=r,
            pt=p / (1.0 - params.alpha),
            scen_keys=keys,
            lam=lam,
            cvar_limit=params.cvar_limit,
        )

    solver = solver_state if solver_state is not None else AuctionSolver(params)
    solver.params = params
    solver.warm_codes = []
    if warm_start is not None:
        solver.warm = warm_start
    status = STATUS_OPTIMAL
    message = ""
    total_solve = 0.0
    iterations = 0
    comp_iters = 0
    polish_rounds = 0
    warm_started = False
    scale = 1.0
    x = np.zeros(n)
    h_un = np.zeros(s_n)
    w = w_now.copy()
    comp_cap = np.full(s_n, np.inf)
    comp_bound = np.zeros(s_n, dtype=bool)
    first_obj = float("nan")
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    last_sol: _Solution | None = None
    last_problem: _Problem | None = None
    best_problem: _Problem | None = None

    if n + s_n == 0 or t == 0 or (not active.any() and not (w_now > 0).any()):
        status = STATUS_NO_CANDIDATES
        port_codes.append(ReasonCode.AUCTION_NO_CANDIDATES)
    else:
        limit_c = params.component_cvar_limit
        for it in range(params.max_component_iterations + 1):
            prob = make_problem(comp_cap)
            sol, warm = solver.solve(prob)
            total_solve += sol.time_s
            iterations += sol.iterations
            warm_started = warm_started or (it == 0 and warm)
            last_sol, last_problem = sol, prob
            if sol.status != STATUS_OPTIMAL:
                status, message = sol.status, sol.message
                break
            wi = np.clip(sol.w, 0.0, None)
            obj = _objective(sol.x, p, r, wi, w_now, prob, params)
            if it == 0:
                first_obj = obj
            res = portfolio_cvar(wi, r, params.alpha, p)
            over = (
                res.component > limit_c * (1 + 1e-9) + 1e-12
                if limit_c is not None
                else np.zeros(s_n, dtype=bool)
            )
            # Positions that participation keeps above their cap cannot be fixed tonight.
            over &= wi > min_reach + 1e-12
            if not over.any():
                if best is None or obj > best[0] + 1e-15:
                    best = (obj, sol.x.copy(), sol.h.copy(), wi.copy(), comp_cap.copy(), sol.row_value.copy())
                    best_problem = prob
                if limit_c is None or it == params.max_component_iterations:
                    break
            if limit_c is None or it == params.max_component_iterations:
                break
            # Tighten the offenders' caps to limit / marginal at this tail (monotone, so it converges);
            # the tail-region polish below recovers what over-tightening lost.
            m = res.marginal
            new_cap = np.where(m > 0, limit_c / np.where(m > 0, m, 1.0) * (1 - 1e-9), np.inf)
            if not over.any():
                break
            comp_cap = np.where(over, np.minimum(new_cap, comp_cap), comp_cap)
            comp_iters += 1
        if status == STATUS_OPTIMAL and best is not None and limit_c is not None and comp_iters:
            for _ in range(params.polish_rounds):
                improved = False
                for reg in _tail_regions(best[3], r, p, params.alpha, params.polish_neighbors):
                    sol_p, prob_p, comp_cap_p, secs = _region_solve(reg, make_problem, r, p, params, limit_c)
                    total_solve += secs
                    if sol_p is None:
                        continue
                    obj_p = _objective(sol_p.x, p, r, sol_p.w, w_now, prob_p, params)
                    if obj_p > best[0] + 1e-12:
                        best = (
                            obj_p,
                            sol_p.x.copy(),
                            sol_p.h.copy(),
                            sol_p.w.copy(),
                            comp_cap_p,
                            sol_p.row_value.copy(),
                        )
                        best_problem = prob_p
                        improved = True
                if not improved:
                    break
                polish_rounds += 1
        if status == STATUS_OPTIMAL:
            if best is not None:
                _, x, h_un, w, comp_cap_used, _ = best
                comp_bound = np.isfinite(comp_cap_used) & (w >= comp_cap_used - 1e-9) & (w > 0)
                if limit_c is not None:  # the exact component at its limit is the binding one
                    at_limit = portfolio_cvar(w, r, params.alpha, p).component >= limit_c * (1 - 1e-7)
                    comp_bound = (comp_bound | at_limit) & (w > 0)
                last_problem = best_problem
            else:
                # No round met every component limit: scale the last book down (homogeneity), no
                # lower than what cannot be sold tonight.
                assert last_sol is not None
                wi = np.clip(last_sol.w, 0.0, None)
                res = portfolio_cvar(wi, r, params.alpha, p)
                over = res.component > limit_c * (1 + 1e-9)  # type: ignore[operator]
                scale = float(np.min(limit_c / res.component[over]))  # type: ignore[operator]
                w = np.maximum(wi * scale, np.minimum(min_reach, wi))
                ratio = np.where(wi > 0, w / np.where(wi > 0, wi, 1.0), 0.0)
                x = last_sol.x * ratio[cand_sym]
                h_un = last_sol.h * ratio
                port_codes.append(ReasonCode.SCALED_FOR_CVAR)
            if comp_iters:
                port_codes.append(ReasonCode.COMPONENT_CVAR_BREACH)
        elif status == STATUS_INFEASIBLE:
            port_codes.append(ReasonCode.AUCTION_INFEASIBLE)
        else:
            status = STATUS_FAILED
            port_codes.append(ReasonCode.AUCTION_SOLVER_FAILED)
    if status != STATUS_OPTIMAL:
        x, h_un, w = np.zeros(n), w_now.copy(), w_now.copy()  # allocate nothing, trade nothing
    port_codes += solver.warm_codes

    x = np.where(x < params.weight_tol, 0.0, x)
    w = np.where(np.abs(w) < params.weight_tol, 0.0, w)
    trade = w - w_now
    trade = np.where(np.abs(trade) < params.weight_tol, 0.0, trade)
    tcost = trade_cost(trade, seg_len, seg_slope - params.turnover_penalty)
    res_f = portfolio_cvar(w, r, params.alpha, p) if (t and s_n) else None
    comp = res_f.component if res_f is not None else np.zeros(s_n)
    marg = res_f.marginal if res_f is not None else np.full(s_n, np.nan)
    cvar_v = res_f.cvar if res_f is not None else 0.0
    var_v = res_f.var if res_f is not None else 0.0

    # --- which constraint binds (primal tightness of the final LP) ---------------------------
    prob_f = last_problem
    strat_tight: dict[str, bool] = {}
    group_tight: list[bool] = []
    cvar_tight = budget_tight = turnover_tight = False
    if status == STATUS_OPTIMAL and prob_f is not None:
        sid = cand["strategy_id"].astype(str).to_numpy()
        for g, members, cap in zip(prob_f.strat_keys, prob_f.strat_members, prob_f.strat_cap, strict=True):
            strat_tight[g] = x[members].sum() >= cap - _TOL and cap > 0 or cap <= 0
        group_tight = [
            w[m].sum() >= c - _TOL for m, c in zip(prob_f.group_members, prob_f.group_cap, strict=True)
        ]
        cvar_tight = params.cvar_limit is not None and cvar_v >= params.cvar_limit - 1e-8
        budget_tight = w.sum() >= prob_f.budget_hi - _TOL
        turnover_tight = prob_f.turnover_hi is not None and np.abs(trade).sum() >= prob_f.turnover_hi - 1e-8
        sym_ub_f, sym_ub_raw_f = prob_f.sym_ub, prob_f.sym_ub_raw
        group_sets = [set(m.tolist()) for m in prob_f.group_members]
    else:
        sid = cand["strategy_id"].astype(str).to_numpy()
        sym_ub_raw_f = np.minimum(sym_cap, comp_cap)
        sym_ub_f = np.maximum(sym_ub_raw_f, min_reach)
        group_sets = []

    sym_binding: list[list[str]] = [[] for _ in range(s_n)]
    for i in range(s_n):
        if status != STATUS_OPTIMAL:
            continue
        names, codes_i = sym_binding[i], sym_codes[i]
        relaxed = sym_ub_raw_f[i] < min_reach[i] - _TOL  # the cap is below what can be sold tonight
        if exiting[i]:
            names.append("exit")
        if not relaxed and not exiting[i] and comp_bound[i]:
            names.append(COMPONENT_CAP)
            codes_i.append(ReasonCode.COMPONENT_CVAR_BREACH)
        elif not relaxed and w[i] >= sym_ub_raw_f[i] - _TOL and not exiting[i]:
            if reduce_only and w_now[i] < sym_cap[i] - _TOL:
                names.append("reduce_only")
            else:
                for c in sym_cap_table.columns:
                    if sym_cap_table.at[i, c] <= sym_cap[i] + 1e-15:
                        name, code = SYMBOL_CAP_SOURCES[c]
                        names.append(name)
                        codes_i.append(code)
        if trade[i] != 0 and abs(trade[i]) >= finite_cap[i] - _TOL:
            names.append("participation")
            codes_i.append(ReasonCode.CAPPED_BY_PARTICIPATION)
            if relaxed and not exiting[i]:
                codes_i.append(ReasonCode.FORCED_REDUCTION)
        for g, tight in enumerate(group_tight):
            if tight and i in group_sets[g]:
                names.append(f"group:{prob_f.group_keys[g]}")  # type: ignore[union-attr]
                codes_i.append(ReasonCode.CAPPED_BY_GROUP_LIMIT)

    # --- per-candidate table --------------------------------------------------------------
    binding = np.full(n, "", dtype=object)
    share = np.zeros(n)
    claimed = np.bincount(cand_sym, weights=x, minlength=s_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(w[cand_sym] > 0, x / np.where(w[cand_sym] > 0, w[cand_sym], 1.0), 0.0)
    cap_names = list(cap_table.columns)
    for i in range(n):
        if vetoed[i]:
            reasons[i].append(ReasonCode.NOT_ALLOCATED)
            continue
        names: list[str] = []
        si = cand_sym[i]
        cap_i = source_cap[i]
        if status == STATUS_OPTIMAL:
            if np.isfinite(cap_i) and (x[i] >= cap_i - 1e-7 or cap_i <= 0):
                for c in cap_names:
                    if cap_table.at[i, c] <= cap_i + 1e-15:
                        short, code = CAP_SOURCES[c]
                        names.append(short)
                        reasons[i].append(code)
            # symbol-level, strategy-level and portfolio-level constraints that bind this candidate
            for nm in sym_binding[si]:
                if nm not in names:
                    names.append(nm)
            if strat_tight.get(sid[i], False):
                names.append("strategy_cap")
                reasons[i].append(ReasonCode.CAPPED_BY_STAGE)
            if turnover_tight:
                names.append("turnover")
            if cvar_tight and not names:
                names.append("portfolio_cvar")
            if budget_tight and not names:
                names.append("budget")
            reasons[i] += [c for c in sym_codes[si] if c not in reasons[i]]
        binding[i] = ";".join(names)
        if scale < 1.0 and x[i] > 0:
            reasons[i].append(ReasonCode.SCALED_FOR_CVAR)
        if status == STATUS_INFEASIBLE:
            reasons[i] += [ReasonCode.AUCTION_INFEASIBLE, ReasonCode.NOT_ALLOCATED]
        elif status == STATUS_FAILED:
            reasons[i] += [ReasonCode.AUCTION_SOLVER_FAILED, ReasonCode.NOT_ALLOCATED]
        elif x[i] > 0:
            reasons[i].append(ReasonCode.ALLOCATED)
        else:
            if not non_positive[i] and not names:
                reasons[i].append(ReasonCode.ZERO_WEIGHT_AT_OPTIMUM)
            reasons[i].append(ReasonCode.NOT_ALLOCATED)

    order = np.lexsort((-np.where(np.isfinite(mu), mu, -np.inf), -x))
    rank = pd.array([pd.NA] * n, dtype="Int64")
    kk = 1
    for i in order:
        if not vetoed[i]:
            rank[i] = kk
            kk += 1
    allocated = x > 0
    cand_comp = comp[cand_sym] * share if n else np.zeros(0)
    book_ret = r @ w if t else np.empty(0)
    corr_sym = _weighted_corr(r, book_ret, p) if (t and w.any()) else np.full(s_n, np.nan)
    out = pd.DataFrame(
        {
            "candidate_id": cand["candidate_id"].to_numpy(),
            "strategy_id": cand["strategy_id"].to_numpy(),
            "symbol": cand_sym_names,
            "eligibility": eligibility,
            "allocated": allocated,
            "weight": x,
            "rank": rank,
            "decision": np.where(vetoed, "EXCLUDED", np.where(allocated, "ALLOCATED", "NOT_ALLOCATED")),
            "reason_codes": [codes_str(c) for c in reasons],
            "mu_adj": mu,
            "cost": cost_c,
            "mu_contribution": x * np.where(np.isfinite(mu), mu, 0.0),
            "liquidity_cost": tcost[cand_sym] * share if n else np.zeros(0),
            "cvar_contribution": cand_comp,
            "marginal_cvar": marg[cand_sym] if n else np.zeros(0),
            "correlation": corr_sym[cand_sym] if n else np.zeros(0),
            "data_quality_penalty": _col(cand, "data_quality_penalty", np.nan),
            "model_decay_penalty": _col(cand, "model_decay_penalty", np.nan),
            "vetoed": vetoed,
            "veto_reason": veto_reason,
            "cap": np.where(vetoed, 0.0, np.minimum(source_cap, params.budget)),
            "binding_cap": binding,
        },
        columns=OUTPUT_COLUMNS,
    )

    # --- per-symbol table -------------------------------------------------------------------
    sym_dec = []
    for i in range(s_n):
        if status != STATUS_OPTIMAL:
            d = "HOLD" if w_now[i] > 0 else "NONE"
        elif exiting[i]:
            d = "EXIT" if w[i] == 0 else "EXITING"
        elif trade[i] > 0:
            d = "BUY"
        elif trade[i] < 0:
            d = "SELL" if w[i] > 0 else "CLOSE"
        else:
            d = "HOLD" if w[i] > 0 else "NONE"
        sym_dec.append(d)
        if status == STATUS_OPTIMAL and h_un[i] > params.weight_tol:
            sym_codes[i].append(ReasonCode.HELD_UNCLAIMED)
        if status == STATUS_INFEASIBLE:
            sym_codes[i].append(ReasonCode.AUCTION_INFEASIBLE)
        elif status == STATUS_FAILED:
            sym_codes[i].append(ReasonCode.AUCTION_SOLVER_FAILED)
    symbols_out = pd.DataFrame(
        {
            "symbol": sym_keys,
            "current_weight": w_now,
            "target_weight": w,
            "trade": trade,
            "buy": np.clip(trade, 0.0, None),
            "sell": np.clip(-trade, 0.0, None),
            "trade_cost": tcost,
            "trade_cap": trade_cap,
            "cap": sym_ub_f,
            "n_candidates": np.bincount(cand_sym, minlength=s_n),
            "claimed_weight": claimed,
            "unclaimed_weight": np.where(w > 0, np.clip(w - claimed, 0.0, None), 0.0),
            "cvar_contribution": comp,
            "marginal_cvar": marg,
            "decision": sym_dec,
            "binding_constraint": [";".join(b) for b in sym_binding],
            "reason_codes": [codes_str(c) for c in sym_codes],
        },
        columns=SYMBOL_COLUMNS,
    )
    exp_ret = float(out["mu_contribution"].sum())
    tot_cost = float(tcost.sum())
    turnover = float(np.abs(trade).sum())
    objective = (
        exp_ret - tot_cost - params.turnover_penalty * turnover - lam * cvar_v
        if status == STATUS_OPTIMAL
        else float("nan")
    )
    gap = (
        float(first_obj - objective)
        if (status == STATUS_OPTIMAL and np.isfinite(first_obj))
        else float("nan")
    )
    return AuctionResult(
        allocations=out,
        symbols=symbols_out,
        status=status,
        objective=float(objective),
        expected_return=exp_ret,
        total_cost=tot_cost,
        turnover=turnover,
        cvar=float(cvar_v),
        var=float(var_v),
        invested=float(w.sum()),
        solve_time_s=total_solve,
        total_time_s=time.perf_counter() - t_start,
        solver=solver._name(),
        iterations=iterations,
        component_iterations=comp_iters,
        scale=scale,
        warm_started=warm_started,
        reason_codes=port_codes,
        params=params,
        solver_state=solver,
        message=message,
        component_gap_bound=max(gap, 0.0) if np.isfinite(gap) else gap,
    )


def _tail_regions(
    w: np.ndarray, r: np.ndarray, p: np.ndarray, alpha: float, n_neighbors: int
) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """The tail region of ``w`` and its nearest neighbours, each as (full members, boundary, θ).

    A region is a ranking of the tail: scenarios F carry their whole probability, the boundary b
    the rest of the 1 − α mass. Neighbours swap the boundary with the nearest scenarios outside
    the tail, or swap the boundary with the weakest full member (where the probabilities allow it)."""
    loss = -(r @ w)
    theta0 = portfolio_cvar(w, r, alpha, p).tail_weights
    tail = theta0 > 0
    idx_tail = np.flatnonzero(tail)
    b0 = int(idx_tail[np.argmin(loss[tail])])
    full0 = tail.copy()
    full0[b0] = False
    mass = 1.0 - alpha

    def region(full: np.ndarray, b: int) -> tuple[np.ndarray, int, np.ndarray] | None:
        rest = mass - p[full].sum()
        if rest <= 1e-15 or rest > p[b] * (1 + 1e-9):
            return None
        theta = np.where(full, p / mass, 0.0)
        theta[b] = rest / mass
        return full, b, theta

    out = [(full0, b0, theta0)]  # its own region, θ as the exact check shares it (ties included)
    outside = np.flatnonzero(~tail)
    for s in outside[np.argsort(-loss[outside])][:n_neighbors]:  # b leaves, s becomes the boundary
        out.append(region(full0, int(s)))
    if full0.any():
        f = int(np.flatnonzero(full0)[np.argmin(loss[full0])])
        full1 = full0.copy()  # b becomes a full member, the weakest full member the boundary
        full1[f], full1[b0] = False, True
        out.append(region(full1, f))

    return [x for x in out if x is not None]


def _region_solve(
    region: tuple[np.ndarray, int, np.ndarray],
    make_problem: Any,
    r: np.ndarray,
    p: np.ndarray,
    params: AuctionParams,
    limit_c: float,
) -> tuple[_Solution | None, _Problem, np.ndarray, float]:
    """Best book in one tail region: with its ranking held fixed, CVaR and every Euler component
    are linear, so the component limits are exact LP bounds there."""
    full, b, theta = region
    others = ~full
    others[b] = False
    rows_in = r[b][None, :] - r[full]  # L_t ≥ L_b for the full members
    rows_out = r[others] - r[b][None, :]  # L_b ≥ L_s for the rest
    m = -(theta @ r)
    cap = np.where(m > 0, limit_c / np.where(m > 0, m, 1.0) * (1 - 1e-9), np.inf)
    prob = make_problem(cap)
    prob.region_m = m
    prob.region_rows = np.vstack([rows_in, rows_out])
    sol, _ = AuctionSolver(params).solve(prob)
    if sol.status != STATUS_OPTIMAL:
        return None, prob, cap, sol.time_s
    wi = np.clip(sol.w, 0.0, None)
    check = portfolio_cvar(wi, r, params.alpha, p)
    # Ties at the boundary (an LP vertex) can share the tail differently from the fixed ranking:
    # the exact components may exceed the limit by a hair; scale down (homogeneity) to meet it.
    over = check.component > limit_c
    scale = float(np.min(limit_c / check.component[over])) if over.any() else 1.0
    if scale < 1.0:
        wi = wi * scale
        sol.x = sol.x * scale
        sol.h = sol.h * scale
        check = portfolio_cvar(wi, r, params.alpha, p)
    ok = (
        (check.component <= limit_c * (1 + 1e-9) + 1e-12).all()
        and (params.cvar_limit is None or check.cvar <= params.cvar_limit * (1 + 1e-9))
        and wi.sum() >= prob.budget_lo - 1e-9
    )
    ok = ok and bool((np.abs(wi - prob.w_now) <= prob.seg_len.sum(axis=1) + 1e-9).all())
    if not ok:
        return None, prob, cap, sol.time_s
    sol.w = wi
    return sol, prob, cap, sol.time_s


def _objective(
    x: np.ndarray,
    p: np.ndarray,
    r: np.ndarray,
    w: np.ndarray,
    w_now: np.ndarray,
    prob: _Problem,
    params: AuctionParams,
) -> float:
    """Exact objective of a book (historical CVaR, the LP's piecewise-linear trade cost)."""
    trade = w - w_now
    cost = trade_cost(trade, prob.seg_len, prob.seg_slope).sum()
    cv = portfolio_cvar(w, r, params.alpha, p).cvar if w.any() else 0.0
    return float(prob.mu @ x - cost - params.risk_aversion * cv)


def _weighted_corr(r: np.ndarray, book: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Probability-weighted correlation of each column of r with the book's returns."""
    rc = r - p @ r
    bc = book - p @ book
    cov = p @ (rc * bc[:, None])
    sd = np.sqrt(p @ rc**2) * np.sqrt(p @ bc**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, cov / np.where(sd > 0, sd, 1.0), np.nan)
