"""Execution service figures against the provider emulator in its own process, for both
provider behaviours (20 events of 8 bytes of text, then usage, then [DONE]: one write per
event with no delay, as a provider's server sends them, and the whole stream in one write):
(a) time to first token added by the service, one request at a time;
(b) executions per second at 128 in flight, with the CPU each process used per execution
    over the measured window, with EXECUTION_WORKERS=1 and 2;
(c) the service's resident memory with 1,000 concurrent slow streams;
(d) time to first token of an agent run by name against the same request sent ad hoc.
Every execution is tracked in PostgreSQL and its key comes from the vault (cache on)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import json
import time

import aiohttp
import asyncpg
import httpx
import psutil
from google.protobuf import struct_pb2

from bench import db_floor, grpc_floor, http_floor, sampling
from bench.load import LoadResult, run_load
from bench.stack import Stack, running_stack, secure_channel
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
# The same completion sent straight to the emulator (the baselines).
DIRECT_BODY = {
    "model": MODEL,
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "user", "content": PROMPT}],
}
DIRECT_HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# 20 content events of 8 bytes of text each.
ANSWER = ("--text", "abcdefg " * 20, "--chunks", "20")
BEHAVIOURS = {
    "one write per event": ("--write-per-event", *ANSWER),
    "coalesced (one write)": ANSWER,
}


def execute_request(workspace: str = WORKSPACE) -> ex.ExecuteRequest:
    return ex.ExecuteRequest(
        parent=f"workspaces/{workspace}",
        agent_id="bench-agent",
        provider=kv_res.PROVIDER_OPENAI,
        model=MODEL,
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content=PROMPT)],
    )


async def execute_call(port: int, channels: int = 4, workspace: str = WORKSPACE):
    """Calls spread over several connections, as many clients would make: SO_REUSEPORT
    balances connections (not calls) across a service's worker processes."""
    stubs = itertools.cycle(
        [ex_grpc.ExecutionServiceStub(secure_channel(port, "app")) for _ in range(channels)]
    )
    request = execute_request(workspace)

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
    """Paired: the same request straight to the emulator (aiohttp) and through the service,
    one after the other; first token = the first event that carries text."""
    direct: list[float] = []
    via: list[float] = []
    stub = ex_grpc.ExecutionServiceStub(secure_channel(port, "app"))
    request = execute_request()
    async with aiohttp.ClientSession() as client:
        for i in range(samples + 20):  # the first 20 warm connections and caches
            t0 = time.perf_counter()
            first = None
            async with client.post(
                f"{emulator_url}/v1/chat/completions", json=DIRECT_BODY, headers=DIRECT_HEADERS
            ) as response:
                async for line in response.content:
                    if first is None and b'"content":"' in line and b'"content":""' not in line:
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


INSTRUCTIONS = "You triage support tickets. Answer with the ticket's category and priority."
TICKET = {"subject": "Refund", "body": "My order 1234 arrived broken.", "customer_id": "c-42"}
INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "maxLength": 200},
        "body": {"type": "string", "maxLength": 5000},
        "customer_id": {"type": "string", "pattern": "^c-[0-9]+$"},
    },
    "required": ["subject", "body", "customer_id"],
}
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "shipping", "refund", "other"]},
        "priority": {"type": "integer"},
        "summary": {"type": "string"},
    },
    "required": ["category", "priority", "summary"],
    "additionalProperties": False,
}


