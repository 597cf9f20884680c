"""The vault refuses to start with master keys that cannot read what is stored, or without
the fingerprint key its stored keys were fingerprinted with."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from keyvault_service.app import StartupError
from keyvault_service.keyring import Keyring
from keyvault_service.names import KeyRef
from service_kit.call_context import CallInfo
from service_kit.secret import Secret
from tests.keyvault.conftest import StartVault, keyring_of

_DELETE_FINGERPRINT_KEY = "DELETE FROM vault_secrets WHERE name = 'fingerprint-key'"


async def test_refuses_a_different_key_under_a_known_version(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]]
) -> None:
    url = await make_database("kv")
    first = await start_vault(keyring_of(1), url)
    await first.stop(grace=0)
    with pytest.raises(StartupError, match="master key version 1 is not the key") as caught:
        await start_vault(keyring_of(1), url)
    assert "check value" in str(caught.value)


async def test_accepts_the_same_key_and_an_added_version(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]]
) -> None:
    url = await make_database("kv")
    ring = keyring_of(1)
    await (await start_vault(ring, url)).stop(grace=0)
    await (await start_vault(ring, url)).stop(grace=0)
    grown = type(ring)(keys={**ring.keys, 2: keyring_of(2).keys[2]}, primary_version=2)
    running = await start_vault(grown, url)
    assert running.port > 0


# --- the fingerprint key -------------------------------------------------------------------


async def _sql(url: str, statement: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.execute(statement)
    finally:
        await conn.close()


async def _vault_with_a_key(start_vault: StartVault, url: str, ring: Keyring) -> None:
    running = await start_vault(ring, url)
    await running.vault.set_key(
        KeyRef("fp-check", "openai"),
        Secret("sk-proj-startup-0123456789abcdef"),
        "",
        CallInfo("/test/SetApiKey", "spiffe://agents.internal/app", "req-startup"),
    )
    await running.stop(grace=0)


async def test_a_missing_fingerprint_key_is_not_recreated_while_keys_exist(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]]
) -> None:
    url = await make_database("kv")
    ring = keyring_of(1)
    await _vault_with_a_key(start_vault, url, ring)
    assert await _sql(url, _DELETE_FINGERPRINT_KEY) == "DELETE 1"

    with pytest.raises(StartupError) as caught:
        await start_vault(ring, url)
    message = str(caught.value)
    assert "holds stored API keys (1) but its fingerprint key" in message
    assert "'fingerprint-key' of table vault_secrets) is missing" in message
    assert "Restore that row from a backup" in message
    assert await _sql(url, "SELECT 1 FROM vault_secrets") == "SELECT 0"  # nothing was made up


async def test_an_empty_vault_creates_its_fingerprint_key_and_says_so(
    start_vault: StartVault,
    make_database: Callable[[str], Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = await make_database("kv")
    ring = keyring_of(1)
    with caplog.at_level(logging.INFO, logger="keyvault_service.fingerprints"):
        await (await start_vault(ring, url)).stop(grace=0)
        await _sql(url, _DELETE_FINGERPRINT_KEY)  # no key is stored: nothing depends on it
        await (await start_vault(ring, url)).stop(grace=0)
        await (await start_vault(ring, url)).stop(grace=0)  # the existing one is kept
    created = [r for r in caplog.records if r.getMessage().startswith("fingerprint key created")]
    assert len(created) == 2


DAMAGE = {
    "flipped-byte": (
        "UPDATE vault_secrets SET ciphertext = set_byte(ciphertext, 20, "
        "get_byte(ciphertext, 20) # 1)",
        "is damaged: it fails to decrypt under master key version 1",
    ),
    "truncated": (
        "UPDATE vault_secrets SET ciphertext = substring(ciphertext from 1 for 4)",
        "is damaged: its stored value is garbled",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
async def test_a_damaged_fingerprint_key_is_named_as_such(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]], case: str
) -> None:
    damage, expected = DAMAGE[case]
    url = await make_database("kv")
    ring = keyring_of(1)
    await _vault_with_a_key(start_vault, url, ring)
    assert await _sql(url, damage) == "UPDATE 1"

    with pytest.raises(StartupError) as caught:
        await start_vault(ring, url)
    message = str(caught.value)
    assert expected in message
    assert "not configured" not in message
    assert "Restore that row from a backup of this database." in message


async def test_a_damaged_fingerprint_key_of_an_empty_vault_may_be_deleted(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]]
) -> None:
    url = await make_database("kv")
    ring = keyring_of(1)
    await (await start_vault(ring, url)).stop(grace=0)
    await _sql(url, DAMAGE["flipped-byte"][0])
    with pytest.raises(StartupError, match="deleting the row also works"):
        await start_vault(ring, url)
    await _sql(url, _DELETE_FINGERPRINT_KEY)
    assert (await start_vault(ring, url)).port > 0
