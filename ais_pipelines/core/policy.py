"""Declarative pre-trade policy and governance vetoes (§H3, §H4), evaluated over a batch.

Policy is data. A YAML file declares rules; each rule has an ``id``, a ``description``, an
``action`` (REJECT or REVIEW), a ``reason_code`` from :class:`ReasonCode`, optional ``params``
(named thresholds) and a ``when`` condition built only from

* leaves ``{field, op, value}`` / ``{field, op, value_field}`` / ``{field, op, value_param}``
  / ``{field, op: is_true|is_false}``, and
* combinators ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}``.

Example::

    version: 1
    name: pre_trade
    rules:
      - id: stale_quote
        description: quote older than 30 s
        action: REJECT
        reason_code: STALE_QUOTE
        params: {max_quote_age_s: 30}
        when: {field: quote_age_s, op: gt, value_param: max_quote_age_s}
      - id: gross_exposure_over_mandate
        description: gross exposure after the order above the mandate limit
        action: REJECT
        reason_code: GROSS_EXPOSURE_LIMIT
        when:
          all:
            - {field: gross_exposure_after, op: gt, value_field: gross_exposure_limit}
            - {field: reduces_position, op: is_false}

:func:`load_policy` validates everything with pydantic (unknown field, operator or key, wrong
value type, unknown reason code, duplicate rule id, malformed YAML) and raises
:class:`PolicyError` naming the file, the rule id and the offending key and value.

Evaluation (:func:`evaluate_orders`) is vectorised: one numpy mask per rule over the batch.
Missing inputs **fail closed** with three-valued (Kleene) logic: a leaf whose input is missing
(column absent, null, non-numeric, not a bool) is *unknown*; ``all``/``any``/``not`` propagate
unknown the usual way (``all(false, unknown) = false``, ``any(true, unknown) = true``); a rule
is hit unless its condition is definitely false. A hit decided by an unknown is flagged
``undetermined`` in the hits table and adds MISSING_VALUE to the order's reasons. So a missing
``quote_age_s`` rejects with STALE_QUOTE + MISSING_VALUE, while a strategy with no fills yet
(``exec_fill_count = 0``) is not vetoed for "too-perfect execution" even though its slippage
statistics are undefined. Only fields with a declared default (``reasoning`` → ``NONE``,
``reduces_position`` → ``false``) are filled instead of being unknown.

Precedence per order: REJECT > REVIEW > APPROVE. Every hit is kept in the long ``hits`` table.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ais_pipelines.core.approvals import canonical_json
from ais_pipelines.core.reason_codes import ReasonCode

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
SHIPPED_POLICY_FILES = ("pre_trade.yaml", "vetoes.yaml")


# --------------------------------------------------------------------------------------------
# the order-context schema


class FieldKind(StrEnum):
    BOOL = "bool"
    NUMBER = "number"
    CATEGORY = "category"  # upper-cased text from a declared set


@dataclass(frozen=True)
class ContextField:
    name: str
    kind: FieldKind
    group: str  # "pre_trade" or "veto": who is expected to supply it
    description: str
    default: Any = None  # used for an absent column / null cell; None → missing is unknown (fail closed)
    categories: tuple[str, ...] = ()
    # NUMBER only: the values the field can take. A threshold outside them, or one that makes
    # its leaf impossible (``count < 0``), is refused on load: it would silently disable a rule.
    lo: float | None = None
    hi: float | None = None
    integer: bool = False  # a count: thresholds are whole numbers


REASONING_VERDICTS = ("NONE", "ALLOW", "ALLOW_WITH_CAUTION", "DENY", "FAILED")  # FAILED: issue 16

_FIELDS: tuple[ContextField, ...] = (
    # --- pre-trade (§H3); supplied per order at execution time with fresh quotes -----------
    ContextField(
        "market_open",
        FieldKind.BOOL,
        "pre_trade",
        "The symbol's market is in session at `now` (injected market clock).",
    ),
    ContextField(
        "quote_age_s",
        FieldKind.NUMBER,
        "pre_trade",
        "Seconds between the quote used to price the order and `now`. If the column is "
        "absent it is derived from a `quote_ts` column (timezone-aware; naive = UTC).",
    ),
    ContextField(
        "symbol_allowed", FieldKind.BOOL, "pre_trade", "The symbol is in the mandate's allowed universe."
    ),
    ContextField(
        "daily_drawdown",
        FieldKind.NUMBER,
        "pre_trade",
        "Today's NAV drawdown as a positive fraction of start-of-day NAV (0.03 = 3 %).",
        lo=0.0, hi=1.0,
    ),
    ContextField(
        "event_blackout",
        FieldKind.BOOL,
        "pre_trade",
        "The symbol is inside an event blackout window (earnings, macro release, compliance).",
    ),
    ContextField(
        "liquidity_score",
        FieldKind.NUMBER,
        "pre_trade",
        "Liquidity score in [0, 1] (1 = deep, tight market; from ADV participation and spread).",
        lo=0.0, hi=1.0,
    ),
    ContextField(
        "gross_exposure_after",
        FieldKind.NUMBER,
        "pre_trade",
        "Gross exposure (sum of |position value| / NAV) if this order fills completely.",
        lo=0.0,
    ),
    ContextField(
        "gross_exposure_limit",
        FieldKind.NUMBER,
        "pre_trade",
        "The mandate's gross exposure limit, same units as gross_exposure_after.",
        lo=0.0,
    ),
    ContextField(
        "risk_per_trade_nav",
        FieldKind.NUMBER,
        "pre_trade",
        "Risk this order adds as a fraction of NAV (loss at the CVaR/stop horizon / NAV).",
        lo=0.0, hi=1.0,
    ),
    ContextField(
        "confidence", FieldKind.NUMBER, "pre_trade", "Decay-adjusted forecast confidence in [0, 1] (§D3).",
        lo=0.0, hi=1.0,
    ),
    ContextField(
        "reasoning",
        FieldKind.CATEGORY,
        "pre_trade",
        "Verdict of the optional reasoning memo: NONE (no memo), ALLOW, ALLOW_WITH_CAUTION, "
        "DENY, FAILED (no valid memo). Absent or null means NONE, which never blocks. Text is stripped "
        "and upper-cased.",
        default="NONE",
        categories=REASONING_VERDICTS,
    ),
    ContextField(
        "correlation_to_book",
        FieldKind.NUMBER,
        "pre_trade",
        "Correlation of the symbol's returns with the current book's returns (signed).",
        lo=-1.0, hi=1.0,
    ),
    ContextField(
        "reduces_position",
        FieldKind.BOOL,
        "pre_trade",
        "The order only shrinks an existing position (never opens or flips one). Risk-budget "
        "rules exempt such orders so de-risking stays possible. Absent means false.",
        default=False,
    ),
    # --- governance vetoes (§H4); strategy-level statistics broadcast to each order ---------
    ContextField(
        "pnl_obs_days",
        FieldKind.NUMBER,
        "veto",
        "Number of daily realized P&L observations behind pnl_z_vs_model (0 for a new strategy).",
        lo=0.0, integer=True,
    ),
    ContextField(
        "pnl_z_vs_model",
        FieldKind.NUMBER,
        "veto",
        "(realized P&L - model-expected P&L) / model P&L standard deviation, both summed over "
        "the evaluation window; large positive = profit the model does not explain.",
    ),
    ContextField(
        "exec_fill_count",
        FieldKind.NUMBER,
        "veto",
        "Number of the strategy's recent fills behind the exec_* statistics (0 if none).",
        lo=0.0, integer=True,
    ),
    ContextField(
        "exec_fill_rate",
        FieldKind.NUMBER,
        "veto",
        "Filled quantity / ordered quantity over those fills, in [0, 1].",
        lo=0.0, hi=1.0,
    ),
    ContextField(
        "exec_slippage_bps",
        FieldKind.NUMBER,
        "veto",
        "Mean realized slippage in bps vs the arrival quote (positive = cost) over those fills.",
    ),
    ContextField(
        "exec_slippage_err_bps",
        FieldKind.NUMBER,
        "veto",
        "Mean |realized slippage - impact-model prediction| in bps over those fills.",
        lo=0.0,
    ),
    ContextField(
        "data_provider_count",
        FieldKind.NUMBER,
        "veto",
        "Independent providers corroborating the symbol's data (history and quotes); 1 = single "
        "point of failure.",
        lo=0.0, integer=True,
    ),
    ContextField(
        "data_quality_score",
        FieldKind.NUMBER,
        "veto",
        "DATA_QUALITY_SCORE of the symbol's history in [0, 1] (§B4).",
        lo=0.0, hi=1.0,
    ),
    ContextField(
        "win_count",
        FieldKind.NUMBER,
        "veto",
        "Number of the strategy's recent closed winning trades behind correlated_win_share.",
        lo=0.0, integer=True,
    ),
    ContextField(
        "correlated_win_share",
        FieldKind.NUMBER,
        "veto",
        "Share of those winning trades whose daily P&L has |correlation| >= 0.7 with the book's "
        "dominant common factor (first principal component): the wins are one bet repeated.",
        lo=0.0, hi=1.0,
    ),
)
CONTEXT_FIELDS: Mapping[str, ContextField] = MappingProxyType({f.name: f for f in _FIELDS})
REQUIRED_ORDER_COLUMNS = ("order_id", "qty")


# --------------------------------------------------------------------------------------------
# rule models


class Action(StrEnum):
    REJECT = "REJECT"
    REVIEW = "REVIEW"


class Decision(StrEnum):
    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    REJECT = "REJECT"


class Op(StrEnum):
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    IS_TRUE = "is_true"
    IS_FALSE = "is_false"


_ORDER_OPS = {Op.LT, Op.LE, Op.GT, Op.GE}
_EQ_OPS = {Op.EQ, Op.NE}
_SET_OPS = {Op.IN, Op.NOT_IN}
_UNARY_OPS = {Op.IS_TRUE, Op.IS_FALSE}
_OPS_BY_KIND = {
    FieldKind.NUMBER: _ORDER_OPS | _EQ_OPS | _SET_OPS,
    FieldKind.BOOL: _EQ_OPS | _UNARY_OPS,
    FieldKind.CATEGORY: _EQ_OPS | _SET_OPS,
}


class PolicyError(Exception):
    """A policy file cannot be used. Reason POLICY_UNREADABLE: nothing is evaluated without policy."""

    reason = ReasonCode.POLICY_UNREADABLE

    def __init__(self, message: str, *, path: str | None = None, rule_id: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.rule_id = rule_id


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Leaf(_Strict):
    field: str
    op: str
    value: Any = None
    value_field: str | None = None
    value_param: str | None = None

    @field_validator("field", "value_field")
    @classmethod
    def _known_field(cls, v: str | None) -> str | None:
        if v is not None and v not in CONTEXT_FIELDS:
            raise ValueError(
                f"unknown field {v!r} (the order-context schema has: {', '.join(CONTEXT_FIELDS)})"
            )
        return v

    @field_validator("op")
    @classmethod
    def _known_op(cls, v: str) -> str:
        if v not in {o.value for o in Op}:
            raise ValueError(f"unknown operator {v!r} (known: {', '.join(o.value for o in Op)})")
        return v

    @model_validator(mode="after")
    def _shape(self) -> Leaf:
        spec = CONTEXT_FIELDS[self.field]
        op = Op(self.op)
        if op not in _OPS_BY_KIND[spec.kind]:
            raise ValueError(f"op {op.value!r} does not apply to {spec.kind.value} field {self.field!r}")
        given = [k for k in ("value", "value_field", "value_param") if k in self.model_fields_set]
        if op in _UNARY_OPS:
            if given:
                raise ValueError(f"{given[0]}: op {op.value!r} takes no value")
            return self
        if len(given) != 1:
            raise ValueError(
                f"op {op.value!r} needs exactly one of value, value_field, value_param (got {given})"
            )
        if self.value_field is not None:
            other = CONTEXT_FIELDS[self.value_field]
            if op in _SET_OPS:
                raise ValueError(f"value_field: op {op.value!r} compares against a list, not a field")
            if other.kind != spec.kind or other.name == spec.name:
                raise ValueError(
                    f"value_field: {self.value_field!r} ({other.kind.value}) cannot be compared with "
                    f"{self.field!r} ({spec.kind.value})"
                )
        if "value" in self.model_fields_set:
            _check_value(self, self.value, "value")
        return self


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(leaf: Leaf, value: Any, key: str) -> None:
    """Raise ValueError naming ``key`` when ``value`` does not fit the leaf's field and op."""
    spec = CONTEXT_FIELDS[leaf.field]
    op = Op(leaf.op)
    if op in _SET_OPS:
        if not isinstance(value, list) or not value:
            raise ValueError(f"{key}: op {op.value!r} needs a non-empty list, got {value!r}")
        items = value
    else:
        items = [value]
    for item in items:
        if spec.kind is FieldKind.NUMBER and not _is_number(item):
            raise ValueError(f"{key}: field {leaf.field!r} is a number; got {item!r} ({type(item).__name__})")
        if spec.kind is FieldKind.NUMBER:
            _check_domain(spec, op if op not in _SET_OPS else None, item, key)
        if spec.kind is FieldKind.BOOL and not isinstance(item, bool):
            raise ValueError(f"{key}: field {leaf.field!r} is a bool; got {item!r} ({type(item).__name__})")
        if spec.kind is FieldKind.CATEGORY and (not isinstance(item, str) or item not in spec.categories):
            raise ValueError(
                f"{key}: field {leaf.field!r} takes one of {list(spec.categories)}; got {item!r}"
            )


