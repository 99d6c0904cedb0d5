"""Capital-auction benchmark: our mean–CVaR LP against skfolio and PyPortfolioOpt.

Run: ``uv run python benchmarks/bench_auction.py [--quick] [--timeout SECONDS] [--out PATH]``

The problem (identical for every solver, the one the peers can express):
``max μ·w − λ·CVaR₉₅(w)`` over H = 5-session scenario returns, long-only, Σw = 1, λ = 1
(skfolio's default risk aversion), no caps, no CVaR limit, no component limits, μ = mean of the
scenarios. The objective of every solution is recomputed the same way
(``μ·w − λ·skfolio.measures.cvar(R w)``) and compared.

Data: skfolio's S&P 500 sample (20 stocks, daily, 1990–2022) drives a factor model. Asset j < 20
is real stock j. Every further asset is a random long-only mix (Dirichlet weights) of three real
stocks — on the real days, so real crashes (1998, 2008, 2020) hit all assets together — plus the
residual (vs the equal-weight market) of another real stock, scaled by U(0.5, 1) and circularly
shifted in time, so idiosyncratic tails are real but do not co-crash spuriously. T scenarios
are the last T overlapping 5-session windows (T + 5 daily rows). The "next session" drops the
oldest window, adds the next one and recomputes μ (same shape): that is the re-solve.

Timings: ours = ``run_capital_auction`` end to end (build/update the LP, solve, exact CVaR,
Euler components, per-candidate table); cold = fresh solver, re-solve = the previous session's
``solver_state`` (direct HiGHS, warm basis, rows aligned by window end date). skfolio =
``MeanRisk(MAXIMIZE_UTILITY, CVAR).fit`` with its default solver (CLARABEL). PyPortfolioOpt's
``EfficientCVaR`` has no mean–CVaR utility (``max_quadratic_utility`` raises
NotImplementedError); it can only express the equivalent ε-constraint problem
``max μ·w s.t. CVaR ≤ CVaR*`` given our optimal CVaR*, which is what is timed (N ≤ 500 only).
Each measurement runs in its own process with a time limit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HORIZON = 5
LAMBDA = 1.0
ALPHA = 0.95
FULL_N = (20, 100, 500, 2000)
FULL_T = (1260, 5000)
QUICK_N = (20, 100, 500)
QUICK_T = (1260,)
PYPFOPT_MAX_N = 500
CVXPY_MAX_CELLS = 500 * 1260  # cvxpy-backend comparison only up to N × T of the target case


def make_daily(n_assets: int, n_days: int, seed: int = 7) -> np.ndarray:
    """(n_days, n_assets) daily simple returns from the factor model described above."""
    from skfolio.datasets import load_sp500_dataset
    from skfolio.preprocessing import prices_to_returns

    real = prices_to_returns(load_sp500_dataset()).to_numpy()[-n_days:]
    if real.shape[0] < n_days:
        raise ValueError(f"only {real.shape[0]} real days for {n_days}")
    k = real.shape[1]
    market = real.mean(axis=1)
    beta = (real * market[:, None]).sum(0) / (market @ market)
    resid = real - market[:, None] * beta
    rng = np.random.default_rng(seed)
    out = np.empty((n_days, n_assets))
    m = min(n_assets, k)
    out[:, :m] = real[:, :m]
    for j in range(k, n_assets):
        names = rng.choice(k, size=3, replace=False)
        mix = rng.dirichlet(np.ones(3))
        idio = np.roll(resid[:, rng.integers(k)], rng.integers(1, n_days)) * rng.uniform(0.5, 1.0)
        out[:, j] = real[:, names] @ mix + idio
    return np.clip(out, -0.95, None)


def windows(daily: np.ndarray, horizon: int = HORIZON) -> np.ndarray:
    """Overlapping H-session simple returns."""
    logr = np.log1p(daily)
    csum = np.vstack([np.zeros((1, daily.shape[1])), np.cumsum(logr, axis=0)])
    return np.expm1(csum[horizon:] - csum[:-horizon])


def sessions(n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Scenario matrices (T, N) for session 1 and session 2 (rolled by one window)."""
    w = windows(make_daily(n, t + HORIZON))  # t + 1 windows
    return w[:t], w[1:]


