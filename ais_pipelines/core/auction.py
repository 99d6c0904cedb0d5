"""Capital auction (§F): every candidate competes for capital in one mean–CVaR linear program.

Problem (Rockafellar–Uryasev, on the scenario horizon H)::

    maximise    Σ_i w_i (μ_i − c_i)  −  λ · (ζ + 1/(1−α) Σ_t p_t u_t)
    subject to  u_t ≥ −r_t·w − ζ,  u_t ≥ 0          (scenario excess losses over ζ = VaR)
                ζ + 1/(1−α) Σ_t p_t u_t ≤ CVaR limit  (hard, §F1/§G4)
                min_investment ≤ Σ_i w_i ≤ budget     (cash allowed; or Σ w = budget)
                0 ≤ w_i ≤ min(cap_mandate, cap_stage, cap_liquidity, cap_quality, cap_crisis)

with μ = ``mu_adj`` (expected H-session simple return after the forecast penalties of §D),
c = ``cost`` (round-trip trading cost as a return fraction, from ``impact.py``), r_t the H-session
simple returns of scenario t with probability p_t, α = 0.95. At the optimum the bracket is the
historical CVaR of the book, exactly ``skfolio.measures.cvar`` (see ``cvar.py``).

Units and the default λ (§F1a)
------------------------------
μ and CVaR must be on the same horizon. ``horizon`` H = 5 sessions (one trading week: the
forecasts' horizon, long enough for expected returns to be visible over the noise, short enough
for a nightly rebalance). Expected returns grow like H and tail losses like √H, so the
reward-to-tail ratio μ/CVaR grows like √H and λ is meaningless without its horizon.

λ is the hurdle "expected H-return demanded per unit of H-CVaR": for a long-only book the
objective is positive only where μ_book / CVaR_book > λ, so with λ above the best achievable
ratio nothing is allocated. Measured on skfolio's S&P 500 sample (20 large caps, last 1260
sessions to 2022-12-28, μ = historical mean):

=====================  ==========  ===========
ratio μ/CVaR₉₅          H = 1        H = 5
=====================  ==========  ===========
single name, median     0.015        0.036
single name, best       0.037        0.091
equal-weight book       0.024        0.057
best long-only book     0.042        0.103
=====================  ==========  ===========

So λ = 1 on daily returns allocates nothing (the trap of §F1a: 1 ≫ 0.042), and any default must
sit well below the H = 5 ratios. ``DEFAULT_RISK_AVERSION = 0.03``: a book is funded only while it
expects more than 3 % of its 5-session CVaR per 5 sessions — at the 6 % CVaR limit that is
≥ 0.18 % a week (≈ 9 % a year), an equity-risk-premium-sized hurdle. It leaves room for μ_adj
being shrunk by model decay and disagreement (§D) and still produces a diversified book on the
sample (tested). Above the hurdle, sizing is set by the hard CVaR limit, the component limits,
the budget and the caps.

Component (per-position) CVaR limits (§G1/§G4)
-----------------------------------------------
Euler components ``w_i · E[−r_i | tail(w)]`` depend on which scenarios are in the tail, so they
are not linear in w and are not LP constraints. They are enforced after the solve:

1. Compute the components per *symbol* (candidates on the same symbol are one position).
2. For every symbol above the limit, tighten the caps of its candidates to
   ``w_i · limit / component`` and re-solve (warm-started; the other positions may pick up the
   freed budget). Repeat up to ``max_component_iterations`` times.
3. If a breach remains, scale the whole book by ``min(limit / component)`` — exact, since CVaR
   and its components are positively homogeneous — and tag ``SCALED_FOR_CVAR``.

Candidates whose cap was tightened carry ``COMPONENT_CVAR_BREACH``; their binding cap is
``component_cvar``. The portfolio limit is an LP constraint and is re-checked on the exact
historical CVaR afterwards (scaled if the solver tolerance left it a hair above).

Solvers
-------
The problem is built once per shape in an :class:`AuctionSolver` and re-solved with new data.
``backend="highs"`` (default) passes the LP to HiGHS directly and, on a re-solve, changes only
what changed (costs, bounds, the coefficients of new scenario rows) so the dual simplex restarts
from the previous optimal basis. ``scenario_keys`` (e.g. window end dates) line scenario rows up
between sessions: a rolled window then changes one row, not all of them. ``backend="cvxpy"``
builds the same problem once as a DPP cvxpy problem with Parameters (μ − c, caps, scenario
matrix, probabilities) and re-solves it with HiGHS through cvxpy (compiled once; only the
parameter values change). Measured end to end at N = 500, T = 1260 on a shared 2-core machine
(``benchmarks/results/auction.md``): skfolio MeanRisk (cvxpy + CLARABEL) ≈ 11 s, our cvxpy +
HiGHS backend ≈ 0.4–0.5 s per solve, direct HiGHS ≈ 0.4 s cold and ≈ 0.08 s for the next
session's warm re-solve — hence the default. HiGHS runs dual simplex without presolve and
scaling (``DEFAULT_HIGHS_OPTIONS``, ≈ 3× faster here); interior point was ≈ 5× slower than simplex cold and cannot be warm-started.

Failure is an outcome
---------------------
Infeasible problems (e.g. a minimum investment that no book can meet under the CVaR limit),
solver failures and "no eligible candidate" return an :class:`AuctionResult` with nothing
allocated and ``AUCTION_INFEASIBLE`` / ``AUCTION_SOLVER_FAILED`` / ``AUCTION_NO_CANDIDATES``;
they never raise. Contract violations by the caller (missing required columns, scenario shape or
horizon mismatch) do raise ``ValueError``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.core.cvar import (
    DEFAULT_ALPHA,
    DEFAULT_COMPONENT_LIMIT,
    DEFAULT_PORTFOLIO_LIMIT,
    CVaRResult,
    portfolio_cvar,
)
from ais_pipelines.core.reason_codes import ReasonCode, codes_str
from ais_pipelines.core.scenarios import DEFAULT_HORIZON, Scenarios

DEFAULT_RISK_AVERSION = 0.03  # λ on the 5-session horizon; see module docstring (§F1a)

# Measured on this LP (N = 100…2000, T = 1260): the data are already well scaled (returns of
# order 1e-2, unit budget row), and presolve/scaling only cost time — about 3× faster without.
DEFAULT_HIGHS_OPTIONS: tuple[tuple[str, Any], ...] = (("presolve", "off"), ("simplex_scale_strategy", 0))

REQUIRED_COLUMNS = ("candidate_id", "strategy_id", "symbol", "mu_adj", "cost")
CAP_SOURCES: dict[str, tuple[str, ReasonCode]] = {
    # column -> (short name for `binding_cap`, reason code)
    "cap_mandate": ("mandate", ReasonCode.CAPPED_BY_MANDATE),
    "cap_stage": ("stage", ReasonCode.CAPPED_BY_STAGE),
    "cap_liquidity": ("liquidity", ReasonCode.CAPPED_BY_LIQUIDITY),
    "cap_quality": ("quality", ReasonCode.CAPPED_BY_DATA_QUALITY),
    "cap_crisis": ("crisis", ReasonCode.CAPPED_BY_CRISIS_SCALING),
}
ELIGIBILITY_EXCLUSIONS: dict[str, ReasonCode] = {
    "INVALID_DATA": ReasonCode.EXCLUDED_INVALID_DATA,
    "INSUFFICIENT_HISTORY": ReasonCode.EXCLUDED_INSUFFICIENT_HISTORY,
    "DECOMMISSIONED": ReasonCode.EXCLUDED_DECOMMISSIONED,
}
PASS_THROUGH = ("data_quality_penalty", "model_decay_penalty")
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

STATUS_OPTIMAL = "OPTIMAL"
STATUS_INFEASIBLE = "INFEASIBLE"
STATUS_FAILED = "SOLVER_FAILED"
STATUS_NO_CANDIDATES = "NO_CANDIDATES"


@dataclass(frozen=True)
class AuctionParams:
    """Auction settings. Every return-like number is on the ``horizon`` (H sessions)."""

    horizon: int = DEFAULT_HORIZON
    alpha: float = DEFAULT_ALPHA
    risk_aversion: float = DEFAULT_RISK_AVERSION  # λ
    cvar_limit: float | None = DEFAULT_PORTFOLIO_LIMIT  # hard; None = no limit
    component_cvar_limit: float | None = DEFAULT_COMPONENT_LIMIT  # per symbol; None = off
    budget: float = 1.0  # Σw ≤ budget (rest is cash)
    budget_equality: bool = False  # Σw = budget (fully invested, as skfolio's default)
    min_investment: float = 0.0  # Σw ≥ min_investment
    require_positive_mu: bool = True  # μ − c ≤ 0 → not eligible for capital
    max_component_iterations: int = 10
    backend: str = "highs"  # "highs" (direct, warm-started) or "cvxpy"
    cvxpy_solver: str = "HIGHS"
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
        if self.backend not in ("highs", "cvxpy"):
            raise ValueError("backend must be 'highs' or 'cvxpy'")


@dataclass
class _SolveOutcome:
    status: str
    weights: np.ndarray | None
    objective: float
    solve_time_s: float
    solver: str
    iterations: int
    warm_started: bool
    message: str = ""


@dataclass
class _LPData:
    mu_net: np.ndarray  # (N,)
    caps: np.ndarray  # (N,) finite, ≥ 0
    returns: np.ndarray  # (T, N)
    probs: np.ndarray  # (T,) sums to 1


class AuctionSolver:
    """The auction LP, built once per shape and re-solved with new data.

    Keep the instance returned in :attr:`AuctionResult.solver_state` and pass it to the next
    :func:`run_capital_auction` call: if the shape (N candidates, T scenarios) and the problem
    structure are the same, only the data is updated and the solve is warm-started; otherwise
    the problem is rebuilt transparently.
    """

    # Above this many changed matrix entries a full model pass is cheaper than coefficient edits.
    MAX_INCREMENTAL_COEFFS = 50_000

    def __init__(self, n_assets: int, n_scenarios: int, params: AuctionParams) -> None:
        self.n_assets = n_assets
        self.n_scenarios = n_scenarios
        self.params = params
        self.solves = 0
        self._keys: list[Any] | None = None
        self._highs: Any = None
        self._lp_returns: np.ndarray | None = None  # (T, N) in slot order, as loaded in HiGHS
        self._lp_pt: np.ndarray | None = None
        self._lp_cost: np.ndarray | None = None
        self._lp_caps: np.ndarray | None = None
        self._cvx: dict[str, Any] | None = None

    # --- structure -------------------------------------------------------------------------
    def structure(self) -> tuple[Any, ...]:
        p = self.params
        return (
            self.n_assets,
            self.n_scenarios,
            p.backend,
            p.cvxpy_solver,
            p.alpha,
            p.cvar_limit is None,
            p.budget_equality,
            p.min_investment > 0,
        )

    def compatible(self, n_assets: int, n_scenarios: int, params: AuctionParams) -> bool:
        other = AuctionSolver(n_assets, n_scenarios, params)
        return other.structure() == self.structure()

    # --- scenario row alignment ---------------------------------------------------------------
    def _slots(self, keys: list[Any] | None) -> np.ndarray:
        """Slot (LP row) of each new scenario: rows whose key was seen last time keep their row."""
        t = self.n_scenarios
        if keys is None or len(set(keys)) != len(keys) or len(keys) != t:
            self._keys = None
            return np.arange(t)
        if self._keys is None:
            self._keys = list(keys)
            return np.arange(t)
        previous = {k: s for s, k in enumerate(self._keys)}
        slots = np.full(t, -1)
        for i, k in enumerate(keys):
            s = previous.get(k)
            if s is not None:
                slots[i] = s
        free = np.setdiff1d(np.arange(t), slots[slots >= 0])
        slots[slots < 0] = free
        new_keys: list[Any] = [None] * t
        for i, s in enumerate(slots):
            new_keys[s] = keys[i]
        self._keys = new_keys
        return slots

    # --- solve ---------------------------------------------------------------------------------
    def solve(self, data: _LPData, keys: list[Any] | None = None) -> _SolveOutcome:
        t0 = time.perf_counter()
        try:
            cvx = self.params.backend == "cvxpy"
            out = self._solve_cvxpy(data) if cvx else self._solve_highs(data, keys)
        except Exception as exc:  # a solver crash is an outcome (§F3), never an exception
            self._highs = None  # do not reuse a solver in an unknown state
            self._cvx = None
            out = _SolveOutcome(STATUS_FAILED, None, float("nan"), 0.0, self._name(), 0, False, repr(exc))
        out.solve_time_s = time.perf_counter() - t0
        self.solves += 1
        return out

    def _name(self) -> str:
        if self.params.backend == "cvxpy":
            return f"cvxpy+{self.params.cvxpy_solver}"
        return "highspy-simplex"

    # HiGHS column layout: [w_0..w_{N-1}, ζ, u_0..u_{T-1}]; rows: [scenario 0..T-1, budget, cvar]
    def _row_bounds(self) -> tuple[float, float, float]:
        p = self.params
        lo_budget = p.budget if p.budget_equality else p.min_investment
        limit = np.inf if p.cvar_limit is None else p.cvar_limit
        return lo_budget, p.budget, limit

    def _build_highs(self, r: np.ndarray, pt: np.ndarray, cost: np.ndarray, caps: np.ndarray) -> Any:
        import highspy

        inf = highspy.kHighsInf
        t, n = r.shape
        lam = self.params.risk_aversion
        ncol = n + 1 + t
        col_cost = np.concatenate([cost, [lam], lam * pt])
        col_lower = np.zeros(ncol)
        col_lower[n] = -inf
        col_upper = np.concatenate([caps, np.full(1 + t, inf)])
        # Column-wise matrix: each w_j has its T scenario coefficients plus 1 in the budget row;
        # ζ has T ones plus 1 in the cvar row; u_t has 1 in row t plus p_t/(1−α) in the cvar row.
        w_nnz = n * (t + 1)
        starts = np.empty(ncol + 1, dtype=np.int32)
        starts[: n + 1] = np.arange(n + 1) * (t + 1)
        starts[n + 1] = w_nnz + t + 1
        starts[n + 2 :] = starts[n + 1] + 2 * np.arange(1, t + 1)
        index = np.empty(starts[-1], dtype=np.int32)
        value = np.empty(starts[-1])
        w_idx = index[:w_nnz].reshape(n, t + 1)
        w_idx[:, :t] = np.arange(t)
        w_idx[:, t] = t
        w_val = value[:w_nnz].reshape(n, t + 1)
        w_val[:, :t] = r.T
        w_val[:, t] = 1.0
        index[w_nnz : w_nnz + t] = np.arange(t)
        index[w_nnz + t] = t + 1
        value[w_nnz : w_nnz + t + 1] = 1.0
        u_idx = index[w_nnz + t + 1 :].reshape(t, 2)
        u_idx[:, 0] = np.arange(t)
        u_idx[:, 1] = t + 1
        u_val = value[w_nnz + t + 1 :].reshape(t, 2)
        u_val[:, 0] = 1.0
        u_val[:, 1] = pt

        lo_budget, hi_budget, limit = self._row_bounds()
        row_lower = np.zeros(t + 2)
        row_upper = np.full(t + 2, inf)
        row_lower[t], row_upper[t] = lo_budget, hi_budget
        row_lower[t + 1], row_upper[t + 1] = -inf, (inf if not np.isfinite(limit) else limit)

        lp = highspy.HighsLp()
        lp.num_col_ = ncol
        lp.num_row_ = t + 2
        lp.col_cost_ = col_cost
        lp.col_lower_ = col_lower
        lp.col_upper_ = col_upper
        lp.row_lower_ = row_lower
        lp.row_upper_ = row_upper
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.num_col_ = ncol
        lp.a_matrix_.num_row_ = t + 2
        lp.a_matrix_.start_ = starts
        lp.a_matrix_.index_ = index
        lp.a_matrix_.value_ = value
        return lp

    def _solve_highs(self, data: _LPData, keys: list[Any] | None) -> _SolveOutcome:
        import highspy

        p = self.params
        n, t = self.n_assets, self.n_scenarios
        slots = self._slots(keys)
        r = np.empty_like(data.returns)
        r[slots] = data.returns
        pt = np.empty(t)
        pt[slots] = data.probs / (1.0 - p.alpha)
        cost = -data.mu_net
        caps = data.caps

        warm = self._highs is not None
        if not warm:
            h = highspy.Highs()
            h.silent()
            h.setOptionValue("solver", "simplex")
            for key, value in p.highs_options:
                h.setOptionValue(key, value)
            if p.time_limit_s is not None:
                h.setOptionValue("time_limit", float(p.time_limit_s))
            h.passModel(self._build_highs(r, pt, cost, caps))
            self._highs = h
        else:
            h = self._highs
            assert self._lp_returns is not None and self._lp_pt is not None
            changed = r != self._lp_returns
            n_changed = int(changed.sum())
            if n_changed > self.MAX_INCREMENTAL_COEFFS:
                basis = h.getBasis()
                h.passModel(self._build_highs(r, pt, cost, caps))
                if basis.valid:
                    h.setBasis(basis)
            else:
                rows, cols = np.nonzero(changed)
                for i, j, v in zip(rows.tolist(), cols.tolist(), r[rows, cols].tolist(), strict=True):
                    h.changeCoeff(i, j, v)
                if not np.array_equal(pt, self._lp_pt):
                    for s in np.flatnonzero(pt != self._lp_pt).tolist():
                        h.changeCoeff(t + 1, n + 1 + s, float(pt[s]))
                idx = np.arange(n, dtype=np.int32)
                if not np.array_equal(cost, self._lp_cost):
                    h.changeColsCost(n, idx, cost)
                if not np.array_equal(caps, self._lp_caps):
                    h.changeColsBounds(n, idx, np.zeros(n), caps)
                lam = p.risk_aversion
                u_idx = np.arange(n, n + 1 + t, dtype=np.int32)
                h.changeColsCost(t + 1, u_idx, np.concatenate([[lam], lam * pt]))
                lo_budget, hi_budget, limit = self._row_bounds()
                h.changeRowBounds(t, lo_budget, hi_budget)
                h.changeRowBounds(
                    t + 1, -highspy.kHighsInf, limit if np.isfinite(limit) else highspy.kHighsInf
                )
        self._lp_returns, self._lp_pt, self._lp_cost, self._lp_caps = r, pt, cost.copy(), caps.copy()

        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        iters = int(info.simplex_iteration_count)
        ms = highspy.HighsModelStatus
        if status == ms.kOptimal:
            col = np.asarray(h.getSolution().col_value, dtype=float)
            return _SolveOutcome(
                STATUS_OPTIMAL, col[:n], -float(info.objective_function_value), 0.0, self._name(), iters, warm
            )
        # Infeasibility is a property of the data, not of the solver instance: keep it.
        if status in (ms.kInfeasible, ms.kUnboundedOrInfeasible):
            return _SolveOutcome(
                STATUS_INFEASIBLE,
                None,
                float("nan"),
                0.0,
                self._name(),
                iters,
                warm,
                h.modelStatusToString(status),
            )
        self._highs = None
        return _SolveOutcome(
            STATUS_FAILED, None, float("nan"), 0.0, self._name(), iters, warm, h.modelStatusToString(status)
        )

    def _build_cvxpy(self) -> dict[str, Any]:
        import cvxpy as cp

        p = self.params
        n, t = self.n_assets, self.n_scenarios
        par = {
            "mu_net": cp.Parameter(n),
            "caps": cp.Parameter(n, nonneg=True),
            "returns": cp.Parameter((t, n)),
            "pt": cp.Parameter(t, nonneg=True),  # p_t / (1 − α)
            "lam_pt": cp.Parameter(t, nonneg=True),  # λ p_t / (1 − α): keeps the objective DPP
            "lam": cp.Parameter(nonneg=True),
            "budget": cp.Parameter(nonneg=True),
            "min_investment": cp.Parameter(nonneg=True),
        }
        w = cp.Variable(n, nonneg=True)
        zeta = cp.Variable()
        u = cp.Variable(t, nonneg=True)
        cons = [u >= -par["returns"] @ w - zeta, w <= par["caps"]]
        if p.budget_equality:
            cons.append(cp.sum(w) == par["budget"])
        else:
            cons.append(cp.sum(w) <= par["budget"])
            if p.min_investment > 0:
                cons.append(cp.sum(w) >= par["min_investment"])
        if p.cvar_limit is not None:
            par["limit"] = cp.Parameter()
            cons.append(zeta + par["pt"] @ u <= par["limit"])
        obj = cp.Maximize(par["mu_net"] @ w - par["lam"] * zeta - par["lam_pt"] @ u)
        prob = cp.Problem(obj, cons)
        return {"problem": prob, "w": w, "par": par}

    def _solve_cvxpy(self, data: _LPData) -> _SolveOutcome:
        import cvxpy as cp

        p = self.params
        warm = self._cvx is not None
        if not warm:
            self._cvx = self._build_cvxpy()
        assert self._cvx is not None
        par = self._cvx["par"]
        pt = data.probs / (1.0 - p.alpha)
        par["mu_net"].value = data.mu_net
        par["caps"].value = data.caps
        par["returns"].value = data.returns
        par["pt"].value = pt
        par["lam_pt"].value = p.risk_aversion * pt
        par["lam"].value = p.risk_aversion
        par["budget"].value = p.budget
        par["min_investment"].value = p.min_investment
        if "limit" in par:
            par["limit"].value = p.cvar_limit
        prob = self._cvx["problem"]
        opts: dict[str, Any] = {}
        if p.cvxpy_solver == "HIGHS":
            opts.update(dict(p.highs_options))
            if p.time_limit_s is not None:
                opts["time_limit"] = float(p.time_limit_s)
        try:
            # cvxpy's HiGHS warm start passes a primal point, not a basis: measured 2-5x slower
            # than a cold solve on this LP, so it is off; the reuse is the compiled problem.
            prob.solve(solver=p.cvxpy_solver, warm_start=False, **opts)
        except cp.error.SolverError as exc:
            return _SolveOutcome(STATUS_FAILED, None, float("nan"), 0.0, self._name(), 0, warm, repr(exc))
        iters = int(getattr(prob.solver_stats, "num_iters", 0) or 0)
        if prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            return _SolveOutcome(
                STATUS_OPTIMAL,
                np.asarray(self._cvx["w"].value, dtype=float),
                float(prob.value),
                0.0,
                self._name(),
                iters,
                warm,
                prob.status,
            )
        if prob.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            return _SolveOutcome(
                STATUS_INFEASIBLE, None, float("nan"), 0.0, self._name(), iters, warm, prob.status
            )
        return _SolveOutcome(
            STATUS_FAILED, None, float("nan"), 0.0, self._name(), iters, warm, str(prob.status)
        )


@dataclass
class AuctionResult:
    """Outcome of one auction: the per-candidate table (§F2) and the portfolio summary."""

    allocations: pd.DataFrame
    status: str  # OPTIMAL / INFEASIBLE / SOLVER_FAILED / NO_CANDIDATES
    objective: float  # Σ w(μ − c) − λ CVaR(w), recomputed on the exact historical CVaR
    expected_return: float  # Σ w μ (H sessions)
    total_cost: float  # Σ w c
    cvar: float
    var: float
    invested: float  # Σ w
    solve_time_s: float  # all solver calls (incl. component re-solves)
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

    @property
    def cash(self) -> float:
        return self.params.budget - self.invested

    @property
    def weights(self) -> pd.Series:
        """Weight per candidate_id."""
        return self.allocations.set_index("candidate_id")["weight"]

    def symbol_weights(self) -> pd.Series:
        """Target weight per symbol (candidates on the same symbol summed)."""
        return self.allocations.groupby("symbol", sort=True)["weight"].sum()

    def summary(self) -> dict[str, Any]:
        """Portfolio-level record for the governance log (JSON-friendly)."""
        return {
            "status": self.status,
            "objective": self.objective,
            "expected_return": self.expected_return,
            "total_cost": self.total_cost,
            "cvar": self.cvar,
            "var": self.var,
            "invested": self.invested,
            "cash": self.cash,
            "n_allocated": int(self.allocations["allocated"].sum()),
            "n_candidates": len(self.allocations),
            "horizon": self.params.horizon,
            "alpha": self.params.alpha,
            "risk_aversion": self.params.risk_aversion,
            "cvar_limit": self.params.cvar_limit,
            "component_cvar_limit": self.params.component_cvar_limit,
            "scale": self.scale,
            "solver": self.solver,
            "solve_time_s": self.solve_time_s,
            "total_time_s": self.total_time_s,
            "iterations": self.iterations,
            "component_iterations": self.component_iterations,
            "warm_started": self.warm_started,
            "reason_codes": codes_str(self.reason_codes),
            "message": self.message,
        }


def _resolve_scenarios(
    candidates: pd.DataFrame,
    scenarios: np.ndarray | pd.DataFrame | Scenarios,
    probs: np.ndarray | None,
    params: AuctionParams,
    scenario_keys: list[Any] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any] | None]:
    """(T×N matrix aligned with candidate rows, probs, per-row 'has scenario data', keys)."""
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
    n = len(candidates)
    if isinstance(scenarios, pd.DataFrame):
        if scenario_keys is None and not isinstance(scenarios.index, pd.RangeIndex):
            scenario_keys = list(scenarios.index)
        frame = scenarios.reindex(columns=pd.Index(candidates["symbol"].astype(str)))
        r = frame.to_numpy(dtype=float)
    else:
        r = np.asarray(scenarios, dtype=float)
        if r.ndim != 2 or r.shape[1] != n:
            raise ValueError(f"scenario matrix has shape {r.shape}; expected (T, {n}) in candidate order")
    t = r.shape[0]
    if probs is None:
        p = np.full(t, 1.0 / t) if t else np.empty(0)
    else:
        p = np.asarray(probs, dtype=float)
        if p.shape != (t,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("probs must be a non-negative vector of length T with positive mass")
        p = p / p.sum()
    has_data = np.isfinite(r).all(axis=0) if t else np.zeros(n, dtype=bool)
    r = np.where(np.isfinite(r), r, 0.0)
    return r, p, has_data, scenario_keys


def _weighted_corr(r: np.ndarray, book: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Probability-weighted correlation of each column of r with the book's returns."""
    rc = r - p @ r
    bc = book - p @ book
    cov = p @ (rc * bc[:, None])
    sd = np.sqrt(p @ rc**2) * np.sqrt(p @ bc**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, cov / np.where(sd > 0, sd, 1.0), np.nan)


