"""Declarative policies (``policies/*.yaml``) as validated pydantic models.

Every file is loaded and validated once per run; a bad file is refused with an error that
names the file, the key path and the offending value (fail closed: nothing runs on a policy
that could not be read).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ais_pipelines.core.actors import SERVICE_ACTORS, ActorNotAuthorizedError, normalize_actor
from ais_pipelines.core.asset_classes import AssetClass, classify_symbol
from ais_pipelines.core.calendar_names import DEFAULT_CALENDARS, calendar_name, known_calendar_names
from ais_pipelines.core.reason_codes import ReasonCode

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICIES_DIR = REPO_ROOT / "policies"

Purpose = Literal["history", "live_quotes", "execution"]


class PolicyFileError(ValueError):
    """A policy file is missing, unreadable or invalid. Carries POLICY_UNREADABLE."""

    reason_code = ReasonCode.POLICY_UNREADABLE

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- universe ------------------------------------------------------------------------------
class Instrument(_Strict):
    symbol: str = Field(min_length=1)
    asset_class: AssetClass | None = None
    sector: str = "Unclassified"
    calendar: str | None = None
    # Universe membership (issue 13, point in time): traded only on sessions within [from, until].
    member_from: date | None = None
    member_until: date | None = None

    @model_validator(mode="after")
    def _membership(self) -> Instrument:
        if self.member_from and self.member_until and self.member_until < self.member_from:
            raise ValueError(f"member_until {self.member_until} is before member_from {self.member_from}")
        return self

    def is_member(self, day: date) -> bool:
        return (self.member_from is None or self.member_from <= day) and (
            self.member_until is None or day <= self.member_until)

    @field_validator("symbol")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.strip().upper()

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, v: str | None) -> str | None:
        # A typo here would only surface when the first session is computed; refuse it now.
        # (Imports exchange_calendars, lazily: only universes that override a calendar pay.)
        if v is not None and v not in DEFAULT_CALENDARS.values() and v not in known_calendar_names():
            raise ValueError(f"unknown calendar {v!r} (not an exchange_calendars name, e.g. XNYS, 24/5, 24/7)")
        return v

    @property
    def resolved_class(self) -> AssetClass:
        return self.asset_class or classify_symbol(self.symbol)

    @property
    def resolved_calendar(self) -> str:
        return calendar_name(self.resolved_class, self.calendar)


class Universe(_Strict):
    name: str
    benchmark: str = "equal_weight_stocks"
    symbols: list[Instrument] = Field(min_length=1)
    # issue 13: the calendars whose sessions are as-of sessions D (default: the symbols' own,
    # ais_pipelines/as_of_calendar.py); the as-of partitions are built from them.
    as_of_calendars: list[str] | None = Field(default=None, min_length=1)

    @field_validator("as_of_calendars")
    @classmethod
    def _known_as_of_calendars(cls, v: list[str] | None) -> list[str] | None:
        for i, name in enumerate(v or []):
            if name not in known_calendar_names():
                raise ValueError(f"[{i}]: unknown calendar {name!r} (not an exchange_calendars name, e.g. XNYS, "
                                 f"XLON, 24/7) (got {name!r})")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Universe:
        seen: set[str] = set()
        for i, inst in enumerate(self.symbols):
            if inst.symbol in seen:
                raise ValueError(f"symbols[{i}].symbol: duplicate symbol {inst.symbol!r}")
            seen.add(inst.symbol)
        return self

    @property
    def asset_classes(self) -> dict[str, AssetClass]:
        return {i.symbol: i.resolved_class for i in self.symbols}

    @property
    def calendars(self) -> dict[str, str]:
        return {i.symbol: i.resolved_calendar for i in self.symbols}

    @property
    def sectors(self) -> dict[str, str]:
        return {i.symbol: i.sector for i in self.symbols}

    def members_on(self, day: date) -> set[str]:
        """Symbols that belong to the universe on ``day`` (declared membership dates)."""
        return {i.symbol for i in self.symbols if i.is_member(day)}


# --- providers -----------------------------------------------------------------------------
class ProviderCapability(_Strict):
    asset_classes: list[AssetClass]
    max_history_days: int = Field(gt=0)
    needs_entitlement: bool
    entitlement_env: list[str] = []
    purposes: list[Purpose]
    implemented: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _env_when_entitled(self) -> ProviderCapability:
        if self.needs_entitlement and not self.entitlement_env:
            raise ValueError("needs_entitlement is true but entitlement_env is empty")
        return self


class RetryPolicy(_Strict):
    max_attempts: int = Field(default=4, ge=1, le=10)
    initial_wait_s: float = Field(default=0.5, ge=0)
    max_wait_s: float = Field(default=8.0, ge=0)
    max_retry_after_s: float = Field(default=60.0, ge=0)  # issue 16: longer Retry-After → give up


class SampleDefectSpec(_Strict):
    symbol: str
    kind: Literal[
        "missing_sessions", "short_history", "stale", "split_jump", "ohlc_inconsistent",
        "duplicate_dates", "non_positive", "return_spike", "volume_spike",
    ]
    fraction: float | None = Field(default=None, gt=0, lt=1)
    sessions: int | None = Field(default=None, gt=0)
    rows: int | None = Field(default=None, gt=0)


class SampleSettings(_Strict):
    seed: int = 7
    end_session: date
    n_sessions: int = Field(default=1320, ge=300)
    defects: list[SampleDefectSpec] = []


class ProvidersPolicy(_Strict):
    providers: dict[str, ProviderCapability]
    routing: dict[Purpose, list[str]]
    default_history_provider: str = "sample"
    retry: RetryPolicy = RetryPolicy()
    live_history_limit_days: int = Field(default=730, gt=0)
    sample: SampleSettings

    @model_validator(mode="after")
    def _known_names(self) -> ProvidersPolicy:
        for purpose, names in self.routing.items():
            for i, n in enumerate(names):
                if n not in self.providers:
                    raise ValueError(f"routing.{purpose}[{i}]: unknown provider {n!r}")
        if self.default_history_provider not in {*self.providers, "auto"}:
            raise ValueError(f"default_history_provider: unknown provider {self.default_history_provider!r}")
        return self


# --- quality -------------------------------------------------------------------------------
class HistoryPolicy(_Strict):
    min_valid_sessions: int = Field(default=1260, gt=0)
    fetch_sessions: int = Field(default=1320, gt=0)

    @model_validator(mode="after")
    def _enough(self) -> HistoryPolicy:
        if self.fetch_sessions < self.min_valid_sessions:
            raise ValueError(
                f"fetch_sessions: {self.fetch_sessions} is below min_valid_sessions {self.min_valid_sessions}"
            )
        return self


class ScorePolicy(_Strict):
    invalid_below: float = Field(default=0.6, ge=0, le=1)
    spike_sigma: float = Field(default=6.0, gt=0)
    stale_min_run: int = Field(default=3, ge=2)
    split_tolerance: float = Field(default=0.05, gt=0, lt=0.5)
    weights: dict[
        Literal[
            "missing_sessions", "duplicate_dates", "non_positive_prices", "ohlc_inconsistent",
            "return_spikes", "volume_spikes", "stale_prices", "split_like_jumps",
        ],
        float,
    ]

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for k, w in v.items():
            if w < 0:
                raise ValueError(f"weight of {k} must be ≥ 0, got {w}")
        return v


class GatePolicy(_Strict):
    # 0 would disable the gate: a universe with no tradable symbol must stop the night.
    min_tradable_symbols: int = Field(default=1, ge=1)


class DataHealthPolicy(_Strict):
    """System-level data health (issue 17): a feed that is mostly bad is a system fault, not a
    handful of excluded symbols. Every limit is required: none may default silently."""

    min_tradable_share: float = Field(ge=0, le=1)  # tradable symbols / universe
    max_mean_quality_drop: float = Field(ge=0, le=1)  # mean score vs the trailing sessions' mean
    trailing_sessions: int = Field(ge=1, le=250)
    max_provider_failure_rate: float = Field(ge=0, le=1)  # symbols whose ingestion failed tonight
    max_stale_share: float = Field(ge=0, le=1)  # symbols whose last bar is older than stale_after
    stale_after_sessions: int = Field(ge=1, le=60)
    on_breach: Literal["REDUCING", "HALTED"]


# --- corporate actions (issue 13) ---------------------------------------------------------
class CorporateActionsPolicy(_Strict):
    """Split and dividend detection (ais_pipelines/core/corporate_actions.py); the split
    tolerance itself is ``score.split_tolerance``."""

    split_ratios: list[str] = Field(default_factory=lambda: [
        "2:1", "3:2", "3:1", "4:1", "5:1", "7:1", "10:1", "1:2", "2:3", "1:3", "1:4", "1:5", "1:7", "1:10"])
    adjustment_tolerance: float = Field(default=0.02, gt=0, lt=0.5)
    volume_window: int = Field(default=40, ge=1, le=250)
    volume_skip: int = Field(default=5, ge=0, le=60)
    volume_min_obs: int = Field(default=5, ge=1, le=250)
    volume_band: float = Field(default=0.4, gt=0, lt=1)
    min_dividend_yield: float = Field(default=0.0005, gt=0, lt=1)
    max_dividend_yield: float = Field(default=0.25, gt=0, lt=1)
    asset_classes: list[AssetClass] = Field(default_factory=lambda: [AssetClass.STOCKS, AssetClass.COMMODITIES])

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: list[str]) -> list[str]:
        from ais_pipelines.core.corporate_actions import parse_ratio

        if not v:
            raise ValueError("at least one split ratio is required")
        for r in v:
            parse_ratio(r)
        return v

    @model_validator(mode="after")
    def _yields(self) -> CorporateActionsPolicy:
        if self.min_dividend_yield >= self.max_dividend_yield:
            raise ValueError(f"min_dividend_yield {self.min_dividend_yield} must be below max_dividend_yield "
                             f"{self.max_dividend_yield}")
        return self
# --- end corporate actions (issue 13) -------------------------------------------------------


class QualityPolicy(_Strict):
    history: HistoryPolicy
    score: ScorePolicy
    gate: GatePolicy = GatePolicy()
    health: DataHealthPolicy
    corporate_actions: CorporateActionsPolicy = CorporateActionsPolicy()  # issue 13


# --- schedules -----------------------------------------------------------------------------
class NightlySchedule(_Strict):
    cron: str
    timezone: str = "America/New_York"
    # Freshness (issue 14): each nightly asset is due by this cron, materialized at most
    # ``freshness_window_hours`` before it — shown in the UI as fresh / overdue.
    freshness_deadline_cron: str = "30 21 * * 1-5"
    freshness_window_hours: float = Field(default=3.0, gt=0, le=72)


class IntradaySchedule(_Strict):
    execution_sensor_interval_s: int = Field(default=30, ge=5)
    reconciliation_sensor_interval_s: int = Field(default=60, ge=5)


class SchedulesPolicy(_Strict):
    nightly: NightlySchedule
    intraday: IntradaySchedule = IntradaySchedule()


# --- models (§C, §D) ----------------------------------------------------------------------
class RegimePolicy(_Strict):
    crisis_threshold: float = Field(default=0.15, gt=0, lt=1)
    min_exposure_scale: float = Field(default=0.0, ge=0, le=1)
    horizon_sessions: int = Field(default=5, ge=1)
    seed: int = 0
    min_obs: int = Field(default=250, ge=50)
    # issue 16: FRED inputs recorded with the snapshot (§C3); the proxy is the fallback
    vix_series: str = "VIXCLS"
    macro_series: list[str] = []
    macro_lookback_days: int = Field(default=30, ge=1, le=3650)
    macro_max_staleness_days: int = Field(default=7, ge=0, le=365)
    # Issue 15: refit the regime model every N new sessions; nights in between only filter.
    refit_every_sessions: int = Field(default=21, ge=1)


class ForecastPolicy(_Strict):
    horizon: int = Field(default=5, ge=1)
    fit_lookback: int = Field(default=756, ge=60)
    disagreement_beta: float = Field(default=100.0, ge=0)
    strength_full: float = Field(default=0.05, gt=0)
    t_dof: float = Field(default=5.0, gt=2)


class DecayPolicy(_Strict):
    full_until_days: int = Field(default=30, ge=0)
    expire_days: int = Field(default=120, gt=0)
    error_window: int = Field(default=63, ge=5)
    error_tolerance: float = Field(default=1.3, gt=0)
    error_floor: float = Field(default=0.25, ge=0, le=1)
    autocorr_window: int = Field(default=63, ge=10)
    flip_factor: float = Field(default=0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _order(self) -> DecayPolicy:
        if self.expire_days <= self.full_until_days:
            raise ValueError(f"expire_days ({self.expire_days}) must exceed full_until_days ({self.full_until_days})")
        return self


class RefitPolicy(_Strict):
    cadence: str = "monthly"
    cron: str = "0 20 1 * *"


class ModelsPolicy(_Strict):
    regime: RegimePolicy = RegimePolicy()
    forecasts: ForecastPolicy = ForecastPolicy()
    decay: DecayPolicy = DecayPolicy()
    refit: RefitPolicy = RefitPolicy()


# --- strategies and lifecycle (§E) -----------------------------------------------------------
class StrategySpec(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    model: Literal["momentum", "mean_reversion", "regime_mean"]
    inception: date
    min_signal: float = 0.0


class LifecyclePolicy(_Strict):
    nav_caps: dict[Literal["INCUBATING", "SCALING", "HARVESTING", "DECOMMISSIONED"], float]
    min_evaluation_days: int = Field(default=60, ge=1)
    promote_sharpe: float = 1.0
    promote_max_drawdown: float = Field(default=0.05, gt=0, le=1)
    promote_profit_factor: float = Field(default=1.3, gt=0)
    max_error_rate: float = Field(default=0.02, ge=0, le=1)
    demote_sharpe: float = 0.0
    demote_drawdown: float = Field(default=0.08, gt=0, le=1)
    decommission_drawdown: float = Field(default=0.15, gt=0, le=1)
    decommission_error_rate: float = Field(default=0.10, gt=0, le=1)
    decommission_sharpe: float = -1.0
    decay_per_session: float = Field(default=0.01, ge=0, lt=1)
    decay_floor: float = Field(default=0.25, ge=0, le=1)

    @field_validator("nav_caps")
    @classmethod
    def _caps(cls, v: dict[str, float]) -> dict[str, float]:
        missing = {"INCUBATING", "SCALING", "HARVESTING", "DECOMMISSIONED"} - set(v)
        if missing:
            raise ValueError(f"missing caps for {sorted(missing)}")
        if v["DECOMMISSIONED"] != 0:
            raise ValueError(f"DECOMMISSIONED cap must be 0, got {v['DECOMMISSIONED']}")
        for k, cap in v.items():
            if not 0 <= cap <= 1:
                raise ValueError(f"{k} cap must be in [0, 1], got {cap}")
        return v


class StrategiesPolicy(_Strict):
    strategies: list[StrategySpec] = Field(min_length=1)
    lifecycle: LifecyclePolicy

    @model_validator(mode="after")
    def _unique(self) -> StrategiesPolicy:
        ids = [s.id for s in self.strategies]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate strategy ids {sorted(dup)}")
        return self


# --- mandate and risk (§F, §G, §H3) ---------------------------------------------------------
def _symbol(v: str) -> str:
    # Same spelling as the universe (upper case): a lower-case restriction must not miss.
    return v.strip().upper()


class EventBlackout(_Strict):
    symbol: str = Field(min_length=1)
    start: datetime
    end: datetime
    why: str = ""

    @field_validator("symbol")
    @classmethod
    def _upper(cls, v: str) -> str:
        return _symbol(v)

    @model_validator(mode="after")
    def _window(self) -> EventBlackout:
        if self.end <= self.start:
            raise ValueError(f"end: {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self


class MandatePolicy(_Strict):
    # Caps and limits have no defaults: a limit missing from the file is an error, not a guess.
    nav: float = Field(gt=0)
    allowed_asset_classes: list[AssetClass]
    denied_symbols: list[str] = []
    max_gross_exposure: float = Field(gt=0, le=1.0)
    max_position_weight: float = Field(gt=0, le=1)
    max_adv_participation: float = Field(gt=0, le=1)
    min_order_notional: float = Field(ge=0)
    event_blackouts: list[EventBlackout] = []

    @field_validator("denied_symbols")
    @classmethod
    def _upper_denied(cls, v: list[str]) -> list[str]:
        return [_symbol(s) for s in v]

    def symbol_allowed(self, symbol: str, asset_class: AssetClass | str) -> bool:
        return AssetClass(asset_class) in self.allowed_asset_classes and symbol not in self.denied_symbols


class RiskPolicy(_Strict):
    # Every field is required: a silently defaulted limit is a limit nobody decided.
    horizon_sessions: int = Field(ge=1)
    scenario_lookback: int = Field(ge=100)
    scenario_weighting: Literal["equal", "regime"]
    alpha: float = Field(gt=0.5, lt=1)
    portfolio_cvar_limit: float = Field(gt=0, le=1)  # fractions of NAV
    component_cvar_limit: float = Field(gt=0, le=1)
    min_scale: float = Field(ge=0, le=1)
    risk_aversion: float = Field(ge=0)
    budget: float = Field(gt=0, le=1)
    quality_full_weight: float = Field(gt=0, le=1)
    daily_loss_limit: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _component_within_portfolio(self) -> RiskPolicy:
        if self.component_cvar_limit > self.portfolio_cvar_limit:
            raise ValueError(
                f"component_cvar_limit: {self.component_cvar_limit} exceeds portfolio_cvar_limit "
                f"{self.portfolio_cvar_limit} (got {self.component_cvar_limit})"
            )
        return self


# --- operators: who may take human actions (§H5, §J2) -------------------------------------
Permission = Literal["approve", "reject", "resume", "release"]
PERMISSIONS: tuple[str, ...] = ("approve", "reject", "resume", "release")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"


class OperatorRole(_Strict):
    description: str = ""
    may: list[Permission] = Field(min_length=1)


class Operator(_Strict):
    description: str = ""
    roles: list[str] = Field(min_length=1)


class OperatorsPolicy(_Strict):
    """``policies/operators.yaml``: the people and roles that may resume, release the kill
    switch (resume from HALTED), approve or reject a review item, and the service identities
    that never may. An actor is a declared person (rights of their roles) or a role name."""

    roles: dict[str, OperatorRole] = Field(min_length=1)
    people: dict[str, Operator] = {}
    services: list[str] = []

    @model_validator(mode="after")
    def _names(self) -> OperatorsPolicy:
        seen: dict[str, str] = {}
        named = [("roles", n) for n in self.roles] + [("people", n) for n in self.people]
        named += [(f"services[{i}]", n) for i, n in enumerate(self.services)]
        for where, name in named:
            key = f"{where}.{name}" if not where.startswith("services") else where
            if not re.match(_NAME, name):
                raise ValueError(f"{key}: not a name (letters, digits, . _ @ -) (got {name!r})")
            norm = normalize_actor(name)
            if norm in seen:
                raise ValueError(f"{key}: {name!r} is declared twice (also {seen[norm]}, case-insensitive)")
            seen[norm] = key
            if not where.startswith("services") and norm in SERVICE_ACTORS:
                raise ValueError(f"{key}: {name!r} is a service identity and can never act as a person")
        roles = {normalize_actor(r) for r in self.roles}
        for person, op in self.people.items():
            for i, r in enumerate(op.roles):
                if normalize_actor(r) not in roles:
                    raise ValueError(f"people.{person}.roles[{i}]: unknown role {r!r} (got {r!r})")
        return self

    @property
    def service_identities(self) -> frozenset[str]:
        return SERVICE_ACTORS | {normalize_actor(s) for s in self.services}

    def permissions(self, actor: str) -> tuple[str, frozenset[str]] | None:
        """(declared spelling, permissions) of a person or role; ``None`` if undeclared."""
        key = normalize_actor(actor)
        roles = {normalize_actor(n): (n, r) for n, r in self.roles.items()}
        if key in roles:
            name, role = roles[key]
            return name, frozenset(role.may)
        for name, op in self.people.items():
            if normalize_actor(name) == key:
                return name, frozenset(p for r in op.roles for p in roles[normalize_actor(r)][1].may)
        return None

    def authorize(self, actor: str, action: Permission) -> str:
        """The declared spelling of ``actor`` if it may take ``action``; else
        :class:`ActorNotAuthorizedError` (fail closed: unknown means no)."""
        if action not in PERMISSIONS:
            raise ActorNotAuthorizedError(f"unknown human action {action!r} (known: {', '.join(PERMISSIONS)})")
        key = normalize_actor(actor)
        if not key:
            raise ActorNotAuthorizedError(f"{action} needs a named actor")
        if key in self.service_identities:
            raise ActorNotAuthorizedError(
                f"{action} must be done by a person, not by the service identity {actor!r}"
            )
        found = self.permissions(actor)
        if found is None:
            raise ActorNotAuthorizedError(
                f"actor {actor!r} is not a person or role declared in policies/operators.yaml: may not {action}"
            )
        name, may = found
        if action not in may:
            raise ActorNotAuthorizedError(f"actor {name!r} may not {action} (may: {', '.join(sorted(may))})")
        return name


# --- loading -------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def one_line(text: object) -> str:
    """Collapse whitespace: every refusal is printed as exactly one line."""
    return " ".join(str(text).split())


_KEYED = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$")


def _format_error(err: Any) -> str:
    """``key.path: what is wrong (got value)`` for one pydantic error."""
    loc = _format_loc(err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{loc}: required, missing (no default for it)"
    keyed = _KEYED.match(msg) if isinstance(err.get("input"), dict) else None
    if keyed:  # a model-level check that names its own key: join it to the location
        sub, rest = keyed.groups()
        return f"{loc + '.' if loc else ''}{sub}: {rest}"
    got = "" if isinstance(err.get("input"), dict) or "(got " in msg else f" (got {err.get('input')!r})"
    return f"{loc or '<root>'}: {msg}{got}"


def load_policy_file(path: Path, model: type[M]) -> M:
    """Read and validate one YAML file; errors name the file, the key path and the value."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(path, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyFileError(path, [f"not valid YAML: {one_line(exc)}"]) from exc
    if not isinstance(data, dict):
        raise PolicyFileError(path, [f"top level must be a mapping, got {type(data).__name__}"])
    from ais_pipelines.policy_versions import parse_effective_from

    parse_effective_from(data, path)  # issue 13: when the version took effect, not a setting
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PolicyFileError(path, [one_line(_format_error(e)) for e in exc.errors()]) from exc


