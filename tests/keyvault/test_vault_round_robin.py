"""The execution service's vault channel spreads calls over every vault address it resolves.

gRPC keeps one long-lived HTTP/2 connection per channel, so a load balancer that balances
connections sends all of one execution replica's reveals to one vault replica. The channel
therefore balances per call (round robin) over the addresses of a headless Service. Here two
real vaults, each on its own database, stand behind one target; each database's audit log
counts the reveals its vault served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.app import VAULT_CHANNEL_OPTIONS
from keyvault_service.app import RunningKeyVault
from service_kit.tls import TlsFiles, channel_credentials
from tests.conftest import secure_channel
from tests.keyvault.conftest import StartVault, keyring_of
from tests.keyvault.support import key_name, workspace

CALLS = 40


async def reveals_served(vault: RunningKeyVault, ws: str) -> int:
    return await vault.pool.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'REVEAL' AND workspace = $1", ws
    )


async def test_vault_channel_round_robins_reveals_over_two_vaults(
    start_vault: StartVault, tls_for: Callable[[str], TlsFiles]
) -> None:
    vaults = [await start_vault(keyring_of(1)), await start_vault(keyring_of(1))]
    ws = workspace()
    name = key_name(ws)
    for vault in vaults:  # the same key in both databases, as replicas sharing one would see
        async with secure_channel(vault.port, tls_for("app")) as channel:
            await kv_grpc.KeyVaultServiceStub(channel).SetApiKey(
                pb.SetApiKeyRequest(name=name, api_key="sk-round-robin-0123456789")
            )

    # One target naming both vaults, as DNS names every pod behind a headless Service. The
    # certificate names localhost; the production names are in the workload certificates.
    target = "ipv4:" + ",".join(f"127.0.0.1:{v.port}" for v in vaults)
    options = (*VAULT_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "localhost"))
    async with grpc.aio.secure_channel(
        target, channel_credentials(tls_for("execution")), options=options
    ) as channel:
        stub = kv_grpc.KeyVaultServiceStub(channel)
        reveal = pb.RevealApiKeyRequest(name=name)
        # Round robin picks among connected vaults: call until both have answered once (the
        # second connection may still be coming up for the first calls), then count.
        for _ in range(200):
            await stub.RevealApiKey(reveal, timeout=5)
            if all([await reveals_served(v, ws) for v in vaults]):
                break
            await asyncio.sleep(0.02)
        before = [await reveals_served(v, ws) for v in vaults]
        for _ in range(CALLS):
            await stub.RevealApiKey(reveal, timeout=5)
        after = [await reveals_served(v, ws) for v in vaults]

    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == CALLS
    # Strict alternation gives 20 and 20; a pick_first channel would give 40 and 0.
    assert min(served) >= CALLS // 4, served
