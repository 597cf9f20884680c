"""Anthropic messages API: request building and stream folding.

Wire format: ``POST {base}/v1/messages`` with
``x-api-key`` and ``anthropic-version: 2023-06-01``. System messages go into the top-level
``system`` field (joined by blank lines, in order); ``max_tokens`` is required, so the
configured default fills in when the request has none. The base URL rule is `base.api_url`'s.

Usage: ``message_start`` carries the input figures (``input_tokens`` excludes cached tokens;
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are separate) and an output
placeholder that must not be counted; each ``message_delta`` carries the cumulative
``output_tokens`` (and, in newer API versions, repeated input figures), so the last one wins.

Structured output, two modes chosen by model (`structured_output_mode`):

* ``output_config``: ``"output_config": {"format": {"type": "json_schema", "schema": ...}}``
  for the models listed in ``structured_outputs.json``; the JSON arrives as ordinary text.
* ``tool``: every other model gets one tool whose ``input_schema`` is the output schema and
  ``tool_choice`` forcing it; the output is that tool call's input, streamed as
  ``input_json_delta.partial_json`` pieces (non-streamed: the block's ``input`` object). Only
  the first ``tool_use`` block counts. A text block the model writes before the call is
  commentary, not output (it would make the output invalid JSON): it is dropped, unless the
  answer ends with ``stop_reason: "refusal"``, when it becomes the refusal's text.

``stop_reason: "refusal"`` becomes a `Refusal` event, in every mode (in ``output_config``
mode its text is empty: text already streamed went out as output).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any, Literal

from execution_service import retry
from service_kit.secret import Secret

from . import _wire
from .base import (
    ChatRequest,
    Finish,
    Refusal,
    RequestSpec,
    StreamEvent,
    TextDelta,
    UsageReport,
    api_url,
    header_safe_key,
)
from .errors import ErrorReason, ProviderError, http_error

__all__ = [
    "OUTPUT_CONFIG_MODELS",
    "AnthropicProvider",
    "AnthropicStreamParser",
    "StructuredMode",
    "structured_output_mode",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

# Anthropic's documented error types and the HTTP status each stands for; used to classify an
# `error` event that arrives inside a 200 stream.
_STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


StructuredMode = Literal["output_config", "tool"]
_TOOL_DESCRIPTION = "Give your answer by calling this tool; its input is the answer."


def _load_output_config_models() -> tuple[str, ...]:
    document = json.loads(
        resources.files(__package__).joinpath("structured_outputs.json").read_text("utf-8")
    )
    return tuple(document["anthropic_output_config_models"])


OUTPUT_CONFIG_MODELS: tuple[str, ...] = _load_output_config_models()
"""Model families with structured outputs (from ``structured_outputs.json``)."""


def structured_output_mode(
    model: str, output_config_models: Iterable[str] = OUTPUT_CONFIG_MODELS
) -> StructuredMode:
    """``output_config`` when ``model`` is one of the families (exactly, or followed by
    ``-`` and a date or version), else ``tool``. Tool mode needs an object at the top of
    the schema (a tool's input is an object)."""
    for family in output_config_models:
        if model == family or model.startswith(family + "-"):
            return "output_config"
    return "tool"


class AnthropicProvider:
    name = "anthropic"
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, *, output_config_models: Iterable[str] = OUTPUT_CONFIG_MODELS) -> None:
        self.output_config_models = tuple(output_config_models)

    def structured_mode(self, request: ChatRequest | None) -> StructuredMode | None:
        """How ``request``'s output schema is asked for; None without one."""
        if request is None or request.output_schema is None:
            return None
        return structured_output_mode(request.model, self.output_config_models)

    def build_stream_request(
        self,
        request: ChatRequest,
        api_key: Secret,
        base_url: str | None,
        default_max_tokens: int,
    ) -> RequestSpec:
        system = [m.content for m in request.messages if m.role == "system"]
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system"
            ],
            "max_tokens": (
                request.max_tokens if request.max_tokens is not None else default_max_tokens
            ),
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        schema = request.output_schema
        mode = self.structured_mode(request)
        if schema is not None and mode == "output_config":
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema.schema}}
        elif schema is not None:
            body["tools"] = [
                {
                    "name": schema.name,
                    "description": _TOOL_DESCRIPTION,
                    "input_schema": schema.schema,
                }
            ]
            body["tool_choice"] = {"type": "tool", "name": schema.name}
        return RequestSpec(
            method="POST",
            url=api_url(base_url, DEFAULT_BASE_URL, "/v1/messages"),
            headers={"anthropic-version": API_VERSION, "accept": "text/event-stream"},
            secret_headers=_auth(api_key),
            json=body,
        )

    def build_key_check(self, api_key: Secret, base_url: str | None) -> RequestSpec:
        return RequestSpec(
            method="GET",
            url=api_url(base_url, DEFAULT_BASE_URL, "/v1/models"),
            headers={"anthropic-version": API_VERSION, "accept": "application/json"},
            secret_headers=_auth(api_key),
        )

    def new_stream_parser(self, request: ChatRequest | None = None) -> AnthropicStreamParser:
        return AnthropicStreamParser(tool_mode=self.structured_mode(request) == "tool")

    def parse_complete(self, body: bytes, request: ChatRequest | None = None) -> list[StreamEvent]:
        message = _wire.load_object(body, what="message")
        if message.get("type") == "error":
            raise _event_error(_wire.obj(message.get("error")))
        events: list[StreamEvent] = []
        raw_blocks = message.get("content")
        blocks = [_wire.obj(b) for b in (raw_blocks if isinstance(raw_blocks, list) else [])]
        texts = "".join(_wire.text(b.get("text")) or "" for b in blocks if b.get("type") == "text")
        text, commentary = texts, ""
        if self.structured_mode(request) == "tool":
            tool_input = next((b.get("input") for b in blocks if b.get("type") == "tool_use"), None)
            text = "" if tool_input is None else _compact_json(tool_input)
            commentary = texts  # not output; the refusal's words if it is one
        if text:
            events.append(TextDelta(text))
        if message.get("stop_reason") == "refusal":
            events.append(Refusal(commentary))
        usage = _wire.obj(message.get("usage"))
        input_tokens = _wire.count(usage.get("input_tokens"))
        if input_tokens is not None:
            events.append(
                UsageReport(
                    input_tokens=input_tokens,
                    output_tokens=_wire.count(usage.get("output_tokens")),
                    cache_read_tokens=_wire.count(usage.get("cache_read_input_tokens")) or 0,
                    cache_write_tokens=_wire.count(usage.get("cache_creation_input_tokens")) or 0,
                )
            )
        events.append(Finish(_wire.text(message.get("stop_reason")) or "unknown"))
        return events

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> ProviderError:
        error = _wire.error_body(body)
        return http_error(
            status,
            headers,
            error_type=_wire.text(error.get("type")),
            error_code=None,
            message=_wire.text(error.get("message")) or _wire.fallback_message(status, body),
            now=now,
        )


