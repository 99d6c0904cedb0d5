"""Capital-auction benchmark: the product's own LP against skfolio and cvxpy+HiGHS on the same problem.

Run: ``uv run python benchmarks/bench_auction.py [--quick] [--timeout SECONDS] [--out PATH]``

The problem is the nightly auction as the product runs it (``policies/risk.yaml``,
``policies/mandate.yaml``, ``policies/auction.yaml`` defaults): H = 5-session scenarios, λ = 0.03,
α = 0.95, portfolio CVaR ≤ 0.06, per-symbol cap 0.05, three strategies with exact caps 0.40 / 0.30 /
0.20 (one candidate per symbol, assigned round robin), Σw ≤ 1, a current book (40 % of the names held,
≈ 0.6 NAV), the §H1 impact on the trade ``|w − w_now|`` (half spread + convex √ impact from each
name's σ and ADV at NAV $100M, six chord segments per leg), ADV participation 5 % on the trade,
daily turnover ≤ 0.25, μ = the scenarios' mean. Held weight that no candidate claims (μ ≤ 0 names)
may stay (earning nothing) or be sold. The per-position component-CVaR limit is not linear and
neither peer can express it, so the comparison is on the LP without it; ``ours full`` is the
product's complete run with the 0.01 component limit (cap loop + tail-region polish), for reference.

Peers, on exactly this problem:
* skfolio ``MeanRisk(MAXIMIZE_UTILITY, CVAR)`` with ``max_cvar``, ``max_weights``, ``max_budget``,
  ``overwrite_expected_return`` and ``add_objective`` / ``add_constraints`` for the trade cost, the
  strategy caps, participation and turnover (its default solver, CLARABEL). No warm start exists.
* cvxpy + HiGHS: ``ais_pipelines.core.auction_reference`` (an independent formulation, compiled and
  solved per call; cvxpy passes no basis to HiGHS, so "warm" is just the next solve).

Cold = first night from a fresh solver; warm = the next night (scenario window rolled by one
session, μ recomputed, same book) started from the first night's basis (``WarmStart``, the object
the nightly asset persists). Every objective is recomputed by one evaluator,
``μ·x − cost(|w − w_now|) − λ·skfolio.measures.cvar(R w)``, and compared.

Data: skfolio's S&P 500 sample (20 stocks, daily, 1990–2022). N = 20 is the real data; for N > 20
asset j ≥ 20 is a random long-only mix (Dirichlet) of three real stocks on the real days plus the
residual of another real stock, scaled by U(0.5, 1) and circularly shifted (real idiosyncratic
tails that do not co-crash spuriously). Each measurement runs in its own process with a time limit.
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
LAMBDA = 0.03
ALPHA = 0.95
CVAR_LIMIT = 0.06
SYMBOL_CAP = 0.05
STRATEGY_CAPS = {"s0": 0.40, "s1": 0.30, "s2": 0.20}
TURNOVER = 0.25
NAV = 1e8
PARTICIPATION = 0.05
SEGMENTS = 6
T = 1260
FULL_N = (20, 500, 2000)
QUICK_N = (20, 200)


def make_daily(n_assets: int, n_days: int, seed: int = 7) -> np.ndarray:
    """(n_days, n_assets) daily simple returns from the factor model described above."""
    from skfolio.datasets import load_sp500_dataset
    from skfolio.preprocessing import prices_to_returns

    real = prices_to_returns(load_sp500_dataset()).to_numpy()[-n_days:]
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
    logr = np.log1p(daily)
    csum = np.vstack([np.zeros((1, daily.shape[1])), np.cumsum(logr, axis=0)])
    return np.expm1(csum[horizon:] - csum[:-horizon])


def problem(n: int, night: int) -> dict[str, Any]:
    """The product's auction inputs for night 0 or 1 (rolled by one session, same book)."""
    from ais_pipelines.core.auction import AuctionParams
    from ais_pipelines.core.impact import trade_cost_coefficients

    daily = make_daily(n, T + HORIZON + 1)
    win = windows(daily)
    r = win[night : night + T]
    names = [f"A{j:04d}" for j in range(n)]
    rng = np.random.default_rng(11)
    held = rng.random(n) < 0.4
    w_now = np.where(held, rng.uniform(0.0, 0.04, n), 0.0)
    w_now *= min(1.0, 0.6 / max(w_now.sum(), 1e-12))
    adv_usd = rng.uniform(2e7, 5e8, n)
    price = np.full(n, 100.0)
    sigma = daily[-252:].std(axis=0)
    a, k = trade_cost_coefficients(NAV, price, adv_usd / price, sigma, rng.uniform(2, 12, n))
    frame = pd.DataFrame(r, columns=names, index=pd.RangeIndex(night, night + T))
    cands = pd.DataFrame({
        "candidate_id": [f"c{j}" for j in range(n)],
        "strategy_id": [f"s{j % 3}" for j in range(n)],
        "symbol": names,
        "mu_adj": r.mean(axis=0),
    })
    book = pd.DataFrame({
        "symbol": names, "current_weight": w_now, "cap_symbol": SYMBOL_CAP,
        "trade_cap": PARTICIPATION * adv_usd / NAV, "half_spread": a, "impact_coef": k,
    })
    params = AuctionParams(
        horizon=HORIZON, alpha=ALPHA, risk_aversion=LAMBDA, cvar_limit=CVAR_LIMIT, component_cvar_limit=None,
        budget=1.0, turnover_limit=TURNOVER, impact_segments=SEGMENTS,
    )
    return {"cands": cands, "frame": frame, "book": book, "params": params}


