"""What a caller can get wrong, who may call what, and TestApiKey's verdicts."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from provider_emulator.server import RunningEmulator
from tests.execution.support import (
    ANTHROPIC,
    OPENAI,
    Stub,
    Workspace,
    anthropic_key,
    error_details,
    error_info,
    expect_error,
    list_all,
    openai_key,
    request,
    run,
)


def user(content: str) -> res.Message:
    return res.Message(role=res.MESSAGE_ROLE_USER, content=content)


def system(content: str) -> res.Message:
    return res.Message(role=res.MESSAGE_ROLE_SYSTEM, content=content)


def config(**fields: Any) -> res.GenerationConfig:
    return res.GenerationConfig(**fields)


def bad_request_cases() -> dict[str, tuple[Callable[[pb.ExecuteRequest], None], str]]:
    """name -> (how to spoil a valid request, the field the violation names)."""

    def set_messages(*messages: res.Message) -> Callable[[pb.ExecuteRequest], None]:
        def spoil(req: pb.ExecuteRequest) -> None:
            del req.messages[:]
            req.messages.extend(messages)

        return spoil

    def set_field(name: str, value: Any) -> Callable[[pb.ExecuteRequest], None]:
        return lambda req: setattr(req, name, value)

    def set_config(**fields: Any) -> Callable[[pb.ExecuteRequest], None]:
        return lambda req: req.generation_config.CopyFrom(config(**fields))

    def many_labels(req: pb.ExecuteRequest) -> None:
        req.labels.update({f"label{i}": "x" for i in range(17)})

    def bad_parent(req: pb.ExecuteRequest) -> None:
        req.parent += "/extra"

    # Over the 1,000,000-character limit, but well under gRPC's 4 MB message size.
    half = "x" * 500_001
    return {
        "empty-messages": (set_messages(), "messages"),
        "only-system": (set_messages(system("You are terse.")), "messages"),
        "empty-content": (set_messages(user("")), "messages[0].content"),
        "unknown-provider": (set_field("provider", kv_res.PROVIDER_UNSPECIFIED), "provider"),
        "empty-model": (set_field("model", ""), "model"),
        "empty-agent": (set_field("agent_id", ""), "agent_id"),
        "max-tokens-0": (set_config(max_tokens=0), "generation_config.max_tokens"),
        "max-tokens-200001": (set_config(max_tokens=200_001), "generation_config.max_tokens"),
        "temperature-3": (set_config(temperature=3.0), "generation_config.temperature"),
        "oversized": (set_messages(user(half), user(half)), "messages"),
        "bad-parent": (bad_parent, "parent"),
        "bad-request-id": (set_field("request_id", "not a valid id!"), "request_id"),
        "too-many-labels": (many_labels, "labels"),
    }


BAD_REQUESTS = bad_request_cases()


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_invalid_execute_is_rejected_before_any_row(
    case: str, workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    spoil, field = BAD_REQUESTS[case]
    req = request(ws)
    spoil(req)
    stub = execution_stub()

    outcome = await run(stub, req)

    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.INVALID_ARGUMENT, outcome.error.details()
    info, fields = error_details(outcome.error)
    assert info is not None and info.reason == "INVALID_ARGUMENT"
    assert fields == [field]
    assert outcome.events == []
    assert await list_all(stub, ws) == []
    assert emulator.state.find_requests(key=key) == []


async def test_get_execution_names_and_missing_executions(execution_stub: Stub) -> None:
    stub = execution_stub()
    for name in ("", "workspaces/ws-1/executions/not-a-uuid", f"executions/{uuid.uuid4()}"):
        err = await expect_error(
            stub.GetExecution(pb.GetExecutionRequest(name=name)), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error_details(err)[1] == ["name"]

    missing = f"workspaces/ws-{uuid.uuid4().hex[:8]}/executions/{uuid.uuid4()}"
    err = await expect_error(
        stub.GetExecution(pb.GetExecutionRequest(name=missing)), grpc.StatusCode.NOT_FOUND
    )
    info = error_info(err)
    assert info.reason == "EXECUTION_NOT_FOUND"
    assert info.metadata["execution"] == missing


async def test_stats_and_list_reject_bad_arguments(execution_stub: Stub) -> None:
    stub = execution_stub()
    parent = f"workspaces/ws-{uuid.uuid4().hex[:8]}"

    err = await expect_error(
        stub.GetAgentStats(pb.GetAgentStatsRequest(parent=parent)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_details(err)[1] == ["agent_id"]

    later, earlier = Timestamp(seconds=1_700_000_100), Timestamp(seconds=1_700_000_000)
    for start, end in ((later, earlier), (earlier, earlier)):
        err = await expect_error(
            stub.GetAgentStats(
                pb.GetAgentStatsRequest(
                    parent=parent, agent_id="agent-1", start_time=start, end_time=end
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_details(err)[1] == ["start_time"]
        err = await expect_error(
            stub.ListExecutions(
                pb.ListExecutionsRequest(parent=parent, start_time=start, end_time=end)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_details(err)[1] == ["start_time"]

    for bad in (
        pb.ListExecutionsRequest(parent="workspaces"),
        pb.ListExecutionsRequest(parent=parent, page_size=-1),
        pb.ListExecutionsRequest(parent=parent, page_token="garbage"),
    ):
        err = await expect_error(stub.ListExecutions(bad), grpc.StatusCode.INVALID_ARGUMENT)
        assert len(error_details(err)[1]) == 1


# --- authorization --------------------------------------------------------------------------


async def call_each_method(stub: Any, ws: str) -> dict[str, grpc.StatusCode]:
    """Every ExecutionService method once; the status each ended with."""
    parent = f"workspaces/{ws}"
    calls = {
        "Execute": lambda: run(stub, request(ws)),
        "GetExecution": lambda: stub.GetExecution(
            pb.GetExecutionRequest(name=f"{parent}/executions/{uuid.uuid4()}")
        ),
        "CancelExecution": lambda: stub.CancelExecution(
            pb.CancelExecutionRequest(name=f"{parent}/executions/{uuid.uuid4()}")
        ),
        "ListExecutions": lambda: stub.ListExecutions(pb.ListExecutionsRequest(parent=parent)),
        "GetAgentStats": lambda: stub.GetAgentStats(
            pb.GetAgentStatsRequest(parent=parent, agent_id="agent-1")
        ),
        "TestApiKey": lambda: stub.TestApiKey(pb.TestApiKeyRequest(parent=parent, provider=OPENAI)),
    }
    codes = {}
    for method, call in calls.items():
        try:
            result = await call()
        except grpc.aio.AioRpcError as err:
            codes[method] = err.code()
            continue
        error = getattr(result, "error", None)
        codes[method] = error.code() if error is not None else grpc.StatusCode.OK
    return codes


async def test_app_may_call_everything(workspace: Workspace, execution_stub: Stub) -> None:
    ws = await workspace(openai=openai_key())
    codes = await call_each_method(execution_stub("app"), ws)
    # The made-up execution name is well formed but unknown: allowed, then not found.
    assert codes == {
        "Execute": grpc.StatusCode.OK,
        "GetExecution": grpc.StatusCode.NOT_FOUND,
        "CancelExecution": grpc.StatusCode.NOT_FOUND,
        "ListExecutions": grpc.StatusCode.OK,
        "GetAgentStats": grpc.StatusCode.OK,
        "TestApiKey": grpc.StatusCode.OK,
    }


async def test_admin_reads_history_but_cannot_run_or_test_keys(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    codes = await call_each_method(execution_stub("admin"), ws)
    assert codes == {
        "Execute": grpc.StatusCode.PERMISSION_DENIED,
        "GetExecution": grpc.StatusCode.NOT_FOUND,
        "CancelExecution": grpc.StatusCode.NOT_FOUND,
        "ListExecutions": grpc.StatusCode.OK,
        "GetAgentStats": grpc.StatusCode.OK,
        "TestApiKey": grpc.StatusCode.PERMISSION_DENIED,
    }
    assert await list_all(execution_stub(), ws) == []
    assert emulator.state.find_requests(key=key) == []


@pytest.mark.parametrize("workload", ["keyvault", "execution"])
async def test_other_workloads_are_denied_everything(
    workload: str, workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    codes = await call_each_method(execution_stub(workload), ws)
    assert set(codes.values()) == {grpc.StatusCode.PERMISSION_DENIED}
    assert await list_all(execution_stub(), ws) == []


async def test_permission_is_checked_before_the_request(execution_stub: Stub) -> None:
    """A denied caller learns nothing about its request's validity."""
    err = await expect_error(
        execution_stub("admin").TestApiKey(pb.TestApiKeyRequest(parent="bad")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "PERMISSION_DENIED"
    outcome = await run(execution_stub("admin"), pb.ExecuteRequest(parent="bad"))
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.PERMISSION_DENIED


# --- TestApiKey -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("provider", [OPENAI, ANTHROPIC])
async def test_stored_key_verdicts(
    provider: int, workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key() if provider == OPENAI else anthropic_key()
    ws = await workspace(**{"openai" if provider == OPENAI else "anthropic": key})
    stub = execution_stub()
    check = pb.TestApiKeyRequest(parent=f"workspaces/{ws}", provider=provider)  # type: ignore[arg-type]

    ok = await stub.TestApiKey(check)
    assert ok.valid and ok.reason == ""
    assert ok.HasField("latency")
    sent = emulator.state.find_requests(key=key)
    assert [(r.method, r.path, r.status) for r in sent] == [("GET", "/v1/models", 200)]

    emulator.state.revoke(key)
    try:
        refused = await stub.TestApiKey(check)
    finally:
        emulator.state.restore(key)
    assert not refused.valid
    assert refused.reason == "PROVIDER_AUTH_FAILED"
    assert key not in refused.message


async def test_candidate_key_verdicts(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ws = await workspace()  # nothing stored: a candidate needs no stored key
    stub = execution_stub()
    parent = f"workspaces/{ws}"

    good = openai_key()
    ok = await stub.TestApiKey(
        pb.TestApiKeyRequest(parent=parent, provider=OPENAI, candidate_api_key=good)
    )
    assert ok.valid
    assert len(emulator.state.find_requests(key=good)) == 1

    bad = openai_key()
    emulator.state.revoke(bad)
    try:
        refused = await stub.TestApiKey(
            pb.TestApiKeyRequest(parent=parent, provider=OPENAI, candidate_api_key=bad)
        )
    finally:
        emulator.state.restore(bad)
    assert not refused.valid
    assert refused.reason == "PROVIDER_AUTH_FAILED"
    assert bad not in refused.message

    unreachable = await stub.TestApiKey(
        pb.TestApiKeyRequest(
            parent=parent,
            provider=ANTHROPIC,
            candidate_api_key=anthropic_key(),
            base_url=f"http://127.0.0.1:{closed_port()}",
        )
    )
    assert not unreachable.valid
    assert unreachable.reason == "PROVIDER_UNREACHABLE", (unreachable.message, unreachable.latency)


async def test_test_api_key_errors(workspace: Workspace, execution_stub: Stub) -> None:
    ws = await workspace()
    stub = execution_stub()
    parent = f"workspaces/{ws}"

    err = await expect_error(
        stub.TestApiKey(pb.TestApiKeyRequest(parent=parent, provider=OPENAI)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "API_KEY_NOT_CONFIGURED"

    for bad, field in (
        (
            pb.TestApiKeyRequest(
                parent=parent,
                provider=OPENAI,
                candidate_api_key=openai_key(),
                base_url="http://example.com",
            ),
            "base_url",
        ),
        (pb.TestApiKeyRequest(parent=parent, provider=kv_res.PROVIDER_UNSPECIFIED), "provider"),
        (pb.TestApiKeyRequest(parent="nope", provider=OPENAI), "parent"),
    ):
        err = await expect_error(stub.TestApiKey(bad), grpc.StatusCode.INVALID_ARGUMENT)
        assert error_details(err)[1] == [field]


async def test_forged_page_tokens_and_out_of_range_times_are_invalid(
    execution_stub: Stub,
) -> None:
    """Page tokens are only encoded, not signed, and Timestamps may hold any numbers: what a
    caller can put there is the caller's error, never INTERNAL."""
    stub = execution_stub()
    parent = f"workspaces/ws-{uuid.uuid4().hex[:8]}"
    # The binding part of a token for this listing, with a cursor that is not one.
    query = "|".join([parent, "", "0", "None", "None"])
    for cursor in ({"t": "yesterday", "id": str(uuid.uuid4())}, {"id": "1"}, {"t": 5}):
        raw = json.dumps({**cursor, "q": query}).encode()
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        err = await expect_error(
            stub.ListExecutions(pb.ListExecutionsRequest(parent=parent, page_token=token)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_details(err)[1] == ["page_token"]

    for bad in (
        Timestamp(seconds=10**12),
        Timestamp(seconds=-(10**12)),
        Timestamp(seconds=0, nanos=-5),
    ):
        err = await expect_error(
            stub.ListExecutions(pb.ListExecutionsRequest(parent=parent, end_time=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_details(err)[1] == ["end_time"]
        err = await expect_error(
            stub.GetAgentStats(
                pb.GetAgentStatsRequest(parent=parent, agent_id="agent-1", start_time=bad)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_details(err)[1] == ["start_time"]

    # The earliest valid end has no full default window before it: still an answer.
    earliest = Timestamp(seconds=-62_135_596_800)
    stats = await stub.GetAgentStats(
        pb.GetAgentStatsRequest(parent=parent, agent_id="agent-1", end_time=earliest)
    )
    assert stats.stats.total_count == 0
