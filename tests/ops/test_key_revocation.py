"""Revocation across replicas, as deployed: two vault processes and two execution processes
(real processes, real mTLS) sharing their databases. Once SetApiKey or DeleteApiKey returns,
through either vault, the next execution in either execution process honours it, although
both had the old key cached."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from provider_emulator.server import RunningEmulator, start_emulator
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.support import Outcome, error_info, openai_key, request, reveal_count, run
from tests.ops.replicas import start_replicas
from tests.ops.test_processes import Spawn, spawn

__all__ = ["spawn"]  # the fixture


async def test_a_changed_or_deleted_key_is_honoured_at_once_by_every_process(
    spawn: Spawn, pki: Path, make_database: Callable[[str], Awaitable[str]]
) -> None:
    replicas = await start_replicas(spawn, pki, make_database)
    app, admin = TlsFiles.for_workload(pki, "app"), TlsFiles.for_workload(pki, "admin")
    vaults = [kv_grpc.KeyVaultServiceStub(secure_channel(p, app)) for p in replicas.vault_ports]
    audit = kv_grpc.KeyVaultServiceStub(secure_channel(replicas.vault_ports[0], admin))
    executions = [ex_grpc.ExecutionServiceStub(secure_channel(p, app)) for p in replicas.exec_ports]
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    name = f"workspaces/{ws}/apiKeys/openai"

    async def everywhere() -> list[Outcome]:
        """One execution in each execution process, at the same time."""
        return list(await asyncio.gather(*(run(stub, request(ws)) for stub in executions)))

    async with start_emulator() as first, start_emulator() as second:
        key = openai_key()
        await vaults[0].SetApiKey(
            kv.SetApiKeyRequest(name=name, api_key=key, base_url=first.base_url)
        )
        for stub in executions:
            await warm(stub, ws, audit)
        warmed = _served(first, key)
        assert _served(second, key) == 0

        # The base URL is corrected through one vault...
        await vaults[0].SetApiKey(
            kv.SetApiKeyRequest(name=name, api_key=key, base_url=second.base_url)
        )
        for outcome in await everywhere():  # ...and both processes use it at once.
            assert outcome.completed.state == res.EXECUTION_STATE_SUCCEEDED
        assert (_served(first, key), _served(second, key)) == (warmed, 2)

        # A new key through the other vault.
        new_key = openai_key()
        await vaults[1].SetApiKey(
            kv.SetApiKeyRequest(name=name, api_key=new_key, base_url=second.base_url)
        )
        for outcome in await everywhere():
            assert outcome.completed.state == res.EXECUTION_STATE_SUCCEEDED
        assert (_served(second, key), _served(second, new_key)) == (2, 2)

        # Deleted through the other vault: nobody uses it any more.
        await vaults[1].DeleteApiKey(kv.DeleteApiKeyRequest(name=name))
        for outcome in await everywhere():
            assert outcome.error is not None
            assert outcome.error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(outcome.error).reason == "API_KEY_NOT_CONFIGURED"
        assert _served(second, new_key) == 2


async def warm(
    stub: ex_grpc.ExecutionServiceStub, ws: str, audit: kv_grpc.KeyVaultServiceStub
) -> None:
    """Execute until an execution is served from the cache (no new reveal), as it is once
    the process has subscribed to key changes (it waits about a second for that at start)."""
    for _ in range(5):
        before = await reveal_count(audit, ws)
        outcome = await run(stub, request(ws))
        assert outcome.completed.state == res.EXECUTION_STATE_SUCCEEDED
        if await reveal_count(audit, ws) == before:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the key cache never served a key")


def _served(emulator: RunningEmulator, key: str) -> int:
    return len(emulator.state.find_requests(key=key))
