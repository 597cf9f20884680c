"""One key has one fingerprint, whenever it was stored: across rotation and retirement of
master key versions, and across restarts and replicas."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.app import RunningKeyVault, StartupError
from keyvault_service.keyring import Keyring
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.keyvault.conftest import StartVault, keyring_of

KEY = "sk-proj-fingerprint-0123456789abcdef"


async def _set(vault: RunningKeyVault, tls: TlsFiles, api_key: str = KEY) -> str:
    """Stores `api_key` in a fresh workspace and returns its fingerprint."""
    async with secure_channel(vault.port, tls) as channel:
        reply = await kv_grpc.KeyVaultServiceStub(channel).SetApiKey(
            pb.SetApiKeyRequest(
                name=f"workspaces/fp-{uuid.uuid4().hex[:8]}/apiKeys/openai", api_key=api_key
            )
        )
    return reply.api_key.fingerprint


async def _rewrap(vault: RunningKeyVault, tls: TlsFiles) -> None:
    async with secure_channel(vault.port, tls) as channel:
        await kv_grpc.KeyVaultServiceStub(channel).RewrapApiKeys(pb.RewrapApiKeysRequest())


async def test_fingerprint_survives_rotation_and_retirement(
    start_vault: StartVault,
    make_database: Callable[[str], Awaitable[str]],
    tls_for: Callable[[str], TlsFiles],
) -> None:
    url = await make_database("kv")
    app, admin = tls_for("app"), tls_for("admin")
    v1 = keyring_of(1)
    v2 = keyring_of(2)

    first = await start_vault(v1, url)
    before = await _set(first, app)
    assert before != await _set(first, app, KEY + "x")  # different keys tell apart
    await first.stop(grace=0)

    rotated = await start_vault(Keyring(keys={**v1.keys, **v2.keys}, primary_version=2), url)
    assert await _set(rotated, app) == before  # new primary, same fingerprint
    await _rewrap(rotated, admin)
    await rotated.stop(grace=0)

    retired = await start_vault(v2, url)  # version 1 gone: everything was rewrapped
    assert await _set(retired, app) == before


async def test_without_the_version_that_seals_it_the_vault_refuses_to_start(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]]
) -> None:
    url = await make_database("kv")
    await (await start_vault(keyring_of(1), url)).stop(grace=0)  # creates the fingerprint key
    with pytest.raises(
        StartupError, match="fingerprint key is encrypted under master key version 1"
    ):
        await start_vault(keyring_of(2), url)


async def test_replicas_share_one_fingerprint_key(
    start_vault: StartVault,
    make_database: Callable[[str], Awaitable[str]],
    tls_for: Callable[[str], TlsFiles],
) -> None:
    url = await make_database("kv")
    ring = keyring_of(1)
    one, two = await start_vault(ring, url), await start_vault(ring, url)
    assert await _set(one, tls_for("app")) == await _set(two, tls_for("app"))
