"""The LLM memo provider against a loopback stub of an OpenAI-compatible chat-completions
endpoint: valid, invalid (repair retry), twice invalid, slow, failing answers."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pandas as pd
import pytest

from ais_pipelines.core import reasoning as r
from ais_pipelines.reasoning_llm import LlmMemoProvider, LlmSettings
from tests.stubs.http_stub import RecordedRequest, StubHTTPServer, StubResponse, loopback_guard  # noqa: F401

KEY = "sk-test-0123456789abcdef"
CHAT = "/v1/chat/completions"
VALID = {"thesis": "Momentum and a calm regime.", "counter_thesis": "Earnings in two days.",
         "risk_flags": ["earnings"], "recommendation": "ALLOW_WITH_CAUTION"}


def completion(content: str) -> dict:
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 1764000000, "model": "stub-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 60, "total_tokens": 360}}


FACTS = r.memo_inputs(
    pd.DataFrame([{"as_of": "2026-11-20", "symbol": "AAPL", "side": "BUY", "qty": 5.0, "status": "PROPOSED"}]),
    regime={"regime": "NORMAL", "p_crisis_5d": 0.05, "threshold": 0.15}, quality=pd.DataFrame(),
    forecasts=pd.DataFrame(), blackouts=[], now=datetime(2026, 11, 21, tzinfo=UTC),
)[0]


@pytest.fixture
def server():
    with StubHTTPServer() as s:
        yield s


def provider(server: StubHTTPServer, tmp_path, **kw) -> LlmMemoProvider:
    settings = LlmSettings(url=f"{server.base_url}/v1", api_key=KEY, model="stub-model", **kw)
    return LlmMemoProvider(settings, tmp_path / "prompts")


def answers(server: StubHTTPServer, *contents: str | StubResponse) -> None:
    for c in contents:
        server.script(CHAT, c if isinstance(c, StubResponse) else StubResponse(body=completion(c)), method="POST")


def test_valid_answer(server, tmp_path) -> None:
    answers(server, json.dumps(VALID))
    memo = provider(server, tmp_path).memo(FACTS)

    assert memo.status == "OK" and memo.verdict == "ALLOW_WITH_CAUTION" and memo.risk_flags == ["earnings"]
    assert memo.provenance.provider == "llm" and memo.provenance.model_version == "stub-model"
    assert memo.provenance.attempts == 1 and memo.provenance.latency_ms > 0
    req = server.requests_for(CHAT)[0]
    body = req.json()
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert body["max_tokens"] == 700 and body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["role"] == "system" and '"symbol": "AAPL"' in body["messages"][1]["content"]
    stored = open(memo.provenance.prompt_path).read()  # noqa: SIM115
    assert KEY not in stored and json.loads(stored)["messages"] == body["messages"]
    assert memo.provenance.prompt_digest == r.digest(body["messages"])


def test_invalid_then_repaired(server, tmp_path) -> None:
    answers(server, "I think you should buy.", json.dumps(VALID | {"recommendation": "DENY"}))
    memo = provider(server, tmp_path).memo(FACTS)

    assert memo.status == "OK" and memo.verdict == "DENY" and memo.provenance.attempts == 2
    second = server.requests_for(CHAT)[1].json()["messages"]
    assert second[-2] == {"role": "assistant", "content": "I think you should buy."}
    assert "invalid" in second[-1]["content"] and "not JSON" in second[-1]["content"]


def test_twice_invalid_is_failed(server, tmp_path) -> None:
    answers(server, '{"recommendation": "MAYBE"}', '{"thesis": "x"}', json.dumps(VALID))
    memo = provider(server, tmp_path).memo(FACTS)

    assert memo.status == "FAILED" and memo.verdict == "FAILED" and memo.provenance.attempts == 2
    assert "REASONING_MEMO_INVALID" in memo.reason_codes and "REASONING_FAILED" in memo.reason_codes
    assert len(server.requests_for(CHAT)) == 2  # no third try
    assert len(json.loads(open(memo.provenance.prompt_path).read())["answers"]) == 2  # noqa: SIM115


def test_slow_answer_hits_the_hard_timeout(server, tmp_path) -> None:
    server.script(CHAT, StubResponse(body=completion(json.dumps(VALID)), hang_s=3), method="POST")
    t0 = time.monotonic()
    memo = provider(server, tmp_path, soft_timeout_s=0.1, hard_timeout_s=0.4).memo(FACTS)

    assert time.monotonic() - t0 < 1.5
    assert memo.status == "FAILED" and "REASONING_TIMEOUT" in memo.reason_codes


def test_late_answer_after_the_soft_timeout_is_used_and_marked(server, tmp_path) -> None:
    server.script(CHAT, StubResponse(body=completion(json.dumps(VALID)), hang_s=0.3), method="POST")
    memo = provider(server, tmp_path, soft_timeout_s=0.1, hard_timeout_s=2).memo(FACTS)
    assert memo.status == "OK" and memo.detail.startswith("slow_answer")


def test_invalid_after_the_soft_timeout_gets_no_repair(server, tmp_path) -> None:
    server.script(CHAT, StubResponse(body=completion("nope"), hang_s=0.3), method="POST")
    memo = provider(server, tmp_path, soft_timeout_s=0.1, hard_timeout_s=2).memo(FACTS)
    assert memo.status == "FAILED" and len(server.requests_for(CHAT)) == 1


@pytest.mark.parametrize("status", [401, 429, 500])
def test_failing_endpoint_is_failed_without_retry(server, tmp_path, status) -> None:
    answers(server, StubResponse(status=status, body={"error": {"message": f"stub {status}", "type": "x"}}))
    memo = provider(server, tmp_path).memo(FACTS)
    assert memo.status == "FAILED" and str(status) in memo.detail and len(server.requests) == 1


def test_not_a_chat_completion_counts_as_invalid(server, tmp_path) -> None:
    answers(server, StubResponse(body={"unexpected": True}), json.dumps(VALID))
    memo = provider(server, tmp_path).memo(FACTS)
    assert memo.status == "OK" and memo.provenance.attempts == 2


def test_input_budget_is_enforced_before_sending(server, tmp_path) -> None:
    big = FACTS | {"note": "x" * 20_000}
    memo = provider(server, tmp_path).memo(big)
    assert memo.status == "FAILED" and "input budget" in memo.detail and server.requests == []


def test_secrets_in_facts_are_redacted_in_the_stored_prompt(server, tmp_path) -> None:
    answers(server, json.dumps(VALID))
    memo = provider(server, tmp_path).memo(FACTS | {"note": f"Bearer {KEY} and sk-otherSecret123456"})
    stored = open(memo.provenance.prompt_path).read()  # noqa: SIM115
    assert KEY not in stored and "sk-otherSecret123456" not in stored
    assert repr(LlmSettings(url="u", api_key=KEY)).count(KEY) == 0


def test_a_trickling_server_cannot_outlast_the_hard_timeout(tmp_path) -> None:
    """Headers at once, then the body a byte every 0.2 s: each read is quick, the answer is not."""
    import socket
    import threading

    body = json.dumps(completion(json.dumps(VALID))).encode()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode())
            for byte in body:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    settings = LlmSettings(url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1", api_key=KEY,
                           soft_timeout_s=0.2, hard_timeout_s=0.8)
    t0 = time.monotonic()
    memo = LlmMemoProvider(settings, tmp_path / "p").memo(FACTS)
    elapsed = time.monotonic() - t0
    stop.set()
    listener.close()
    assert memo.status == "FAILED" and "REASONING_TIMEOUT" in memo.reason_codes and elapsed < 5.0  # the trickle never ends: only the deadline stops it
