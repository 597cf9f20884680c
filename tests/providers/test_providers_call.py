"""stream_chat and check_key against a real local HTTP server: retry, cuts, deadline, closing."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from provider_testkit import ClosingProbe, ProviderServer, RecordingSleep, Reply, collect

from execution_service.providers import (
    ChatMessage,
    ChatRequest,
    DeadlineExceeded,
    ErrorReason,
    Finish,
    ProviderError,
    TextDelta,
    UsageReport,
    check_key,
    get_provider,
    stream_chat,
)
from execution_service.retry import RetryPolicy
from service_kit.redaction import MARKER
from service_kit.secret import Secret

KEY = Secret("sk-call-test-4f1c9a2b")
REQUEST = ChatRequest(
    model="gpt-4o-mini", messages=(ChatMessage("system", "S"), ChatMessage("user", "Hi"))
)
SSE = {"content-type": "text/event-stream"}


def _openai_chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


OPENAI_OK = [
    _openai_chunk("Hel"),
    _openai_chunk("lo"),
    _openai_chunk(finish="stop"),
    b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n',
    b"data: [DONE]\n\n",
]

ANTHROPIC_OK = [
    b'event: message_start\ndata: {"type":"message_start","message":'
    b'{"usage":{"input_tokens":3,"output_tokens":1}}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Yo"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":2}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def _stream(
    server: ProviderServer,
    client: httpx.AsyncClient,
    *,
    provider: str = "openai",
    base_url: str | None = None,
    sleep: RecordingSleep | None = None,
    attempts: list[int] | None = None,
    deadline: float | None = None,
    clock: float = 100.0,
    policy: RetryPolicy | None = None,
):  # type: ignore[no-untyped-def]
    return stream_chat(
        client,
        get_provider(provider),
        REQUEST,
        KEY,
        base_url=base_url or server.url,
        policy=policy or RetryPolicy(),
        default_max_tokens=64,
        deadline=deadline,
        sleep=sleep or RecordingSleep(),
        clock=lambda: clock,
        rand=lambda: 0.5,
        on_attempt=(attempts.append if attempts is not None else None),
    )


async def test_success_sends_the_request_and_yields_text_usage_finish(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(headers=SSE, chunks=OPENAI_OK))
    outcome = await collect(
        _stream(provider_server, http_client, base_url=provider_server.url + "/v1/")
    )
    assert outcome.error is None
    assert outcome.events == [
        TextDelta("Hel"),
        TextDelta("lo"),
        UsageReport(input_tokens=9, output_tokens=2),
        Finish("stop"),
    ]
    [received] = provider_server.received
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {KEY.reveal()}"
    assert received.headers["accept"] == "text/event-stream"
    assert received.json()["stream_options"] == {"include_usage": True}


async def test_anthropic_request_reaches_messages_with_its_headers(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(headers=SSE, chunks=ANTHROPIC_OK))
    outcome = await collect(_stream(provider_server, http_client, provider="anthropic"))
    assert outcome.text == "Yo"
    assert outcome.events[-2:] == [UsageReport(3, 2), Finish("end_turn")]
    [received] = provider_server.received
    assert received.path == "/v1/messages"
    assert received.headers["x-api-key"] == KEY.reveal()
    assert received.headers["anthropic-version"] == "2023-06-01"
    body = received.json()
    assert body["system"] == "S"
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 64


async def test_connection_reset_before_any_byte_is_retried(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(reset=True), Reply(headers=SSE, chunks=OPENAI_OK))
    sleep, attempts = RecordingSleep(), []
    outcome = await collect(_stream(provider_server, http_client, sleep=sleep, attempts=attempts))
    assert outcome.error is None
    assert outcome.text == "Hello"
    assert attempts == [1, 2]
    assert sleep.delays == [1.0]


async def test_resets_every_time_end_unreachable_after_the_policy(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(reset=True))
    sleep, attempts = RecordingSleep(), []
    outcome = await collect(_stream(provider_server, http_client, sleep=sleep, attempts=attempts))
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_UNREACHABLE
    assert isinstance(outcome.error.__cause__, httpx.RemoteProtocolError)  # chained
    assert attempts == [1, 2, 3]
    assert sleep.delays == [1.0, 2.0]


async def test_nothing_listening_is_unreachable(http_client: httpx.AsyncClient) -> None:
    server = ProviderServer()
    await server.start()
    url = server.url
    await server.stop()  # the port is now closed
    outcome = await collect(
        stream_chat(
            http_client,
            get_provider("openai"),
            REQUEST,
            KEY,
            base_url=url,
            policy=RetryPolicy(max_attempts=2),
            default_max_tokens=1,
            deadline=None,
            sleep=RecordingSleep(),
        )
    )
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_UNREACHABLE
    assert outcome.error.retryable is True


async def test_cut_after_a_delta_is_not_retried_and_the_text_was_yielded(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(
        Reply(headers=SSE, chunks=OPENAI_OK, cut_after=1), Reply(headers=SSE, chunks=OPENAI_OK)
    )
    sleep, attempts = RecordingSleep(), []
    outcome = await collect(_stream(provider_server, http_client, sleep=sleep, attempts=attempts))
    assert outcome.events == [TextDelta("Hel")]
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert outcome.error.retryable is False
    assert isinstance(outcome.error.__cause__, httpx.RemoteProtocolError)
    assert attempts == [1]
    assert sleep.delays == []
    assert len(provider_server.received) == 1


async def test_stream_ending_cleanly_before_finish_after_text_is_a_stream_error(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(headers=SSE, chunks=OPENAI_OK[:2]))
    outcome = await collect(_stream(provider_server, http_client))
    assert outcome.text == "Hello"
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert outcome.error.retryable is False


async def test_malformed_event_before_text_is_not_retried(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(headers=SSE, chunks=[b"data: {oops\n\n", *OPENAI_OK]))
    attempts: list[int] = []
    outcome = await collect(_stream(provider_server, http_client, attempts=attempts))
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert attempts == [1]


async def test_error_event_before_text_is_retried_when_transient(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    overloaded = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )
    provider_server.script(Reply(headers=SSE, chunks=[overloaded]))
    sleep, attempts = RecordingSleep(), []
    outcome = await collect(
        _stream(provider_server, http_client, provider="anthropic", sleep=sleep, attempts=attempts)
    )
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_OVERLOADED
    assert attempts == [1, 2, 3]
    assert sleep.delays == [1.0, 2.0]


async def test_x_should_retry_false_stops_a_5xx_at_once(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(status=503, headers={"x-should-retry": "false"}, body=b""))
    attempts: list[int] = []
    outcome = await collect(_stream(provider_server, http_client, attempts=attempts))
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_SERVER_ERROR
    assert outcome.error.message == "HTTP 503 from provider"
    assert attempts == [1]


async def test_retry_after_above_the_cap_is_ignored_for_the_backoff(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(
        Reply(status=429, headers={"retry-after": "120"}), Reply(headers=SSE, chunks=OPENAI_OK)
    )
    sleep = RecordingSleep()
    outcome = await collect(_stream(provider_server, http_client, sleep=sleep))
    assert outcome.error is None
    assert sleep.delays == [1.0]


@pytest.mark.parametrize(
    ("cap", "retry_after", "expected_delay"),
    [(20.0, "30", 1.0), (20.0, "15", 15.0), (90.0, "75", 75.0), (60.0, "61", 1.0)],
)
async def test_the_policys_cap_alone_decides_whether_retry_after_is_honoured(
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    cap: float,
    retry_after: str,
    expected_delay: float,
) -> None:
    provider_server.script(
        Reply(status=429, headers={"retry-after": retry_after}),
        Reply(headers=SSE, chunks=OPENAI_OK),
    )
    sleep = RecordingSleep()
    policy = RetryPolicy(max_retry_after=cap, jitter=0.0)
    outcome = await collect(_stream(provider_server, http_client, sleep=sleep, policy=policy))
    assert outcome.error is None
    assert sleep.delays == [expected_delay]


async def test_retry_after_ms_sets_the_delay(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(
        Reply(status=529, headers={"retry-after-ms": "250"}),
        Reply(headers=SSE, chunks=ANTHROPIC_OK),
    )
    sleep = RecordingSleep()
    outcome = await collect(
        _stream(provider_server, http_client, provider="anthropic", sleep=sleep)
    )
    assert outcome.error is None
    assert outcome.text == "Yo"
    assert sleep.delays == [0.25]


async def test_deadline_shorter_than_retry_after_gives_up_without_sleeping(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(
        Reply(status=429, headers={"retry-after": "5"}, body=b'{"error":{"message":"slow"}}')
    )
    sleep, attempts = RecordingSleep(), []
    outcome = await collect(
        _stream(
            provider_server,
            http_client,
            sleep=sleep,
            attempts=attempts,
            clock=100.0,
            deadline=103.0,
        )
    )
    error = outcome.error
    assert isinstance(error, DeadlineExceeded)
    assert error.reason == ErrorReason.DEADLINE_EXCEEDED
    assert error.retryable is False
    assert error.last_error.reason == ErrorReason.PROVIDER_RATE_LIMITED
    assert error.__cause__ is error.last_error
    assert error.status == 429
    assert attempts == [1]
    assert sleep.delays == []


async def test_deadline_far_enough_allows_the_retry(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(
        Reply(status=429, headers={"retry-after": "5"}), Reply(headers=SSE, chunks=OPENAI_OK)
    )
    sleep = RecordingSleep()
    outcome = await collect(
        _stream(provider_server, http_client, sleep=sleep, clock=100.0, deadline=106.0)
    )
    assert outcome.error is None
    assert sleep.delays == [5.0]


async def test_aclose_closes_the_response_at_once(provider_server: ProviderServer) -> None:
    provider_server.script(Reply(headers=SSE, chunks=OPENAI_OK[:1], hold_open=True))
    probe = ClosingProbe()
    async with httpx.AsyncClient(transport=probe) as client:
        stream = _stream(provider_server, client)
        assert await anext(stream) == TextDelta("Hel")
        assert probe.open_bodies == 1
        assert not provider_server.client_left.is_set()
        await stream.aclose()
        # Closed by aclose itself, not later by a garbage-collection finalizer.
        assert probe.open_bodies == 0
        await asyncio.wait_for(provider_server.client_left.wait(), timeout=5)


async def test_cancelling_the_consumer_closes_the_response(
    provider_server: ProviderServer,
) -> None:
    provider_server.script(Reply(headers=SSE, chunks=OPENAI_OK[:1], hold_open=True))
    probe = ClosingProbe()
    first = asyncio.Event()

    async def consume(client: httpx.AsyncClient) -> None:
        async for _ in _stream(provider_server, client):
            first.set()

    async with httpx.AsyncClient(transport=probe) as client:
        task = asyncio.create_task(consume(client))
        await asyncio.wait_for(first.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancellation ran through the generator's `async with`: closed already.
        assert probe.open_bodies == 0
        await asyncio.wait_for(provider_server.client_left.wait(), timeout=5)


async def test_a_key_echoed_by_the_endpoint_is_redacted(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    body = json.dumps({"error": {"message": f"Invalid key Bearer {KEY.reveal()}", "code": None}})
    provider_server.script(Reply(status=401, body=body.encode()))
    outcome = await collect(_stream(provider_server, http_client))
    error = outcome.error
    assert error is not None
    assert error.reason == ErrorReason.PROVIDER_AUTH_FAILED
    for text in (str(error), repr(error), error.message, *map(str, error.args)):
        assert KEY.reveal() not in text
    assert MARKER in error.message


async def test_non_streamed_json_answer_is_accepted(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    completion = {
        "choices": [{"index": 0, "message": {"content": "Whole"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }
    provider_server.script(
        Reply(headers={"content-type": "application/json"}, body=json.dumps(completion).encode())
    )
    outcome = await collect(_stream(provider_server, http_client))
    assert outcome.events == [TextDelta("Whole"), UsageReport(5, 1), Finish("stop")]


async def test_unexpected_content_type_is_a_stream_error(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(headers={"content-type": "text/html"}, body=b"<html>login</html>"))
    attempts: list[int] = []
    outcome = await collect(_stream(provider_server, http_client, attempts=attempts))
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert attempts == [1]


# --- check_key ------------------------------------------------------------------------------


async def test_check_key_accepts_a_200(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(headers={"content-type": "application/json"}, body=b'{"data":[]}'))
    result = await check_key(http_client, get_provider("anthropic"), KEY, provider_server.url)
    assert (result.valid, result.reason, result.status) == (True, None, 200)
    [received] = provider_server.received
    assert (received.method, received.path) == ("GET", "/v1/models")
    assert received.headers["x-api-key"] == KEY.reveal()


async def test_check_key_reports_a_rejected_key(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    body = (
        b'{"error":{"message":"Incorrect API key provided",'
        b'"type":"invalid_request_error","code":"invalid_api_key"}}'
    )
    provider_server.script(Reply(status=401, body=body))
    result = await check_key(http_client, get_provider("openai"), KEY, provider_server.url)
    assert result.valid is False
    assert result.reason == ErrorReason.PROVIDER_AUTH_FAILED
    assert result.status == 401
    assert result.message == "Incorrect API key provided"


async def test_check_key_raises_when_the_answer_is_inconclusive(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply(status=503))
    with pytest.raises(ProviderError) as caught:
        await check_key(http_client, get_provider("openai"), KEY, provider_server.url)
    assert caught.value.reason == ErrorReason.PROVIDER_SERVER_ERROR


async def test_check_key_refuses_a_malformed_key_without_a_request(
    provider_server: ProviderServer, http_client: httpx.AsyncClient
) -> None:
    provider_server.script(Reply())
    result = await check_key(
        http_client, get_provider("openai"), Secret("sk-bad\nkey"), provider_server.url
    )
    assert (result.valid, result.reason) == (False, ErrorReason.PROVIDER_AUTH_FAILED)
    assert provider_server.received == []