def _check_domain(spec: ContextField, op: Op | None, item: float, key: str) -> None:
    """A threshold must lie in its field's range and leave the leaf able to be true."""
    name = spec.name
    if spec.integer and not float(item).is_integer():
        raise ValueError(f"{key}: field {name!r} is a whole count; a fractional threshold means nothing (got {item!r})")
    if (spec.lo is not None and item < spec.lo) or (spec.hi is not None and item > spec.hi):
        rng = f"lies in [{spec.lo:g}, {spec.hi:g}]" if spec.hi is not None else f"is never below {spec.lo:g}"
        raise ValueError(f"{key}: field {name!r} {rng}; the threshold is outside it (got {item!r})")
    if op is Op.LT and spec.lo is not None and item <= spec.lo:
        raise ValueError(
            f"{key}: '{name} < {item!r}' can never be true ({name} >= {spec.lo:g}): the rule would never fire "
            f"(got {item!r})"
        )
    if op is Op.GT and spec.hi is not None and item >= spec.hi:
        raise ValueError(
            f"{key}: '{name} > {item!r}' can never be true ({name} <= {spec.hi:g}): the rule would never fire "
            f"(got {item!r})"
        )


class AllOf(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Strict):
    any: list[Condition] = Field(min_length=1)


class NotOf(_Strict):
    not_: Condition = Field(alias="not")


