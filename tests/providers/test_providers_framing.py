"""stream_chat reads a stream the same whatever its framing: SSE lines ended by LF, CRLF or
a lone CR, and network reads that end inside a multi-byte UTF-8 character or between the CR
and LF of one line ending (each part written separately, a pause apart)."""

from __future__ import annotations

import json

import httpx
import pytest
from provider_testkit import ProviderServer, Reply, collect

from execution_service.providers import (
    ChatMessage,
    ChatRequest,
    Finish,
    UsageReport,
    get_provider,
    stream_chat,
)
from provider_emulator.framing import reframe, torn_parts
from service_kit.secret import Secret

KEY = Secret("sk-framing-test-9d2e")
REQUEST = ChatRequest(model="m", messages=(ChatMessage("user", "Hi"),))
PIECES = ["Grüße, ", "世界", "! 5 €", " 🎉✓"]
TEXT = "".join(PIECES)


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _openai_body() -> bytes:
    events = [
        {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        for piece in PIECES
    ]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    return b"".join(b"data: " + _json(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _anthropic_body() -> bytes:
    def event(name: str, data: dict[str, object]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _json({"type": name, **data}) + b"\n\n"

    usage = {"input_tokens": 9, "output_tokens": 1}
    parts = [event("message_start", {"message": {"usage": usage}})]
    parts += [
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
        for p in PIECES
    ]
    parts.append(
        event(
            "message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}
        )
    )
    parts.append(event("message_stop", {}))
    return b"".join(parts)


BODIES = {"openai": _openai_body, "anthropic": _anthropic_body}
FINISH = {"openai": "stop", "anthropic": "end_turn"}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("line_ending", ["lf", "crlf", "cr"])
@pytest.mark.parametrize("torn", [False, True], ids=["whole", "torn"])
async def test_every_framing_gives_the_same_text_and_usage(
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    provider: str,
    line_ending: str,
    torn: bool,
) -> None:
    body = reframe(BODIES[provider](), line_ending)
    chunks = torn_parts(body) if torn else [body]
    assert b"".join(chunks) == body
    provider_server.script(
        Reply(headers={"content-type": "text/event-stream"}, chunks=chunks, pause=0.002)
    )
    outcome = await collect(
        stream_chat(
            http_client,
            get_provider(provider),
            REQUEST,
            KEY,
            base_url=provider_server.url,
            default_max_tokens=64,
            deadline=None,
        )
    )
    assert outcome.error is None
    assert outcome.text == TEXT
    usage = [e for e in outcome.events if isinstance(e, UsageReport)][-1]
    assert (usage.input_tokens, usage.output_tokens) == (9, 4)
    assert outcome.events[-1] == Finish(FINISH[provider])
