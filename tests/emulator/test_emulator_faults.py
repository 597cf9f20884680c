"""Each scripted fault, observed with a plain httpx client."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
from emulator_helpers import (
    ANTHROPIC_KEY,
    CHUNKS,
    OPENAI_KEY,
    SseEvent,
    anthropic_body,
    anthropic_headers,
    anthropic_texts,
    collect_sse,
    expected_text,
    openai_body,
    openai_headers,
    openai_texts,
)

from provider_emulator import RunningEmulator, key_fingerprint, start_emulator


def chat_url(emulator: RunningEmulator) -> str:
    return emulator.base_url + "/v1/chat/completions"


def messages_url(emulator: RunningEmulator) -> str:
    return emulator.base_url + "/v1/messages"


async def test_cut_after_chunks_gives_n_chunks_then_a_read_error(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"cut_after_chunks": 3})
    events: list[SseEvent] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream(
            "POST", chat_url(emulator), json=openai_body(stream=True), headers=openai_headers()
        ) as response:
            assert response.status_code == 200
            await collect_sse(response, events)
    assert openai_texts(events) == ["word0", " word1", " word2"]
    assert all(data != "[DONE]" for _, data in events)
    record = emulator.state.requests[-1]
    assert (record.outcome, record.chunks_sent, record.disconnected) == ("cut", 3, False)


async def test_cut_with_chunk_delay_on_anthropic_stream(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"chunk_delay_ms": 10, "cut_after_chunks": 2})
    events: list[SseEvent] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream(
            "POST",
            messages_url(emulator),
            json=anthropic_body(stream=True),
            headers=anthropic_headers(),
        ) as response:
            await collect_sse(response, events)
    assert anthropic_texts(events) == ["word0", " word1"]
    assert [name for name, _ in events][:3] == ["message_start", "content_block_start", "ping"]
    assert "message_stop" not in [name for name, _ in events]


async def test_cut_non_streaming_body(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    emulator.state.script({"cut_after_chunks": 0})
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
    assert emulator.state.requests[-1].outcome == "cut"


async def test_malformed_event_after_chunks(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"malformed_after_chunks": 2})
    events: list[SseEvent] = []
    async with http.stream(
        "POST", chat_url(emulator), json=openai_body(stream=True), headers=openai_headers()
    ) as response:
        await collect_sse(response, events)
    datas = [data for _, data in events]
    assert openai_texts(events[:-1]) == ["word0", " word1"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(datas[-1])
    assert "[DONE]" not in datas
    assert emulator.state.requests[-1].outcome == "malformed"


async def test_malformed_anthropic_event(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"malformed_after_chunks": 0})
    events: list[SseEvent] = []
    async with http.stream(
        "POST",
        messages_url(emulator),
        json=anthropic_body(stream=True),
        headers=anthropic_headers(),
    ) as response:
        await collect_sse(response, events)
    name, data = events[-1]
    assert name == "content_block_delta"
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)


async def test_malformed_non_streaming_body(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"malformed_after_chunks": 0})
    response = await http.post(
        messages_url(emulator), json=anthropic_body(), headers=anthropic_headers()
    )
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_anthropic_error_event_shape(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"anthropic_error_after_chunks": 1, "error_type": "overloaded_error"})
    events: list[SseEvent] = []
    async with http.stream(
        "POST",
        messages_url(emulator),
        json=anthropic_body(stream=True),
        headers=anthropic_headers(),
    ) as response:
        await collect_sse(response, events)
    assert anthropic_texts(events) == ["word0"]
    assert events[-1][0] == "error"
    assert json.loads(events[-1][1]) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_delay_before_first_event(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    emulator.state.script({"delay_before_first_ms": 200})
    started = time.monotonic()
    async with http.stream(
        "POST", chat_url(emulator), json=openai_body(stream=True), headers=openai_headers()
    ) as response:
        lines = response.aiter_lines()
        first = await anext(lines)
        waited = time.monotonic() - started
        async for _ in lines:
            pass
    assert first.startswith("data: {")
    assert waited >= 0.2


async def test_chunk_delay_spaces_the_chunks(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"chunk_delay_ms": 40})
    events: list[SseEvent] = []
    started = time.monotonic()
    async with http.stream(
        "POST",
        messages_url(emulator),
        json=anthropic_body(stream=True),
        headers=anthropic_headers(),
    ) as response:
        await collect_sse(response, events)
    assert time.monotonic() - started >= 0.04 * (CHUNKS - 1)
    assert "".join(anthropic_texts(events)) == expected_text()


async def test_configured_first_token_delay(http: httpx.AsyncClient) -> None:
    async with start_emulator(first_token_delay_ms=150, chunks=2) as emulator:
        started = time.monotonic()
        response = await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
        assert time.monotonic() - started >= 0.15
    assert response.json()["choices"][0]["message"]["content"] == "word0 word1"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_scripted_error_status_headers_and_body(
    emulator: RunningEmulator, http: httpx.AsyncClient, provider: str
) -> None:
    emulator.state.script(
        {
            "status": 429,
            "headers": {"retry-after": "2", "retry-after-ms": "2000", "x-should-retry": "true"},
        }
    )
    if provider == "openai":
        response = await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
        assert response.json() == {
            "error": {
                "message": "Rate limit reached for requests. Please try again in 1s.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.headers["x-request-id"].startswith("req_")
    else:
        response = await http.post(
            messages_url(emulator), json=anthropic_body(), headers=anthropic_headers()
        )
        body = response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "rate_limit_error"
        assert body["request_id"] == response.headers["request-id"]
        assert response.headers["content-type"] == "application/json"
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "2000"
    assert response.headers["x-should-retry"] == "true"


async def test_scripted_insufficient_quota(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script(
        {"status": 429, "error_type": "insufficient_quota", "error_code": "insufficient_quota"}
    )
    response = await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
    error = response.json()["error"]
    assert (response.status_code, error["type"], error["code"]) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )


async def test_reset_closes_before_any_response(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"reset": True})
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
    assert emulator.state.requests[-1].outcome == "reset"
    ok = await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
    assert ok.status_code == 200


async def test_client_disconnect_mid_stream_is_recorded(
    emulator: RunningEmulator, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.state.script({"chunk_delay_ms": 100})
    async with http.stream(
        "POST",
        messages_url(emulator),
        json=anthropic_body(stream=True),
        headers=anthropic_headers(),
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: content_block_delta"):
                break
    await emulator.state.wait_for(lambda s: s.requests[-1].outcome != "in_progress")
    record = emulator.state.requests[-1]
    assert record.disconnected is True
    assert record.outcome == "disconnected"
    assert record.status == 200
    assert record.chunks_sent < CHUNKS
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_client_disconnect_during_first_delay_is_recorded_at_once(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"delay_before_first_ms": 30_000})
    request = asyncio.create_task(
        http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
    )
    await emulator.state.wait_for(lambda s: len(s.requests) == 1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await emulator.state.wait_for(lambda s: s.requests[-1].disconnected, timeout=5)
    assert emulator.state.requests[-1].outcome == "disconnected"


async def test_request_recording(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    key = "sk-ant-very-secret-key-9876"
    body = anthropic_body(system="Top level system prompt")
    response = await http.post(messages_url(emulator), json=body, headers=anthropic_headers(key))
    assert response.status_code == 200
    (record,) = emulator.state.requests
    assert record.provider == "anthropic"
    assert record.path == "/v1/messages"
    assert record.body == body
    assert record.body["system"] == "Top level system prompt"
    assert record.key_last4 == "9876"
    assert record.key_sha256 == key_fingerprint(key)
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert key not in json.dumps(record.to_json())
    assert record.request_id == response.headers["request-id"]
    assert (record.outcome, record.status, record.chunks_sent) == ("completed", 200, CHUNKS)
    assert record.finished_at is not None and record.finished_at >= record.started_at


async def test_per_key_steps_only_hit_that_key(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"status": 500}, key=OPENAI_KEY)
    other = await http.post(
        chat_url(emulator), json=openai_body(), headers=openai_headers("sk-someone-else")
    )
    mine = await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
    again = await http.post(chat_url(emulator), json=openai_body(), headers=openai_headers())
    assert (other.status_code, mine.status_code, again.status_code) == (200, 500, 200)
    assert mine.json()["error"]["type"] == "server_error"


async def test_steps_are_fifo_and_skip_the_models_endpoint(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script([{"status": 503}, {"status": 529}], key=ANTHROPIC_KEY)
    models = await http.get(emulator.base_url + "/v1/models", headers=anthropic_headers())
    first = await http.post(
        messages_url(emulator), json=anthropic_body(), headers=anthropic_headers()
    )
    second = await http.post(
        messages_url(emulator), json=anthropic_body(), headers=anthropic_headers()
    )
    assert (models.status_code, first.status_code, second.status_code) == (200, 503, 529)
    assert second.json()["error"]["type"] == "overloaded_error"
    emulator.state.script({"status": 401, "path": "/v1/models"})
    models = await http.get(emulator.base_url + "/v1/models", headers=anthropic_headers())
    assert models.status_code == 401


async def test_text_and_chunks_override(emulator: RunningEmulator, http: httpx.AsyncClient) -> None:
    emulator.state.script({"text": "Hello there, world!"}, {"text": "abcdef", "chunks": 3})
    events: list[SseEvent] = []
    async with http.stream(
        "POST", chat_url(emulator), json=openai_body(stream=True), headers=openai_headers()
    ) as response:
        await collect_sse(response, events)
    assert openai_texts(events) == ["Hello", " there,", " world!"]
    events.clear()
    async with http.stream(
        "POST",
        messages_url(emulator),
        json=anthropic_body(stream=True),
        headers=anthropic_headers(),
    ) as response:
        await collect_sse(response, events)
    assert anthropic_texts(events) == ["ab", "cd", "ef"]
    assert json.loads(events[-2][1])["usage"]["output_tokens"] == 3
