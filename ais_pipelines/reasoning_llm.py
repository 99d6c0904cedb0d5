"""Optional LLM memo provider over an OpenAI-compatible chat-completions endpoint (issue 16).

``POST {AIS_REASONING_LLM_URL}/chat/completions`` with ``Authorization: Bearer
{AIS_REASONING_LLM_KEY}``, ``{"model", "messages", "max_tokens": 700, "temperature": 0,
"response_format": {"type": "json_object"}}``; the answer's ``choices[0].message.content`` must
be JSON matching :class:`~ais_pipelines.core.reasoning.MemoAnswer`.

Rules:

* Budget: at most ``max_input_tokens`` (5,000) estimated input tokens — a prompt over it is not
  sent (FAILED) — and ``max_tokens`` = ``max_output_tokens`` (700).
* One invalid answer (not JSON, wrong schema) → one retry with a repair prompt that quotes the
  problem; a second invalid answer → FAILED (``REASONING_MEMO_INVALID``).
* Hard timeout (15 s) bounds the whole memo, retries included, as a wall-clock deadline: each
  request may only use what is left, however slowly the server sends (``REASONING_TIMEOUT`` →
  FAILED). An answer after the soft timeout (8 s) is used but
  flagged ``slow_answer`` in its detail, and no repair retry is started after it.
* Transport errors and non-2xx answers → FAILED at once (the nightly job must not wait on a
  flaky endpoint; the declared ``reasoning_failed`` rule sends the order to a person).
* Prompts are written to ``{prompt_dir}/{memo_id}.json`` with the key and anything that looks
  like a bearer token or API key redacted; the memo links the file and its digest.

Plain ``requests`` rather than the ``openai`` SDK: one POST, our own timeouts, and no SDK
retries (it retries twice by default) or extra dependencies.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ais_pipelines.core import reasoning as core
from ais_pipelines.core.reason_codes import ReasonCode

PROVIDER = "llm"
SYSTEM_PROMPT = (
    "You are a risk analyst writing a reasoning memo about one proposed paper-trading order. You may only "
    "add caution: you cannot size, approve or send orders. Use only the facts given. Answer with a single "
    "JSON object and nothing else, with exactly these keys: thesis (string), counter_thesis (string), "
    "risk_flags (list of short strings), recommendation (one of ALLOW, ALLOW_WITH_CAUTION, DENY)."
)
_SECRET_PATTERNS = [re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-]+"), re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")]


def estimate_tokens(text: str) -> int:
    """A conservative token estimate (≈ 3 characters a token: over-counts English JSON)."""
    return len(text) // 3 + 1


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return text


@dataclass
class LlmSettings:
    url: str
    api_key: str
    model: str = "gpt-4o-mini"
    soft_timeout_s: float = 8.0
    hard_timeout_s: float = 15.0
    max_input_tokens: int = 5000
    max_output_tokens: int = 700

    def __repr__(self) -> str:  # never print the key
        return f"LlmSettings(url={self.url!r}, model={self.model!r})"


def user_prompt(facts: Mapping[str, Any]) -> str:
    return "Facts (JSON):\n" + json.dumps(core._clean(dict(facts)), sort_keys=True, default=str)


def repair_prompt(problem: str) -> str:
    return (f"Your previous answer was invalid ({problem}). Reply again with only the JSON object with keys "
            "thesis, counter_thesis, risk_flags, recommendation (ALLOW | ALLOW_WITH_CAUTION | DENY).")


class LlmMemoProvider:
    name = PROVIDER

    def __init__(self, settings: LlmSettings, prompt_dir: Path | str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.prompt_dir = Path(prompt_dir)
        self._clock = clock
        self._session = requests.Session()
        self._session.trust_env = False

    def _post(self, messages: list[dict[str, str]], timeout_s: float) -> str:
        s = self.settings
        response = self._session.post(
            f"{s.url.rstrip('/')}/chat/completions",
            headers={"Authorization": f"Bearer {s.api_key}", "Content-Type": "application/json"},
            json={"model": s.model, "messages": messages, "max_tokens": s.max_output_tokens, "temperature": 0,
                  "response_format": {"type": "json_object"}},
            timeout=timeout_s,
        )
        if response.status_code >= 400:
            raise _CallFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            return str(response.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Invalid(f"not a chat-completions answer ({exc!r})") from exc

    def _post_within(self, messages: list[dict[str, str]], left_s: float) -> str:
        """``_post`` bounded by a wall-clock deadline: requests' timeout is per socket read, so a
        server trickling bytes could outlast it; past the deadline we stop waiting (the worker
        thread ends on its own read timeout)."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["content"] = self._post(messages, left_s)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                box["error"] = exc

        worker = threading.Thread(target=work, name="llm-memo", daemon=True)
        worker.start()
        worker.join(left_s)
        if worker.is_alive():
            raise requests.exceptions.Timeout(f"no complete answer within {left_s:.1f}s")
        if "error" in box:
            raise box["error"]
        return str(box["content"])

    def _store(self, memo_id: str, messages: list[dict[str, str]], answers: list[str]) -> tuple[str, str]:
        s = self.settings
        doc = {"provider": PROVIDER, "endpoint": s.url, "model": s.model, "messages": messages, "answers": answers,
               "max_tokens": s.max_output_tokens}
        text = redact(json.dumps(doc, indent=1, sort_keys=True), [s.api_key])
        self.prompt_dir.mkdir(parents=True, exist_ok=True)
        path = self.prompt_dir / f"{memo_id}.json"
        path.write_text(text)
        return str(path), core.digest(json.loads(text)["messages"])

    def memo(self, facts: Mapping[str, Any]) -> core.ReasoningMemo:
        s = self.settings
        memo_id = core.memo_id_for(facts)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_prompt(facts)}]
        answers: list[str] = []
        t0 = self._clock()
        attempts = 0
        codes: list[str] = []
        detail = ""

        def done(memo_args: dict[str, Any] | None) -> core.ReasoningMemo:
            path, pdigest = self._store(memo_id, messages, answers)
            latency = (self._clock() - t0) * 1000.0
            common = {"provider": PROVIDER, "model_version": s.model, "prompt_digest": pdigest,
                      "latency_ms": latency, "attempts": attempts, "prompt_path": path}
            if memo_args is None:
                return core.failed_memo(facts, reason_codes=codes, detail=detail, **common)
            return core.memo_from_answer(facts, memo_args["answer"], detail=memo_args["detail"], **common)

        tokens = sum(estimate_tokens(m["content"]) for m in messages)
        if tokens > s.max_input_tokens:
            detail = f"prompt of ~{tokens} tokens over the {s.max_input_tokens}-token input budget: not sent"
            return done(None)
        for _ in range(2):  # the answer, then at most one repair
            left = s.hard_timeout_s - (self._clock() - t0)
            if left <= 0:
                codes.append(str(ReasonCode.REASONING_TIMEOUT))
                detail = f"hard timeout {s.hard_timeout_s:.1f}s reached"
                return done(None)
            attempts += 1
            try:
                content = self._post_within(messages, left)
            except requests.exceptions.Timeout:
                codes.append(str(ReasonCode.REASONING_TIMEOUT))
                detail = f"no answer within the hard timeout {s.hard_timeout_s:.1f}s"
                return done(None)
            except (requests.exceptions.RequestException, _CallFailed) as exc:
                detail = redact(f"endpoint failed: {exc}", [s.api_key])
                return done(None)
            except _Invalid as exc:
                content, problem = "", str(exc)
            else:
                answers.append(content)
                try:
                    answer = core.parse_answer(content)
                except ValueError as exc:
                    problem = str(exc)
                else:
                    elapsed = self._clock() - t0
                    slow = f"slow_answer: {elapsed:.1f}s > soft timeout {s.soft_timeout_s:.1f}s" \
                        if elapsed > s.soft_timeout_s else ""
                    return done({"answer": answer, "detail": slow})
            codes.append(str(ReasonCode.REASONING_MEMO_INVALID))
            detail = f"invalid answer: {problem}"
            if self._clock() - t0 > s.soft_timeout_s:
                detail += " (past the soft timeout: no repair attempted)"
                return done(None)
            messages = [*messages, {"role": "assistant", "content": content},
                        {"role": "user", "content": repair_prompt(problem)}]
        return done(None)


class _CallFailed(Exception):
    pass


class _Invalid(Exception):
    pass
