"""The fuzz stack's session fixture (see stack.py), and the check that it still serves."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from execution_service.app import start_execution
from keyvault_service.app import start_keyvault
from provider_emulator.server import start_emulator
from service_kit.tls import TlsFiles
from tests.execution.conftest import execution_settings
from tests.fuzz.properties import assert_serving
from tests.fuzz.stack import FuzzStack, LoopThread, credentials, seed
from tests.keyvault.conftest import keyring_of, vault_settings

# An unreachable provider fails fast: a valid-looking base URL must not stall the campaign.
# (The provider allowlist comes with the settings builders: it admits the emulator.)
CONNECT_TIMEOUT = 1.0


@pytest.fixture(scope="session")
def fuzz_stack(
    pki: Path,
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Coroutine[Any, Any, str]],
) -> Iterator[FuzzStack]:
    runner = LoopThread()

    async def start() -> FuzzStack:
        emulator = await start_emulator(chunks=2)
        kv_url, ex_url = await make_database("kv"), await make_database("ex")
        vault = await start_keyvault(vault_settings(tls_for("keyvault"), keyring_of(1)), kv_url)
        service = await start_execution(
            execution_settings(
                tls_for("execution"),
                vault.port,
                emulator.base_url,
                connect_timeout=CONNECT_TIMEOUT,
            ),
            ex_url,
            background=False,
        )
        return FuzzStack(
            runner=runner,
            vault=vault,
            execution=service,
            emulator=emulator,
            kv_db=await asyncpg.connect(kv_url),
            ex_db=await asyncpg.connect(ex_url),
            credentials=credentials(pki, tls_for),
        )

    stack = runner.run(start())
    try:
        seed(stack)
        yield stack
    finally:
        for channel in stack.channels.values():
            channel.close()

        async def stop() -> None:
            await stack.kv_db.close()
            await stack.ex_db.close()
            await stack.execution.stop(grace=0.5)
            await stack.vault.stop(grace=0.5)
            await stack.emulator.stop()

        runner.run(stop())
        runner.close()


@pytest.fixture(autouse=True)
def _still_serving(fuzz_stack: FuzzStack) -> Iterator[None]:
    """After each test's batch of examples, whatever its result: the services still serve."""
    yield
    assert_serving(fuzz_stack)
