"""The gRPC server every service runs: mTLS port, health, reflection, database health
watch, a Prometheus /metrics endpoint, graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from service_kit import db
from service_kit.metrics import MetricsEndpoint, metrics_host, serve_metrics
from service_kit.tls import TlsFiles, server_credentials
from service_kit.tracing import Tracing

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
        reuse_port: bool = False,
        tracing: Tracing | None = None,
    ) -> None:
        """``metrics_port`` > 0 serves /metrics there (plain HTTP, on the host of
        ``address``) while the server runs; 0 serves none. ``tracing``'s interceptor runs
        first, so that a call's span covers the other interceptors too."""
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
            ],
        )
        register(self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_secure_port(address, server_credentials(tls))
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        self._watch: asyncio.Task[None] | None = None

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
        except BaseException:
            await self._stop_metrics()
            raise
        serving = await db.ping(pool) if pool is not None else True
        await self.set_serving(serving)
        if pool is not None:
            self._watch = asyncio.create_task(self._watch_database(pool, check_interval))

    async def _watch_database(self, pool: asyncpg.Pool, interval: float) -> None:
        """NOT_SERVING while the database is unreachable, SERVING again once it answers."""
        serving: bool | None = None
        while True:
            now_serving = await db.ping(pool, timeout=min(interval, 2.0))
            if now_serving != serving:
                await self.set_serving(now_serving)
                if serving is not None:
                    log.warning("database %s", "reachable" if now_serving else "unreachable")
                serving = now_serving
            await asyncio.sleep(interval)

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
