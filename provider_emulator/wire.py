"""What the two provider wire formats have in common: the value types the app passes to
them and the interface each format module implements."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .schema_gen import generate, violate
from .textgen import Pieces

_ID_PREFIX = os.urandom(5).hex()
_ID_COUNTER = itertools.count(1)


def new_id(prefix: str) -> str:
    """A unique, cheap id: `prefix` + a per-process random part + a counter."""
    return f"{prefix}{_ID_PREFIX}{next(_ID_COUNTER):014x}"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A complete HTTP error answer in one provider's format."""

    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A request for JSON following a schema (OpenAI ``response_format`` json_schema;
    Anthropic ``output_config`` / ``output_format``, or a forced tool call when `tool_name`
    is set). `document` is the valid answer `schema_gen` made for it, as compact JSON."""

    schema_json: str
    document: str
    tool_name: str | None = None

    @classmethod
    def for_schema(cls, schema: Any, tool_name: str | None = None) -> StructuredOutput:
        """Raises SchemaGenError for a schema no document can be made for."""
        document = json.dumps(generate(schema), separators=(",", ":"), ensure_ascii=False)
        return cls(json.dumps(schema), document, tool_name)

    def violation(self) -> str:
        """Valid JSON that breaks the schema (the schema-violation fault)."""
        return json.dumps(violate(json.loads(self.schema_json)), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class GenRequest:
    """The parts of a valid generation request the emulator acts on."""

    model: str
    stream: bool
    max_tokens: int | None
    input_tokens: int
    include_usage: bool = False
    output: StructuredOutput | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """One generated answer, ready to be encoded in either format."""

    request_id: str
    message_id: str
    created: int
    model: str
    pieces: Pieces
    count: int  # content chunks in the answer (max_tokens applied)
    truncated: bool  # max_tokens cut the answer short
    input_tokens: int
    cache_read: int
    cache_write: int
    include_usage: bool
    output: StructuredOutput | None = None  # the answer is JSON for this request
    refusal: bool = False  # the pieces are a refusal, not an answer

    @property
    def tool_name(self) -> str | None:
        """The forced tool whose input carries the answer (Anthropic tool mode)."""
        return None if self.output is None or self.refusal else self.output.tool_name

    @property
    def text(self) -> str:
        return self.pieces.text(self.count)


@dataclass(frozen=True, slots=True)
class StreamEvents:
    """A stream as encoded SSE events: before the content, one per content chunk, after."""

    head: bytes
    content: Sequence[bytes]
    tail: bytes


class WireFormat(Protocol):
    """One provider's HTTP wire format."""

    name: str
    request_id_header: str
    json_content_type: str
    stream_content_type: str
    models_body: bytes
    malformed_event: bytes
    message_id_prefix: str
    request_id_prefix: str

    def api_key(self, headers: Mapping[str, str]) -> str | None: ...

    def check_headers(self, headers: Mapping[str, str], request_id: str) -> ErrorReply | None: ...

    def auth_error(self, key: str | None, request_id: str) -> ErrorReply: ...

    def invalid_json(self, request_id: str) -> ErrorReply: ...

    def parse(self, body: Any, request_id: str) -> GenRequest | ErrorReply: ...

    def error(
        self,
        status: int,
        request_id: str,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> ErrorReply: ...

    def midstream_error_status(self, error_type: str | None) -> int: ...

    def completion_body(self, answer: Answer) -> bytes: ...

    def stream_events(self, answer: Answer) -> StreamEvents: ...

    def stream_error_event(self, error_type: str | None, message: str | None) -> bytes: ...
