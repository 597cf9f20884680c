"""`service_database_up`: the server's database health watch exports what it sees, so a
dashboard and an alert can show an outage (health checks are not scraped by Prometheus)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest

from service_kit import db
from service_kit.server import GrpcServer
from service_kit.tls import TlsFiles
from tests.ops.conftest import Scrape, free_port, scrape_until

SERVICE = "test.v1.DatabaseGaugeService"  # a name of its own: the gauge is process-wide


async def _admin(pg_server_uri: str, *statements: str) -> None:
    conn = await asyncpg.connect(pg_server_uri)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_the_gauge_follows_the_database(
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Awaitable[str]],
    pg_server_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="asyncpg.pool")  # its reconnect tracebacks
    url = await make_database("gauge")
    database = urlsplit(url).path.lstrip("/")
    pool = await db.create_pool(url, min_size=1, max_size=2)
    server = GrpcServer(
        service_names=[SERVICE],
        register=lambda _server: None,
        interceptors=[],
        tls=tls_for("keyvault"),
        address="127.0.0.1:0",
        metrics_port=free_port(),
    )
    await server.start(pool, check_interval=0.2)
    assert server.metrics is not None
    port = server.metrics.port

    def up_is(value: float) -> Callable[[Scrape], bool]:
        return lambda scrape: scrape.value("service_database_up", grpc_service=SERVICE) == value

    try:
        await scrape_until(port, up_is(1))
        await _admin(
            pg_server_uri,
            f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()",
        )
        try:
            down = await scrape_until(port, up_is(0), timeout=15)
            assert "service_database_up" in down.text
        finally:
            await _admin(pg_server_uri, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await scrape_until(port, up_is(1), timeout=15)
    finally:
        await server.stop(grace=0)
        await pool.close()
