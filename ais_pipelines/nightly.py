"""The nightly loop of session D as a sequence of steps (§0 nightly). No Dagster.

quality → features → macro series → regime → (model refit) → forecasts → decay → lifecycle →
candidates → scenarios → auction → portfolio CVaR → order proposals → reasoning memos.

Each step reads what it needs for as-of session D from a warehouse connection (point in time:
nothing dated after D), calls the pure functions of :mod:`ais_pipelines.core`, writes its
tables with ``replace_partition`` and returns its outputs. The nightly assets are thin
wrappers over these steps (read → step → metadata); the walk-forward replay
(:mod:`ais_pipelines.replay`) calls the same steps, in the same order, on its own warehouse —
one code path, so a replayed session equals the asset run of that partition byte for byte.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ais_pipelines.bars_cache import run_bars
from ais_pipelines.config import Policies
from ais_pipelines.core import auction as auction_core
from ais_pipelines.core import cvar as cvar_core
from ais_pipelines.core import decay as decay_core
from ais_pipelines.core import features as features_core
from ais_pipelines.core import forecasts as forecasts_core
from ais_pipelines.core import impact as impact_core
from ais_pipelines.core import reasoning as reasoning_core
from ais_pipelines.core import regime as regime_core
from ais_pipelines.core.auction_inputs import auction_inputs, book_nav
from ais_pipelines.core.data_health import DataHealthReport
from ais_pipelines.core.features import session_aligned_log_returns
from ais_pipelines.core.lifecycle import LifecycleParams, LifecycleState, Performance, Stage, step_lifecycle
from ais_pipelines.core.scenarios import Scenarios, scenario_returns
from ais_pipelines.core.strategies import StrategyDef, generate_candidates
from ais_pipelines.data_stages import (  # issue 13: the quality stage and its readers live there
    QUALITY_TABLE,
    NoIngestionError,
    assess_and_store_quality,
)
from ais_pipelines.warehouse import derived, read_bars, read_table, replace_partition, table_exists

ELIGIBLE = "VALID"
WARM_DIR = "auction_state"
CANDIDATE_COLUMNS = ["candidate_id", "strategy_id", "symbol", "mu_adj", "status", "stage", "strategy_cap",
                     "data_quality_score", "decay_factor", "asset_class", "sector"]


class StageInputMissing(RuntimeError):
    """A step's input for session D is not in the warehouse (an upstream step did not run)."""


# --------------------------------------------------------------------------------------------
# policies → core parameters


def forecast_params(pol: Policies) -> forecasts_core.ForecastParams:
    m = pol.models
    d = m.decay
    return forecasts_core.ForecastParams(
        horizon=m.forecasts.horizon, fit_lookback=m.forecasts.fit_lookback,
        disagreement_beta=m.forecasts.disagreement_beta, strength_full=m.forecasts.strength_full,
        t_dof=m.forecasts.t_dof,
        decay=decay_core.DecayParams(
            full_until_days=d.full_until_days, expire_days=d.expire_days, error_window=d.error_window,
            error_tolerance=d.error_tolerance, error_floor=d.error_floor, autocorr_window=d.autocorr_window,
            flip_factor=d.flip_factor,
        ),
    )


def lifecycle_params(pol: Policies) -> LifecycleParams:
    lc = pol.strategies.lifecycle
    return LifecycleParams(
        nav_caps={Stage(k): v for k, v in lc.nav_caps.items()},
        **lc.model_dump(exclude={"nav_caps"}),
    )


def auction_params(pol: Policies, reduce_only: bool = False) -> auction_core.AuctionParams:
    r, a, m = pol.risk, pol.auction, pol.mandate
    return auction_core.AuctionParams(
        horizon=r.horizon_sessions, alpha=r.alpha, risk_aversion=r.risk_aversion,
        cvar_limit=r.portfolio_cvar_limit, component_cvar_limit=r.component_cvar_limit,
        budget=min(r.budget, m.max_gross_exposure), turnover_limit=a.turnover_limit,
        turnover_penalty=a.turnover_penalty_bps / 1e4, impact_segments=a.impact_segments,
        max_component_iterations=a.max_component_iterations, polish_rounds=a.polish_rounds,
        reduce_only=reduce_only,
    )


# --------------------------------------------------------------------------------------------
# readers shared by the steps, the assets' checks and the execution path


def universe_bars(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None) -> pd.DataFrame:
    return _bars(con, [i.symbol for i in pol.universe.symbols], as_of, run_id)


def _bars(con: Any, symbols: list[str], as_of: pd.Timestamp, run_id: str | None) -> pd.DataFrame:
    """Bars up to D; with a Dagster ``run_id`` from the run's one shared read (``bars_cache``)."""
    return run_bars(con, run_id, symbols, end=as_of) if run_id else read_bars(con, symbols, end=as_of)


