"""The intraday pipeline as plain functions (§0 intraday, §H3–H5, §I1–I5, §J1–J3). No Dagster.

One intraday execution of the proposals of as-of session D, in the session after D:

1. :func:`load_snapshot` reads what the nightly job decided (``order_proposals``) and the
   context it decided on (features, quality, candidates, forecasts, bars → returns, providers).
2. :func:`fetch_quotes` asks the quote source for fresh quotes at the injected clock's now;
   :func:`book_snapshot` reads the broker's book (positions, cash, NAV) — the broker is the truth.
3. :func:`build_policy_context` maps all of it onto every field of the policy engine's order
   context (:data:`ais_pipelines.core.policy.CONTEXT_FIELDS`); the mapping is documented there
   field by field.
4. :func:`decide` evaluates the environment's policy (pre-trade rules + governance vetoes, with
   the environment overlay applied by :func:`load_environment_policy`).
5. :func:`sign_approvals` signs every APPROVE (HMAC, expiring, single use); :func:`record_governance`
   stores approvals in the ledger, queues every REVIEW for a person and audits every decision.
6. :func:`execute` submits each approval through the OMS (which verifies it again before any
   broker call) and works the orders for a number of broker ticks. REVIEW never reaches it.
7. :func:`portfolio_state` values the book; :func:`apply_daily_loss_limit` trips the latched
   kill switch through the OMS when today's loss reaches the limit.

Every decision, approval, order, fill and override is appended to the audit chain with reason
codes; an audit write failure halts trading (:func:`audit_or_halt`, and the OMS does the same).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from ais_pipelines.brokers.base import Broker
from ais_pipelines.core import trading_state as ts
from ais_pipelines.core.approvals import (
    ApprovalError,
    SignedApproval,
    canonical_json,
    make_approval_id,
    sign_approval,
    verify_approval,
)
from ais_pipelines.core.asset_classes import classify_symbol
from ais_pipelines.core.audit import AuditChain, AuditWriteError
from ais_pipelines.core.calendars import calendar_name, is_open_at
from ais_pipelines.core.clock import Clock, ensure_utc
from ais_pipelines.core.order_states import OPEN_STATES, TERMINAL_STATES, OrderState
from ais_pipelines.core.policy import (
    CONTEXT_FIELDS,
    POLICY_DIR,
    PolicyError,
    PolicySet,
    Rule,
    evaluate_orders,
    shipped_policy,
)
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.core.reasoning import verdict_by_symbol
from ais_pipelines.core.trading_state import TradingStatus
from ais_pipelines.ledger.store import LedgerStore, apply_fill_to_position
from ais_pipelines.oms.oms import OrderManagementSystem, OrderRefusedError, SystemHaltedError

ENV_VAR = "AIS_ENV"
ENVIRONMENTS = ("local", "ci", "prod")
GOVERNANCE_ACTOR = "governance"
EXECUTED_MARKER = "INTRADAY_EXECUTED"  # ledger execution-event kind: "partition D was executed"
ORDER_VERSION = 1
_EPS = 1e-9

# --------------------------------------------------------------------------------------------
# policy environments


@dataclass(frozen=True)
class ParamOverride:
    rule_id: str
    param: str
    shipped: Any
    value: Any
    why: str


@dataclass(frozen=True)
class EnvironmentPolicy:
    """The shipped policy with one environment's declared parameter overrides applied.

    ``digest`` identifies what decides: SHA-256 over the effective rules' digest, the
    environment name and every override with its reason. It is stored with each decision and
    in the audit log, so a decision taken under a relaxed rule can never pass for one taken
    under the shipped rule.
    """

    environment: str
    policy: PolicySet
    shipped_digest: str
    overrides: tuple[ParamOverride, ...]
    overlay_path: str
    digest: str

    def audit_payload(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "overlay": self.overlay_path,
            "digest": self.digest,
            "rules_digest": self.policy.digest,
            "shipped_digest": self.shipped_digest,
            "overrides": [
                {"rule_id": o.rule_id, "param": o.param, "shipped": o.shipped, "value": o.value, "why": o.why}
                for o in self.overrides
            ],
        }


def environment_name(environ: Mapping[str, str] | None = None) -> str:
    env = (environ if environ is not None else os.environ).get(ENV_VAR, "local").strip() or "local"
    if env not in ENVIRONMENTS:
        raise PolicyError(f"{ENV_VAR} must be one of {ENVIRONMENTS}, got {env!r}")
    return env


def _overlay_error(path: Path, message: str, rule_id: str | None = None) -> PolicyError:
    return PolicyError(f"{path}: {message}", path=str(path), rule_id=rule_id)


def load_environment_policy(
    env: str | None = None, policy_dir: str | Path | None = None, as_of: date | None = None
) -> EnvironmentPolicy:
    """``pre_trade.yaml`` + ``vetoes.yaml`` with ``environments/{env}.yaml`` applied.

    ``as_of``: each rule file is the version in force on that session (``effective_from``,
    kept versions under ``versions/<stem>/``; none in force → ``POLICY_NOT_IN_FORCE``). The
    overlay is the environment's, not dated.

    Overlay format (data only)::

        environment: local
        param_overrides:
          veto_data_dependency:          # a rule id of the shipped policy
            why: <mandatory, non-empty>  # the honest reason, recorded in digest and audit
            min_providers: 1             # a param the rule declares; re-validated with the rule

    Every problem (missing file, malformed YAML, another environment's file, unknown rule,
    unknown param, missing ``why``, a value the rule refuses) raises :class:`PolicyError`
    naming the overlay file: nothing trades on a policy that could not be read.
    """
    env = env or environment_name()
    if env not in ENVIRONMENTS:
        raise PolicyError(f"environment must be one of {ENVIRONMENTS}, got {env!r}")
    base_dir = Path(policy_dir) if policy_dir is not None else POLICY_DIR
    base = shipped_policy(base_dir, resolve=_in_force_on(as_of))
    path = base_dir / "environments" / f"{env}.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _overlay_error(path, f"cannot read environment overlay: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise _overlay_error(path, f"malformed YAML: {exc}") from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise _overlay_error(path, "top level must be a mapping with environment and param_overrides")
    unknown = sorted(set(raw) - {"environment", "description", "param_overrides"})
    if unknown:
        raise _overlay_error(path, f"unknown key(s) {unknown} (allowed: environment, description, param_overrides)")
    if raw.get("environment", env) != env:
        raise _overlay_error(path, f"environment: file declares {raw.get('environment')!r}, loaded as {env!r}")
    overrides_raw = raw.get("param_overrides") or {}
    if not isinstance(overrides_raw, dict):
        raise _overlay_error(path, "param_overrides must be a mapping {rule_id: {why, param: value}}")

    rules = list(base.rules)
    sources = list(base.sources)
    ids = [r.id for r in rules]
    applied: list[ParamOverride] = []
    for rule_id, spec in overrides_raw.items():
        where = f"param_overrides.{rule_id}"
        if rule_id not in ids:
            raise _overlay_error(path, f"{where}: unknown rule id {rule_id!r} (known: {', '.join(ids)})", rule_id)
        if not isinstance(spec, dict):
            raise _overlay_error(path, f"{where}: must be a mapping of why and params", rule_id)
        why = spec.get("why")
        if not isinstance(why, str) or not why.strip():
            raise _overlay_error(path, f"{where}.why: every override needs a written reason", rule_id)
        i = ids.index(rule_id)
        rule = rules[i]
        params = {k: v for k, v in spec.items() if k != "why"}
        if not params:
            raise _overlay_error(path, f"{where}: no parameter overridden", rule_id)
        for p in params:
            if p not in rule.params:
                known = ", ".join(rule.params) or "none"
                raise _overlay_error(path, f"{where}.{p}: unknown param {p!r} (rule declares: {known})", rule_id)
        body = rule.model_dump(mode="json", by_alias=True, exclude_unset=True)
        body["params"] = {**body.get("params", {}), **params}
        try:
            rules[i] = Rule.model_validate(body)
        except ValidationError as exc:
            msgs = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
            # Name the overlay's own key (param_overrides.<rule>.<param>), not the rule's params.<param>.
            problems = "; ".join(f"{where}.{m.removeprefix('params.')}" if m.startswith("params.")
                                 else f"{where}: {m}" for m in msgs)
            raise _overlay_error(path, problems, rule_id) from exc
        sources[i] = f"{sources[i]}+{path}"
        applied += [ParamOverride(rule_id, p, rule.params[p], v, why.strip()) for p, v in params.items()]
    policy = PolicySet(tuple(rules), base.policy_names, tuple(sources))
    digest = hashlib.sha256(
        canonical_json(
            {
                "environment": env,
                "rules_digest": policy.digest,
                "overrides": [o.__dict__ for o in applied],
            }
        )
    ).hexdigest()
    return EnvironmentPolicy(env, policy, base.digest, tuple(applied), str(path), digest)


def _in_force_on(as_of: date | None) -> Callable[[Path], Path] | None:
    """File → the version of it in force on ``as_of`` (a PolicyError when none was)."""
    if as_of is None:
        return None
    from ais_pipelines.policy_versions import in_force

    def resolve(path: Path) -> Path:
        try:
            return in_force(path, as_of).path
        except ValueError as exc:  # PolicyFileError / PolicyNotInForceError
            err = PolicyError(str(exc), path=str(getattr(exc, "path", path)))
            err.reason = getattr(exc, "reason_code", err.reason)
            raise err from exc

    return resolve


def load_execution_policies(policies: Any, env: str | None = None) -> EnvironmentPolicy:
    """Everything the execution path depends on, loaded and validated at the start of a run,
    before the first quote: universe, mandate, risk limits, pre-trade rules, vetoes and the
    environment overlay. Any problem raises (PolicyError / PolicyFileError): nothing is sent."""
    from ais_pipelines.config import require_execution_policies

    env = env or environment_name()
    require_execution_policies(policies, env)
    return load_environment_policy(env, policy_dir=policies.directory, as_of=getattr(policies, "as_of", None))


# --------------------------------------------------------------------------------------------
# the nightly decision and its context, read from the warehouse


@dataclass
class MarketSnapshot:
    """Everything the nightly job of session D left for the intraday path (point in time: ≤ D)."""

    as_of: date
    proposals: pd.DataFrame
    features: pd.DataFrame
    quality: pd.DataFrame
    candidates: pd.DataFrame
    forecasts: pd.DataFrame
    returns: pd.DataFrame  # wide: date × symbol daily log returns (last ~63 sessions)
    history_providers: dict[str, set[str]] = field(default_factory=dict)
    regime: str = "NORMAL"
    memos: pd.DataFrame = field(default_factory=pd.DataFrame)  # issue 16: reasoning_memos of D

    def _feature(self, column: str) -> dict[str, float]:
        if self.features.empty or column not in self.features.columns:
            return {}
        s = pd.to_numeric(self.features.set_index("symbol")[column], errors="coerce")
        return {str(k): float(v) for k, v in s.items() if pd.notna(v)}

    def closes(self) -> dict[str, float]:
        return self._feature("close")

    def spreads_bps(self) -> dict[str, float]:
        return self._feature("spread_bps_est")

    def sigma_daily(self) -> dict[str, float]:
        return self._feature("ewma_vol")

    def adv_shares(self) -> dict[str, float]:
        """ADV in shares = 20-day dollar ADV / close (what the impact model and the broker need)."""
        closes = self.closes()
        return {s: v / closes[s] for s, v in self._feature("adv_usd_20d").items() if closes.get(s, 0) > 0}

    def provider_counts(self, quote_provider: str | None) -> dict[str, int]:
        """Independent providers behind each symbol: history providers ∪ the quote provider."""
        symbols = set(self.history_providers) | set(self.proposals.get("symbol", pd.Series(dtype=str)))
        out = {}
        for s in symbols:
            names = set(self.history_providers.get(s, set()))
            if quote_provider:
                names.add(quote_provider)
            out[str(s)] = len(names)
        return out


def _read(con: Any, table: str, as_of: date) -> pd.DataFrame:
    from ais_pipelines.warehouse import read_table

    return read_table(con, table, "as_of = ?", [as_of])


def load_snapshot(con: Any, as_of: date, returns_window: int = 63) -> MarketSnapshot:
    """Read session D's proposals and their context from the DuckDB warehouse."""
    from ais_pipelines.warehouse import read_bars, table_exists

    proposals = _read(con, "order_proposals", as_of)
    features = _read(con, "market_features", as_of)
    quality = _read(con, "data_quality", as_of)
    candidates = _read(con, "strategy_candidates", as_of)
    forecasts = _read(con, "forecasts", as_of)
    regime_rows = _read(con, "regime_probabilities", as_of)
    regime = "NORMAL"
    for col in ("regime", "current_regime", "most_likely_regime"):
        if not regime_rows.empty and col in regime_rows.columns:
            regime = str(regime_rows[col].iloc[0]).upper()
            break
    if not proposals.empty and "regime" in proposals.columns and proposals["regime"].notna().any():
        regime = str(proposals["regime"].dropna().iloc[0]).upper()
    providers: dict[str, set[str]] = {}
    returns = pd.DataFrame()
    if table_exists(con, "bars"):
        rows = con.execute(
            "SELECT symbol, list(DISTINCT provider) FROM bars WHERE date <= ? GROUP BY symbol",
            [pd.Timestamp(as_of).to_pydatetime()],
        ).fetchall()
        providers = {str(s): {str(p) for p in ps} for s, ps in rows}
        start = pd.Timestamp(as_of) - pd.Timedelta(days=int(returns_window * 1.6) + 10)
        bars = read_bars(con, end=as_of, start=start)
        if not bars.empty:
            px = bars.pivot_table(index="date", columns="symbol", values="adj_close", aggfunc="last")
            returns = np.log(px.where(px > 0)).diff().iloc[1:].tail(returns_window)
    memos = _read(con, "reasoning_memos", as_of) if table_exists(con, "reasoning_memos") else pd.DataFrame()
    return MarketSnapshot(
        as_of=as_of,
        proposals=proposals,
        features=features,
        quality=quality,
        candidates=candidates,
        forecasts=forecasts,
        returns=returns,
        history_providers=providers,
        regime=regime,
        memos=memos,
    )


