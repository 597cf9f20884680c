"""Anthropic messages API: request building and stream folding.

Wire format: ``POST {base}/v1/messages`` with
``x-api-key`` and ``anthropic-version: 2023-06-01``. System messages go into the top-level
``system`` field (joined by blank lines, in order); ``max_tokens`` is required, so the
configured default fills in when the request has none. The base URL rule is `base.api_url`'s.

Usage: ``message_start`` carries the input figures (``input_tokens`` excludes cached tokens;
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` are separate) and an output
placeholder that must not be counted; each ``message_delta`` carries the cumulative
``output_tokens`` (and, in newer API versions, repeated input figures), so the last one wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from execution_service import retry
from service_kit.secret import Secret

from . import _wire
from .base import (
    ChatRequest,
    Finish,
    RequestSpec,
    StreamEvent,
    TextDelta,
    UsageReport,
    api_url,
    header_safe_key,
)
from .errors import ErrorReason, ProviderError, http_error

__all__ = ["AnthropicProvider", "AnthropicStreamParser"]

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


class AnthropicProvider:
    name = "anthropic"
    default_base_url = DEFAULT_BASE_URL

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

    def new_stream_parser(self) -> AnthropicStreamParser:
        return AnthropicStreamParser()

    def parse_complete(self, body: bytes) -> list[StreamEvent]:
        message = _wire.load_object(body, what="message")
        if message.get("type") == "error":
            raise _event_error(_wire.obj(message.get("error")))
        events: list[StreamEvent] = []
        blocks = message.get("content")
        text = "".join(
            _wire.text(block.get("text")) or ""
            for block in (blocks if isinstance(blocks, list) else [])
            if isinstance(block, dict) and block.get("type") == "text"
        )
        if text:
            events.append(TextDelta(text))
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
    """Folds message stream events; ``Finish`` is emitted on ``message_stop``."""

    def __init__(self) -> None:
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
        if kind == "content_block_delta":
            delta = _wire.obj(payload.get("delta"))
            text = _wire.text(delta.get("text"))
            if delta.get("type") == "text_delta" and text:
                return [TextDelta(text)]
            return []  # tool input, thinking, citations: not part of the text output
        if kind == "message_delta":
            reason = _wire.text(_wire.obj(payload.get("delta")).get("stop_reason"))
            if reason:
                self._stop_reason = reason
            return self._usage(_wire.obj(payload.get("usage")), False)
        if kind == "message_stop":
            self._done = True
            return [Finish(self._stop_reason or "unknown")]
        if kind == "error":
            raise _event_error(_wire.obj(payload.get("error")))
        # ping, content_block_start/stop, and event types added later: nothing to fold.
        return []

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
