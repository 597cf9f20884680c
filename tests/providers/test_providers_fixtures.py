"""Every recorded provider fixture, served over real HTTP, read by stream_chat as the manifest says.

The recorded fixtures (located by tests/recorded_fixtures.py) are served by a local
aiohttp server with the manifest's status and headers; streams are written one SSE event per
write. Error fixtures are served for every attempt, so retryable ones exhaust the policy:
the test checks the attempts made and the delays requested of an injected sleep.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from provider_testkit import (
    Outcome,
    ProviderServer,
    RecordingSleep,
    Reply,
    collect,
    sse_chunks,
)

from execution_service.providers import (
    ChatMessage,
    ChatRequest,
    ErrorReason,
    Finish,
    TextDelta,
    UsageReport,
    get_provider,
    stream_chat,
)
from execution_service.retry import RetryPolicy
from service_kit.secret import Secret
from tests.recorded_fixtures import available, fixtures_dir, require_fixtures

FIXTURES_DIR = fixtures_dir()
MANIFEST = FIXTURES_DIR / "manifest.json"
KEY = Secret("sk-fixture-test-key")
POLICY = RetryPolicy()  # the defaults: 3 attempts, 1 s then 2 s at mid jitter


def _fixtures() -> list[Any]:
    if not available():
        return [pytest.param(None, id="fixtures-absent")]  # skips, or fails under CI=true
    entries = json.loads(MANIFEST.read_text())["fixtures"]
    return [pytest.param(entry, id=entry["id"]) for entry in entries]


def _reply(entry: dict[str, Any], **overrides: Any) -> Reply:
    body = (FIXTURES_DIR / entry["file"]).read_bytes()
    streamed = entry["file"].endswith(".sse")
    return Reply(
        status=entry["status"],
        headers=entry["headers"],
        body=body,
        chunks=sse_chunks(body) if streamed else None,
        **overrides,
    )


async def _run(
    server: ProviderServer,
    client: httpx.AsyncClient,
    sleep: RecordingSleep,
    provider_name: str,
    attempts: list[int],
) -> Outcome:
    request = ChatRequest(model="fixture-model", messages=(ChatMessage("user", "Hello"),))
    return await collect(
        stream_chat(
            client,
            get_provider(provider_name),
            request,
            KEY,
            base_url=server.url,
            policy=POLICY,
            default_max_tokens=256,
            deadline=None,
            sleep=sleep,
            rand=lambda: 0.5,  # no jitter: delays are exactly the policy's
            on_attempt=attempts.append,
        )
    )


def _last_usage(outcome: Outcome) -> UsageReport | None:
    reports = [e for e in outcome.events if isinstance(e, UsageReport)]
    return reports[-1] if reports else None


@pytest.mark.parametrize("entry", _fixtures())
async def test_fixture_parses_as_the_manifest_says(
    entry: dict[str, Any] | None,
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    recording_sleep: RecordingSleep,
) -> None:
    require_fixtures()
    assert entry is not None
    provider_server.script(_reply(entry))
    attempts: list[int] = []
    outcome = await _run(provider_server, http_client, recording_sleep, entry["provider"], attempts)
    expected = entry["expected"]

    # Every attempt reached the provider's endpoint with the provider's auth header.
    assert [r.path for r in provider_server.received] == [entry["endpoint"]] * len(attempts)
    auth = "authorization" if entry["provider"] == "openai" else "x-api-key"
    assert all(KEY.reveal() in r.headers[auth] for r in provider_server.received)

    if entry["status"] != 200:
        _check_error_answer(entry, outcome, attempts, recording_sleep)
    elif expected.get("error"):
        _check_error_event(expected, outcome, attempts, recording_sleep)
    else:
        _check_success(expected, outcome, attempts, recording_sleep)


def _check_success(
    expected: dict[str, Any], outcome: Outcome, attempts: list[int], sleep: RecordingSleep
) -> None:
    assert outcome.error is None
    assert outcome.text == expected["text"]
    usage = _last_usage(outcome)
    if expected["input_tokens"] is None:
        assert usage is None
    else:
        assert usage is not None
        assert (usage.input_tokens, usage.output_tokens) == (
            expected["input_tokens"],
            expected["output_tokens"],
        )
        assert usage.cache_read_tokens == 0  # no fixture used the prompt cache
    finish = expected.get("finish_reason") or expected.get("stop_reason")
    assert outcome.events[-1] == Finish(finish)
    assert attempts == [1]
    assert sleep.delays == []


def _check_error_event(
    expected: dict[str, Any], outcome: Outcome, attempts: list[int], sleep: RecordingSleep
) -> None:
    """An error event after text: raised once, not retried, partial text delivered."""
    assert outcome.error is not None
    assert outcome.text == expected["text_before_error"]
    assert outcome.error.provider_code == expected["error"]["type"]
    assert outcome.error.message == expected["error"]["message"]
    if expected["error"]["type"] == "overloaded_error":
        assert outcome.error.reason == ErrorReason.PROVIDER_OVERLOADED
    # The manifest calls it retryable by type; output already flowed, so it is final here.
    assert expected["retryable"] is True
    assert outcome.error.retryable is False
    usage = _last_usage(outcome)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (
        expected["input_tokens"],
        expected["output_tokens"],
    )
    assert attempts == [1]
    assert sleep.delays == []


def _check_error_answer(
    entry: dict[str, Any], outcome: Outcome, attempts: list[int], sleep: RecordingSleep
) -> None:
    expected = entry["expected"]
    error = outcome.error
    assert error is not None
    assert outcome.events == []
    assert error.status == entry["status"]
    assert error.provider_code == (expected.get("error_code") or expected["error_type"])
    retryable = expected["retryable"]
    if expected.get("error_code") == "insufficient_quota":
        # The manifest records the SDK's behaviour (it retries) and notes that an adapter
        # should not: out of credit is not transient.
        assert "non-retryable" in expected["retryable_note"]
        retryable = False
        assert error.reason == ErrorReason.PROVIDER_QUOTA_EXCEEDED
    assert error.retryable is retryable
    if retryable:
        assert attempts == [1, 2, 3]
        if "retry-after" in entry["headers"]:
            wait = float(entry["headers"]["retry-after"])
            assert sleep.delays == [wait, wait]
        else:
            assert sleep.delays == [1.0, 2.0]
    else:
        assert attempts == [1]
        assert sleep.delays == []
    assert KEY.reveal() not in str(error)


# --- the manifest's "+cut" variants ---------------------------------------------------------


def _entry(fixture_id: str) -> dict[str, Any]:
    require_fixtures()
    entries = json.loads(MANIFEST.read_text())["fixtures"]
    return next(e for e in entries if e["id"] == fixture_id)


async def test_openai_stream_cut_after_text_is_not_retried(
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    recording_sleep: RecordingSleep,
) -> None:
    entry = _entry("openai_stream_with_usage")
    provider_server.script(_reply(entry, cut_after=7))  # as in the manifest's "+cut" run
    attempts: list[int] = []
    outcome = await _run(provider_server, http_client, recording_sleep, "openai", attempts)
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert outcome.error.retryable is False
    assert outcome.text == "I'm unable to provide real-time"  # the deltas of events 2-7
    assert _last_usage(outcome) is None  # the usage chunk never came: the caller estimates
    assert attempts == [1]
    assert recording_sleep.delays == []


async def test_anthropic_stream_cut_before_text_is_retried(
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    recording_sleep: RecordingSleep,
) -> None:
    """Unlike the SDK (which never retries a started stream), we retry until text flows."""
    entry = _entry("anthropic_stream_basic")
    provider_server.script(_reply(entry, cut_after=3), _reply(entry))
    attempts: list[int] = []
    outcome = await _run(provider_server, http_client, recording_sleep, "anthropic", attempts)
    assert outcome.error is None
    assert attempts == [1, 2]
    assert recording_sleep.delays == [1.0]
    # Only the successful attempt's events reach the caller: one start usage, not two.
    assert outcome.events == [
        UsageReport(25, None),
        TextDelta("Hello"),
        TextDelta("!"),
        UsageReport(25, 15),
        Finish("end_turn"),
    ]


async def test_anthropic_stream_cut_before_text_every_time_exhausts_the_policy(
    provider_server: ProviderServer,
    http_client: httpx.AsyncClient,
    recording_sleep: RecordingSleep,
) -> None:
    provider_server.script(_reply(_entry("anthropic_stream_basic"), cut_after=3))
    attempts: list[int] = []
    outcome = await _run(provider_server, http_client, recording_sleep, "anthropic", attempts)
    assert outcome.error is not None
    assert outcome.error.reason == ErrorReason.PROVIDER_STREAM_ERROR
    assert outcome.events == []
    assert attempts == [1, 2, 3]
    assert recording_sleep.delays == [1.0, 2.0]
