"""The provider is called while the RUNNING row is written, when nothing is expected to refuse
the execution (no request id, and no budget found by the last admission of its workspace
and agent): the caller still gets `Started` only once the row exists, and no text before it.
When the write refuses after all (a budget created by another process, an agent changed
under its cached copy), the early provider request is closed and the caller sees exactly
what it would have seen without it.

A table lock held by the test holds the row's write back, so that the provider request is
seen going out (or not) while the write waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from execution_service.agent_store import AgentStore
from execution_service.app import RunningExecution
from execution_service.budget_store import BudgetStore
from execution_service.budgets import BudgetSpec
from execution_service.change_notices import CHANNEL, ChangeNotices
from execution_service.early_start import UnbudgetedScopes
from provider_emulator.server import RunningEmulator
from tests.execution.support import Stub, Workspace, error_info, openai_key, request, run
from tests.execution.test_agents import create, route

SLOW = {"chunks": 5, "chunk_delay_ms": 300}  # still streaming when the early request is closed


@contextlib.asynccontextmanager
async def held(pool: asyncpg.Pool, statement: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction that has run `statement` (a lock), committed on leaving."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(statement)
        yield conn


async def provider_requests(emulator: RunningEmulator, key: str, count: int) -> None:
    async with asyncio.timeout(10):
        while len(emulator.state.find_requests(key=key)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def known_without_budget(workspace: Workspace, execution_stub: Stub) -> tuple[str, str]:
    """A workspace with an OpenAI key, (its id, the key), after one execution whose admission
    found no budget: the service now calls its provider while the row is written."""
    key = openai_key()
    ws = await workspace(openai=key)
    assert (await run(execution_stub(), request(ws))).error is None
    return ws, key


async def cached_agent(
    workspace: Workspace, execution_stub: Stub, **fields: Any
) -> tuple[str, str, pb.ExecuteRequest]:
    """A workspace with an OpenAI key and a free-text agent "bot" (with `fields`), run once by
    name: the service now holds a copy of it and knows its scope to have no budget. Returns
    the workspace, the key and the request that runs the agent."""
    key = openai_key()
    ws = await workspace(openai=key)
    await create(
        execution_stub(),
        ws,
        "bot",
        routes=[route()],
        input_schema=None,
        output_schema=None,
        **fields,
    )
    by_name = pb.ExecuteRequest(
        parent=f"workspaces/{ws}", agent=f"workspaces/{ws}/agents/bot", input_json='{"q": 1}'
    )
    assert (await run(execution_stub(), by_name)).error is None
    return ws, key, by_name


async def refused_without_provider_call(
    execution_stub: Stub, ws: str, emulator: RunningEmulator, key: str, *, calls: int
) -> None:
    """An execution in `ws` is refused BUDGET_EXCEEDED, and the provider has still seen only
    `calls` requests with `key`."""
    refused = await run(execution_stub(), request(ws))
    assert refused.error is not None and error_info(refused.error).reason == "BUDGET_EXCEEDED"
    assert len(emulator.state.find_requests(key=key)) == calls


async def last_request_closed(emulator: RunningEmulator, key: str) -> bool:
    await emulator.state.wait_for(
        lambda s: s.find_requests(key=key)[-1].outcome != "in_progress", timeout=3.0
    )
    return emulator.state.find_requests(key=key)[-1].outcome == "disconnected"


async def test_the_provider_is_called_while_the_row_is_written(
    workspace: Workspace,
    execution_stub: Stub,
    execution: RunningExecution,
    emulator: RunningEmulator,
) -> None:
    ws, key = await known_without_budget(workspace, execution_stub)
    async with held(execution.pool, "LOCK TABLE execution_keys IN EXCLUSIVE MODE"):
        call = execution_stub().Execute(request(ws))
        await provider_requests(emulator, key, 2)  # sent while the row cannot be written
        started = asyncio.create_task(call.read())
        await asyncio.sleep(0.3)
        assert not started.done()  # nothing reaches the caller before the row exists
    event = await started
    assert event.WhichOneof("event") == "started"
    rest = []
    while (e := await call.read()) is not grpc.aio.EOF:
        rest.append(e)
    assert rest[-1].completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert "".join(e.delta.text for e in rest) == rest[-1].completed.output_text != ""
    stored = await execution_stub().GetExecution(pb.GetExecutionRequest(name=event.started.name))
    assert stored.execution.state == res.EXECUTION_STATE_SUCCEEDED


async def test_a_budget_whose_notice_is_lost_refuses_and_closes_the_early_request(
    workspace: Workspace,
    execution_stub: Stub,
    execution: RunningExecution,
    emulator: RunningEmulator,
) -> None:
    ws, key = await known_without_budget(workspace, execution_stub)
    # Written beside the service with triggers off: its notice never comes.
    async with execution.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await BudgetStore(conn).create(ws, "tiny", BudgetSpec(limit_nanos=1))
    emulator.state.script(SLOW, key=key)
    async with held(execution.pool, "LOCK TABLE budgets IN EXCLUSIVE MODE"):
        call = asyncio.create_task(run(execution_stub(), request(ws)))
        await provider_requests(emulator, key, 2)  # went out before the admission answered
    refused = await call
    assert refused.error is not None and not refused.events  # not even Started
    assert refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(refused.error).reason == "BUDGET_EXCEEDED"
    assert await last_request_closed(emulator, key)
    # Learned: the next one is refused before any provider call.
    await refused_without_provider_call(execution_stub, ws, emulator, key, calls=2)


async def test_a_budget_created_by_another_replica_is_heard_of_before_any_provider_call(
    workspace: Workspace,
    execution_stub: Stub,
    execution: RunningExecution,
    emulator: RunningEmulator,
) -> None:
    ws, key = await known_without_budget(workspace, execution_stub)
    assert (ws, "agent-1") in execution.engine.unbudgeted
    # Written beside the service, as another replica does: only its notice tells this one.
    await BudgetStore(execution.pool).create(ws, "tiny", BudgetSpec(limit_nanos=1))
    async with asyncio.timeout(5):
        while (ws, "agent-1") in execution.engine.unbudgeted:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await refused_without_provider_call(execution_stub, ws, emulator, key, calls=1)


def test_nothing_is_known_without_budget_while_new_budgets_are_not_heard_of() -> None:
    scopes = UnbudgetedScopes()
    scopes.learn("ws", "a", budgeted=False)
    assert ("ws", "a") not in scopes  # not listening yet
    scopes.hear(True)
    scopes.learn("ws", "a", budgeted=False)
    scopes.learn("ws", "b", budgeted=False)
    scopes.learn("other", "a", budgeted=False)
    assert ("ws", "a") in scopes
    scopes.learn("ws", "b", budgeted=True)
    assert ("ws", "b") not in scopes
    scopes.forget_workspace("ws")
    assert ("ws", "a") not in scopes and ("other", "a") in scopes
    scopes.hear(False)  # the notices' connection was lost: what was learned no longer holds
    assert ("other", "a") not in scopes


def test_the_least_recently_learned_scope_goes_first() -> None:
    scopes = UnbudgetedScopes(capacity=2)
    scopes.hear(True)
    for agent in ("a", "b", "a", "c"):
        scopes.learn("ws", agent, budgeted=False)
    assert [("ws", x) in scopes for x in "abc"] == [True, False, True]


async def test_a_budget_created_through_the_service_applies_before_any_provider_call(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ws, key = await known_without_budget(workspace, execution_stub)
    await execution_stub("admin").CreateBudget(
        pb.CreateBudgetRequest(
            parent=f"workspaces/{ws}",
            budget_id="tiny",
            budget=res.Budget(limit_nanos=1, period=res.BUDGET_PERIOD_MONTH),
        )
    )
    await refused_without_provider_call(execution_stub, ws, emulator, key, calls=1)


async def test_an_agent_deleted_under_its_cached_copy_closes_the_early_request(
    workspace: Workspace,
    execution_stub: Stub,
    execution: RunningExecution,
    emulator: RunningEmulator,
) -> None:
    ws, key, by_name = await cached_agent(workspace, execution_stub)
    emulator.state.script(SLOW, key=key)
    async with held(execution.pool, "LOCK TABLE agents IN ACCESS EXCLUSIVE MODE") as conn:
        # Deleted beside the service, as another replica would: the cached copy is stale.
        await conn.execute("DELETE FROM agents WHERE workspace = $1 AND agent_id = 'bot'", ws)
        call = asyncio.create_task(run(execution_stub(), by_name))
        await provider_requests(emulator, key, 2)
    gone = await call
    assert gone.error is not None and not gone.events
    assert gone.error.code() == grpc.StatusCode.NOT_FOUND
    assert await last_request_closed(emulator, key)


async def test_an_agent_updated_by_another_replica_runs_as_updated_with_one_provider_request(
    workspace: Workspace,
    execution_stub: Stub,
    execution: RunningExecution,
    emulator: RunningEmulator,
) -> None:
    ws, key, by_name = await cached_agent(workspace, execution_stub, instructions="v1")
    # Updated beside the service, as another replica does: only its notice tells this one.
    await execution.pool.execute(
        "UPDATE agents SET instructions = 'v2', etag = 'e2' WHERE workspace = $1", ws
    )
    async with asyncio.timeout(5):
        while execution.agents.cached(ws, "bot"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    done = await run(execution_stub(), by_name)
    assert done.error is None and done.completed.agent_etag == "e2"
    sent = emulator.state.find_requests(key=key)
    assert len(sent) == 2  # no request went out with the stale copy
    assert sent[-1].body["messages"][0]["content"] == "v2"


def test_change_notices_forget_what_they_name_and_ignore_the_unreadable() -> None:
    scopes = UnbudgetedScopes()
    scopes.hear(True)
    scopes.learn("ws", "a", budgeted=False)
    notices = ChangeNotices("postgresql://unused", scopes, AgentStore(pool=None))  # type: ignore[arg-type]
    for payload in ("not json", "[1]", '["agent"]', '{"budget": "ws"}', '["budget", 7]'):
        notices._on_notification(None, 0, CHANNEL, payload)
    assert ("ws", "a") in scopes
    notices._on_notification(None, 0, CHANNEL, '["budget", "ws"]')
    assert ("ws", "a") not in scopes