class Policies:
    """All policy files of one directory, each loaded lazily, validated, then cached."""

    def __init__(self, directory: Path | str | None = None, universe_file: Path | str | None = None,
                 as_of: date | None = None):
        self.directory = Path(directory or os.environ.get("AIS_POLICIES_DIR") or DEFAULT_POLICIES_DIR)
        uf = universe_file or os.environ.get("AIS_UNIVERSE_FILE")
        self.universe_file = Path(uf) if uf else self.directory / "universe.yaml"
        # issue 13: as of session D, each file is the version in force on D (policy_versions.py);
        # None: the current files. Loaded versions are shared by the as_of() views of one set.
        self.as_of = as_of
        self._loaded: dict[Path, BaseModel] = {}
        self._versions: dict[Path, list] = {}

    def as_of_session(self, day: date | datetime | None) -> Policies:
        """The same policies as of session ``day``: each file's version in force on it."""
        d = day.date() if isinstance(day, datetime) else day
        if d == self.as_of:
            return self
        view = Policies(self.directory, self.universe_file, as_of=d)
        view._loaded, view._versions = self._loaded, self._versions
        return view

    def version(self, path: Path):  # -> policy_versions.PolicyVersion
        """Which file of ``path`` (itself or a kept version) is in force as of this view."""
        from ais_pipelines.policy_versions import in_force, versions

        if self.as_of is not None and path not in self._versions:
            self._versions[path] = versions(path)
        return in_force(path, self.as_of, self._versions.get(path))

    def _load(self, path: Path, model: type[M]) -> M:
        file = self.version(path).path
        if file not in self._loaded:
            self._loaded[file] = load_policy_file(file, model)
        return self._loaded[file]  # type: ignore[return-value]

    def path(self, name: str) -> Path:
        return self.directory / name

    @cached_property
    def universe(self) -> Universe:
        return self._load(self.universe_file, Universe)

    @cached_property
    def providers(self) -> ProvidersPolicy:
        return self._load(self.path("providers.yaml"), ProvidersPolicy)

    @cached_property
    def quality(self) -> QualityPolicy:
        return self._load(self.path("quality.yaml"), QualityPolicy)

    @cached_property
    def schedules(self) -> SchedulesPolicy:
        return self._load(self.path("schedules.yaml"), SchedulesPolicy)

    @cached_property
    def models(self) -> ModelsPolicy:
        return self._load(self.path("models.yaml"), ModelsPolicy)

    @cached_property
    def strategies(self) -> StrategiesPolicy:
        return self._load(self.path("strategies.yaml"), StrategiesPolicy)

    @cached_property
    def mandate(self) -> MandatePolicy:
        return self._load(self.path("mandate.yaml"), MandatePolicy)

    @cached_property
    def risk(self) -> RiskPolicy:
        return self._load(self.path("risk.yaml"), RiskPolicy)

    @cached_property
    def operators(self) -> OperatorsPolicy:
        return self._load(self.path("operators.yaml"), OperatorsPolicy)

    @cached_property
    def auction(self) -> AuctionPolicy:
        return self._load(self.path("auction.yaml"), AuctionPolicy)

    @cached_property
    def reasoning(self) -> ReasoningPolicy:  # issue 16
        return self._load(self.path("reasoning.yaml"), ReasoningPolicy)

    FILES: tuple[str, ...] = (
        "universe", "providers", "quality", "schedules", "models", "strategies", "mandate", "risk",
        "operators", "auction", "reasoning",
    )
    # What an execution run reads (the broker's cash and calendars, the clock, limits, who acts).
    EXECUTION_FILES: tuple[str, ...] = ("universe", "providers", "mandate", "risk", "operators")

    def validate_all(self) -> list[str]:
        """Load every file now; returns the names loaded (raises the first problem found)."""
        errors = self.check()
        if errors:
            raise errors[0]
        return [*self.FILES, "pre_trade+vetoes", "environments"]

    def check(
        self, files: Iterable[str] | None = None, environments: Iterable[str] | None = None
    ) -> list[PolicyFileError]:
        """Every problem of ``files`` (default: all), the rule files, the cross-file rules and
        each environment's combined overlay (default: local, ci, prod); ``[]`` = valid.

        Problems are collected, not stopped at, so ``ais policies validate`` lists them all.
        """
        from ais_pipelines.core.policy import PolicyError

        names = tuple(self.FILES if files is None else files)
        errors: list[PolicyFileError] = []
        loaded: set[str] = set()
        for name in names:
            try:
                getattr(self, name)
                loaded.add(name)
            except PolicyFileError as exc:
                errors.append(exc)
        errors += self._version_problems(names)  # issue 13: kept older versions are validated too
        errors += self._cross_file_problems(loaded)
        try:
            self.pre_trade_policy()
        except PolicyFileError as exc:
            errors.append(exc)
        else:  # an overlay applies to the rule files: with those broken, each would repeat it
            from ais_pipelines.execution import ENVIRONMENTS, load_environment_policy

            for env in ENVIRONMENTS if environments is None else environments:
                try:
                    load_environment_policy(env, self.directory, as_of=self.as_of)
                except PolicyError as exc:
                    errors.append(_from_policy_error(exc, self.directory / "environments" / f"{env}.yaml"))
        return errors

    def _version_problems(self, names: Iterable[str]) -> list[PolicyFileError]:
        """Each kept version (``versions/<stem>/*.yaml``) of ``names`` and of the rule files
        (pre_trade.yaml, vetoes.yaml), validated like the file itself."""
        from typing import get_type_hints

        from ais_pipelines.core.policy import SHIPPED_POLICY_FILES, PolicyError, load_policy
        from ais_pipelines.policy_versions import version_files, versions

        def as_model(name: str) -> Callable[[Path], object]:
            model = get_type_hints(getattr(Policies, name).func)["return"]
            return lambda file: load_policy_file(file, model)

        def as_rules(file: Path) -> object:
            try:
                return load_policy(file)
            except PolicyError as exc:
                raise _from_policy_error(exc, file) from exc

        checks = [(self.universe_file if n == "universe" else self.path(f"{n}.yaml"), as_model(n)) for n in names]
        checks += [(self.path(n), as_rules) for n in SHIPPED_POLICY_FILES]
        out: list[PolicyFileError] = []
        for path, check in checks:
            kept = version_files(path)
            if not kept:
                continue
            try:
                versions(path)
            except PolicyFileError as exc:
                out.append(exc)
            for file in kept:
                try:
                    check(file)
                except PolicyFileError as exc:
                    out.append(exc)
        return out

    def _cross_file_problems(self, loaded: set[str]) -> list[PolicyFileError]:
        """Rules between files: the mandate and the quality gate must fit the universe."""
        if "universe" not in loaded:
            return []
        universe = self.universe
        symbols = {i.symbol for i in universe.symbols}
        where = f"not in the universe {universe.name!r} ({self.universe_file})"
        out: list[PolicyFileError] = []
        if "mandate" in loaded:
            m = self.mandate
            probs = [f"denied_symbols[{i}]: symbol {s!r} is {where} (got {s!r})"
                     for i, s in enumerate(m.denied_symbols) if s not in symbols]
            probs += [f"event_blackouts[{i}].symbol: symbol {b.symbol!r} is {where} (got {b.symbol!r})"
                      for i, b in enumerate(m.event_blackouts) if b.symbol not in symbols]
            if probs:
                out.append(PolicyFileError(self.path("mandate.yaml"), probs))
        if "quality" in loaded and self.quality.gate.min_tradable_symbols > len(symbols):
            n = self.quality.gate.min_tradable_symbols
            out.append(PolicyFileError(self.path("quality.yaml"), [
                f"gate.min_tradable_symbols: more than the {len(symbols)} symbols of the universe: "
                f"nothing could ever trade (got {n})"]))
        return out

    def pre_trade_policy(self):  # -> core.policy.PolicySet (imported lazily: config stays light)
        """pre_trade.yaml + vetoes.yaml as one validated rule set."""
        from ais_pipelines.core.policy import PolicyError, shipped_policy

        try:  # issue 13: each rule file as the version in force on this view's as-of session
            return shipped_policy(self.directory, resolve=lambda f: self.version(f).path)
        except PolicyError as exc:
            raise _from_policy_error(exc, self.directory) from exc