def _condition_tag(v: Any) -> str | None:
    if isinstance(v, dict):
        present = [k for k in ("field", "all", "any", "not") if k in v]
        return f"<{present[0]}>" if len(present) == 1 else None
    for cls, tag in ((Leaf, "<field>"), (AllOf, "<all>"), (AnyOf, "<any>"), (NotOf, "<not>")):
        if isinstance(v, cls):
            return tag
    return None


Condition = Annotated[
    Union[  # noqa: UP007 - Annotated members need the typing form
        Annotated[Leaf, Tag("<field>")],
        Annotated[AllOf, Tag("<all>")],
        Annotated[AnyOf, Tag("<any>")],
        Annotated[NotOf, Tag("<not>")],
    ],
    Discriminator(
        _condition_tag,
        custom_error_type="condition",
        custom_error_message="a condition is a mapping with exactly one of 'field', 'all', 'any', 'not'",
    ),
]
for _m in (AllOf, AnyOf, NotOf):
    _m.model_rebuild()


def iter_leaves(cond: Any, where: str = "when") -> Iterable[tuple[Leaf, str]]:
    """Every leaf of a condition with its location (``when.all[1].any[0]``)."""
    if isinstance(cond, Leaf):
        yield cond, where
    elif isinstance(cond, AllOf):
        for i, c in enumerate(cond.all):
            yield from iter_leaves(c, f"{where}.all[{i}]")
    elif isinstance(cond, AnyOf):
        for i, c in enumerate(cond.any):
            yield from iter_leaves(c, f"{where}.any[{i}]")
    elif isinstance(cond, NotOf):
        yield from iter_leaves(cond.not_, f"{where}.not")


