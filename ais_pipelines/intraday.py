"""The intraday loop of session D as steps over one opened :class:`TradingSession`. No Dagster.

context (quotes + book → policy context) → governance (decide, sign, record) → execution (OMS →
broker → fills) → valuation (NAV, P&L, daily-loss kill switch). The intraday assets call these
steps (their bodies only add leases, metadata and warehouse writes), and so does the
walk-forward replay (:mod:`ais_pipelines.replay`): one code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from ais_pipelines import execution as ex
from ais_pipelines.brokers.base import Broker, BrokerMode, make_broker
from ais_pipelines.brokers.paper import PaperBroker, PaperBrokerConfig, QuoteSource
from ais_pipelines.core.audit import AuditChain
from ais_pipelines.core.clock import Clock
from ais_pipelines.core.trading_state import TradingMode, TradingStatus
from ais_pipelines.ledger.store import LedgerStore
from ais_pipelines.oms.oms import OrderManagementSystem


@dataclass(frozen=True)
class GovernanceOutput:
    decisions: pd.DataFrame
    hits: pd.DataFrame
    counts: dict[str, int]
    approved: list[ex.ApprovedOrder]


def govern(ledger: LedgerStore, audit: AuditChain, ctx: pd.DataFrame, env_policy: ex.EnvironmentPolicy,
           key: bytes, now: datetime, ttl_s: int) -> GovernanceOutput:
    """Pre-trade policy + vetoes for every proposal: APPROVE → signed approval in the ledger,
    REVIEW → the human queue, REJECT → recorded with every rule hit; all audited."""
    batch = ex.decide(ctx, env_policy, now, ttl_s) if len(ctx) else None
    approved = ex.sign_approvals(batch, ctx, key) if batch else []
    if batch is not None:
        ids = ex.record_governance(ledger, audit, batch, approved, ctx, now, env_policy)
        decisions = batch.decisions.copy()
        # Text even when a session approves nothing (an all-NaN float column would type the table DOUBLE).
        decisions["approval_id"] = decisions["order_id"].map(ids).astype("string")
        decisions["review_item_id"] = decisions["order_id"].where(decisions["decision"] == "REVIEW").map(
            lambda o: ex.review_item_id(o) if isinstance(o, str) else None
        ).astype("string")
        if "reasoning_memo_id" in ctx.columns:  # issue 16: the memo next to its decision
            memo_ids = ctx.set_index("order_id")["reasoning_memo_id"]
            decisions["reasoning_memo_id"] = decisions["order_id"].map(memo_ids).fillna("").astype("string")
        hits = batch.hits
    else:
        decisions = ex.typed([], {**ex.DECISION_DTYPES, "approval_id": "string", "review_item_id": "string"})
        hits = ex.typed([], ex.HIT_DTYPES)
    counts = batch.counts() if batch else {"APPROVE": 0, "REVIEW": 0, "REJECT": 0}
    return GovernanceOutput(decisions, hits, counts, approved)


@dataclass(frozen=True)
class ValuationOutput:
    state: ex.PortfolioState
    status: TradingStatus
    row: dict[str, Any]


def opening_values(previous_positions: pd.DataFrame) -> dict[str, float]:
    """symbol → market value of the last ``positions_snapshot`` before D (the session's opening book)."""
    if previous_positions.empty:
        return {}
    last = previous_positions[previous_positions["as_of"] == previous_positions["as_of"].max()]
    return {str(s): float(v) for s, v in zip(last["symbol"], last["market_value"], strict=True)}


def value_session(session: ex.TradingSession, key: bytes, marks: Mapping[str, float], pnl_history: pd.DataFrame,
                  previous_positions: pd.DataFrame) -> ValuationOutput:
    """Positions (broker truth) at ``marks``, NAV, P&L, drawdown; today's loss ≥ limit trips the
    latched kill switch through the OMS. ``row`` is the session's ``pnl_history`` row."""
    pol = session.policies
    open_nav, peak = ex.session_navs(pnl_history, session.as_of, session.starting_nav)
    state = ex.portfolio_state(
        session.ledger, session.broker, marks, session.starting_nav, open_nav, peak,
        ex.daily_expectations(session.snapshot.forecasts, pol.risk.horizon_sessions),
        opening_values(previous_positions),
    )
    oms = OrderManagementSystem(session.ledger, session.broker, key, session.clock, session.audit)
    status = ex.apply_daily_loss_limit(oms, state, pol.risk.daily_loss_limit)
    row = {**state.summary(), "trading_mode": str(status.mode),
           "kill_switch": status.mode is TradingMode.HALTED,
           "reason_codes": ";".join(map(str, status.reason_codes)), "valued_at": session.clock.now()}
    return ValuationOutput(state, status, row)


def paper_broker(ledger: LedgerStore, clock: Clock, snapshot: ex.MarketSnapshot, quotes: QuoteSource, *,
                 starting_cash: float, calendars: Mapping[str, str], max_participation_per_tick: float = 0.01,
                 fee_bps: float = 0.0, mode: BrokerMode = BrokerMode.PAPER) -> Broker:
    """The embedded paper broker of one session (fills with the impact model at the session's
    regime, ADV and σ of D), or the shadow broker around it."""
    from ais_pipelines.core.asset_classes import classify_symbol
    from ais_pipelines.core.calendars import calendar_name

    cfg = PaperBrokerConfig(
        starting_cash=starting_cash, max_participation_per_tick=max_participation_per_tick, fee_bps=fee_bps,
        regime=snapshot.regime if snapshot.regime in ("NORMAL", "VOLATILE", "CRISIS") else "CRISIS",
    )
    adv, sigma = snapshot.adv_shares(), snapshot.sigma_daily()

    def calendar_for(symbol: str) -> str:
        return calendars.get(symbol) or calendar_name(classify_symbol(symbol))

    def paper() -> Broker:
        return PaperBroker(ledger, clock, quotes, adv=adv, sigma=sigma, calendar_for=calendar_for, config=cfg)

    return make_broker(mode, paper, clock)
