"""Whatever asyncpg raises while the database goes away under a pool, or cannot be reached
at all, is classed as the database being unavailable (UNAVAILABLE to callers), never as an
internal error; and nothing else is (a file error is not an outage)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from service_kit import db


async def test_errors_during_an_outage_are_all_classed_unavailable(
    make_database: Callable[[str], Awaitable[str]],
    pg_server_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="asyncpg.pool")  # its reconnect tracebacks
    url = await make_database("kv")
    name = urlsplit(url).path.lstrip("/")
    seen: list[BaseException] = []
    for _ in range(10):
        pool = await db.create_pool(url, min_size=2, max_size=5)
        admin = await asyncpg.connect(pg_server_uri)
        try:
            for _ in range(5):
                await pool.fetchval("SELECT 1")
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            for _ in range(3):  # connections die under the pool while it hands them out
                try:
                    await pool.fetchval("SELECT 1")
                except Exception as exc:
                    seen.append(exc)
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
            await pool.close()
    assert seen, "the outage raised nothing"
    unexpected = {type(e).__name__ for e in seen if not isinstance(e, db.UNAVAILABLE_ERRORS)}
    assert not unexpected, f"not classed as unavailable: {unexpected}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param(lambda tmp: f"postgresql://u@127.0.0.1:{_closed_port()}/db", id="refused"),
        pytest.param(lambda tmp: f"postgresql://u@localhost:{_closed_port()}/db", id="localhost"),
        pytest.param(lambda tmp: "postgresql://u@no-such-host.invalid/db", id="unresolvable"),
        # A stopped local server removes its socket file: FileNotFoundError from the OS.
        pytest.param(lambda tmp: f"postgresql://u@/db?host={tmp}", id="unix-socket-gone"),
    ],
)
async def test_a_server_that_cannot_be_reached_is_unavailable_and_not_serving(
    dsn: Callable[[Path], str], tmp_path: Path
) -> None:
    pool = await db.create_pool(dsn(tmp_path), min_size=0, max_size=1)
    try:
        with pytest.raises(db.DatabaseUnreachable) as raised:
            await pool.fetchval("SELECT 1")
        assert isinstance(raised.value, db.UNAVAILABLE_ERRORS)
        assert isinstance(raised.value.__cause__, OSError)
        assert await db.ping(pool, timeout=2.0) is False
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(2, "No such file or directory", "pricing.json"),
        PermissionError(13, "Permission denied", "certs/tls.key"),
        IsADirectoryError(21, "Is a directory", "policy.json"),
        OSError(28, "No space left on device"),
    ],
    ids=type,
)
def test_file_errors_are_not_database_outages(error: OSError) -> None:
    assert not isinstance(error, db.UNAVAILABLE_ERRORS)