def objective(w: np.ndarray, r: np.ndarray) -> float:
    from skfolio.measures import cvar

    return float(r.mean(0) @ w - LAMBDA * cvar(r @ w, ALPHA))


def _candidates(r: np.ndarray) -> pd.DataFrame:
    n = r.shape[1]
    return pd.DataFrame(
        {
            "candidate_id": [f"c{j}" for j in range(n)],
            "strategy_id": "bench",
            "symbol": [f"A{j:04d}" for j in range(n)],
            "mu_adj": r.mean(0),
            "cost": 0.0,
        }
    )


def _params(backend: str = "highs") -> Any:
    from ais_pipelines.core.auction import AuctionParams

    return AuctionParams(
        horizon=HORIZON,
        alpha=ALPHA,
        risk_aversion=LAMBDA,
        cvar_limit=None,
        component_cvar_limit=None,
        budget=1.0,
        budget_equality=True,
        require_positive_mu=False,
        backend=backend,
    )


def task_ours(n: int, t: int, backend: str) -> dict[str, Any]:
    from ais_pipelines.core.auction import run_capital_auction

    r1, r2 = sessions(n, t)
    keys1, keys2 = list(range(t)), list(range(1, t + 1))  # window ids (end dates)
    params = _params(backend)
    t0 = time.perf_counter()
    a = run_capital_auction(_candidates(r1), r1, params=params, scenario_keys=keys1)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = run_capital_auction(
        _candidates(r2), r2, params=params, solver_state=a.solver_state, scenario_keys=keys2
    )
    warm = time.perf_counter() - t0
    c = run_capital_auction(_candidates(r2), r2, params=params, scenario_keys=keys2)  # cold reference
    w1 = a.weights.to_numpy()
    return {
        "status": a.status,
        "cold_s": cold,
        "resolve_s": warm,
        "obj": objective(w1, r1),
        "cvar": a.cvar,
        "n_names": int((w1 > 1e-6).sum()),
        "resolve_status": b.status,
        "resolve_vs_cold_obj": abs(objective(b.weights.to_numpy(), r2) - objective(c.weights.to_numpy(), r2)),
        "resolve_warm": b.warm_started,
    }


def task_skfolio(n: int, t: int) -> dict[str, Any]:
    from skfolio import RiskMeasure
    from skfolio.optimization import MeanRisk, ObjectiveFunction

    r1, _ = sessions(n, t)
    x = pd.DataFrame(r1, columns=[f"A{j:04d}" for j in range(n)])
    model = MeanRisk(
        objective_function=ObjectiveFunction.MAXIMIZE_UTILITY,
        risk_measure=RiskMeasure.CVAR,
        risk_aversion=LAMBDA,
        cvar_beta=ALPHA,
    )
    t0 = time.perf_counter()
    model.fit(x)
    elapsed = time.perf_counter() - t0
    return {"time_s": elapsed, "obj": objective(np.asarray(model.weights_), r1)}


def task_pypfopt(n: int, t: int, target_cvar: float) -> dict[str, Any]:
    from pypfopt.efficient_frontier import EfficientCVaR

    r1, _ = sessions(n, t)
    x = pd.DataFrame(r1, columns=[f"A{j:04d}" for j in range(n)])
    mu = pd.Series(r1.mean(0), index=x.columns)
    t0 = time.perf_counter()
    ef = EfficientCVaR(mu, x, beta=ALPHA, weight_bounds=(0, 1))
    ef.efficient_risk(target_cvar=max(target_cvar, 0.0))
    elapsed = time.perf_counter() - t0
    w = np.asarray(ef.weights, dtype=float)
    return {"time_s": elapsed, "obj": objective(w, r1)}


