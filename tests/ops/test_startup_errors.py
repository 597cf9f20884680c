"""Start-up failures an operator causes end with one line naming the problem on standard
error, no traceback, and a non-zero exit status: a taken address, missing certificates, an
unreachable database, a bad master key."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from keyvault_service.keyring import generate_master_key
from service_kit import db
from service_kit.runtime import database_problem
from tests.ops.conftest import free_port


async def start_failure(module: str, env: dict[str, str]) -> tuple[int, str]:
    """Run a service that must fail to start; its exit status and standard error."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env={**os.environ, "LOG_LEVEL": "WARNING", **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, err.decode()


def the_error_line(stderr: str) -> str:
    """The one human line (JSON log lines aside), with no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line and not line.startswith("{")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture
async def vault_env(pki: Path, make_database: Callable[[str], Awaitable[str]]) -> dict[str, str]:
    return {
        "CERTS_DIR": str(pki),
        "KEYVAULT_MASTER_KEYS": f"1:{generate_master_key()}",
        "KEYVAULT_DATABASE_URL": await make_database("kv"),
        "KEYVAULT_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
        "KEYVAULT_METRICS_PORT": "0",
    }


async def test_a_taken_grpc_address_is_named(vault_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        code, err = await start_failure(
            "keyvault_service", vault_env | {"KEYVAULT_LISTEN_ADDRESS": address}
        )
    assert code != 0
    line = the_error_line(err)
    assert address in line and "in use" in line


async def test_a_taken_metrics_port_is_named(vault_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await start_failure(
            "keyvault_service", vault_env | {"KEYVAULT_METRICS_PORT": str(port)}
        )
    assert code != 0
    line = the_error_line(err)
    assert f"127.0.0.1:{port}" in line and "in use" in line


async def test_missing_certificates_are_named(vault_env: dict[str, str], tmp_path: Path) -> None:
    code, err = await start_failure("keyvault_service", vault_env | {"CERTS_DIR": str(tmp_path)})
    assert code != 0
    line = the_error_line(err)
    assert str(tmp_path / "keyvault.pem") in line


async def test_a_certificate_that_is_not_pem_is_named(
    vault_env: dict[str, str], pki: Path, tmp_path: Path
) -> None:
    for name in ("ca.pem", "keyvault-key.pem"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    (tmp_path / "keyvault.pem").write_text("not a certificate\n")
    code, err = await start_failure("keyvault_service", vault_env | {"CERTS_DIR": str(tmp_path)})
    assert code != 0
    line = the_error_line(err)
    assert str(tmp_path / "keyvault.pem") in line


@pytest.mark.parametrize("module", ["keyvault_service", "execution_service"])
async def test_an_unreachable_database_is_named(
    module: str, vault_env: dict[str, str], pki: Path
) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    env = vault_env | {
        "KEYVAULT_DATABASE_URL": url,
        "EXECUTION_DATABASE_URL": url,
        "EXECUTION_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
        "EXECUTION_METRICS_PORT": "0",
    }
    code, err = await start_failure(module, env)
    assert code != 0
    line = the_error_line(err)
    assert "database" in line and url.split("@")[1].split("/")[0] in line


async def test_a_bad_master_key_is_named(vault_env: dict[str, str]) -> None:
    code, err = await start_failure(
        "keyvault_service", vault_env | {"KEYVAULT_MASTER_KEYS": "1:abc"}
    )
    assert code != 0
    assert "KEYVAULT_MASTER_KEYS" in the_error_line(err)


def test_the_database_is_named_without_its_password() -> None:
    refused = db.DatabaseUnreachable("cannot connect")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    over_tcp = database_problem(
        "EXECUTION_DATABASE_URL",
        "postgresql://svc:hunter2-secret@db.internal:6543/execution",
        refused,
    )
    assert over_tcp == (
        "cannot use the database at db.internal:6543/execution (EXECUTION_DATABASE_URL): "
        "Connection refused"
    )
    on_socket = database_problem(
        "KEYVAULT_DATABASE_URL", "postgresql://svc:hunter2-secret@/keyvault?host=/srv/pg", refused
    )
    assert "/srv/pg:5432/keyvault" in on_socket and "hunter2" not in on_socket
