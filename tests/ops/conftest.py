"""The pair with its metrics endpoints on, the provider emulator, scrapes and log capture."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pythonjsonlogger.json import JsonFormatter

from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.app import RunningExecution, start_execution
from execution_service.settings import ExecutionSettings
from keyvault_service.app import RunningKeyVault, start_keyvault
from keyvault_service.settings import KeyVaultSettings
from provider_emulator.server import RunningEmulator, start_emulator
from service_kit.logs import _CallFields
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.conftest import execution_settings
from tests.keyvault.conftest import keyring_of, vault_settings


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SettingsT = TypeVar("SettingsT", KeyVaultSettings, ExecutionSettings)


def with_metrics_port(settings: SettingsT, port: int) -> SettingsT:
    server = dataclasses.replace(settings.server, metrics_port=port)
    return dataclasses.replace(settings, server=server)


@dataclass
class MeteredPair:
    vault: RunningKeyVault
    execution: RunningExecution
    emulator: RunningEmulator
    tls_for: Callable[[str], TlsFiles]

    def vault_stub(self, workload: str = "app") -> kv_grpc.KeyVaultServiceStub:
        return kv_grpc.KeyVaultServiceStub(secure_channel(self.vault.port, self.tls_for(workload)))

    def execution_stub(self, workload: str = "app") -> ex_grpc.ExecutionServiceStub:
        return ex_grpc.ExecutionServiceStub(
            secure_channel(self.execution.port, self.tls_for(workload))
        )

    async def store_key(self, ws: str, provider: str, key: str) -> None:
        await self.vault_stub().SetApiKey(
            kv.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/{provider}", api_key=key)
        )

    @property
    def vault_metrics_port(self) -> int:
        assert self.vault.server.metrics is not None
        return self.vault.server.metrics.port

    @property
    def execution_metrics_port(self) -> int:
        assert self.execution.server.metrics is not None
        return self.execution.server.metrics.port


@pytest.fixture(scope="module")
async def metered_pair(
    tls_for: Callable[[str], TlsFiles], make_database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[MeteredPair]:
    async with start_emulator() as emulator:
        vault = await start_keyvault(
            with_metrics_port(vault_settings(tls_for("keyvault"), keyring_of(1)), free_port()),
            await make_database("kv"),
        )
        settings = execution_settings(tls_for("execution"), vault.port, emulator.base_url)
        execution = await start_execution(
            with_metrics_port(settings, free_port()), await make_database("ex"), background=False
        )
        yield MeteredPair(vault, execution, emulator, tls_for)
        await execution.stop(grace=0.5)
        await vault.stop(grace=0.5)


# --- scrapes ----------------------------------------------------------------------------


class Scrape:
    """One /metrics answer: its text, and sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self._values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (yet)."""
        return self._values.get((name, frozenset(labels.items())), 0.0)


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def scrape_until(
    port: int, ready: Callable[[Scrape], bool], *, timeout: float = 5.0
) -> Scrape:
    """Scrape until `ready` holds: a server records a call when its handler ends, which may
    be just after the caller has seen the call end."""
    async with asyncio.timeout(timeout):
        while True:
            found = await scrape(port)
            if ready(found):
                return found
            await asyncio.sleep(0.02)


# --- logs -------------------------------------------------------------------------------


class LogCapture:
    """Every log record of the process, formatted as the services format them (JSON with the
    call's request id and caller), at DEBUG."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setLevel(logging.DEBUG)
        self.handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.handler.addFilter(_CallFields())

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self.handler)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self._level)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self, message: str) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.text.splitlines() if line.strip()]
        return [r for r in parsed if r.get("message") == message]