def read_quality(con: Any, as_of: pd.Timestamp) -> pd.DataFrame:
    return read_table(con, QUALITY_TABLE, "as_of = ?", [as_of.date()])


def read_regime(con: Any, as_of: pd.Timestamp) -> dict:
    row = read_table(con, "regime_probabilities", "as_of = ?", [as_of.date()])
    if row.empty:
        raise StageInputMissing(f"no regime_probabilities for {as_of.date()}")
    return row.iloc[0].to_dict()


def regime_labels(con: Any, as_of: pd.Timestamp) -> pd.Series | None:
    beliefs = read_table(con, "regime_beliefs", "as_of = ?", [as_of.date()])
    if beliefs.empty:
        return None
    return beliefs.set_index(pd.to_datetime(beliefs["date"]))["label"]


def load_models(con: Any, as_of: pd.Timestamp) -> list[forecasts_core.FittedModel]:
    table = read_table(con, "forecast_models", "fit_date <= ?", [as_of.date()])
    if table.empty:
        raise StageInputMissing(f"no forecast model fitted on or before {as_of.date()}: fit them as of that session "
                                f"first (history up to it only: point in time) with `ais ingest --dir DIR --as-of "
                                f"{as_of.date()}` (your files), or model_refit_job for partition {as_of.date()}")
    models = [forecasts_core.FittedModel.from_json(j) for j in table["model_json"]]
    return forecasts_core.select_models(models, as_of)


def read_scenarios(con: Any, as_of: pd.Timestamp) -> Scenarios:
    """The scenario matrix of D (the auction, CVaR and proposals each read it: on the replay's
    connection it is built once per write of the partition)."""
    return derived(con, "scenarios", ["scenario_returns"], (as_of.date(),), lambda: _scenarios_of(con, as_of))


def _scenarios_of(con: Any, as_of: pd.Timestamp) -> Scenarios:
    long = read_table(con, "scenario_returns", "as_of = ?", [as_of.date()])
    if long.empty:
        raise StageInputMissing(f"no scenario_returns for {as_of.date()}")
    wide = long.pivot(index="scenario_end", columns="symbol", values="ret").sort_index()
    probs = long.drop_duplicates("scenario_end").set_index("scenario_end")["prob"].reindex(wide.index).to_numpy()
    return Scenarios(
        returns=wide.to_numpy(dtype=float), probs=probs / probs.sum(), symbols=[str(c) for c in wide.columns],
        end_dates=pd.Index(wide.index), horizon=int(long["horizon"].iloc[0]), lookback=len(wide),
        weighting=str(long["weighting"].iloc[0]),
    )