ParamValue = Union[bool, int, float, str, list[Union[bool, int, float, str]]]  # noqa: UP007


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = Field(min_length=1)
    action: Action
    reason_code: ReasonCode
    params: dict[str, ParamValue] = Field(default_factory=dict)
    when: Condition

    @field_validator("reason_code", mode="before")
    @classmethod
    def _known_code(cls, v: Any) -> Any:
        if not isinstance(v, str) or v not in ReasonCode.__members__:
            raise ValueError(f"unknown reason code {v!r} (see ais_pipelines/core/reason_codes.py)")
        return v

    @model_validator(mode="after")
    def _params(self) -> Rule:
        used: set[str] = set()
        for leaf, where in iter_leaves(self.when):
            if leaf.value_param is None:
                continue
            if leaf.value_param not in self.params:
                raise ValueError(f"{where}.value_param: {leaf.value_param!r} is not declared in params")
            used.add(leaf.value_param)
            _check_value(leaf, self.params[leaf.value_param], f"params.{leaf.value_param}")
        unused = sorted(set(self.params) - used)
        if unused:
            raise ValueError(f"params: {unused} declared but never used in when")
        return self

    def fields(self) -> tuple[str, ...]:
        """Context fields the rule reads, in order of first use."""
        out: dict[str, None] = {}
        for leaf, _ in iter_leaves(self.when):
            out[leaf.field] = None
            if leaf.value_field:
                out[leaf.value_field] = None
        return tuple(out)

    def resolved_value(self, leaf: Leaf) -> Any:
        return self.params[leaf.value_param] if leaf.value_param is not None else leaf.value


class _PolicyFile(_Strict):
    version: int
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    effective_from: date | None = None  # the first as-of session it governs (policy_versions.py)
    rules: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _v1(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"unsupported policy version {v!r} (this engine reads version 1)")
        return v


