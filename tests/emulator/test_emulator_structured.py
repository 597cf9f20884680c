"""Structured output from the emulator: both wire formats, streamed and not, parsed by the
official SDKs; and the output faults (invalid JSON, schema violation, refusal, a cut inside
the JSON)."""

from __future__ import annotations

import json
from typing import Any, Literal

import anthropic
import httpx
import jsonschema_rs
import openai
import pytest
from emulator_helpers import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    SseEvent,
    anthropic_body,
    anthropic_headers,
    collect_sse,
    openai_body,
    openai_headers,
)
from pydantic import BaseModel

from provider_emulator import RunningEmulator
from provider_emulator.app import REFUSAL_TEXT

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {
                "email": {"type": "string", "format": "email"},
                "since": {"type": "string", "format": "date"},
            },
            "required": ["email", "since"],
            "additionalProperties": False,
        },
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2},
        "status": {"enum": ["open", "closed"]},
    },
    "required": ["customer", "items", "status"],
    "additionalProperties": False,
    "$defs": {
        "item": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"],
            "additionalProperties": False,
        }
    },
}


def _valid(document: Any, schema: dict[str, Any] = SCHEMA) -> bool:
    return bool(jsonschema_rs.validator_for(schema, validate_formats=True).is_valid(document))


class Location(BaseModel):
    city: str
    temperature: float
    units: Literal["c", "f"]


RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "order", "strict": True, "schema": SCHEMA},
}
TOOL = {"name": "record_order", "description": "Record the order.", "input_schema": SCHEMA}
FORCE_TOOL = {"type": "tool", "name": "record_order"}
OUTPUT_CONFIG = {"format": {"type": "json_schema", "schema": SCHEMA}}


def openai_client(emulator: RunningEmulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emulator.base_url + "/v1", api_key=OPENAI_KEY, max_retries=0)


def anthropic_client(emulator: RunningEmulator) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=emulator.base_url, api_key=ANTHROPIC_KEY, max_retries=0
    )


MESSAGES: list[Any] = [{"role": "user", "content": "Record the order"}]


# --- the official SDKs ----------------------------------------------------------------------


async def test_openai_sdk_parse_with_a_pydantic_model(emulator: RunningEmulator) -> None:
    async with openai_client(emulator) as client:
        completion = await client.chat.completions.parse(
            model="gpt-4o", messages=MESSAGES, response_format=Location
        )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Location)
    assert message.refusal is None
    assert json.loads(message.content or "") == message.parsed.model_dump()
    sent = emulator.state.requests[-1].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Location"


async def test_openai_sdk_stream_helper_parses_the_streamed_json(emulator: RunningEmulator) -> None:
    async with (
        openai_client(emulator) as client,
        client.chat.completions.stream(
            model="gpt-4o", messages=MESSAGES, response_format=Location
        ) as stream,
    ):
        deltas = [e.delta async for e in stream if e.type == "content.delta"]
        final = await stream.get_final_completion()
    assert len(deltas) > 1  # the JSON arrived in pieces
    assert isinstance(final.choices[0].message.parsed, Location)
    assert "".join(deltas) == final.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_raw_json_schema_is_valid(emulator: RunningEmulator, stream: bool) -> None:
    async with openai_client(emulator) as client:
        if stream:
            chunks = await client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            completion = await client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
            )
            text = completion.choices[0].message.content or ""
    assert _valid(json.loads(text))


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_sees_a_refusal(emulator: RunningEmulator, stream: bool) -> None:
    emulator.state.script({"output_fault": "refusal"})
    async with openai_client(emulator) as client:
        if stream:
            async with client.chat.completions.stream(
                model="gpt-4o", messages=MESSAGES, response_format=Location
            ) as events:
                kinds = {e.type async for e in events}
                message = (await events.get_final_completion()).choices[0].message
            assert "refusal.done" in kinds and "content.delta" not in kinds
        else:
            completion = await client.chat.completions.parse(
                model="gpt-4o", messages=MESSAGES, response_format=Location
            )
            message = completion.choices[0].message
    assert message.refusal == REFUSAL_TEXT
    assert message.parsed is None
    assert message.content is None


