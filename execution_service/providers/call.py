"""The provider HTTP call: a streamed completion with retry, and a key check.

This is the only module of the provider layer that does I/O. The HTTP client is created once
by the service and passed in (tests point it at a local server); clock, wall clock, sleep and
randomness are parameters so that retry timing is tested without waiting.

Retry happens only before the first `TextDelta` reaches the caller. Events that precede it
(Anthropic's input usage) are held back until then, so the caller sees the events of exactly
one attempt. Once text has flowed, any failure is raised with ``retryable=False`` and the
caller records the partial output.

`stream_chat` is an async generator: close it with ``aclose()`` (or ``contextlib.aclosing``)
when abandoning it early; closing or cancelling it closes the HTTP response at once.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import httpx
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder  # the parts EventSource is made of

from execution_service import retry
from service_kit.secret import Secret

from .base import ChatRequest, Provider, Refusal, RequestSpec, StreamEvent, TextDelta
from .errors import DeadlineExceeded, ErrorReason, ProviderError, translate_transport_error

__all__ = ["KeyCheckResult", "check_key", "stream_chat"]

# Error bodies are a few hundred bytes; a whole (non-streamed) completion can be large but
# not unbounded. Reading stops at these sizes so a faulty endpoint cannot exhaust memory.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_COMPLETE_BODY_BYTES = 16 * 1024 * 1024
MAX_MODEL_LIST_BYTES = 1024 * 1024


async def stream_chat(
    client: httpx.AsyncClient,
    provider: Provider,
    request: ChatRequest,
    api_key: Secret,
    *,
    base_url: str | None,
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
    default_max_tokens: int,
    deadline: float | None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
    on_attempt: Callable[[int], None] | None = None,
    on_retry: Callable[[ProviderError], None] | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """Stream a chat completion, retrying transient failures before any text has flowed.

    Args:
        deadline: the caller's deadline on ``clock``'s scale (``time.monotonic`` seconds),
            or None. A retry whose sleep would reach it raises `DeadlineExceeded` at once.
        on_attempt: called with 1, 2, ... as each attempt starts; the last number is the
            count of attempts made, whatever the outcome.
        on_retry: called with each failure that is about to be retried, before the wait.

    Yields `TextDelta`, `Refusal` (the model declined: never output text), `UsageReport`
    (latest replaces earlier) and finally `Finish`.
    Raises `ProviderError` (`DeadlineExceeded` for the deadline); never leaks the key.
    """
    spec = provider.build_stream_request(request, api_key, base_url, default_max_tokens)
    attempt = 0
    while True:
        attempt += 1
        if on_attempt is not None:
            on_attempt(attempt)
        held: list[StreamEvent] = []
        delivered = False
        try:
            events = _attempt_events(client, provider, request, spec, wall_clock)
            async with aclosing(events):
                async for event in events:
                    if delivered:
                        yield event
                    elif isinstance(event, TextDelta):
                        delivered = True
                        for earlier in held:
                            yield earlier
                        held.clear()
                        yield event
                    else:
                        held.append(event)
        except ProviderError as err:
            err.redact(api_key.reveal())
            failure = err
        else:
            for event in held:  # an answer without any text
                yield event
            return

        if delivered:
            # Output already reached the caller: a repeat would duplicate it.
            failure.retryable = False
            raise failure
        if not failure.retryable or attempt >= policy.max_attempts:
            raise failure
        delay = retry.next_delay(policy, attempt, failure.retry_after, rand)
        if retry.should_give_up(delay, clock(), deadline):
            raise DeadlineExceeded(
                f"retry {attempt + 1} would wait {delay:.3g} s, past the caller's deadline; "
                f"last error: {failure}",
                last_error=failure,
            ) from failure
        if on_retry is not None:
            on_retry(failure)
        await sleep(delay)


async def _attempt_events(
    client: httpx.AsyncClient,
    provider: Provider,
    request: ChatRequest,
    spec: RequestSpec,
    wall_clock: Callable[[], float],
) -> AsyncGenerator[StreamEvent, None]:
    """One HTTP attempt, as events; every failure surfaces as ProviderError."""
    response_started = False
    try:
        async with client.stream(
            spec.method, _url(spec.url), headers=spec.all_headers(), json=spec.json
        ) as response:
            response_started = True
            if not response.is_success:
                raise await _status_error(provider, response, wall_clock)
            content_type = response.headers.get("content-type", "").partition(";")[0]
            content_type = content_type.strip().lower()
            if content_type == "application/json":
                body = await _read_capped(response, MAX_COMPLETE_BODY_BYTES, strict=True)
                for event in provider.parse_complete(body, request):
                    yield event
                return
            if content_type != "text/event-stream":
                raise ProviderError(
                    ErrorReason.PROVIDER_STREAM_ERROR,
                    f"unexpected content type {content_type!r} in a streamed answer",
                    status=response.status_code,
                )
            parser = provider.new_stream_parser(request)
            async with aclosing(_sse_batches(response)) as batches:
                async for batch in batches:
                    events: list[StreamEvent] = []
                    failure: ProviderError | None = None
                    try:
                        for sse in batch:
                            events += parser.feed(sse.event, sse.data)
                    except ProviderError as err:
                        # Text that came before the failure in the same read still goes out
                        # first, as it would have in a read of its own: once it has, the
                        # failure is not retried over output the provider already produced.
                        failure = err
                    for event in _coalesce(events):
                        yield event
                    if failure is not None:
                        raise failure
            for event in parser.end():
                yield event
    except httpx.HTTPError as exc:
        raise translate_transport_error(exc, response_started=response_started) from exc


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> httpx.URL:
    """Parsed once per endpoint (a few per deployment), not on every request (~40 us)."""
    return httpx.URL(url)


async def _sse_batches(response: httpx.Response) -> AsyncGenerator[list[ServerSentEvent], None]:
    """Server-sent events grouped by the network read that brought them.

    Text that arrived together travels on together: one event per read instead of one per
    provider chunk, so a burst of twenty chunks costs the layers above (and the gRPC stream)
    one message, while a slow stream still flows chunk by chunk as it arrives.
    """
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    # Server-sent events are UTF-8 by definition: decode directly instead of letting httpx
    # sniff a charset from the headers on every read.
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async for chunk in response.aiter_bytes():
        text = utf8.decode(chunk)
        if not text:
            continue
        batch = [sse for line in lines.decode(text) if (sse := decoder.decode(line)) is not None]
        if batch:
            yield batch
    rest = utf8.decode(b"", final=True)
    last_lines = (lines.decode(rest) if rest else []) + lines.flush()
    tail = [sse for line in last_lines if (sse := decoder.decode(line)) is not None]
    if tail:
        yield tail


def _coalesce(events: list[StreamEvent]) -> list[StreamEvent]:
    """Merge adjacent TextDeltas, and adjacent Refusals; every other event keeps its place."""
    merged: list[StreamEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta):
            merged[-1] = TextDelta(last.text + event.text)
        elif isinstance(event, Refusal) and isinstance(last, Refusal):
            merged[-1] = Refusal(last.text + event.text)
        else:
            merged.append(event)
    return merged


async def _status_error(
    provider: Provider,
    response: httpx.Response,
    wall_clock: Callable[[], float],
) -> ProviderError:
    try:
        body = await _read_capped(response, MAX_ERROR_BODY_BYTES, strict=False)
    except httpx.HTTPError:
        # The status already tells what happened; a body cut short only loses the message.
        body = b""
    return provider.parse_error(response.status_code, response.headers, body, wall_clock())


async def _read_capped(response: httpx.Response, limit: int, *, strict: bool) -> bytes:
    """Read at most ``limit`` bytes; past it, truncate (``strict=False``) or fail."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            if strict:
                raise ProviderError(
                    ErrorReason.PROVIDER_STREAM_ERROR,
                    f"the provider's answer exceeds {limit} bytes",
                    status=response.status_code,
                )
            break
    return b"".join(parts)[:limit]


