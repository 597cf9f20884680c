"""The emulator's answers have the shapes of recorded real provider traffic (located by
tests/recorded_fixtures.py, read at test time, never copied into the project)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from emulator_helpers import (
    SseEvent,
    anthropic_body,
    anthropic_headers,
    collect_sse,
    openai_body,
    openai_headers,
)

from provider_emulator import RunningEmulator
from tests.recorded_fixtures import fixtures_dir, require_fixtures

FIXTURES = fixtures_dir()


@pytest.fixture(autouse=True)
def _fixtures_present() -> None:
    """Skip without the recordings, or fail under CI=true."""
    require_fixtures()


def fixture_events(name: str) -> list[SseEvent]:
    events: list[SseEvent] = []
    for block in (FIXTURES / name).read_text().split("\n\n"):
        event, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].lstrip())
        if data:
            events.append((event, "\n".join(data)))
    return events


def shape(value: Any) -> Any:
    """Keys (recursively) of JSON objects; lists by the shape of their first item."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def covers(ours: Any, real: Any) -> bool:
    """Every key of the real shape is in ours, recursively."""
    if isinstance(real, dict):
        return isinstance(ours, dict) and all(
            k in ours and covers(ours[k], v) for k, v in real.items()
        )
    if isinstance(real, list) and real:
        return isinstance(ours, list) and bool(ours) and covers(ours[0], real[0])
    return True


async def stream(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[httpx.Headers, list[SseEvent]]:
    events: list[SseEvent] = []
    async with http.stream("POST", url, json=body, headers=headers) as response:
        await collect_sse(response, events)
    return response.headers, events


async def test_openai_stream_matches_recorded_chunks(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    real = [json.loads(d) for _, d in fixture_events("openai_stream_with_usage.sse")[:-1]]
    headers, events = await stream(
        http,
        emulator.base_url + "/v1/chat/completions",
        openai_body(stream=True, stream_options={"include_usage": True}),
        openai_headers(),
    )
    assert headers["content-type"].startswith("text/event-stream")
    assert events[-1] == (None, "[DONE]")
    ours = [json.loads(d) for _, d in events[:-1]]
    for real_chunk, our_chunk in [
        (real[0], ours[0]),
        (real[1], ours[1]),
        (real[-2], ours[-2]),
        (real[-1], ours[-1]),
    ]:
        assert covers(shape(our_chunk), shape(real_chunk))
    assert ours[-1]["choices"] == [] == real[-1]["choices"]
    assert all(chunk["usage"] is None for chunk in ours[:-1])


async def test_anthropic_stream_matches_recorded_events(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    real = fixture_events("anthropic_stream_live_capture.sse")
    headers, ours = await stream(
        http, emulator.base_url + "/v1/messages", anthropic_body(stream=True), anthropic_headers()
    )
    assert headers["content-type"].startswith("text/event-stream")

    def collapse(events: list[SseEvent]) -> list[str | None]:
        names = [name for name, _ in events]
        return [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]

    assert collapse(ours) == collapse(real)
    for (name, real_data), (our_name, our_data) in zip(real[:3], ours[:3], strict=True):
        assert name == our_name
        real_shape = shape(json.loads(real_data))
        if name == "message_start":  # geography is not something the emulator knows
            real_shape["message"]["usage"].pop("inference_geo")
        assert covers(shape(json.loads(our_data)), real_shape)
    for name in ("content_block_delta", "content_block_stop", "message_delta", "message_stop"):
        real_data = next(d for n, d in real if n == name)
        our_data = next(d for n, d in ours if n == name)
        assert covers(shape(json.loads(our_data)), shape(json.loads(real_data))), name


async def test_non_streaming_bodies_match_recorded_ones(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    oai = await http.post(
        emulator.base_url + "/v1/chat/completions", json=openai_body(), headers=openai_headers()
    )
    ant = await http.post(
        emulator.base_url + "/v1/messages", json=anthropic_body(), headers=anthropic_headers()
    )
    real_oai = json.loads((FIXTURES / "openai_nonstream.json").read_text())
    real_ant = json.loads((FIXTURES / "anthropic_nonstream.json").read_text())
    real_ant["usage"].pop("inference_geo")
    assert covers(shape(oai.json()), shape(real_oai))
    assert covers(shape(ant.json()), shape(real_ant))
    assert oai.headers["content-type"].startswith("application/json")
    assert ant.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("fixture", "provider", "status"),
    [
        ("openai_401_invalid_api_key", "openai", 401),
        ("openai_429_rate_limit_exceeded", "openai", 429),
        ("openai_500_server_error", "openai", 500),
        ("anthropic_401_authentication_error", "anthropic", 401),
        ("anthropic_429_rate_limit_error", "anthropic", 429),
        ("anthropic_529_overloaded_error", "anthropic", 529),
    ],
)
async def test_error_bodies_match_recorded_ones(
    emulator: RunningEmulator, http: httpx.AsyncClient, fixture: str, provider: str, status: int
) -> None:
    real_body = json.loads((FIXTURES / "errors" / f"{fixture}.json").read_text())
    real_meta = json.loads((FIXTURES / "errors" / f"{fixture}.meta.json").read_text())
    emulator.state.script({"status": status})
    if provider == "openai":
        response = await http.post(
            emulator.base_url + "/v1/chat/completions", json=openai_body(), headers=openai_headers()
        )
        id_header = "x-request-id"
    else:
        response = await http.post(
            emulator.base_url + "/v1/messages", json=anthropic_body(), headers=anthropic_headers()
        )
        id_header = "request-id"
    assert response.status_code == real_meta["status"]
    assert shape(response.json()) == shape(real_body)
    assert response.headers["content-type"] == real_meta["headers"]["content-type"]
    assert id_header in response.headers and id_header in real_meta["headers"]
    if provider == "openai":
        assert response.text.startswith('{\n    "error": {')
    else:
        assert response.json()["error"]["type"] == real_body["error"]["type"]
