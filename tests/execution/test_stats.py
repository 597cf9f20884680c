"""GetAgentStats while an execution is still running: the success rate is over finished
executions only (succeeded / (succeeded + failed + cancelled)); running ones are counted
apart."""

from __future__ import annotations

import grpc

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator import RunningEmulator
from tests.execution.support import (
    Stub,
    Workspace,
    openai_key,
    request,
    run,
    wait_for_state,
)

AGENT = "stats-agent"


async def _stats(stub: ex_grpc.ExecutionServiceStub, ws: str) -> res.AgentStats:
    reply = await stub.GetAgentStats(
        pb.GetAgentStatsRequest(parent=f"workspaces/{ws}", agent_id=AGENT)
    )
    return reply.stats


async def test_success_rate_leaves_running_executions_out(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    stub = execution_stub()

    # A 401 before the key is cached (a cached key would be fetched again and retried).
    emulator.state.script({"status": 401}, key=key)
    refused = await run(stub, request(ws, agent_id=AGENT))
    assert refused.error is not None
    assert refused.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = await run(stub, request(ws, agent_id=AGENT))
    assert done.completed.state == res.EXECUTION_STATE_SUCCEEDED

    # A slow stream in flight: 20 chunks 500 ms apart, cancelled once counted.
    emulator.state.script({"chunk_delay_ms": 500}, key=key)
    call = stub.Execute(request(ws, agent_id=AGENT), timeout=60.0)
    started = await call.read()
    assert started.started.state == res.EXECUTION_STATE_RUNNING

    during = await _stats(stub, ws)
    assert during.total_count == 3 and during.running_count == 1
    assert (during.succeeded_count, during.failed_count, during.cancelled_count) == (1, 1, 0)
    assert during.success_rate == 1 / 2

    call.cancel()
    finished = await wait_for_state(stub, started.started.name)
    assert finished.state == res.EXECUTION_STATE_CANCELLED
    after = await _stats(stub, ws)
    assert after.total_count == 3 and after.running_count == 0
    assert after.success_rate == 1 / 3