def run_capital_auction(
    candidates: pd.DataFrame,
    scenarios: np.ndarray | pd.DataFrame | Scenarios,
    probs: np.ndarray | None = None,
    params: AuctionParams | None = None,
    solver_state: AuctionSolver | None = None,
    *,
    scenario_keys: list[Any] | None = None,
) -> AuctionResult:
    """Run the capital auction (§F). Pure: same inputs → same result; never raises on solve failure.

    Parameters
    ----------
    candidates:
        One row per candidate. Required: ``candidate_id``, ``strategy_id``, ``symbol``,
        ``mu_adj`` (expected simple return over the horizon, after §D penalties) and ``cost``
        (round-trip trading cost as a return fraction, see ``impact.auction_cost``; NaN → the
        candidate is vetoed with ``MISSING_IMPACT_ESTIMATE``). Optional: caps ``cap_mandate``,
        ``cap_stage``, ``cap_liquidity``, ``cap_quality``, ``cap_crisis`` (max weight as a NAV
        fraction; a missing column imposes nothing, a NaN value caps at 0 — fail closed),
        ``eligibility`` (VALID / INVALID_DATA / INSUFFICIENT_HISTORY / DECOMMISSIONED; missing
        → VALID; anything else → excluded as INVALID_DATA), and pass-through columns
        ``data_quality_penalty`` and ``model_decay_penalty``.
    scenarios:
        H-session simple-return scenarios: a :class:`Scenarios` (probabilities and row keys
        taken from it, horizon checked), a DataFrame (rows = scenarios, columns = symbols,
        picked by each candidate's ``symbol``; a candidate without a complete column is excluded
        as INSUFFICIENT_HISTORY), or a (T, N) array whose columns follow the candidate rows.
    probs:
        Scenario probabilities (default: equal, or the ones in ``Scenarios``).
    params:
        :class:`AuctionParams` (defaults: H = 5, α = 0.95, λ = 0.03, CVaR ≤ 0.06, component
        CVaR ≤ 0.01, Σw ≤ 1, HiGHS).
    solver_state:
        The :class:`AuctionSolver` of a previous call (``result.solver_state``) to re-solve
        warm; rebuilt if the shape or structure differs.
    scenario_keys:
        Stable scenario ids (default: window end dates / DataFrame index) for warm-start row
        alignment between sessions.

    Returns
    -------
    AuctionResult with ``allocations`` (columns :data:`OUTPUT_COLUMNS`, one row per candidate in
    input order) and the portfolio summary.
    """
    t_start = time.perf_counter()
    params = params or AuctionParams()
    missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidates lack required columns {missing}")
    cand = candidates.reset_index(drop=True)
    n = len(cand)
    r, p, has_data, keys = _resolve_scenarios(cand, scenarios, probs, params, scenario_keys)
    t = r.shape[0]

    mu = pd.to_numeric(cand["mu_adj"], errors="coerce").to_numpy(dtype=float)
    cost = pd.to_numeric(cand["cost"], errors="coerce").to_numpy(dtype=float)
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
        if status == "VALID":
            continue
        code = ELIGIBILITY_EXCLUSIONS.get(status, ReasonCode.EXCLUDED_INVALID_DATA)
        veto(i, code, None if status in ELIGIBILITY_EXCLUSIONS else f"{code}: unknown eligibility {status!r}")
    for i in range(n):
        if not has_data[i] or t == 0:
            veto(
                i,
                ReasonCode.EXCLUDED_INSUFFICIENT_HISTORY,
                "EXCLUDED_INSUFFICIENT_HISTORY: no complete scenarios",
            )
        if not np.isfinite(mu[i]):
            veto(i, ReasonCode.INSUFFICIENT_FEATURES, "INSUFFICIENT_FEATURES: mu_adj missing")
        if not np.isfinite(cost[i]) or cost[i] < 0:
            veto(i, ReasonCode.MISSING_IMPACT_ESTIMATE)

    # Caps: the tightest source wins; NaN caps at 0 (fail closed), absent columns impose nothing.
    cap_table = pd.DataFrame(index=cand.index)
    for col in CAP_SOURCES:
        if col in cand.columns:
            cap_table[col] = pd.to_numeric(cand[col], errors="coerce").fillna(0.0).clip(lower=0.0)
    source_cap = cap_table.min(axis=1).to_numpy(dtype=float) if len(cap_table.columns) else np.full(n, np.inf)
    source_cap = np.where(np.isnan(source_cap), np.inf, source_cap)

    mu_net = np.where(np.isfinite(mu), mu, 0.0) - np.where(np.isfinite(cost), cost, 0.0)
    non_positive = params.require_positive_mu & (mu_net <= 0) & ~vetoed
    for i in np.flatnonzero(non_positive):
        reasons[i].append(ReasonCode.NON_POSITIVE_EXPECTED_RETURN)
    active = ~vetoed & ~non_positive
    lp_caps = np.where(active, np.minimum(source_cap, params.budget), 0.0)

    eligible = ~vetoed
    solver: AuctionSolver | None = solver_state
    outcome: _SolveOutcome | None = None
    total_solve = 0.0
    iterations = 0
    comp_iters = 0
    scale = 1.0
    warm_started = False
    port_codes: list[ReasonCode] = []
    component_capped = np.zeros(n, dtype=bool)
    w = np.zeros(n)
    status = STATUS_OPTIMAL
    message = ""

    if not eligible.any() or n == 0 or t == 0:
        status = STATUS_NO_CANDIDATES
        port_codes.append(ReasonCode.AUCTION_NO_CANDIDATES)
    else:
        if solver is None or not solver.compatible(n, t, params):
            solver = AuctionSolver(n, t, params)
        else:
            solver.params = params  # same structure; λ, limits, budget may differ
        data = _LPData(mu_net=mu_net, caps=lp_caps.copy(), returns=r, probs=p)
        symbols = cand["symbol"].astype(str).to_numpy()
        codes, sym_index = np.unique(symbols, return_inverse=True)
        for it in range(params.max_component_iterations + 1):
            outcome = solver.solve(data, keys)
            total_solve += outcome.solve_time_s
            iterations += outcome.iterations
            warm_started = warm_started or (it == 0 and outcome.warm_started)
            if outcome.status != STATUS_OPTIMAL or outcome.weights is None:
                break
            w = np.clip(outcome.weights, 0.0, data.caps)
            w[w < params.weight_tol] = 0.0
            limit_c = params.component_cvar_limit
            if limit_c is None or not w.any():
                break
            res = portfolio_cvar(w, r, params.alpha, p)
            by_symbol = np.bincount(sym_index, weights=res.component, minlength=len(codes))
            offenders = by_symbol > limit_c * (1 + 1e-9) + 1e-12
            if not offenders.any() or it == params.max_component_iterations:
                break
            hit = offenders[sym_index] & (w > 0)
            shrink = limit_c / by_symbol[sym_index[hit]]
            data.caps[hit] = np.minimum(data.caps[hit], w[hit] * shrink * (1 - 1e-9))
            component_capped |= hit
            comp_iters += 1
        assert outcome is not None
        status = outcome.status
        message = outcome.message
        if status == STATUS_INFEASIBLE:
            port_codes.append(ReasonCode.AUCTION_INFEASIBLE)
            w = np.zeros(n)
        elif status != STATUS_OPTIMAL:
            status = STATUS_FAILED
            port_codes.append(ReasonCode.AUCTION_SOLVER_FAILED)
            w = np.zeros(n)
        lp_caps = data.caps

    # Exact risk of the final book; scale if a limit is still exceeded (homogeneity).
    res: CVaRResult | None = portfolio_cvar(w, r, params.alpha, p) if t and n else None
    if res is not None and w.any():
        s = 1.0
        if params.cvar_limit is not None and res.cvar > params.cvar_limit * (1 + 1e-9) + 1e-12:
            s = min(s, params.cvar_limit / res.cvar)
        if params.component_cvar_limit is not None:
            symbols = cand["symbol"].astype(str).to_numpy()
            codes, sym_index = np.unique(symbols, return_inverse=True)
            by_symbol = np.bincount(sym_index, weights=res.component, minlength=len(codes))
            over = by_symbol > params.component_cvar_limit * (1 + 1e-9) + 1e-12
            if over.any():
                s = min(s, float(np.min(params.component_cvar_limit / by_symbol[over])))
        if s < 1.0:
            min_budget = params.budget if params.budget_equality else params.min_investment
            if s * w.sum() < min_budget - 1e-9:
                # Scaling would violate the investment floor: the limits cannot all be met.
                status = STATUS_INFEASIBLE
                port_codes.append(ReasonCode.AUCTION_INFEASIBLE)
                message = "component CVaR limit unreachable with the minimum investment"
                w = np.zeros(n)
            else:
                scale = s
                w = w * s
                port_codes.append(ReasonCode.SCALED_FOR_CVAR)
            res = portfolio_cvar(w, r, params.alpha, p)
    if component_capped.any():
        port_codes.append(ReasonCode.COMPONENT_CVAR_BREACH)

    # --- per-candidate table -----------------------------------------------------------------
    allocated = w > 0
    marginal = res.marginal if res is not None else np.full(n, np.nan)
    component = res.component if res is not None else np.zeros(n)
    book = r @ w if t else np.empty(0)
    corr = _weighted_corr(r, book, p) if (t and w.any()) else np.full(n, np.nan)
    cap_names = list(cap_table.columns)
    binding = np.full(n, "", dtype=object)
    tol_bind = 1e-7
    for i in range(n):
        if vetoed[i]:
            reasons[i].append(ReasonCode.NOT_ALLOCATED)
            continue
        names: list[str] = []
        if component_capped[i] and w[i] >= lp_caps[i] * scale - tol_bind:
            names.append(COMPONENT_CAP)
            reasons[i].append(ReasonCode.COMPONENT_CVAR_BREACH)
        cap_i = source_cap[i]
        if np.isfinite(cap_i) and (w[i] >= cap_i * scale - tol_bind or cap_i <= 0):
            for col in cap_names:
                if cap_table.at[i, col] <= cap_i + 1e-15:
                    short, code = CAP_SOURCES[col]
                    names.append(short)
                    reasons[i].append(code)
        binding[i] = ";".join(names)
        if scale < 1.0 and allocated[i]:
            reasons[i].append(ReasonCode.SCALED_FOR_CVAR)
        if status == STATUS_INFEASIBLE:
            reasons[i] += [ReasonCode.AUCTION_INFEASIBLE, ReasonCode.NOT_ALLOCATED]
        elif status == STATUS_FAILED:
            reasons[i] += [ReasonCode.AUCTION_SOLVER_FAILED, ReasonCode.NOT_ALLOCATED]
        elif allocated[i]:
            reasons[i].append(ReasonCode.ALLOCATED)
        else:
            if not non_positive[i] and not names:
                reasons[i].append(ReasonCode.ZERO_WEIGHT_AT_OPTIMUM)
            reasons[i].append(ReasonCode.NOT_ALLOCATED)

    # Rank eligible candidates by weight, then by net expected return; vetoed ones have none.
    order = np.lexsort((-mu_net, -w))
    rank = pd.array([pd.NA] * n, dtype="Int64")
    k = 1
    for i in order:
        if not vetoed[i]:
            rank[i] = k
            k += 1

    decision = np.where(vetoed, "EXCLUDED", np.where(allocated, "ALLOCATED", "NOT_ALLOCATED"))
    out = pd.DataFrame(
        {
            "candidate_id": cand["candidate_id"].to_numpy(),
            "strategy_id": cand["strategy_id"].to_numpy(),
            "symbol": cand["symbol"].to_numpy(),
            "eligibility": eligibility,
            "allocated": allocated,
            "weight": w,
            "rank": rank,
            "decision": decision,
            "reason_codes": [codes_str(c) for c in reasons],
            "mu_adj": mu,
            "cost": cost,
            "mu_contribution": w * np.where(np.isfinite(mu), mu, 0.0),
            "liquidity_cost": w * np.where(np.isfinite(cost), cost, 0.0),
            "cvar_contribution": component,
            "marginal_cvar": marginal,
            "correlation": corr,
            "data_quality_penalty": (
                pd.to_numeric(cand["data_quality_penalty"], errors="coerce").to_numpy(dtype=float)
                if "data_quality_penalty" in cand.columns
                else np.full(n, np.nan)
            ),
            "model_decay_penalty": (
                pd.to_numeric(cand["model_decay_penalty"], errors="coerce").to_numpy(dtype=float)
                if "model_decay_penalty" in cand.columns
                else np.full(n, np.nan)
            ),
            "vetoed": vetoed,
            "veto_reason": veto_reason,
            "cap": np.where(vetoed, 0.0, np.where(active, lp_caps, np.minimum(source_cap, params.budget))),
            "binding_cap": binding,
        },
        columns=OUTPUT_COLUMNS,
    )

    cvar_v = res.cvar if res is not None else 0.0
    var_v = res.var if res is not None else 0.0
    exp_ret = float(out["mu_contribution"].sum())
    tot_cost = float(out["liquidity_cost"].sum())
    objective = (
        exp_ret - tot_cost - params.risk_aversion * cvar_v if status == STATUS_OPTIMAL else float("nan")
    )
    return AuctionResult(
        allocations=out,
        status=status,
        objective=float(objective),
        expected_return=exp_ret,
        total_cost=tot_cost,
        cvar=float(cvar_v),
        var=float(var_v),
        invested=float(w.sum()),
        solve_time_s=total_solve,
        total_time_s=time.perf_counter() - t_start,
        solver=solver._name() if solver is not None else "",
        iterations=iterations,
        component_iterations=comp_iters,
        scale=scale,
        warm_started=warm_started,
        reason_codes=port_codes,
        params=params,
        solver_state=solver,
        message=message,
    )
