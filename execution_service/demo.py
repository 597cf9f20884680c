"""`make demo`: the provider emulator, a stored key, one streamed execution, the agent's stats.

Uses the pair that `make run` started when it answers on the default ports; otherwise starts
the pair itself (with the same development defaults) for the length of the demo.

The demo works in a fresh workspace of its own (`demo-` and random characters) and deletes
its key at the end, whatever happens: its emulator stops with it, so a key left behind would
point at a dead address, and a workspace someone uses (`demo` in the README) is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from provider_emulator.server import start_emulator
from service_kit import devstack
from service_kit.settings import PROJECT_ROOT
from service_kit.tls import TlsFiles, channel_credentials

VAULT, EXECUTION = "localhost:50051", "localhost:50052"
AGENT = "demo-agent"


@dataclass(frozen=True)
class Pair:
    """Where the demo finds the services, and the folder of the `app` certificate."""

    vault: str = VAULT
    execution: str = EXECUTION
    certs: Path = PROJECT_ROOT / "certs"

    def channel(self, address: str) -> grpc.aio.Channel:
        files = TlsFiles.for_workload(self.certs, "app")
        return grpc.aio.secure_channel(address, channel_credentials(files))


def demo_workspace(token: str) -> str:
    """A workspace of the demo's own, e.g. `demo-3f9a1c`."""
    return f"demo-{token}"


async def serving(pair: Pair, address: str) -> bool:
    try:
        async with pair.channel(address) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except (grpc.aio.AioRpcError, OSError):
        return False


@contextlib.asynccontextmanager
async def the_pair(pair: Pair) -> AsyncIterator[None]:
    if (
        (pair.certs / "ca.pem").exists()
        and await serving(pair, pair.vault)
        and await serving(pair, pair.execution)
    ):
        print("demo: using the running pair (make run)\n")
        yield
        return
    print("demo: starting the pair for the demo\n")
    env = dict(os.environ, LOG_LEVEL="WARNING")
    await devstack.prepare_environment(env)
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", module, env=env)
        for module in ("keyvault_service", "execution_service")
    ]
    try:
        for _ in range(100):
            if await serving(pair, pair.vault) and await serving(pair, pair.execution):
                break
            await asyncio.sleep(0.2)
        else:
            raise SystemExit("demo: the pair did not start; see the logs above")
        yield
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in processes))


def dollars(nanos: int) -> str:
    return f"${nanos / 1e9:.6f}"


async def run_demo(pair: Pair, workspace: str, provider_url: str) -> None:
    """Store a key for `workspace` pointing at `provider_url`, stream one execution, print the
    agent's statistics, then delete the key (also when something failed on the way)."""
    key_name = f"workspaces/{workspace}/apiKeys/anthropic"
    async with pair.channel(pair.vault) as vault_ch, pair.channel(pair.execution) as exec_ch:
        vault = kv_grpc.KeyVaultServiceStub(vault_ch)
        execution = ex_grpc.ExecutionServiceStub(exec_ch)
        stored = await vault.SetApiKey(
            kv.SetApiKeyRequest(
                name=key_name, api_key="sk-ant-demo-0123456789abcdef", base_url=provider_url
            )
        )
        print(
            f"workspace {workspace} (the demo's own): stored {stored.api_key.name} as "
            f"{stored.api_key.key_hint} (provider: the local emulator at {provider_url})\n"
        )
        try:
            await stream_one_execution(execution, workspace)
        finally:
            await vault.DeleteApiKey(kv.DeleteApiKeyRequest(name=key_name))
            print(f"\ndeleted {key_name}: the demo's emulator stops with it")


async def stream_one_execution(
    execution: ex_grpc.ExecutionServiceAsyncStub, workspace: str
) -> None:
    request = ex.ExecuteRequest(
        parent=f"workspaces/{workspace}",
        agent_id=AGENT,
        provider=kv_res.PROVIDER_ANTHROPIC,
        model="claude-3-5-sonnet-20241022",
        messages=[
            res.Message(role=res.MESSAGE_ROLE_SYSTEM, content="You are a helpful agent."),
            res.Message(role=res.MESSAGE_ROLE_USER, content="Write a short status line."),
        ],
    )
    async for event in execution.Execute(request):
        kind = event.WhichOneof("event")
        if kind == "started":
            print(f"> {event.started.name}\n")
        elif kind == "delta":
            print(event.delta.text, end="", flush=True)
        else:
            done = event.completed
            print(
                f"\n\n{res.ExecutionState.Name(done.state)}: "
                f"{done.usage.input_tokens} in / {done.usage.output_tokens} out tokens, "
                f"cost {dollars(done.cost_nanos)}, "
                f"latency {done.latency.ToMilliseconds()} ms, "
                f"first token {done.time_to_first_token.ToMilliseconds()} ms, "
                f"attempts {done.attempts}"
            )
    stats = (
        await execution.GetAgentStats(
            ex.GetAgentStatsRequest(parent=f"workspaces/{workspace}", agent_id=AGENT)
        )
    ).stats
    print(
        f"\nagent {AGENT}, last 24 h: {stats.total_count} executions, "
        f"{stats.success_rate:.0%} succeeded, "
        f"{stats.input_tokens + stats.output_tokens} tokens, "
        f"cost {dollars(stats.cost_nanos)}, "
        f"latency p50 {stats.latency_p50.ToMilliseconds()} ms / "
        f"p95 {stats.latency_p95.ToMilliseconds()} ms"
    )


async def main() -> None:
    text = (
        "All systems nominal: the overnight agents finished 42 tasks, "
        "no retries were needed, and the queue is empty."
    )
    pair = Pair()
    async with start_emulator(text=text, chunk_delay_ms=60) as emulator, the_pair(pair):
        await run_demo(pair, demo_workspace(secrets.token_hex(3)), emulator.base_url)


if __name__ == "__main__":
    asyncio.run(main())