def _from_policy_error(exc: Exception, default_path: Path) -> PolicyFileError:
    """A ``core.policy.PolicyError`` ("<file>: <problem>") as a PolicyFileError of that file."""
    path = str(getattr(exc, "path", None) or default_path)
    return PolicyFileError(path, [one_line(str(exc).removeprefix(f"{path}: "))])


def require_execution_policies(policies: Policies, env: str) -> None:
    """Load and validate everything an execution run depends on, before the first quote.

    Universe, providers, mandate, risk, operators, the cross-file rules, pre_trade.yaml +
    vetoes.yaml and ``environments/{env}.yaml`` applied on them. Any problem (missing,
    unreadable, malformed or invalid file, unknown environment) raises :class:`PolicyFileError`
    (reason POLICY_UNREADABLE) naming the file, the key and the value: nothing may be sent.
    """
    from ais_pipelines.execution import ENVIRONMENTS

    if env not in ENVIRONMENTS:
        raise PolicyFileError(policies.directory / "environments",
                              [f"environment: must be one of {', '.join(ENVIRONMENTS)} (got {env!r})"])
    errors = policies.check(files=Policies.EXECUTION_FILES, environments=(env,))
    if errors:
        raise errors[0]


# --- capital auction (§F, issue 11) ----------------------------------------------------------
class AuctionPolicy(_Strict):
    """``policies/auction.yaml``: settings of the holdings-aware auction LP (docs/risk.md)."""

    turnover_limit: float | None = Field(default=0.25, ge=0, le=2)
    turnover_penalty_bps: float = Field(default=0.0, ge=0, le=1000)
    impact_segments: int = Field(default=6, ge=1, le=20)
    max_sector_weight: float = Field(default=0.30, gt=0, le=1)
    sector_caps: dict[str, float] = {}
    asset_class_caps: dict[AssetClass, float] = {}
    max_component_iterations: int = Field(default=10, ge=0, le=100)
    polish_rounds: int = Field(default=2, ge=0, le=20)
    warm_start: bool = True

    @field_validator("sector_caps", "asset_class_caps")
    @classmethod
    def _caps_in_unit_interval(cls, v: dict[Any, float]) -> dict[Any, float]:
        for k, cap in v.items():
            if not 0 <= cap <= 1:
                raise ValueError(f"cap of {k} must be in [0, 1], got {cap}")
        return v



