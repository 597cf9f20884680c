"""The gRPC server every service runs: mTLS port, health, reflection, database health
watch, a Prometheus /metrics endpoint, an optional plaintext health-only port for probes
that cannot do mTLS, graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Callable, Iterable

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from service_kit import db
from service_kit.metrics import DATABASE_UP, MetricsEndpoint, metrics_host, serve_metrics
from service_kit.tls import TlsFiles, server_credentials
from service_kit.tracing import Tracing

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A health service name that answers SERVING while the process serves at all, whatever the
# database does: a liveness probe that asked about the database would restart every replica
# during a database outage, which restarting cannot fix.
LIVENESS_SERVICE = "liveness"
# Clients that balance over the addresses a name resolves to (the execution service over the
# vault's headless Service) resolve it again only when a connection ends: closing each
# connection after a few minutes (gRPC adds 10 % jitter) lets them find replicas added since.
# Calls and streams in flight on it run to their end; new ones go over a new connection.
MAX_CONNECTION_AGE_SECONDS = 300.0


class GrpcServer:
    """A started-on-demand grpc.aio server with the standard side services."""

    def __init__(
        self,
        *,
        service_names: Iterable[str],
        register: Callable[[grpc.aio.Server], None],
        interceptors: Iterable[grpc.aio.ServerInterceptor],
        tls: TlsFiles,
        address: str,
        metrics_port: int = 0,
        health_port: int = 0,
        reuse_port: bool = False,
        max_connection_age: float = MAX_CONNECTION_AGE_SECONDS,
        tracing: Tracing | None = None,
    ) -> None:
        """``metrics_port`` > 0 serves /metrics there (plain HTTP, on the host of
        ``address``) while the server runs; 0 serves none. ``health_port`` > 0 serves
        ``grpc.health.v1`` alone there, without TLS, on the same host: for probes that
        cannot present a client certificate (Kubernetes' gRPC probes). 0 serves none.
        ``tracing``'s interceptor runs first, so that a call's span covers the other
        interceptors too."""
        self.service_names = tuple(service_names)
        self.metrics_address = (metrics_host(address), metrics_port) if metrics_port else None
        self.metrics: MetricsEndpoint | None = None
        self.server = grpc.aio.server(
            interceptors=[*(tracing.server_interceptors() if tracing else ()), *interceptors],
            # Without reuse_port a second server on a taken port fails instead of silently
            # sharing it; worker processes share it on purpose.
            options=[
                ("grpc.so_reuseport", int(reuse_port)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
            ],
        )
        register(self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        if not reuse_port:
            check_address_free(address)
        try:
            self.port = self.server.add_secure_port(address, server_credentials(tls))
        except RuntimeError as exc:  # gRPC's "Failed to bind", with no reason attached
            raise OSError(f"could not listen on {address}") from exc
        if self.port == 0:
            raise OSError(f"could not listen on {address}")
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        if health_port:
            self._add_health_port(f"{metrics_host(address)}:{health_port}", reuse_port)
        self._watch: asyncio.Task[None] | None = None

    def _add_health_port(self, address: str, reuse_port: bool) -> None:
        """A second server with nothing but the health service (no reflection, no business
        methods, no identities to check), sharing the main server's health status."""
        self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        if not reuse_port:
            check_address_free(address)
        try:
            self.health_port = self.health_server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"could not listen on {address}") from exc
        if self.health_port == 0:
            raise OSError(f"could not listen on {address}")

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def start(self, pool: asyncpg.Pool | None = None, *, check_interval: float = 2.0) -> None:
        if self.metrics_address is not None:  # first: a taken port fails the start cleanly
            host, port = self.metrics_address
            self.metrics = serve_metrics(port, host)
        try:
            await self.server.start()
            if self.health_server is not None:
                await self.health_server.start()
        except BaseException:
            await self.server.stop(None)
            await self._stop_metrics()
            raise
        await self.health.set(LIVENESS_SERVICE, SERVING)
        serving = await db.ping(pool) if pool is not None else True
        await self.set_serving(serving)
        if pool is not None:
            self._record_database_up(serving)
            self._watch = asyncio.create_task(self._watch_database(pool, check_interval))

    async def _watch_database(self, pool: asyncpg.Pool, interval: float) -> None:
        """NOT_SERVING while the database is unreachable, SERVING again once it answers."""
        serving: bool | None = None
        while True:
            now_serving = await db.ping(pool, timeout=min(interval, 2.0))
            self._record_database_up(now_serving)
            if now_serving != serving:
                await self.set_serving(now_serving)
                if serving is not None:
                    log.warning("database %s", "reachable" if now_serving else "unreachable")
                serving = now_serving
            await asyncio.sleep(interval)

    def _record_database_up(self, up: bool) -> None:
        for name in self.service_names:
            DATABASE_UP.labels(name).set(1 if up else 0)

    async def announce_draining(self, seconds: float) -> None:
        """Answer health checks NOT_SERVING while still serving every call, for `seconds`:
        load balancers and health-watching clients stop sending calls here before the
        listener closes (once it has, a check gets no answer at all)."""
        await self._stop_watch()
        await self.set_serving(False)
        await asyncio.sleep(seconds)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones (streams included) finish within `grace`."""
        await self._stop_watch()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:  # after: probes see NOT_SERVING during the drain
            await self.health_server.stop(None)
        await self._stop_metrics()

    async def _stop_watch(self) -> None:
        """The database watch would turn health back to SERVING during a drain."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # waits out serve_forever's poll
            self.metrics = None


def check_address_free(address: str) -> None:
    """OSError naming `address` when nothing may listen there (most often: another process,
    or this service started twice, already does). gRPC itself reports only "Failed to bind"."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        candidates = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot listen on {address}: not a host:port this machine has") from exc
    for family, kind, proto, _, sockaddr in candidates:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                # Other failures (an address family the host lacks, say) are gRPC's to judge:
                # it serves when any of the resolved addresses can be bound.
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(
                        f"{address} is already in use: another process (is the service "
                        "already running?) listens there"
                    ) from exc


async def wait_for_shutdown_signal() -> str:
    """The name of the first SIGTERM/SIGINT. Later ones are ignored while the caller drains
    (Ctrl-C reaches every process of `make run` and its launcher forwards a SIGTERM too);
    the drain itself is bounded by the grace period."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig.name)
        else:
            log.info("already draining", extra={"signal": sig.name})

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return await received