async def test_anthropic_sdk_forced_tool_call(emulator: RunningEmulator) -> None:
    async with anthropic_client(emulator) as client:
        message = await client.messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=1000,
            messages=MESSAGES,
            tools=[TOOL],  # type: ignore[list-item]
            tool_choice=FORCE_TOOL,  # type: ignore[arg-type]
        )
    [block] = message.content
    assert block.type == "tool_use"
    assert block.name == "record_order"
    assert message.stop_reason == "tool_use"
    assert _valid(block.input)


async def test_anthropic_sdk_streams_the_tool_input(emulator: RunningEmulator) -> None:
    async with (
        anthropic_client(emulator) as client,
        client.messages.stream(
            model="claude-3-5-sonnet-20241022",
            max_tokens=1000,
            messages=MESSAGES,
            tools=[TOOL],  # type: ignore[list-item]
            tool_choice=FORCE_TOOL,  # type: ignore[arg-type]
        ) as stream,
    ):
        pieces = [e.partial_json async for e in stream if e.type == "input_json"]
        message = await stream.get_final_message()
    assert len(pieces) > 2
    [block] = message.content
    assert block.type == "tool_use"
    assert json.loads("".join(pieces)) == block.input
    assert _valid(block.input)
    assert message.stop_reason == "tool_use"


async def test_anthropic_sdk_parse_with_output_format(emulator: RunningEmulator) -> None:
    async with anthropic_client(emulator) as client:
        message = await client.messages.parse(
            model="claude-sonnet-4-5",
            max_tokens=1000,
            messages=MESSAGES,
            output_format=Location,
        )
    assert isinstance(message.parsed_output, Location)
    assert message.stop_reason == "end_turn"
    assert "output_config" in emulator.state.requests[-1].body


async def test_anthropic_sdk_stream_with_output_config(emulator: RunningEmulator) -> None:
    async with (
        anthropic_client(emulator) as client,
        client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=1000,
            messages=MESSAGES,
            output_config=OUTPUT_CONFIG,  # type: ignore[arg-type]
        ) as stream,
    ):
        pieces = [e.text async for e in stream if e.type == "text"]
        message = await stream.get_final_message()
    assert len(pieces) > 1
    [block] = message.content
    assert block.type == "text"
    assert _valid(json.loads(block.text))


async def test_anthropic_sdk_beta_output_format(emulator: RunningEmulator) -> None:
    """The earlier beta form: `output_format` with a structured-outputs beta header."""
    async with anthropic_client(emulator) as client:
        message = await client.beta.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1000,
            messages=MESSAGES,
            betas=["structured-outputs-2025-11-13"],
            extra_body={"output_format": OUTPUT_CONFIG["format"]},
        )
    assert message.content[0].type == "text"
    assert _valid(json.loads(message.content[0].text))


async def test_anthropic_sdk_sees_a_refusal(emulator: RunningEmulator) -> None:
    emulator.state.script({"output_fault": "refusal"})
    async with anthropic_client(emulator) as client:
        message = await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1000,
            messages=MESSAGES,
            output_config=OUTPUT_CONFIG,  # type: ignore[arg-type]
        )
    assert message.stop_reason == "refusal"


# --- the wire, and faults -------------------------------------------------------------------


async def _stream(
    http: httpx.AsyncClient, emulator: RunningEmulator, provider: str, **extra: Any
) -> list[SseEvent]:
    if provider == "openai":
        url, headers = "/v1/chat/completions", openai_headers()
        body = openai_body(stream=True, response_format=RESPONSE_FORMAT, **extra)
    elif provider == "anthropic-tool":
        url, headers = "/v1/messages", anthropic_headers()
        body = anthropic_body(stream=True, tools=[TOOL], tool_choice=FORCE_TOOL, **extra)
    else:
        url, headers = "/v1/messages", anthropic_headers()
        key = "output_format" if provider == "anthropic-beta" else "output_config"
        value = OUTPUT_CONFIG["format"] if key == "output_format" else OUTPUT_CONFIG
        body = anthropic_body(stream=True, **{key: value}, **extra)
    events: list[SseEvent] = []
    try:
        async with http.stream("POST", emulator.base_url + url, json=body, headers=headers) as r:
            assert r.status_code == 200
            await collect_sse(r, events)
    except httpx.HTTPError:
        pass  # a scripted cut: keep what arrived
    return events


