"""The services as an operator runs them: real processes, SIGTERM drains in-flight streams
(health answers NOT_SERVING first; streams outliving the grace are recorded SHUTDOWN), worker
processes share one port, and replicas starting together migrate once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from keyvault_service.keyring import generate_master_key
from provider_emulator.server import RunningEmulator, start_emulator
from service_kit import db
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.ops.conftest import free_port

Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    processes: list[asyncio.subprocess.Process] = []

    async def start(module: str, env: dict[str, str], **options: Any) -> asyncio.subprocess.Process:
        """`options`: for asyncio.create_subprocess_exec (stderr=PIPE to read the logs)."""
        # Tests point keys at the emulator on loopback, which only an allowlist admits.
        defaults = {"LOG_LEVEL": "WARNING", "PROVIDER_ALLOWED_HOSTS": "127.0.0.1,localhost"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env={**os.environ, **defaults, **env}, **options
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def until_serving(port: int, pki: Path, process: asyncio.subprocess.Process) -> None:
    for _ in range(150):
        assert process.returncode is None, f"service exited with {process.returncode}"
        async with secure_channel(port, _tls(pki)) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"port {port} never served")


@pytest.fixture
async def slow_emulator() -> AsyncIterator[RunningEmulator]:
    async with start_emulator(chunks=10, chunk_delay_ms=150) as emulator:
        yield emulator


async def test_sigterm_drains_a_running_stream_then_exits(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
    slow_emulator: RunningEmulator,
) -> None:
    vault_port, exec_port = free_port(), free_port()
    env = {
        "CERTS_DIR": str(pki),
        "KEYVAULT_MASTER_KEYS": f"1:{generate_master_key()}",
        "KEYVAULT_DATABASE_URL": await make_database("kv"),
        "EXECUTION_DATABASE_URL": await make_database("ex"),
        "KEYVAULT_LISTEN_ADDRESS": f"127.0.0.1:{vault_port}",
        "EXECUTION_LISTEN_ADDRESS": f"127.0.0.1:{exec_port}",
        "KEYVAULT_ADDRESS": f"localhost:{vault_port}",
        "KEYVAULT_METRICS_PORT": "0",
        "EXECUTION_METRICS_PORT": "0",
        "SHUTDOWN_GRACE_SECONDS": "10",
        "OPENAI_BASE_URL": slow_emulator.base_url,
    }
    vault = await spawn("keyvault_service", env)
    await until_serving(vault_port, pki, vault)
    execution = await spawn("execution_service", env)
    await until_serving(exec_port, pki, execution)

    async with secure_channel(vault_port, _tls(pki)) as ch:
        await kv_grpc.KeyVaultServiceStub(ch).SetApiKey(
            kv.SetApiKeyRequest(name="workspaces/drain/apiKeys/openai", api_key="sk-drain-01234567")
        )
    async with secure_channel(exec_port, _tls(pki)) as ch:
        call = ex_grpc.ExecutionServiceStub(ch).Execute(
            ex.ExecuteRequest(
                parent="workspaces/drain",
                agent_id="drainer",
                provider=kv_res.PROVIDER_OPENAI,
                model="gpt-4o-mini",
                messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="take your time")],
            )
        )
        events = []
        async for event in call:
            events.append(event)
            if event.HasField("delta"):  # streaming: ask it to stop (again and again,
                execution.send_signal(signal.SIGTERM)  # as impatient operators do)
        # The stream in flight finished normally (about 1.5 s of chunks) before the exit.
        assert events[-1].completed.state == res.EXECUTION_STATE_SUCCEEDED
        text = "".join(e.delta.text for e in events if e.HasField("delta"))
        assert text.split() == [f"word{i}" for i in range(10)]
    assert await asyncio.wait_for(execution.wait(), timeout=15) == 0
    vault.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(vault.wait(), timeout=15) == 0


async def test_drain_answers_health_not_serving_then_records_cut_streams_as_shutdown(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
    slow_emulator: RunningEmulator,
) -> None:
    vault_port, exec_port = free_port(), free_port()
    execution_db = await make_database("ex")
    env = {
        "CERTS_DIR": str(pki),
        "KEYVAULT_MASTER_KEYS": f"1:{generate_master_key()}",
        "KEYVAULT_DATABASE_URL": await make_database("kv"),
        "EXECUTION_DATABASE_URL": execution_db,
        "KEYVAULT_LISTEN_ADDRESS": f"127.0.0.1:{vault_port}",
        "EXECUTION_LISTEN_ADDRESS": f"127.0.0.1:{exec_port}",
        "KEYVAULT_ADDRESS": f"localhost:{vault_port}",
        "KEYVAULT_METRICS_PORT": "0",
        "EXECUTION_METRICS_PORT": "0",
        "SHUTDOWN_GRACE_SECONDS": "4",
        "SHUTDOWN_ANNOUNCE_SECONDS": "2",
        "OPENAI_BASE_URL": slow_emulator.base_url,
    }
    vault = await spawn("keyvault_service", env)
    await until_serving(vault_port, pki, vault)
    execution = await spawn("execution_service", env)
    await until_serving(exec_port, pki, execution)
    key = "sk-cut-0123456789abcdef"
    async with secure_channel(vault_port, _tls(pki)) as ch:
        await kv_grpc.KeyVaultServiceStub(ch).SetApiKey(
            kv.SetApiKeyRequest(name="workspaces/cut/apiKeys/openai", api_key=key)
        )
    slow_emulator.state.script({"chunks": 60, "chunk_delay_ms": 250}, key=key)  # 15 s

    async with secure_channel(exec_port, _tls(pki)) as ch:
        call = ex_grpc.ExecutionServiceStub(ch).Execute(
            ex.ExecuteRequest(
                parent="workspaces/cut",
                agent_id="cutter",
                provider=kv_res.PROVIDER_OPENAI,
                model="gpt-4o-mini",
                messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="a long answer")],
            )
        )
        name = (await call.read()).started.name
        assert (await call.read()).HasField("delta")
        execution.send_signal(signal.SIGTERM)

        # Health checks, on new connections as a load balancer's prober makes them, keep
        # being answered while the drain begins: NOT_SERVING.
        statuses = []
        for _ in range(20):
            async with secure_channel(exec_port, _tls(pki)) as probe:
                reply = await health_pb2_grpc.HealthStub(probe).Check(
                    health_pb2.HealthCheckRequest(), timeout=2.0
                )
            statuses.append(reply.status)
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING

        # The stream outlives the grace period: the server cuts it.
        with pytest.raises(grpc.aio.AioRpcError):
            while (event := await call.read()) is not grpc.aio.EOF:
                assert event.HasField("delta")
    assert await asyncio.wait_for(execution.wait(), timeout=15) == 0

    conn = await asyncpg.connect(execution_db)
    try:
        row = await conn.fetchrow(
            "SELECT state, error_reason, output_text, output_tokens FROM executions WHERE id = $1",
            uuid.UUID(name.rsplit("/", 1)[1]),
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["state"], row["error_reason"]) == ("FAILED", "SHUTDOWN")
    assert row["output_text"].startswith("word0") and row["output_tokens"] > 0
    vault.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(vault.wait(), timeout=15) == 0


async def test_worker_processes_share_one_port(
    spawn: Spawn, pki: Path, make_database: Callable[[str], Awaitable[str]]
) -> None:
    port = free_port()
    env = {
        "CERTS_DIR": str(pki),
        "KEYVAULT_MASTER_KEYS": f"1:{generate_master_key()}",
        "KEYVAULT_DATABASE_URL": await make_database("kv"),
        "KEYVAULT_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "KEYVAULT_METRICS_PORT": "0",
        "KEYVAULT_WORKERS": "2",
    }
    supervisor = await spawn("keyvault_service", env)
    await until_serving(port, pki, supervisor)
    workers = []
    for _ in range(50):  # the supervisor runs two workers on the one port
        workers = psutil.Process(supervisor.pid).children()
        if len(workers) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(workers) == 2
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(supervisor.wait(), timeout=15) == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


async def test_replicas_starting_together_apply_each_migration_once(
    make_database: Callable[[str], Awaitable[str]],
) -> None:
    url = await make_database("kv")
    connections = [await asyncpg.connect(url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(db.migrate(c, "keyvault_service") for c in connections))
        expected = [m.name for m in db.load_migrations("keyvault_service")]
        assert sorted(name for run in applied for name in run) == sorted(expected)
        rows = await connections[0].fetch("SELECT name FROM schema_migrations ORDER BY version")
        assert [r["name"] for r in rows] == expected
    finally:
        for conn in connections:
            await conn.close()


def _tls(pki: Path) -> TlsFiles:
    return TlsFiles.for_workload(pki, "app")
