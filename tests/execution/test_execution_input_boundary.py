"""Hostile input at the execution service's boundary, over real mTLS: identifiers and label
values with control characters, forged page tokens, oversized page sizes, and bytes that
are not a message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from clients.gen.execution.v1 import execution_service_pb2 as pb
from execution_service.app import RunningExecution
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.support import (
    Stub,
    Workspace,
    error_details,
    error_info,
    expect_error,
    list_all,
    openai_key,
    request,
    run,
)
from tests.page_tokens import forged

CONTROL_SUFFIXES = ["\n", "\r\n", "\x00", "\t", "\x7f", "\x85"]


@pytest.mark.parametrize("suffix", CONTROL_SUFFIXES, ids=repr)
async def test_execute_refuses_control_characters_in_every_identifier(
    workspace: Workspace, execution_stub: Stub, suffix: str
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    cases: dict[str, pb.ExecuteRequest] = {
        "parent": request(ws + suffix),
        "agent_id": request(ws, agent_id="agent-1" + suffix),
        "model": request(ws, model="gpt-4o-mini" + suffix),
        "request_id": request(ws, request_id="rid-1" + suffix),
        "labels": request(ws, labels={"team" + suffix: "core"}),
    }
    for field, req in cases.items():
        outcome = await run(stub, req)
        assert outcome.error is not None, field
        assert outcome.error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error_details(outcome.error)[1] == [field]
    assert await list_all(stub, ws) == []


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "bell\x07", "c1\x9b", "tab\t"])
async def test_execute_refuses_control_characters_in_label_values(
    workspace: Workspace, execution_stub: Stub, value: str
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    outcome = await run(stub, request(ws, labels={"team": value}))
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(outcome.error)[1] == ["labels"]
    assert await list_all(stub, ws) == []
    # Printable Unicode is a fine label value.
    ok = await run(stub, request(ws, labels={"team": "équipe données ✓"}))
    assert ok.completed.labels["team"] == "équipe données ✓"


async def test_a_request_id_with_a_newline_cannot_sidestep_idempotency(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    first = await run(stub, request(ws, request_id="rid-idem"))
    again = await run(stub, request(ws, request_id="rid-idem\n"))
    assert again.error is not None and again.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [e.name for e in await list_all(stub, ws)] == [first.completed.name]


async def test_names_and_filters_with_a_trailing_newline_are_refused(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    done = (await run(stub, request(ws))).completed
    for call, field in (
        (stub.GetExecution(pb.GetExecutionRequest(name=done.name + "\n")), "name"),
        (stub.ListExecutions(pb.ListExecutionsRequest(parent=f"workspaces/{ws}\n")), "parent"),
        (
            stub.ListExecutions(
                pb.ListExecutionsRequest(parent=f"workspaces/{ws}", agent_id="agent-1\n")
            ),
            "agent_id",
        ),
        (
            stub.GetAgentStats(
                pb.GetAgentStatsRequest(parent=f"workspaces/{ws}", agent_id="agent-1\n")
            ),
            "agent_id",
        ),
    ):
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert error_details(err)[1] == [field]


async def _two_executions_and_a_token(ws: str, stub: Any) -> tuple[list[str], str]:
    names = [(await run(stub, request(ws))).completed.name for _ in range(2)]
    first = await stub.ListExecutions(
        pb.ListExecutionsRequest(parent=f"workspaces/{ws}", page_size=1)
    )
    assert first.next_page_token
    return names, first.next_page_token


async def test_forged_execution_page_tokens_are_invalid_argument(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    _, genuine = await _two_executions_and_a_token(ws, stub)
    for changes in (
        {"t": "0001-01-01T00:00:00+14:00"},  # before year 1 once in UTC
        {"t": "9999-12-31T23:59:59-14:00"},  # after year 9999 once in UTC
        {"t": "2026-01-01T00:00:00"},  # no offset: which time is it?
        {"t": "yesterday"},
        {"t": 1_700_000_000},
        {"t": None},
        {"t": ...},
        {"id": 5},  # uuid.UUID(5) raises AttributeError, not ValueError
        {"id": "not-a-uuid"},
        {"id": ["0" * 32]},
        {"id": ...},
        {"extra": True},
    ):
        token = forged(genuine, **changes)
        err = await expect_error(
            stub.ListExecutions(
                pb.ListExecutionsRequest(parent=f"workspaces/{ws}", page_token=token)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_details(err)[1] == ["page_token"], changes


async def test_cursors_at_the_ends_of_time_are_valid(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    names, genuine = await _two_executions_and_a_token(ws, stub)
    parent = f"workspaces/{ws}"
    latest = forged(genuine, t="9999-12-31T23:59:59.999999+00:00")
    page = await stub.ListExecutions(pb.ListExecutionsRequest(parent=parent, page_token=latest))
    assert sorted(e.name for e in page.executions) == sorted(names)
    earliest = forged(genuine, t="0001-01-01T00:00:00+00:00")
    page = await stub.ListExecutions(pb.ListExecutionsRequest(parent=parent, page_token=earliest))
    assert list(page.executions) == []


async def test_page_size_above_the_maximum_is_lowered_to_it(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    await run(stub, request(ws))
    for size in (1001, 2**31 - 1):
        page = await stub.ListExecutions(
            pb.ListExecutionsRequest(parent=f"workspaces/{ws}", page_size=size)
        )
        assert len(page.executions) == 1 and not page.next_page_token


async def test_malformed_messages_are_authorized_first_then_invalid_argument(
    execution: RunningExecution, tls_for: Callable[[str], TlsFiles]
) -> None:
    service = "/execution.v1.ExecutionService"
    corrupt, bad_utf8 = b"\xff\xff\xff", b"\x0a\x04ab\xc3\x28"  # field 1 is a string
    async with secure_channel(execution.port, tls_for("app")) as ch:
        for body in (corrupt, bad_utf8):
            execute = ch.unary_stream(f"{service}/Execute")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in execute(body):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(caught.value).reason == "MALFORMED_REQUEST"
            for method in ("GetExecution", "ListExecutions", "GetAgentStats", "TestApiKey"):
                err = await expect_error(
                    ch.unary_unary(f"{service}/{method}")(body), grpc.StatusCode.INVALID_ARGUMENT
                )
                assert error_info(err).reason == "MALFORMED_REQUEST"
    # A caller the policy does not allow hears that first, whatever it sent.
    async with secure_channel(execution.port, tls_for("keyvault")) as ch:
        err = await expect_error(
            ch.unary_unary(f"{service}/GetExecution")(corrupt), grpc.StatusCode.PERMISSION_DENIED
        )
        assert error_info(err).reason == "PERMISSION_DENIED"
