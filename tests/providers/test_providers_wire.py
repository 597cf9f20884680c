"""Pure tests of the adapters: request building, event folding, error mapping, key safety."""

from __future__ import annotations

import json

import httpx
import pytest

from execution_service.providers import (
    ChatMessage,
    ChatRequest,
    ErrorReason,
    Finish,
    ProviderError,
    TextDelta,
    UnknownProviderError,
    UsageReport,
    api_url,
    get_provider,
    provider_names,
)
from execution_service.providers.anthropic import AnthropicProvider, AnthropicStreamParser
from execution_service.providers.errors import translate_transport_error
from execution_service.providers.openai import OpenAIProvider, OpenAIStreamParser
from execution_service.token_estimate import estimate_tokens, resolve_usage
from service_kit.redaction import MARKER
from service_kit.secret import Secret

KEY = Secret("sk-canary-0123456789abcdef")
NOW = 1_750_000_000.0

REQUEST = ChatRequest(
    model="some-model",
    messages=(
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("system", "Answer in French."),
        ChatMessage("assistant", "Bonjour"),
        ChatMessage("user", "Again"),
    ),
)


# --- request building -----------------------------------------------------------------------


def test_openai_request_streams_with_usage_and_bearer_auth() -> None:
    spec = OpenAIProvider().build_stream_request(REQUEST, KEY, None, default_max_tokens=1024)
    assert spec.method == "POST"
    assert spec.url == "https://api.openai.com/v1/chat/completions"
    assert spec.all_headers()["authorization"] == "Bearer sk-canary-0123456789abcdef"
    assert spec.json == {
        "model": "some-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Answer in French."},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": "Again"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_openai_request_passes_sampling_options_and_limit() -> None:
    request = ChatRequest(
        model="gpt-4o",
        messages=(ChatMessage("user", "Hi"),),
        max_tokens=50,
        temperature=0.0,
        top_p=0.9,
        stop=("END", "STOP"),
    )
    spec = OpenAIProvider().build_stream_request(request, KEY, None, default_max_tokens=1024)
    assert spec.json is not None
    assert spec.json["max_tokens"] == 50
    assert spec.json["temperature"] == 0.0  # zero is a value, not "unset"
    assert spec.json["top_p"] == 0.9
    assert spec.json["stop"] == ["END", "STOP"]


def test_anthropic_request_lifts_system_messages_and_applies_the_default_limit() -> None:
    spec = AnthropicProvider().build_stream_request(REQUEST, KEY, None, default_max_tokens=1024)
    assert spec.url == "https://api.anthropic.com/v1/messages"
    headers = spec.all_headers()
    assert headers["x-api-key"] == "sk-canary-0123456789abcdef"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert spec.json == {
        "model": "some-model",
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": "Again"},
        ],
        "max_tokens": 1024,
        "stream": True,
    }


def test_anthropic_request_keeps_an_explicit_limit_and_maps_stop() -> None:
    request = ChatRequest(
        model="claude-3-haiku-20240307",
        messages=(ChatMessage("user", "Hi"),),
        max_tokens=10,
        temperature=0.5,
        stop=("\n\nHuman:",),
    )
    spec = AnthropicProvider().build_stream_request(request, KEY, None, default_max_tokens=1024)
    assert spec.json is not None
    assert spec.json["max_tokens"] == 10
    assert spec.json["stop_sequences"] == ["\n\nHuman:"]
    assert spec.json["temperature"] == 0.5
    assert "system" not in spec.json
    assert "top_p" not in spec.json


@pytest.mark.parametrize(
    "base_url",
    [
        "https://llm.example",
        "https://llm.example/",
        "https://llm.example/v1",
        "https://llm.example/v1/",
    ],
)
def test_base_url_with_or_without_v1_and_slash(base_url: str) -> None:
    assert api_url(base_url, "https://default", "/v1/chat/completions") == (
        "https://llm.example/v1/chat/completions"
    )


def test_base_url_keeps_a_prefix_path_and_defaults_when_absent() -> None:
    assert api_url("https://api.groq.com/openai/v1", "x", "/v1/chat/completions") == (
        "https://api.groq.com/openai/v1/chat/completions"
    )
    assert api_url(None, "https://api.openai.com", "/v1/models") == (
        "https://api.openai.com/v1/models"
    )


