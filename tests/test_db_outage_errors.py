"""Whatever asyncpg raises while the database goes away under a pool is classed as the
database being unavailable (UNAVAILABLE to callers), never as an internal error."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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