def read_cvar(con: Any, as_of: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    d = as_of.date()
    return (read_table(con, "portfolio_cvar", "as_of = ?", [d]),
            read_table(con, "portfolio_cvar_components", "as_of = ?", [d]))


_LATEST_BEFORE = 'as_of = (SELECT max(as_of) FROM "{table}" WHERE as_of < ?)'


def current_book(con: Any, as_of: pd.Timestamp, default_nav: float) -> tuple[pd.DataFrame, float | None, float]:
    """(positions, cash, last NAV) as last recorded by the intraday job before D's decision.

    The last ``positions_snapshot`` before D is the book after the session that ended at D's
    close (broker truth, reconciled with the ledger): the as-of-close book, with no broker call.
    """
    # Only the latest partition before D (the tables grow by one partition a session).
    pos = read_table(con, "positions_snapshot", _LATEST_BEFORE.format(table="positions_snapshot"), [as_of.date()])
    pnl = read_table(con, "pnl_history", _LATEST_BEFORE.format(table="pnl_history"), [as_of.date()])
    last_pnl = pnl.sort_values("as_of").iloc[-1] if not pnl.empty else None
    nav = float(last_pnl["nav"]) if last_pnl is not None and "nav" in pnl else default_nav
    cash = float(last_pnl["cash"]) if last_pnl is not None and "cash" in pnl else None
    cols = ["symbol", "qty", "market_value", "mark"]
    if pos.empty:
        return pd.DataFrame({c: pd.Series(dtype=str if c == "symbol" else float) for c in cols}), cash, nav
    last = pos[pos["as_of"] == pos["as_of"].max()]
    return last[[c for c in cols if c in last.columns]].reset_index(drop=True), cash, nav


# --------------------------------------------------------------------------------------------
# quality


@dataclass(frozen=True)
class QualityOutput:
    table: pd.DataFrame
    health: DataHealthReport
    events: pd.DataFrame  # dated quality flags (issue 13)


def run_quality(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None) -> QualityOutput:
    try:
        run = assess_and_store_quality(con, pol, as_of, run_id=run_id)
    except NoIngestionError as exc:
        raise StageInputMissing(str(exc)) from exc
    return QualityOutput(run.table, run.health, run.events)


# --------------------------------------------------------------------------------------------
# features and regime


def run_features(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None) -> pd.DataFrame:
    bars = universe_bars(con, pol, as_of, run_id)
    feats = features_core.compute_market_features(bars, as_of)
    replace_partition(con, "market_features", feats, "as_of", as_of.date())
    return feats


def _previous_fit(con: Any, as_of: pd.Timestamp) -> regime_core.RegimeFit | None:
    fits = read_table(con, "regime_fits", "as_of < ?", [as_of.date()])
    if fits.empty:
        return None
    return regime_core.RegimeFit.from_dict(json.loads(fits.sort_values("as_of").iloc[-1]["fit_json"]))


@dataclass(frozen=True)
class RegimeOutput:
    snapshot: dict[str, Any]
    outcome: Any  # regime_core fit outcome
    index_symbols: int


def run_macro_series(con: Any, pol: Policies, as_of: pd.Timestamp, fred: Any, archive_dir: Path) -> Any:
    """FRED VIXCLS and the declared macro series as known on D (issue 16); ``fred`` None = not
    entitled (nothing is called; the regime records the proxy with its reason)."""
    from ais_pipelines.macro_ingestion import fetch_macro_series

    cfg = pol.models.regime
    outcome = fetch_macro_series(fred, [cfg.vix_series, *cfg.macro_series], as_of.date(), cfg.macro_lookback_days,
                                 archive_dir)
    replace_partition(con, "macro_observations", outcome.observations, "as_of", as_of.date())
    replace_partition(con, "macro_fetch_log", outcome.status, "as_of", as_of.date())
    return outcome


def macro_inputs_as_of(con: Any, pol: Policies, as_of: pd.Timestamp, vix_proxy: float) -> dict:
    """FRED VIX level and macro series as of D (issue 16); the proxy with a reason code without them."""
    from ais_pipelines.core.regime_macro import macro_inputs

    cfg = pol.models.regime
    obs = read_table(con, "macro_observations", "as_of = ?", [as_of.date()]) \
        if table_exists(con, "macro_observations") else pd.DataFrame()
    log = read_table(con, "macro_fetch_log", "as_of = ?", [as_of.date()]) \
        if table_exists(con, "macro_fetch_log") else pd.DataFrame()
    status = {str(r.series_id): str(r.reason_code) or "OK" for r in log.itertuples()} if not log.empty else {}
    return macro_inputs(obs, as_of, vix_proxy=vix_proxy, vix_series=cfg.vix_series, series=cfg.macro_series,
                        max_staleness_days=cfg.macro_max_staleness_days, fetch_status=status)


_FIT_WORKER: Any = None


def regime_fit_worker() -> Any:
    """A one-process pool (spawned once, kept for the process) that runs a regime refit's second
    optimiser start beside the first — the replay's nights refit every ``refit_every_sessions``.
    None on a one-core machine or with ``AIS_REGIME_FIT_WORKER=0``."""
    global _FIT_WORKER
    if _FIT_WORKER is not None and getattr(_FIT_WORKER, "_broken", False):
        _FIT_WORKER = None  # its process died (with the thread that spawned it): a new pool
    if _FIT_WORKER is None and (os.cpu_count() or 1) > 1 and os.environ.get("AIS_REGIME_FIT_WORKER", "1") != "0":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _FIT_WORKER = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_fit_worker_init)
    return _FIT_WORKER


def shutdown_regime_fit_worker() -> None:
    global _FIT_WORKER
    if _FIT_WORKER is not None:
        pool, _FIT_WORKER = _FIT_WORKER, None
        pool.shutdown(wait=True, cancel_futures=True)


def _fit_worker_init() -> None:
    from ais_pipelines.blas_threads import one_blas_thread

    die_with_parent()
    one_blas_thread()  # one of the processes running beside each other, one core each


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the one that spawned it exits, however it exits
    (a kill -9 included), so no worker outlives its replay."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def run_regime(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None,
               executor: Any = None) -> RegimeOutput:
    """``executor``: where a refit may run its second start (``regime_fit_worker``); None: here."""
    cfg = pol.models.regime
    stocks = [i.symbol for i in pol.universe.symbols if i.resolved_class == "STOCKS"]
    quality = read_quality(con, as_of)
    valid = set(quality.loc[quality["status"] == "VALID", "symbol"]) if not quality.empty else set()
    bars = _bars(con, [s for s in stocks if s in valid], as_of, run_id)
    closes = bars.pivot(index="date", columns="symbol", values="adj_close").sort_index()
    index = regime_core.build_market_index(closes)
    returns = index.pct_change().dropna()
    previous = _previous_fit(con, as_of)
    outcome = None  # issue 15: refit on the declared cadence; the nights between only filter
    if previous is not None and not regime_core.refit_due(previous, returns, cfg.refit_every_sessions):
        outcome = regime_core.filter_regime_model(returns, previous)
    if outcome is None:
        outcome = regime_core.fit_regime_model(returns, seed=cfg.seed, previous=previous, min_obs=cfg.min_obs,
                                               executor=executor)
    inputs = regime_core.regime_inputs(index, np.log(closes).diff(), as_of)
    inputs |= macro_inputs_as_of(con, pol, as_of, inputs.get("vix_proxy", float("nan")))  # issue 16
    snap = regime_core.regime_snapshot(
        outcome, as_of, inputs=inputs, threshold=cfg.crisis_threshold, min_scale=cfg.min_exposure_scale
    )
    row = {k: (json.dumps(v) if isinstance(v, list | dict | tuple) else v) for k, v in snap.items()}
    row["transition_json"] = json.dumps(np.asarray(outcome.fit.P).tolist()) if outcome.fit else "null"
    row["index_symbols"] = len(closes.columns)
    replace_partition(con, "regime_probabilities", pd.DataFrame([row]), "as_of", as_of.date())
    if outcome.fit is not None and not outcome.is_fallback and outcome.refitted:
        replace_partition(con, "regime_fits", pd.DataFrame([{"fit_json": json.dumps(outcome.fit.to_dict())}]),
                          "as_of", as_of.date())
    beliefs = outcome.filtered.rename_axis("date").reset_index()
    beliefs["label"] = outcome.filtered.idxmax(axis=1).to_numpy() if not outcome.filtered.empty else []
    replace_partition(con, "regime_beliefs", beliefs, "as_of", as_of.date())
    return RegimeOutput(snap, outcome, len(closes.columns))