@dataclass(frozen=True)
class PolicySet:
    """Validated rules from one or more files, in file order."""

    rules: tuple[Rule, ...]
    policy_names: tuple[str, ...]  # per rule: the `name` of its file
    sources: tuple[str, ...]  # per rule: the file path
    digest: str = dc_field(init=False)

    def __post_init__(self) -> None:
        if not self.rules:  # an empty policy would approve everything
            raise PolicyError("a policy set needs at least one rule")
        if not len(self.rules) == len(self.policy_names) == len(self.sources):
            raise PolicyError("rules, policy_names and sources must have the same length")
        ids = [r.id for r in self.rules]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            where = {i: [s for r, s in zip(self.rules, self.sources, strict=True) if r.id == i] for i in dup}
            raise PolicyError(f"duplicate rule id(s) across policy files: {where}", rule_id=dup[0])
        body = [
            {"policy": p, **r.model_dump(mode="json", by_alias=True)}
            for r, p in zip(self.rules, self.policy_names, strict=True)
        ]
        # The digest identifies the policy version in decisions and the audit log.
        object.__setattr__(self, "digest", hashlib.sha256(canonical_json(body)).hexdigest())

    def __add__(self, other: PolicySet) -> PolicySet:
        return PolicySet(
            self.rules + other.rules, self.policy_names + other.policy_names, self.sources + other.sources
        )

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    @property
    def fields(self) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for r in self.rules:
            out.update(dict.fromkeys(r.fields()))
        return tuple(out)


# --------------------------------------------------------------------------------------------
# loading


def _format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith("<"):
            continue  # union tags are noise for the reader
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        inp = err.get("input")
        got = "" if err["type"] == "missing" or isinstance(inp, (dict, list)) else f" (got {inp!r})"
        loc = _format_loc(err["loc"])
        parts.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return "; ".join(parts)


def load_policy(path: str | Path) -> PolicySet:
    """Read and validate one policy file; any problem → :class:`PolicyError` naming file/rule/key."""
    p = Path(path)
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{src}: cannot read policy file: {exc.strerror or exc}", path=src) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{src}: malformed YAML: {exc}", path=src) from exc
    if not isinstance(raw, dict):
        raise PolicyError(f"{src}: top level must be a mapping with version, name, rules", path=src)
    try:
        pf = _PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{src}: {_format_errors(exc)}", path=src) from exc

    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(pf.rules):
        rid = item.get("id") if isinstance(item.get("id"), str) else f"#{i + 1}"
        if rid in seen:
            raise PolicyError(f"{src}: rule {rid!r}: id: duplicate rule id {rid!r}", path=src, rule_id=rid)
        seen.add(rid)
        try:
            rules.append(Rule.model_validate(item))
        except ValidationError as exc:
            raise PolicyError(f"{src}: rule {rid!r}: {_format_errors(exc)}", path=src, rule_id=rid) from exc
    return PolicySet(tuple(rules), (pf.name,) * len(rules), (src,) * len(rules))


def load_policies(paths: Iterable[str | Path]) -> PolicySet:
    """Load several files into one set (rule ids must be unique across them)."""
    sets = [load_policy(p) for p in paths]
    if not sets:
        raise PolicyError("no policy files given")
    out = sets[0]
    for s in sets[1:]:
        out = out + s
    return out


def shipped_policy(policy_dir: str | Path | None = None,
                   resolve: Callable[[Path], Path] | None = None) -> PolicySet:
    """``policies/pre_trade.yaml`` + ``policies/vetoes.yaml``: the set the execution gate uses.
    ``resolve`` maps each file to the version of it in force (point in time; the caller's)."""
    d = Path(policy_dir) if policy_dir is not None else POLICY_DIR
    files = [d / f for f in SHIPPED_POLICY_FILES]
    return load_policies([resolve(f) for f in files] if resolve else files)


# --------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True)
class _Column:
    kind: FieldKind
    known: np.ndarray  # bool
    num: np.ndarray | None = None  # NUMBER: float64 (NaN where unknown)
    t: np.ndarray | None = None  # BOOL: definitely true
    f: np.ndarray | None = None  # BOOL: definitely false
    cat: np.ndarray | None = None  # CATEGORY: object array of upper-cased str


