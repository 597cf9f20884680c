"""Several workers in one pod, one scrape: the supervisor serves /metrics for all of its
workers together (counters summed, in-flight executions of live workers only), and a worker
that dies leaves its counters in and its gauges out."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psutil

from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.keyring import generate_master_key
from provider_emulator.server import start_emulator
from service_kit.metrics import MULTIPROCESS_ENV
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.support import openai_key, request
from tests.ops.conftest import Scrape, free_port, scrape, scrape_until
from tests.ops.test_processes import Spawn, spawn, until_serving

__all__ = ["spawn"]  # the fixture

LIST = {"grpc_service": "execution.v1.ExecutionService", "grpc_method": "ListExecutions"}


def _connections(supervisor: int, port: int, status: str) -> dict[int, int]:
    """Sockets on local `port` in `status`, by worker pid."""
    return {
        worker.pid: sum(
            1
            for c in worker.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == status
        )
        for worker in psutil.Process(supervisor).children()
    }


async def _until_both_workers_listen(supervisor: int, port: int) -> None:
    for _ in range(200):
        listening = _connections(supervisor, port, psutil.CONN_LISTEN)
        if len(listening) == 2 and all(listening.values()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the two workers never both listened")


async def test_one_scrape_adds_up_every_worker_and_survives_a_worker_death(
    spawn: Spawn, pki: Path, make_database: Callable[[str], Awaitable[str]]
) -> None:
    vault_port, exec_port, metrics_port = free_port(), free_port(), free_port()
    async with start_emulator(chunks=80, chunk_delay_ms=250) as emulator:  # 20 s streams
        env = {
            "CERTS_DIR": str(pki),
            "KEYVAULT_MASTER_KEYS": f"1:{generate_master_key()}",
            "KEYVAULT_DATABASE_URL": await make_database("kv"),
            "EXECUTION_DATABASE_URL": await make_database("ex"),
            "KEYVAULT_LISTEN_ADDRESS": f"127.0.0.1:{vault_port}",
            "EXECUTION_LISTEN_ADDRESS": f"127.0.0.1:{exec_port}",
            "KEYVAULT_ADDRESS": f"localhost:{vault_port}",
            "KEYVAULT_METRICS_PORT": "0",
            "EXECUTION_METRICS_PORT": str(metrics_port),
            "EXECUTION_WORKERS": "2",
            "SHUTDOWN_GRACE_SECONDS": "30",
            "SHUTDOWN_ANNOUNCE_SECONDS": "0",
            "OPENAI_BASE_URL": emulator.base_url,
        }
        await until_serving(vault_port, pki, await spawn("keyvault_service", env))
        supervisor = await spawn("execution_service", env)
        await until_serving(exec_port, pki, supervisor)
        await _until_both_workers_listen(supervisor.pid, exec_port)
        app = TlsFiles.for_workload(pki, "app")
        async with secure_channel(vault_port, app) as channel:
            await kv_grpc.KeyVaultServiceStub(channel).SetApiKey(
                kv.SetApiKeyRequest(name="workspaces/pod/apiKeys/openai", api_key=openai_key())
            )

        # SO_REUSEPORT spreads connections over the workers: open them until both have some.
        channels: list[grpc.aio.Channel] = []
        for _ in range(40):
            channel = secure_channel(exec_port, app)
            channels.append(channel)
            stub = ex_grpc.ExecutionServiceStub(channel)
            await stub.ListExecutions(ex.ListExecutionsRequest(parent="workspaces/pod"))
            if len(channels) >= 4 and all(
                _connections(supervisor.pid, exec_port, psutil.CONN_ESTABLISHED).values()
            ):
                break
        per_worker = _connections(supervisor.pid, exec_port, psutil.CONN_ESTABLISHED)
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker
        calls = len(channels)
        try:
            # One scrape counts the calls of both workers.
            summed = await scrape_until(
                metrics_port,
                lambda s: s.value("grpc_server_handled_total", **LIST, grpc_code="OK") >= calls,
            )
            assert summed.value("grpc_server_handled_total", **LIST, grpc_code="OK") == calls

            # A stream on every connection, so that both workers have executions in flight.
            streams = [
                ex_grpc.ExecutionServiceStub(c).Execute(request("pod", prompt="go slowly"))
                for c in channels
            ]
            for stream in streams:
                assert (await stream.read()).HasField("started")
                assert (await stream.read()).HasField("delta")
            in_flight = await scrape(metrics_port)
            assert in_flight.value("execution_executions_in_flight") == calls

            victim = next(iter(per_worker))
            directory = psutil.Process(victim).environ()[MULTIPROCESS_ENV]
            assert any(name.startswith("counter_") for name in _files_in(directory))
            os.kill(victim, signal.SIGKILL)
            survivors = await _streams_still_running(streams)
            assert 0 < survivors < calls

            # The survivor drains its streams; meanwhile the scrape forgets the dead worker's
            # in-flight executions and keeps its counted calls.
            after: Scrape = await scrape_until(
                metrics_port,
                lambda s: s.value("execution_executions_in_flight") == survivors,
            )
            assert after.value("grpc_server_handled_total", **LIST, grpc_code="OK") == calls
        finally:
            for channel in channels:
                await channel.close()  # cancels the surviving streams: the drain ends
        await asyncio.wait_for(supervisor.wait(), timeout=20)
        assert _files_in(directory) is None  # the supervisor removed its metric files


def _files_in(directory: str) -> list[str] | None:
    """The file names in `directory`; None when it does not exist."""
    return os.listdir(directory) if os.path.isdir(directory) else None


async def _streams_still_running(streams: list[grpc.aio.UnaryStreamCall]) -> int:
    """Read one more event from every stream: the dead worker's streams fail."""
    running = 0
    for stream in streams:
        try:
            event = await asyncio.wait_for(stream.read(), timeout=10)
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), err
            continue
        assert event is not grpc.aio.EOF and event.HasField("delta")
        running += 1
    return running