# --------------------------------------------------------------------------------------------
# models, forecasts, decay


def run_model_refit(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None) -> pd.DataFrame:
    """Fit the forecast models on history up to D; D is their fit date (model age is real)."""
    bars = universe_bars(con, pol, as_of, run_id)
    models = forecasts_core.fit_models(bars, as_of, forecast_params(pol), regime_labels=regime_labels(con, as_of))
    rows = pd.DataFrame([{"model": m.name, "model_version": m.version, "model_json": m.to_json()}
                         for m in models])
    replace_partition(con, "forecast_models", rows, "fit_date", as_of.date())
    return rows


@dataclass(frozen=True)
class ForecastOutput:
    per_model: pd.DataFrame
    combined: pd.DataFrame


def run_forecasts(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None,
                  features: pd.DataFrame | None = None) -> ForecastOutput:
    """``features``: the night's ``run_features`` output (same bars, default feature parameters),
    so the replay does not compute them twice; None computes them (the asset)."""
    params = forecast_params(pol)
    bars = universe_bars(con, pol, as_of, run_id)
    models = load_models(con, as_of)
    regime = read_regime(con, as_of)
    probs = {r: float(regime[f"belief_{r.lower()}"]) for r in regime_core.REGIMES}
    if any(np.isnan(v) for v in probs.values()):
        probs = {"NORMAL": 0.0, "VOLATILE": 0.0, "CRISIS": 1.0}  # failed regime: assume the worst
    per_model, combined = forecasts_core.forecast(
        bars, as_of, models, params, probs, regime_labels=regime_labels(con, as_of), features=features
    )
    replace_partition(con, "forecasts_per_model", per_model, "as_of", as_of.date())
    replace_partition(con, "forecasts", combined, "as_of", as_of.date())
    return ForecastOutput(per_model, combined)


def run_decay(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None) -> pd.DataFrame:
    params = forecast_params(pol)
    bars = universe_bars(con, pol, as_of, run_id)
    models = load_models(con, as_of)
    table = decay_core.decay_metrics(bars, as_of, models, params.decay, horizon=params.horizon)
    replace_partition(con, "model_decay_metrics", table.drop(columns=["date"], errors="ignore"), "as_of",
                      as_of.date())
    return table


# --------------------------------------------------------------------------------------------
# strategies


def strategy_performance(con: Any, strategy_id: str, as_of: pd.Timestamp) -> Performance:
    """Realized paper performance from the warehouse (none yet → 0 days)."""
    perf = read_table(con, "strategy_performance", "strategy_id = ? AND as_of <= ?", [strategy_id, as_of.date()])
    if perf.empty:
        return Performance(days_evaluated=0)
    last = perf.sort_values("as_of").iloc[-1]
    return Performance(
        days_evaluated=int(last["days_evaluated"]), sharpe=float(last["sharpe"]),
        max_drawdown=float(last["max_drawdown"]), profit_factor=float(last["profit_factor"]),
        error_rate=float(last["error_rate"]),
    )