def _worker(q: mp.Queue, fn: str, args: tuple[Any, ...]) -> None:
    try:
        q.put(("ok", globals()[fn](*args)))
    except Exception:  # report, do not crash the benchmark
        q.put(("error", traceback.format_exc(limit=3)))


def run_limited(fn: str, args: tuple[Any, ...], timeout: float) -> dict[str, Any]:
    """Run one measurement in a child process; {'error': ...} on failure or timeout."""
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(q, fn, args))
    proc.start()
    try:
        kind, payload = q.get(timeout=timeout)
    except Exception:
        kind, payload = "error", f"timeout after {timeout:.0f} s"
    proc.join(5)
    if proc.is_alive():
        proc.kill()  # only the child this function started
        proc.join()
    return payload if kind == "ok" else {"error": str(payload).strip().splitlines()[-1]}


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cvxpy
    import highspy
    import skfolio

    hv = f"{highspy.Highs().versionMajor()}.{highspy.Highs().versionMinor()}.{highspy.Highs().versionPatch()}"
    return (
        f"nproc={os.cpu_count()}, CPU: {cpu}, Python {platform.python_version()}, "
        f"cvxpy {cvxpy.__version__}, highspy {hv}, skfolio {skfolio.__version__}"
    )


def fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N in {20,100,500}, T = 1260 only")
    ap.add_argument("--timeout", type=float, default=900.0, help="per measurement, seconds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "auction.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ns, ts = (QUICK_N, QUICK_T) if args.quick else (FULL_N, FULL_T)

    rows: list[dict[str, Any]] = []
    header = (
        f"{'N':>5} {'T':>5} | {'cold s':>7} {'resolve s':>9} | {'skfolio s':>9} {'x cold':>7} {'x res':>7} "
        f"{'dObj sk':>8} | {'pypfopt s':>9} {'dObj pp':>8} | {'cvxpy cold':>10} {'cvxpy res':>9} | names"
    )
    print(machine())
    print(header)
    print("-" * len(header))
    for t in ts:
        for n in ns:
            ours = run_limited("task_ours", (n, t, "highs"), args.timeout)
            sk = run_limited("task_skfolio", (n, t), args.timeout)
            pp: dict[str, Any] = {"error": "not expressible at this size (skipped)"}
            if n <= PYPFOPT_MAX_N and t <= 1260 and "cvar" in ours:
                pp = run_limited("task_pypfopt", (n, t, ours["cvar"]), args.timeout)
            cv: dict[str, Any] = {"error": "skipped"}
            if n * t <= CVXPY_MAX_CELLS:
                cv = run_limited("task_ours", (n, t, "cvxpy"), args.timeout)
            row = {"N": n, "T": t, "ours": ours, "skfolio": sk, "pypfopt": pp, "cvxpy": cv}
            rows.append(row)
            sk_t, o_c, o_w = sk.get("time_s"), ours.get("cold_s"), ours.get("resolve_s")
            print(
                f"{n:>5} {t:>5} | {fmt(o_c):>7} {fmt(o_w, '.4f'):>9} | {fmt(sk_t, '.2f'):>9} "
                f"{fmt(sk_t / o_c if sk_t and o_c else None, '.1f'):>7} "
                f"{fmt(sk_t / o_w if sk_t and o_w else None, '.0f'):>7} "
                f"{fmt(abs(ours['obj'] - sk['obj']) if 'obj' in sk and 'obj' in ours else None, '.1e'):>8} | "
                f"{fmt(pp.get('time_s'), '.2f'):>9} "
                f"{fmt(abs(ours['obj'] - pp['obj']) if 'obj' in pp and 'obj' in ours else None, '.1e'):>8} | "
                f"{fmt(cv.get('cold_s')):>10} {fmt(cv.get('resolve_s')):>9} | {ours.get('n_names', '—')}",
                flush=True,
            )
            for name, res in (("ours", ours), ("skfolio", sk), ("pypfopt", pp), ("cvxpy", cv)):
                if "error" in res and "skipped" not in res["error"]:
                    print(f"      {name}: {res['error']}", flush=True)

    if not args.no_write:
        write_markdown(Path(args.out), rows, args)
        print(f"written to {args.out}")
    return 0


def write_markdown(path: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = [
        "# Capital auction benchmark",
        "",
        f"Date: {dt.date.today().isoformat()}  ",
        f"Machine: {machine()}  ",
        f"Command: `uv run python benchmarks/bench_auction.py{' --quick' if args.quick else ''}` "
        f"(per-measurement time limit {args.timeout:.0f} s; the machine's 2 cores were shared "
        "with other work, so absolute times are noisy)",
        "",
        "Problem: `max μ·w − λ·CVaR95(w)`, λ = 1, H = 5-session overlapping scenarios, long-only, Σw = 1 "
        "(see the docstring of `benchmarks/bench_auction.py` for the data). `dObj` = |objective(ours) − "
        "objective(peer)|, both recomputed as `μ·w − λ·skfolio.measures.cvar(Rw)`. Ratios = skfolio time / "
        "our time. Re-solve = next session (one window rolled, μ recomputed), warm-started direct HiGHS; "
        "`re=cold` is |objective(warm re-solve) − objective(cold solve)| of that session.",
        "",
        "| N | T | ours cold (s) | ours re-solve (s) | skfolio (s) | cold speed-up | re-solve speed-up | "
        "dObj skfolio | PyPortfolioOpt (s) | dObj PyPortfolioOpt | cvxpy+HiGHS cold / re-solve (s) | "
        "re=cold | names |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for row in rows:
        o, s, p, c = row["ours"], row["skfolio"], row["pypfopt"], row["cvxpy"]
        sk_t, o_c, o_w = s.get("time_s"), o.get("cold_s"), o.get("resolve_s")
        cells = [
            str(row["N"]),
            str(row["T"]),
            fmt(o_c),
            fmt(o_w, ".4f"),
            fmt(sk_t, ".2f"),
            fmt(sk_t / o_c if sk_t and o_c else None, ".1f") + ("×" if sk_t and o_c else ""),
            fmt(sk_t / o_w if sk_t and o_w else None, ".0f") + ("×" if sk_t and o_w else ""),
            fmt(abs(o["obj"] - s["obj"]) if "obj" in s and "obj" in o else None, ".1e"),
            fmt(p.get("time_s"), ".2f"),
            fmt(abs(o["obj"] - p["obj"]) if "obj" in p and "obj" in o else None, ".1e"),
            f"{fmt(c.get('cold_s'))} / {fmt(c.get('resolve_s'))}" if "cold_s" in c else "—",
            fmt(o.get("resolve_vs_cold_obj"), ".1e"),
            str(o.get("n_names", "—")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for name, res in (("ours", o), ("skfolio", s), ("PyPortfolioOpt", p), ("cvxpy", c)):
            if "error" in res and "skipped" not in res["error"]:
                notes.append(f"* N={row['N']}, T={row['T']}, {name}: {res['error']}")
    lines += [
        "",
        "PyPortfolioOpt cannot express the mean–CVaR utility (`EfficientCVaR.max_quadratic_utility` raises "
        "NotImplementedError); it is timed on the equivalent `efficient_risk(target_cvar=CVaR*)` with our "
        "optimal CVaR*, for N ≤ 500 and T = 1260 only. cvxpy+HiGHS is our own problem built once with cvxpy "
        'Parameters (`backend="cvxpy"`), shown up to N × T = 500 × 1260.',
    ]
    if notes:
        lines += ["", "Failures and time-outs:", "", *notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
