"""The trading environment as plain objects (§I1, §I4, §I5, §J2): ledger, signing key, market
clock and broker settings, chosen per ``AIS_ENV``. No Dagster here.

The Dagster resources of :mod:`resources.trading` are these same classes with
``dg.ConfigurableResource`` mixed in (fields and behaviour defined once); the ``ais`` CLI uses
the plain classes so that a command that only reads the ledger never imports Dagster.
A failure goes through :meth:`_fail`: a :class:`TradingSetupError` here, a ``dg.Failure``
(no retries, reason code in the metadata) in the resources.

=========================  ==================================  =================================
setting                    local / ci                          prod
=========================  ==================================  =================================
``ledger``                 SQLite ``{runtime}/ledger.sqlite``  ``AIS_LEDGER_URL`` (PostgreSQL)
``signing_key``            the one key rule of :func:`ais_pipelines.core.approvals.find_signing_key`
``execution_clock``        simulated session after D           the system clock (real exchange)
``broker``                 embedded paper broker               Alpaca paper (``APCA_*`` keys)
=========================  ==================================  =================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel, PrivateAttr

from ais_pipelines.core.reason_codes import ReasonCode

if TYPE_CHECKING:
    import pandas as pd

    from ais_pipelines.brokers.base import Broker, BrokerMode
    from ais_pipelines.brokers.paper import QuoteSource
    from ais_pipelines.config import Policies
    from ais_pipelines.core.audit import AuditAnchor, AuditChain
    from ais_pipelines.core.clock import Clock
    from ais_pipelines.execution import MarketSnapshot, TradingSession
    from ais_pipelines.ledger.store import LedgerStore

BROKER_KINDS = ("paper", "shadow", "alpaca_paper", "live")
CLOCK_MODES = ("simulated", "system", "fixed")
ENVIRONMENTS = ("local", "ci", "prod")


class TradingSetupError(RuntimeError):
    """A trading setting that cannot be used (fail closed); ``reason_code`` says why."""

    def __init__(self, description: str, reason_code: str | None = None):
        super().__init__(description)
        self.description = description
        if reason_code is not None:
            self.reason_code = ReasonCode(reason_code)


class _Fails:
    def _fail(self, description: str, reason_code: str | None = None) -> NoReturn:
        raise TradingSetupError(description, reason_code)


class Ledger(_Fails, BaseModel):
    """The transactional ledger. ``url`` unset → SQLite under the runtime directory.

    Migrations run on first use (``upgrade_ledger``, idempotent), not at import or load time.
    """

    url: str | None = None
    runtime_root: str = "runtime"
    _store: LedgerStore | None = PrivateAttr(default=None)

    def resolved_url(self) -> str:
        return self.url or f"sqlite:///{Path(self.runtime_root).resolve() / 'ledger.sqlite'}"

    def store(self) -> LedgerStore:
        from ais_pipelines.ledger.store import LedgerStore

        if self._store is None:
            self._store = LedgerStore.open(self.resolved_url())
        return self._store

    def audit(self) -> AuditChain:
        from ais_pipelines.core.audit import AuditChain
        from ais_pipelines.ledger.store import SqlAuditStore

        return AuditChain(SqlAuditStore(self.store().engine), anchor=self.audit_anchor())

    def audit_anchor(self) -> AuditAnchor:
        """The published chain head, ``{runtime_root}/audit_anchor.json`` (outside the ledger).

        Read: ``.read()``; publish the current head (e.g. for materialization metadata):
        ``self.audit().publish_anchor()``.
        """
        from ais_pipelines.core.audit import AuditAnchor
        from ais_pipelines.ledger.store import SqlAuditStore

        store = SqlAuditStore(self.store().engine)
        return AuditAnchor(Path(self.runtime_root).resolve() / "audit_anchor.json", store.ledger_id)


class SigningKey(_Fails, BaseModel):
    """The approval signing key, found when a step asks for it by the one key rule
    (:func:`ais_pipelines.core.approvals.find_signing_key`): ``AIS_APPROVAL_KEY`` /
    ``AIS_APPROVAL_KEY_FILE``, else (local/ci only) the development key file under the runtime
    directory; nothing → SIGNING_KEY_MISSING before any broker is built."""

    env: str = "local"
    runtime_root: str | None = None  # where the development key file may be; None: environment only

    def key(self) -> bytes:
        from ais_pipelines.core.approvals import SigningKeyMissingError, find_signing_key

        try:
            return find_signing_key(os.environ, self.env, self.runtime_root)
        except SigningKeyMissingError as exc:
            text = str(exc).removeprefix(f"{ReasonCode.SIGNING_KEY_MISSING}:").strip()
            self._fail(f"{ReasonCode.SIGNING_KEY_MISSING}: {text} — nothing trades without it (fail closed)",
                       ReasonCode.SIGNING_KEY_MISSING)


def session_after(as_of: date | str, calendar: str = "XNYS") -> pd.Timestamp:
    import pandas as pd

    from ais_pipelines.core.calendars import session_table

    return session_table(calendar).session_after(pd.Timestamp(as_of))


class ExecutionClock(_Fails, BaseModel):
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
        from ais_pipelines.core.calendars import session_table

        return session_table(self.calendar).session_open(session_after(as_of, self.calendar)).to_pydatetime()

    def clock(self, as_of: date | str, not_before: datetime | None = None) -> Clock:
        import pandas as pd

        from ais_pipelines.core.clock import FixedClock, SimulatedClock, SystemClock, ensure_utc

        if self.mode not in CLOCK_MODES:
            self._fail(f"execution clock mode must be one of {CLOCK_MODES}, got {self.mode!r}")
        if self.mode == "system":
            return SystemClock()
        if self.mode == "fixed":
            if not self.fixed_now:
                self._fail("execution clock mode 'fixed' needs fixed_now")
            ts = pd.Timestamp(self.fixed_now)
            if ts.tzinfo is None:
                self._fail(f"fixed_now must carry a timezone offset, got {self.fixed_now!r}")
            clock: FixedClock = FixedClock(ts.to_pydatetime())
        else:
            clock = SimulatedClock(self.session_open(as_of) + timedelta(minutes=self.minutes_after_open))
        if not_before is not None and ensure_utc(not_before) > clock.now():
            clock.set(not_before)
        return clock


class BrokerSettings(_Fails, BaseModel):
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
        from ais_pipelines.brokers.base import BrokerMode, LiveTradingRefusedError

        if self.kind == "live":
            self._fail(f"{ReasonCode.LIVE_TRADING_REFUSED}: {LiveTradingRefusedError()}",
                       ReasonCode.LIVE_TRADING_REFUSED)
        if self.kind not in BROKER_KINDS:
            self._fail(f"broker kind must be one of {BROKER_KINDS}, got {self.kind!r}")
        return BrokerMode.SHADOW if self.kind == "shadow" else BrokerMode.PAPER

    def _alpaca_keys(self) -> tuple[str, str]:
        key, secret = os.environ.get("APCA_API_KEY_ID", ""), os.environ.get("APCA_API_SECRET_KEY", "")
        if not key or not secret:
            self._fail(f"{ReasonCode.PROVIDER_NOT_ENTITLED}: alpaca_paper needs APCA_API_KEY_ID and "
                       "APCA_API_SECRET_KEY in the environment (fail closed)", ReasonCode.PROVIDER_NOT_ENTITLED)
        return key, secret

    def quote_source(self, snapshot: MarketSnapshot, session_open: datetime) -> QuoteSource:
        from ais_pipelines.market_data.quotes import SampleQuoteSource

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
        from ais_pipelines.intraday import paper_broker  # one paper broker for the assets, CLI and replay

        return paper_broker(ledger, clock, snapshot, quotes, starting_cash=starting_cash, calendars=calendars,
                            max_participation_per_tick=self.max_participation_per_tick, fee_bps=self.fee_bps,
                            mode=mode)


# --------------------------------------------------------------------------------------------
# environment → settings, as data (the resources and the CLI read the same mapping)


def trading_settings_for(env: str, runtime_root: str, environ: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Field values of the four trading settings for ``env`` (``ledger``, ``signing_key``,
    ``execution_clock``, ``broker``): what :func:`trading_env_for` and the Dagster resources build."""
    environ = os.environ if environ is None else environ
    if env not in ENVIRONMENTS:
        raise ValueError(f"AIS_ENV must be one of {ENVIRONMENTS}, got {env!r}")
    root = str(Path(runtime_root))
    broker = {"local": environ.get("AIS_BROKER", "paper"), "ci": "paper",
              "prod": environ.get("AIS_BROKER", "alpaca_paper")}[env]
    return {
        "ledger": {"url": environ.get("AIS_LEDGER_URL"), "runtime_root": root},
        "signing_key": {"env": env, "runtime_root": root},
        "execution_clock": execution_clock_settings(env, environ),
        "broker": {"kind": broker},
    }