def run_lifecycle(con: Any, pol: Policies, as_of: pd.Timestamp) -> pd.DataFrame:
    params = lifecycle_params(pol)
    rows = []
    history = read_table(con, "strategy_lifecycle", "as_of < ?", [as_of.date()])
    for spec in pol.strategies.strategies:
        prev = history[history["strategy_id"] == spec.id].sort_values("as_of") if not history.empty else history
        if prev.empty:
            state = LifecycleState(spec.id, Stage.INCUBATING, spec.inception, 1.0, spec.inception)
        else:
            last = prev.iloc[-1]
            state = LifecycleState(spec.id, Stage(last["stage"]), pd.Timestamp(last["stage_since"]).date(),
                                   float(last["capital_multiplier"]), spec.inception)
        decision = step_lifecycle(state, strategy_performance(con, spec.id, as_of), as_of.date(), params)
        rows.append({
            "strategy_id": spec.id, "model": spec.model, "stage": str(decision.state.stage),
            "previous_stage": str(decision.previous_stage), "stage_since": decision.state.stage_since,
            "capital_multiplier": decision.state.capital_multiplier, "nav_cap": decision.nav_cap,
            "effective_cap": decision.effective_cap, "proving": decision.proving,
            "reason_codes": ";".join(sorted(str(c) for c in decision.reason_codes)),
        })
    table = pd.DataFrame(rows)
    replace_partition(con, "strategy_lifecycle", table, "as_of", as_of.date())
    return table


def run_candidates(con: Any, pol: Policies, as_of: pd.Timestamp) -> pd.DataFrame:
    d = as_of.date()
    per_model = read_table(con, "forecasts_per_model", "as_of = ?", [d])
    combined = read_table(con, "forecasts", "as_of = ?", [d])
    feats = read_table(con, "market_features", "as_of = ?", [d])
    quality = read_quality(con, as_of)
    lifecycle = read_table(con, "strategy_lifecycle", "as_of = ?", [d])
    stages = {r.strategy_id: (r.stage, float(r.effective_cap)) for r in lifecycle.itertuples()}
    specs = [StrategyDef(s.id, s.model, s.min_signal, s.inception) for s in pol.strategies.strategies]
    cands = generate_candidates(specs, per_model, combined, feats, quality, stages, as_of=d,
                                members=pol.universe.members_on(d))
    cands["asset_class"] = cands["symbol"].map(pol.universe.asset_classes).astype(str)
    cands["sector"] = cands["symbol"].map(pol.universe.sectors)
    replace_partition(con, "strategy_candidates", cands, "as_of", d)
    return cands


# --------------------------------------------------------------------------------------------
# scenarios, auction, CVaR, proposals


@dataclass(frozen=True)
class ScenarioOutput:
    scenarios: Scenarios
    wide: pd.DataFrame


def run_scenarios(con: Any, pol: Policies, as_of: pd.Timestamp, run_id: str | None = None) -> ScenarioOutput:
    risk = pol.risk
    quality = read_quality(con, as_of)
    valid = sorted(quality.loc[quality["status"] == ELIGIBLE, "symbol"])
    bars = _bars(con, valid, as_of, run_id)
    rets = session_aligned_log_returns(bars, as_of, risk.scenario_lookback)
    belief = None
    if risk.scenario_weighting == "regime":
        reg = read_regime(con, as_of)
        belief = {k: float(reg[f"belief_{k.lower()}"]) for k in ("NORMAL", "VOLATILE", "CRISIS")}
    beliefs = read_table(con, "regime_beliefs", "as_of = ?", [as_of.date()])
    regime_probs = (beliefs.set_index(pd.to_datetime(beliefs["date"]))[["NORMAL", "VOLATILE", "CRISIS"]]
                    if risk.scenario_weighting == "regime" and not beliefs.empty else None)
    scen = scenario_returns(rets, horizon=risk.horizon_sessions, lookback=risk.scenario_lookback,
                            weighting=risk.scenario_weighting, regime_probs=regime_probs, current_belief=belief)
    wide = scen.to_frame()
    long = scen.to_long()
    replace_partition(con, "scenario_returns", long, "as_of", as_of.date())
    return ScenarioOutput(scen, wide)


def load_warm_start(warm_dir: Path, as_of: pd.Timestamp) -> auction_core.WarmStart | None:
    """The basis saved by the latest partition before D (D−1 in a nightly run or a replay)."""
    if not warm_dir.is_dir():
        return None
    earlier = sorted(p for p in warm_dir.glob("*.npz") if p.stem < as_of.date().isoformat())
    if not earlier:
        return None
    try:
        warm = auction_core.WarmStart.load(earlier[-1])
    except (OSError, ValueError, KeyError):
        return None  # unreadable state only costs a cold solve
    warm.label = earlier[-1].stem  # the partition whose solve produced it
    return warm