def _struct(document: dict[str, object]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(document)
    return value


async def create_agent(stub: ex_grpc.ExecutionServiceStub, agent_id: str, schemas: bool) -> None:
    await stub.CreateAgent(
        ex.CreateAgentRequest(
            parent=f"workspaces/{WORKSPACE}",
            agent_id=agent_id,
            agent=res.Agent(
                instructions=INSTRUCTIONS,
                routes=[res.Route(provider=kv_res.PROVIDER_OPENAI, model=MODEL)],
                input_schema=_struct(INPUT_SCHEMA) if schemas else None,
                output_schema=_struct(OUTPUT_SCHEMA) if schemas else None,
            ),
        )
    )


async def _first_delta(stub: ex_grpc.ExecutionServiceStub, request: ex.ExecuteRequest) -> float:
    t0 = time.perf_counter()
    first = None
    async for event in stub.Execute(request):
        if first is None and event.HasField("delta"):
            first = time.perf_counter() - t0
        done = event.completed
        if event.HasField("completed") and done.HasField("output_valid") and not done.output_valid:
            raise RuntimeError("the structured output was not valid")
    assert first is not None
    return first


def _p50_p99(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1e3:6.2f} ms  p99 {pct(values, 0.99) * 1e3:6.2f} ms"


async def _paired(
    stub: ex_grpc.ExecutionServiceStub, schemas: bool, samples: int
) -> tuple[list[float], list[float]]:
    """Time to first token of one agent by name and of the same request ad hoc, alternating
    which goes first."""
    agent_id = "bench-structured" if schemas else "bench-free"
    await create_agent(stub, agent_id, schemas)
    by_agent = ex.ExecuteRequest(
        parent=f"workspaces/{WORKSPACE}",
        agent=f"workspaces/{WORKSPACE}/agents/{agent_id}",
        input=_struct(TICKET),
    )
    ad_hoc = ex.ExecuteRequest(
        parent=f"workspaces/{WORKSPACE}",
        agent_id=agent_id,
        provider=kv_res.PROVIDER_OPENAI,
        model=MODEL,
        messages=[
            res.Message(role=res.MESSAGE_ROLE_SYSTEM, content=INSTRUCTIONS),
            res.Message(role=res.MESSAGE_ROLE_USER, content=json.dumps(TICKET, sort_keys=True)),
        ],
        output_schema=_struct(OUTPUT_SCHEMA) if schemas else None,
    )
    agent: list[float] = []
    plain: list[float] = []
    for i in range(samples + 20):  # the first 20 warm connections and caches
        pair = (by_agent, ad_hoc) if i % 2 else (ad_hoc, by_agent)
        first = [await _first_delta(stub, request) for request in pair]
        if i >= 20:
            agent.append(first[pair.index(by_agent)])
            plain.append(first[pair.index(ad_hoc)])
    return agent, plain


async def agent_vs_ad_hoc(port: int, samples: int) -> list[str]:
    """The same execution both ways: by agent name (the agent is read, the input validated)
    and ad hoc (the caller sends what the agent holds; with an output schema, that schema is
    checked on every request). Once with schemas, once without."""
    stub = ex_grpc.ExecutionServiceStub(secure_channel(port, "app"))
    lines = [f"(d) time to first token, agent by name vs the same request ad hoc, {samples} pairs:"]
    for schemas in (True, False):
        agent, plain = await _paired(stub, schemas, samples)
        added = [a - p for a, p in zip(agent, plain, strict=True)]
        lines += [
            "    with input and output schemas:" if schemas else "    free text, no schemas:",
            f"      ad hoc          {_p50_p99(plain)}",
            f"      agent by name   {_p50_p99(agent)}",
            f"      added by name   p50 {(pct(agent, 0.5) - pct(plain, 0.5)) * 1e3:6.3f} ms  "
            f"p99 {(pct(agent, 0.99) - pct(plain, 0.99)) * 1e3:6.3f} ms  "
            f"(paired differences: p50 {pct(added, 0.5) * 1e3:.3f} ms, "
            f"p99 {pct(added, 0.99) * 1e3:.3f} ms)",
        ]
    return lines


async def store_key(vault_port: int, workspace: str = WORKSPACE) -> None:
    async with secure_channel(vault_port, "app") as ch:
        await kv_grpc.KeyVaultServiceStub(ch).SetApiKey(
            kv.SetApiKeyRequest(name=f"workspaces/{workspace}/apiKeys/openai", api_key=API_KEY)
        )


def throughput(stack: Stack, seconds: float, concurrency: int = 128) -> LoadResult:
    """Closed loop at `concurrency` in flight from one load generator process, with the CPU
    of each of the stack's processes and the database's write transactions over the
    measured window."""
    assert stack.execution_port and stack.execution_database_url
    return run_load(
        functools.partial(execute_call, stack.execution_port),
        concurrency=concurrency,
        seconds=seconds,
        watch=stack.pids,
        counters={"writes": functools.partial(transaction_ids, stack.execution_database_url)},
    )


def transaction_ids(database_url: str) -> float:
    """The server's next transaction id: only a transaction that writes takes one, so its
    change counts write transactions (the service sends each statement on its own), at
    once, where pg_stat_database lags by up to seconds. Read from a thread: the caller
    blocks the event loop while it measures."""

    async def read() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            # pg_current_xact_id() would take an id itself.
            return int(await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())"))
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return float(thread.submit(asyncio.run, read()).result())


def throughput_lines(result: LoadResult, workers: int) -> list[str]:
    label = f"128 in flight, EXECUTION_WORKERS={workers}"
    writes = result.counted["writes"] / result.calls if result.calls else float("nan")
    return [
        "    " + result.line(label),
        f"      CPU over the window: {result.cpu_line()}",
        f"      database write transactions per execution: {writes:.2f}",
    ]


async def run_agent_comparison() -> list[str]:
    lines = ["## Execution service: agent by name vs ad hoc (emulator, vault, PostgreSQL)"]
    async with running_stack(with_execution=True) as stack:
        assert stack.execution_port
        await store_key(stack.vault_port)
        lines += await agent_vs_ad_hoc(stack.execution_port, samples=500)
    return lines


async def run(
    seconds: float, *, ttft_samples: int = 300, agent: bool = True, profile: bool = False
) -> list[str]:
    """`profile`: a sampling profile of the execution service during (b) with one worker."""
    lines = ["## Execution service (emulator, vault, PostgreSQL and load generator on one host)"]
    for behaviour, emulator_args in BEHAVIOURS.items():
        lines.append(f"### provider: {behaviour}")
        async with running_stack(with_execution=True, emulator_args=emulator_args) as stack:
            assert stack.execution_port and stack.emulator_url
            await store_key(stack.vault_port)
            lines += await ttft_overhead(stack.execution_port, stack.emulator_url, ttft_samples)
            lines.append("(b) executions per second, 20-event streams, every one tracked:")
            sampled: list[str] = []
            with (
                sampling.sampled(stack.pids["execution"], seconds, sampled)
                if profile
                else contextlib.nullcontext()
            ):
                result = throughput(stack, seconds)
            lines += throughput_lines(result, workers=1) + sampled
        async with running_stack(
            with_execution=True, emulator_args=emulator_args, workers=2
        ) as stack:
            await store_key(stack.vault_port)
            lines += throughput_lines(throughput(stack, seconds), workers=2)
    lines += grpc_floor.run(seconds)
    lines += http_floor.run(seconds, BEHAVIOURS)
    async with running_stack(with_execution=True) as stack:
        assert stack.execution_port and stack.emulator_url and stack.execution_database_url
        lines += db_floor.run(stack.execution_database_url, stack.pids["postgres"], seconds)
        await store_key(stack.vault_port)
        lines += await memory_with_slow_streams(
            stack.execution_port, stack.emulator_url, stack.pids["execution"], 1000
        )
        if agent:
            lines += await agent_vs_ad_hoc(stack.execution_port, samples=500)
    return lines
