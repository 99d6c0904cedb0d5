"""Reasoning memos: the boundary of the reasoning service (issue 16, §H3 ``reasoning``).

One memo per order proposal: thesis, counter-thesis, risk flags and a recommendation
ALLOW | ALLOW_WITH_CAUTION | DENY, with status OK | FAILED and provenance (provider, model
version, prompt digest, input digest, latency). The memo is an *input* of the pre-trade
policy and nothing else:

* ``reasoning_caution`` sends ALLOW_WITH_CAUTION and DENY to REVIEW; ``reasoning_failed``
  decides a FAILED memo (declared, default REVIEW). A memo can only add caution: it never
  approves, never rejects on its own, never sizes, never signs and never reaches the broker.
* The default provider is :func:`rule_based_memo`: deterministic, built from what the
  pipeline already knows (event-blackout proximity, regime, data quality, forecast
  disagreement), so the demo and tests need no network. An LLM behind an OpenAI-compatible
  endpoint is optional (``ais_pipelines/reasoning_llm.py``); it answers with the JSON of
  :class:`MemoAnswer`, validated here.

Pure: no I/O, no Dagster, no clock (``now`` is passed in).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ais_pipelines.core.reason_codes import ReasonCode

if TYPE_CHECKING:
    from ais_pipelines.config import ReasoningRules

Recommendation = Literal["ALLOW", "ALLOW_WITH_CAUTION", "DENY"]
MEMO_COLUMNS = [
    "as_of", "memo_id", "signal_id", "symbol", "side", "recommendation", "status", "verdict", "thesis",
    "counter_thesis", "risk_flags", "reason_codes", "provider", "model_version", "prompt_digest", "input_digest",
    "latency_ms", "attempts", "prompt_path", "detail",
]


class MemoAnswer(BaseModel):
    """What a memo provider must answer (the JSON schema given to an LLM)."""

    model_config = ConfigDict(extra="forbid")
    thesis: str = Field(min_length=1, max_length=2000)
    counter_thesis: str = Field(min_length=1, max_length=2000)
    risk_flags: list[str] = Field(default_factory=list, max_length=20)
    recommendation: Recommendation


class MemoProvenance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    model_version: str
    prompt_digest: str
    input_digest: str
    latency_ms: float = Field(ge=0)
    attempts: int = Field(default=1, ge=0)
    prompt_path: str | None = None


class ReasoningMemo(BaseModel):
    """One memo for one proposal. ``status`` FAILED means no usable answer (recommendation None)."""

    model_config = ConfigDict(extra="forbid")
    memo_id: str
    signal_id: str
    as_of: str
    symbol: str
    side: str
    thesis: str
    counter_thesis: str
    risk_flags: list[str]
    recommendation: Recommendation | None
    status: Literal["OK", "FAILED"]
    reason_codes: list[str] = Field(default_factory=list)
    detail: str = ""
    provenance: MemoProvenance

    @property
    def verdict(self) -> str:
        """The pre-trade ``reasoning`` field: the recommendation, or FAILED."""
        return self.recommendation if self.status == "OK" and self.recommendation else "FAILED"

    def row(self) -> dict[str, Any]:
        p = self.provenance
        return {
            "as_of": self.as_of, "memo_id": self.memo_id, "signal_id": self.signal_id, "symbol": self.symbol,
            "side": self.side, "recommendation": self.recommendation, "status": self.status,
            "verdict": self.verdict, "thesis": self.thesis, "counter_thesis": self.counter_thesis,
            "risk_flags": ";".join(self.risk_flags), "reason_codes": ";".join(self.reason_codes),
            "provider": p.provider, "model_version": p.model_version, "prompt_digest": p.prompt_digest,
            "input_digest": p.input_digest, "latency_ms": p.latency_ms, "attempts": p.attempts,
            "prompt_path": p.prompt_path, "detail": self.detail,
        }


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, NaN as null)."""
    text = json.dumps(_clean(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 10)
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def signal_id_for(as_of: str, symbol: str, side: str, strategy_id: Any = None) -> str:
    strat = strategy_id if isinstance(strategy_id, str) and strategy_id else "book"
    return f"{as_of}:{strat}:{symbol}:{side}"


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def memo_inputs(
    proposals: pd.DataFrame,
    *,
    regime: Mapping[str, Any],
    quality: pd.DataFrame,
    forecasts: pd.DataFrame,
    blackouts: Sequence[Any],
    now: datetime,
) -> list[dict[str, Any]]:
    """Per proposal, the facts a memo may use (and nothing else): JSON-ready dicts.

    ``hours_to_event``: hours from ``now`` (the decision time) to the start of the symbol's next
    declared event blackout (negative while inside one; None without any ahead).
    """
    q = quality.set_index("symbol") if not quality.empty and "symbol" in quality.columns else pd.DataFrame()
    f = forecasts.set_index("symbol") if not forecasts.empty and "symbol" in forecasts.columns else pd.DataFrame()
    out = []
    for _, p in proposals.iterrows():
        sym = str(p["symbol"])
        as_of = str(pd.Timestamp(p["as_of"]).date()) if "as_of" in p and pd.notna(p["as_of"]) else ""
        side = str(p.get("side", "")).upper()
        hours = None
        for b in blackouts:
            if str(b.symbol).upper() != sym.upper():
                continue
            start = b.start if b.start.tzinfo else b.start.replace(tzinfo=now.tzinfo)
            end = b.end if b.end.tzinfo else b.end.replace(tzinfo=now.tzinfo)
            if end <= now:
                continue
            h = (start - now) / timedelta(hours=1)
            hours = h if hours is None else min(hours, h)
        qrow = q.loc[sym] if sym in q.index else None
        frow = f.loc[sym] if sym in f.index else None
        quality_codes = str(qrow.get("reason_codes", "")) if qrow is not None else ""
        out.append({
            "signal_id": signal_id_for(as_of, sym, side, p.get("strategy_id")),
            "as_of": as_of, "symbol": sym, "side": side, "qty": _num(p.get("qty")),
            "notional": _num(p.get("notional")), "reduce_only": bool(p.get("reduce_only", False) or False),
            "proposal_status": str(p.get("status", "PROPOSED")),
            "regime": str(regime.get("regime", "UNKNOWN")), "p_crisis_5d": _num(regime.get("p_crisis_5d")),
            "crisis_threshold": _num(regime.get("threshold")),
            "hours_to_event": hours,
            "data_quality_score": _num(qrow.get("data_quality_score")) if qrow is not None else math.nan,
            "quality_reason_codes": [c for c in quality_codes.split(";") if c],
            "mu_adj": _num(frow.get("mu_adj")) if frow is not None else math.nan,
            "confidence": _num(frow.get("confidence")) if frow is not None else math.nan,
            "n_models": _num(frow.get("n_models")) if frow is not None else math.nan,
            "disagreement_factor": _num(frow.get("disagreement_factor")) if frow is not None else math.nan,
        })
    return out


def rule_based_answer(facts: Mapping[str, Any], params: ReasoningRules) -> tuple[MemoAnswer, list[str]]:
    """Deterministic memo from the facts; returns the answer and the reason codes of its flags.

    Flags: an event blackout starting within ``event_proximity_hours`` (or in progress); CRISIS
    or ``p_crisis_5d`` above the regime's threshold; data-quality score below the caution level
    (the score weighs every §B3 flag already); models losing more than
    ``max_disagreement_factor_loss`` of μ to their disagreement (§D2). No flag → ALLOW; a flag → ALLOW_WITH_CAUTION; ``deny_min_flags`` flags on an
    order that is not reduce-only → DENY. A missing fact is a flag (unknown is not safe).
    """
    flags: list[tuple[str, ReasonCode]] = []
    h = facts.get("hours_to_event")
    if h is not None and h <= params.event_proximity_hours:
        flags.append((f"event blackout {'in progress' if h < 0 else f'in {h:.0f} h'}",
                      ReasonCode.REASONING_EVENT_PROXIMITY))
    p5, thr = _num(facts.get("p_crisis_5d")), _num(facts.get("crisis_threshold"))
    if facts.get("regime") == "CRISIS" or math.isnan(p5) or (not math.isnan(thr) and p5 > thr):
        flags.append((f"regime {facts.get('regime')}, p_crisis_5d {p5:.2f}", ReasonCode.REASONING_REGIME_STRESS))
    dq = _num(facts.get("data_quality_score"))
    if math.isnan(dq) or dq < params.min_data_quality_score:
        # the score already weighs every flag (§B4); a lone historical spike is not a caution
        codes = ",".join(c for c in facts.get("quality_reason_codes") or [] if c != "DATA_VALID") or "none"
        flags.append((f"data quality {dq:.2f} (flags: {codes})", ReasonCode.REASONING_DATA_QUALITY))
    dis = _num(facts.get("disagreement_factor"))
    if math.isnan(dis) or 1.0 - dis > params.max_disagreement_factor_loss:
        flags.append((f"forecast disagreement keeps {dis:.0%} of mu", ReasonCode.REASONING_FORECAST_DISAGREEMENT))

    side, mu = facts.get("side"), _num(facts.get("mu_adj"))
    direction = "up" if side == "BUY" else "down"
    thesis = (f"{side} {facts.get('symbol')}: the auction moves the book {direction} toward its target; "
              f"forecast mu_adj {mu:+.4f}, confidence {_num(facts.get('confidence')):.2f}, "
              f"regime {facts.get('regime')}.")
    counter = ("; ".join(text for text, _ in flags) if flags
               else "No adverse signal in the data the pipeline holds (events, regime, quality, model agreement).")
    if not flags:
        rec: Recommendation = "ALLOW"
    elif len(flags) >= params.deny_min_flags and not facts.get("reduce_only"):
        rec = "DENY"
    else:
        rec = "ALLOW_WITH_CAUTION"
    answer = MemoAnswer(thesis=thesis, counter_thesis=counter, risk_flags=[str(c) for _, c in flags],
                        recommendation=rec)
    return answer, [str(c) for _, c in flags]


RULE_MODEL_VERSION = "rules-v1"


def rule_based_memo(facts: Mapping[str, Any], params: ReasoningRules) -> ReasoningMemo:
    answer, codes = rule_based_answer(facts, params)
    return memo_from_answer(
        facts, answer, provider="rules", model_version=RULE_MODEL_VERSION,
        prompt_digest=digest({"rules": params.model_dump()}), latency_ms=0.0, reason_codes=codes,
    )


def memo_id_for(facts: Mapping[str, Any]) -> str:
    return "memo-" + digest({"signal": facts.get("signal_id"), "as_of": facts.get("as_of")})[:16]


def memo_from_answer(facts: Mapping[str, Any], answer: MemoAnswer, *, provider: str, model_version: str,
                     prompt_digest: str, latency_ms: float, attempts: int = 1, prompt_path: str | None = None,
                     reason_codes: Sequence[str] = (), detail: str = "") -> ReasoningMemo:
    return ReasoningMemo(
        memo_id=memo_id_for(facts), signal_id=str(facts["signal_id"]), as_of=str(facts["as_of"]),
        symbol=str(facts["symbol"]), side=str(facts["side"]), thesis=answer.thesis,
        counter_thesis=answer.counter_thesis, risk_flags=list(answer.risk_flags),
        recommendation=answer.recommendation, status="OK", reason_codes=list(reason_codes), detail=detail,
        provenance=MemoProvenance(provider=provider, model_version=model_version, prompt_digest=prompt_digest,
                                  input_digest=digest(facts), latency_ms=latency_ms, attempts=attempts,
                                  prompt_path=prompt_path),
    )


def failed_memo(facts: Mapping[str, Any], *, provider: str, model_version: str, prompt_digest: str,
                latency_ms: float, attempts: int, reason_codes: Sequence[str], detail: str,
                prompt_path: str | None = None) -> ReasoningMemo:
    return ReasoningMemo(
        memo_id=memo_id_for(facts), signal_id=str(facts["signal_id"]), as_of=str(facts["as_of"]),
        symbol=str(facts["symbol"]), side=str(facts["side"]), thesis="", counter_thesis="", risk_flags=[],
        recommendation=None, status="FAILED",
        reason_codes=list(dict.fromkeys([str(ReasonCode.REASONING_FAILED), *map(str, reason_codes)])),
        detail=detail[:500],
        provenance=MemoProvenance(provider=provider, model_version=model_version, prompt_digest=prompt_digest,
                                  input_digest=digest(facts), latency_ms=latency_ms, attempts=attempts,
                                  prompt_path=prompt_path),
    )


def parse_answer(text: str) -> MemoAnswer:
    """An LLM's message content → :class:`MemoAnswer`; raises ``ValueError`` with the reason.

    Accepts the JSON object alone or inside a ```json fence; anything else is invalid.
    """
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    try:
        return MemoAnswer.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"does not match the memo schema: {problems}") from exc


