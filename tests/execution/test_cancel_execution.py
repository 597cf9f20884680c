"""CancelExecution: through the replica running the execution or through another one sharing
its database, with the real emulator streaming slowly; refusals for finished, unknown and
other workspaces' executions, and for callers the policy does not allow."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from execution_service.app import RunningExecution
from execution_service.engine import Started
from execution_service.errors import CancelledByRequest
from execution_service.plan import decode
from provider_emulator.server import RunningEmulator
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    Stub,
    Workspace,
    error_info,
    expect_error,
    get_execution,
    openai_key,
    request,
    run,
)

APP = "spiffe://agents.internal/app"
ADMIN = "spiffe://agents.internal/admin"
# A stream of 100 chunks 100 ms apart: ten seconds, unless it is cancelled.
SLOW = {"chunks": 100, "chunk_delay_ms": 100}


async def start_slow_execution(stub: ex_grpc.ExecutionServiceStub, ws: str) -> tuple[Any, str]:
    """An Execute call whose first delta has arrived, and its execution's name."""
    call = stub.Execute(request(ws))
    started = await call.read()
    assert started.WhichOneof("event") == "started"
    first = await call.read()
    assert first.WhichOneof("event") == "delta"
    return call, started.started.name


async def stream_end(call: Any) -> grpc.aio.AioRpcError:
    """Read the call to its end, which must be an error status."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the stream completed instead of being cancelled")


async def cancel(stub: ex_grpc.ExecutionServiceStub, name: str) -> res.Execution:
    return (await stub.CancelExecution(pb.CancelExecutionRequest(name=name))).execution


def assert_cancelled_by(execution: res.Execution, caller: str) -> None:
    assert execution.state == res.EXECUTION_STATE_CANCELLED
    assert execution.error.reason == "CANCELLED_BY_REQUEST"
    assert caller in execution.error.message
    assert execution.cancelled_by == caller
    assert execution.HasField("end_time")


def assert_stream_cancelled(err: grpc.aio.AioRpcError, name: str, caller: str) -> None:
    assert err.code() == grpc.StatusCode.CANCELLED, (err.code(), err.details())
    info = error_info(err)
    assert info.reason == "CANCELLED_BY_REQUEST"
    assert info.metadata["execution"] == name
    assert info.metadata["cancelled_by"] == caller


async def assert_provider_request_closed(emulator: RunningEmulator, key: str) -> None:
    """The emulator notices a closed connection at its next write, a chunk later."""
    await emulator.state.wait_for(
        lambda s: all(r.outcome != "in_progress" for r in s.find_requests(key=key)), timeout=3.0
    )
    sent = emulator.state.find_requests(key=key)
    assert len(sent) == 1
    assert sent[0].outcome == "disconnected"
    assert sent[0].chunks_sent < SLOW["chunks"] // 2


async def test_cancel_through_the_replica_running_it(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script(SLOW, key=key)
    stub = execution_stub()
    call, name = await start_slow_execution(stub, ws)

    answered = await cancel(stub, name)
    # The answer waited for the owner's record: here the owner is the replica answering.
    assert_cancelled_by(answered, APP)
    assert answered.output_text  # the partial output stays recorded
    assert_stream_cancelled(await stream_end(call), name, APP)
    await assert_provider_request_closed(emulator, key)
    assert_cancelled_by(await get_execution(stub, name), APP)

    # Cancelling it again: it has finished.
    err = await expect_error(cancel(stub, name), grpc.StatusCode.FAILED_PRECONDITION)
    assert error_info(err).reason == "EXECUTION_ALREADY_FINISHED"
    assert error_info(err).metadata["execution"] == name


async def test_cancel_through_another_replica_sharing_the_database(
    workspace: Workspace,
    start_execution_service: StartExecution,
    make_database: Callable[[str], Awaitable[str]],
    tls_for: Callable[[str], TlsFiles],
    emulator: RunningEmulator,
) -> None:
    """Admin cancels, through the replica that is not running the execution: the owner hears
    of it through PostgreSQL and closes the provider request at once."""
    database = await make_database("ex")
    owner = await start_execution_service(database_url=database)
    other = await start_execution_service(database_url=database)
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script(SLOW, key=key)
    app = ex_grpc.ExecutionServiceStub(secure_channel(owner.port, tls_for("app")))
    admin = ex_grpc.ExecutionServiceStub(secure_channel(other.port, tls_for("admin")))
    call, name = await start_slow_execution(app, ws)

    asked = time.monotonic()
    answered = await cancel(admin, name)
    answered_after = time.monotonic() - asked
    assert_cancelled_by(answered, ADMIN)
    assert_stream_cancelled(await stream_end(call), name, ADMIN)
    await assert_provider_request_closed(emulator, key)
    # From the request's commit to the owner's record, on the database's clock: the
    # provider request was closed before the end time was taken.
    took = await request_to_record_seconds(database, name)
    assert took < 1.0, took
    assert answered_after < 1.0, answered_after
    print(f"cancel request -> CANCELLED record: {took * 1000:.1f} ms")


async def test_a_cancel_request_missed_while_not_listening_is_found_on_reconnect(
    workspace: Workspace,
    start_execution_service: StartExecution,
    make_database: Callable[[str], Awaitable[str]],
    tls_for: Callable[[str], TlsFiles],
    emulator: RunningEmulator,
) -> None:
    database = await make_database("ex")
    owner = await start_execution_service(database_url=database)
    other = await start_execution_service(database_url=database)
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script(SLOW, key=key)
    app = ex_grpc.ExecutionServiceStub(secure_channel(owner.port, tls_for("app")))
    through_other = ex_grpc.ExecutionServiceStub(secure_channel(other.port, tls_for("app")))
    call, name = await start_slow_execution(app, ws)

    await owner.cancels.stop()  # the owner hears nothing now
    answered = await cancel(through_other, name)
    # Recorded, not yet carried out: the answer says so after waiting about a second.
    assert answered.state == res.EXECUTION_STATE_RUNNING and not answered.cancelled_by
    assert not owner.cancels.live

    owner.cancels.start()  # listening again, it looks for what it missed
    assert_stream_cancelled(await stream_end(call), name, APP)
    assert_cancelled_by(await get_execution(app, name), APP)


async def test_cancel_refusals(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    stub = execution_stub()
    ws = await workspace(openai=openai_key())
    finished = (await run(stub, request(ws))).completed
    assert finished.state == res.EXECUTION_STATE_SUCCEEDED

    err = await expect_error(cancel(stub, finished.name), grpc.StatusCode.FAILED_PRECONDITION)
    assert error_info(err).reason == "EXECUTION_ALREADY_FINISHED"
    assert (await get_execution(stub, finished.name)).state == res.EXECUTION_STATE_SUCCEEDED

    unknown = f"workspaces/{ws}/executions/{uuid.uuid4()}"
    err = await expect_error(cancel(stub, unknown), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "EXECUTION_NOT_FOUND"

    elsewhere = finished.name.replace(f"workspaces/{ws}/", "workspaces/another-ws/")
    err = await expect_error(cancel(stub, elsewhere), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "EXECUTION_NOT_FOUND"

    err = await expect_error(cancel(stub, "executions/nope"), grpc.StatusCode.INVALID_ARGUMENT)


async def test_only_app_and_admin_may_cancel(
    workspace: Workspace,
    execution_stub: Stub,
    execution: RunningExecution,
    emulator: RunningEmulator,
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script(SLOW, key=key)
    call, name = await start_slow_execution(execution_stub(), ws)
    for workload in ("execution", "keyvault"):
        err = await expect_error(
            cancel(execution_stub(workload), name), grpc.StatusCode.PERMISSION_DENIED
        )
        assert workload in err.details()
    # Denied before anything was looked up: unknown executions are denied the same way.
    await expect_error(
        cancel(execution_stub("keyvault"), f"workspaces/{ws}/executions/{uuid.uuid4()}"),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert (await get_execution(execution_stub(), name)).state == res.EXECUTION_STATE_RUNNING
    call.cancel()


async def request_to_record_seconds(database_url: str, name: str) -> float:
    conn = await asyncpg.connect(database_url)
    try:
        took = await conn.fetchval(
            "SELECT extract(epoch FROM end_time - cancel_requested_at) FROM executions "
            "WHERE id = $1",
            uuid.UUID(name.rsplit("/", 1)[1]),
        )
    finally:
        await conn.close()
    return float(took)


async def test_the_feed_listens_again_after_losing_its_connection(
    workspace: Workspace,
    start_execution_service: StartExecution,
    make_database: Callable[[str], Awaitable[str]],
    tls_for: Callable[[str], TlsFiles],
    emulator: RunningEmulator,
) -> None:
    database = await make_database("ex")
    owner = await start_execution_service(database_url=database)
    other = await start_execution_service(database_url=database)
    assert await owner.cancels.wait_live(5.0)
    lost = owner.cancels.listener_pid
    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", lost)
    finally:
        await conn.close()
    for _ in range(250):  # reconnecting after a short pause
        if owner.cancels.listener_pid not in (None, lost):
            break
        await asyncio.sleep(0.02)
    assert owner.cancels.listener_pid not in (None, lost)

    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script(SLOW, key=key)
    app = ex_grpc.ExecutionServiceStub(secure_channel(owner.port, tls_for("app")))
    through_other = ex_grpc.ExecutionServiceStub(secure_channel(other.port, tls_for("app")))
    call, name = await start_slow_execution(app, ws)
    assert_cancelled_by(await cancel(through_other, name), APP)
    assert_stream_cancelled(await stream_end(call), name, APP)


async def test_a_cancel_arriving_while_an_event_is_written_ends_the_stream_with_its_status(
    workspace: Workspace,
    execution: RunningExecution,
    execution_stub: Stub,
    emulator: RunningEmulator,
) -> None:
    """The engine driven as the servicer drives it: `Started` was handed over and is being
    written (the generator waits at its yield) when the cancel request comes. The task must
    not be cancelled then (gRPC would end the call without a status, and the caller would
    wait forever): the stream ends CANCELLED_BY_REQUEST once the write is done."""
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script(SLOW, key=key)
    events = execution.engine.execute(decode(request(ws)), deadline=None, request_id="t")
    started = await anext(events)
    assert isinstance(started, Started)
    assert execution.engine.cancel(started.execution.id, ADMIN)
    await asyncio.sleep(0.05)  # a cancellation of this task would land here
    try:
        await anext(events)
        raise AssertionError("the stream went on after the cancel")
    except CancelledByRequest as err:
        assert err.metadata["execution"] == started.execution.name
    finally:
        await events.aclose()
    recorded = await get_execution(execution_stub(), started.execution.name)
    assert recorded.state == res.EXECUTION_STATE_CANCELLED
    assert recorded.error.reason == "CANCELLED_BY_REQUEST" and ADMIN in recorded.error.message
    # Its route never started: it took no time (not the process's monotonic clock).
    [attempt] = recorded.route_attempts
    assert attempt.latency.ToTimedelta().total_seconds() < 1
