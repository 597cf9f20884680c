"""PostgreSQL pool and versioned SQL migrations applied under an advisory lock."""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection, or a connection borrowed from a pool (what `pool.acquire()` yields).
Connection = asyncpg.Connection | PoolConnectionProxy
# Anything that runs a statement: a connection or the pool itself.
Executor = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool

log = logging.getLogger(__name__)


class DatabaseUnreachable(ConnectionError):
    """Opening a connection to PostgreSQL failed below the protocol: refused, no route, a
    name that does not resolve, no server socket in the Unix socket folder (a stopped local
    server removes it), and so on. `connect` raises it in place of the OSError."""


# The database cannot be reached right now: the caller may retry, it is not an internal
# error. Deliberately no bare OSError, so that a file error is never reported as an outage:
# socket errors while connecting arrive as DatabaseUnreachable (see `connect`), and a
# connection that breaks later surfaces as asyncpg's ConnectionDoesNotExistError (an
# InterfaceError) or as a ConnectionError.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,  # our backend was terminated (pg_terminate_backend, shutdown)
    asyncpg.CrashShutdownError,
    asyncpg.ObjectNotInPrerequisiteStateError,  # "database ... is not accepting connections"
    asyncpg.InterfaceError,
    # A pooled connection whose backend was terminated while asyncpg used it ("cannot switch
    # to state 12; another operation is in progress"): the connection is dead, not our bug.
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,  # DatabaseUnreachable, and resets or refusals seen outside asyncpg
    TimeoutError,  # connecting, or waiting for a pooled connection, took too long
)


async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, with the OS's errors while connecting raised as DatabaseUnreachable.

    Every OSError raised while the socket is opened means the server cannot be reached
    (asyncpg tries each address and raises the last error: ConnectionRefusedError,
    socket.gaierror, FileNotFoundError for a Unix socket, a plain OSError for no route).
    Only here is a FileNotFoundError known to be about the database.
    """
    try:
        return await asyncpg.connect(*args, **kwargs)
    except TimeoutError:
        raise
    except OSError as exc:
        raise DatabaseUnreachable(
            f"cannot connect to PostgreSQL ({type(exc).__name__}: {exc.strerror or exc})"
        ) from exc


_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(package: str) -> list[Migration]:
    """Migrations are `NNN_description.sql` files in `package`/migrations, applied in order."""
    folder: Traversable = resources.files(package) / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {package}: {versions}")
    return found


async def migrate(conn: Connection, package: str) -> list[str]:
    """Apply pending migrations. Replicas starting together serialize on an advisory lock
    keyed by the package name, so each migration runs exactly once."""
    lock_key = zlib.crc32(f"migrations:{package}".encode())
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations(package):
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.name)
    if applied_now:
        log.info("migrations applied", extra={"package": package, "migrations": applied_now})
    return applied_now


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's default reset query (a round trip per release):
    our code changes no session state (no SET, LISTEN or session-level advisory locks)."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    command_timeout: float = 10.0,
    synchronous_commit: bool = True,
) -> asyncpg.Pool:
    """With synchronous_commit=False, commits return before the WAL reaches disk (visible at
    once, durable within PostgreSQL's wal_writer_delay); writes that must be durable when
    acknowledged then ask for it per transaction."""
    pool = await asyncpg.create_pool(
        dsn,
        connect=connect,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        reset=_keep_session,
        server_settings={} if synchronous_commit else {"synchronous_commit": "off"},
    )
    assert pool is not None
    return pool


_NOT_ANSWERING: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


async def ping(pool: asyncpg.Pool, *, timeout: float = 2.0) -> bool:
    """Whether the database answers `SELECT 1`: False while it is unavailable, and also
    when the server refuses the query (a dropped database, a revoked login)."""
    try:
        async with pool.acquire(timeout=timeout) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout)
        return True
    except _NOT_ANSWERING:
        return False
