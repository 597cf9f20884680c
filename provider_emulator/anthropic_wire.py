"""The Anthropic messages wire format (shapes follow recorded real traffic)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from .schema_gen import SchemaGenError
from .textgen import Pieces, count_input_tokens
from .wire import Answer, ErrorReply, GenRequest, StreamEvents, StructuredOutput

STATUS_OF_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
TYPE_OF_STATUS = {status: type_ for type_, status in STATUS_OF_TYPE.items()}
_MESSAGES = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of requests has exceeded your rate limit.",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}
_MODELS = (
    ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z"),
    ("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22T00:00:00Z"),
    ("claude-3-haiku-20240307", "Claude Haiku 3", "2024-03-07T00:00:00Z"),
)
_NO_RETRY = {"x-should-retry": "false"}

_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_BLOCK_START = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
    b"\n\n" + _PING
)
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


@lru_cache(maxsize=256)
def _delta_events(pieces: Pieces, tool: bool = False) -> tuple[bytes, ...]:
    """One content_block_delta per piece: text, or (in tool mode) the tool's partial JSON."""
    kind = b'"input_json_delta","partial_json":' if tool else b'"text_delta","text":'
    return tuple(
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":' + kind + piece + b"}}\n\n"
        for piece in pieces.json
    )


def _tool_block_start(answer: Answer) -> bytes:
    block: dict[str, Any] = {
        "type": "tool_use",
        "id": _tool_use_id(answer),
        "name": answer.tool_name,
        "input": {},
    }
    start = {"type": "content_block_start", "index": 0, "content_block": block}
    first = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": ""},
    }
    return (
        b"event: content_block_start\ndata: "
        + _compact(start)
        + b"\n\n"
        + _PING
        + b"event: content_block_delta\ndata: "
        + _compact(first)
        + b"\n\n"
    )