@dataclass(frozen=True)
class AuctionOutput:
    allocations: pd.DataFrame
    symbols: pd.DataFrame
    summary: dict[str, Any]
    warm_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_auction(con: Any, pol: Policies, as_of: pd.Timestamp, warm_dir: Path) -> AuctionOutput:
    """The holdings-aware capital auction of D; ``warm_dir`` holds each session's solver basis."""
    d = as_of.date()
    warm_source = ""
    cands = read_table(con, "strategy_candidates", "as_of = ?", [d])
    regime = read_regime(con, as_of)
    positions, cash, last_nav = current_book(con, as_of, pol.mandate.nav)
    feats = read_table(con, "market_features", "as_of = ?", [d]).set_index("symbol")
    quality = read_quality(con, as_of).set_index("symbol")
    scen = read_scenarios(con, as_of)
    nav = book_nav(positions, feats["close"].to_dict(), cash, last_nav)
    held = positions[positions["qty"].astype(float) != 0] if not positions.empty else positions
    if cands.empty and held.empty:
        table = pd.DataFrame(columns=auction_core.OUTPUT_COLUMNS)
        symbols = pd.DataFrame(columns=auction_core.SYMBOL_COLUMNS)
        summary: dict[str, Any] = {"status": auction_core.STATUS_NO_CANDIDATES,
                                   "reason_codes": "AUCTION_NO_CANDIDATES"}
    else:
        if cands.empty:
            cands = pd.DataFrame({c: pd.Series(dtype=float if c in ("mu_adj", "strategy_cap") else str)
                                  for c in CANDIDATE_COLUMNS})
        u, m = pol.universe, pol.mandate
        classes = u.asset_classes
        inputs = auction_inputs(
            cands, feats, held, nav, regime,
            symbol_status=quality["status"].astype(str).to_dict(),
            quality_score=quality["data_quality_score"].astype(float).to_dict(),
            allowed={s: s in classes and m.symbol_allowed(s, classes[s])
                     for s in set(cands["symbol"]) | set(held["symbol"])},
            sectors=u.sectors, asset_classes={s: str(c) for s, c in classes.items()},
            max_position_weight=m.max_position_weight, max_adv_participation=m.max_adv_participation,
            quality_full_weight=pol.risk.quality_full_weight, max_sector_weight=pol.auction.max_sector_weight,
            sector_caps=pol.auction.sector_caps,
            asset_class_caps={str(k): v for k, v in pol.auction.asset_class_caps.items()},
        )
        warm = load_warm_start(warm_dir, as_of) if pol.auction.warm_start else None
        warm_source = warm.label if warm is not None else ""
        result = auction_core.run_capital_auction(
            inputs.candidates, scen, params=auction_params(pol, inputs.reduce_only), book=inputs.book,
            strategy_caps=inputs.strategy_caps, group_caps=inputs.group_caps, warm_start=warm,
        )
        if result.warm_start is not None and result.status == auction_core.STATUS_OPTIMAL:
            result.warm_start.label = d.isoformat()
            warm_dir.mkdir(parents=True, exist_ok=True)
            result.warm_start.save(warm_dir / f"{d.isoformat()}.npz")
        table, symbols = result.allocations, result.symbols
        summary = {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in result.summary().items()}
        summary["nav"] = nav
        summary["warm_start_source"] = warm_source
    replace_partition(con, "capital_allocations", table, "as_of", d)
    replace_partition(con, "auction_symbols", symbols, "as_of", d)
    replace_partition(con, "auction_summary", pd.DataFrame([summary]), "as_of", d)
    return AuctionOutput(table, symbols, summary, warm_source)


@dataclass(frozen=True)
class CvarOutput:
    result: Any  # cvar_core portfolio result
    decision: Any  # cvar_core breach decision
    components: pd.DataFrame
    summary: pd.DataFrame


def run_portfolio_cvar(con: Any, pol: Policies, as_of: pd.Timestamp) -> CvarOutput:
    d, r = as_of.date(), pol.risk
    sym = read_table(con, "auction_symbols", "as_of = ?", [d])
    scen = read_scenarios(con, as_of)
    # The auction's per-symbol targets include held weight that no candidate claims.
    weights = sym.set_index("symbol")["target_weight"] if not sym.empty else pd.Series(dtype=float)
    weights = weights.reindex(scen.symbols).fillna(0.0)
    res = cvar_core.portfolio_cvar(weights.to_numpy(), scen.returns, r.alpha, scen.probs)
    dec = cvar_core.breach_scaling(res, r.portfolio_cvar_limit, r.component_cvar_limit, r.min_scale)
    comp = pd.DataFrame({
        "symbol": weights.index, "weight": weights.to_numpy(), "target_weight": weights.to_numpy() * dec.scale,
        "component_cvar": res.component, "component_after": res.component * dec.scale,
        "marginal_cvar": res.marginal, "component_breach": dec.component_breach,
    })
    comp = comp[(comp["weight"] > 0)].reset_index(drop=True)
    summary = pd.DataFrame([{
        "var": res.var, "cvar": res.cvar, "cvar_after": dec.cvar_after, "limit": r.portfolio_cvar_limit,
        "component_limit": r.component_cvar_limit, "scale": dec.scale, "portfolio_breach": dec.portfolio_breach,
        "component_breaches": int(dec.component_breach.sum()), "residual_breach": dec.residual_breach,
        "gross_weight": float(weights.sum()), "alpha": r.alpha, "horizon_sessions": r.horizon_sessions,
        "reason_codes": ";".join(sorted(str(c) for c in dec.reason_codes)),
    }])
    replace_partition(con, "portfolio_cvar", summary, "as_of", d)
    replace_partition(con, "portfolio_cvar_components", comp, "as_of", d)
    return CvarOutput(res, dec, comp, summary)