# --------------------------------------------------------------------------------------------
# one trading session


@dataclass
class TradingSession:
    """What one intraday execution (or a control action) works with, already opened."""

    as_of: date
    policies: Any  # ais_pipelines.config.Policies
    ledger: LedgerStore
    audit: AuditChain
    clock: Clock
    snapshot: MarketSnapshot
    quotes: Callable[[str, datetime], Any]
    broker: Broker

    @property
    def starting_nav(self) -> float:
        return float(self.policies.mandate.nav)


# --------------------------------------------------------------------------------------------
# quotes and the book


QUOTE_COLUMNS = ("symbol", "bid", "ask", "mid", "spread_bps", "quote_ts", "quote_error")


def fetch_quotes(source: Callable[[str, datetime], Any], symbols: Iterable[str], now: datetime) -> pd.DataFrame:
    """One fresh quote per symbol at ``now``. No quote or a failing feed → NaN row (fail closed)."""
    rows = []
    for sym in sorted({str(s) for s in symbols}):
        bid = ask = np.nan
        qts: Any = pd.NaT
        err = None
        try:
            q = source(sym, now)
            if q is None:
                err = "no quote"
            else:
                b, a, t = q
                bid, ask, qts = float(b), float(a), pd.Timestamp(ensure_utc(t))
        except Exception as exc:  # a broken feed is a missing quote, never a guessed one
            err = f"{type(exc).__name__}: {exc}"
        ok = math.isfinite(bid) and math.isfinite(ask) and 0 < bid <= ask
        if not ok and err is None:
            err, bid, ask, qts = f"unusable quote bid={bid} ask={ask}", np.nan, np.nan, pd.NaT
        mid = (bid + ask) / 2 if ok else np.nan
        rows.append(
            {
                "symbol": sym,
                "bid": bid,
                "ask": ask,
                "mid": mid,
                "spread_bps": (ask - bid) / mid * 1e4 if ok else np.nan,
                "quote_ts": qts,
                "quote_error": err,
            }
        )
    out = pd.DataFrame(rows, columns=list(QUOTE_COLUMNS))
    out["quote_ts"] = pd.to_datetime(out["quote_ts"], utc=True)
    return out


@dataclass(frozen=True)
class BookSnapshot:
    """The broker's book at the execution clock (the broker is the truth, §J1)."""

    positions: dict[str, float]
    avg_prices: dict[str, float]
    marks: dict[str, float]
    cash: float
    nav: float
    session_open_nav: float
    trading_status: TradingStatus

    @property
    def gross_value(self) -> float:
        return float(sum(abs(q) * self.marks.get(s, self.avg_prices.get(s, np.nan)) for s, q in self.positions.items()))

    @property
    def gross_exposure(self) -> float:
        return self.gross_value / self.nav if self.nav > 0 else math.nan

    @property
    def daily_drawdown(self) -> float:
        """Today's NAV drawdown as a positive fraction of the session-open NAV (0 when up)."""
        if not (self.session_open_nav > 0) or not math.isfinite(self.nav):
            return math.nan
        return max(0.0, (self.session_open_nav - self.nav) / self.session_open_nav)


def book_snapshot(
    broker: Broker, marks: Mapping[str, float], session_open_nav: float, trading_status: TradingStatus
) -> BookSnapshot:
    """Positions and cash from the broker; NAV = cash + Σ qty × mark (mark = quote mid, else avg price)."""
    positions = broker.get_positions()
    account = broker.get_account()
    qty = {s: float(p.qty) for s, p in positions.items() if abs(p.qty) > _EPS}
    avg = {s: float(p.avg_price) for s, p in positions.items()}
    used = {s: float(marks[s]) if s in marks and math.isfinite(marks[s]) else avg[s] for s in qty}
    nav = float(account.cash) + sum(q * used[s] for s, q in qty.items())
    return BookSnapshot(qty, avg, used, float(account.cash), nav, float(session_open_nav), trading_status)


def marks_from_quotes(quotes: pd.DataFrame) -> dict[str, float]:
    if quotes.empty:
        return {}
    ok = quotes.dropna(subset=["mid"])
    return {str(s): float(m) for s, m in zip(ok["symbol"], ok["mid"], strict=True)}