def _build_column(orders: pd.DataFrame, spec: ContextField, now: datetime, n: int) -> _Column:
    series: pd.Series | None = orders[spec.name] if spec.name in orders.columns else None
    if series is None and spec.name == "quote_age_s" and "quote_ts" in orders.columns:
        ts = pd.to_datetime(orders["quote_ts"], utc=True, errors="coerce")
        series = (pd.Timestamp(now) - ts).dt.total_seconds()
    if spec.kind is FieldKind.NUMBER:
        if series is None:
            num = np.full(n, np.nan)
        elif pd.api.types.is_bool_dtype(series.dtype):
            num = np.full(n, np.nan)  # a flag is not a measurement
        elif pd.api.types.is_numeric_dtype(series.dtype):
            num = series.to_numpy(dtype="float64", na_value=np.nan)
        elif pd.api.types.is_timedelta64_dtype(series.dtype):
            num = series.dt.total_seconds().to_numpy(dtype="float64", na_value=np.nan)
        else:  # objects/text (slow path, rare): anything that is not a real number becomes unknown
            is_flag = series.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
            num = pd.to_numeric(series.mask(is_flag), errors="coerce").to_numpy(
                dtype="float64", na_value=np.nan
            )
        return _Column(spec.kind, ~np.isnan(num), num=num)
    if spec.kind is FieldKind.BOOL:
        if series is None:
            t = np.zeros(n, dtype=bool)
            f = np.zeros(n, dtype=bool)
        elif series.dtype == bool:
            t = series.to_numpy(dtype=bool)
            f = ~t
        else:  # nullable/object: only real booleans (or 0/1) count; anything else is unknown
            t = series.isin([True]).to_numpy(dtype=bool)
            f = series.isin([False]).to_numpy(dtype=bool)
        if spec.default is not None:
            unknown = ~(t | f)
            t = t | (unknown & bool(spec.default))
            f = f | (unknown & (not spec.default))
        return _Column(spec.kind, t | f, t=t, f=f)
    # CATEGORY
    if series is None:
        cat = np.full(n, spec.default, dtype=object)
        known = np.full(n, spec.default is not None)
    else:
        cat = series.astype("string").str.strip().str.upper().to_numpy(dtype=object, na_value=None)
        cat[cat == ""] = None  # blank text says nothing
        known = pd.notna(cat)
        if spec.default is not None:
            cat[~known] = spec.default
            known = np.ones(n, dtype=bool)
    return _Column(spec.kind, known, cat=cat)


_CMP = {
    Op.LT: np.less,
    Op.LE: np.less_equal,
    Op.GT: np.greater,
    Op.GE: np.greater_equal,
    Op.EQ: np.equal,
    Op.NE: np.not_equal,
}


def _eval_leaf(leaf: Leaf, rule: Rule, ctx: Mapping[str, _Column]) -> tuple[np.ndarray, np.ndarray]:
    col = ctx[leaf.field]
    op = Op(leaf.op)
    if op is Op.IS_TRUE:
        return col.t, col.f  # type: ignore[return-value]
    if op is Op.IS_FALSE:
        return col.f, col.t  # type: ignore[return-value]
    known = col.known
    if leaf.value_field is not None:
        other = ctx[leaf.value_field]
        known = known & other.known
        if col.kind is FieldKind.BOOL:
            same = (col.t & other.t) | (col.f & other.f)  # type: ignore[operator]
            cmp = same if op is Op.EQ else ~same
        elif col.kind is FieldKind.NUMBER:
            with np.errstate(invalid="ignore"):
                cmp = _CMP[op](col.num, other.num)
        else:
            cmp = _CMP[op](col.cat, other.cat).astype(bool)
    else:
        value = rule.resolved_value(leaf)
        if col.kind is FieldKind.BOOL:
            is_true = (op is Op.EQ) == bool(value)
            return (col.t, col.f) if is_true else (col.f, col.t)  # type: ignore[return-value]
        data = col.num if col.kind is FieldKind.NUMBER else col.cat
        if op in _SET_OPS:
            cmp = pd.Series(data).isin(value).to_numpy(dtype=bool)
            if op is Op.NOT_IN:
                cmp = ~cmp
        else:
            with np.errstate(invalid="ignore"):
                cmp = np.asarray(_CMP[op](data, value), dtype=bool)
    return known & cmp, known & ~cmp


def _eval(cond: Any, rule: Rule, ctx: Mapping[str, _Column]) -> tuple[np.ndarray, np.ndarray]:
    """(definitely true, definitely false) masks; neither means unknown."""
    if isinstance(cond, Leaf):
        return _eval_leaf(cond, rule, ctx)
    if isinstance(cond, NotOf):
        t, f = _eval(cond.not_, rule, ctx)
        return f, t
    parts = [_eval(c, rule, ctx) for c in (cond.all if isinstance(cond, AllOf) else cond.any)]
    ts = np.vstack([p[0] for p in parts])
    fs = np.vstack([p[1] for p in parts])
    if isinstance(cond, AllOf):
        return ts.all(axis=0), fs.any(axis=0)
    return ts.any(axis=0), fs.all(axis=0)


