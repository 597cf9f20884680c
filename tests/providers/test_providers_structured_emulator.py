"""stream_chat with an output schema against the real provider emulator: every provider and
mode delivers the JSON as TextDeltas that join into a valid document; refusals, cuts and
spoiled JSON reach the caller as the engine needs them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema_rs
import pytest
from provider_testkit import Outcome, RecordingSleep, collect

from execution_service.providers import (
    ChatMessage,
    ChatRequest,
    ErrorReason,
    Finish,
    OutputSchema,
    Provider,
    Refusal,
    TextDelta,
    UsageReport,
    get_provider,
    stream_chat,
)
from execution_service.retry import RetryPolicy
from provider_emulator import RunningEmulator, start_emulator
from provider_emulator.app import REFUSAL_TEXT
from service_kit.secret import Secret

KEY = Secret("sk-structured-emulator-key")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2},
        "address": {"$ref": "#/$defs/address"},
    },
    "required": ["name", "email", "tags", "address"],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        }
    },
}
VALIDATOR = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)

# (provider, model): OpenAI json_schema; Anthropic structured outputs; Anthropic forced tool.
MODES = {
    "openai": ("openai", "gpt-4o"),
    "anthropic-output-config": ("anthropic", "claude-sonnet-4-5-20250929"),
    "anthropic-tool": ("anthropic", "claude-3-5-sonnet-20241022"),
}


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with start_emulator(chunks=12) as running:
        yield running


async def _run(
    emulator: RunningEmulator,
    http_client: httpx.AsyncClient,
    mode: str,
    *,
    max_tokens: int | None = None,
    sleep: RecordingSleep | None = None,
) -> Outcome:
    provider_name, model = MODES[mode]
    provider: Provider = get_provider(provider_name)
    base_url = emulator.base_url + ("/v1" if provider_name == "openai" else "")
    request = ChatRequest(
        model=model,
        messages=(ChatMessage("system", "Extract."), ChatMessage("user", "Ann, ann@x.org")),
        max_tokens=max_tokens,
        output_schema=OutputSchema.create(SCHEMA, "contact"),
    )
    return await collect(
        stream_chat(
            http_client,
            provider,
            request,
            KEY,
            base_url=base_url,
            policy=RetryPolicy(),
            default_max_tokens=1024,
            deadline=None,
            sleep=sleep or RecordingSleep(),
        )
    )


def _last_usage(outcome: Outcome) -> UsageReport:
    return [e for e in outcome.events if isinstance(e, UsageReport)][-1]


@pytest.mark.parametrize("mode", MODES)
async def test_json_streams_as_text_deltas_and_is_valid(
    emulator: RunningEmulator, http_client: httpx.AsyncClient, mode: str
) -> None:
    outcome = await _run(emulator, http_client, mode)
    assert outcome.error is None
    VALIDATOR.validate(json.loads(outcome.text))
    assert not [e for e in outcome.events if isinstance(e, Refusal)]
    assert _last_usage(outcome).output_tokens == 12
    finish = {"openai": "stop", "anthropic-output-config": "end_turn", "anthropic-tool": "tool_use"}
    assert outcome.events[-1] == Finish(finish[mode])
    body = emulator.state.requests[-1].body
    asked = {"response_format", "output_config", "tools"} & set(body)
    assert (
        asked
        == {
            "openai": {"response_format"},
            "anthropic-output-config": {"output_config"},
            "anthropic-tool": {"tools"},
        }[mode]
    )


async def test_deltas_arrive_in_pieces_when_the_provider_is_slow(
    emulator: RunningEmulator, http_client: httpx.AsyncClient
) -> None:
    emulator.state.script({"chunk_delay_ms": 5})
    outcome = await _run(emulator, http_client, "anthropic-tool")
    deltas = [e for e in outcome.events if isinstance(e, TextDelta)]
    assert len(deltas) > 3
    VALIDATOR.validate(json.loads(outcome.text))


@pytest.mark.parametrize("mode", MODES)
async def test_refusal_is_an_event_not_output(
    emulator: RunningEmulator, http_client: httpx.AsyncClient, mode: str
) -> None:
    emulator.state.script({"output_fault": "refusal"})
    outcome = await _run(emulator, http_client, mode)
    assert outcome.error is None
    refusals = [e for e in outcome.events if isinstance(e, Refusal)]
    assert refusals
    if mode == "anthropic-output-config":
        # Only the stop reason says so, after the text went out as output.
        assert outcome.text == REFUSAL_TEXT
        assert refusals == [Refusal("")]
        assert outcome.events[-1] == Finish("refusal")
    else:  # OpenAI's refusal field; the text block of Anthropic's tool mode
        assert "".join(r.text for r in refusals) == REFUSAL_TEXT
        assert outcome.text == ""
    assert _last_usage(outcome).output_tokens


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", ["invalid_json", "schema_violation"])
async def test_spoiled_json_is_delivered_as_it_came(
    emulator: RunningEmulator, http_client: httpx.AsyncClient, mode: str, fault: str
) -> None:
    emulator.state.script({"output_fault": fault})
    outcome = await _run(emulator, http_client, mode)
    assert outcome.error is None
    if fault == "invalid_json":
        with pytest.raises(ValueError):
            json.loads(outcome.text)
    else:
        assert not VALIDATOR.is_valid(json.loads(outcome.text))


@pytest.mark.parametrize("mode", MODES)
async def test_max_tokens_cut_keeps_usage_and_the_reason(
    emulator: RunningEmulator, http_client: httpx.AsyncClient, mode: str
) -> None:
    outcome = await _run(emulator, http_client, mode, max_tokens=5)
    assert outcome.error is None
    with pytest.raises(ValueError):
        json.loads(outcome.text)
    assert _last_usage(outcome).output_tokens == 5
    assert outcome.events[-1] == Finish("length" if mode == "openai" else "max_tokens")


@pytest.mark.parametrize("mode", MODES)
async def test_connection_cut_inside_the_json_fails_after_partial_output(
    emulator: RunningEmulator, http_client: httpx.AsyncClient, mode: str
) -> None:
    emulator.state.script({"cut_after_chunks": 4})
    sleep = RecordingSleep()
    outcome = await _run(emulator, http_client, mode, sleep=sleep)
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert outcome.error.retryable is False  # output had flowed
    assert outcome.text.startswith("{") and len(outcome.text) > 1
    assert sleep.delays == []
