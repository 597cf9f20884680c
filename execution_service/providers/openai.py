"""OpenAI chat completions (and compatible endpoints): request building and stream folding.

Wire format: ``POST {base}/v1/chat/completions`` with
``Authorization: Bearer <key>``, ``stream: true`` and ``stream_options.include_usage`` so the
last chunk before ``data: [DONE]`` carries the usage. The base URL rule is `base.api_url`'s.

Usage: OpenAI's ``prompt_tokens`` INCLUDES ``prompt_tokens_details.cached_tokens``. We report
``input_tokens = prompt_tokens - cached_tokens`` and ``cache_read_tokens = cached_tokens``
so that each token is priced once: at the input price or at the cache-read price.

Structured output: a request with an output schema sends ``response_format`` with
``type: json_schema`` and ``strict: true``; the JSON arrives as ordinary content (streamed
as ``delta.content`` pieces). A refusal arrives in ``refusal`` fields instead of content and
becomes `Refusal` events. ``finish_reason`` ``length`` / ``content_filter`` can cut the JSON;
the stream is still read to its usage chunk, and the caller finds the JSON incomplete.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

__all__ = ["OpenAIProvider", "OpenAIStreamParser"]

DEFAULT_BASE_URL = "https://api.openai.com"
_DONE = "[DONE]"


class OpenAIProvider:
    name = "openai"
    default_base_url = DEFAULT_BASE_URL

    def build_stream_request(
        self,
        request: ChatRequest,
        api_key: Secret,
        base_url: str | None,
        default_max_tokens: int,
    ) -> RequestSpec:
        """``default_max_tokens`` is not applied: OpenAI does not require a limit, and the
        model's own maximum is what a caller without a limit expects."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            # `max_tokens` rather than `max_completion_tokens`: every compatible endpoint
            # understands it, and so do all the OpenAI models in the price table.
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.output_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.output_schema.name,
                    "strict": True,
                    "schema": request.output_schema.schema,
                },
            }
        return RequestSpec(
            method="POST",
            url=api_url(base_url, DEFAULT_BASE_URL, "/v1/chat/completions"),
            headers={"accept": "text/event-stream"},
            secret_headers=_auth(api_key),
            json=body,
        )

    def build_key_check(self, api_key: Secret, base_url: str | None) -> RequestSpec:
        return RequestSpec(
            method="GET",
            url=api_url(base_url, DEFAULT_BASE_URL, "/v1/models"),
            headers={"accept": "application/json"},
            secret_headers=_auth(api_key),
        )

    def new_stream_parser(self, request: ChatRequest | None = None) -> OpenAIStreamParser:
        """Structured or not, the output is the content: the request changes nothing here."""
        return OpenAIStreamParser()

    def parse_complete(self, body: bytes, request: ChatRequest | None = None) -> list[StreamEvent]:
        message = _wire.load_object(body, what="completion")
        if "error" in message:
            raise _stream_error(_wire.obj(message.get("error")))
        choice = _first_choice(message)
        events = _message_events(_wire.obj(choice.get("message")))
        usage = _usage(message.get("usage"))
        if usage is not None:
            events.append(usage)
        events.append(Finish(_wire.text(choice.get("finish_reason")) or "unknown"))
        return events

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> ProviderError:
        error = _wire.error_body(body)
        return http_error(
            status,
            headers,
            error_type=_wire.text(error.get("type")),
            error_code=_wire.text(error.get("code")),
            message=_wire.text(error.get("message")) or _wire.fallback_message(status, body),
            now=now,
        )


class OpenAIStreamParser:
    """Folds ``chat.completion.chunk`` events. Only choice 0 is read (we never ask for n>1).

    ``Finish`` is held back until ``[DONE]`` so that it comes after the usage chunk.
    """

    def __init__(self) -> None:
        self._finish_reason: str | None = None
        self._done = False

    def feed(self, event: str, data: str) -> list[StreamEvent]:
        # Runs for every chunk of every stream: each step below is taken only when the
        # chunk has something for it (most carry one content piece, usage null).
        if self._done:
            return []
        data = data.strip()
        if not data:
            return []
        if data == _DONE:
            self._done = True
            return [Finish(self._finish_reason or "unknown")]
        chunk = _wire.load_object(data, what="stream chunk")
        if "error" in chunk:
            raise _stream_error(_wire.obj(chunk.get("error")))
        choice = _first_choice(chunk)
        delta = choice.get("delta")
        events = _message_events(delta) if delta and isinstance(delta, dict) else []
        reason = choice.get("finish_reason")
        if reason and isinstance(reason, str):
            self._finish_reason = reason
        if chunk.get("usage"):  # null or absent on every chunk but the last
            usage = _usage(chunk["usage"])
            if usage is not None:
                events.append(usage)
        return events

    def end(self) -> list[StreamEvent]:
        if self._done:
            return []
        if self._finish_reason is not None:
            # The text is complete but `[DONE]` (and perhaps the usage chunk) never came:
            # some compatible servers omit it. Accept; missing usage gets estimated.
            self._done = True
            return [Finish(self._finish_reason)]
        raise ProviderError(
            ErrorReason.PROVIDER_STREAM_ERROR,
            "the stream ended before the completion finished",
            retryable=True,
        )


def _auth(api_key: Secret) -> dict[str, Secret]:
    return {"authorization": Secret("Bearer " + header_safe_key(api_key))}


def _message_events(message: Mapping[str, Any]) -> list[StreamEvent]:
    """The content and refusal of a message or a delta (empty pieces carry nothing)."""
    events: list[StreamEvent] = []
    content = _wire.text(message.get("content"))
    if content:
        events.append(TextDelta(content))
    refusal = _wire.text(message.get("refusal"))
    if refusal:
        events.append(Refusal(refusal))
    return events


def _first_choice(message: Mapping[str, Any]) -> dict[str, Any]:
    choices = message.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            choice = _wire.obj(choice)
            if choice.get("index", 0) == 0:
                return choice
    return {}


def _usage(value: Any) -> UsageReport | None:
    usage = _wire.obj(value)
    prompt = _wire.count(usage.get("prompt_tokens"))
    completion = _wire.count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    cached = _wire.count(_wire.obj(usage.get("prompt_tokens_details")).get("cached_tokens")) or 0
    cached = min(cached, prompt)
    return UsageReport(
        input_tokens=prompt - cached,
        output_tokens=completion,
        cache_read_tokens=cached,
    )


def _stream_error(error: Mapping[str, Any]) -> ProviderError:
    """An ``{"error": ...}`` object inside a 200 answer (OpenAI sends these mid-stream)."""
    code = _wire.text(error.get("code")) or _wire.text(error.get("type"))
    message = _wire.text(error.get("message")) or "the provider reported an error in the stream"
    if code == "insufficient_quota":
        reason, retryable = ErrorReason.PROVIDER_QUOTA_EXCEEDED, False
    elif code in ("rate_limit_exceeded", "tokens", "requests"):
        reason, retryable = ErrorReason.PROVIDER_RATE_LIMITED, True
    else:
        # Treated like a 5xx: a server-side failure after the request was accepted.
        reason, retryable = ErrorReason.PROVIDER_STREAM_ERROR, True
    return ProviderError(reason, message, retryable=retryable, provider_code=code)
