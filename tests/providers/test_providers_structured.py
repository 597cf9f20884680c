"""Pure tests of structured output in the adapters: request building per provider and mode,
and stream folding (JSON text as output, refusals apart, tool mode, cut answers)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from execution_service.providers import (
    ChatMessage,
    ChatRequest,
    Finish,
    OutputSchema,
    Refusal,
    TextDelta,
    UsageReport,
)
from execution_service.providers.anthropic import (
    OUTPUT_CONFIG_MODELS,
    AnthropicProvider,
    AnthropicStreamParser,
    structured_output_mode,
)
from execution_service.providers.openai import OpenAIProvider, OpenAIStreamParser
from service_kit.secret import Secret

KEY = Secret("sk-structured-0123456789")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
OUTPUT = OutputSchema.create(SCHEMA, "Location")


def _request(model: str, output: OutputSchema | None = OUTPUT) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=(ChatMessage("system", "Be exact."), ChatMessage("user", "Where?")),
        output_schema=output,
    )


# --- the schema value -----------------------------------------------------------------------


def test_output_schema_is_immutable_and_gives_fresh_copies() -> None:
    copy = OUTPUT.schema
    copy["type"] = "array"
    assert OUTPUT.schema == SCHEMA
    assert hash(OUTPUT) == hash(OutputSchema.create(dict(SCHEMA), "Location"))


def test_output_schema_keeps_the_property_order() -> None:
    schema = {"type": "object", "properties": {"z": {}, "a": {}}}
    assert list(OutputSchema.create(schema).schema["properties"]) == ["z", "a"]


@pytest.mark.parametrize(
    ("given", "cleaned"),
    [
        ("Location", "Location"),
        ("my agent/v2", "my_agent_v2"),
        ("...", "output"),
        ("x" * 80, "x" * 64),
    ],
)
def test_output_schema_names_are_cleaned_to_what_providers_accept(given: str, cleaned: str) -> None:
    assert OutputSchema.create(SCHEMA, given).name == cleaned


@pytest.mark.parametrize("bad", ["", "has space", "ü", "x" * 65])
def test_output_schema_refuses_a_name_providers_would_refuse(bad: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        OutputSchema(bad, "{}")


# --- request building -----------------------------------------------------------------------


def test_openai_asks_for_strict_json_schema() -> None:
    spec = OpenAIProvider().build_stream_request(_request("gpt-4o"), KEY, None, 1024)
    assert spec.json is not None
    assert spec.json["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Location", "strict": True, "schema": SCHEMA},
    }
    assert spec.json["stream"] is True


def test_no_schema_no_structured_fields() -> None:
    openai = OpenAIProvider().build_stream_request(_request("gpt-4o", None), KEY, None, 1024)
    anthropic = AnthropicProvider().build_stream_request(
        _request("claude-sonnet-4-5", None), KEY, None, 1024
    )
    assert openai.json is not None and "response_format" not in openai.json
    assert anthropic.json is not None
    assert not {"output_config", "tools", "tool_choice"} & set(anthropic.json)


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        ("claude-sonnet-4-5", "output_config"),
        ("claude-sonnet-4-5-20250929", "output_config"),
        ("claude-haiku-4-5-20251001", "output_config"),
        ("claude-opus-4-5", "output_config"),
        ("claude-opus-4-1-20250805", "tool"),
        ("claude-3-5-sonnet-20241022", "tool"),
        ("claude-sonnet-4-50", "tool"),  # a family prefix must end at a dash
        ("claude-sonnet-4-20250514", "tool"),
    ],
)
def test_anthropic_mode_follows_the_model_list(model: str, mode: str) -> None:
    assert structured_output_mode(model) == mode


def test_the_model_list_comes_from_the_packaged_data_file() -> None:
    from importlib import resources

    document = json.loads(
        resources.files("execution_service.providers")
        .joinpath("structured_outputs.json")
        .read_text("utf-8")
    )
    assert tuple(document["anthropic_output_config_models"]) == OUTPUT_CONFIG_MODELS
    assert structured_output_mode("my-model", ["my-model"]) == "output_config"


def test_anthropic_structured_outputs_mode_sends_output_config() -> None:
    spec = AnthropicProvider().build_stream_request(
        _request("claude-sonnet-4-5-20250929"), KEY, None, 1024
    )
    assert spec.json is not None
    assert spec.json["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in spec.json
    assert spec.json["system"] == "Be exact."


def test_anthropic_tool_mode_forces_one_tool_with_the_schema() -> None:
    provider = AnthropicProvider(output_config_models=())
    spec = provider.build_stream_request(_request("claude-sonnet-4-5"), KEY, None, 1024)
    assert spec.json is not None
    [tool] = spec.json["tools"]
    assert tool["name"] == "Location"
    assert tool["input_schema"] == SCHEMA
    assert tool["description"]
    assert spec.json["tool_choice"] == {"type": "tool", "name": "Location"}
    assert "output_config" not in spec.json


# --- OpenAI folding -------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return json.dumps(
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


_USAGE_CHUNK = json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})


def test_openai_refusal_pieces_are_refusals_not_output() -> None:
    parser = OpenAIStreamParser()
    events = []
    events += parser.feed("", _chunk({"role": "assistant", "content": None, "refusal": ""}))
    events += parser.feed("", _chunk({"refusal": "I can't"}))
    events += parser.feed("", _chunk({"refusal": " help."}))
    events += parser.feed("", _chunk({}, "stop"))
    events += parser.feed("", _USAGE_CHUNK)
    events += parser.feed("", "[DONE]")
    assert events == [
        Refusal("I can't"),
        Refusal(" help."),
        UsageReport(9, 4),
        Finish("stop"),
    ]


@pytest.mark.parametrize("reason", ["length", "content_filter"])
def test_openai_json_cut_by_the_provider_still_reads_the_usage(reason: str) -> None:
    parser = OpenAIStreamParser()
    events = parser.feed("", _chunk({"content": '{"ci'}))
    events += parser.feed("", _chunk({}, reason))
    events += parser.feed("", _USAGE_CHUNK)
    events += parser.feed("", "[DONE]")
    assert events == [TextDelta('{"ci'), UsageReport(9, 4), Finish(reason)]


def test_openai_whole_answer_with_refusal() -> None:
    body = json.dumps(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "refusal": "No."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    ).encode()
    assert OpenAIProvider().parse_complete(body, _request("gpt-4o")) == [
        Refusal("No."),
        UsageReport(3, 1),
        Finish("stop"),
    ]


# --- Anthropic folding ----------------------------------------------------------------------


def _event(kind: str, **fields: Any) -> tuple[str, str]:
    return kind, json.dumps({"type": kind, **fields})


_START = _event("message_start", message={"usage": {"input_tokens": 20, "output_tokens": 1}})


def _tool_stream(*, stop_reason: str = "tool_use") -> list[tuple[str, str]]:
    def delta(index: int, body: dict[str, Any]) -> tuple[str, str]:
        return _event("content_block_delta", index=index, delta=body)

    return [
        _START,
        _event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        delta(0, {"type": "text_delta", "text": "Let me answer."}),
        _event("content_block_stop", index=0),
        _event(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "t1", "name": "Location", "input": {}},
        ),
        delta(1, {"type": "input_json_delta", "partial_json": ""}),
        delta(1, {"type": "input_json_delta", "partial_json": '{"city": "Pa'}),
        delta(1, {"type": "input_json_delta", "partial_json": 'ris"}'}),
        _event("content_block_stop", index=1),
        # A second tool call is not the answer.
        _event(
            "content_block_start",
            index=2,
            content_block={"type": "tool_use", "id": "t2", "name": "Location", "input": {}},
        ),
        delta(2, {"type": "input_json_delta", "partial_json": '{"city": "Rome"}'}),
        _event("content_block_stop", index=2),
        _event("message_delta", delta={"stop_reason": stop_reason}, usage={"output_tokens": 12}),
        _event("message_stop"),
    ]


def _fold(parser: AnthropicStreamParser, events: list[tuple[str, str]]) -> list[Any]:
    out: list[Any] = []
    for name, data in events:
        out += parser.feed(name, data)
    return out + parser.end()


def test_anthropic_tool_mode_output_is_the_first_tool_calls_json() -> None:
    events = _fold(AnthropicStreamParser(tool_mode=True), _tool_stream())
    assert events == [
        UsageReport(20, None),
        TextDelta('{"city": "Pa'),
        TextDelta('ris"}'),
        UsageReport(20, 12),
        Finish("tool_use"),
    ]


def test_anthropic_parser_without_tool_mode_reads_text_only() -> None:
    events = _fold(AnthropicStreamParser(), _tool_stream())
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("Let me answer.")]


def test_anthropic_provider_picks_the_parser_mode_from_the_request() -> None:
    tool = AnthropicProvider(output_config_models=()).new_stream_parser(_request("m"))
    config = AnthropicProvider(output_config_models=("m",)).new_stream_parser(_request("m"))
    assert "".join(e.text for e in _fold(tool, _tool_stream()) if isinstance(e, TextDelta)) == (
        '{"city": "Paris"}'
    )
    assert [e for e in _fold(config, _tool_stream()) if isinstance(e, TextDelta)] == [
        TextDelta("Let me answer.")
    ]


def test_anthropic_refusal_in_tool_mode_carries_the_text_the_model_wrote() -> None:
    stream = [
        _START,
        _event("content_block_delta", index=0, delta={"type": "text_delta", "text": "I can"}),
        _event("content_block_delta", index=0, delta={"type": "text_delta", "text": "not."}),
        _event("message_delta", delta={"stop_reason": "refusal"}, usage={"output_tokens": 2}),
        _event("message_stop"),
    ]
    events = _fold(AnthropicStreamParser(tool_mode=True), stream)
    assert events == [
        UsageReport(20, None),
        Refusal("I cannot."),
        UsageReport(20, 2),
        Finish("refusal"),
    ]


def test_anthropic_refusal_stop_reason_is_a_refusal_event() -> None:
    stream = [
        _START,
        _event("content_block_delta", index=0, delta={"type": "text_delta", "text": '{"ci'}),
        _event("message_delta", delta={"stop_reason": "refusal"}, usage={"output_tokens": 2}),
        _event("message_stop"),
    ]
    events = _fold(AnthropicStreamParser(), stream)
    assert events == [
        UsageReport(20, None),
        TextDelta('{"ci'),
        Refusal(""),
        UsageReport(20, 2),
        Finish("refusal"),
    ]


def test_anthropic_tool_input_cut_by_max_tokens_keeps_usage_and_reason() -> None:
    stream = _tool_stream(stop_reason="max_tokens")
    # The tool block is cut: no content_block_stop, no later blocks.
    stream = stream[:7] + stream[-2:]
    events = _fold(AnthropicStreamParser(tool_mode=True), stream)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == '{"city": "Pa'
    assert events[-2:] == [UsageReport(20, 12), Finish("max_tokens")]


def _message(content: list[dict[str, Any]], stop_reason: str) -> bytes:
    return json.dumps(
        {
            "type": "message",
            "content": content,
            "stop_reason": stop_reason,
            "usage": {"input_tokens": 5, "output_tokens": 7},
        }
    ).encode()


def test_anthropic_whole_answer_in_tool_mode_is_the_tool_input_as_json() -> None:
    body = _message(
        [
            {"type": "text", "text": "Here it is."},
            {"type": "tool_use", "id": "t", "name": "Location", "input": {"city": "Paris"}},
        ],
        "tool_use",
    )
    events = AnthropicProvider(output_config_models=()).parse_complete(body, _request("m"))
    assert events == [TextDelta('{"city":"Paris"}'), UsageReport(5, 7), Finish("tool_use")]


def test_anthropic_whole_answer_in_output_config_mode_is_the_text() -> None:
    body = _message([{"type": "text", "text": '{"city":"Paris"}'}], "end_turn")
    events = AnthropicProvider().parse_complete(body, _request("claude-sonnet-4-5"))
    assert events == [TextDelta('{"city":"Paris"}'), UsageReport(5, 7), Finish("end_turn")]


def test_anthropic_whole_refused_answer() -> None:
    body = _message([], "refusal")
    events = AnthropicProvider().parse_complete(body, _request("claude-sonnet-4-5"))
    assert events == [Refusal(""), UsageReport(5, 7), Finish("refusal")]
