"""Process-level plumbing shared by the services' entry points."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from service_kit import embedded_pg

log = logging.getLogger(__name__)


async def resolve_database_url(configured: str | None, database: str) -> str:
    """The configured URL, or a database on the project's embedded PostgreSQL."""
    if configured:
        return configured
    server = embedded_pg.start()
    _keep_alive.append(server)  # the server stops when the last process holding it exits
    url = await embedded_pg.ensure_database(server.get_uri(), database)
    log.info("using the embedded PostgreSQL", extra={"database": database})
    return url


_keep_alive: list[Any] = []


def fail_start(message: str) -> None:
    """A configuration or start-up problem: one clear line, no traceback, exit status 2."""
    log.critical(message)
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    os._exit(2)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async main on uvloop (faster event loop) when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        import asyncio

        asyncio.run(main())
        return
    uvloop.run(main())
