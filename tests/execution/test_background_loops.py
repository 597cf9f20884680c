"""The running service's own background work, on: its lease renewal keeps a long execution
alive past its lease, and its sweeper fails an execution whose owner died."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator.server import RunningEmulator
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    Stub,
    Workspace,
    get_execution,
    openai_key,
    read_rest,
    request,
    wait_for_state,
)

LEASE_SECONDS = 2.0


async def test_the_running_service_renews_its_leases_and_sweeps_orphans(
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
) -> None:
    url = await make_database("ex")
    service = await start_execution_service(
        database_url=url, background=True, lease_seconds=LEASE_SECONDS, sweep_interval=0.2
    )
    stub = execution_stub(port=service.port)
    key = openai_key()
    ws = await workspace(openai=key)

    # A live execution that outlasts its lease twice over (8 chunks, 0.6 s apart).
    emulator.state.script({"chunks": 8, "chunk_delay_ms": 600}, key=key)
    call = stub.Execute(request(ws))
    live = (await call.read()).started
    live_id = uuid.UUID(live.name.rsplit("/", 1)[1])
    began = asyncio.get_running_loop().time()

    conn = await asyncpg.connect(url)
    try:
        first_lease = await conn.fetchval(
            "SELECT lease_expires_at FROM executions WHERE id = $1", live_id
        )
        # An execution whose owner crashed: RUNNING, its lease long expired.
        orphan_id = uuid.uuid4()
        await conn.execute(
            """INSERT INTO executions (id, workspace, agent_id, provider, model, state,
                   create_time, lease_owner, lease_expires_at)
               VALUES ($1, $2, 'agent-1', 'openai', 'gpt-4o-mini', 'RUNNING',
                   now() - interval '1 minute', 'crashed-owner', now() - interval '30 seconds')""",
            orphan_id,
            ws,
        )
        # Nobody calls sweep_once: the service's own sweep loop must find it.
        orphan = await wait_for_state(stub, f"workspaces/{ws}/executions/{orphan_id}")
        assert orphan.state == res.EXECUTION_STATE_FAILED
        assert orphan.error.reason == "INTERRUPTED"

        # Past one and a half leases, the live execution is still RUNNING: its lease was
        # renewed (without renewal the sweeper would have failed it by now).
        await asyncio.sleep(
            max(0.0, began + 1.5 * LEASE_SECONDS - asyncio.get_running_loop().time())
        )
        assert (await get_execution(stub, live.name)).state == res.EXECUTION_STATE_RUNNING
        renewed = await conn.fetchval(
            "SELECT lease_expires_at FROM executions WHERE id = $1", live_id
        )
        assert renewed > first_lease
    finally:
        await conn.close()

    rest = await read_rest(call)
    assert rest[-1].completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert rest[-1].completed.error.reason == ""
