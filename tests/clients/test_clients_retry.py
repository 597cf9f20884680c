"""gRPC's own retry policy, seen from outside: an idempotent call made while the execution
service is down succeeds once it comes up; an Execute made in the same outage fails at once
and never reaches the service."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from collections.abc import Awaitable, Callable

import pytest

from clients import ExecutionClient, RetryPolicy, Unavailable
from execution_service.app import start_execution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from service_kit.tls import TlsFiles
from tests.clients.conftest import Tls
from tests.execution.conftest import execution_settings

# Reconnect quickly once the server is up, so that the next retry finds it; retry backoffs
# long enough that five attempts cannot be spent before the server has started.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]
PATIENT = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=2.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unary_retried_on_unavailable_execute_not(
    tls: Tls,
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Awaitable[str]],
    pair_vault: RunningKeyVault,
    emulator: RunningEmulator,
    workspace: Callable[..., Awaitable[str]],
) -> None:
    ws = await workspace(openai=f"sk-test-{uuid.uuid4().hex}")
    port = free_port()
    settings = execution_settings(tls_for("execution"), pair_vault.port, emulator.base_url)
    settings = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, listen_address=f"127.0.0.1:{port}")
    )
    database = await make_database("ex")

    async with ExecutionClient.connect(
        f"localhost:{port}", **tls("app"), retry_policy=PATIENT, options=FAST_RECONNECT
    ) as client:

        async def run_execute() -> list[object]:
            stream = client.execute(
                ws, agent_id="a", provider="openai", model="gpt-4o-mini", prompt="x"
            )
            return [event async for event in stream]

        # Both calls go out while nothing listens: both fail their first attempt.
        listing = asyncio.create_task(client.list_executions(ws))
        executing = asyncio.create_task(run_execute())
        await asyncio.wait([executing], timeout=0.5)  # Execute fails at once: not retried
        assert not listing.done()  # the listing is waiting to retry

        service = await start_execution(settings, database, background=False)
        try:
            page = await asyncio.wait_for(listing, timeout=15)
            with pytest.raises(Unavailable):
                await executing  # had it been retried, it would have run by now
            assert page.items == []  # the failed Execute never reached the service
            assert (await client.list_executions(ws)).items == []
        finally:
            await service.stop(grace=0.5)


async def test_without_retry_an_idempotent_call_fails_at_once(tls: Tls) -> None:
    async with ExecutionClient.connect(
        f"localhost:{free_port()}", **tls("app"), retry_unavailable=False
    ) as client:
        async with asyncio.timeout(5):
            with pytest.raises(Unavailable) as caught:
                await client.list_executions("demo")
    assert caught.value.reason == ""  # no rich details: the server was never reached