# --------------------------------------------------------------------------------------------
# veto inputs from history


def execution_stats(ledger: LedgerStore, max_orders: int = 100) -> dict[str, float]:
    """exec_* veto inputs over the last ``max_orders`` finished (non-shadow) orders.

    Slippage is measured against the *decision* price (the order's ``reference_price``, the
    close the nightly job decided on), signed so that positive is a cost; the error is against
    the impact model's prediction (``predicted_impact_bps``) for the same order. No history →
    ``exec_fill_count = 0`` and undefined (NaN) statistics: a zero count proves the veto does
    not apply.
    """
    orders = ledger.last_orders(
        TERMINAL_STATES,
        lambda o: o.mode != "SHADOW" and isinstance(o.payload, dict) and "reference_price" in o.payload,
        max_orders,
    )  # the last ones only, and their fills in one query: not every order the ledger ever held
    fills = ledger.fills_of(o.client_order_id for o in orders)
    slips: list[float] = []
    errs: list[float] = []
    ordered = filled = 0.0
    for o in orders:
        ordered += o.qty
        filled += o.filled_qty
        ref = _num(o.payload.get("reference_price"))
        pred = _num(o.payload.get("predicted_impact_bps"))
        sign = 1.0 if o.side == "BUY" else -1.0
        for f in fills[o.client_order_id]:
            if not (ref > 0):
                continue
            slip = sign * (f.price - ref) / ref * 1e4
            slips.append(slip)
            if math.isfinite(pred):
                errs.append(abs(slip - pred))
    return {
        "exec_fill_count": float(len(slips)),
        "exec_fill_rate": filled / ordered if ordered > 0 and slips else math.nan,
        "exec_slippage_bps": float(np.mean(slips)) if slips else math.nan,
        "exec_slippage_err_bps": float(np.mean(errs)) if errs else math.nan,
    }


def pnl_stats(pnl_history: pd.DataFrame, window: int = 63) -> dict[str, float]:
    """pnl_obs_days and pnl_z_vs_model from the daily ``pnl_history`` rows before D.

    Only days with a model expectation count (``expected_pnl_sd > 0``: the book held positions
    with forecasts). z = (Σ realized − Σ expected) / √Σ sd² over the window.
    """
    need = {"pnl_day", "expected_pnl", "expected_pnl_sd"}
    if pnl_history.empty or not need <= set(pnl_history.columns):
        return {"pnl_obs_days": 0.0, "pnl_z_vs_model": math.nan}
    h = pnl_history.sort_values("as_of").tail(window)
    h = h[pd.to_numeric(h["expected_pnl_sd"], errors="coerce") > 0]
    if h.empty:
        return {"pnl_obs_days": 0.0, "pnl_z_vs_model": math.nan}
    sd = float(np.sqrt((h["expected_pnl_sd"].astype(float) ** 2).sum()))
    z = float((h["pnl_day"].astype(float).sum() - h["expected_pnl"].astype(float).sum()) / sd)
    return {"pnl_obs_days": float(len(h)), "pnl_z_vs_model": z}


def _pc1_correlations(returns: pd.DataFrame, min_obs: int = 20, symbols: Iterable[str] | None = None) -> pd.Series:
    """|corr| of each symbol's returns (of ``symbols`` only, when given) with the first principal
    component of the panel."""
    found = _pc1_panel(returns, min_obs)
    if found is None:
        return pd.Series(dtype=float)
    z, pc1 = found
    if symbols is not None:  # the panel (and so the component) is the whole universe's either way
        wanted = set(symbols)
        z = z[[c for c in z.columns if c in wanted]]
        if z.shape[1] == 0:
            return pd.Series(dtype=float)
    return z.apply(lambda col: abs(float(np.corrcoef(col, pc1)[0, 1])))


_PC1_LAST: tuple[Any, ...] = ()  # (weakref to the panel, its fingerprint, min_obs, result): the last one asked


def _pc1_panel(returns: pd.DataFrame, min_obs: int) -> tuple[pd.DataFrame, pd.Series] | None:
    """The standardized panel and its first principal component (an SVD of the whole panel).

    A session asks it for the same returns panel once per context it assembles (every scripted
    or human approval re-checks its order against a fresh context), so the last panel's answer is
    kept while the same, unchanged frame is asked again (its values are fingerprinted)."""
    global _PC1_LAST
    values = returns.to_numpy()
    fingerprint = None if values.dtype.kind != "f" else (  # only a float panel is kept
        returns.shape, tuple(returns.columns), tuple(returns.index[[0, -1]]) if len(returns) else (),
        hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).digest())
    last = _PC1_LAST  # one read of the global: another thread may replace it
    if fingerprint is not None and last and last[0]() is returns and last[1] == fingerprint and last[2] == min_obs:
        return last[3]
    panel = returns.dropna(axis=1, thresh=min_obs)
    panel = panel.dropna(axis=0)
    out: tuple[pd.DataFrame, pd.Series] | None = None
    if panel.shape[0] >= min_obs and panel.shape[1] >= 2:
        z = (panel - panel.mean()) / panel.std(ddof=0).replace(0, np.nan)
        z = z.dropna(axis=1)
        if z.shape[1] >= 2:
            u, s, _vt = np.linalg.svd(z.to_numpy(), full_matrices=False)
            out = (z, pd.Series(u[:, 0] * s[0], index=z.index))
    _PC1_LAST = (weakref.ref(returns), fingerprint, min_obs, out) if fingerprint is not None else ()
    return out


def win_stats(ledger: LedgerStore, returns: pd.DataFrame, now: datetime, window_days: int = 63) -> dict[str, float]:
    """win_count and correlated_win_share from the ledger's closing fills in the last window.

    A win is a fill that reduces a position at a profit (realized P&L before fees > 0). A win is
    "correlated" when its symbol's daily returns have |corr| ≥ 0.7 with the first principal
    component of the universe's returns (the book's dominant common factor).
    """
    since = ensure_utc(now) - timedelta(days=window_days)
    wins = [s for ts, s in _closing_wins(ledger) if ts >= since]
    if not wins:
        return {"win_count": 0.0, "correlated_win_share": math.nan}
    corr = _pc1_correlations(returns, symbols=wins) if not returns.empty else pd.Series(dtype=float)
    known = [w for w in wins if w in corr.index]
    share = sum(corr[w] >= 0.7 for w in known) / len(known) if known else math.nan
    return {"win_count": float(len(wins)), "correlated_win_share": float(share)}


@dataclass
class _WinBook:
    """Every fill so far applied to a book (fees aside); the fills that closed at a profit."""

    count: int = 0
    key: tuple[datetime, str] | None = None
    book: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    wins: list[tuple[datetime, str]] = field(default_factory=list)

    def apply(self, fills: Iterable[Any]) -> None:
        for f in fills:
            q, a, r = self.book.get(f.symbol, (0.0, 0.0, 0.0))
            nq, na, nr = apply_fill_to_position(q, a, r, f.side, f.qty, f.price, 0.0)
            self.book[f.symbol] = (nq, na, nr)
            if nr - r > _EPS:
                self.wins.append((ensure_utc(f.ts), f.symbol))
            self.count += 1
            self.key = (f.ts, f.fill_id)


_WIN_BOOKS: weakref.WeakKeyDictionary[Any, _WinBook] = weakref.WeakKeyDictionary()


def _closing_wins(ledger: LedgerStore) -> list[tuple[datetime, str]]:
    """(ts, symbol) of every fill that reduced a position at a profit, in ``ledger.fills()`` order.

    The book is carried per ledger object and only the fills after the last one seen are
    applied (a long replay's ledger holds every fill it ever made); when a fill sorts before
    the last one seen (``fills_after`` says so) the book is rebuilt from every fill."""
    wb = _WIN_BOOKS.get(ledger)
    new = ledger.fills_after(wb.key, wb.count) if wb is not None else None
    if wb is None or new is None:
        wb = _WinBook()
        new = ledger.fills()
        with contextlib.suppress(TypeError):  # not weak-referenceable: computed afresh every call
            _WIN_BOOKS[ledger] = wb
    wb.apply(new)
    return wb.wins


def correlation_to_book(symbol: str, book: BookSnapshot, returns: pd.DataFrame, min_obs: int = 20) -> float:
    """Correlation of ``symbol``'s daily returns with the rest of the book's (value-weighted).

    The symbol's own position is excluded (adding to a holding is not a new concentration). An
    empty book is 0.0: there is nothing to be correlated with. NaN when returns are missing.
    """
    others = {s: q * book.marks.get(s, book.avg_prices.get(s, np.nan)) for s, q in book.positions.items() if s != symbol}
    others = {s: v for s, v in others.items() if math.isfinite(v) and abs(v) > _EPS}
    if not others:
        return 0.0
    if returns.empty or symbol not in returns.columns:
        return math.nan
    cols = [s for s in others if s in returns.columns]
    if not cols:
        return math.nan
    w = pd.Series({s: others[s] for s in cols})
    frame = returns[[symbol, *cols]].dropna()
    if len(frame) < min_obs:
        return math.nan
    book_ret = frame[cols].to_numpy() @ (w.to_numpy() / w.abs().sum())
    own = frame[symbol].to_numpy()
    if np.std(own) == 0 or np.std(book_ret) == 0:
        return math.nan
    return float(np.corrcoef(own, book_ret)[0, 1])


