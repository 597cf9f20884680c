"""Replicas that behave as one service: two vault processes and two execution processes on
shared databases. Every RPC works through either replica; killing an execution process under
load loses no acknowledged write (idempotent calls are retried by the client's service config,
its running executions are swept as INTERRUPTED); one request id sent to both replicas at
once calls the provider once."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from clients import (
    AlreadyExists,
    ClientError,
    Completed,
    Delta,
    ExecutionClient,
    NotFound,
    Started,
)
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from provider_emulator.server import RunningEmulator, start_emulator
from tests.execution.support import openai_key
from tests.ops.replicas import start_replicas
from tests.ops.test_processes import Spawn, spawn

__all__ = ["spawn"]  # the fixture

MODEL = "gpt-4o-mini"


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with start_emulator(chunks=5, chunk_delay_ms=20) as running:
        yield running


def _workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


async def _execute(client: ExecutionClient, ws: str, **fields: object) -> res.Execution:
    """One execution to its end; its finished record."""
    completed = None
    async for event in client.execute(ws, **fields):  # type: ignore[arg-type]
        if isinstance(event, Completed):
            completed = event.execution
    assert completed is not None
    return completed


async def test_every_rpc_works_through_either_replica(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
) -> None:
    replicas = await start_replicas(spawn, pki, make_database)
    for here, there in ((0, 1), (1, 0)):  # written through one replica, read through the other
        ws, key = _workspace(), openai_key()
        async with (
            replicas.vault(here) as vault_here,
            replicas.vault(there) as vault_there,
            replicas.vault(there, workload="execution") as revealer,
            replicas.vault(here, workload="admin") as admin,
            replicas.execution(here) as exec_here,
            replicas.execution(there) as exec_there,
        ):
            stored = await vault_here.set_api_key(ws, "openai", key, base_url=emulator.base_url)
            assert (await vault_there.get_api_key(ws, "openai")).fingerprint == (
                stored.api_key.fingerprint
            )
            listed = await vault_there.list_api_keys(ws)
            assert [k.name for k in listed.items] == [stored.api_key.name]
            assert (await revealer.reveal_api_key(ws, "openai")).plaintext_key == key

            ran = await _execute(
                exec_here, ws, agent_id="a1", provider="openai", model=MODEL, prompt="hi"
            )
            assert ran.state == res.EXECUTION_STATE_SUCCEEDED
            assert (await exec_there.get_execution(ran.name)).state == ran.state
            assert [e.name for e in (await exec_there.list_executions(ws)).items] == [ran.name]
            assert (await exec_there.get_agent_stats(ws, "a1")).succeeded_count == 1
            assert (await exec_there.test_api_key(ws, "openai")).valid

            agent = await exec_here.create_agent(ws, "helper", provider="openai", model=MODEL)
            assert (await exec_there.get_agent(ws, "helper")).etag == agent.etag
            assert [a.agent_id for a in (await exec_there.list_agents(ws)).items] == ["helper"]
            updated = await exec_there.update_agent(ws, "helper", description="shared")
            assert (await exec_here.get_agent(ws, "helper")).description == "shared"
            by_name = await _execute(exec_there, ws, agent="helper", input={"text": "hello"})
            assert by_name.state == res.EXECUTION_STATE_SUCCEEDED
            await exec_here.delete_agent(ws, "helper", etag=updated.etag)
            with pytest.raises(NotFound):
                await exec_there.get_agent(ws, "helper")

            assert (await admin.rewrap_api_keys()).remaining_count == 0
            # One audit trail: the set through one vault, reveals through both (the caller's
            # through the other vault, each execution process's through its own).
            audited = [e.action for e in (await admin.list_audit_events(ws)).items]
            assert audited.count(kv_res.AUDIT_ACTION_SET) == 1
            assert audited.count(kv_res.AUDIT_ACTION_REVEAL) >= 2
            await vault_there.delete_api_key(ws, "openai")
            with pytest.raises(NotFound):
                await vault_here.get_api_key(ws, "openai")


async def test_killing_an_execution_process_under_load_loses_no_acknowledged_write(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
) -> None:
    # Short leases: the survivor sweeps the dead process's executions within seconds.
    lease = {"EXECUTION_LEASE_SECONDS": "2", "EXECUTION_SWEEP_INTERVAL_SECONDS": "0.5"}
    replicas = await start_replicas(spawn, pki, make_database, lease)
    ws = _workspace()
    async with (
        start_emulator(chunks=400, chunk_delay_ms=50) as slow,  # 20 s streams
        replicas.vault() as vaults,
        replicas.execution() as executions,
        replicas.execution(0) as doomed,
    ):
        await vaults.set_api_key(ws, "openai", openai_key(), base_url=slow.base_url)
        # Executions running on the process about to die.
        streams = [
            doomed.execute(ws, provider="openai", agent_id="long", model=MODEL, prompt="long")
            for _ in range(3)
        ]
        running = []
        for stream in streams:
            first = await anext(stream)
            assert isinstance(first, Started)
            running.append(first.execution.name)
            assert isinstance(await anext(stream), Delta)

        acknowledged_keys: dict[str, str] = {}  # workspace: fingerprint
        acknowledged_agents: list[str] = []
        refused: list[ClientError] = []
        under_way = asyncio.Event()

        async def writer(worker: int) -> None:
            for i in range(8):
                # Idempotent, retried by the channel's service config: every one succeeds.
                key_ws = f"{ws}-{worker}-{i}"
                stored = await vaults.set_api_key(key_ws, "openai", openai_key())
                acknowledged_keys[key_ws] = stored.api_key.fingerprint
                if len(acknowledged_keys) == 8:
                    under_way.set()
                await executions.list_executions(ws)
                # Not retried (a repeat could hide a success): may fail on the dying process.
                agent_id = f"agent-{worker}-{i}"
                try:
                    await executions.create_agent(ws, agent_id, provider="openai", model=MODEL)
                except ClientError as err:
                    refused.append(err)
                else:
                    acknowledged_agents.append(agent_id)

        async def kill_a_node() -> None:
            """An execution process and a vault die together, with calls in flight."""
            await under_way.wait()
            replicas.executions[0].send_signal(signal.SIGKILL)
            replicas.vaults[0].send_signal(signal.SIGKILL)

        await asyncio.gather(kill_a_node(), *(writer(w) for w in range(4)))
        assert await replicas.executions[0].wait() == -signal.SIGKILL
        assert len(acknowledged_keys) == 32
        assert len(acknowledged_agents) + len(refused) == 32 and len(acknowledged_agents) >= 16
        for key_ws, fingerprint in acknowledged_keys.items():
            assert (await vaults.get_api_key(key_ws, "openai")).fingerprint == fingerprint
        for agent_id in acknowledged_agents:
            assert (await executions.get_agent(ws, agent_id)).agent_id == agent_id

        for stream in streams:  # the dead process's streams broke...
            with pytest.raises(ClientError):
                async for _ in stream:
                    pass
        for name in running:  # ...and the survivor's sweeper failed their executions.
            execution = await _until_finished(executions, name)
            assert execution.state == res.EXECUTION_STATE_FAILED
            assert execution.error.reason == "INTERRUPTED"


async def _until_finished(client: ExecutionClient, name: str) -> res.Execution:
    for _ in range(100):
        execution = await client.get_execution(name)
        if execution.state != res.EXECUTION_STATE_RUNNING:
            return execution
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} never left RUNNING")


async def test_one_request_id_sent_to_both_replicas_at_once_calls_the_provider_once(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
) -> None:
    replicas = await start_replicas(spawn, pki, make_database)
    ws, key = _workspace(), openai_key()
    async with (
        start_emulator(chunks=10, chunk_delay_ms=100) as slow,
        replicas.vault() as vault,
        replicas.execution(0) as first,
        replicas.execution(1) as second,
    ):
        await vault.set_api_key(ws, "openai", key, base_url=slow.base_url)
        request_id = uuid.uuid4().hex

        async def attempt(client: ExecutionClient) -> list[object] | AlreadyExists:
            try:
                return [
                    event
                    async for event in client.execute(
                        ws,
                        agent_id="once",
                        provider="openai",
                        model=MODEL,
                        prompt="once",
                        request_id=request_id,
                    )
                ]
            except AlreadyExists as err:
                return err

        outcomes = await asyncio.gather(attempt(first), attempt(second))
        assert len(slow.state.find_requests(key=key)) == 1
        streamed = [o for o in outcomes if isinstance(o, list) and not o[0].replayed]
        assert len(streamed) == 1
        name = streamed[0][-1].execution.name
        other = next(o for o in outcomes if o is not streamed[0])
        if isinstance(other, AlreadyExists):  # the other replica saw it running...
            assert other.execution_name == name
        else:  # ...or finished, and replayed it from the record
            assert other[0].replayed and other[-1].execution.name == name
