"""The whole pair for real: a key vault and an execution service over mTLS on PostgreSQL,
with the provider emulator as the providers' HTTP endpoint."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service import maintenance
from execution_service.app import RunningExecution, start_execution
from execution_service.retry import RetryPolicy
from execution_service.settings import DEFAULT_POLICY, EngineSettings, ExecutionSettings
from keyvault_service.app import RunningKeyVault, start_keyvault
from provider_emulator.server import RunningEmulator, start_emulator
from service_kit import db
from service_kit.settings import ServerSettings
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.keyvault.conftest import TEST_EGRESS, keyring_of, vault_settings

# Fast but real backoff: the policy's shape is tested exactly in tests/providers.
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=0.1, jitter=0.25)


@pytest.fixture(scope="session")
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with start_emulator() as running:
        yield running


@pytest.fixture
async def pool(make_database: Callable[[str], Awaitable[str]]) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own, migrated, with this week's and the next two weeks' partitions:
    for tests of the execution tables without a service in front."""
    p = await db.create_pool(await make_database("tables"), min_size=1, max_size=12)
    async with p.acquire() as conn:
        await db.migrate(conn, "execution_service")
        await maintenance.ensure_partitions(conn, 2)
    yield p
    await p.close()


@pytest.fixture(autouse=True)
def _fresh_emulator_scripts(emulator: RunningEmulator) -> None:
    emulator.state.clear_scripts()


@pytest.fixture(scope="session")
async def pair_vault(
    tls_for: Callable[[str], TlsFiles], make_database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[RunningKeyVault]:
    vault = await start_keyvault(
        vault_settings(tls_for("keyvault"), keyring_of(1)), await make_database("kv")
    )
    yield vault
    await vault.stop(grace=0.5)


def execution_settings(
    tls: TlsFiles, vault_port: int, emulator_url: str, **engine_changes: Any
) -> ExecutionSettings:
    return ExecutionSettings(
        server=ServerSettings(
            listen_address="127.0.0.1:0",
            tls=tls,
            policy_file=DEFAULT_POLICY,
            metrics_port=0,
            grace_seconds=1.0,
            log_level="INFO",
            db_pool_min=1,
            db_pool_max=10,
        ),
        database_url=None,
        keyvault_address=f"localhost:{vault_port}",
        keyvault_tls=tls,
        engine=dataclasses.replace(
            EngineSettings(
                retry=FAST_RETRY,
                default_max_tokens=64,
                openai_base_url=emulator_url,
                anthropic_base_url=emulator_url,
                egress=TEST_EGRESS,
            ),
            **engine_changes,
        ),
    )


StartExecution = Callable[..., Awaitable[RunningExecution]]


@pytest.fixture
async def start_execution_service(
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Awaitable[str]],
    pair_vault: RunningKeyVault,
    emulator: RunningEmulator,
) -> AsyncIterator[StartExecution]:
    """Starts execution services with engine settings changed as asked (lease renewal and the
    sweeper off unless `background=True`); stops them after."""
    running: list[RunningExecution] = []

    async def start(
        *,
        database_url: str | None = None,
        vault_port: int | None = None,
        background: bool = False,
        **engine_changes: Any,
    ) -> RunningExecution:
        settings = execution_settings(
            tls_for("execution"),
            vault_port or pair_vault.port,
            emulator.base_url,
            **engine_changes,
        )
        service = await start_execution(
            settings, database_url or await make_database("ex"), background=background
        )
        running.append(service)
        return service

    yield start
    for service in running:
        await service.stop(grace=0.5)


@pytest.fixture(scope="session")
async def execution(
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Awaitable[str]],
    pair_vault: RunningKeyVault,
    emulator: RunningEmulator,
) -> AsyncIterator[RunningExecution]:
    """The shared execution service for tests that only need their own workspace."""
    service = await start_execution(
        execution_settings(tls_for("execution"), pair_vault.port, emulator.base_url),
        await make_database("ex"),
        background=False,
    )
    yield service
    await service.stop(grace=0.5)


@pytest.fixture(scope="session")
def app_vault(
    pair_vault: RunningKeyVault, tls_for: Callable[[str], TlsFiles]
) -> kv_grpc.KeyVaultServiceStub:
    return kv_grpc.KeyVaultServiceStub(secure_channel(pair_vault.port, tls_for("app")))


@pytest.fixture(scope="session")
def execution_stub(
    execution: RunningExecution, tls_for: Callable[[str], TlsFiles]
) -> Callable[..., ex_grpc.ExecutionServiceStub]:
    """`execution_stub()` as app, `execution_stub("admin")`, or on another service's port."""

    def stub(workload: str = "app", port: int | None = None) -> ex_grpc.ExecutionServiceStub:
        return ex_grpc.ExecutionServiceStub(
            secure_channel(port or execution.port, tls_for(workload))
        )

    return stub


@pytest.fixture
async def workspace(app_vault: kv_grpc.KeyVaultServiceStub) -> Callable[..., Awaitable[str]]:
    """A fresh workspace id; `await workspace(openai="sk-...", anthropic="sk-ant-...")` also
    stores those keys in the vault."""

    async def make(**keys: str) -> str:
        ws = f"ws-{uuid.uuid4().hex[:12]}"
        for provider, key in keys.items():
            await app_vault.SetApiKey(
                kv.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/{provider}", api_key=key)
            )
        return ws

    return make