# --------------------------------------------------------------------------------------------
# the order context


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _per_symbol(frame: pd.DataFrame, column: str, how: str = "first") -> dict[str, float]:
    """symbol → the first / min / max non-missing value of ``column`` (a groupby's ``first`` /
    ``min`` / ``max``, without its per-call cost on these ~100-row frames)."""
    if frame.empty or column not in frame.columns or "symbol" not in frame.columns:
        return {}
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    keys = frame["symbol"].astype(str)
    out: dict[str, float] = {}
    pick = min if how == "min" else max if how == "max" else None
    for k, v, missing in zip(keys.to_numpy(dtype=object), values, keys.isna().to_numpy(), strict=True):
        if missing or v != v:  # NaN key or value: skipped, as by the groupby
            continue
        if k not in out:
            out[k] = float(v)
        elif pick is not None:
            out[k] = pick(out[k], float(v))
    return out


def order_id_for(as_of: date | str, symbol: str, side: str) -> str:
    """Deterministic per (session, symbol, side): a re-run names the same order (idempotency)."""
    return f"{pd.Timestamp(as_of).date()}:{symbol}:{side}"


def in_blackout(symbol: str, now: datetime, blackouts: Sequence[Any]) -> bool:
    for b in blackouts:
        start = b.start if b.start.tzinfo else b.start.replace(tzinfo=UTC)  # naive = UTC
        end = b.end if b.end.tzinfo else b.end.replace(tzinfo=UTC)
        if b.symbol.upper() == symbol.upper() and start <= now < end:
            return True
    return False


CONTEXT_COLUMNS = (
    "order_id",
    "as_of",
    "symbol",
    "asset_class",
    "side",
    "qty",
    "reference_price",
    "notional",
    "proposal_status",
    "proposal_reason_codes",
    "style",
    "regime",
    "proposal_reduce_only",
    "predicted_impact_bps",
    "cvar_95",
    "current_qty",
    "bid",
    "ask",
    "mid",
    "quote_ts",
    "trading_mode",
    "reasoning_memo_id",  # issue 16: the memo behind ``reasoning`` (empty: none)
    *CONTEXT_FIELDS,
)


