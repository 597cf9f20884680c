"""Execute end to end: vault key over mTLS, provider emulator over HTTP, tracked in SQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from provider_emulator.server import RunningEmulator
from provider_emulator.textgen import count_input_tokens

OPENAI_KEY = "sk-test-openai-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
Workspace = Callable[..., Awaitable[str]]
Stub = Callable[..., ex_grpc.ExecutionServiceStub]


def request(ws: str, provider: int, model: str, **fields) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        parent=f"workspaces/{ws}",
        agent_id="agent-1",
        provider=provider,
        model=model,
        messages=[
            res.Message(role=res.MESSAGE_ROLE_SYSTEM, content="You are terse."),
            res.Message(role=res.MESSAGE_ROLE_USER, content="Say hello to the team"),
        ],
        **fields,
    )


async def collect(stub: ex_grpc.ExecutionServiceStub, req: pb.ExecuteRequest, **kwargs):
    events = [event async for event in stub.Execute(req, **kwargs)]
    kinds = [e.WhichOneof("event") for e in events]
    return events, kinds


EXPECTED_TEXT = "".join(f" word{i}" if i else "word0" for i in range(20))


@pytest.mark.parametrize(
    ("provider", "model", "price_in", "price_out"),
    [
        (kv_res.PROVIDER_OPENAI, "gpt-4o-mini", 150, 600),  # nano-dollars per token
        (kv_res.PROVIDER_ANTHROPIC, "claude-3-5-sonnet-20241022", 3000, 15000),
    ],
)
async def test_streams_and_tracks_both_providers(
    workspace: Workspace,
    execution_stub: Stub,
    emulator: RunningEmulator,
    provider: int,
    model: str,
    price_in: int,
    price_out: int,
) -> None:
    ws = await workspace(openai=OPENAI_KEY, anthropic=ANTHROPIC_KEY)
    stub = execution_stub()
    events, kinds = await collect(stub, request(ws, provider, model))

    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert set(kinds[1:-1]) == {"delta"}
    started, completed = events[0].started, events[-1].completed
    assert started.state == res.EXECUTION_STATE_RUNNING
    assert started.name == completed.name and started.name.startswith(
        f"workspaces/{ws}/executions/"
    )
    text = "".join(e.delta.text for e in events[1:-1])
    assert text.split() == EXPECTED_TEXT.split()

    assert completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert completed.attempts == 1
    assert completed.output_text == text
    assert completed.finish_reason in ("stop", "end_turn")
    # The emulator's documented token rule: 3 + words per message (system included).
    input_tokens = count_input_tokens(
        [{"content": "Say hello to the team"}], system="You are terse."
    )
    assert completed.usage.input_tokens == input_tokens
    assert completed.usage.output_tokens == 20
    assert not completed.usage.estimated
    assert completed.cost_nanos == input_tokens * price_in + 20 * price_out
    assert completed.HasField("time_to_first_token") and completed.HasField("latency")

    stored = await stub.GetExecution(pb.GetExecutionRequest(name=completed.name))
    assert stored.execution == completed

    sent = emulator.state.requests[-1]
    if provider == kv_res.PROVIDER_ANTHROPIC:
        assert sent.body["system"] == "You are terse."
        assert [m["role"] for m in sent.body["messages"]] == ["user"]
        assert sent.body["max_tokens"] == 64  # the service's configured default
    else:
        assert sent.body["stream_options"] == {"include_usage": True}
        assert sent.body["messages"][0]["role"] == "system"


async def test_missing_workspace_key_fails_tracked(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace()  # no keys stored
    stub = execution_stub()
    call = stub.Execute(request(ws, kv_res.PROVIDER_OPENAI, "gpt-4o"))
    started = None
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            started = event.started
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert started is not None and started.name
    failed = (await stub.GetExecution(pb.GetExecutionRequest(name=started.name))).execution
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "API_KEY_NOT_CONFIGURED"
    assert failed.attempts == 0
