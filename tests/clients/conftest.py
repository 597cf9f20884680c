"""The client library and CLI against the real pair: key vault and execution service over
mTLS on PostgreSQL, with the provider emulator (fixtures from tests/execution)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import ExecutionClient, KeyVaultClient
from clients.cli import main
from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from tests.execution import conftest as pair

# The pair's fixtures, registered here under their own names (one vault, one execution
# service and one emulator per test session, like tests/execution's).
_fresh_emulator_scripts = pair._fresh_emulator_scripts
app_vault = pair.app_vault
emulator = pair.emulator
execution = pair.execution
pair_vault = pair.pair_vault
workspace = pair.workspace

Tls = Callable[[str], dict[str, str]]


@pytest.fixture(scope="session")
def tls(pki: Path) -> Tls:
    """`tls("app")`: the `ca` / `cert` / `key` keyword arguments of a workload."""
    return lambda workload: {
        "ca": str(pki / "ca.pem"),
        "cert": str(pki / f"{workload}.pem"),
        "key": str(pki / f"{workload}-key.pem"),
    }


@pytest.fixture
async def vault(pair_vault: RunningKeyVault, tls: Tls) -> AsyncIterator[KeyVaultClient]:
    async with KeyVaultClient.connect(f"localhost:{pair_vault.port}", **tls("app")) as client:
        yield client


@pytest.fixture
async def admin_vault(pair_vault: RunningKeyVault, tls: Tls) -> AsyncIterator[KeyVaultClient]:
    async with KeyVaultClient.connect(f"localhost:{pair_vault.port}", **tls("admin")) as client:
        yield client


@pytest.fixture
async def runner(execution: RunningExecution, tls: Tls) -> AsyncIterator[ExecutionClient]:
    async with ExecutionClient.connect(f"localhost:{execution.port}", **tls("app")) as client:
        yield client


@dataclass
class CliResult:
    code: int
    out: str
    err: str


Cli = Callable[..., Awaitable[CliResult]]
_ENV = (
    "AGENTS_VAULT_ADDRESS",
    "AGENTS_EXECUTION_ADDRESS",
    "AGENTS_CA",
    "AGENTS_CERT",
    "AGENTS_KEY",
    "AGENTS_ADMIN_CERT",
    "AGENTS_ADMIN_KEY",
    "AGENTS_API_KEY",
    "AGENTS_DEBUG",
)


@pytest.fixture
def cli(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    """`await cli("keys", "list", ws, stdin="...")`: `main(argv)` in a worker thread (the
    servers run on this event loop), with the service addresses in the environment and the
    test PKI as `certs/` of the working folder, so the CLI's certificate defaults apply."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTS_VAULT_ADDRESS", f"localhost:{pair_vault.port}")
    monkeypatch.setenv("AGENTS_EXECUTION_ADDRESS", f"localhost:{execution.port}")
    (tmp_path / "certs").symlink_to(pki)
    monkeypatch.chdir(tmp_path)

    async def run(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin or ""))
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, list(argv))
        finally:
            for name in env or {}:
                os.environ.pop(name, None)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