def build_policy_context(
    proposals: pd.DataFrame,
    *,
    features: pd.DataFrame,
    quality: pd.DataFrame,
    candidates: pd.DataFrame,
    forecasts: pd.DataFrame,
    quotes: pd.DataFrame,
    now: datetime,
    book: BookSnapshot,
    mandate: Any,
    asset_classes: Mapping[str, Any],
    calendars: Mapping[str, str],
    exec_stats: Mapping[str, float],
    provider_counts: Mapping[str, int],
    returns: pd.DataFrame | None = None,
    memos: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per proposal with every field of :data:`CONTEXT_FIELDS` (plus the order itself).

    Mapping (the source of each policy input; anything unknown is left NaN so the rule fails
    closed with MISSING_VALUE):

    ==========================  ==============================================================
    market_open                 ``is_open_at(calendar, now)`` on the symbol's exchange calendar
                                (XNYS for stocks/ETFs, 24/5 FX, 24/7 crypto; universe override)
    quote_age_s                 ``now − quote_ts`` of the fresh quote (NaN: no quote)
    symbol_allowed              ``mandate.symbol_allowed(symbol, asset_class)`` (class allowed,
                                symbol not denied)
    daily_drawdown              (session-open NAV − NAV now) / session-open NAV, ≥ 0; session-open
                                NAV = the previous session's closing NAV in ``pnl_history``
    event_blackout              now inside one of ``mandate.event_blackouts`` for the symbol
    liquidity_score             ``market_features.liquidity_score`` of D
    gross_exposure_after        (book gross value + risk-increasing orders earlier in the batch
                                + this order's change in |value|) / NAV, marked at the quote mid;
                                reductions by other orders are not credited (they may not fill)
    gross_exposure_limit        ``mandate.max_gross_exposure``
    risk_per_trade_nav          ``forecasts.cvar_95`` (horizon loss fraction) × qty × mid / NAV
    confidence                  lowest ``strategy_candidates.confidence`` of the symbol (all
                                strategies share the decay-adjusted forecast confidence);
                                ``forecasts.confidence`` when no candidate row exists
    reasoning                   the verdict of the symbol's ``reasoning_memos`` row of D: its
                                recommendation (ALLOW / ALLOW_WITH_CAUTION / DENY) or FAILED;
                                NONE without a memo (never blocks). ``reasoning_memo_id`` links it
    correlation_to_book         correlation of the symbol's daily returns (last 63 sessions) with
                                the value-weighted returns of the rest of the book; 0 for an
                                empty book; ``market_features.avg_corr_63d`` as a proxy when
                                returns are unavailable
    reduces_position            the order only shrinks the broker's current position
    pnl_obs_days, pnl_z_vs_model, exec_*, win_count, correlated_win_share
                                ``exec_stats`` (:func:`execution_stats`, :func:`pnl_stats`,
                                :func:`win_stats`) broadcast to every order (the intraday book
                                trades the auction's aggregate, so the strategy is the book);
                                counts are 0, never null, without history
    data_provider_count         distinct history providers of the symbol ∪ the quote provider
    data_quality_score          ``data_quality.data_quality_score`` of D
    ==========================  ==============================================================
    """
    # The columns are built first and framed once: inserting ~45 columns one by one into a
    # frame (string column index) cost ~45 ms a call, longer than everything computed here.
    now = ensure_utc(now)
    p = proposals.copy().reset_index(drop=True)
    n = len(p)
    cols: dict[str, Any] = {}
    sym = p["symbol"].astype(str) if "symbol" in p.columns else pd.Series([""] * n)
    side = p["side"].astype(str).str.upper() if "side" in p.columns else pd.Series(["UNKNOWN"] * n)
    as_of = p["as_of"] if "as_of" in p.columns else pd.Series([pd.NaT] * n)
    cols["as_of"] = pd.to_datetime(as_of).dt.date.astype(str)
    cols["symbol"] = sym
    cols["side"] = side
    ids = [order_id_for(a, s, sd) for a, s, sd in zip(cols["as_of"], sym, side, strict=True)]
    seen: dict[str, int] = {}
    for i, oid in enumerate(ids):  # a symbol appears once per batch; guard anyway
        seen[oid] = seen.get(oid, 0) + 1
        if seen[oid] > 1:
            ids[i] = f"{oid}#{seen[oid]}"
    cols["order_id"] = ids
    classes = [str(getattr(asset_classes.get(s), "value", asset_classes.get(s)) or classify_symbol(s).value) for s in sym]
    cols["asset_class"] = classes
    qty = cols["qty"] = pd.to_numeric(p.get("qty", np.nan), errors="coerce")
    ref = cols["reference_price"] = pd.to_numeric(p.get("price", np.nan), errors="coerce")
    cols["proposal_status"] = p.get("status", pd.Series(["PROPOSED"] * n)).fillna("PROPOSED").astype(str)
    cols["proposal_reason_codes"] = p.get("reason_codes", pd.Series([""] * n)).fillna("").astype(str)
    cols["style"] = p.get("style", pd.Series([None] * n))
    cols["regime"] = p.get("regime", pd.Series([None] * n))
    cols["proposal_reduce_only"] = p.get("reduce_only", pd.Series([False] * n)).fillna(False).astype(bool)
    cols["predicted_impact_bps"] = pd.to_numeric(p.get("impact_bps", np.nan), errors="coerce")
    qty, ref = _column(qty, n), _column(ref, n)

    q = quotes.set_index("symbol") if not quotes.empty else pd.DataFrame(columns=["bid", "ask", "mid", "quote_ts"])
    cols["bid"] = sym.map(q["bid"]).astype(float)
    cols["ask"] = sym.map(q["ask"]).astype(float)
    mid = cols["mid"] = sym.map(q["mid"]).astype(float)
    quote_ts = cols["quote_ts"] = pd.to_datetime(sym.map(q["quote_ts"]), utc=True)
    cols["quote_age_s"] = (pd.Timestamp(now) - quote_ts).dt.total_seconds()

    # --- pre-trade fields
    open_cache: dict[str, bool] = {}

    def market_open(s: str, cls: str) -> bool:
        cal = calendars.get(s) or calendar_name(cls)
        if cal not in open_cache:
            open_cache[cal] = is_open_at(cal, pd.Timestamp(now))
        return open_cache[cal]

    cols["market_open"] = [market_open(s, c) for s, c in zip(sym, classes, strict=True)]
    cols["symbol_allowed"] = [bool(mandate.symbol_allowed(s, c)) for s, c in zip(sym, classes, strict=True)]
    cols["daily_drawdown"] = book.daily_drawdown
    cols["event_blackout"] = [in_blackout(s, now, mandate.event_blackouts) for s in sym]
    names = sym.tolist()

    def lookup(values: Mapping[str, float]) -> pd.Series:  # ``sym.map(values)`` as float, without its cost
        return pd.Series([values.get(s, math.nan) for s in names], index=sym.index, dtype=float)

    cols["liquidity_score"] = lookup(_per_symbol(features, "liquidity_score"))

    current = pd.Series([float(book.positions.get(s, 0.0)) for s in names], index=sym.index, dtype=float)
    cols["current_qty"] = current
    signed = np.where(side == "BUY", 1.0, np.where(side == "SELL", -1.0, np.nan)) * qty
    mark = mid.where(mid.notna(), ref)
    notional = cols["notional"] = qty * mark
    delta_abs = ((current + signed).abs() - current.abs()) * mark
    prior_increase = delta_abs.clip(lower=0).fillna(0).cumsum().shift(fill_value=0.0)
    nav = book.nav if book.nav > 0 else math.nan
    cols["gross_exposure_after"] = (book.gross_value + prior_increase + delta_abs) / nav
    cols["gross_exposure_limit"] = float(mandate.max_gross_exposure)
    cvar = lookup(_per_symbol(forecasts, "cvar_95"))
    cvar = cols["cvar_95"] = cvar.where(cvar.notna(), lookup(_per_symbol(candidates, "cvar_95", "max")))
    cols["risk_per_trade_nav"] = cvar * notional / nav
    conf = lookup(_per_symbol(candidates, "confidence", "min"))
    cols["confidence"] = conf.where(conf.notna(), lookup(_per_symbol(forecasts, "confidence")))
    verdicts = verdict_by_symbol(memos) if memos is not None else {}
    cols["reasoning"] = [verdicts.get(s, ("NONE", ""))[0] for s in sym]
    cols["reasoning_memo_id"] = [verdicts.get(s, ("NONE", ""))[1] for s in sym]
    rets = returns if returns is not None else pd.DataFrame()
    proxy = _per_symbol(features, "avg_corr_63d")
    corr = []
    for s in sym:
        c = correlation_to_book(s, book, rets)
        corr.append(proxy.get(s, math.nan) if math.isnan(c) else c)
    cols["correlation_to_book"] = corr
    reduces = ((side == "SELL") & (current > _EPS) & (qty <= current + _EPS)) | (
        (side == "BUY") & (current < -_EPS) & (qty <= -current + _EPS)
    )
    cols["reduces_position"] = reduces.astype(bool)

    # --- veto fields
    for name in (
        "pnl_obs_days",
        "pnl_z_vs_model",
        "exec_fill_count",
        "exec_fill_rate",
        "exec_slippage_bps",
        "exec_slippage_err_bps",
        "win_count",
        "correlated_win_share",
    ):
        cols[name] = float(exec_stats.get(name, math.nan))
    for count in ("pnl_obs_days", "exec_fill_count", "win_count"):
        if math.isnan(float(exec_stats.get(count, math.nan))):
            cols[count] = math.nan  # unknown history stays unknown: the veto fails closed
    cols["data_provider_count"] = pd.Series([float(provider_counts.get(s, 0)) for s in names], index=sym.index,
                                            dtype=float)
    cols["data_quality_score"] = lookup(_per_symbol(quality, "data_quality_score"))
    cols["trading_mode"] = str(book.trading_status.mode)
    out = pd.DataFrame({c: cols[c] for c in CONTEXT_COLUMNS if c in cols}, index=range(n))
    return out.reindex(columns=list(CONTEXT_COLUMNS))


def _column(values: Any, n: int) -> pd.Series:
    """``values`` as the frame column it becomes (a scalar broadcast to ``n`` rows)."""
    return values if isinstance(values, pd.Series) else pd.Series(values, index=range(n), dtype=float)


# --------------------------------------------------------------------------------------------
# decisions




DECISION_DTYPES = {
    "order_id": "string", "symbol": "string", "side": "string", "requested_qty": "float64",
    "approved_qty": "float64", "decision": "string", "reason_codes": "string", "expires_at": "datetime64[ns, UTC]",
    "n_hits": "int64", "undetermined": "bool", "policy_digest": "string", "rules_digest": "string",
    "environment": "string", "evaluated_at": "datetime64[ns, UTC]",
}
HIT_DTYPES = {
    "order_id": "string", "symbol": "string", "rule_id": "string", "policy": "string", "action": "string",
    "reason_code": "string", "undetermined": "bool", "observed": "string",
}


@dataclass(frozen=True)
class GovernanceBatch:
    decisions: pd.DataFrame  # DECISION_DTYPES, one row per proposal
    hits: pd.DataFrame  # order_id, symbol, rule_id, policy, action, reason_code, undetermined, observed
    policy_digest: str
    environment: str
    evaluated_at: datetime

    def counts(self) -> dict[str, int]:
        vc = self.decisions["decision"].value_counts()
        return {d: int(vc.get(d, 0)) for d in ("APPROVE", "REVIEW", "REJECT")}


def _valid_codes(text: str) -> list[str]:
    return [c for c in str(text or "").split(";") if c and c in ReasonCode.__members__]


def decide(
    orders_ctx: pd.DataFrame,
    policy: EnvironmentPolicy | PolicySet,
    now: datetime,
    ttl: int,
) -> GovernanceBatch:
    """Evaluate the policy over the batch at ``now``; REJECT > REVIEW > APPROVE.

    Proposals the nightly job already refused (status other than PROPOSED, e.g. CRISIS_REGIME
    or MISSING_IMPACT_ESTIMATE) are recorded as REJECT with their reasons, without evaluation.
    ``quote_age_s`` is re-derived from ``quote_ts`` at ``now``: the age that matters is the one
    at decision time, not when the context was assembled.
    """
    now = ensure_utc(now)
    env = policy if isinstance(policy, EnvironmentPolicy) else None
    pset = env.policy if env else policy
    assert isinstance(pset, PolicySet)
    digest = env.digest if env else pset.digest
    environment = env.environment if env else "custom"
    ctx = orders_ctx.reset_index(drop=True)
    qty = pd.to_numeric(ctx["qty"], errors="coerce")
    live = ctx["proposal_status"].fillna("PROPOSED").eq("PROPOSED") & qty.gt(0) & np.isfinite(qty)
    evaluated = ctx[live]
    if "quote_ts" in evaluated.columns:
        evaluated = evaluated.drop(columns=["quote_age_s"], errors="ignore")
    ev = evaluate_orders(evaluated, pset, now, ttl) if len(evaluated) else None

    parts = []
    if ev is not None:
        d = ev.decisions.drop(columns=["reasons"]).copy()
        parts.append(d)
    dead = ctx[~live]
    if len(dead):
        codes = [";".join(sorted(set(_valid_codes(c)))) or str(ReasonCode.SCHEMA_VIOLATION) for c in dead["proposal_reason_codes"]]
        parts.append(
            pd.DataFrame(
                {
                    "order_id": dead["order_id"].to_numpy(),
                    "decision": "REJECT",
                    "reason_codes": codes,
                    "requested_qty": pd.to_numeric(dead["qty"], errors="coerce").to_numpy(),
                    "approved_qty": 0.0,
                    "expires_at": pd.NaT,
                    "n_hits": 0,
                    "undetermined": False,
                }
            )
        )
    if parts:
        decisions = pd.concat(parts, ignore_index=True)
    else:
        decisions = typed([], {c: t for c, t in DECISION_DTYPES.items() if c not in ("symbol", "side")})
    info = ctx.set_index("order_id")[["symbol", "side"]]
    decisions["symbol"] = decisions["order_id"].map(info["symbol"])
    decisions["side"] = decisions["order_id"].map(info["side"])
    decisions["requested_qty"] = pd.to_numeric(decisions["requested_qty"], errors="coerce").astype(float)
    decisions["approved_qty"] = pd.to_numeric(decisions["approved_qty"], errors="coerce").astype(float)
    decisions["expires_at"] = pd.to_datetime(decisions["expires_at"], utc=True)
    decisions["policy_digest"] = digest
    decisions["rules_digest"] = pset.digest
    decisions["environment"] = environment
    decisions["evaluated_at"] = pd.Timestamp(now)
    order = {oid: i for i, oid in enumerate(ctx["order_id"])}
    decisions = decisions.sort_values("order_id", key=lambda s: s.map(order)).reset_index(drop=True)
    hits = ev.hits.copy() if ev is not None else typed([], {k: v for k, v in HIT_DTYPES.items() if k != "symbol"})
    hits.insert(1, "symbol", hits["order_id"].map(info["symbol"]).astype("string"))
    return GovernanceBatch(typed(decisions, DECISION_DTYPES), hits, digest, environment, now)


# --------------------------------------------------------------------------------------------
# approvals


@dataclass(frozen=True)
class ApprovedOrder:
    order_id: str
    payload: dict[str, Any]  # exactly what was signed (plain JSON)
    approval: SignedApproval


def _json_num(v: Any) -> float | None:
    f = _num(v)
    return f if math.isfinite(f) else None


def order_payload(row: Mapping[str, Any], qty: float, policy_digest: str, **extra: Any) -> dict[str, Any]:
    """The order as signed: every field the OMS executes plus what the audit needs to explain it."""
    ref = _json_num(row.get("reference_price"))
    body = {
        "order_id": str(row["order_id"]),
        "as_of": str(pd.Timestamp(row["as_of"]).date()),  # the warehouse hands DATE back as a timestamp
        "symbol": str(row["symbol"]),
        "side": str(row["side"]),
        "qty": float(qty),
        "order_type": "MARKET",
        "reference_price": ref,
        "arrival_mid": _json_num(row.get("mid")),
        "notional": float(qty) * ref if ref is not None else None,
        "reduce_only": bool(row.get("reduces_position", False)),
        "style": None if pd.isna(row.get("style")) else str(row.get("style")),
        "regime": None if pd.isna(row.get("regime")) else str(row.get("regime")),
        "predicted_impact_bps": _json_num(row.get("predicted_impact_bps")),
        "policy_digest": policy_digest,
        "version": ORDER_VERSION,
        **extra,
    }
    # Normalised through canonical JSON so the ledger's JSON copy is byte-identical to what was signed.
    return json.loads(canonical_json(body))


def sign_order(payload: Mapping[str, Any], expires_at: datetime, key: bytes) -> ApprovedOrder:
    approval_id = make_approval_id(payload, expires_at)
    return ApprovedOrder(str(payload["order_id"]), dict(payload), sign_approval(payload, approval_id, expires_at, key))


def sign_approvals(batch: GovernanceBatch, orders_ctx: pd.DataFrame, key: bytes) -> list[ApprovedOrder]:
    """HMAC-sign every APPROVE (§I1): approval id and expiry from the decision, every field signed."""
    ctx = orders_ctx.set_index("order_id")
    out = []
    for d in batch.decisions[batch.decisions["decision"] == "APPROVE"].itertuples(index=False):
        row = {"order_id": d.order_id, **ctx.loc[d.order_id].to_dict()}
        payload = order_payload(row, d.approved_qty, batch.policy_digest)
        out.append(sign_order(payload, pd.Timestamp(d.expires_at).to_pydatetime(), key))
    return out


def review_item_id(order_id: str) -> str:
    return f"review:{order_id}"


def audit_or_halt(
    audit: AuditChain,
    ledger: LedgerStore,
    event_type: str,
    actor: str,
    subject: str,
    payload: Mapping[str, Any],
    codes: Iterable[ReasonCode | str],
    now: datetime,
) -> None:
    """Append to the audit chain; any failure halts trading (latched) and raises (§J3)."""
    try:
        audit.append(event_type, actor, subject, dict(payload), [c for c in codes if str(c) in ReasonCode.__members__], now)
    except AuditWriteError as exc:
        reason, why = exc.reason, f"audit write failed: {exc}"[:2000]
        ledger.change_trading_status(lambda s: ts.halt(s, reason_code=reason, why=why, now=now))
        raise SystemHaltedError(reason, f"audit write failed, trading halted: {exc}") from exc


def record_governance(
    ledger: LedgerStore,
    audit: AuditChain,
    batch: GovernanceBatch,
    approved: Sequence[ApprovedOrder],
    orders_ctx: pd.DataFrame,
    now: datetime,
    env_policy: EnvironmentPolicy | None = None,
) -> dict[str, str]:
    """Persist every decision: approvals to the ledger, REVIEW to the human queue, all audited.

    Returns ``{order_id: approval_id}`` for the approvals. Re-recording the same batch is
    idempotent (same approval ids, review items kept as first queued).
    """
    if env_policy is not None:
        audit_or_halt(audit, ledger, "policy.loaded", GOVERNANCE_ACTOR, f"policy:{env_policy.digest[:16]}",
                      env_policy.audit_payload(), [], now)
    ctx = orders_ctx.set_index("order_id")
    by_id = {a.order_id: a for a in approved}
    hits = batch.hits.groupby("order_id")["rule_id"].apply(list).to_dict() if len(batch.hits) else {}
    approval_ids: dict[str, str] = {}
    for d in batch.decisions.itertuples(index=False):
        codes = _valid_codes(d.reason_codes)
        base = {
            "decision": d.decision,
            "symbol": d.symbol,
            "side": d.side,
            "requested_qty": _json_num(d.requested_qty),
            "approved_qty": _json_num(d.approved_qty),
            "rules_hit": hits.get(d.order_id, []),
            "policy_digest": batch.policy_digest,
            "environment": batch.environment,
        }
        if d.decision == "APPROVE":
            a = by_id[d.order_id]
            ledger.record_approval(a.approval.approval_id, a.payload, a.approval.signature, a.approval.expires_at, now)
            approval_ids[d.order_id] = a.approval.approval_id
            base |= {"approval_id": a.approval.approval_id, "expires_at": a.approval.expires_at}
        elif d.decision == "REVIEW":
            row = {"order_id": d.order_id, **ctx.loc[d.order_id].to_dict()}
            payload = order_payload(row, d.requested_qty, batch.policy_digest)
            item = ledger.enqueue_review(review_item_id(d.order_id), payload, [*codes, ReasonCode.SENT_TO_REVIEW], now)
            base |= {"review_item_id": item.item_id}
            codes = [*codes, str(ReasonCode.SENT_TO_REVIEW)]
        audit_or_halt(audit, ledger, "governance.decision", GOVERNANCE_ACTOR, f"order:{d.order_id}", base, codes, now)
    return approval_ids


# --------------------------------------------------------------------------------------------
# execution




RESULT_DTYPES = {
    "order_id": "string", "approval_id": "string", "client_order_id": "string", "symbol": "string",
    "side": "string", "qty": "float64", "state": "string", "filled_qty": "float64", "avg_fill_price": "float64",
    "broker_order_id": "string", "mode": "string", "reason_codes": "string", "duplicate": "bool", "refused": "bool",
}
FILL_DTYPES = {
    "fill_id": "string", "order_id": "string", "client_order_id": "string", "symbol": "string", "side": "string",
    "qty": "float64", "price": "float64", "fees": "float64", "ts": "datetime64[ns, UTC]",
    "reference_price": "float64", "slippage_bps": "float64", "predicted_impact_bps": "float64",
}


def typed(rows: list[dict[str, Any]] | pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """A frame with exactly these columns and dtypes, also when empty (so the table gets a schema)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    frame = frame.reindex(columns=list(dtypes))
    for col, dtype in dtypes.items():
        if dtype == "bool":
            frame[col] = frame[col].fillna(False).astype(bool)
        elif dtype.startswith("datetime64"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        else:
            frame[col] = frame[col].astype(dtype)
    return frame


@dataclass(frozen=True)
class ExecutionOutcome:
    orders: pd.DataFrame  # RESULT_DTYPES, one row per approval
    fills: pd.DataFrame  # one row per fill of those orders
    ticks: int
    started_at: datetime
    ended_at: datetime


def execute(
    oms: OrderManagementSystem,
    broker: Broker,
    approved: Sequence[ApprovedOrder],
    clock: Clock,
    ticks: int = 3,
    tick_interval_s: float = 60.0,
) -> ExecutionOutcome:
    """Submit every approval through the OMS, then work the orders for ``ticks`` broker ticks.

    Only approvals reach this function: REVIEW items wait for a person, REJECTs were recorded.
    A refusal by the OMS (trading state, approval invalid or expired) is recorded with its
    reason codes and nothing is sent; an audit failure (``SystemHaltedError``) propagates.
    Between ticks a movable clock (simulated/fixed) advances by ``tick_interval_s``.
    """
    started = clock.now()
    rows: list[dict[str, Any]] = []
    for a in approved:
        base = {"order_id": a.order_id, "approval_id": a.approval.approval_id, "symbol": a.payload.get("symbol"),
                "side": a.payload.get("side"), "qty": a.payload.get("qty")}
        try:
            res = oms.submit(a.approval, a.payload)
        except (OrderRefusedError, ApprovalError) as exc:
            codes = exc.reason_codes if isinstance(exc, OrderRefusedError) else (exc.reason,)
            rows.append(base | {"state": "REFUSED", "filled_qty": 0.0, "reason_codes": ";".join(map(str, codes)),
                                "duplicate": False, "refused": True})
            continue
        rows.append(base | {"client_order_id": res.client_order_id, "duplicate": res.duplicate, "refused": False})
    worked = work_orders(oms, broker, clock, ticks, tick_interval_s)
    fills: list[dict[str, Any]] = []
    for r in rows:
        cid = r.get("client_order_id")
        if not cid:
            continue
        rec = oms.ledger.get_order(cid)
        if rec is None:
            continue
        r |= {
            "state": str(rec.state),
            "filled_qty": rec.filled_qty,
            "avg_fill_price": rec.avg_fill_price,
            "broker_order_id": rec.broker_order_id,
            "mode": rec.mode,
            "reason_codes": ";".join(rec.reason_codes),
        }
        ref = _num(rec.payload.get("reference_price"))
        pred = _num(rec.payload.get("predicted_impact_bps"))
        sign = 1.0 if rec.side == "BUY" else -1.0
        for f in oms.ledger.fills(cid):
            slip = sign * (f.price - ref) / ref * 1e4 if ref > 0 else math.nan
            fills.append(
                {
                    "fill_id": f.fill_id,
                    "order_id": r["order_id"],
                    "client_order_id": cid,
                    "symbol": f.symbol,
                    "side": f.side,
                    "qty": f.qty,
                    "price": f.price,
                    "fees": f.fees,
                    "ts": pd.Timestamp(f.ts),
                    "reference_price": ref,
                    "slippage_bps": slip,
                    "predicted_impact_bps": pred,
                }
            )
    return ExecutionOutcome(typed(rows, RESULT_DTYPES), typed(fills, FILL_DTYPES), worked, started, clock.now())


def work_orders(
    oms: OrderManagementSystem, broker: Broker, clock: Clock, ticks: int, tick_interval_s: float
) -> int:
    """Up to ``ticks`` broker ticks: advance a movable clock, let the broker work its open orders,
    pull the result into the ledger. Stops early when nothing is working. Returns ticks done."""
    worked = 0
    advance = getattr(clock, "advance", None)
    tick = getattr(broker, "process_tick", None)
    for _ in range(max(0, ticks)):
        if not oms.ledger.list_orders(OPEN_STATES - {OrderState.NEW}):  # nothing working: done
            break
        if callable(advance):
            advance(timedelta(seconds=tick_interval_s))
        if callable(tick):
            tick(clock.now())
        oms.sync_open_orders()
        worked += 1
    return worked


def latest_activity(ledger: LedgerStore) -> datetime | None:
    """The newest instant the ledger recorded (execution events, fills, order updates)."""
    latest = ledger.latest_activity()
    return None if latest is None else ensure_utc(latest)


def approved_orders_from_ledger(ledger: LedgerStore, approval_ids: Iterable[str]) -> list[ApprovedOrder]:
    """Rebuild signed approvals from the ledger, exactly as issued (the payload is what was signed)."""
    out = []
    for aid in approval_ids:
        rec = ledger.get_approval(aid)
        if rec is None:
            raise KeyError(f"approval {aid} is not in the ledger")
        out.append(
            ApprovedOrder(
                str(rec.order_payload.get("order_id")),
                dict(rec.order_payload),
                SignedApproval(rec.approval_id, ensure_utc(rec.expires_at), rec.signature),
            )
        )
    return out


def verify_executed_approvals(ledger: LedgerStore, key: bytes, as_of: date | str) -> pd.DataFrame:
    """Every ledger order of session ``as_of`` against its stored approval: signature valid over
    exactly the executed payload, and issued before it expired. One row per order with ``ok``."""
    day = str(pd.Timestamp(as_of).date())
    rows = []
    for o in ledger.list_orders():
        if not isinstance(o.payload, dict) or o.payload.get("as_of") != day:
            continue
        rec = ledger.get_approval(o.approval_id)
        problem = None
        if rec is None:
            problem = f"{ReasonCode.SIGNATURE_INVALID}: approval {o.approval_id} missing"
        else:
            try:  # valid at the moment the order was created (the ledger returns aware UTC instants)
                verify_approval(SignedApproval(rec.approval_id, rec.expires_at, rec.signature), o.payload, key,
                                o.created_at,
                                lambda _id: False)
            except ApprovalError as exc:
                problem = str(exc)
        rows.append({"client_order_id": o.client_order_id, "order_id": o.payload.get("order_id"),
                     "symbol": o.symbol, "approval_id": o.approval_id, "state": str(o.state),
                     "ok": problem is None, "problem": problem})
    return pd.DataFrame(rows, columns=["client_order_id", "order_id", "symbol", "approval_id", "state", "ok", "problem"])


def session_orders(ledger: LedgerStore, as_of: date | str) -> list[Any]:
    """Ledger orders whose signed payload belongs to session ``as_of``."""
    return ledger.session_orders(str(pd.Timestamp(as_of).date()))


def unresolved_intents(ledger: LedgerStore, as_of: date | str) -> list[Any]:
    """Intents of ``as_of`` that are neither known to the broker nor closed: NEW (never sent) or
    SUBMITTED without a broker acknowledgement. A session with any of them is not finished."""
    return [o for o in session_orders(ledger, as_of)
            if o.state is OrderState.NEW or (o.state is OrderState.SUBMITTED and not o.broker_order_id)]


def recover_intents(oms: OrderManagementSystem) -> Any:
    """Step 0 of every execution (and of reconciliation): settle every open intent by client
    order id against the broker before anything is decided — adopt what the broker has, send
    once what it never received while the approval is valid, else close it with a reason code.
    Returns the OMS :class:`~ais_pipelines.oms.oms.RecoveryReport`."""
    return oms.recover()


class SessionNotClosedError(RuntimeError):
    """Intents of the session are still unresolved: no executed marker; the next run recovers them."""

    reason_code = ReasonCode.INTENTS_UNRESOLVED

    def __init__(self, as_of: date | str, pending: Sequence[Any]):
        self.pending = list(pending)
        ids = ", ".join(f"{o.client_order_id} ({o.state})" for o in self.pending[:10])
        super().__init__(f"{ReasonCode.INTENTS_UNRESOLVED}: session {as_of} keeps {len(self.pending)} unresolved "
                         f"intent(s): {ids}; the session stays open and the next run recovers them")


def close_session(ledger: LedgerStore, audit: AuditChain, as_of: date | str, summary: Mapping[str, Any],
                  now: datetime) -> None:
    """Write the executed marker of ``as_of`` — only when none of its intents is unresolved."""
    pending = unresolved_intents(ledger, as_of)
    if pending:
        raise SessionNotClosedError(as_of, pending)
    ledger.record_execution_event(EXECUTED_MARKER, now=now, payload=dict(summary))
    audit_or_halt(audit, ledger, "execution.completed", "oms", f"session:{as_of}", dict(summary),
                  [ReasonCode.ALREADY_EXECUTED], now)


def executed_marker(ledger: LedgerStore, as_of: date | str) -> dict[str, Any] | None:
    """The ledger's record that session ``as_of`` was executed (payload), or ``None``."""
    day = str(pd.Timestamp(as_of).date())
    for ev in reversed(ledger.execution_events()):
        if ev.kind == EXECUTED_MARKER and (ev.payload or {}).get("as_of") == day:
            return dict(ev.payload or {})
    return None


# --------------------------------------------------------------------------------------------
# portfolio state


POSITION_COLUMNS = ("symbol", "qty", "avg_price", "mark", "market_value", "weight", "unrealized_pnl", "realized_pnl")


@dataclass(frozen=True)
class PortfolioState:
    positions: pd.DataFrame  # POSITION_COLUMNS
    nav: float
    cash: float
    starting_nav: float
    session_open_nav: float
    peak_nav: float
    realized_pnl: float
    unrealized_pnl: float
    expected_pnl: float
    expected_pnl_sd: float

    @property
    def pnl_day(self) -> float:
        return self.nav - self.session_open_nav

    @property
    def pnl_total(self) -> float:
        return self.nav - self.starting_nav

    @property
    def daily_loss(self) -> float:
        """Today's loss as a positive fraction of the session-open NAV (0 on a gain; NaN unknown)."""
        if not (self.session_open_nav > 0) or not math.isfinite(self.nav):
            return math.nan
        return max(0.0, -self.pnl_day / self.session_open_nav)

    @property
    def drawdown(self) -> float:
        """Drawdown from the peak NAV so far (positive fraction)."""
        peak = max(self.peak_nav, self.nav)
        return max(0.0, (peak - self.nav) / peak) if peak > 0 else math.nan

    @property
    def gross_exposure(self) -> float:
        return float(self.positions["market_value"].abs().sum() / self.nav) if self.nav > 0 else math.nan

    def summary(self) -> dict[str, float]:
        return {
            "nav": self.nav,
            "cash": self.cash,
            "starting_nav": self.starting_nav,
            "session_open_nav": self.session_open_nav,
            "pnl_day": self.pnl_day,
            "pnl_total": self.pnl_total,
            "realized_pnl": self.realized_pnl,
            "unrealized_pnl": self.unrealized_pnl,
            "daily_loss": self.daily_loss,
            "drawdown": self.drawdown,
            "peak_nav": max(self.peak_nav, self.nav),
            "gross_exposure": self.gross_exposure,
            "expected_pnl": self.expected_pnl,
            "expected_pnl_sd": self.expected_pnl_sd,
        }


def portfolio_state(
    ledger: LedgerStore,
    broker: Broker,
    prices: Mapping[str, float],
    starting_nav: float,
    session_open_nav: float,
    peak_nav: float | None = None,
    expectations: pd.DataFrame | None = None,
    open_positions: Mapping[str, float] | None = None,
) -> PortfolioState:
    """Positions (broker truth), marks, NAV and P&L.

    NAV = broker cash + Σ qty × mark (mark = fresh quote mid, else average price). Realized P&L
    from the ledger's fills. ``expectations`` (symbol, mu_daily, sigma_daily) turn the positions
    held at the session open (``open_positions``: symbol → market value) into the model's
    expected P&L and its standard deviation for the day — the input of the unexplained-profit veto.
    """
    account = broker.get_account()
    positions = broker.get_positions()
    ledger_pos = ledger.positions()
    rows = []
    for s, p in sorted(positions.items()):
        if abs(p.qty) <= _EPS:
            continue
        mark = float(prices[s]) if s in prices and math.isfinite(float(prices[s])) else float(p.avg_price)
        rows.append({"symbol": s, "qty": float(p.qty), "avg_price": float(p.avg_price), "mark": mark,
                     "market_value": float(p.qty) * mark,
                     "unrealized_pnl": float(p.qty) * (mark - float(p.avg_price)),
                     "realized_pnl": float(ledger_pos[s].realized_pnl) if s in ledger_pos else 0.0})
    pos = typed(rows, {c: "string" if c == "symbol" else "float64" for c in POSITION_COLUMNS})
    nav = float(account.cash) + float(pos["market_value"].sum()) if len(pos) else float(account.cash)
    pos["weight"] = pos["market_value"] / nav if nav > 0 else np.nan
    exp_mu = exp_var = 0.0
    if expectations is not None and open_positions:
        e = expectations.set_index("symbol")
        for s, value in open_positions.items():
            if s in e.index:
                exp_mu += value * _num(e.at[s, "mu_daily"])
                exp_var += (value * _num(e.at[s, "sigma_daily"])) ** 2
    return PortfolioState(
        positions=pos,
        nav=nav,
        cash=float(account.cash),
        starting_nav=float(starting_nav),
        session_open_nav=float(session_open_nav),
        peak_nav=float(peak_nav if peak_nav is not None else max(starting_nav, session_open_nav)),
        realized_pnl=float(sum(p.realized_pnl for p in ledger_pos.values())),
        unrealized_pnl=float(pos["unrealized_pnl"].sum()) if len(pos) else 0.0,
        expected_pnl=float(exp_mu) if math.isfinite(exp_mu) else math.nan,
        expected_pnl_sd=float(math.sqrt(exp_var)) if math.isfinite(exp_var) else math.nan,
    )


def daily_expectations(forecasts: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Per-symbol daily μ and σ from the horizon forecasts (μ/H, σ/√H)."""
    if forecasts.empty or "symbol" not in forecasts.columns:
        return pd.DataFrame(columns=["symbol", "mu_daily", "sigma_daily"])
    mu = pd.to_numeric(forecasts.get("mu_adj", forecasts.get("mu")), errors="coerce")
    sd = pd.to_numeric(forecasts.get("sigma"), errors="coerce")
    return pd.DataFrame({"symbol": forecasts["symbol"].astype(str), "mu_daily": mu / horizon,
                         "sigma_daily": sd / math.sqrt(horizon)})


def apply_daily_loss_limit(oms: OrderManagementSystem, state: PortfolioState, limit: float) -> TradingStatus:
    """§J2: today's loss ≥ limit trips the kill switch (HALTED, latched until a person resumes)."""
    return oms.check_daily_loss(daily_loss=state.daily_loss, limit=limit)


def session_navs(pnl_history: pd.DataFrame, as_of: date, starting_nav: float) -> tuple[float, float]:
    """(session-open NAV, peak NAV) for session ``as_of`` from the rows of earlier sessions."""
    if pnl_history.empty or "nav" not in pnl_history.columns:
        return float(starting_nav), float(starting_nav)
    h = pnl_history[pd.to_datetime(pnl_history["as_of"]).dt.date < as_of].sort_values("as_of")
    if h.empty:
        return float(starting_nav), float(starting_nav)
    return float(h["nav"].iloc[-1]), float(max(starting_nav, h["nav"].max()))



# --------------------------------------------------------------------------------------------
# steps 2–3 together: what the execution_context asset, the review recheck and the CLI call


@dataclass(frozen=True)
class IntradayContext:
    context: pd.DataFrame  # CONTEXT_COLUMNS
    quotes: pd.DataFrame  # QUOTE_COLUMNS
    book: BookSnapshot
    stats: dict[str, float]
    provider_counts: dict[str, int]
    now: datetime


def assemble_context(
    session: TradingSession, proposals: pd.DataFrame, pnl_history: pd.DataFrame
) -> IntradayContext:
    """Fresh quotes + the broker's book + history statistics → the policy context of ``proposals``."""
    now = session.clock.now()
    held = session.broker.get_positions()
    symbols = set(proposals.get("symbol", pd.Series(dtype=str)).astype(str)) | set(held)
    quotes = fetch_quotes(session.quotes, symbols, now)
    open_nav, _peak = session_navs(pnl_history, session.as_of, session.starting_nav)
    book = book_snapshot(session.broker, marks_from_quotes(quotes), open_nav, session.ledger.current_trading_status())
    stats = {
        **execution_stats(session.ledger),
        **pnl_stats(pnl_history[pd.to_datetime(pnl_history["as_of"]).dt.date < session.as_of]
                    if not pnl_history.empty else pnl_history),
        **win_stats(session.ledger, session.snapshot.returns, now),
    }
    counts = session.snapshot.provider_counts(getattr(session.quotes, "provider", None))
    universe = session.policies.universe
    ctx = build_policy_context(
        proposals,
        features=session.snapshot.features,
        quality=session.snapshot.quality,
        candidates=session.snapshot.candidates,
        forecasts=session.snapshot.forecasts,
        quotes=quotes,
        now=now,
        book=book,
        mandate=session.policies.mandate,
        asset_classes=universe.asset_classes,
        calendars=universe.calendars,
        exec_stats=stats,
        provider_counts=counts,
        returns=session.snapshot.returns,
        memos=session.snapshot.memos,
    )
    return IntradayContext(ctx, quotes, book, stats, counts, now)


def proposal_from_payload(payload: Mapping[str, Any]) -> pd.DataFrame:
    """A one-row proposals frame from a signed/queued order payload (for a fresh re-check)."""
    return pd.DataFrame(
        [
            {
                "as_of": payload.get("as_of"),
                "symbol": payload.get("symbol"),
                "side": payload.get("side"),
                "qty": payload.get("qty"),
                "price": payload.get("reference_price"),
                "impact_bps": payload.get("predicted_impact_bps"),
                "style": payload.get("style"),
                "regime": payload.get("regime"),
                "reduce_only": bool(payload.get("reduce_only", False)),
                "status": "PROPOSED",
                "reason_codes": "",
            }
        ]
    )


def hard_rule_hits(
    session: TradingSession,
    policy: EnvironmentPolicy | PolicySet,
    payload: Mapping[str, Any],
    pnl_history: pd.DataFrame,
) -> list[str]:
    """REJECT-action rule codes a queued order hits *now* (fresh quote, current book).

    A person's APPROVE overrides the REVIEW rules that queued the order, never the hard limits:
    a closed market, a stale quote, the drawdown limit or a veto still refuse it.
    """
    ic = assemble_context(session, proposal_from_payload(payload), pnl_history)
    batch = decide(ic.context, policy, ic.now, 60)
    hard = batch.hits[batch.hits["action"] == "REJECT"]
    codes = sorted(set(hard["reason_code"].astype(str)))
    if batch.decisions["undetermined"].any() and codes:
        codes.append(str(ReasonCode.MISSING_VALUE))
    return codes


# --------------------------------------------------------------------------------------------
# reconciliation (§J1)


RECONCILIATION_ACTOR = "reconciliation"


def reconcile_book(ledger: LedgerStore, broker: Broker) -> Any:
    """Ledger vs broker, positions by symbol and orders by client order id (broker = truth).

    Returns a :class:`ais_pipelines.core.reconciliation.ReconciliationReport`; never repairs.
    """
    from ais_pipelines.core.reconciliation import reconcile

    return reconcile(ledger.positions(), broker.get_positions(), ledger.list_orders(), broker.list_orders())


def record_reconciliation(ledger: LedgerStore, audit: AuditChain, report: Any, now: datetime) -> TradingStatus:
    """Audit the outcome; on any mismatch raise the alert (execution event) and pause trading."""
    summary = report.summary()
    if report.ok:
        audit_or_halt(audit, ledger, "reconciliation.ok", RECONCILIATION_ACTOR, "book", summary,
                      [ReasonCode.RECONCILED], now)
        return ledger.current_trading_status()
    why = f"reconciliation found {summary['mismatches']} mismatch(es): {summary['by_kind']}"
    ledger.record_execution_event("RECONCILIATION_MISMATCH", now=now, reason_codes=[ReasonCode.RECONCILIATION_MISMATCH],
                                  payload={**summary, "mismatches_table": report.mismatches.head(50).to_dict("records")})
    status = ledger.change_trading_status(
        lambda s: ts.pause(s, actor=RECONCILIATION_ACTOR, why=why, now=now,
                           reason_codes=(ReasonCode.RECONCILIATION_MISMATCH,))
    )
    audit_or_halt(audit, ledger, "reconciliation.mismatch", RECONCILIATION_ACTOR, "book",
                  {**summary, "mismatches": report.mismatches.head(50).to_dict("records")},
                  [ReasonCode.RECONCILIATION_MISMATCH, ReasonCode.TRADING_PAUSED], now)
    return status


def book_fingerprint(ledger: LedgerStore, broker: Broker) -> str:
    """A digest of both books: unchanged fingerprint → nothing new to reconcile."""
    led = sorted((o.client_order_id, str(o.state), round(o.filled_qty, 9)) for o in ledger.list_orders())
    brk = sorted((o.client_order_id, str(o.status), round(o.filled_qty, 9)) for o in broker.list_orders())
    pos = sorted((s, round(p.qty, 9)) for s, p in broker.get_positions().items())
    lpos = sorted((s, round(p.qty, 9)) for s, p in ledger.positions().items())
    return hashlib.sha256(canonical_json([led, brk, pos, lpos])).hexdigest()