@dataclass(frozen=True)
class ProposalOutput:
    orders: pd.DataFrame
    regime: dict[str, Any]
    nav: float


def run_order_proposals(con: Any, pol: Policies, as_of: pd.Timestamp) -> ProposalOutput:
    d = as_of.date()
    summary, _ = read_cvar(con, as_of)
    feats = read_table(con, "market_features", "as_of = ?", [d]).set_index("symbol")
    regime = read_regime(con, as_of)
    scen = read_scenarios(con, as_of)
    book, _, _ = current_book(con, as_of, pol.mandate.nav)
    auction = read_table(con, "auction_summary", "as_of = ?", [d])
    nav = float(auction["nav"].iloc[0]) if "nav" in auction and not auction.empty else pol.mandate.nav
    cands = read_table(con, "strategy_candidates", "as_of = ?", [d])
    # Targets per symbol from the auction (incl. exits of symbols without scenarios), scaled on breach.
    sym = read_table(con, "auction_symbols", "as_of = ?", [d])
    scale = float(summary["scale"].iloc[0]) if not summary.empty else 1.0
    targets = (sym.set_index("symbol")["target_weight"] * scale) if not sym.empty else pd.Series(dtype=float)
    symbols = sorted(set(targets.index) | set(book["symbol"]))
    f = pd.DataFrame({
        "adv_shares": feats["adv_usd_20d"] / feats["close"], "sigma_daily": feats["ewma_vol"],
        "spread_bps": feats["spread_bps_est"],
    }).reindex(symbols)
    in_breach = bool(summary["portfolio_breach"].iloc[0]) if not summary.empty else False
    orders = impact_core.order_proposals(
        targets, book, feats["close"].reindex(symbols), nav, f, regime.get("regime", "CRISIS"), in_breach,
        scenarios=scen.to_frame().reindex(columns=sorted(set(scen.symbols) | set(symbols))).fillna(0.0),
        probs=scen.probs, alpha=pol.risk.alpha, cvar_limit=pol.risk.portfolio_cvar_limit,
        fractional=True, min_notional=pol.mandate.min_order_notional,
    )
    if not cands.empty and not orders.empty:
        best = cands.sort_values("mu_adj", ascending=False).drop_duplicates("symbol").set_index("symbol")
        orders["strategy_id"] = orders["symbol"].map(best["strategy_id"])
        orders["confidence"] = orders["symbol"].map(best["confidence"]).fillna(0.0)
        orders["cvar_95_forecast"] = orders["symbol"].map(best["cvar_95"])
    orders["asset_class"] = orders["symbol"].map(pol.universe.asset_classes).astype(str)
    orders["nav"] = nav
    replace_partition(con, "order_proposals", orders, "as_of", d)
    return ProposalOutput(orders, regime, nav)


# --------------------------------------------------------------------------------------------
# reasoning memos (issue 16): an input of the pre-trade policy that can only add caution


def memo_reference_time(as_of: pd.Timestamp) -> datetime:
    """Event proximity is measured from the start of D+1 (UTC): deterministic for replays."""
    return datetime.combine(as_of.date() + timedelta(days=1), time(), UTC)


def memo_provider(pol: Policies, prompt_dir: Path) -> tuple[Any, str]:
    """(LLM provider or None for the rules, a note). An LLM without URL/key → a provider that fails."""
    cfg = pol.reasoning
    if cfg.provider == "rules":
        return None, "rules"
    from ais_pipelines.reasoning_llm import LlmMemoProvider, LlmSettings

    url, key = os.environ.get(cfg.llm.url_env, "").strip(), os.environ.get(cfg.llm.key_env, "").strip()
    settings = LlmSettings(url=url, api_key=key, model=cfg.llm.model, soft_timeout_s=cfg.llm.soft_timeout_s,
                           hard_timeout_s=cfg.llm.hard_timeout_s, max_input_tokens=cfg.llm.max_input_tokens,
                           max_output_tokens=cfg.llm.max_output_tokens)
    if not url or not key:
        return _Unconfigured(f"{cfg.llm.url_env} and {cfg.llm.key_env} must be set for provider llm"), "llm (unset)"
    return LlmMemoProvider(settings, prompt_dir), f"llm {cfg.llm.model}"


class _Unconfigured:
    name = "llm"

    def __init__(self, why: str) -> None:
        self.why = why

    def memo(self, facts: Any) -> reasoning_core.ReasoningMemo:
        return reasoning_core.failed_memo(facts, provider="llm", model_version="unconfigured", prompt_digest="",
                                          latency_ms=0.0, attempts=0, reason_codes=(), detail=self.why)


