"""A request id answers only the request it was first used for: the same request again is a
replay, marked on every event; another request with that id is refused REQUEST_ID_REUSED
naming the execution, before any provider call or new row. Real servers, PostgreSQL and the
provider emulator."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest

from clients.gen.execution.v1 import resources_pb2 as res
from execution_service.plan import decode
from provider_emulator.server import RunningEmulator
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    Outcome,
    Stub,
    Workspace,
    error_info,
    list_all,
    openai_key,
    read_rest,
    request,
    run,
)
from tests.execution.test_agent_executions import INPUT, by_agent, make_agent
from tests.execution.test_agents import struct

SUCCEEDED = res.EXECUTION_STATE_SUCCEEDED


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def assert_reused(outcome: Outcome, execution: str) -> None:
    """Refused before anything ran: no event, FAILED_PRECONDITION naming the execution."""
    assert outcome.error is not None and outcome.events == []
    assert outcome.error.code() == grpc.StatusCode.FAILED_PRECONDITION, outcome.error.details()
    info = error_info(outcome.error)
    assert info.reason == "REQUEST_ID_REUSED"
    assert info.metadata["execution"] == execution
    assert execution in (outcome.error.details() or "")


async def test_the_same_request_again_is_a_replay_marked_on_every_event(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub, rid = await workspace(openai=key), execution_stub(), new_request_id()
    config = res.GenerationConfig(max_tokens=100, temperature=0.5)

    first = await run(
        stub, request(ws, request_id=rid, labels={"a": "1", "b": "2"}, generation_config=config)
    )
    # The same request, its labels in another order.
    again = await run(
        stub, request(ws, request_id=rid, labels={"b": "2", "a": "1"}, generation_config=config)
    )

    assert first.completed.state == SUCCEEDED
    assert not any(event.replayed for event in first.events)
    assert [e.WhichOneof("event") for e in again.events] == ["started", "delta", "completed"]
    assert all(event.replayed for event in again.events)
    assert again.completed == first.completed and again.text == first.text
    assert len(emulator.state.find_requests(key=key)) == 1


# Each changes one thing of the first request.
CHANGES: dict[str, dict[str, Any]] = {
    "prompt": {"prompt": "Say goodbye to the team"},
    "model": {"model": "gpt-4o"},
    "labels": {"labels": {"team": "other"}},
    "no labels": {"labels": {}},
    "generation config": {"generation_config": res.GenerationConfig(max_tokens=50)},
    "agent id": {"agent_id": "agent-2"},
}


@pytest.mark.parametrize("change", CHANGES)
async def test_a_request_id_reused_for_another_request_is_refused(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator, change: str
) -> None:
    key = openai_key()
    ws, stub, rid = await workspace(openai=key), execution_stub(), new_request_id()
    first = (await run(stub, request(ws, request_id=rid, labels={"team": "core"}))).completed

    fields: dict[str, Any] = {"labels": {"team": "core"}, **CHANGES[change]}
    assert_reused(await run(stub, request(ws, request_id=rid, **fields)), first.name)

    assert len(emulator.state.find_requests(key=key)) == 1  # no provider call
    assert [e.name for e in await list_all(stub, ws)] == [first.name]  # no new row
    # The first request itself is still answered from its record.
    again = await run(stub, request(ws, request_id=rid, labels={"team": "core"}))
    assert again.completed == first and all(event.replayed for event in again.events)


async def test_an_agents_input_as_struct_or_as_the_same_json_text_is_one_request(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub, rid = await workspace(openai=key), execution_stub(), new_request_id()
    await make_agent(stub, ws)
    first = (await run(stub, by_agent(ws, request_id=rid, input=struct(INPUT)))).completed

    # The same JSON as text: other key order, other spacing.
    text = json.dumps(dict(reversed(INPUT.items())), indent=2)
    again = await run(stub, by_agent(ws, request_id=rid, input_json=text))
    assert again.completed == first and all(event.replayed for event in again.events)

    other = {**INPUT, "question": "Where is my other order?"}
    assert_reused(await run(stub, by_agent(ws, request_id=rid, input=struct(other))), first.name)
    refused = await run(stub, by_agent(ws, request_id=rid, input_json=json.dumps(other)))
    assert_reused(refused, first.name)
    labelled = by_agent(ws, request_id=rid, input=struct(INPUT), labels={"team": "x"})
    assert_reused(await run(stub, labelled), first.name)

    assert len(emulator.state.find_requests(key=key)) == 1
    assert [e.name for e in await list_all(stub, ws)] == [first.name]


async def test_a_running_request_id_is_reused_for_another_request(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws, stub, rid = await workspace(openai=key), execution_stub(), new_request_id()
    emulator.state.script({"chunks": 5, "chunk_delay_ms": 100}, key=key)
    call = stub.Execute(request(ws, request_id=rid))
    started = (await call.read()).started
    assert started.state == res.EXECUTION_STATE_RUNNING

    assert_reused(await run(stub, request(ws, request_id=rid, prompt="Other")), started.name)

    rest = await read_rest(call)
    assert rest[-1].completed.name == started.name and rest[-1].completed.state == SUCCEEDED
    assert len(emulator.state.find_requests(key=key)) == 1


# --- the request id taken between the first look and the insert ------------------------------


async def _lock_waiters(conn: asyncpg.Connection) -> int:
    waiting = await conn.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'"""
    )
    return int(waiting)


@pytest.mark.parametrize("held_by", ["this request", "another request", "a row without hash"])
async def test_a_request_id_taken_while_the_execution_was_being_recorded(
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
    held_by: str,
) -> None:
    """Another call's uncommitted row holds the request id: this call finds no execution
    for it, then its insert conflicts once that row commits. The row it conflicted with is
    judged like any other: the same request is a replay, another one REQUEST_ID_REUSED, a
    row recorded before hashes were kept matches."""
    url = await make_database("ex")
    service = await start_execution_service(database_url=url)
    stub = execution_stub(port=service.port)
    key = openai_key()
    ws, rid = await workspace(openai=key), new_request_id()
    sent = request(ws, request_id=rid)
    hashes = {
        "this request": decode(sent).request_hash,
        "another request": decode(request(ws, request_id=rid, prompt="Other")).request_hash,
        "a row without hash": None,
    }
    holder = uuid.uuid4()
    holder_name = f"workspaces/{ws}/executions/{holder}"

    conn = await asyncpg.connect(url)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            """INSERT INTO executions (id, workspace, agent_id, provider, model, state,
                   request_id, request_hash, output_text, create_time, end_time)
               VALUES ($1, $2, 'agent-1', 'openai', 'gpt-4o-mini', 'SUCCEEDED', $3, $4,
                   'recorded answer', now(), now())""",
            holder,
            ws,
            rid,
            hashes[held_by],
        )
        call = asyncio.create_task(run(stub, sent))
        async with asyncio.timeout(10):
            while await _lock_waiters(conn) == 0:  # the call's insert waits for this row
                assert not call.done(), "the call ended before it reached the insert"
                await asyncio.sleep(0.01)
        await tx.commit()
        outcome = await asyncio.wait_for(call, 10)
    finally:
        await conn.close()

    if held_by == "another request":
        assert_reused(outcome, holder_name)
    else:
        assert outcome.completed.name == holder_name and outcome.text == "recorded answer"
        assert all(event.replayed for event in outcome.events)
    assert emulator.state.find_requests(key=key) == []
    assert [e.name for e in await list_all(stub, ws)] == [holder_name]