def evaluate(pb: dict[str, Any], x: np.ndarray, w: np.ndarray) -> float:
    """One objective for every solver: μ·x − cost(|w − w_now|) − λ·CVaR(Rw) (skfolio's CVaR)."""
    from skfolio.measures import cvar

    from ais_pipelines.core.auction import impact_segments, trade_cost

    bk = pb["book"]
    seg_len, seg_slope = impact_segments(bk["trade_cap"].to_numpy(), bk["half_spread"].to_numpy(),
                                         bk["impact_coef"].to_numpy(), SEGMENTS)
    cost = trade_cost(w - bk["current_weight"].to_numpy(), seg_len, seg_slope).sum()
    return float(pb["cands"]["mu_adj"].to_numpy() @ x - cost - LAMBDA * cvar(pb["frame"].to_numpy() @ w, ALPHA))


def _ours(pb: dict[str, Any], warm: Any = None, params: Any = None) -> tuple[Any, float]:
    from ais_pipelines.core.auction import run_capital_auction

    t0 = time.perf_counter()
    res = run_capital_auction(pb["cands"], pb["frame"], book=pb["book"], strategy_caps=STRATEGY_CAPS,
                              params=params or pb["params"], warm_start=warm)
    return res, time.perf_counter() - t0


def task_ours(n: int) -> dict[str, Any]:
    from dataclasses import replace

    p0, p1 = problem(n, 0), problem(n, 1)
    cold, t_cold = _ours(p0)
    warm, t_warm = _ours(p1, warm=cold.warm_start)
    cold1, t_cold1 = _ours(p1)
    full, t_full = _ours(p0, params=replace(p0["params"], component_cvar_limit=0.01))
    x0 = cold.allocations["weight"].to_numpy()
    w0 = cold.symbols["target_weight"].to_numpy()
    x1 = warm.allocations["weight"].to_numpy()
    w1 = warm.symbols["target_weight"].to_numpy()
    return {
        "status": cold.status, "cold_s": t_cold, "warm_s": t_warm, "cold1_s": t_cold1,
        "warm_started": warm.warm_started, "iters_cold": cold1.iterations, "iters_warm": warm.iterations,
        "obj0": evaluate(p0, x0, w0), "obj1": evaluate(p1, x1, w1),
        "warm_vs_cold": abs(warm.objective - cold1.objective),
        "names": int((w0 > 1e-6).sum()), "turnover": cold.turnover, "cvar": cold.cvar,
        "full_s": t_full, "full_obj": full.objective, "full_gap_bound": full.component_gap_bound,
    }