# --- key check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCheckResult:
    """The provider's verdict on a key.

    ``valid`` is True for a 2xx answer shaped as the provider's model list (both providers
    answer ``{"data": [...], ...}``): any other 2xx comes from something that is not the
    provider, and says nothing about the key. A definitive refusal (any error the policy would not
    retry: 401, 403, 404, insufficient_quota, a malformed key) gives ``valid=False`` with its
    ``reason``. Transient failures (429, 5xx, network) are not a verdict: `check_key` raises
    ProviderError for them instead.
    """

    valid: bool
    reason: ErrorReason | None
    message: str
    status: int


async def check_key(
    client: httpx.AsyncClient,
    provider: Provider,
    api_key: Secret,
    base_url: str | None,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> KeyCheckResult:
    """Validate a key with the provider's cheapest authenticated call (``GET /v1/models``).

    One attempt, no retry: the caller is a person or a setup script waiting for a verdict.
    """
    try:
        spec = provider.build_key_check(api_key, base_url)
        response_started = False
        try:
            async with client.stream(spec.method, spec.url, headers=spec.all_headers()) as response:
                response_started = True
                if response.is_success:
                    body = await _read_capped(response, MAX_MODEL_LIST_BYTES, strict=False)
                    if _is_model_list(body):
                        return KeyCheckResult(
                            True, None, "the key was accepted", response.status_code
                        )
                    return KeyCheckResult(
                        False,
                        ErrorReason.PROVIDER_STREAM_ERROR,
                        "the endpoint's answer is not the provider's model list",
                        response.status_code,
                    )
                body = await _read_capped(response, MAX_ERROR_BODY_BYTES, strict=False)
                raise provider.parse_error(
                    response.status_code, response.headers, body, wall_clock()
                )
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, response_started=response_started) from exc
    except ProviderError as err:
        err.redact(api_key.reveal())
        if err.retryable:
            raise
        return KeyCheckResult(False, err.reason, err.message, err.status)


def _is_model_list(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("data"), list)