def _render(col: _Column, idx: np.ndarray) -> pa.Array:
    """JSON text of the observed values at ``idx`` (null/missing → ``null``)."""
    if col.kind is FieldKind.NUMBER:
        v = pa.array(col.num[idx], from_pandas=True)  # type: ignore[index]  # NaN → null
        txt = pc.cast(v, pa.string())
        inf = pc.if_else(pc.greater(v, 0), pa.scalar("Infinity"), pa.scalar("-Infinity"))
        return pc.fill_null(pc.if_else(pc.is_inf(v), inf, txt), "null")
    if col.kind is FieldKind.BOOL:
        code = np.where(col.t[idx], 1, np.where(col.f[idx], 0, 2))  # type: ignore[index]
        return pa.array(["false", "true", "null"]).take(pa.array(code))
    codes, uniques = pd.factorize(pd.Series(col.cat[idx], dtype=object))  # type: ignore[index]
    texts = [json.dumps(u) for u in uniques] + ["null"]
    return pa.array(texts).take(pa.array(np.where(codes < 0, len(texts) - 1, codes)))


_STR_DTYPE = pd.api.types.pandas_dtype("str")


def _str_series(arr: pa.Array) -> pd.Series:
    return pd.Series(pd.array(arr, dtype=_STR_DTYPE))


@dataclass(frozen=True)
class PolicyEvaluation:
    """Outcome of one batch.

    ``decisions``: one row per order, in input order — order_id, decision (APPROVE/REVIEW/REJECT),
    reason_codes (sorted, ``;``-joined), reasons (tuple of the same codes), requested_qty,
    approved_qty (= qty for APPROVE, else 0), expires_at (now + ttl for APPROVE, else NaT; UTC),
    n_hits, undetermined (a hit was decided by a missing input).

    ``hits``: one row per (order, rule) hit, ordered by order then rule — order_id, rule_id,
    policy, action, reason_code, undetermined, observed (JSON object of the rule's inputs as
    seen, e.g. ``{"quote_age_s":31.0}``; null = missing).
    """

    decisions: pd.DataFrame
    hits: pd.DataFrame
    policy_digest: str
    evaluated_at: datetime
    approval_ttl_s: int

    def decision_for(self, order_id: Any) -> dict[str, Any]:
        row = self.decisions.loc[self.decisions["order_id"] == order_id]
        if len(row) != 1:
            raise KeyError(order_id)
        return row.iloc[0].to_dict()

    def hits_for(self, order_id: Any) -> pd.DataFrame:
        return self.hits.loc[self.hits["order_id"] == order_id].reset_index(drop=True)


_DECISION_COLUMNS = (
    "order_id",
    "decision",
    "reason_codes",
    "reasons",
    "requested_qty",
    "approved_qty",
    "expires_at",
    "n_hits",
    "undetermined",
)
_HIT_COLUMNS = ("order_id", "rule_id", "policy", "action", "reason_code", "undetermined", "observed")