def task_cvxpy(n: int) -> dict[str, Any]:
    from ais_pipelines.core.auction_reference import solve_reference

    out: dict[str, Any] = {}
    for night in (0, 1):
        pb = problem(n, night)
        t0 = time.perf_counter()
        ref = solve_reference(pb["cands"], pb["frame"], pb["book"], pb["params"], STRATEGY_CAPS)
        out[f"t{night}"] = time.perf_counter() - t0
        x = ref.candidate_weights.to_numpy()
        out[f"obj{night}"] = evaluate(pb, x, ref.symbol_weights.to_numpy())
    return out


def skfolio_fit(pb: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """The same LP through skfolio's MeanRisk; returns (x, w, seconds)."""
    import cvxpy as cp
    from skfolio import RiskMeasure
    from skfolio.optimization import MeanRisk, ObjectiveFunction

    from ais_pipelines.core.auction_reference import chord_lines

    cands, bk = pb["cands"], pb["book"]
    n = len(cands)
    mu = cands["mu_adj"].to_numpy()
    w_now = bk["current_weight"].to_numpy()
    tc = bk["trade_cap"].to_numpy()
    lines = [chord_lines(tc[j], bk["half_spread"].iloc[j], bk["impact_coef"].iloc[j], SEGMENTS) for j in range(n)]
    slopes = np.array([s for s, _ in lines])  # (n, J)
    icpts = np.array([i for _, i in lines])
    cap_x = np.where(mu > 0, 1.0, 0.0)  # a candidate with μ ≤ 0 gets no capital
    h = cp.Variable(n, nonneg=True)  # held weight no candidate claims (shared by the closures)
    v = cp.Variable(n, nonneg=True)  # epigraph of each trade's cost
    sid = cands["strategy_id"].to_numpy()
    floor = np.clip(w_now - tc, 0.0, None)
    upper = np.maximum(SYMBOL_CAP, floor)

    def constraints(w: cp.Variable) -> list[Any]:
        d = w - w_now
        x = w - h
        cons = [h <= w_now, x >= 0, cp.multiply(1 - cap_x, x) == 0, cp.abs(d) <= tc,
                cp.sum(cp.abs(d)) <= TURNOVER + float(np.clip(w_now - upper, 0, None).sum())]
        cons += [v >= cp.multiply(slopes[:, j], cp.abs(d)) + icpts[:, j] for j in range(SEGMENTS)]
        cons += [cp.sum(x[np.flatnonzero(sid == g)]) <= cap for g, cap in STRATEGY_CAPS.items()]
        return cons

    model = MeanRisk(
        objective_function=ObjectiveFunction.MAXIMIZE_UTILITY,
        risk_measure=RiskMeasure.CVAR,
        risk_aversion=LAMBDA,
        cvar_beta=ALPHA,
        max_cvar=CVAR_LIMIT,
        min_weights=0.0,
        max_weights=upper,
        budget=None,
        max_budget=1.0,
        overwrite_expected_return=lambda w: mu @ (w - h),
        add_objective=lambda w: -cp.sum(v),
        add_constraints=constraints,
    )
    t0 = time.perf_counter()
    model.fit(pb["frame"])
    elapsed = time.perf_counter() - t0
    w = np.asarray(model.weights_, dtype=float)
    return np.clip(w - np.asarray(h.value).ravel(), 0.0, None), w, elapsed


def task_skfolio(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for night in (0, 1):
        pb = problem(n, night)
        x, w, elapsed = skfolio_fit(pb)
        out[f"t{night}"] = elapsed
        out[f"obj{night}"] = evaluate(pb, x, w)
    return out


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


def ratio(a: Any, b: Any, spec: str = ".0f") -> str:
    return fmt(a / b, spec) + "×" if a and b else "—"


def diff(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    return fmt(abs(a[key] - b[key]), ".1e") if key in a and key in b else "—"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"N in {QUICK_N} only")
    ap.add_argument("--timeout", type=float, default=1200.0, help="per measurement, seconds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "auction.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ns = QUICK_N if args.quick else FULL_N

    rows: list[dict[str, Any]] = []
    print(machine())
    header = (f"{'N':>5} | {'cold s':>7} {'warm s':>7} | {'skfolio s':>9} {'x cold':>7} {'x warm':>7} {'dObj sk':>8} | "
              f"{'cvxpy s':>8} {'x cold':>7} {'dObj cv':>8} | {'full s':>7} | names")
    print(header)
    print("-" * len(header))
    for n in ns:
        ours = run_limited("task_ours", (n,), args.timeout)
        sk = run_limited("task_skfolio", (n,), args.timeout)
        cv = run_limited("task_cvxpy", (n,), args.timeout)
        rows.append({"N": n, "ours": ours, "skfolio": sk, "cvxpy": cv})
        print(
            f"{n:>5} | {fmt(ours.get('cold_s')):>7} {fmt(ours.get('warm_s')):>7} | {fmt(sk.get('t0'), '.2f'):>9} "
            f"{ratio(sk.get('t0'), ours.get('cold_s'), '.1f'):>7} {ratio(sk.get('t1'), ours.get('warm_s')):>7} "
            f"{diff(ours, sk, 'obj0'):>8} | {fmt(cv.get('t0'), '.2f'):>8} {ratio(cv.get('t0'), ours.get('cold_s'), '.1f'):>7} "
            f"{diff(ours, cv, 'obj0'):>8} | {fmt(ours.get('full_s')):>7} | {ours.get('names', '—')}",
            flush=True,
        )
        for name, res in (("ours", ours), ("skfolio", sk), ("cvxpy", cv)):
            if "error" in res:
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
        f"(per-measurement time limit {args.timeout:.0f} s; the machine's 2 cores were shared with other "
        "work, so absolute times are noisy)",
        "",
        "Problem: the product's nightly auction LP (λ = 0.03 on H = 5 sessions, CVaR₉₅ ≤ 0.06, symbol cap "
        "0.05, three strategies capped 0.40/0.30/0.20, Σw ≤ 1, a current book ≈ 0.6 NAV, §H1 impact on "
        "the trade, 5 % ADV participation, turnover ≤ 0.25; T = 1260 scenarios; see the docstring of "
        "`benchmarks/bench_auction.py`). Cold = first night, warm = next night (window rolled by one "
        "session) from the first night's saved basis. `dObj` = |objective(ours) − objective(peer)|, all "
        "recomputed by one evaluator. Speed-ups = peer time / our time (warm: the peer's next-night "
        "solve / our warm solve; neither peer can warm-start). `ours full` = the complete product run "
        "with the 0.01 component-CVaR limit (not expressible by the peers).",
        "",
        "| N | ours cold (s) | ours warm (s) | simplex iters cold → warm | skfolio (s) | × cold | × warm | "
        "dObj skfolio | cvxpy+HiGHS (s) | × cold | dObj cvxpy | warm = cold | ours full (s) | names | turnover |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for row in rows:
        o, s, c = row["ours"], row["skfolio"], row["cvxpy"]
        cells = [
            str(row["N"]), fmt(o.get("cold_s")), fmt(o.get("warm_s")),
            f"{o.get('iters_cold', '—')} → {o.get('iters_warm', '—')}",
            fmt(s.get("t0"), ".2f"), ratio(s.get("t0"), o.get("cold_s"), ".1f"), ratio(s.get("t1"), o.get("warm_s")),
            diff(o, s, "obj0"), fmt(c.get("t0"), ".2f"), ratio(c.get("t0"), o.get("cold_s"), ".1f"),
            diff(o, c, "obj0"), fmt(o.get("warm_vs_cold"), ".1e"), fmt(o.get("full_s")),
            str(o.get("names", "—")), fmt(o.get("turnover"), ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for name, res in (("ours", o), ("skfolio", s), ("cvxpy", c)):
            if "error" in res:
                notes.append(f"* N={row['N']}, {name}: {res['error']}")
    if notes:
        lines += ["", "Failures and time-outs:", "", *notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
