"""Process-level plumbing shared by the services' entry points: the database URL, start-up
failures, worker processes, the signal-driven drain."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

from service_kit import embedded_pg
from service_kit.db import DatabaseUnreachable
from service_kit.logs import configure_logging
from service_kit.metrics import metrics_host, serve_pod_metrics
from service_kit.server import GrpcServer, wait_for_shutdown_signal
from service_kit.settings import ServerSettings
from service_kit.tracing import Tracing, TracingSettings

log = logging.getLogger(__name__)

WORKER_ENV = "SERVICE_WORKER_INDEX"


class _Settings(Protocol):
    @property
    def server(self) -> ServerSettings: ...
    @property
    def database_url(self) -> str | None: ...


class _Running(Protocol):
    @property
    def server(self) -> GrpcServer: ...
    async def stop(self, grace: float = ...) -> None: ...


S = TypeVar("S", bound=_Settings)
S_contra = TypeVar("S_contra", bound=_Settings, contravariant=True)


class _Start(Protocol[S_contra]):
    def __call__(
        self, settings: S_contra, database_url: str, *, tracing: Tracing
    ) -> Awaitable[_Running]: ...


_keep_alive: list[Any] = []


async def resolve_database_url(configured: str | None, database: str) -> str:
    """The configured URL, or a database on the project's embedded PostgreSQL."""
    if configured:
        return configured
    server = embedded_pg.start()
    _keep_alive.append(server)  # the server stops when the last process holding it exits
    url = await embedded_pg.ensure_database(server.get_uri(), database)
    log.info("using the embedded PostgreSQL", extra={"database": database})
    return url


# Start-up failures that mean the configured database cannot be used as given.
_DATABASE_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnreachable,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidAuthorizationSpecificationError,  # wrong password, unknown role
    asyncpg.InvalidCatalogNameError,  # no such database
)


def database_problem(database_env: str, url: str, exc: Exception) -> str:
    """One line naming the database (host, port, name; never the password) and the cause."""
    parts = urlsplit(url)
    socket_folder = parse_qs(parts.query).get("host", [""])[0]  # a Unix socket's folder
    host = parts.hostname or socket_folder or "localhost"
    where = f"{host}:{parts.port or 5432}{parts.path or ''}"
    cause = exc.__cause__ if isinstance(exc, DatabaseUnreachable) else exc
    reason = (
        cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    ) or type(cause).__name__
    return f"cannot use the database at {where} ({database_env}): {reason}"


def fail_start(message: str) -> None:
    """A configuration or start-up problem: one clear line, no traceback, exit status 2."""
    log.critical(message)
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    os._exit(2)


async def supervise(
    module: str,
    workers: int,
    env: Mapping[str, str],
    on_exit: Callable[[int], None] = lambda pid: None,
) -> int:
    """Run `workers` copies of `python -m module` that share one port.

    One Python process runs Python on one core at a time; more processes use more cores,
    as pre-fork servers do. SIGTERM/SIGINT are passed on (each worker drains); when one
    worker dies the others are stopped too, so that a supervisor outside restarts the lot.
    `on_exit` is told the pid of each worker as it exits.
    """
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env={**env, WORKER_ENV: str(index)}
        )
        for index in range(workers)
    ]

    async def exited(process: asyncio.subprocess.Process) -> int:
        code = await process.wait()
        on_exit(process.pid)
        return code

    stopping = asyncio.create_task(wait_for_shutdown_signal())
    exits = [asyncio.create_task(exited(p)) for p in processes]
    done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*exits)
    stopping.cancel()
    return 0 if stopping in done else max((abs(c) for c in codes), default=1) or 1


async def _supervise_workers(
    service: str, module: str, settings: _Settings, env: dict[str, str]
) -> int:
    """The supervisor: workers on the shared port, their metrics added up on the metrics port."""
    server = settings.server
    try:
        pod = serve_pod_metrics(service, server.metrics_port, metrics_host(server.listen_address))
    except OSError as exc:
        fail_start(str(exc))
        return 2
    try:
        return await supervise(
            module, server.workers, {**env, **pod.worker_env}, on_exit=pod.worker_exited
        )
    finally:
        pod.close()


def _as_worker(settings: S) -> S:
    """A worker shares the gRPC port; the supervisor serves the metrics of all of them."""
    return dataclasses.replace(  # type: ignore[type-var]
        settings,
        server=dataclasses.replace(settings.server, reuse_port=True, metrics_port=0),
    )


async def serve(
    *,
    service: str,
    module: str,
    database: str,
    database_env: str,
    load_settings: Callable[[Mapping[str, str]], S],
    start: _Start[S],
    startup_errors: tuple[type[Exception], ...],
) -> None:
    """A service's main: settings, database, then serve until SIGTERM/SIGINT and drain."""
    configure_logging(service, os.environ.get("LOG_LEVEL", "INFO"))
    expected: tuple[type[Exception], ...] = (
        *startup_errors,
        OSError,
        embedded_pg.EmbeddedPostgresMissing,
    )
    try:
        settings = load_settings(os.environ)
        tracing_settings = TracingSettings.from_env(os.environ, service=service)
        url = await resolve_database_url(settings.database_url, database)
    except expected as exc:
        fail_start(str(exc))
        return
    index = os.environ.get(WORKER_ENV)
    if index is None and settings.server.workers > 1:
        env = {**os.environ, database_env: url}
        raise SystemExit(await _supervise_workers(service, module, settings, env))
    if index is not None:
        settings = _as_worker(settings)
    tracing = Tracing.start(tracing_settings)  # in the process that serves, not a supervisor
    try:
        running = await start(settings, url, tracing=tracing)
    except _DATABASE_ERRORS as exc:
        fail_start(database_problem(database_env, url, exc))
        return
    except expected as exc:
        fail_start(str(exc))
        return
    log.info(f"{service} serving", extra={"address": settings.server.listen_address})
    # What startup built (modules, descriptors, settings) lives as long as the process: kept
    # out of the garbage collector's way, a full collection under load takes about 2 ms
    # instead of about 50 ms, a pause every call in flight would wait out.
    gc.collect()
    gc.freeze()
    signal_name = await wait_for_shutdown_signal()
    grace = settings.server.grace_seconds
    announce = min(settings.server.announce_seconds, grace)
    log.info(
        "draining",
        extra={"signal": signal_name, "grace_seconds": grace, "announce_seconds": announce},
    )
    await running.server.announce_draining(announce)  # part of the grace period
    await running.stop(grace - announce)
    tracing.shutdown()  # sends the spans still queued
    log.info("stopped")


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async main on uvloop (faster event loop) when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(main())
        return
    uvloop.run(main())