def test_key_checks_are_get_models_with_auth() -> None:
    spec = OpenAIProvider().build_key_check(KEY, "http://local:8000/v1")
    assert (spec.method, spec.url) == ("GET", "http://local:8000/v1/models")
    assert spec.all_headers()["authorization"] == "Bearer " + KEY.reveal()
    spec = AnthropicProvider().build_key_check(KEY, None)
    assert (spec.method, spec.url) == ("GET", "https://api.anthropic.com/v1/models")
    assert spec.all_headers()["x-api-key"] == KEY.reveal()


@pytest.mark.parametrize("provider", [OpenAIProvider(), AnthropicProvider()])
def test_request_spec_repr_never_shows_the_key(provider: OpenAIProvider) -> None:
    spec = provider.build_stream_request(REQUEST, KEY, None, default_max_tokens=1)
    assert KEY.reveal() not in repr(spec)
    assert KEY.reveal() not in str(spec)
    assert KEY.reveal() not in repr(spec.secret_headers)


@pytest.mark.parametrize("bad", ["sk-abc\r\nX-Injected: 1", "sk-clé", "", "sk abc"])
def test_keys_unfit_for_a_header_are_refused_without_quoting_them(bad: str) -> None:
    with pytest.raises(ProviderError) as caught:
        OpenAIProvider().build_stream_request(REQUEST, Secret(bad), None, default_max_tokens=1)
    assert caught.value.reason == ErrorReason.PROVIDER_AUTH_FAILED
    if bad:
        assert bad not in str(caught.value) and bad not in repr(caught.value)


def test_registry() -> None:
    assert provider_names() == ("anthropic", "openai")
    assert get_provider("openai").name == "openai"
    assert isinstance(get_provider("anthropic"), AnthropicProvider)
    with pytest.raises(UnknownProviderError):
        get_provider("gemini")


# --- OpenAI stream folding ------------------------------------------------------------------