# --- reasoning memos (issue 16) --------------------------------------------------------------
class ReasoningRules(_Strict):
    """Thresholds of the deterministic rule-based memo (``ais_pipelines/core/reasoning.py``)."""

    event_proximity_hours: float = Field(default=72.0, ge=0)
    min_data_quality_score: float = Field(default=0.8, ge=0, le=1)
    max_disagreement_factor_loss: float = Field(default=0.5, ge=0, le=1)  # 1 − disagreement_factor
    deny_min_flags: int = Field(default=3, ge=1)  # this many flags on a risk-increasing order → DENY


class ReasoningLlm(_Strict):
    """The optional OpenAI-compatible endpoint; URL and key are read from the named variables."""

    url_env: str = "AIS_REASONING_LLM_URL"
    key_env: str = "AIS_REASONING_LLM_KEY"
    model: str = "gpt-4o-mini"
    soft_timeout_s: float = Field(default=8.0, gt=0)
    hard_timeout_s: float = Field(default=15.0, gt=0)
    max_input_tokens: int = Field(default=5000, ge=100, le=5000)
    max_output_tokens: int = Field(default=700, ge=50, le=700)

    @model_validator(mode="after")
    def _soft_before_hard(self) -> ReasoningLlm:
        if self.soft_timeout_s > self.hard_timeout_s:
            raise ValueError(f"soft_timeout_s must not exceed hard_timeout_s (got {self.soft_timeout_s})")
        return self


class ReasoningPolicy(_Strict):
    """``policies/reasoning.yaml``: which memo provider, its thresholds and budgets."""

    provider: Literal["rules", "llm"] = "rules"
    rules: ReasoningRules = ReasoningRules()
    llm: ReasoningLlm = ReasoningLlm()
