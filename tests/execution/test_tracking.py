"""Tracking: idempotent request ids, the lease sweeper, stored output, history pages,
per-agent statistics and exact cost, over real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import grpc

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator.server import RunningEmulator
from provider_emulator.textgen import count_input_tokens
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    ANTHROPIC,
    CHUNKS,
    OPENAI,
    Stub,
    Workspace,
    anthropic_key,
    error_details,
    error_info,
    expect_error,
    get_execution,
    list_all,
    openai_key,
    read_rest,
    request,
    run,
    wait_for_state,
)

PROMPT = "Say hello to the team"
INPUT_TOKENS = count_input_tokens([{"content": PROMPT}])
SUCCEEDED = res.EXECUTION_STATE_SUCCEEDED
FAILED = res.EXECUTION_STATE_FAILED
CANCELLED = res.EXECUTION_STATE_CANCELLED

# --- idempotency ----------------------------------------------------------------------------


async def test_finished_duplicate_is_answered_from_the_record(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    stub = execution_stub()
    rid = f"req-{uuid.uuid4().hex}"

    first = await run(stub, request(ws, request_id=rid))
    second = await run(stub, request(ws, request_id=rid))

    assert first.completed.state == SUCCEEDED
    assert second.started.name == first.started.name
    assert second.completed.name == first.completed.name
    assert second.completed == first.completed
    assert second.completed.request_id == rid
    assert second.text == first.text == "".join(CHUNKS)
    assert len(emulator.state.find_requests(key=key)) == 1

    # The same request id in another workspace is another execution.
    other_key = openai_key()
    other_ws = await workspace(openai=other_key)
    third = await run(stub, request(other_ws, request_id=rid))
    assert third.completed.state == SUCCEEDED
    assert third.completed.name != first.completed.name
    assert third.completed.name.startswith(f"workspaces/{other_ws}/executions/")
    assert len(emulator.state.find_requests(key=other_key)) == 1
    assert len(emulator.state.find_requests(key=key)) == 1


async def test_running_duplicate_is_already_exists_naming_the_execution(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script({"chunks": 5, "chunk_delay_ms": 100}, key=key)
    stub = execution_stub()
    rid = f"req-{uuid.uuid4().hex}"

    call = stub.Execute(request(ws, request_id=rid))
    started = (await call.read()).started
    assert started.state == res.EXECUTION_STATE_RUNNING

    duplicate = await run(stub, request(ws, request_id=rid))
    assert duplicate.error is not None
    assert duplicate.error.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(duplicate.error)
    assert info.reason == "EXECUTION_IN_PROGRESS"
    assert info.metadata["execution"] == started.name
    assert duplicate.events == []

    # The first call is unaffected and finishes normally.
    rest = await read_rest(call)
    assert rest[-1].completed.name == started.name
    assert rest[-1].completed.state == SUCCEEDED
    assert len(emulator.state.find_requests(key=key)) == 1


# --- leases and the sweeper -----------------------------------------------------------------


async def test_sweeper_fails_expired_leases_and_spares_renewed_ones(
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
) -> None:
    url = await make_database("ex")
    service = await start_execution_service(database_url=url, lease_seconds=1)
    stub = execution_stub(port=service.port)
    key = openai_key()
    ws = await workspace(openai=key)

    # A live execution on this service, held open by a slow stream.
    emulator.state.script({"chunks": 6, "chunk_delay_ms": 150}, key=key)
    call = stub.Execute(request(ws))
    live = (await call.read()).started

    # An execution whose owner crashed: RUNNING, lease long expired.
    orphan_id = uuid.uuid4()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """INSERT INTO executions (id, workspace, agent_id, provider, model, state,
                   create_time, lease_owner, lease_expires_at)
               VALUES ($1, $2, 'agent-1', 'openai', 'gpt-4o-mini', 'RUNNING',
                   now() - interval '1 minute', 'crashed-owner', now() - interval '30 seconds')""",
            orphan_id,
            ws,
        )
        # Both leases are past; only the live owner renews its own.
        await conn.execute("UPDATE executions SET lease_expires_at = now() - interval '1 second'")
    finally:
        await conn.close()
    assert await service.engine.renew_leases() == 1

    assert await service.engine.sweep_once() == 1

    orphan = await get_execution(stub, f"workspaces/{ws}/executions/{orphan_id}")
    assert orphan.state == FAILED
    assert orphan.error.reason == "INTERRUPTED"
    assert orphan.HasField("end_time")
    assert (await get_execution(stub, live.name)).state == res.EXECUTION_STATE_RUNNING

    rest = await read_rest(call)
    assert rest[-1].completed.state == SUCCEEDED
    assert await service.engine.sweep_once() == 0


async def test_store_output_off_keeps_usage_but_not_text(
    workspace: Workspace, execution_stub: Stub, start_execution_service: StartExecution
) -> None:
    service = await start_execution_service(store_output=False)
    ws = await workspace(openai=openai_key())
    stub = execution_stub(port=service.port)

    outcome = await run(stub, request(ws, prompt=PROMPT))

    assert outcome.text == "".join(CHUNKS)  # the caller still gets the stream
    completed = outcome.completed
    assert completed.state == SUCCEEDED
    assert completed.output_text == ""
    assert completed.usage.input_tokens == INPUT_TOKENS
    assert completed.usage.output_tokens == len(CHUNKS)
    assert completed.cost_nanos == INPUT_TOKENS * 150 + len(CHUNKS) * 600
    stored = await get_execution(stub, completed.name)
    assert stored.output_text == ""
    assert stored.usage == completed.usage


# --- history and statistics -----------------------------------------------------------------


async def cancelled_execution(
    stub: ex_grpc.ExecutionServiceStub, ws: str, emulator: RunningEmulator, key: str
) -> str:
    emulator.state.script({"chunk_delay_ms": 100}, key=key)
    call = stub.Execute(request(ws, agent_id="agent-a"))
    name = (await call.read()).started.name
    assert (await call.read()).WhichOneof("event") == "delta"
    call.cancel()
    assert (await wait_for_state(stub, name)).state == CANCELLED
    return name


async def test_history_pages_filters_and_agent_stats(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    stub = execution_stub()

    # Agent A: a 401 first (the key is not cached yet, so no refetch), three successes of
    # different lengths, one cancelled. Agent B: two successes.
    emulator.state.script({"status": 401}, key=key)
    failed = await run(stub, request(ws, agent_id="agent-a"))
    assert failed.error is not None and failed.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    for chunks in (3, 5, 8):
        emulator.state.script({"chunks": chunks}, key=key)
        assert (await run(stub, request(ws, agent_id="agent-a"))).completed.state == SUCCEEDED
    await cancelled_execution(stub, ws, emulator, key)
    for _ in range(2):
        assert (await run(stub, request(ws, agent_id="agent-b"))).completed.state == SUCCEEDED

    everything = await list_all(stub, ws)
    assert len(everything) == 7

    # Pages of two: newest first, no duplicates, no gaps, an empty token at the end.
    pages: list[list[res.Execution]] = []
    token = ""
    while True:
        page = await stub.ListExecutions(
            pb.ListExecutionsRequest(parent=f"workspaces/{ws}", page_size=2, page_token=token)
        )
        pages.append(list(page.executions))
        token = page.next_page_token
        if not token:
            break
    walked = [e for page in pages for e in page]
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [e.name for e in walked] == [e.name for e in everything]
    assert len({e.name for e in walked}) == 7
    times = [e.create_time.ToDatetime() for e in walked]
    assert times == sorted(times, reverse=True)

    a_runs = [e for e in everything if e.agent_id == "agent-a"]
    assert [e.name for e in await list_all(stub, ws, page_size=2, agent_id="agent-a")] == [
        e.name for e in a_runs
    ]
    only_failed = await list_all(stub, ws, state=FAILED)
    assert [e.name for e in only_failed] == [failed.started.name]
    assert only_failed[0].error.reason == "PROVIDER_AUTH_FAILED"
    a_succeeded = await list_all(stub, ws, agent_id="agent-a", state=SUCCEEDED)
    assert len(a_succeeded) == 3 and all(e.agent_id == "agent-a" for e in a_succeeded)

    # A time range [start, end): newest first means index 3 is older than index 1.
    start, end = walked[3].create_time, walked[1].create_time
    in_range = await list_all(stub, ws, page_size=1, start_time=start, end_time=end)
    assert [e.name for e in in_range] == [walked[2].name, walked[3].name]
    since = await list_all(stub, ws, start_time=start)
    assert [e.name for e in since] == [e.name for e in walked[:4]]

    # A token is bound to its filters.
    first = await stub.ListExecutions(
        pb.ListExecutionsRequest(parent=f"workspaces/{ws}", page_size=2)
    )
    err = await expect_error(
        stub.ListExecutions(
            pb.ListExecutionsRequest(
                parent=f"workspaces/{ws}",
                page_size=2,
                page_token=first.next_page_token,
                agent_id="agent-a",
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_details(err)[1] == ["page_token"]

    # Statistics for A equal the sums over A's listed executions.
    stats = (
        await stub.GetAgentStats(
            pb.GetAgentStatsRequest(parent=f"workspaces/{ws}", agent_id="agent-a")
        )
    ).stats
    assert stats.agent_id == "agent-a"
    assert stats.total_count == 5
    assert (stats.succeeded_count, stats.failed_count, stats.cancelled_count) == (3, 1, 1)
    assert stats.running_count == 0
    assert stats.success_rate == 3 / 5
    assert stats.input_tokens == sum(e.usage.input_tokens for e in a_runs)
    assert stats.output_tokens == sum(e.usage.output_tokens for e in a_runs)
    assert stats.output_tokens >= 3 + 5 + 8
    assert stats.cost_nanos == sum(e.cost_nanos for e in a_runs if e.HasField("cost_nanos"))
    assert stats.cost_nanos > 0
    assert stats.unknown_cost_count == 0
    for low, high in (
        (stats.latency_p50, stats.latency_p95),
        (stats.time_to_first_token_p50, stats.time_to_first_token_p95),
    ):
        assert high.ToNanoseconds() > 0
        assert low.ToNanoseconds() <= high.ToNanoseconds()

    # The window: only A's executions created at or after the second success.
    a_oldest_first = list(reversed(a_runs))
    windowed = (
        await stub.GetAgentStats(
            pb.GetAgentStatsRequest(
                parent=f"workspaces/{ws}",
                agent_id="agent-a",
                start_time=a_oldest_first[2].create_time,
                end_time=a_oldest_first[4].create_time,
            )
        )
    ).stats
    inside = a_oldest_first[2:4]
    assert windowed.total_count == 2
    assert windowed.succeeded_count == 2 and windowed.failed_count == 0
    assert windowed.output_tokens == sum(e.usage.output_tokens for e in inside) == 5 + 8
    b_stats = (
        await stub.GetAgentStats(
            pb.GetAgentStatsRequest(parent=f"workspaces/{ws}", agent_id="agent-b")
        )
    ).stats
    assert b_stats.total_count == 2 and b_stats.success_rate == 1.0


# --- cost -----------------------------------------------------------------------------------


async def test_anthropic_cache_tokens_are_recorded_and_priced_exactly(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = anthropic_key()
    ws = await workspace(anthropic=key)
    emulator.state.set_cache_tokens(read=1200, write=345, key=key)
    stub = execution_stub()

    completed = (
        await run(stub, request(ws, ANTHROPIC, "claude-3-5-sonnet-20241022", prompt=PROMPT))
    ).completed

    usage = completed.usage
    assert (usage.input_tokens, usage.output_tokens) == (INPUT_TOKENS, len(CHUNKS))
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (1200, 345)
    assert not usage.estimated
    # USD 3.00 / 15.00 / 0.30 / 3.75 per million tokens, in nano-dollars per token.
    expected = INPUT_TOKENS * 3000 + len(CHUNKS) * 15000 + 1200 * 300 + 345 * 3750
    assert completed.cost_nanos == expected
    assert (await get_execution(stub, completed.name)).cost_nanos == expected


async def test_openai_cached_tokens_are_not_input_and_priced_exactly(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.set_cache_tokens(read=640, key=key)
    stub = execution_stub()

    completed = (await run(stub, request(ws, OPENAI, "gpt-4o", prompt=PROMPT))).completed

    sent = emulator.state.find_requests(key=key)[-1]
    assert sent.usage is not None and sent.usage["cache_read_tokens"] == 640
    usage = completed.usage
    assert usage.input_tokens == INPUT_TOKENS  # prompt_tokens minus the cached ones
    assert usage.cache_read_tokens == 640
    assert usage.cache_write_tokens == 0
    # gpt-4o: USD 2.50 input, 10.00 output, 1.25 cached input per million tokens.
    assert completed.cost_nanos == INPUT_TOKENS * 2500 + len(CHUNKS) * 10000 + 640 * 1250


async def test_unknown_model_cost_is_unknown_not_zero(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()

    completed = (await run(stub, request(ws, OPENAI, "my-finetune", agent_id="tuned"))).completed

    assert completed.state == SUCCEEDED
    assert completed.usage.output_tokens == len(CHUNKS)
    assert not completed.HasField("cost_nanos")
    assert not (await get_execution(stub, completed.name)).HasField("cost_nanos")
    stats = (
        await stub.GetAgentStats(
            pb.GetAgentStatsRequest(parent=f"workspaces/{ws}", agent_id="tuned")
        )
    ).stats
    assert stats.unknown_cost_count == 1
    assert stats.cost_nanos == 0
