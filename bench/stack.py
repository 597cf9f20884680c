"""Start the services under test as separate processes on free ports, with their own
databases on the embedded PostgreSQL, and stop them afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyvault_service.keyring import generate_master_key
from service_kit import devcerts, embedded_pg
from service_kit.settings import PROJECT_ROOT
from service_kit.tls import TlsFiles, channel_credentials

CERTS = PROJECT_ROOT / "certs"


def wait_listening(port: int) -> None:
    """Until something accepts connections on `port` (a server started as a process)."""
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls(workload: str) -> TlsFiles:
    return TlsFiles.for_workload(CERTS, workload)


def secure_channel(port: int, workload: str = "app") -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(tls(workload)))


async def wait_serving(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(150):
        if process.returncode is not None:
            raise RuntimeError(f"service on port {port} exited with {process.returncode}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            async with secure_channel(port) as ch:
                reply = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"service on port {port} did not become ready")


async def start_execution(
    env: dict[str, str], args: tuple[str, ...], source: Path = PROJECT_ROOT
) -> tuple[int, asyncio.subprocess.Process]:
    """An execution service run from the source tree `source`, on a free port, once serving;
    `env` names its database, the vault and the providers."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=dict(env, EXECUTION_LISTEN_ADDRESS=f"127.0.0.1:{port}", PYTHONPATH=str(source)),
        cwd=source,
    )
    await wait_serving(port, process)
    return port, process


@dataclass
class Stack:
    vault_port: int
    execution_port: int | None
    emulator_url: str | None
    pids: dict[str, int]
    execution_database_url: str | None = None
    env: dict[str, str] | None = None  # what the services were started with
    server_uri: str = ""  # the embedded PostgreSQL server


async def fresh_database(server_uri: str, name: str) -> str:
    await embedded_pg.drop_database(server_uri, name)
    return await embedded_pg.ensure_database(server_uri, name)


@contextlib.asynccontextmanager
async def running_stack(
    *,
    with_execution: bool,
    emulator_args: tuple[str, ...] = (),
    workers: int = 1,
    profile: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """`workers`: processes per service, sharing its port (KEYVAULT_/EXECUTION_WORKERS).
    `profile`: service ("keyvault", "execution") -> file that gets its sampled profile
    (bench.profiler) when it stops."""

    def service(module: str, name: str) -> tuple[str, ...]:
        out = (profile or {}).get(name)
        return ("-m", "bench.profiler", out, "-m", module) if out else ("-m", module)

    devcerts.write_dev_certs(CERTS)
    server = embedded_pg.start()
    uri = server.get_uri()
    env = dict(
        os.environ,
        LOG_LEVEL="WARNING",
        CERTS_DIR=str(CERTS),
        KEYVAULT_MASTER_KEYS=f"1:{generate_master_key()}",
        KEYVAULT_DATABASE_URL=await fresh_database(uri, "bench_keyvault"),
        EXECUTION_DATABASE_URL=await fresh_database(uri, "bench_execution"),
        KEYVAULT_DB_POOL_MAX="20",
        EXECUTION_DB_POOL_MAX="20",
        KEYVAULT_METRICS_PORT="0",  # a running `make run` may hold the default ports
        EXECUTION_METRICS_PORT="0",
        KEYVAULT_WORKERS=str(workers),
        PROVIDER_ALLOWED_HOSTS="127.0.0.1,localhost",  # the emulator
        EXECUTION_WORKERS=str(workers),
    )
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        vault_port = free_port()
        env["KEYVAULT_LISTEN_ADDRESS"] = f"127.0.0.1:{vault_port}"
        processes["keyvault"] = await asyncio.create_subprocess_exec(
            sys.executable, *service("keyvault_service", "keyvault"), env=env
        )
        await wait_serving(vault_port, processes["keyvault"])
        execution_port = emulator_url = None
        if with_execution:
            emulator_port = free_port()
            emulator_url = f"http://127.0.0.1:{emulator_port}"
            processes["emulator"] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "provider_emulator",
                "--port",
                str(emulator_port),
                *emulator_args,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )
            env.update(
                KEYVAULT_ADDRESS=f"localhost:{vault_port}",
                OPENAI_BASE_URL=emulator_url,
                ANTHROPIC_BASE_URL=emulator_url,
            )
            execution_port, processes["execution"] = await start_execution(
                env, service("execution_service", "execution")
            )
        pids = {n: p.pid for n, p in processes.items()}
        postmaster = server.get_pid()
        if postmaster is not None:  # its backends are its children: the whole server's CPU
            pids["postgres"] = postmaster
        yield Stack(
            vault_port,
            execution_port,
            emulator_url,
            pids,
            env["EXECUTION_DATABASE_URL"],
            env,
            uri,
        )
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in processes.values()))