class AnthropicStreamParser:
    """Folds message stream events; ``Finish`` is emitted on ``message_stop``.

    With ``tool_mode`` the output is the partial JSON of the first ``tool_use`` block, and
    text blocks are held back (the text of a refusal, should the answer be one); otherwise
    the output is the text blocks.
    """

    def __init__(self, *, tool_mode: bool = False) -> None:
        self._tool_mode = tool_mode
        self._tool_block: int | None = None  # index of the tool_use block read, in tool mode
        self._commentary: list[str] = []  # text blocks in tool mode (not output)
        self._input: int | None = None
        self._output: int | None = None
        self._cache_read = 0
        self._cache_write = 0
        self._stop_reason: str | None = None
        self._done = False

    def feed(self, event: str, data: str) -> list[StreamEvent]:
        if self._done or not data.strip():
            return []
        payload = _wire.load_object(data, what="stream event")
        # The JSON `type` is authoritative (the SDK's choice too); the SSE name is a copy.
        kind = _wire.text(payload.get("type")) or event
        if kind == "message_start":
            return self._usage(_wire.obj(_wire.obj(payload.get("message")).get("usage")), True)
        if kind == "content_block_start" and self._tool_mode and self._tool_block is None:
            if _wire.obj(payload.get("content_block")).get("type") == "tool_use":
                self._tool_block = _wire.count(payload.get("index"))
            return []
        if kind == "content_block_delta":
            return self._delta(payload)
        if kind == "message_delta":
            reason = _wire.text(_wire.obj(payload.get("delta")).get("stop_reason"))
            events: list[StreamEvent] = []
            if reason:
                self._stop_reason = reason
                if reason == "refusal":
                    events.append(Refusal("".join(self._commentary)))
            return events + self._usage(_wire.obj(payload.get("usage")), False)
        if kind == "message_stop":
            self._done = True
            return [Finish(self._stop_reason or "unknown")]
        if kind == "error":
            raise _event_error(_wire.obj(payload.get("error")))
        # ping, content_block_start/stop, and event types added later: nothing to fold.
        return []

    def _delta(self, payload: Mapping[str, Any]) -> list[StreamEvent]:
        delta = _wire.obj(payload.get("delta"))
        if self._tool_mode:
            piece = _wire.text(delta.get("partial_json"))
            ours = self._tool_block is not None and payload.get("index") == self._tool_block
            if delta.get("type") == "input_json_delta" and ours and piece:
                return [TextDelta(piece)]
            text = _wire.text(delta.get("text"))
            if delta.get("type") == "text_delta" and text:
                self._commentary.append(text)  # the refusal's words, if it turns out one
            return []  # not the output
        text = _wire.text(delta.get("text"))
        if delta.get("type") == "text_delta" and text:
            return [TextDelta(text)]
        return []  # tool input, thinking, citations: not part of the text output

    def end(self) -> list[StreamEvent]:
        if self._done:
            return []
        if self._stop_reason is not None:
            # Everything but `message_stop` arrived, usage included: the answer is complete.
            self._done = True
            return [Finish(self._stop_reason)]
        raise ProviderError(
            ErrorReason.PROVIDER_STREAM_ERROR,
            "the stream ended before the message finished",
            retryable=True,
        )

    def _usage(self, usage: Mapping[str, Any], is_start: bool) -> list[StreamEvent]:
        input_tokens = _wire.count(usage.get("input_tokens"))
        if input_tokens is not None:
            self._input = input_tokens
        cache_read = _wire.count(usage.get("cache_read_input_tokens"))
        if cache_read is not None:
            self._cache_read = cache_read
        cache_write = _wire.count(usage.get("cache_creation_input_tokens"))
        if cache_write is not None:
            self._cache_write = cache_write
        if not is_start:
            # message_start's output_tokens is a placeholder (1); only deltas count.
            output = _wire.count(usage.get("output_tokens"))
            if output is not None:
                self._output = output
        if self._input is None:
            return []
        return [UsageReport(self._input, self._output, self._cache_read, self._cache_write)]


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _auth(api_key: Secret) -> dict[str, Secret]:
    return {"x-api-key": Secret(header_safe_key(api_key))}


def _event_error(error: Mapping[str, Any]) -> ProviderError:
    """An error delivered inside a 200 answer: ``status`` stays 0 (there was no error status),
    the HTTP status the type stands for decides retryability."""
    error_type = _wire.text(error.get("type"))
    equivalent = _STATUS_OF_ERROR_TYPE.get(error_type or "", 500)
    return ProviderError(
        (
            ErrorReason.PROVIDER_OVERLOADED
            if error_type == "overloaded_error"
            else ErrorReason.PROVIDER_STREAM_ERROR
        ),
        _wire.text(error.get("message")) or "the provider reported an error in the stream",
        retryable=retry.classify(equivalent, {}, error_type),
        provider_code=error_type,
    )
