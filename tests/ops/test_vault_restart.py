"""A vault killed (SIGKILL) and started again after an outage long enough for gRPC's default
reconnect backoff to stretch to several seconds: the execution service uses it again as soon
as it serves, and its key cache trusts nothing it could not have heard about meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.keyring import generate_master_key
from provider_emulator.server import start_emulator
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.support import openai_key, request, run
from tests.ops.conftest import free_port
from tests.ops.test_key_revocation import warm
from tests.ops.test_processes import Spawn, spawn, until_serving

__all__ = ["spawn"]  # the fixture

# gRPC's default backoff (1 s, x1.6 per failed attempt, 20 % jitter) would next try to connect
# about 9 s and 16 s into an outage: restarting after 11 s lands in the middle of a long wait.
OUTAGE_SECONDS = 11.0


async def test_executions_succeed_as_soon_as_a_killed_vault_serves_again(
    spawn: Spawn, pki: Path, make_database: Callable[[str], Awaitable[str]]
) -> None:
    vault_port, exec_port = free_port(), free_port()
    async with start_emulator() as emulator:
        env = {
            "CERTS_DIR": str(pki),
            "KEYVAULT_MASTER_KEYS": f"1:{generate_master_key()}",
            "KEYVAULT_DATABASE_URL": await make_database("kv"),
            "EXECUTION_DATABASE_URL": await make_database("ex"),
            "KEYVAULT_LISTEN_ADDRESS": f"127.0.0.1:{vault_port}",
            "EXECUTION_LISTEN_ADDRESS": f"127.0.0.1:{exec_port}",
            "KEYVAULT_ADDRESS": f"localhost:{vault_port}",
            "KEYVAULT_METRICS_PORT": "0",
            "EXECUTION_METRICS_PORT": "0",
            "OPENAI_BASE_URL": emulator.base_url,
        }
        vault = await spawn("keyvault_service", env)
        await until_serving(vault_port, pki, vault)
        execution = await spawn("execution_service", env)
        await until_serving(exec_port, pki, execution)
        app = TlsFiles.for_workload(pki, "app")
        ws = f"ws-{uuid.uuid4().hex[:12]}"
        async with secure_channel(vault_port, app) as channel:
            await kv_grpc.KeyVaultServiceStub(channel).SetApiKey(
                kv.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/openai", api_key=openai_key())
            )

        async with secure_channel(exec_port, app) as channel:
            stub = ex_grpc.ExecutionServiceStub(channel)
            assert (await run(stub, request(ws))).completed.state == res.EXECUTION_STATE_SUCCEEDED

            vault.kill()
            await vault.wait()
            # Calls keep coming during the outage (they fail): the vault channel keeps trying.
            load = asyncio.create_task(_keep_calling(stub, ws))
            await asyncio.sleep(OUTAGE_SECONDS)
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load

            restarted = await spawn("keyvault_service", env)
            await until_serving(vault_port, pki, restarted)
            serving_at = time.monotonic()
            outcome = await run(stub, request(ws), timeout=10)
            took = time.monotonic() - serving_at

            # The key-change subscription came back by itself: keys are cached again.
            admin = TlsFiles.for_workload(pki, "admin")
            async with secure_channel(vault_port, admin) as audit_channel:
                await warm(stub, ws, kv_grpc.KeyVaultServiceStub(audit_channel))

        # The first execution after the vault serves again succeeds, and without a wait that
        # only a long reconnect backoff would explain (measured: well under a second).
        assert outcome.error is None, (outcome.error.code(), outcome.error.details())
        assert outcome.completed.state == res.EXECUTION_STATE_SUCCEEDED
        print(f"first execution after SERVING took {took:.3f} s")
        assert took < 3.0


async def _keep_calling(stub: ex_grpc.ExecutionServiceStub, ws: str) -> None:
    # Until the service notices that its key-change subscription is gone (milliseconds after
    # the kill), its cached key is still good to use: no change to it can have been missed.
    async with asyncio.timeout(5):
        while (await run(stub, request(ws), timeout=1.0)).error is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    while True:
        outcome = await run(stub, request(ws), timeout=1.0)
        assert outcome.error is not None  # the loss is known: no execution can succeed
        await asyncio.sleep(0.2)
