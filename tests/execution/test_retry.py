"""Retry through Execute: which failures are retried, how attempts and outcomes are recorded,
and that nothing is retried once output has flowed or past the caller's deadline."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator.server import RunningEmulator
from provider_emulator.textgen import count_input_tokens
from tests.execution.support import (
    ANTHROPIC,
    CHUNKS,
    OPENAI,
    Stub,
    Workspace,
    anthropic_key,
    error_info,
    get_execution,
    openai_key,
    request,
    run,
)

SONNET = "claude-3-5-sonnet-20241022"
PROMPT = "Say hello to the team"


async def provider_workspace(workspace: Workspace, provider: int) -> tuple[str, str, str]:
    """(workspace, its key, a model) for the provider, with the key stored in the vault."""
    if provider == ANTHROPIC:
        key = anthropic_key()
        return await workspace(anthropic=key), key, SONNET
    key = openai_key()
    return await workspace(openai=key), key, "gpt-4o-mini"


TRANSIENT = {
    "429-retry-after-ms": (OPENAI, {"status": 429, "headers": {"retry-after-ms": "250"}}),
    "429": (OPENAI, {"status": 429}),
    "500": (OPENAI, {"status": 500}),
    "503": (OPENAI, {"status": 503}),
    "529-overloaded": (ANTHROPIC, {"status": 529, "error_type": "overloaded_error"}),
    "reset-before-any-byte": (OPENAI, {"reset": True}),
}


@pytest.mark.parametrize("case", list(TRANSIENT))
async def test_transient_failure_then_success_takes_two_attempts(
    case: str, workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    provider, step = TRANSIENT[case]
    ws, key, model = await provider_workspace(workspace, provider)
    emulator.state.script(step, key=key)
    stub = execution_stub()

    outcome = await run(stub, request(ws, provider, model, prompt=PROMPT))

    completed = outcome.completed
    assert completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert completed.attempts == 2
    assert not completed.HasField("error") or not completed.error.reason
    assert outcome.text == "".join(CHUNKS)  # the caller sees one attempt's output, once
    assert completed.output_text == "".join(CHUNKS)
    assert (await get_execution(stub, completed.name)) == completed

    sent = emulator.state.find_requests(key=key)
    assert len(sent) == 2
    assert sent[0].outcome == ("reset" if step.get("reset") else "error")
    assert sent[1].outcome == "completed"
    if "retry-after-ms" in step.get("headers", {}):
        # The header, not the fast test backoff (at most 0.1 s), set the wait.
        assert sent[1].started_at - sent[0].started_at >= 0.25


EXHAUSTED = {
    "429": (OPENAI, {"status": 429}, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    "500": (OPENAI, {"status": 500}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_SERVER_ERROR"),
    "503": (OPENAI, {"status": 503}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_SERVER_ERROR"),
    "529": (
        ANTHROPIC,
        {"status": 529, "error_type": "overloaded_error"},
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_OVERLOADED",
    ),
    "reset": (OPENAI, {"reset": True}, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNREACHABLE"),
}


@pytest.mark.parametrize("case", list(EXHAUSTED))
async def test_three_failures_exhaust_the_attempts(
    case: str, workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    provider, step, code, reason = EXHAUSTED[case]
    ws, key, model = await provider_workspace(workspace, provider)
    emulator.state.script(step, step, step, step, key=key)  # one more than may be used
    stub = execution_stub()

    outcome = await run(stub, request(ws, provider, model))

    assert outcome.error is not None
    assert outcome.error.code() == code, outcome.error.details()
    info = error_info(outcome.error)
    assert info.reason == reason
    name = outcome.started.name
    assert info.metadata["execution"] == name
    assert outcome.deltas == []

    failed = await get_execution(stub, name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.attempts == 3
    assert failed.error.reason == reason
    assert failed.error.provider_status == step.get("status", 0)
    assert failed.output_text == ""
    assert failed.usage.output_tokens == 0
    assert len(emulator.state.find_requests(key=key)) == 3
    assert emulator.state.pending_steps(key) == 1


PERMANENT = {
    "401": (OPENAI, {"status": 401}, grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED"),
    "401-anthropic": (
        ANTHROPIC,
        {"status": 401, "error_type": "authentication_error"},
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_AUTH_FAILED",
    ),
    "403": (
        OPENAI,
        {"status": 403},
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_PERMISSION_DENIED",
    ),
    "400": (OPENAI, {"status": 400}, grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST"),
    "404": (OPENAI, {"status": 404}, grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_BAD_REQUEST"),
    "429-insufficient-quota": (
        OPENAI,
        {"status": 429, "error_type": "insufficient_quota", "error_code": "insufficient_quota"},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PROVIDER_QUOTA_EXCEEDED",
    ),
}


@pytest.mark.parametrize("case", list(PERMANENT))
async def test_permanent_failures_are_not_retried(
    case: str, workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    provider, step, code, reason = PERMANENT[case]
    ws, key, model = await provider_workspace(workspace, provider)
    emulator.state.script(step, step, step, key=key)
    stub = execution_stub()

    outcome = await run(stub, request(ws, provider, model))

    assert outcome.error is not None
    assert outcome.error.code() == code, outcome.error.details()
    info = error_info(outcome.error)
    assert info.reason == reason
    assert info.metadata["execution"] == outcome.started.name

    failed = await get_execution(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.attempts == 1
    assert failed.error.reason == reason
    assert failed.error.provider_status == step["status"]
    assert len(emulator.state.find_requests(key=key)) == 1
    assert emulator.state.pending_steps(key) == 2


# (provider, step, chunks that reach the caller, reason, emulator outcome)
MID_STREAM = {
    "openai-cut": (OPENAI, {"cut_after_chunks": 5}, 5, "PROVIDER_STREAM_ERROR", "cut"),
    "anthropic-cut": (ANTHROPIC, {"cut_after_chunks": 5}, 5, "PROVIDER_STREAM_ERROR", "cut"),
    "anthropic-error-event": (
        ANTHROPIC,
        {"anthropic_error_after_chunks": 3, "error_type": "overloaded_error"},
        3,
        "PROVIDER_OVERLOADED",
        "stream_error",
    ),
    "openai-malformed": (
        OPENAI,
        {"malformed_after_chunks": 3},
        3,
        "PROVIDER_STREAM_ERROR",
        "malformed",
    ),
    "anthropic-malformed": (
        ANTHROPIC,
        {"malformed_after_chunks": 3},
        3,
        "PROVIDER_STREAM_ERROR",
        "malformed",
    ),
}


@pytest.mark.parametrize("case", list(MID_STREAM))
async def test_failure_after_output_is_not_retried(
    case: str, workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    """The failing event may arrive in the same network read as the text before it: that
    text still reaches the caller, and the failure ends the stream instead of a retry."""
    provider, step, sent_chunks, reason, emulator_outcome = MID_STREAM[case]
    ws, key, model = await provider_workspace(workspace, provider)
    emulator.state.script(step, key=key)
    stub = execution_stub()

    outcome = await run(stub, request(ws, provider, model, prompt=PROMPT))

    partial = "".join(CHUNKS[:sent_chunks])
    assert outcome.error is not None, outcome.events[-1]
    assert outcome.error.code() == grpc.StatusCode.UNAVAILABLE, outcome.error.details()
    info = error_info(outcome.error)
    assert info.reason == reason
    assert info.metadata["execution"] == outcome.started.name
    assert outcome.text == partial  # exactly what was sent, nothing more

    failed = await get_execution(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.attempts == 1
    assert failed.error.reason == reason
    assert failed.output_text == partial
    assert failed.HasField("first_token_time")
    # The stream ended before its final usage: the output is estimated, never zero.
    assert failed.usage.estimated
    assert failed.usage.output_tokens > 0
    if provider == ANTHROPIC:  # message_start reported the input exactly
        assert failed.usage.input_tokens == count_input_tokens([{"content": PROMPT}])
    else:
        assert failed.usage.input_tokens > 0
    sent = emulator.state.find_requests(key=key)
    assert [r.outcome for r in sent] == [emulator_outcome]


async def test_retry_after_past_the_deadline_gives_up_at_once(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ws, key, model = await provider_workspace(workspace, OPENAI)
    step: dict[str, Any] = {"status": 429, "headers": {"retry-after": "5"}}
    emulator.state.script(step, step, key=key)
    stub = execution_stub()

    began = time.monotonic()
    outcome = await run(stub, request(ws, OPENAI, model), timeout=1.0)
    elapsed = time.monotonic() - began

    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Behaviour, not speed: it did not sleep the 5 s the provider asked for.
    assert elapsed < 4.0
    failed = await get_execution(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "DEADLINE_EXCEEDED"
    assert failed.attempts == 1
    assert len(emulator.state.find_requests(key=key)) == 1
