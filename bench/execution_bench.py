"""Execution service figures against the provider emulator in its own process:
(a) time to first token added by the service, one request at a time;
(b) executions per second with 20-chunk streams at 32 and 128 concurrent;
(c) the service's resident memory with 1,000 concurrent slow streams.
Every execution is tracked in PostgreSQL and its key comes from the vault (cache on)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time

import httpx
import psutil

from bench.load import run_load
from bench.stack import running_stack, secure_channel
from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as kv_res

WORKSPACE = "bench"
API_KEY = "sk-bench-0123456789abcdef"
MODEL = "gpt-4o-mini"
PROMPT = "Summarise the state of the fleet in one line"


def execute_request() -> ex.ExecuteRequest:
    return ex.ExecuteRequest(
        parent=f"workspaces/{WORKSPACE}",
        agent_id="bench-agent",
        provider=kv_res.PROVIDER_OPENAI,
        model=MODEL,
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content=PROMPT)],
    )


async def execute_call(port: int, channels: int = 4):
    """Calls spread over several connections, as many clients would make: SO_REUSEPORT
    balances connections (not calls) across a service's worker processes."""
    stubs = itertools.cycle(
        [ex_grpc.ExecutionServiceStub(secure_channel(port, "app")) for _ in range(channels)]
    )
    request = execute_request()

    async def call() -> None:
        state = None
        async for event in next(stubs).Execute(request):
            if event.HasField("completed"):
                state = event.completed.state
        if state != res.EXECUTION_STATE_SUCCEEDED:
            raise RuntimeError(f"execution ended {state}")

    return call


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ttft_overhead(port: int, emulator_url: str, samples: int) -> list[str]:
    body = {
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": PROMPT}],
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    direct: list[float] = []
    via: list[float] = []
    stub = ex_grpc.ExecutionServiceStub(secure_channel(port, "app"))
    request = execute_request()
    async with httpx.AsyncClient() as client:
        for i in range(samples + 20):  # the first 20 warm connections and caches
            t0 = time.perf_counter()
            async with client.stream(
                "POST", f"{emulator_url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                first = None
                async for line in response.aiter_lines():
                    if first is None and '"content"' in line:
                        first = time.perf_counter() - t0
            t0 = time.perf_counter()
            first_via = None
            async for event in stub.Execute(request):
                if first_via is None and event.HasField("delta"):
                    first_via = time.perf_counter() - t0
            if i >= 20:
                assert first is not None and first_via is not None
                direct.append(first)
                via.append(first_via)
    added = [v - d for v, d in zip(via, direct, strict=True)]
    return [
        f"(a) time to first token, {samples} sequential requests:",
        f"    direct to emulator     p50 {pct(direct, 0.5) * 1e3:6.2f} ms  "
        f"p99 {pct(direct, 0.99) * 1e3:6.2f} ms",
        f"    via execution service  p50 {pct(via, 0.5) * 1e3:6.2f} ms  "
        f"p99 {pct(via, 0.99) * 1e3:6.2f} ms",
        f"    added by the service   p50 {(pct(via, 0.5) - pct(direct, 0.5)) * 1e3:6.2f} ms  "
        f"p99 {(pct(via, 0.99) - pct(direct, 0.99)) * 1e3:6.2f} ms  "
        f"(paired differences: p50 {pct(added, 0.5) * 1e3:.2f} ms, "
        f"p99 {pct(added, 0.99) * 1e3:.2f} ms)",
    ]


async def memory_with_slow_streams(
    port: int, emulator_url: str, execution_pid: int, streams: int
) -> list[str]:
    service = psutil.Process(execution_pid)
    idle_rss = service.memory_info().rss
    async with httpx.AsyncClient() as client:
        # 20 chunks, 0.5 s apart: each stream stays open about 10 s.
        steps = [{"chunk_delay_ms": 500}] * streams
        await client.post(f"{emulator_url}/_emulator/script", json={"steps": steps})
    stub = ex_grpc.ExecutionServiceStub(secure_channel(port, "app"))
    first_deltas = 0
    all_streaming = asyncio.Event()

    async def one() -> str:
        nonlocal first_deltas
        seen = False
        state = None
        async for event in stub.Execute(execute_request(), timeout=120):
            if event.HasField("delta") and not seen:
                seen = True
                first_deltas += 1
                if first_deltas == streams:
                    all_streaming.set()
            if event.HasField("completed"):
                state = event.completed.state
        return res.ExecutionState.Name(state or 0)

    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    await asyncio.wait_for(all_streaming.wait(), timeout=60)
    peak = 0
    for _ in range(10):  # sample while every stream is open
        peak = max(peak, service.memory_info().rss)
        await asyncio.sleep(0.3)
    states = await asyncio.gather(*tasks)
    ok = states.count("EXECUTION_STATE_SUCCEEDED")
    return [
        f"(c) {streams} concurrent slow streams (20 chunks, 0.5 s apart): execution service RSS "
        f"{peak / 2**20:.0f} MB while all were open (idle before: {idle_rss / 2**20:.0f} MB); "
        f"{ok}/{streams} succeeded",
    ]


async def store_key(vault_port: int) -> None:
    async with secure_channel(vault_port, "app") as ch:
        await kv_grpc.KeyVaultServiceStub(ch).SetApiKey(
            kv.SetApiKeyRequest(name=f"workspaces/{WORKSPACE}/apiKeys/openai", api_key=API_KEY)
        )


def throughput(port: int, seconds: float, service_processes: int) -> list[str]:
    lines = []
    for concurrency in (32, 128):
        for loadgen in (1, 2):
            result = run_load(
                functools.partial(execute_call, port),
                concurrency=concurrency,
                seconds=seconds,
                processes=loadgen,
            )
            label = f"{concurrency} concurrent, {service_processes} svc proc, {loadgen} loadgen"
            lines.append("    " + result.line(label))
    return lines


async def run(seconds: float) -> list[str]:
    lines = ["## Execution service (emulator, vault, PostgreSQL and load generator on one host)"]
    async with running_stack(with_execution=True) as stack:
        assert stack.execution_port and stack.emulator_url
        await store_key(stack.vault_port)
        lines += await ttft_overhead(stack.execution_port, stack.emulator_url, samples=300)
        lines.append("(b) executions per second, 20-chunk streams, every one tracked:")
        lines += throughput(stack.execution_port, seconds, service_processes=1)
        lines += await memory_with_slow_streams(
            stack.execution_port, stack.emulator_url, stack.pids["execution"], 1000
        )
    async with running_stack(with_execution=True, workers=2) as stack:
        assert stack.execution_port
        await store_key(stack.vault_port)
        lines.append("(b') the same with EXECUTION_WORKERS=2 (two processes share the port):")
        lines += throughput(stack.execution_port, seconds, service_processes=2)
    return lines
