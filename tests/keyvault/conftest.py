"""A real key vault server on port 0, over real mTLS, on a real PostgreSQL database."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2_grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.app import RunningKeyVault, start_keyvault
from keyvault_service.keyring import Keyring, generate_master_key
from keyvault_service.settings import DEFAULT_POLICY, KeyVaultSettings
from service_kit.egress import EgressPolicy
from service_kit.settings import ServerSettings
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel

# Keys in tests point at the provider emulator on loopback: an operator allowlist admits it.
TEST_EGRESS = EgressPolicy.parse("127.0.0.1,localhost")


def keyring_of(*versions: int, primary: int | None = None) -> Keyring:
    return Keyring(
        keys={v: bytes.fromhex(generate_master_key()) for v in versions},
        primary_version=primary or max(versions),
    )


def vault_settings(
    tls: TlsFiles, keyring: Keyring, policy: Path = DEFAULT_POLICY
) -> KeyVaultSettings:
    return KeyVaultSettings(
        server=ServerSettings(
            listen_address="127.0.0.1:0",
            tls=tls,
            policy_file=policy,
            metrics_port=0,
            grace_seconds=1.0,
            log_level="INFO",
            db_pool_min=1,
            db_pool_max=10,
        ),
        database_url=None,
        keyring=keyring,
        egress=TEST_EGRESS,
    )


StartVault = Callable[..., Awaitable[RunningKeyVault]]


@pytest.fixture
async def start_vault(
    tls_for: Callable[[str], TlsFiles], make_database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[StartVault]:
    """Starts vault servers (each on its own database unless one is given); stops them after."""
    running: list[RunningKeyVault] = []

    async def start(
        keyring: Keyring, database_url: str | None = None, **changes: Any
    ) -> RunningKeyVault:
        settings = vault_settings(tls_for("keyvault"), keyring)
        if changes:
            settings = dataclasses.replace(settings, **changes)
        vault = await start_keyvault(settings, database_url or await make_database("kv"))
        running.append(vault)
        return vault

    yield start
    for vault in running:
        await vault.stop(grace=0.5)


@pytest.fixture(scope="session")
async def shared_vault(
    tls_for: Callable[[str], TlsFiles], make_database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[RunningKeyVault]:
    """One vault for the tests that only need unique workspaces."""
    vault = await start_keyvault(
        vault_settings(tls_for("keyvault"), keyring_of(1)), await make_database("kv")
    )
    yield vault
    await vault.stop(grace=0.5)


@pytest.fixture(scope="session")
def vault_stub(
    shared_vault: RunningKeyVault, tls_for: Callable[[str], TlsFiles]
) -> Callable[[str], kv_grpc.KeyVaultServiceStub]:
    """`vault_stub("app")`: a stub on the shared vault authenticated as that workload."""
    stubs: dict[str, kv_grpc.KeyVaultServiceStub] = {}

    def stub(workload: str) -> kv_grpc.KeyVaultServiceStub:
        if workload not in stubs:
            stubs[workload] = kv_grpc.KeyVaultServiceStub(
                secure_channel(shared_vault.port, tls_for(workload))
            )
        return stubs[workload]

    return stub


class Stubs:
    """One running vault's stubs for the app, execution and admin workloads."""

    def __init__(self, running: RunningKeyVault, tls_for: Callable[[str], TlsFiles]) -> None:
        self.channels = [
            secure_channel(running.port, tls_for(w)) for w in ("app", "execution", "admin")
        ]
        self.app, self.execution, self.admin = (
            kv_grpc.KeyVaultServiceStub(ch) for ch in self.channels
        )
        self.health = health_pb2_grpc.HealthStub(self.channels[2])


@pytest.fixture
async def stubs_for(tls_for: Callable[[str], TlsFiles]) -> AsyncIterator[Callable[..., Stubs]]:
    made: list[Stubs] = []

    def make(running: RunningKeyVault) -> Stubs:
        made.append(Stubs(running, tls_for))
        return made[-1]

    yield make
    for stubs in made:
        for ch in stubs.channels:
            await ch.close()
