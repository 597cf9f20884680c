"""Hypothesis profiles and the fuzz stack's session fixture (see stack.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from execution_service.app import start_execution
from keyvault_service.app import start_keyvault
from provider_emulator.server import start_emulator
from service_kit.tls import TlsFiles
from tests.conftest import PROJECT_ROOT
from tests.execution.conftest import execution_settings
from tests.fuzz.properties import assert_serving
from tests.fuzz.stack import FuzzStack, LoopThread, credentials, seed
from tests.keyvault.conftest import keyring_of, vault_settings

# --- Hypothesis profiles -------------------------------------------------------------------
# "ci" (the default, `make test`): a bounded, derandomized run per RPC; the known bug shapes
# are pinned with @example so they are tried on every run whatever the seed.
# "fuzz" (`make fuzz`): a long randomized campaign that keeps its failures in .run/.
_COMMON: dict[str, Any] = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, **_COMMON)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1500")),
    database=DirectoryBasedExampleDatabase(str(PROJECT_ROOT / ".run" / "hypothesis")),
    **_COMMON,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# An unreachable provider fails fast: a valid-looking base URL must not stall the campaign.
CONNECT_TIMEOUT = 1.0
# The operator allowlist of provider hosts admits the emulator (and only it).
ALLOWED_PROVIDER_HOSTS = "127.0.0.1"


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