def execution_clock_settings(env: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
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
    return {"mode": mode, "fixed_now": fixed or None}


def trading_env_for(env: str, runtime_root: str) -> dict[str, Any]:
    """The plain (Dagster-free) trading settings of ``env``: what the ``ais`` CLI uses."""
    s = trading_settings_for(env, runtime_root)
    return {"ledger": Ledger(**s["ledger"]), "signing_key": SigningKey(**s["signing_key"]),
            "execution_clock": ExecutionClock(**s["execution_clock"]), "broker": BrokerSettings(**s["broker"])}


# --------------------------------------------------------------------------------------------
# one trading session: what every intraday step, control job and CLI command opens


def open_trading_session(
    policies: Policies,
    con: Any,
    as_of: date | str,
    ledger: Ledger,
    execution_clock: ExecutionClock,
    broker: BrokerSettings,
    *,
    not_before: datetime | None = None,
) -> TradingSession:
    """Snapshot of D from the warehouse (``con``), the ledger, the clock, quotes and the broker."""
    import pandas as pd

    from ais_pipelines.execution import TradingSession, load_snapshot

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


def _no_quote(symbol: str, now: datetime) -> None:
    return None


def control_clock(policies: Policies, store: LedgerStore, execution_clock: ExecutionClock) -> tuple[date, Clock]:
    """(as_of, clock) for actions outside an execution run (reconciliation, trading controls).

    The simulated clock is placed in the session after the last executed D (else after the last
    sample bar), never before the ledger's latest activity, so audit times stay ordered.
    """
    import pandas as pd

    from ais_pipelines.execution import EXECUTED_MARKER, latest_activity

    executed = [e for e in store.execution_events() if e.kind == EXECUTED_MARKER and (e.payload or {}).get("as_of")]
    as_of = pd.Timestamp(executed[-1].payload["as_of"]).date() if executed else policies.providers.sample.end_session
    return as_of, execution_clock.clock(as_of, not_before=latest_activity(store))


def open_reconciliation_session(
    policies: Policies,
    ledger: Ledger,
    execution_clock: ExecutionClock,
    broker: BrokerSettings,
) -> TradingSession:
    """A session that only reads both books (no quotes, no market data): for reconciliation."""
    import pandas as pd

    from ais_pipelines.execution import MarketSnapshot, TradingSession

    store = ledger.store()
    as_of, clock = control_clock(policies, store, execution_clock)
    empty = pd.DataFrame()
    snapshot = MarketSnapshot(as_of, empty, empty, empty, empty, empty, empty)
    brk = broker.build(store, clock, snapshot, _no_quote, starting_cash=float(policies.mandate.nav),
                       calendars=dict(policies.universe.calendars))
    return TradingSession(as_of, policies, store, ledger.audit(), clock, snapshot, _no_quote, brk)
