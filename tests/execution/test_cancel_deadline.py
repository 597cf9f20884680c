"""A caller's cancel is CANCELLED even when the call carries a deadline; only a deadline
that really passed is a FAILED execution with reason DEADLINE_EXCEEDED."""

from __future__ import annotations

import grpc

from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator import RunningEmulator
from tests.execution.support import (
    ANTHROPIC,
    CHUNKS,
    Stub,
    Workspace,
    anthropic_key,
    openai_key,
    request,
    run,
    wait_for_state,
)


async def test_cancel_long_before_a_generous_deadline_is_cancelled(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script({"chunk_delay_ms": 200}, key=key)
    stub = execution_stub()

    call = stub.Execute(request(ws), timeout=60.0)
    started = await call.read()
    first = await call.read()
    assert first.WhichOneof("event") == "delta"
    call.cancel()

    cancelled = await wait_for_state(stub, started.started.name)
    assert cancelled.state == res.EXECUTION_STATE_CANCELLED
    assert cancelled.error.reason == "CANCELLED"
    assert cancelled.output_text.startswith(first.delta.text)
    assert "".join(CHUNKS).startswith(cancelled.output_text)


async def test_a_deadline_that_passes_mid_stream_is_failed_deadline_exceeded(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = anthropic_key()
    ws = await workspace(anthropic=key)
    emulator.state.script({"chunk_delay_ms": 250}, key=key)  # 20 chunks: 5 s in all
    stub = execution_stub()

    outcome = await run(stub, request(ws, ANTHROPIC, "claude-3-5-sonnet-20241022"), timeout=2.0)

    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    failed = await wait_for_state(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "DEADLINE_EXCEEDED"
    assert failed.output_text.startswith(outcome.text)
    assert "".join(CHUNKS).startswith(failed.output_text)
