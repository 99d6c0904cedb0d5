"""Trading resources (§I1, §I4, §I5, §J2): ledger, signing key, execution clock, broker.

All are ``ConfigurableResource``s built inside the definitions factory; nothing is opened,
read or connected at import time. Secrets (the approval key, Alpaca keys) are read from the
environment at the moment of use, and their absence fails the step (fail closed).

:func:`trading_resources_for` is the environment → resources mapping for these four, as data:

=========================  ==================================  =================================
resource                   local / ci                          prod
=========================  ==================================  =================================
``ledger``                 SQLite ``{runtime}/ledger.sqlite``  ``AIS_LEDGER_URL`` (PostgreSQL)
``signing_key``            ``AIS_APPROVAL_KEY[_FILE]``         same
``execution_clock``        simulated session after D           the system clock (real exchange)
``broker``                 embedded paper broker               Alpaca paper (``APCA_*`` keys)
=========================  ==================================  =================================
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import PrivateAttr

from ais_pipelines.brokers.base import Broker, BrokerMode, LiveTradingRefusedError
from ais_pipelines.brokers.paper import QuoteSource
from ais_pipelines.config import Policies
from ais_pipelines.core.approvals import SigningKeyMissingError, load_signing_key
from ais_pipelines.core.audit import AuditAnchor, AuditChain
from ais_pipelines.core.calendars import get_calendar
from ais_pipelines.core.clock import Clock, FixedClock, SimulatedClock, SystemClock, ensure_utc
from ais_pipelines.core.reason_codes import ReasonCode
from ais_pipelines.execution import MarketSnapshot, TradingSession, load_snapshot
from ais_pipelines.ledger.store import LedgerStore, SqlAuditStore
from ais_pipelines.market_data.quotes import SampleQuoteSource

BROKER_KINDS = ("paper", "shadow", "alpaca_paper", "live")
CLOCK_MODES = ("simulated", "system", "fixed")


class LedgerResource(dg.ConfigurableResource):
    """The transactional ledger. ``url`` unset → SQLite under the runtime directory.

    Migrations run on first use (``upgrade_ledger``, idempotent), not at import or load time.
    """

    url: str | None = None
    runtime_root: str = "runtime"
    _store: LedgerStore | None = PrivateAttr(default=None)

    def resolved_url(self) -> str:
        return self.url or f"sqlite:///{Path(self.runtime_root).resolve() / 'ledger.sqlite'}"

    def store(self) -> LedgerStore:
        if self._store is None:
            self._store = LedgerStore.open(self.resolved_url())
        return self._store

    def audit(self) -> AuditChain:
        return AuditChain(SqlAuditStore(self.store().engine), anchor=self.audit_anchor())

    def audit_anchor(self) -> AuditAnchor:
        """The published chain head, ``{runtime_root}/audit_anchor.json`` (outside the ledger).

        Read: ``.read()``; publish the current head (e.g. for materialization metadata):
        ``self.audit().publish_anchor()``.
        """
        store = SqlAuditStore(self.store().engine)
        return AuditAnchor(Path(self.runtime_root).resolve() / "audit_anchor.json", store.ledger_id)


class SigningKeyResource(dg.ConfigurableResource):
    """The approval signing key, read from the environment when a step asks for it.

    ``AIS_APPROVAL_KEY`` (hex/base64) or ``AIS_APPROVAL_KEY_FILE`` (mode 0600). No usable key →
    ``dg.Failure`` with SIGNING_KEY_MISSING: the step stops before any broker is built.
    """

    def key(self) -> bytes:
        try:
            return load_signing_key(os.environ)
        except SigningKeyMissingError as exc:
            raise dg.Failure(
                description=f"{ReasonCode.SIGNING_KEY_MISSING}: {exc} — nothing trades without it (fail closed)",
                metadata={"reason_code": str(ReasonCode.SIGNING_KEY_MISSING)},
                allow_retries=False,
            ) from exc


def session_after(as_of: date | str, calendar: str = "XNYS") -> pd.Timestamp:
    cal = get_calendar(calendar)
    day = pd.Timestamp(as_of).normalize()
    nxt = cal.date_to_session(day, direction="next")
    return cal.next_session(nxt) if nxt <= day else nxt


class ExecutionClockResource(dg.ConfigurableResource):
    """The market clock of the intraday path (§I5).

    * ``simulated`` (local/ci): ``minutes_after_open`` into the session after D — the partition
      being executed — so the demo trades on a Saturday night too;
    * ``system`` (prod): wall-clock time; the real exchange hours apply;
    * ``fixed``: ``fixed_now`` (ISO-8601 with offset), for replays and tests.

    ``not_before`` moves a simulated/fixed clock forward to an instant already reached by an
    earlier step of the same execution (e.g. after the broker ticks), never backwards.
    """

    mode: str = "simulated"
    fixed_now: str | None = None
    minutes_after_open: int = 30
    calendar: str = "XNYS"

    def session_open(self, as_of: date | str) -> datetime:
        cal = get_calendar(self.calendar)
        return cal.session_open(session_after(as_of, self.calendar)).to_pydatetime()

    def clock(self, as_of: date | str, not_before: datetime | None = None) -> Clock:
        if self.mode not in CLOCK_MODES:
            raise dg.Failure(f"execution clock mode must be one of {CLOCK_MODES}, got {self.mode!r}")
        if self.mode == "system":
            return SystemClock()
        if self.mode == "fixed":
            if not self.fixed_now:
                raise dg.Failure("execution clock mode 'fixed' needs fixed_now")
            ts = pd.Timestamp(self.fixed_now)
            if ts.tzinfo is None:
                raise dg.Failure(f"fixed_now must carry a timezone offset, got {self.fixed_now!r}")
            clock: FixedClock = FixedClock(ts.to_pydatetime())
        else:
            clock = SimulatedClock(self.session_open(as_of) + timedelta(minutes=self.minutes_after_open))
        if not_before is not None and ensure_utc(not_before) > clock.now():
            clock.set(not_before)
        return clock


class BrokerResource(dg.ConfigurableResource):
    """Where approved orders go (§I4): ``paper`` | ``shadow`` | ``alpaca_paper``; ``live`` is refused.

    ``paper``/``shadow`` build the embedded paper broker on the ledger database with quotes from
    :class:`SampleQuoteSource` (seeded; ``quote_lag_s`` stamps quotes in the past — tests use it
    for stale quotes) and ADV/σ from ``market_features`` of D; its starting cash is the mandate
    NAV. ``alpaca_paper`` reads ``APCA_API_KEY_ID``/``APCA_API_SECRET_KEY`` at use time.
    ``ticks``/``tick_interval_s``: how long one execution works its orders.
    """

    kind: str = "paper"
    quote_seed: int = 7
    quote_lag_s: float = 0.0
    ticks: int = 3
    tick_interval_s: float = 60.0
    max_participation_per_tick: float = 0.01
    fee_bps: float = 0.0
    alpaca_url: str | None = None
    alpaca_data_url: str | None = None

    def broker_mode(self) -> BrokerMode:
        if self.kind == "live":
            raise dg.Failure(
                description=f"{ReasonCode.LIVE_TRADING_REFUSED}: {LiveTradingRefusedError()}",
                metadata={"reason_code": str(ReasonCode.LIVE_TRADING_REFUSED)},
                allow_retries=False,
            )
        if self.kind not in BROKER_KINDS:
            raise dg.Failure(f"broker kind must be one of {BROKER_KINDS}, got {self.kind!r}")
        return BrokerMode.SHADOW if self.kind == "shadow" else BrokerMode.PAPER

    def _alpaca_keys(self) -> tuple[str, str]:
        key, secret = os.environ.get("APCA_API_KEY_ID", ""), os.environ.get("APCA_API_SECRET_KEY", "")
        if not key or not secret:
            raise dg.Failure(
                description=f"{ReasonCode.PROVIDER_NOT_ENTITLED}: alpaca_paper needs APCA_API_KEY_ID and "
                "APCA_API_SECRET_KEY in the environment (fail closed)",
                metadata={"reason_code": str(ReasonCode.PROVIDER_NOT_ENTITLED)},
                allow_retries=False,
            )
        return key, secret

    def quote_source(self, snapshot: MarketSnapshot, session_open: datetime) -> QuoteSource:
        self.broker_mode()
        if self.kind == "alpaca_paper":
            from ais_pipelines.market_data.quotes import AlpacaQuoteSource

            key, secret = self._alpaca_keys()
            return AlpacaQuoteSource(key, secret, url_override=self.alpaca_data_url)
        return SampleQuoteSource(
            snapshot.closes(),
            snapshot.spreads_bps(),
            snapshot.sigma_daily(),
            session_open,
            seed=self.quote_seed,
            ts_lag_s=self.quote_lag_s,
        )

    def build(
        self,
        ledger: LedgerStore,
        clock: Clock,
        snapshot: MarketSnapshot,
        quotes: QuoteSource,
        *,
        starting_cash: float,
        calendars: dict[str, str],
    ) -> Broker:
        mode = self.broker_mode()  # live raises before anything is built
        if self.kind == "alpaca_paper":
            from ais_pipelines.brokers.alpaca import AlpacaPaperBroker

            key, secret = self._alpaca_keys()
            return AlpacaPaperBroker(key, secret, clock, url_override=self.alpaca_url)
        from ais_pipelines.intraday import paper_broker

        return paper_broker(ledger, clock, snapshot, quotes, starting_cash=starting_cash, calendars=calendars,
                            max_participation_per_tick=self.max_participation_per_tick, fee_bps=self.fee_bps,
                            mode=mode)


# --------------------------------------------------------------------------------------------
# one trading session: what every intraday step, control job and CLI command opens


def open_trading_session(
    policies: Policies,
    con: Any,
    as_of: date | str,
    ledger: LedgerResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
    *,
    not_before: datetime | None = None,
) -> TradingSession:
    """Snapshot of D from the warehouse (``con``), the ledger, the clock, quotes and the broker."""
    day = pd.Timestamp(as_of).date()
    snapshot = load_snapshot(con, day)
    store = ledger.store()
    clock = execution_clock.clock(day, not_before=not_before)
    quotes = broker.quote_source(snapshot, execution_clock.session_open(day))
    brk = broker.build(
        store,
        clock,
        snapshot,
        quotes,
        starting_cash=float(policies.mandate.nav),
        calendars=dict(policies.universe.calendars),
    )
    return TradingSession(day, policies, store, ledger.audit(), clock, snapshot, quotes, brk)


def trading_resources_for(env: str, runtime_root: str) -> dict[str, dg.ConfigurableResource]:
    """Environment → trading resources, as data (merged into ``resources_for`` by the factory)."""
    root = str(Path(runtime_root))
    ledger = LedgerResource(url=os.environ.get("AIS_LEDGER_URL"), runtime_root=root)
    by_env: dict[str, dict[str, dg.ConfigurableResource]] = {
        "local": {"broker": BrokerResource(kind=os.environ.get("AIS_BROKER", "paper"))},
        "ci": {"broker": BrokerResource(kind="paper")},
        "prod": {"broker": BrokerResource(kind=os.environ.get("AIS_BROKER", "alpaca_paper"))},
    }
    if env not in by_env:
        raise ValueError(f"AIS_ENV must be one of {tuple(by_env)}, got {env!r}")
    return {"ledger": ledger, "signing_key": SigningKeyResource(), "execution_clock": execution_clock_for(env),
            **by_env[env]}


def execution_clock_for(env: str, environ: dict[str, str] | None = None) -> ExecutionClockResource:
    """One market-clock rule for the sensor, the jobs and the CLI (issue 17), from the environment:
    ``AIS_EXECUTION_NOW`` (ISO-8601 with offset) → a fixed instant; else ``AIS_EXECUTION_CLOCK``
    (simulated | system); default simulated in local/ci, the exchange clock in prod. A simulated
    clock is refused in prod: it would open a market that is closed."""
    environ = dict(os.environ if environ is None else environ)
    fixed = environ.get("AIS_EXECUTION_NOW", "").strip()
    mode = "fixed" if fixed else (environ.get("AIS_EXECUTION_CLOCK", "").strip()
                                  or ("system" if env == "prod" else "simulated"))
    if mode not in CLOCK_MODES:
        raise ValueError(f"AIS_EXECUTION_CLOCK must be one of {CLOCK_MODES}, got {mode!r}")
    if env == "prod" and mode == "simulated":
        raise ValueError("AIS_EXECUTION_CLOCK=simulated is refused in prod: the exchange clock decides")
    return ExecutionClockResource(mode=mode, fixed_now=fixed or None)



def _no_quote(symbol: str, now: datetime) -> None:
    return None


def control_clock(policies: Policies, store: LedgerStore, execution_clock: ExecutionClockResource) -> tuple[date, Clock]:
    """(as_of, clock) for actions outside an execution run (reconciliation, trading controls).

    The simulated clock is placed in the session after the last executed D (else after the last
    sample bar), never before the ledger's latest activity, so audit times stay ordered.
    """
    from ais_pipelines.execution import EXECUTED_MARKER, latest_activity

    executed = [e for e in store.execution_events() if e.kind == EXECUTED_MARKER and (e.payload or {}).get("as_of")]
    as_of = pd.Timestamp(executed[-1].payload["as_of"]).date() if executed else policies.providers.sample.end_session
    return as_of, execution_clock.clock(as_of, not_before=latest_activity(store))


def open_reconciliation_session(
    policies: Policies,
    ledger: LedgerResource,
    execution_clock: ExecutionClockResource,
    broker: BrokerResource,
) -> TradingSession:
    """A session that only reads both books (no quotes, no market data): for reconciliation."""
    store = ledger.store()
    as_of, clock = control_clock(policies, store, execution_clock)
    empty = pd.DataFrame()
    snapshot = MarketSnapshot(as_of, empty, empty, empty, empty, empty, empty)
    brk = broker.build(store, clock, snapshot, _no_quote, starting_cash=float(policies.mandate.nav),
                       calendars=dict(policies.universe.calendars))
    return TradingSession(as_of, policies, store, ledger.audit(), clock, snapshot, _no_quote, brk)