def _pieces(events: list[SseEvent]) -> list[str]:
    """The output pieces of either wire format (content, text or partial JSON)."""
    out = []
    for _, data in events:
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        for choice in chunk.get("choices", []):
            if choice["delta"].get("content"):
                out.append(choice["delta"]["content"])
        delta = chunk.get("delta", {}) if chunk.get("type") == "content_block_delta" else {}
        if delta.get("text") or delta.get("partial_json"):
            out.append(delta.get("text") or delta["partial_json"])
    return out


PROVIDERS = ["openai", "anthropic", "anthropic-beta", "anthropic-tool"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streamed_json_is_valid_and_split_in_pieces(
    emulator: RunningEmulator, http: httpx.AsyncClient, provider: str
) -> None:
    pieces = _pieces(await _stream(http, emulator, provider))
    assert len(pieces) > 3
    assert _valid(json.loads("".join(pieces)))


async def test_anthropic_tool_stream_has_the_recorded_shape(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    events = await _stream(http, emulator, "anthropic-tool")
    payloads = [json.loads(data) for _, data in events]
    start = next(p for p in payloads if p["type"] == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "record_order"
    assert start["content_block"]["input"] == {}
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    assert deltas[0] == {"type": "input_json_delta", "partial_json": ""}
    assert all(d["type"] == "input_json_delta" for d in deltas)
    stop = next(p for p in payloads if p["type"] == "message_delta")
    assert stop["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_pieces_are_cut_inside_escape_sequences(
    emulator: RunningEmulator, http: httpx.AsyncClient, provider: str
) -> None:
    document = json.dumps({"quote": 'say "hi"\n\\ok'})
    emulator.state.script({"text": document, "chunks": len(document)})  # one character each
    pieces = _pieces(await _stream(http, emulator, provider))
    assert "\\" in pieces  # a backslash alone: its escape sequence continues in the next piece
    assert "".join(pieces) == document


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_invalid_json_fault(
    emulator: RunningEmulator, http: httpx.AsyncClient, provider: str
) -> None:
    emulator.state.script({"output_fault": "invalid_json"})
    text = "".join(_pieces(await _stream(http, emulator, provider)))
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_schema_violation_fault(
    emulator: RunningEmulator, http: httpx.AsyncClient, provider: str
) -> None:
    emulator.state.script({"output_fault": "schema_violation"})
    document = json.loads("".join(_pieces(await _stream(http, emulator, provider))))
    assert not _valid(document)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cut_lands_inside_the_json(
    emulator: RunningEmulator, http: httpx.AsyncClient, provider: str
) -> None:
    emulator.state.script({"cut_after_chunks": 3})
    text = "".join(_pieces(await _stream(http, emulator, provider)))
    assert text.startswith("{")
    with pytest.raises(ValueError):
        json.loads(text)
    assert emulator.state.requests[-1].outcome == "cut"


async def test_openai_refusal_streams_as_refusal_pieces(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"output_fault": "refusal"})
    events = await _stream(http, emulator, "openai", stream_options={"include_usage": True})
    chunks = [json.loads(data) for _, data in events if data != "[DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": ""}
    assert "".join(d.get("refusal") or "" for d in deltas) == REFUSAL_TEXT
    assert not any(d.get("content") for d in deltas)
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_anthropic_refusal_in_tool_mode_is_text_with_stop_reason_refusal(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"output_fault": "refusal", "text": "No, thanks."})
    events = await _stream(http, emulator, "anthropic-tool")
    payloads = [json.loads(data) for _, data in events]
    assert not any(p.get("content_block", {}).get("type") == "tool_use" for p in payloads)
    assert "".join(_pieces(events)) == "No, thanks."
    stop = next(p for p in payloads if p["type"] == "message_delta")
    assert stop["delta"]["stop_reason"] == "refusal"


async def test_max_tokens_cuts_the_tool_input_without_a_block_stop(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    events = await _stream(http, emulator, "anthropic-tool", max_tokens=4)
    payloads = [json.loads(data) for _, data in events]
    assert not any(p["type"] == "content_block_stop" for p in payloads)
    stop = next(p for p in payloads if p["type"] == "message_delta")
    assert stop["delta"]["stop_reason"] == "max_tokens"
    assert stop["usage"]["output_tokens"] == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": SCHEMA}}, "name"),
        ({"type": "xml"}, "response_format.type"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}},
            "response_format",
        ),
    ],
)
async def test_openai_bad_response_format_is_a_400(
    emulator: RunningEmulator, http: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    response = await http.post(
        emulator.base_url + "/v1/chat/completions",
        json=openai_body(response_format=body),
        headers=openai_headers(),
    )
    assert response.status_code == 400
    assert param in (response.json()["error"]["param"] or "")


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            "additionalProperties",
        ),
        (
            {**SCHEMA, "$defs": {"item": {**SCHEMA["$defs"]["item"], "required": ["sku"]}}},
            "Missing 'qty'",
        ),
    ],
)
async def test_openai_strict_mode_refuses_a_schema_it_cannot_enforce(
    emulator: RunningEmulator, http: httpx.AsyncClient, schema: dict[str, Any], says: str
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "x", "strict": True, "schema": schema},
    }
    response = await http.post(
        emulator.base_url + "/v1/chat/completions",
        json=openai_body(response_format=response_format),
        headers=openai_headers(),
    )
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]
    # Without strict, the same schema is accepted (and followed).
    response_format["json_schema"]["strict"] = False  # type: ignore[index]
    lax = await http.post(
        emulator.base_url + "/v1/chat/completions",
        json=openai_body(response_format=response_format),
        headers=openai_headers(),
    )
    assert lax.status_code == 200
    assert _valid(json.loads(lax.json()["choices"][0]["message"]["content"]), schema)