def produce_memos(facts: Sequence[Mapping[str, Any]], rules: ReasoningRules, llm: Any = None) -> list[ReasoningMemo]:
    """The stage: one memo per proposal's facts, by the LLM provider when given, else the rules.

    An LLM provider that raises is a FAILED memo for that proposal, never a failed stage.
    """
    out = []
    for f in facts:
        if llm is None:
            out.append(rule_based_memo(f, rules))
            continue
        try:
            out.append(llm.memo(f))
        except Exception as exc:  # noqa: BLE001 - any provider bug fails closed to a FAILED memo
            out.append(failed_memo(f, provider=getattr(llm, "name", "llm"), model_version="unknown",
                                   prompt_digest="", latency_ms=0.0, attempts=0, reason_codes=(),
                                   detail=f"provider error: {type(exc).__name__}"))
    return out


def memos_frame(memos: Sequence[ReasoningMemo]) -> pd.DataFrame:
    frame = pd.DataFrame([m.row() for m in memos], columns=MEMO_COLUMNS)
    # explicit types: an all-null column (no FAILED memo tonight, no prompt file) must still be
    # text, or the warehouse table gets a NULL-typed column that a later night cannot fill
    for col in MEMO_COLUMNS:
        if col not in ("latency_ms", "attempts"):
            frame[col] = frame[col].astype("string")
    frame["latency_ms"] = frame["latency_ms"].astype("float64")
    frame["attempts"] = frame["attempts"].astype("int64")
    return frame


def verdict_by_symbol(memos: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """symbol → (pre-trade ``reasoning`` verdict, memo id), from a stored memos partition."""
    if memos is None or memos.empty or "symbol" not in memos.columns:
        return {}
    out = {}
    for _, m in memos.iterrows():
        verdict = str(m.get("verdict") or "FAILED").upper()
        out[str(m["symbol"])] = (verdict if verdict in ("ALLOW", "ALLOW_WITH_CAUTION", "DENY") else "FAILED",
                                 str(m.get("memo_id") or ""))
    return out