def _chunk(delta: dict[str, object] | None = None, finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return json.dumps({"object": "chat.completion.chunk", "choices": [choice], "usage": None})


def test_openai_folds_text_then_usage_then_finish_at_done() -> None:
    parser = OpenAIStreamParser()
    assert parser.feed("", _chunk({"role": "assistant", "content": ""})) == []
    assert parser.feed("", _chunk({"content": "Hel"})) == [TextDelta("Hel")]
    assert parser.feed("", _chunk({"content": "lo"})) == [TextDelta("lo")]
    assert parser.feed("", _chunk(finish="stop")) == []  # Finish waits for [DONE]
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    events = parser.feed("", json.dumps({"choices": [], "usage": usage}))
    # prompt_tokens includes the cached ones: input is the uncached remainder.
    assert events == [UsageReport(input_tokens=36, output_tokens=7, cache_read_tokens=64)]
    assert parser.feed("", "[DONE]") == [Finish("stop")]
    assert parser.end() == []


def test_openai_stream_ending_after_finish_without_done_is_complete() -> None:
    parser = OpenAIStreamParser()
    parser.feed("", _chunk({"content": "x"}, finish="length"))
    assert parser.end() == [Finish("length")]


def test_openai_stream_ending_before_finish_is_a_stream_error() -> None:
    parser = OpenAIStreamParser()
    parser.feed("", _chunk({"content": "x"}))
    with pytest.raises(ProviderError) as caught:
        parser.end()
    assert caught.value.reason == ErrorReason.PROVIDER_STREAM_ERROR


@pytest.mark.parametrize(
    "data",
    [
        '{"choices": [',
        '["not", "an", "object"]',
        # Text no gRPC answer can carry (a lone surrogate is not UTF-8): refused here, not
        # when the delta is sent.
        '{"choices": [{"index": 0, "delta": {"content": "a\\ud800b"}}]}',
        '{"choices": [], "usage": {"prompt_tokens": NaN, "completion_tokens": 1}}',
    ],
)
def test_openai_malformed_chunk_is_a_non_retryable_stream_error(data: str) -> None:
    with pytest.raises(ProviderError) as caught:
        OpenAIStreamParser().feed("", data)
    assert caught.value.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert caught.value.retryable is False


def test_openai_error_chunk_in_stream() -> None:
    error = {"error": {"message": "The server had an error", "type": "server_error"}}
    with pytest.raises(ProviderError) as caught:
        OpenAIStreamParser().feed("", json.dumps(error))
    assert caught.value.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert caught.value.retryable is True
    assert caught.value.message == "The server had an error"


def test_openai_wrong_types_read_as_absent() -> None:
    parser = OpenAIStreamParser()
    assert parser.feed("", json.dumps({"choices": "nope", "usage": {"prompt_tokens": "9"}})) == []
    assert parser.feed("", json.dumps({"choices": [{"delta": {"content": 5}}]})) == []


# --- Anthropic stream folding ---------------------------------------------------------------


def _event(kind: str, **fields: object) -> tuple[str, str]:
    return kind, json.dumps({"type": kind, **fields})


def test_anthropic_folds_usage_without_the_start_placeholder() -> None:
    parser = AnthropicStreamParser()
    start = {
        "usage": {
            "input_tokens": 12,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 30,
            "output_tokens": 1,
        }
    }
    assert parser.feed(*_event("message_start", message=start)) == [UsageReport(12, None, 100, 30)]
    assert parser.feed(*_event("content_block_start", index=0)) == []
    assert parser.feed(*_event("ping")) == []
    delta = {"type": "text_delta", "text": "Hi"}
    assert parser.feed(*_event("content_block_delta", index=0, delta=delta)) == [TextDelta("Hi")]
    # Cumulative output: the last message_delta wins, nothing is added up.
    md = _event("message_delta", delta={"stop_reason": None}, usage={"output_tokens": 3})
    assert parser.feed(*md) == [UsageReport(12, 3, 100, 30)]
    md = _event("message_delta", delta={"stop_reason": "max_tokens"}, usage={"output_tokens": 9})
    assert parser.feed(*md) == [UsageReport(12, 9, 100, 30)]
    assert parser.feed(*_event("message_stop")) == [Finish("max_tokens")]
    assert parser.end() == []


def test_anthropic_ignores_non_text_deltas_and_unknown_events() -> None:
    parser = AnthropicStreamParser()
    tool = {"type": "input_json_delta", "partial_json": '{"a"'}
    assert parser.feed(*_event("content_block_delta", index=1, delta=tool)) == []
    assert parser.feed(*_event("some_future_event", detail=1)) == []


@pytest.mark.parametrize(
    ("error_type", "reason", "retryable"),
    [
        ("overloaded_error", ErrorReason.PROVIDER_OVERLOADED, True),
        ("api_error", ErrorReason.PROVIDER_STREAM_ERROR, True),
        ("rate_limit_error", ErrorReason.PROVIDER_STREAM_ERROR, True),
        ("invalid_request_error", ErrorReason.PROVIDER_STREAM_ERROR, False),
    ],
)
def test_anthropic_error_event(error_type: str, reason: ErrorReason, retryable: bool) -> None:
    with pytest.raises(ProviderError) as caught:
        AnthropicStreamParser().feed(*_event("error", error={"type": error_type, "message": "m"}))
    assert caught.value.reason == reason
    assert caught.value.retryable is retryable
    assert caught.value.status == 0  # the stream's status was 200; no error status exists
    assert caught.value.provider_code == error_type


def test_anthropic_stream_cut_before_message_delta_is_a_stream_error() -> None:
    parser = AnthropicStreamParser()
    parser.feed(*_event("message_start", message={"usage": {"input_tokens": 5}}))
    with pytest.raises(ProviderError) as caught:
        parser.end()
    assert caught.value.reason == ErrorReason.PROVIDER_STREAM_ERROR


# --- error answers --------------------------------------------------------------------------


def _openai_error(code: str | None, type_: str, message: str = "m") -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()


def test_openai_insufficient_quota_is_quota_exceeded_and_final() -> None:
    err = OpenAIProvider().parse_error(
        429, {}, _openai_error("insufficient_quota", "insufficient_quota"), NOW
    )
    assert (err.reason, err.retryable, err.status) == (
        ErrorReason.PROVIDER_QUOTA_EXCEEDED,
        False,
        429,
    )


def test_openai_rate_limit_is_retryable_with_its_retry_after() -> None:
    body = _openai_error("rate_limit_exceeded", "tokens", "slow down")
    err = OpenAIProvider().parse_error(429, {"retry-after": "2"}, body, NOW)
    assert (err.reason, err.retryable, err.retry_after) == (
        ErrorReason.PROVIDER_RATE_LIMITED,
        True,
        2.0,
    )
    assert err.message == "slow down"
    assert err.provider_code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [
        (400, ErrorReason.PROVIDER_BAD_REQUEST, False),
        (401, ErrorReason.PROVIDER_AUTH_FAILED, False),
        (403, ErrorReason.PROVIDER_PERMISSION_DENIED, False),
        (404, ErrorReason.PROVIDER_BAD_REQUEST, False),
        (422, ErrorReason.PROVIDER_BAD_REQUEST, False),
        (408, ErrorReason.PROVIDER_TIMEOUT, True),
        (500, ErrorReason.PROVIDER_SERVER_ERROR, True),
        (503, ErrorReason.PROVIDER_SERVER_ERROR, True),
        (529, ErrorReason.PROVIDER_OVERLOADED, True),
    ],
)
def test_status_mapping(status: int, reason: ErrorReason, retryable: bool) -> None:
    for provider in (OpenAIProvider(), AnthropicProvider()):
        err = provider.parse_error(status, {}, b"", NOW)
        assert (err.reason, err.retryable, err.status) == (reason, retryable, status)


