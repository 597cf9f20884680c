"""Replicas that behave as one service: two vault processes and two execution processes on
shared databases. Every RPC works through either replica; killing an execution process under
load loses no acknowledged write (idempotent calls are retried by the client's service config,
its running executions are swept as INTERRUPTED); one request id sent to both replicas at
once calls the provider once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from clients import (
    Completed,
    ExecutionClient,
    NotFound,
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
