"""Recorded structured-output traffic (JSON Schema answers, refusals, forced tool calls, cuts),
served over real HTTP and read by stream_chat as the manifest of its folder says.

The folder is ``structured/`` inside the recorded fixtures (see tests/recorded_fixtures.py).
Each request carries the fixture's schema; Anthropic fixtures answered by a tool call are read
in tool mode, the others in structured-outputs mode (the adapter's model list is set per
fixture so that the mode matches what was recorded, whatever the recorded model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from provider_testkit import Outcome, ProviderServer, RecordingSleep, Reply, collect, sse_chunks

from execution_service.providers import (
    ChatMessage,
    ChatRequest,
    Finish,
    OutputSchema,
    Provider,
    Refusal,
    UsageReport,
    get_provider,
    stream_chat,
)
from execution_service.providers.anthropic import AnthropicProvider
from service_kit.secret import Secret
from tests.recorded_fixtures import available, fixtures_dir, require_fixtures

FOLDER = fixtures_dir() / "structured"
KEY = Secret("sk-fixture-structured-key")
MODEL = "fixture-model"


def _manifest() -> Path:
    return FOLDER / "manifest.json"


def _fixtures() -> list[Any]:
    if not available() or not _manifest().is_file():
        return [pytest.param(None, id="fixtures-absent")]  # skips, or fails under CI=true
    entries = json.loads(_manifest().read_text())["fixtures"]
    return [pytest.param(entry, id=entry["id"]) for entry in entries]


def _tool_mode(entry: dict[str, Any]) -> bool:
    return "tool_name" in entry["expected"]


def _provider(entry: dict[str, Any]) -> Provider:
    if entry["provider"] == "openai":
        return get_provider("openai")
    return AnthropicProvider(output_config_models=() if _tool_mode(entry) else (MODEL,))


async def _replay(
    entry: dict[str, Any],
    server: ProviderServer,
    client: httpx.AsyncClient,
    sleep: RecordingSleep,
) -> Outcome:
    body = (FOLDER / entry["file"]).read_bytes()
    streamed = entry["file"].endswith(".sse")
    server.script(
        Reply(
            status=entry["status"],
            headers=entry["headers"],
            body=body,
            chunks=sse_chunks(body) if streamed else None,
        )
    )
    schema = entry["expected"].get("schema") or {"type": "object"}
    request = ChatRequest(
        model=MODEL,
        messages=(ChatMessage("user", "Hello"),),
        output_schema=OutputSchema.create(schema, "fixture_schema"),
    )
    return await collect(
        stream_chat(
            client,
            _provider(entry),
            request,
            KEY,
            base_url=server.url,
            default_max_tokens=256,
            deadline=None,
            sleep=sleep,
        )
    )


@pytest.mark.parametrize("entry", _fixtures())
async def test_structured_fixture_parses_as_the_manifest_says(
    entry: dict[str, Any] | None,
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    recording_sleep: RecordingSleep,
) -> None:
    require_fixtures()
    if entry is None:
        pytest.fail(f"no manifest at {_manifest()}", pytrace=False)
    expected = entry["expected"]
    outcome = await _replay(entry, provider_server, http_client, recording_sleep)

    assert outcome.error is None
    assert recording_sleep.delays == []
    # The output is the JSON text alone: the tool call's input in tool mode (a text block
    # before the call is not output), the content or text blocks otherwise.
    if _tool_mode(entry):
        if entry["stream"]:
            assert outcome.text == expected["tool_input_json"]
        else:  # the input is an object on the wire: any text that decodes to it is right
            assert json.loads(outcome.text) == json.loads(expected["tool_input_json"])
        assert not expected["text"] or expected["text"] not in outcome.text
    else:
        assert outcome.text == (expected["text"] or "")
    if expected["parsed"] is None:
        with pytest.raises(ValueError):
            json.loads(outcome.text)
    else:
        assert json.loads(outcome.text) == expected["parsed"]

    refusals = [e for e in outcome.events if isinstance(e, Refusal)]
    if expected["refusal"] is None:
        assert refusals == []
    else:
        assert "".join(r.text for r in refusals) == expected["refusal"]

    # A cut answer (length, max_tokens) still reports its usage, then finishes.
    usage = [e for e in outcome.events if isinstance(e, UsageReport)][-1]
    assert (usage.input_tokens, usage.output_tokens) == (
        expected["input_tokens"],
        expected["output_tokens"],
    )
    assert outcome.events[-1] == Finish(expected["finish_reason"])


@pytest.mark.parametrize("entry", _fixtures())
async def test_structured_request_asks_for_the_schema_in_the_fixtures_mode(
    entry: dict[str, Any] | None,
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    recording_sleep: RecordingSleep,
) -> None:
    require_fixtures()
    assert entry is not None
    await _replay(entry, provider_server, http_client, recording_sleep)
    sent = provider_server.received[0].json()
    schema = entry["expected"].get("schema") or {"type": "object"}
    if entry["provider"] == "openai":
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "fixture_schema", "strict": True, "schema": schema},
        }
    elif _tool_mode(entry):
        assert [t["input_schema"] for t in sent["tools"]] == [schema]
        assert sent["tool_choice"] == {"type": "tool", "name": "fixture_schema"}
        assert "output_config" not in sent
    else:
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
        assert "tools" not in sent
