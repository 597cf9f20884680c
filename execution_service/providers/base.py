"""Normalized request and stream-event types, and the interface every provider implements.

A provider module (``openai.py``, ``anthropic.py``) is pure: it turns a `ChatRequest` into a
`RequestSpec`, folds server-sent events into `StreamEvent`s, and turns error answers into
`ProviderError`s. All I/O lives in ``call.py``, so adding a provider means one new module
plus one line in ``registry.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from service_kit.secret import Secret

from .errors import ErrorReason, ProviderError

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Finish",
    "OutputSchema",
    "Provider",
    "Refusal",
    "RequestSpec",
    "StreamEvent",
    "StreamParser",
    "TextDelta",
    "UsageReport",
    "api_url",
    "header_safe_key",
]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


# OpenAI's rule for `json_schema.name` (and Anthropic's for a tool name, which is looser).
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class OutputSchema:
    """The JSON Schema the answer must follow, asked of the provider's structured-output mode.

    Kept as compact JSON text so that the request stays immutable and hashable; `schema`
    gives a fresh dict each time. Key order is kept: providers emit properties in the order
    the schema lists them. ``name`` becomes OpenAI's ``json_schema.name`` and the
    forced tool's name in Anthropic's tool mode: 1 to 64 letters, digits, ``_`` or ``-``
    (`OutputSchema.create` derives one from any text).
    """

    name: str
    schema_json: str

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.fullmatch(self.name):
            raise ValueError("an output schema name must be 1-64 letters, digits, '_' or '-'")

    @classmethod
    def create(cls, schema: Mapping[str, object], name: str = "output") -> OutputSchema:
        """From a JSON Schema dict; ``name`` is cleaned to the allowed characters."""
        cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:64] or "output"
        return cls(cleaned, json.dumps(schema, separators=(",", ":")))

    @property
    def schema(self) -> dict[str, object]:
        value: dict[str, object] = json.loads(self.schema_json)
        return value


@dataclass(frozen=True)
class ChatRequest:
    """A provider-neutral chat completion request.

    With ``output_schema`` set, the provider's structured-output mode is asked for JSON
    following it, and the `TextDelta`s carry that JSON text as it arrives (whether it is
    complete and valid is for the caller to check once the stream has finished).
    """

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    output_schema: OutputSchema | None = None


# --- stream events --------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """A piece of output text, in order."""

    text: str


@dataclass(frozen=True)
class Refusal:
    """The model declined to answer; never part of the output text.

    ``text`` is a piece of the provider's refusal message, in order (OpenAI sends it in
    ``refusal`` fields, possibly over several events: join them). Anthropic signals a refusal
    only by its stop reason ``refusal``: then one ``Refusal`` comes before `Finish`, with the
    text the model wrote in forced-tool mode (which is never output there), or empty when the
    text already went out as `TextDelta`. A stream with a
    ``Refusal`` still ends with usage and `Finish`; the caller decides that the answer
    failed.
    """

    text: str


@dataclass(frozen=True)
class UsageReport:
    """Token counts as the provider reported them so far; a later report replaces an earlier one.

    ``input_tokens`` counts only uncached input, so that
    ``cost = input*input_price + cache_read*cache_read_price + cache_write*cache_write_price
    + output*output_price`` holds for both providers (OpenAI's ``prompt_tokens`` includes
    cached tokens; the OpenAI adapter subtracts them). ``output_tokens`` is None while the
    provider has not reported it yet (Anthropic's ``message_start`` carries only a
    placeholder): a stream cut at that point has output that must be estimated.
    """

    input_tokens: int
    output_tokens: int | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class Finish:
    """The stream completed; ``reason`` is the provider's own (``stop``, ``end_turn``, ...).

    Always the last event of a successful stream; a stream without it failed.
    """

    reason: str


StreamEvent = TextDelta | Refusal | UsageReport | Finish


# --- HTTP request description ---------------------------------------------------------------


@dataclass(frozen=True)
class RequestSpec:
    """An HTTP request to send, with secret headers kept apart so that ``repr`` is safe.

    ``secret_headers`` hold the complete header values (``Bearer sk-...``) wrapped in
    `Secret`; `all_headers` reveals them at the single point where the request is sent.
    """

    method: str
    url: str
    headers: Mapping[str, str]
    secret_headers: Mapping[str, Secret] = field(repr=False)
    json: Mapping[str, Any] | None = None

    def all_headers(self) -> dict[str, str]:
        merged = dict(self.headers)
        merged.update({name: value.reveal() for name, value in self.secret_headers.items()})
        return merged


def header_safe_key(api_key: Secret) -> str:
    """The revealed key, after checking it can go into an HTTP header verbatim.

    A key with a newline or a non-ASCII character would make the HTTP layer fail with an
    error that quotes the header value; refuse it here with a message that does not.
    """
    value = api_key.reveal()
    if not value or not all(33 <= ord(ch) <= 126 for ch in value):
        raise ProviderError(
            ErrorReason.PROVIDER_AUTH_FAILED,
            "the API key is empty or contains characters not allowed in an HTTP header",
        )
    return value


def api_url(base_url: str | None, default_base_url: str, path: str) -> str:
    """Join a base URL and an API path that starts with ``/v1/``.

    Rule: a base URL is the API root with or without its ``/v1`` suffix, and with or without
    a trailing slash. ``https://host``, ``https://host/``, ``https://host/v1`` and
    ``https://host/v1/`` all give ``https://host/v1/chat/completions``; a prefix path is
    kept (``https://host/openai/v1`` -> ``https://host/openai/v1/chat/completions``). A
    version segment other than ``v1`` (``/v1beta``) is not recognized and gets ``/v1``
    appended.
    """
    base = (base_url or default_base_url).strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + path


# --- provider interface ---------------------------------------------------------------------


class StreamParser(Protocol):
    """Folds one response's server-sent events into stream events (one parser per attempt)."""

    def feed(self, event: str, data: str) -> list[StreamEvent]:
        """Fold one SSE event (its ``event:`` name, ``""`` if none, and its ``data:`` text).

        Raises ProviderError for an error event or a malformed one.
        """
        ...

    def end(self) -> list[StreamEvent]:
        """The body ended. Returns the final events, or raises ProviderError
        (PROVIDER_STREAM_ERROR) when the stream stopped before it was complete."""
        ...


class Provider(Protocol):
    """One provider's wire format. Implementations are stateless and pure."""

    @property
    def name(self) -> str: ...

    @property
    def default_base_url(self) -> str: ...

    def build_stream_request(
        self,
        request: ChatRequest,
        api_key: Secret,
        base_url: str | None,
        default_max_tokens: int,
    ) -> RequestSpec:
        """The streaming completion request. ``default_max_tokens`` applies where the
        provider requires a limit and the request has none."""
        ...

    def build_key_check(self, api_key: Secret, base_url: str | None) -> RequestSpec:
        """A cheap authenticated request (``GET /v1/models``) that validates a key."""
        ...

    def new_stream_parser(self, request: ChatRequest | None = None) -> StreamParser:
        """A parser for the answer to ``request`` (its output schema decides where the
        output is read from); None reads a plain text answer."""
        ...

    def parse_complete(self, body: bytes, request: ChatRequest | None = None) -> list[StreamEvent]:
        """Events of a whole (non-streamed) JSON answer to ``request``. Some compatible
        endpoints ignore ``stream: true``; this reads their answer instead of failing."""
        ...

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> ProviderError:
        """The error for a non-2xx answer; ``now`` is the wall clock for HTTP-date headers."""
        ...