def _tool_use_id(answer: Answer) -> str:
    return "toolu_" + answer.message_id.removeprefix("msg_")


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class AnthropicWire:
    """`POST /v1/messages`, headers `x-api-key` (or a bearer token) and
    `anthropic-version`."""

    name = "anthropic"
    request_id_header = "request-id"
    json_content_type = "application/json"
    stream_content_type = "text/event-stream; charset=utf-8"
    message_id_prefix = "msg_01"
    request_id_prefix = "req_011C"
    models_body = _compact(
        {
            "data": [
                {"type": "model", "id": id_, "display_name": name, "created_at": created}
                for id_, name, created in _MODELS
            ],
            "has_more": False,
            "first_id": _MODELS[0][0],
            "last_id": _MODELS[-1][0],
        }
    )
    malformed_event = (
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, {\n\n'
    )

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """`x-api-key`, or else a bearer token: anthropic SDK 2.x sends its API key as
        `Authorization: Bearer <key>`."""
        key = headers.get("x-api-key")
        if key is not None:
            return key
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _reply(
        self,
        status: int,
        type_: str,
        message: str,
        request_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> ErrorReply:
        body = {"type": "error", "error": {"type": type_, "message": message}}
        body["request_id"] = request_id
        return ErrorReply(status, _compact(body), self.json_content_type, headers or {})

    def check_headers(self, headers: Mapping[str, str], request_id: str) -> ErrorReply | None:
        if headers.get("anthropic-version"):
            return None
        return self._invalid("anthropic-version: header is required", request_id)

    def _invalid(self, message: str, request_id: str) -> ErrorReply:
        return self._reply(400, "invalid_request_error", message, request_id, _NO_RETRY)

    def auth_error(self, key: str | None, request_id: str) -> ErrorReply:
        message = "x-api-key header is required" if key is None else "invalid x-api-key"
        return self._reply(401, "authentication_error", message, request_id, _NO_RETRY)

    def invalid_json(self, request_id: str) -> ErrorReply:
        return self._invalid("There was an error parsing the body of your request", request_id)

    def parse(self, body: Any, request_id: str) -> GenRequest | ErrorReply:
        if not isinstance(body, dict):
            return self.invalid_json(request_id)
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return self._invalid(f"{name}: Field required", request_id)
        model, max_tokens, messages = body["model"], body["max_tokens"], body["messages"]
        if not isinstance(model, str) or not model:
            return self._invalid("model: Input should be a valid string", request_id)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return self._invalid(
                "max_tokens: Input should be greater than or equal to 1", request_id
            )
        if not isinstance(messages, list):
            return self._invalid("messages: Input should be a valid list", request_id)
        if not messages:
            return self._invalid("messages: at least one message is required", request_id)
        for i, item in enumerate(messages):
            role = item.get("role") if isinstance(item, dict) else None
            if role == "system":
                return self._invalid(
                    'messages: Unexpected role "system". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.',
                    request_id,
                )
            if role not in ("user", "assistant"):
                return self._invalid(
                    f"messages.{i}.role: Input should be 'user' or 'assistant'", request_id
                )
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            return self._invalid("system: Input should be a valid string", request_id)
        output = self._structured(body, request_id)
        if isinstance(output, ErrorReply):
            return output
        return GenRequest(
            model=model,
            stream=body.get("stream") is True,
            max_tokens=max_tokens,
            input_tokens=count_input_tokens(messages, system),
            output=output,
        )

    def _structured(
        self, body: dict[str, Any], request_id: str
    ) -> StructuredOutput | ErrorReply | None:
        """JSON asked for by ``output_config.format`` (or the beta ``output_format``), or a
        tool call forced by ``tool_choice`` (``{"type": "tool", "name"}``, or ``any`` with a
        single tool)."""
        config = body.get("output_config")
        fmt = config.get("format") if isinstance(config, dict) else None
        where = "output_config.format"
        if fmt is None and body.get("output_format") is not None:
            fmt, where = body["output_format"], "output_format"
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
                return self._invalid(f"{where}.type: Input should be 'json_schema'", request_id)
            return self._schema_output(fmt.get("schema"), None, f"{where}.schema", request_id)
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if not isinstance(choice, dict) or not isinstance(tools, list):
            return None
        named = {t.get("name"): t for t in tools if isinstance(t, dict)}
        if choice.get("type") == "tool":
            name = choice.get("name")
        elif choice.get("type") == "any" and len(named) == 1:
            name = next(iter(named))
        else:
            return None
        if name not in named:
            return self._invalid(f"tool_choice.name: tool {name!r} is not in tools", request_id)
        schema = named[name].get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return self._invalid(
                "tools.0.custom.input_schema.type: Input should be 'object'", request_id
            )
        return self._schema_output(schema, name, "input_schema", request_id)

    def _schema_output(
        self, schema: Any, tool_name: str | None, where: str, request_id: str
    ) -> StructuredOutput | ErrorReply:
        if not isinstance(schema, dict):
            return self._invalid(f"{where}: Input should be a valid dictionary", request_id)
        try:
            return StructuredOutput.for_schema(schema, tool_name)
        except SchemaGenError as exc:
            return self._invalid(f"{where}: {exc}", request_id)

    def error(
        self,
        status: int,
        request_id: str,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> ErrorReply:
        type_ = (
            error_type
            or TYPE_OF_STATUS.get(status)
            or ("api_error" if status >= 500 else "invalid_request_error")
        )
        return self._reply(status, type_, message or _MESSAGES.get(type_, "Error."), request_id)

    def midstream_error_status(self, error_type: str | None) -> int:
        return STATUS_OF_TYPE.get(error_type or "overloaded_error", 500)

    # -- answers -------------------------------------------------------------------------

    def _usage(self, answer: Answer, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": answer.input_tokens,
            "cache_creation_input_tokens": answer.cache_write,
            "cache_read_input_tokens": answer.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": answer.cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _stop_reason(self, answer: Answer) -> str:
        if answer.truncated:
            return "max_tokens"
        if answer.refusal:
            return "refusal"
        return "tool_use" if answer.tool_name else "end_turn"

    def _content(self, answer: Answer) -> list[dict[str, Any]]:
        if answer.tool_name is None:
            return [{"type": "text", "text": answer.text}]
        # The input is an object on the wire: a cut or invalid document cannot be sent as
        # one, so it becomes an empty object (which the schema will usually reject).
        try:
            tool_input = json.loads(answer.text) if not answer.truncated else {}
        except ValueError:
            tool_input = {}
        block = {"type": "tool_use", "id": _tool_use_id(answer), "name": answer.tool_name}
        return [{**block, "input": tool_input}]

    def completion_body(self, answer: Answer) -> bytes:
        return _compact(
            {
                "model": answer.model,
                "id": answer.message_id,
                "type": "message",
                "role": "assistant",
                "content": self._content(answer),
                "stop_reason": self._stop_reason(answer),
                "stop_sequence": None,
                "usage": self._usage(answer, answer.count),
            }
        )

    def stream_events(self, answer: Answer) -> StreamEvents:
        message: dict[str, Any] = {
            "model": answer.model,
            "id": answer.message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(answer, 1),
        }
        head = (
            b"event: message_start\ndata: "
            + _compact({"type": "message_start", "message": message})
            + b"\n\n"
            + (_BLOCK_START if answer.tool_name is None else _tool_block_start(answer))
        )
        usage = {
            "input_tokens": answer.input_tokens,
            "cache_creation_input_tokens": answer.cache_write,
            "cache_read_input_tokens": answer.cache_read,
            "output_tokens": answer.count,
        }
        delta = {"stop_reason": self._stop_reason(answer), "stop_sequence": None}
        # A tool input cut by max_tokens never gets its content_block_stop (recorded traffic).
        block_stop = b"" if answer.tool_name and answer.truncated else _BLOCK_STOP
        tail = (
            block_stop
            + b"event: message_delta\ndata: "
            + _compact({"type": "message_delta", "delta": delta, "usage": usage})
            + b"\n\n"
            + _MESSAGE_STOP
        )
        deltas = _delta_events(answer.pieces, answer.tool_name is not None)
        return StreamEvents(head, deltas[: answer.count], tail)

    def stream_error_event(self, error_type: str | None, message: str | None) -> bytes:
        type_ = error_type or "overloaded_error"
        error = {"type": type_, "message": message or _MESSAGES.get(type_, "Error.")}
        return b"event: error\ndata: " + _compact({"type": "error", "error": error}) + b"\n\n"


WIRE = AnthropicWire()