def evaluate_orders(
    orders: pd.DataFrame, policy: PolicySet, now: datetime, approval_ttl_s: int
) -> PolicyEvaluation:
    """Evaluate every rule over the batch at once (see the module docstring for the semantics).

    ``orders`` needs ``order_id`` (unique) and ``qty`` (finite numbers) plus the context columns
    the rules read (:data:`CONTEXT_FIELDS`); other columns are ignored. ``now`` must be
    timezone-aware; it stamps ``expires_at`` and derives ``quote_age_s`` from ``quote_ts``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if isinstance(approval_ttl_s, bool) or not isinstance(approval_ttl_s, int) or approval_ttl_s <= 0:
        raise ValueError(f"approval_ttl_s must be a positive int, got {approval_ttl_s!r}")
    missing = [c for c in REQUIRED_ORDER_COLUMNS if c not in orders.columns]
    if missing:
        raise ValueError(f"orders lack required column(s) {missing}")
    n = len(orders)
    order_ids = orders["order_id"].to_numpy(dtype=object)
    if orders["order_id"].isna().any() or orders["order_id"].duplicated().any():
        raise ValueError("order_id must be present and unique within a batch")
    qty_num = pd.to_numeric(orders["qty"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    if not np.isfinite(qty_num).all():
        bad = order_ids[~np.isfinite(qty_num)][:5].tolist()
        raise ValueError(f"qty must be a finite number; bad orders include {bad}")

    qty = orders["qty"].to_numpy(dtype="int64") if pd.api.types.is_integer_dtype(orders["qty"]) else qty_num

    rules = policy.rules
    n_rules = len(rules)
    ctx = {name: _build_column(orders, CONTEXT_FIELDS[name], now, n) for name in policy.fields}

    hit = np.zeros((n, n_rules), dtype=bool)
    undet = np.zeros((n, n_rules), dtype=bool)
    for j, rule in enumerate(rules):
        t, f = _eval(rule.when, rule, ctx)
        hit[:, j] = ~f  # fail closed: unknown counts as hit
        undet[:, j] = ~f & ~t

    is_reject = np.array([r.action is Action.REJECT for r in rules], dtype=bool)
    any_reject = hit[:, is_reject].any(axis=1)
    any_review = hit[:, ~is_reject].any(axis=1)
    any_undet = undet.any(axis=1)
    approve = ~(any_reject | any_review)
    decision_code = np.where(any_reject, 2, np.where(any_review, 1, 0))

    # Reason codes per order through the (few) distinct code sets: no per-order Python loop.
    code_names = sorted({str(r.reason_code) for r in rules} | {str(ReasonCode.MISSING_VALUE)})
    rule_to_code = np.zeros((n_rules, len(code_names)), dtype=bool)
    for j, rule in enumerate(rules):
        rule_to_code[j, code_names.index(str(rule.reason_code))] = True
    code_hit = hit @ rule_to_code  # boolean matmul: OR over the rules that carry each code
    code_hit[:, code_names.index(str(ReasonCode.MISSING_VALUE))] |= any_undet
    if len(code_names) <= 62:  # one int64 key per order
        keys = code_hit.astype(np.int64) @ (np.int64(1) << np.arange(len(code_names), dtype=np.int64))
        patterns, inverse = np.unique(keys, return_inverse=True)
        pattern_sets = [[c for k, c in enumerate(code_names) if (u >> k) & 1] for u in patterns.tolist()]
    else:
        patterns, inverse = np.unique(np.packbits(code_hit, axis=1), axis=0, return_inverse=True)
        bits = np.unpackbits(patterns, axis=1, count=len(code_names)).astype(bool)
        pattern_sets = [[code_names[k] for k in np.flatnonzero(b)] for b in bits]
    inverse = inverse.reshape(-1)
    pat_tuples = [tuple(codes) or (str(ReasonCode.APPROVED),) for codes in pattern_sets]
    pat_obj = np.empty(len(pat_tuples), dtype=object)
    pat_obj[:] = pat_tuples

    expires = np.full(n, np.datetime64("NaT", "ns"))
    expiry = pd.Timestamp(now).tz_convert("UTC").tz_localize(None) + timedelta(seconds=approval_ttl_s)
    expires[approve] = np.datetime64(expiry.as_unit("ns").to_datetime64(), "ns")
    take_inv = pa.array(inverse, type=pa.int64())

    decisions = pd.DataFrame(
        {
            "order_id": pd.Series(orders["order_id"].array),
            "decision": _str_series(pa.array([d.value for d in Decision]).take(pa.array(decision_code))),
            "reason_codes": _str_series(pa.array([";".join(t) for t in pat_tuples]).take(take_inv)),
            "reasons": pat_obj[inverse] if n else np.empty(0, dtype=object),
            "requested_qty": qty,
            "approved_qty": np.where(approve, qty, 0),
            "expires_at": pd.DatetimeIndex(expires).tz_localize("UTC"),
            "n_hits": hit.sum(axis=1).astype("int64"),
            "undetermined": any_undet,
        },
        columns=list(_DECISION_COLUMNS),
    )

    # Long hits table: per rule, render only the hit rows; then one sort by (order, rule).
    pos_parts: list[np.ndarray] = []
    rule_parts: list[np.ndarray] = []
    observed_parts: list[pa.Array] = []
    for j, rule in enumerate(rules):
        idx = np.flatnonzero(hit[:, j])
        if not idx.size:
            continue
        parts: list[Any] = []
        for k, name in enumerate(rule.fields()):
            parts += [("{" if k == 0 else ",") + json.dumps(name) + ":", _render(ctx[name], idx)]
        observed_parts.append(pc.binary_join_element_wise(*parts, "}", ""))
        pos_parts.append(idx)
        rule_parts.append(np.full(idx.size, j, dtype=np.int64))
    if pos_parts:
        pos = np.concatenate(pos_parts)
        rj = np.concatenate(rule_parts)
        order = np.lexsort((rj, pos))
        pos, rj = pos[order], rj[order]
        take_rule = pa.array(rj)

        def per_rule(values: list[str]) -> pd.Series:
            return _str_series(pa.array(values).take(take_rule))

        hits = pd.DataFrame(
            {
                "order_id": pd.Series(orders["order_id"].array.take(pos)),
                "rule_id": per_rule([r.id for r in rules]),
                "policy": per_rule(list(policy.policy_names)),
                "action": per_rule([r.action.value for r in rules]),
                "reason_code": per_rule([str(r.reason_code) for r in rules]),
                "undetermined": undet[pos, rj],
                "observed": _str_series(pa.concat_arrays(observed_parts).take(pa.array(order))),
            }
        )
    else:
        hits = pd.DataFrame(
            {
                "order_id": pd.Series(orders["order_id"].array[:0]),
                **{k: pd.Series([], dtype="str") for k in ("rule_id", "policy", "action", "reason_code")},
                "undetermined": pd.Series([], dtype=bool),
                "observed": pd.Series([], dtype="str"),
            }
        )

    return PolicyEvaluation(decisions, hits, policy.digest, now, approval_ttl_s)
