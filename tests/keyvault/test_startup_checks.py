"""The vault refuses to start with master keys that cannot read what is stored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from keyvault_service.app import StartupError
from tests.keyvault.conftest import StartVault, keyring_of


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
