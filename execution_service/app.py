"""Assemble and run the execution service: database, vault channel, HTTP client, server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

import asyncpg
import grpc
import httpx

from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service import maintenance
from execution_service.agent_store import AgentStore
from execution_service.budget_store import BudgetStore
from execution_service.cancels import CancelFeed, request_cancel
from execution_service.change_notices import ChangeNotices
from execution_service.engine import ExecutionEngine
from execution_service.errors import DOMAIN
from execution_service.history import History
from execution_service.http_transport import provider_http_client
from execution_service.key_check import KeyChecker
from execution_service.key_watch import watch_key_changes
from execution_service.keys import KeySource
from execution_service.pricing import PricingError, load_prices
from execution_service.servicer import SERVICE_NAME, ExecutionServicer, register
from execution_service.settings import ExecutionSettings
from service_kit import db
from service_kit.authz import Policy, PolicyError
from service_kit.interceptor import ServiceInterceptor
from service_kit.runtime import run, serve
from service_kit.server import GrpcServer
from service_kit.settings import SettingsError
from service_kit.tls import channel_credentials
from service_kit.tracing import Tracing

log = logging.getLogger(__name__)

# What is left of the grace after the drain, but at least this, is how long the records of
# cut streams, and those waiting for the database, get to be written before the process exits.
LAST_CHANCE_SECONDS = 2.0
# gRPC's default reconnect backoff grows to two minutes, so a vault that was down for a while
# would be unusable long after it serves again. Retry the connection every 0.25 to 0.5 s
# (each attempt may take up to 1 s: the minimum connect timeout).
# Round robin over every address the name resolves to: with several vault replicas behind a
# headless Service (`dns:///keyvault-headless...`), each replica gets its share of the calls
# on long-lived HTTP/2 connections; with one address it behaves like the default pick_first.
VAULT_CHANNEL_OPTIONS = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 1000),
)
# At start-up, how long to wait for the key-change subscription, and for the cancel feed,
# before serving anyway (until the first is live, every execution fetches its key from the
# vault; until the second is, cancels through other replicas wait for it to listen).
SUBSCRIBE_WAIT_SECONDS = 1.0
# The process's name in logs and traces.
SERVICE = "execution"


@dataclass
class RunningExecution:
    server: GrpcServer
    pool: asyncpg.Pool
    start_pool: asyncpg.Pool
    engine: ExecutionEngine
    keys: KeySource
    http: httpx.AsyncClient
    vault_channel: grpc.aio.Channel
    cancels: CancelFeed
    change_notices: ChangeNotices
    agents: AgentStore
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        """Drain streams within `grace` (the server cuts those still running then: FAILED,
        SHUTDOWN), give terminal records waiting for the database a last chance, then stop
        background work and close I/O."""
        cut_at = time.monotonic() + grace
        self.engine.shutting_down(cut_at)
        await self.server.stop(grace)
        await self.engine.close(timeout=max(cut_at - time.monotonic(), LAST_CHANCE_SECONDS))
        await self.cancels.stop()
        await self.change_notices.stop()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()
        await self.vault_channel.close(grace=None)
        await self.pool.close()
        await self.start_pool.close()


async def start_execution(
    settings: ExecutionSettings,
    database_url: str,
    *,
    background: bool = True,
    tracing: Tracing | None = None,
) -> RunningExecution:
    tracing = tracing or Tracing.propagate_only(SERVICE)
    policy = Policy.from_file(settings.server.policy_file)
    prices = load_prices(settings.engine.pricing_file)
    low, high = settings.server.db_pool_min, settings.server.db_pool_max
    pool = await db.create_pool(database_url, min_size=low, max_size=high)
    # The RUNNING row is written before every provider call, on the time-to-first-token
    # path: on its own pool, its commit does not wait for the disk (an fsync cost ~0.5 ms
    # here). The terminal record commits durably on `pool`, and recreates a RUNNING row that
    # a PostgreSQL crash took away (repository.finish).
    start_pool = await db.create_pool(
        database_url, min_size=low, max_size=high, synchronous_commit=False
    )
    watch: asyncio.Task[None] | None = None
    cancels: CancelFeed | None = None
    notices: ChangeNotices | None = None
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn, "execution_service")
            # This week's partition and the next ones, before the first execution.
            try:
                await maintenance.ensure_partitions(
                    conn, settings.maintenance.partitions_ahead_weeks
                )
            except asyncpg.LockNotAvailableError:  # busy: the background upkeep tries again
                log.warning("execution partitions not created yet: the table is busy")
        vault_channel = grpc.aio.secure_channel(
            settings.keyvault_address,
            channel_credentials(settings.keyvault_tls),
            options=VAULT_CHANNEL_OPTIONS,
            interceptors=tracing.channel_interceptors(),
        )
        vault = kv_grpc.KeyVaultServiceStub(vault_channel)
        keys = KeySource(vault, ttl=settings.engine.key_cache_ttl)
        watch = asyncio.create_task(watch_key_changes(vault, keys))
        await keys.wait_subscribed(SUBSCRIBE_WAIT_SECONDS)
        http = provider_http_client(
            connect_timeout=settings.engine.connect_timeout,
            read_timeout=settings.engine.read_timeout,
            egress=settings.engine.provider_egress(),
            tracing=tracing,
        )
        engine = ExecutionEngine(
            pool=pool,
            start_pool=start_pool,
            keys=keys,
            http=http,
            prices=prices,
            settings=settings.engine,
        )
        # Cancel requests for this process's executions, whichever replica takes them.
        cancels = CancelFeed(database_url, pool, engine)
        cancels.start()
        # New budgets and changed agents, from every replica (until heard, no execution
        # calls its provider before its row is written).
        agents = AgentStore(pool)
        notices = ChangeNotices(database_url, engine.unbudgeted, agents)
        notices.start()
        await cancels.wait_live(SUBSCRIBE_WAIT_SECONDS)
        await notices.wait_live(SUBSCRIBE_WAIT_SECONDS)
        servicer = ExecutionServicer(
            engine,
            History(pool),
            KeyChecker(keys, http, settings.engine),
            agents,
            # Known here at once; other replicas hear of it through `notices`.
            BudgetStore(pool, on_created=engine.unbudgeted.forget_workspace),
            cancel=functools.partial(request_cancel, pool, engine),
        )
        server = GrpcServer(
            service_names=[SERVICE_NAME],
            register=register(servicer),
            interceptors=[ServiceInterceptor(policy=policy, domain=DOMAIN)],
            tls=settings.server.tls,
            address=settings.server.listen_address,
            metrics_port=settings.server.metrics_port,
            health_port=settings.server.health_port,
            reuse_port=settings.server.reuse_port,
            tracing=tracing,
        )
        await server.start(pool)
    except BaseException:
        if watch is not None:
            watch.cancel()
        if cancels is not None:
            await cancels.stop()
        if notices is not None:
            await notices.stop()
        await pool.close()
        await start_pool.close()
        raise
    running = RunningExecution(
        server, pool, start_pool, engine, keys, http, vault_channel, cancels, notices, agents
    )
    running.tasks.append(watch)  # always: the key cache depends on it
    if background:
        running.tasks += [
            asyncio.create_task(engine.keep_leases()),
            asyncio.create_task(engine.sweep_forever()),
            asyncio.create_task(maintenance.run_forever(pool, settings.maintenance)),
        ]
    return running


async def main() -> None:
    await serve(
        service=SERVICE,
        module="execution_service",
        database="execution",
        database_env="EXECUTION_DATABASE_URL",
        load_settings=ExecutionSettings.from_env,
        start=start_execution,
        startup_errors=(SettingsError, PolicyError, PricingError),
    )


def entry_point() -> None:
    run(main)