@dataclass(frozen=True)
class MemoOutput:
    memos: pd.DataFrame
    provider_note: str


def run_reasoning_memos(con: Any, pol: Policies, as_of: pd.Timestamp, prompt_dir: Path) -> MemoOutput:
    """One memo per PROPOSED order of D, from the facts the pipeline already has."""
    d = as_of.date()
    llm, note = memo_provider(pol, prompt_dir)
    proposals = read_table(con, "order_proposals", "as_of = ?", [d])
    if not proposals.empty and "status" in proposals.columns:
        proposals = proposals[proposals["status"] == "PROPOSED"]
    regime = read_table(con, "regime_probabilities", "as_of = ?", [d])
    facts = reasoning_core.memo_inputs(
        proposals, regime=regime.iloc[0].to_dict() if not regime.empty else {},
        quality=read_table(con, "data_quality", "as_of = ?", [d]),
        forecasts=read_table(con, "forecasts", "as_of = ?", [d]),
        blackouts=pol.mandate.event_blackouts, now=memo_reference_time(as_of),
    )
    memos = reasoning_core.produce_memos(facts, pol.reasoning.rules, llm)
    frame = reasoning_core.memos_frame(memos)
    replace_partition(con, "reasoning_memos", frame, "as_of", d)
    return MemoOutput(frame, note)


# --------------------------------------------------------------------------------------------
# the whole night


DECISION_STEPS = ("features", "regime", "forecasts", "model_decay_metrics", "strategy_lifecycle",
                  "strategy_candidates", "scenario_returns", "capital_auction", "portfolio_cvar", "order_proposals")


@dataclass(frozen=True)
class MarketNight:
    """The night's steps that read only market data and earlier nights' models — never the book:
    quality, features, macro series, regime, the model refit, forecasts, decay, scenarios. The
    replay runs them sessions ahead on its second core (:mod:`ais_pipelines.replay_feed`)."""

    quality: QualityOutput
    regime: RegimeOutput
    forecasts: ForecastOutput
    refit: bool = False


@dataclass
class NightlyOutput:
    quality: QualityOutput
    regime: RegimeOutput
    forecasts: ForecastOutput
    lifecycle: pd.DataFrame
    candidates: pd.DataFrame
    auction: AuctionOutput
    cvar: CvarOutput
    proposals: ProposalOutput
    memos: MemoOutput | None = None
    refit: bool = False


def run_market_night(con: Any, pol: Policies, as_of: pd.Timestamp, warm_dir: Path, *, refit: bool = False,
                     fred: Any = None, run_id: str | None = None) -> MarketNight:
    """The book-independent steps of D, in the order of the asset graph.

    ``refit`` fits the forecast models with fit date D first (the model_refit_job), after the
    regime step whose labels the regime-conditional model needs. ``run_id``: the steps share one
    bars read (``bars_cache``, as in a Dagster run) instead of one query per step."""
    quality = run_quality(con, pol, as_of, run_id)
    feats = run_features(con, pol, as_of, run_id)
    run_macro_series(con, pol, as_of, fred, warm_dir.parent / "raw" / f"macro-{as_of.date()}")
    regime = run_regime(con, pol, as_of, run_id, executor=regime_fit_worker())
    if refit:
        run_model_refit(con, pol, as_of, run_id)
    fc = run_forecasts(con, pol, as_of, run_id, features=feats)
    run_decay(con, pol, as_of, run_id)
    run_scenarios(con, pol, as_of, run_id)  # reads quality, bars and the regime only
    return MarketNight(quality, regime, fc, refit)


def run_book_night(con: Any, pol: Policies, as_of: pd.Timestamp, warm_dir: Path, market: MarketNight) -> NightlyOutput:
    """The steps of D that read the book and the strategies' realized performance, after
    :func:`run_market_night` of D: lifecycle, candidates, auction, CVaR, proposals, memos."""
    lifecycle = run_lifecycle(con, pol, as_of)
    cands = run_candidates(con, pol, as_of)
    auction = run_auction(con, pol, as_of, warm_dir)
    cvar = run_portfolio_cvar(con, pol, as_of)
    proposals = run_order_proposals(con, pol, as_of)
    memos = run_reasoning_memos(con, pol, as_of, warm_dir.parent / "reasoning" / str(as_of.date()))
    return NightlyOutput(market.quality, market.regime, market.forecasts, lifecycle, cands, auction, cvar, proposals,
                         memos, market.refit)


def run_nightly(con: Any, pol: Policies, as_of: pd.Timestamp, warm_dir: Path, *, refit: bool = False,
                fred: Any = None, run_id: str | None = None) -> NightlyOutput:
    """Every nightly step of D: :func:`run_market_night`, then :func:`run_book_night`."""
    market = run_market_night(con, pol, as_of, warm_dir, refit=refit, fred=fred, run_id=run_id)
    return run_book_night(con, pol, as_of, warm_dir, market)
