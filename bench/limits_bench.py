"""What a budget and both rate limits cost an execution: time to first token (pairs of the
same request to a workspace without limits and to one with a spend limit, requests per minute
and tokens per minute, alternating which goes first), tracked executions per second each way,
and the database round trips per execution each way. The limits are set so high that nothing
is refused: the figures are the cost of checking, reserving, taking and settling."""

from __future__ import annotations

import asyncio
import functools

import asyncpg

from bench.execution_bench import (
    WORKSPACE,
    _first_delta,
    _p50_p99,
    execute_call,
    execute_request,
    pct,
    store_key,
)
from bench.load import run_load
from bench.stack import running_stack, secure_channel
from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res

LIMITED = "bench-limited"


async def create_limits(port: int) -> None:
    async with secure_channel(port, "admin") as channel:
        await ex_grpc.ExecutionServiceStub(channel).CreateBudget(
            ex.CreateBudgetRequest(
                parent=f"workspaces/{LIMITED}",
                budget_id="all",
                budget=res.Budget(
                    limit_nanos=10**17,
                    period=res.BUDGET_PERIOD_MONTH,
                    requests_per_minute=10**9,
                    tokens_per_minute=10**12,
                ),
            )
        )


async def paired_ttft(port: int, samples: int) -> list[str]:
    stub = ex_grpc.ExecutionServiceStub(secure_channel(port, "app"))
    free, limited = execute_request(WORKSPACE), execute_request(LIMITED)
    plain: list[float] = []
    checked: list[float] = []
    for i in range(samples + 20):  # the first 20 warm connections and caches
        pair = (free, limited) if i % 2 else (limited, free)
        first = [await _first_delta(stub, request) for request in pair]
        if i >= 20:
            plain.append(first[pair.index(free)])
            checked.append(first[pair.index(limited)])
    added = [c - p for c, p in zip(checked, plain, strict=True)]
    return [
        f"(a) time to first token, {samples} pairs, without and with a budget + both rate limits:",
        f"    without limits   {_p50_p99(plain)}",
        f"    with limits      {_p50_p99(checked)}",
        f"    added by limits  p50 {(pct(checked, 0.5) - pct(plain, 0.5)) * 1e3:6.3f} ms  "
        f"p99 {(pct(checked, 0.99) - pct(plain, 0.99)) * 1e3:6.3f} ms  "
        f"(paired differences: p50 {pct(added, 0.5) * 1e3:.3f} ms, "
        f"p99 {pct(added, 0.99) * 1e3:.3f} ms)",
    ]


def throughput(port: int, seconds: float) -> list[str]:
    lines = ["(b) tracked executions per second, 20-chunk streams, 64 concurrent, 1 loadgen:"]
    rates = {}
    for rounds in range(2):  # alternate, to spread the shared machine's noise over both
        for workspace in (WORKSPACE, LIMITED):
            result = run_load(
                functools.partial(execute_call, port, workspace=workspace),
                concurrency=64,
                seconds=seconds,
            )
            label = "with limits" if workspace == LIMITED else "without limits"
            lines.append(f"    round {rounds + 1}: " + result.line(label))
            rates.setdefault(workspace, []).append(result.calls / seconds)
    ratio = sum(rates[LIMITED]) / sum(rates[WORKSPACE])
    lines.append(f"    with / without: {ratio * 100:.1f} %")
    return lines


async def round_trips(port: int, database_url: str, executions: int) -> list[str]:
    """Transactions the execution database committed per sequential execution: every
    statement the service sends runs in its own transaction, so this counts round trips.
    Autovacuum is paused on the tables meanwhile (its transactions count too); background
    loops still add a little (lease renewal, the sweeper, the health ping every 2 s)."""
    stub = ex_grpc.ExecutionServiceStub(secure_channel(port, "app"))
    conn = await asyncpg.connect(database_url)
    # Every plain table (the partitions of executions among them: a partitioned table has
    # no storage parameters of its own).
    tables = [
        str(t)
        for t in await conn.fetchval(
            "SELECT array_agg(c.oid::regclass::text) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'public'"
        )
    ]
    lines = [f"(c) database round trips per execution ({executions} sequential each way):"]
    try:
        for table in tables:
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        for workspace in (WORKSPACE, LIMITED):
            # A backend's statistics reach pg_stat_database within about 10 s of going idle.
            await asyncio.sleep(11)
            before = await _commits(conn)
            for _ in range(executions):
                await _first_delta(stub, execute_request(workspace))
            await asyncio.sleep(11)
            per = (await _commits(conn) - before - 1) / executions  # - our own read
            label = "with limits" if workspace == LIMITED else "without limits"
            lines.append(f"    {label:15} {per:.2f} committed transactions per execution")
    finally:
        for table in tables:
            await conn.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
        await conn.close()
    return lines


async def _commits(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
    )


async def run(seconds: float) -> list[str]:
    lines = ["## Budgets and rate limits (emulator, vault, PostgreSQL on one host)"]
    async with running_stack(with_execution=True) as stack:
        assert stack.execution_port and stack.execution_database_url
        for workspace in (WORKSPACE, LIMITED):
            await store_key(stack.vault_port, workspace)
        await create_limits(stack.execution_port)
        lines += await paired_ttft(stack.execution_port, samples=500)
        lines += throughput(stack.execution_port, seconds)
        lines += await round_trips(stack.execution_port, stack.execution_database_url, 200)
    return lines