def test_non_json_error_bodies_get_a_plain_message() -> None:
    html = b"<html><body>502 Bad Gateway</body></html>"
    err = AnthropicProvider().parse_error(502, {}, html, NOW)
    assert err.message == "HTTP 502 from provider"
    err = OpenAIProvider().parse_error(503, {}, b"upstream connect error", NOW)
    assert err.message == "HTTP 503: upstream connect error"


def test_error_str_and_repr_are_informative() -> None:
    err = ProviderError(ErrorReason.PROVIDER_RATE_LIMITED, "slow", status=429, retryable=True)
    assert str(err) == "PROVIDER_RATE_LIMITED (HTTP 429): slow"
    assert "retryable=True" in repr(err)


def test_redact_removes_the_key_from_the_message() -> None:
    err = ProviderError(ErrorReason.PROVIDER_AUTH_FAILED, f"bad key {KEY.reveal()}!")
    err.redact(KEY.reveal())
    assert KEY.reveal() not in str(err) and KEY.reveal() not in repr(err)
    assert str(err.args[0]) == f"bad key {MARKER}!"


# --- transport errors -----------------------------------------------------------------------


def test_transport_errors_translate_by_phase() -> None:
    request = httpx.Request("POST", "http://x/v1/messages")
    refused = translate_transport_error(
        httpx.ConnectError("refused", request=request), response_started=False
    )
    assert (refused.reason, refused.retryable) == (ErrorReason.PROVIDER_UNREACHABLE, True)
    reset = translate_transport_error(
        httpx.RemoteProtocolError("Server disconnected", request=request), response_started=False
    )
    assert reset.reason == ErrorReason.PROVIDER_UNREACHABLE
    cut = translate_transport_error(
        httpx.RemoteProtocolError("incomplete chunked read", request=request),
        response_started=True,
    )
    assert (cut.reason, cut.retryable) == (ErrorReason.PROVIDER_STREAM_ERROR, True)
    slow = translate_transport_error(
        httpx.ReadTimeout("timed out", request=request), response_started=True
    )
    assert (slow.reason, slow.retryable) == (ErrorReason.PROVIDER_TIMEOUT, True)


def test_local_protocol_errors_never_quote_their_text() -> None:
    # h11 quotes the offending header value in this message: it may be the key.
    exc = httpx.LocalProtocolError(f"Illegal header value b'Bearer {KEY.reveal()}\\n'")
    err = translate_transport_error(exc, response_started=False)
    assert KEY.reveal() not in str(err)
    assert err.reason == ErrorReason.PROVIDER_BAD_REQUEST


# --- token estimates ------------------------------------------------------------------------


def test_estimate_tokens_rounds_up_and_never_gives_zero_for_text() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


def test_resolve_usage_prefers_reports_and_estimates_the_rest() -> None:
    prompt = (ChatMessage("user", "x" * 40),)
    exact = resolve_usage(UsageReport(10, 5, 2, 1), prompt=prompt, output_text="abc")
    assert (exact.input_tokens, exact.output_tokens, exact.estimated) == (10, 5, False)
    assert (exact.cache_read_tokens, exact.cache_write_tokens) == (2, 1)
    partial = resolve_usage(UsageReport(10, None), prompt=prompt, output_text="a" * 9)
    assert (partial.input_tokens, partial.output_tokens, partial.estimated) == (10, 3, True)
    none = resolve_usage(None, prompt=prompt, output_text="a")
    assert (none.input_tokens, none.output_tokens, none.estimated) == (10, 1, True)
