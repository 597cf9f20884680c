"""The revealed-key cache stays bounded however many workspaces pass through."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.key_watch import watch_key_changes
from execution_service.keys import KeySource
from keyvault_service.app import RunningKeyVault
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel


async def test_cache_never_exceeds_its_bound(
    pair_vault: RunningKeyVault,
    tls_for: Callable[[str], TlsFiles],
    workspace: Callable,
) -> None:
    now = [0.0]
    async with secure_channel(pair_vault.port, tls_for("execution")) as channel:
        vault = kv_grpc.KeyVaultServiceStub(channel)
        source = KeySource(vault, ttl=30, clock=lambda: now[0], max_entries=3)
        workspaces = [await workspace(openai=f"sk-bound-{i}-0123456789") for i in range(5)]
        watch = asyncio.create_task(watch_key_changes(vault, source))  # the cache is trusted
        assert await source.wait_subscribed(10)  # only while it hears the vault's changes
        for ws in workspaces:
            key, cached = await source.get(ws, "openai", "req")
            assert not cached
            assert len(source._cache) <= 3
        # The most recent one is still cached; expired entries go first when full.
        assert (await source.get(workspaces[-1], "openai", "req"))[1] is True
        now[0] += 31
        key, cached = await source.get(workspaces[0], "openai", "req")
        assert not cached and key.secret.reveal() == "sk-bound-0-0123456789"
        assert len(source._cache) == 3  # workspaces 3 and 4 (expired) and 0 (fresh)
        await source.get(workspaces[1], "openai", "req")  # full: the expired ones go
        assert set(source._cache) == {(workspaces[0], "openai"), (workspaces[1], "openai")}
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
