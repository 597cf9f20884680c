"""ExecutionClient and ExecutionClientSync against the real execution service, key vault and
provider emulator."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest

from clients import (
    ClientError,
    Completed,
    Delta,
    ExecutionClient,
    ExecutionClientSync,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Started,
)
from clients.gen.execution.v1 import resources_pb2 as ex_res
from execution_service.app import RunningExecution
from provider_emulator.server import RunningEmulator
from tests.clients.conftest import Tls

Workspace = Callable[..., Awaitable[str]]
CHUNKS = ["word0", *(f" word{i}" for i in range(1, 20))]  # the emulator's default answer


def openai_key() -> str:
    return f"sk-test-{uuid.uuid4().hex}"


async def wait_terminal(client: ExecutionClient, name: str) -> ex_res.Execution:
    async with asyncio.timeout(5):
        while True:
            found = await client.get_execution(name)
            if found.state != ex_res.EXECUTION_STATE_RUNNING:
                return found
            await asyncio.sleep(0.02)


async def test_execute_streams_typed_events_and_history_round_trips(
    runner: ExecutionClient, workspace: Workspace
) -> None:
    ws = await workspace(openai=openai_key())
    events = [
        event
        async for event in runner.execute(
            ws,
            agent_id="client-bot",
            provider="openai",
            model="gpt-4o-mini",
            system="Be brief.",
            prompt="Say hello",
            max_tokens=100,
            request_id="client-1",
            labels={"team": "qa"},
        )
    ]
    assert isinstance(events[0], Started) and isinstance(events[-1], Completed)
    assert all(isinstance(e, Delta) for e in events[1:-1])
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text == "".join(CHUNKS)
    started, done = events[0].execution, events[-1].execution
    assert started.state == ex_res.EXECUTION_STATE_RUNNING and started.name == done.name
    assert done.state == ex_res.EXECUTION_STATE_SUCCEEDED
    assert done.output_text == text and done.usage.output_tokens == 20
    assert done.HasField("cost_nanos") and done.cost_nanos > 0
    assert done.labels == {"team": "qa"} and done.request_id == "client-1"

    assert await runner.get_execution(done.name) == done

    # One more, by another agent: filters and pages.
    async for _ in runner.execute(
        ws, agent_id="other-bot", provider="openai", model="gpt-4o-mini", prompt="Hi"
    ):
        pass
    page = await runner.list_executions(ws, page_size=1)
    assert len(page.items) == 1 and page.next_page_token
    assert page.items[0].agent_id == "other-bot"  # newest first
    mine = [e async for e in runner.iter_executions(ws, agent_id="client-bot", page_size=1)]
    assert [e.name for e in mine] == [done.name]
    assert [e async for e in runner.iter_executions(ws, state="failed")] == []
    succeeded = [e async for e in runner.iter_executions(ws, state="SUCCEEDED", limit=1)]
    assert len(succeeded) == 1
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert (await runner.list_executions(ws, start_time=later)).items == []

    stats = await runner.get_agent_stats(ws, "client-bot")
    assert stats.agent_id == "client-bot"
    assert (stats.total_count, stats.succeeded_count, stats.success_rate) == (1, 1, 1.0)
    assert stats.output_tokens == 20 and stats.cost_nanos == done.cost_nanos
    past = await runner.get_agent_stats(
        ws,
        "client-bot",
        start_time=dt.datetime(2020, 1, 1),
        end_time=dt.datetime(2020, 1, 2, tzinfo=dt.UTC),
    )
    assert past.total_count == 0


async def test_a_replay_is_marked_and_a_request_id_reused_for_another_request_is_refused(
    runner: ExecutionClient, workspace: Workspace
) -> None:
    ws = await workspace(openai=openai_key())
    run = dict(agent_id="client-bot", provider="openai", model="gpt-4o-mini", request_id="rid-1")
    first = [e async for e in runner.execute(ws, **run, prompt="Say hello")]
    again = [e async for e in runner.execute(ws, **run, prompt="Say hello")]

    assert not any(e.replayed for e in first)
    assert [type(e) for e in again] == [Started, Delta, Completed]
    assert all(e.replayed for e in again)
    done, original = again[-1], first[-1]
    assert isinstance(done, Completed) and isinstance(original, Completed)
    assert done.replayed and not original.replayed
    assert done.execution == original.execution

    with pytest.raises(FailedPrecondition) as caught:
        async for _ in runner.execute(ws, **run, prompt="Say goodbye"):
            pass
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert caught.value.execution_name == done.execution.name


async def test_failed_execute_names_the_execution(
    runner: ExecutionClient, workspace: Workspace
) -> None:
    ws = await workspace()  # no key stored
    seen: list[object] = []
    with pytest.raises(FailedPrecondition) as caught:
        async for event in runner.execute(
            ws, agent_id="a", provider="anthropic", model="claude-3-5-haiku-20241022", prompt="x"
        ):
            seen.append(event)
    err = caught.value
    assert err.reason == "API_KEY_NOT_CONFIGURED"
    assert err.domain == "execution.agents.internal"
    assert len(seen) == 1 and isinstance(seen[0], Started)
    assert err.execution_name == seen[0].execution.name
    failed = await runner.get_execution(err.execution_name)
    assert failed.state == ex_res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "API_KEY_NOT_CONFIGURED"


async def test_invalid_execute_and_unknown_execution(
    runner: ExecutionClient, workspace: Workspace
) -> None:
    ws = await workspace()
    with pytest.raises(InvalidArgument) as caught:
        async for _ in runner.execute(ws, agent_id="bad agent!", provider="openai", model=""):
            pass
    fields = {v.field for v in caught.value.field_violations}
    assert {"agent_id", "model"} <= fields, caught.value.field_violations
    assert caught.value.execution_name is None  # rejected before anything was recorded

    missing = f"workspaces/{ws}/executions/{uuid.uuid4()}"
    with pytest.raises(NotFound) as not_found:
        await runner.get_execution(missing)
    assert not_found.value.reason == "EXECUTION_NOT_FOUND"
    assert not_found.value.execution_name == missing


async def test_leaving_the_stream_early_cancels_the_execution(
    runner: ExecutionClient, workspace: Workspace, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script({"chunk_delay_ms": 100}, key=key)
    stream = runner.execute(ws, agent_id="a", provider="openai", model="gpt-4o-mini", prompt="x")
    name = ""
    async with contextlib.aclosing(stream):
        async for event in stream:
            if isinstance(event, Started):
                name = event.execution.name
            if isinstance(event, Delta):
                break
    cancelled = await wait_terminal(runner, name)
    assert cancelled.state == ex_res.EXECUTION_STATE_CANCELLED


async def test_key_checks(
    runner: ExecutionClient, workspace: Workspace, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    ok = await runner.test_api_key(ws, "openai")
    assert ok.valid and ok.reason == "" and ok.HasField("latency")

    candidate = openai_key()
    emulator.state.revoke(candidate)
    try:
        refused = await runner.test_api_key(
            ws, "openai", candidate_api_key=candidate, base_url=emulator.base_url
        )
    finally:
        emulator.state.restore(candidate)
    assert not refused.valid and refused.reason == "PROVIDER_AUTH_FAILED"
    assert candidate not in refused.message

    with pytest.raises(FailedPrecondition) as caught:
        await runner.test_api_key(ws, "anthropic")  # none stored
    assert caught.value.reason == "API_KEY_NOT_CONFIGURED"


async def test_sync_client(execution: RunningExecution, tls: Tls, workspace: Workspace) -> None:
    ws = await workspace(anthropic=f"sk-ant-test-{uuid.uuid4().hex}")

    def scenario() -> tuple[list[str], ex_res.Execution, list[str], int, bool, str]:
        with ExecutionClientSync.connect(f"localhost:{execution.port}", **tls("app")) as client:
            kinds, done = [], None
            for event in client.execute(
                ws,
                agent_id="sync-bot",
                provider="anthropic",
                model="claude-3-5-sonnet-20241022",
                messages=[("user", "Hello")],
            ):
                kinds.append(type(event).__name__)
                if isinstance(event, Completed):
                    done = event.execution
            assert done is not None
            fetched = client.get_execution(done.name)
            names = [e.name for e in client.iter_executions(ws, agent_id="sync-bot")]
            total = client.get_agent_stats(ws, "sync-bot").total_count
            valid = client.test_api_key(ws, "anthropic").valid
            try:
                for _ in client.execute(ws, agent_id="a", provider="openai", model="m", prompt="x"):
                    pass
                reason = ""
            except FailedPrecondition as err:  # no openai key in this workspace
                reason = f"{err.reason} {bool(err.execution_name)}"
            assert client.list_executions(ws, page_size=1).next_page_token
            return kinds, fetched, names, total, valid, reason

    kinds, fetched, names, total, valid, reason = await asyncio.to_thread(scenario)
    assert kinds[0] == "Started" and kinds[-1] == "Completed" and set(kinds[1:-1]) == {"Delta"}
    assert fetched.state == ex_res.EXECUTION_STATE_SUCCEEDED
    assert names == [fetched.name] and total == 1 and valid
    assert reason == "API_KEY_NOT_CONFIGURED True"


async def test_cancel_execution_async_and_sync(
    runner: ExecutionClient,
    execution: RunningExecution,
    tls: Tls,
    workspace: Workspace,
    emulator: RunningEmulator,
) -> None:
    """A slow stream is cancelled by the async client; the sync client cancels another and is
    refused on the finished one."""
    key = openai_key()
    ws = await workspace(openai=key)
    slow = {"chunks": 100, "chunk_delay_ms": 100}  # ten seconds unless cancelled
    emulator.state.script(slow, key=key)
    emulator.state.script(slow, key=key)

    async def run_until_cancelled(names: asyncio.Queue[str]) -> ClientError:
        try:
            async for event in runner.execute(
                ws, agent_id="bot", provider="openai", model="gpt-4o-mini", prompt="long"
            ):
                if isinstance(event, Started):
                    await names.put(event.execution.name)
        except ClientError as err:
            return err
        raise AssertionError("the stream completed instead of being cancelled")

    async def cancelled_stream(cancel: Callable[[str], Awaitable[ex_res.Execution]]) -> None:
        names: asyncio.Queue[str] = asyncio.Queue()
        stream = asyncio.create_task(run_until_cancelled(names))
        started = asyncio.create_task(names.get())
        await asyncio.wait([stream, started], return_when=asyncio.FIRST_COMPLETED)
        if not started.done():  # the stream ended before it started: say how
            started.cancel()
            raise AssertionError(f"the stream ended before it started: {await stream!r}")
        name = started.result()
        async with asyncio.timeout(30):  # a hang says which step it was in
            answered = await cancel(name)
        assert answered.state == ex_res.EXECUTION_STATE_CANCELLED
        assert answered.cancelled_by == "spiffe://agents.internal/app"
        async with asyncio.timeout(30):
            err = await stream
        assert err.code == grpc.StatusCode.CANCELLED and err.reason == "CANCELLED_BY_REQUEST"
        assert err.execution_name == name

    await cancelled_stream(runner.cancel_execution)

    def cancel_sync(name: str) -> ex_res.Execution:
        with ExecutionClientSync.connect(f"localhost:{execution.port}", **tls("app")) as client:
            return client.cancel_execution(name)

    async def cancel_in_thread(name: str) -> ex_res.Execution:
        return await asyncio.to_thread(cancel_sync, name)

    await cancelled_stream(cancel_in_thread)

    # In a workspace of its own: a stream cancelled before its provider request went out
    # leaves its slow step queued for this key, and this execution must not get it.
    short = await workspace(openai=openai_key())
    done = [
        e
        async for e in runner.execute(
            short, agent_id="b", provider="openai", model="gpt-4o-mini", prompt="short"
        )
    ]
    assert isinstance(done[-1], Completed)
    with pytest.raises(FailedPrecondition) as caught:
        await asyncio.to_thread(cancel_sync, done[-1].execution.name)
    assert caught.value.reason == "EXECUTION_ALREADY_FINISHED"
