"""Shared test infrastructure: a real PostgreSQL, a fresh development PKI, mTLS channels.

Set TEST_DATABASE_URL to use an existing server (a superuser URL: each test session
creates and drops its own databases); otherwise the project's embedded PostgreSQL runs with
its data under .run/test-pgdata.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from service_kit import devcerts, embedded_pg
from service_kit.tls import TlsFiles, channel_credentials

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_server_uri() -> str:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        return configured
    server = embedded_pg.start(PROJECT_ROOT / ".run" / "test-pgdata")
    return str(server.get_uri())


_created_databases: list[str] = []


@pytest.fixture(scope="session")
def make_database(pg_server_uri: str) -> Callable[[str], Awaitable[str]]:
    """Creates a fresh database named `{prefix}_test_{random}` and returns its URL; the
    session drops the ones it made at its end."""

    async def make(prefix: str) -> str:
        name = f"{prefix}_test_{uuid.uuid4().hex[:10]}"
        _created_databases.append(name)
        return await embedded_pg.ensure_database(pg_server_uri, name)

    return make


@pytest.fixture(scope="session", autouse=True)
async def _drop_test_databases(pg_server_uri: str) -> AsyncIterator[None]:
    yield
    # Only this session's databases: another test session may be using the same server.
    for name in _created_databases:
        await embedded_pg.drop_database(pg_server_uri, name)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh development CA and workload certificates for this test session."""
    directory = tmp_path_factory.mktemp("certs")
    devcerts.write_dev_certs(directory)
    return directory


@pytest.fixture(scope="session")
def tls_for(pki: Path) -> Callable[[str], TlsFiles]:
    return lambda workload: TlsFiles.for_workload(pki, workload)


def secure_channel(port: int, files: TlsFiles) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(files))
