"""The OpenAI chat completions wire format (shapes follow recorded real traffic)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .schema_gen import SchemaGenError
from .textgen import count_input_tokens
from .wire import Answer, ErrorReply, GenRequest, StreamEvents, StructuredOutput

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_FINGERPRINT = b"fp_emulator"

# status -> (type, code, message) used when a scripted error names none of them.
_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again in 1s.",
    ),
    500: ("server_error", None, "The server had an error processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-3.5-turbo")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _mask(key: str) -> str:
    if len(key) > 12:
        return key[:8] + "*" * (len(key) - 12) + key[-4:]
    return "*" * max(len(key) - 4, 0) + key[-4:]


def _limit(body: dict[str, Any]) -> tuple[str, Any] | None:
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            return name, body[name]
    return None


def strict_schema_problem(schema: Any, context: tuple[str, ...] = ()) -> str | None:
    """Why strict mode refuses ``schema``, or None: every object must list all its
    properties in ``required`` and set ``additionalProperties: false``."""
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            if problem := strict_schema_problem(item, (*context, str(index))):
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared]
    if "object" in types or "properties" in schema:
        where = f"In context={context!r}"
        if schema.get("additionalProperties") is not False:
            return f"{where}, 'additionalProperties' is required to be supplied and to be false."
        required = schema.get("required") or []
        missing = [name for name in schema.get("properties") or {} if name not in required]
        if missing:
            return (
                f"{where}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            if problem := strict_schema_problem(sub, (*context, key, name)):
                return problem
    for key in ("items", "anyOf", "oneOf", "allOf", "prefixItems"):
        if key in schema and (problem := strict_schema_problem(schema[key], (*context, key))):
            return problem
    return None


class OpenAIWire:
    """`POST /v1/chat/completions`, `Authorization: Bearer <key>`."""

    name = "openai"
    request_id_header = "x-request-id"
    json_content_type = "application/json"
    error_content_type = "application/json; charset=utf-8"
    stream_content_type = "text/event-stream; charset=utf-8"
    message_id_prefix = "chatcmpl-"
    request_id_prefix = "req_"
    models_body = json.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                for m in _MODELS
            ],
        },
        indent=2,
    ).encode()
    malformed_event = b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", [\n\n'

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization")
        if auth is None:
            return None
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def check_headers(self, headers: Mapping[str, str], request_id: str) -> ErrorReply | None:
        return None

    def _reply(
        self, status: int, message: str, type_: str, param: str | None, code: str | None
    ) -> ErrorReply:
        error = {"message": message, "type": type_, "param": param, "code": code}
        body = (json.dumps({"error": error}, indent=4) + "\n").encode()
        return ErrorReply(status, body, self.error_content_type)

    def auth_error(self, key: str | None, request_id: str) -> ErrorReply:
        if not key:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can "
                "obtain an API key from https://platform.openai.com/account/api-keys."
            )
            return self._reply(401, message, "invalid_request_error", None, None)
        message = (
            f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return self._reply(401, message, "invalid_request_error", None, "invalid_api_key")

    def invalid_json(self, request_id: str) -> ErrorReply:
        message = (
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        )
        return self._reply(400, message, "invalid_request_error", None, None)

    def parse(self, body: Any, request_id: str) -> GenRequest | ErrorReply:
        if not isinstance(body, dict):
            return self.invalid_json(request_id)
        bad = "invalid_request_error"
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._reply(400, "you must provide a model parameter", bad, None, None)
        messages = body.get("messages")
        if messages is None:
            return self._reply(
                400,
                "Missing required parameter: 'messages'.",
                bad,
                "messages",
                "missing_required_parameter",
            )
        if not isinstance(messages, list) or not messages:
            message = (
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead."
            )
            return self._reply(400, message, bad, "messages", "empty_array")
        for i, item in enumerate(messages):
            role = item.get("role") if isinstance(item, dict) else None
            if role not in _ROLES:
                message = (
                    f"Invalid value: {role!r}. Supported values are: 'system', 'assistant', "
                    "'user', 'function', 'tool', and 'developer'."
                )
                return self._reply(400, message, bad, f"messages[{i}].role", "invalid_value")
        limit = _limit(body)
        if limit is not None and (
            not isinstance(limit[1], int) or isinstance(limit[1], bool) or limit[1] < 1
        ):
            message = (
                f"Invalid '{limit[0]}': integer below minimum value. Expected a value >= 1, "
                f"but got {limit[1]!r} instead."
            )
            return self._reply(400, message, bad, limit[0], "integer_below_min_value")
        options = body.get("stream_options")
        stream = body.get("stream") is True
        if options is not None and not stream:
            message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            return self._reply(400, message, bad, "stream_options", None)
        output = self._response_format(body.get("response_format"))
        if isinstance(output, ErrorReply):
            return output
        return GenRequest(
            model=model,
            stream=stream,
            max_tokens=None if limit is None else limit[1],
            input_tokens=count_input_tokens(messages),
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            output=output,
        )

    def _response_format(self, value: Any) -> StructuredOutput | ErrorReply | None:
        """``{"type": "json_schema", "json_schema": {"name", "strict"?, "schema"}}``;
        ``text`` (and absence) ask for plain text."""
        bad = "invalid_request_error"
        if value is None:
            return None
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":  # JSON mode: any object will do
            return StructuredOutput.for_schema({"type": "object"})
        if kind != "json_schema":
            message = (
                f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object' and "
                "'json_schema'."
            )
            return self._reply(400, message, bad, "response_format.type", "invalid_value")
        spec = value.get("json_schema")
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            message = "Missing required parameter: 'response_format.json_schema.name'."
            param = "response_format.json_schema.name"
            return self._reply(400, message, bad, param, "missing_required_parameter")
        if not _SCHEMA_NAME.fullmatch(name):
            message = (
                "Invalid 'response_format.json_schema.name': string does not match pattern. "
                "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
            )
            param = "response_format.json_schema.name"
            return self._reply(400, message, bad, param, "invalid_value")
        assert isinstance(spec, dict)
        schema = spec.get("schema", {})
        try:
            if not isinstance(schema, dict):
                raise SchemaGenError("a schema must be an object")
            problem = strict_schema_problem(schema) if spec.get("strict") is True else None
            if problem is not None:
                raise SchemaGenError(problem)
            return StructuredOutput.for_schema(schema)
        except SchemaGenError as exc:
            message = f"Invalid schema for response_format '{name}': {exc}"
            return self._reply(400, message, bad, "response_format", None)

    def error(
        self,
        status: int,
        request_id: str,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> ErrorReply:
        default_type, default_code, default_message = _DEFAULTS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
        )
        return self._reply(
            status,
            message or default_message,
            error_type or default_type,
            None,
            code if code is not None or error_type is not None else default_code,
        )

    def midstream_error_status(self, error_type: str | None) -> int:
        return 500

    # -- answers -------------------------------------------------------------------------

    def _usage(self, answer: Answer) -> dict[str, Any]:
        prompt = answer.input_tokens + answer.cache_read
        return {
            "prompt_tokens": prompt,
            "completion_tokens": answer.count,
            "total_tokens": prompt + answer.count,
            "prompt_tokens_details": {"cached_tokens": answer.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _finish_reason(self, answer: Answer) -> str:
        return "length" if answer.truncated else "stop"

    def completion_body(self, answer: Answer) -> bytes:
        body = {
            "id": answer.message_id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None if answer.refusal else answer.text,
                        "refusal": answer.text if answer.refusal else None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": self._finish_reason(answer),
                }
            ],
            "usage": self._usage(answer),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT.decode(),
        }
        return json.dumps(body, indent=2, ensure_ascii=False).encode()

    def stream_events(self, answer: Answer) -> StreamEvents:
        usage_null = b',"usage":null' if answer.include_usage else b""
        prefix = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
            b'"system_fingerprint":"%s","choices":['
            % (
                answer.message_id.encode(),
                answer.created,
                json.dumps(answer.model).encode(),
                _FINGERPRINT,
            )
        )
        end = b"]" + usage_null + b"}\n\n"
        # A refusal comes in `refusal` pieces instead of `content` (recorded traffic starts
        # it with content null and refusal "").
        first = b'"content":null,"refusal":""' if answer.refusal else b'"content":"","refusal":null'
        head = (
            prefix
            + b'{"index":0,"delta":{"role":"assistant",'
            + first
            + b'},"logprobs":null,"finish_reason":null}'
            + end
        )
        field = b"refusal" if answer.refusal else b"content"
        before = prefix + b'{"index":0,"delta":{"' + field + b'":'
        after = b'},"logprobs":null,"finish_reason":null}' + end
        content = [before + piece + after for piece in answer.pieces.json[: answer.count]]
        tail = (
            prefix
            + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}'
            % self._finish_reason(answer).encode()
            + end
        )
        if answer.include_usage:
            usage = json.dumps(self._usage(answer), separators=(",", ":")).encode()
            tail += prefix + b'],"usage":' + usage + b"}\n\n"
        return StreamEvents(head, content, tail + b"data: [DONE]\n\n")

    def stream_error_event(self, error_type: str | None, message: str | None) -> bytes:
        error = {
            "message": message or "The server had an error while processing your request.",
            "type": error_type or "server_error",
            "param": None,
            "code": None,
        }
        return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


WIRE = OpenAIWire()
