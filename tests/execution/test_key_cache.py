"""The revealed-key cache against a real vault, counting reveals by the vault's audit rows:
entries expire after the TTL, concurrent misses share one reveal, and the cache is trusted
only while the subscription to the vault's key changes is live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.key_watch import watch_key_changes
from execution_service.keys import KeySource
from keyvault_service.app import RunningKeyVault
from keyvault_service.settings import DEFAULT_POLICY as VAULT_POLICY
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.conftest import StartExecution
from tests.execution.support import Stub, Workspace, openai_key, request, reveal_count, run
from tests.keyvault.conftest import StartVault, keyring_of, start_vault, vault_settings

Tls = Callable[[str], TlsFiles]
__all__ = ["start_vault"]  # the fixture, for tests here that need a vault of their own


@pytest.fixture
def admin_vault(pair_vault: RunningKeyVault, tls_for: Tls) -> kv_grpc.KeyVaultServiceStub:
    return kv_grpc.KeyVaultServiceStub(secure_channel(pair_vault.port, tls_for("admin")))


@contextlib.asynccontextmanager
async def subscribed_source(
    vault_port: int, tls_for: Tls, *, ttl: float, clock: Callable[[], float]
) -> AsyncIterator[KeySource]:
    """A KeySource on a real vault, kept honest by a real WatchApiKeyChanges subscription."""
    async with secure_channel(vault_port, tls_for("execution")) as channel:
        vault = kv_grpc.KeyVaultServiceStub(channel)
        source = KeySource(vault, ttl=ttl, clock=clock)
        watch = asyncio.create_task(watch_key_changes(vault, source))
        try:
            assert await source.wait_subscribed(10)
            yield source
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


async def test_a_cached_key_expires_after_the_ttl(
    pair_vault: RunningKeyVault,
    tls_for: Tls,
    workspace: Workspace,
    admin_vault: kv_grpc.KeyVaultServiceStub,
) -> None:
    ws = await workspace(openai=openai_key())
    now = [1000.0]
    async with subscribed_source(pair_vault.port, tls_for, ttl=30, clock=lambda: now[0]) as keys:
        assert (await keys.get(ws, "openai", "req"))[1] is False
        now[0] += 29.9
        assert (await keys.get(ws, "openai", "req"))[1] is True
        assert await reveal_count(admin_vault, ws) == 1
        now[0] += 0.2  # 30.1 s after the reveal
        assert (await keys.get(ws, "openai", "req"))[1] is False
        assert await reveal_count(admin_vault, ws) == 2


async def test_concurrent_misses_share_one_reveal(
    pair_vault: RunningKeyVault,
    tls_for: Tls,
    workspace: Workspace,
    admin_vault: kv_grpc.KeyVaultServiceStub,
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    async with subscribed_source(pair_vault.port, tls_for, ttl=30, clock=lambda: 0.0) as keys:
        answers = await asyncio.gather(*(keys.get(ws, "openai", f"req-{i}") for i in range(8)))
    assert [k.secret.reveal() for k, _ in answers] == [key] * 8
    assert await reveal_count(admin_vault, ws) == 1


async def test_the_cache_is_bypassed_while_the_vault_refuses_the_subscription(
    start_vault: StartVault,
    start_execution_service: StartExecution,
    execution_stub: Stub,
    tls_for: Tls,
    tmp_path: Path,
) -> None:
    """A vault whose policy does not let the execution service watch key changes: reveals
    work, but the cache is never trusted, so every execution reveals its key."""
    policy = json.loads(VAULT_POLICY.read_text())
    for rule in policy["allow_rules"]:
        rule["request"]["paths"] = [
            p for p in rule["request"]["paths"] if not p.endswith("/WatchApiKeyChanges")
        ]
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    settings = vault_settings(tls_for("keyvault"), keyring_of(1), policy=policy_file)
    vault = await start_vault(keyring_of(1), server=settings.server)
    service = await start_execution_service(vault_port=vault.port)
    assert not service.keys.subscribed

    ws = await _store_key(vault, tls_for)
    stub = execution_stub(port=service.port)
    for _ in range(3):
        assert (await run(stub, request(ws))).completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert await reveal_count(_stub(vault, tls_for, "admin"), ws) == 3


async def test_a_lost_subscription_clears_the_cache_when_it_comes_back(
    start_vault: StartVault,
    start_execution_service: StartExecution,
    execution_stub: Stub,
    tls_for: Tls,
    pg_server_uri: str,
) -> None:
    vault = await start_vault(keyring_of(1))
    service = await start_execution_service(vault_port=vault.port)
    assert await service.keys.wait_subscribed(10)
    ws = await _store_key(vault, tls_for)
    stub, admin = execution_stub(port=service.port), _stub(vault, tls_for, "admin")
    for _ in range(2):
        assert (await run(stub, request(ws))).completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert await reveal_count(admin, ws) == 1  # cached

    # The vault loses its LISTEN connection (as in a database restart): changes made now
    # could go unheard, so its watch streams end and the execution service resubscribes.
    conn = await asyncpg.connect(pg_server_uri)
    try:
        assert await conn.fetchval(
            "SELECT pg_terminate_backend($1)", vault.key_changes.listener_pid
        )
    finally:
        await conn.close()
    async with asyncio.timeout(10):
        while service.keys.subscribed:  # noqa: ASYNC110 - down for at least 0.25 s
            await asyncio.sleep(0.005)
    assert await service.keys.wait_subscribed(10)

    assert (await run(stub, request(ws))).completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert await reveal_count(admin, ws) == 2  # the cache started empty again


def _stub(vault: RunningKeyVault, tls_for: Tls, workload: str) -> kv_grpc.KeyVaultServiceStub:
    return kv_grpc.KeyVaultServiceStub(secure_channel(vault.port, tls_for(workload)))


async def _store_key(vault: RunningKeyVault, tls_for: Tls) -> str:
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    await _stub(vault, tls_for, "app").SetApiKey(
        kv.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/openai", api_key=openai_key())
    )
    return ws


async def test_a_reveal_in_flight_when_its_key_changes_is_neither_shared_nor_cached(
    pair_vault: RunningKeyVault,
    tls_for: Tls,
    workspace: Workspace,
    admin_vault: kv_grpc.KeyVaultServiceStub,
) -> None:
    """The change notice can overtake a reveal that read the key before the change: that
    answer must not serve executions that start after the notice."""
    ws = await workspace(openai=openai_key())
    async with subscribed_source(pair_vault.port, tls_for, ttl=30, clock=lambda: 0.0) as keys:
        before_change = asyncio.create_task(keys.get(ws, "openai", "req-1"))
        await asyncio.sleep(0)  # its RevealApiKey is now in flight
        keys.key_changed(ws, "openai")  # what the subscription does when a notice arrives
        assert (await keys.get(ws, "openai", "req-2"))[1] is False  # a reveal of its own
        await before_change
        assert await reveal_count(admin_vault, ws) == 2
        assert (await keys.get(ws, "openai", "req-3"))[1] is True  # the later answer is kept