async def test_anthropic_tool_schema_must_be_an_object(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    tool = {**TOOL, "input_schema": {"type": "array"}}
    response = await http.post(
        emulator.base_url + "/v1/messages",
        json=anthropic_body(tools=[tool], tool_choice=FORCE_TOOL),
        headers=anthropic_headers(),
    )
    assert response.status_code == 400
    assert "input_schema" in response.json()["error"]["message"]


@pytest.mark.parametrize("fault", ["invalid_json", "schema_violation"])
async def test_non_streamed_faults(
    emulator: RunningEmulator, http: httpx.AsyncClient, fault: str
) -> None:
    emulator.state.script({"output_fault": fault})
    response = await http.post(
        emulator.base_url + "/v1/chat/completions",
        json=openai_body(response_format=RESPONSE_FORMAT),
        headers=openai_headers(),
    )
    content = response.json()["choices"][0]["message"]["content"]
    if fault == "invalid_json":
        with pytest.raises(ValueError):
            json.loads(content)
    else:
        assert not _valid(json.loads(content))


async def test_output_fault_through_the_control_plane(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    bad = await http.post(
        emulator.base_url + "/_emulator/script", json={"steps": [{"output_fault": "nope"}]}
    )
    assert bad.status_code == 400
    assert "output_fault" in bad.json()["error"]
    queued = await http.post(
        emulator.base_url + "/_emulator/script",
        json={"key": OPENAI_KEY, "steps": [{"output_fault": "schema_violation"}]},
    )
    assert queued.json()["queued"] == 1
    response = await http.post(
        emulator.base_url + "/v1/chat/completions",
        json=openai_body(response_format=RESPONSE_FORMAT),
        headers=openai_headers(),
    )
    assert not _valid(json.loads(response.json()["choices"][0]["message"]["content"]))
    assert emulator.state.requests[-1].step is not None


async def test_openai_json_mode_answers_an_object(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        emulator.base_url + "/v1/chat/completions",
        json=openai_body(response_format={"type": "json_object"}),
        headers=openai_headers(),
    )
    assert isinstance(json.loads(response.json()["choices"][0]["message"]["content"]), dict)


def test_an_unknown_output_fault_is_refused(emulator: RunningEmulator) -> None:
    from provider_emulator import StepError

    with pytest.raises(StepError, match="output_fault"):
        emulator.state.script({"output_fault": "gibberish"})
