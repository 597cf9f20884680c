"""GetAgentStats and ListExecutions at scale, and what the rollup trigger costs.

(a) GetAgentStats p50 over windows of 1 hour, 1 day and 90 days (not minute-aligned), with
    1M and then 10M executions of one agent spread over 90 days (rows generated in bulk
    with generate_series, rollups built in bulk as the migration does): BEFORE, the raw-row
    percentile_cont query the service used until migration 006 (kept here to compare), and
    AFTER, repository.agent_stats from rollups.
(b) ListExecutions page 1 against page 10,000 (50 rows a page) with each filter, under
    plan_cache_mode=force_generic_plan, i.e. once the plan cache has switched to generic
    plans.
(c) Tracked executions per second through the whole stack with the rollup trigger disabled
    and enabled, alternated to even out a busy machine.
"""

from __future__ import annotations

import datetime as dt
import functools
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg

from execution_service import maintenance
from execution_service import repository as repo
from execution_service.model import OUTPUT_FAILURES
from service_kit import db, embedded_pg

WS, AGENT = "bench", "stats-agent"
SPAN = dt.timedelta(days=90)
PAGE = 50

# The statement GetAgentStats ran before rollups: every row of the agent in the window.
BEFORE_SQL = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE state = 'RUNNING') AS running,
       count(*) FILTER (WHERE state = 'SUCCEEDED') AS succeeded,
       count(*) FILTER (WHERE state = 'FAILED') AS failed,
       count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
       coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
       coalesce(sum(cost_nanos), 0) AS cost_nanos,
       count(*) FILTER (WHERE cost_nanos IS NULL AND state <> 'RUNNING') AS unknown_cost,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM end_time - create_time))
           FILTER (WHERE end_time IS NOT NULL) AS latency_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM end_time - create_time))
           FILTER (WHERE end_time IS NOT NULL) AS latency_p95,
       percentile_cont(0.5) WITHIN GROUP
           (ORDER BY extract(epoch FROM first_token_time - create_time))
           FILTER (WHERE first_token_time IS NOT NULL) AS ttft_p50,
       percentile_cont(0.95) WITHIN GROUP
           (ORDER BY extract(epoch FROM first_token_time - create_time))
           FILTER (WHERE first_token_time IS NOT NULL) AS ttft_p95,
       count(*) FILTER (WHERE state = 'FAILED' AND error_reason = ANY($5::text[]))
           AS output_invalid
FROM executions
WHERE workspace = $1 AND agent_id = $2 AND create_time >= $3 AND create_time < $4"""

# Rows [first, last) of the agent at a steady 10M per 90 days back from `now` (so the first
# 1M cover the last 9 days, and 10M the whole 90 days): 70 % succeeded,
# 20 % failed, 10 % cancelled; log-normal-ish latencies from ~50 ms to a minute.
GENERATE_SQL = """
INSERT INTO executions (id, workspace, agent_id, provider, model, state, request_id,
    input_tokens, output_tokens, cache_read_tokens, cost_nanos, error_reason, create_time,
    first_token_time, end_time, route_index)
SELECT gen_random_uuid(), $1, $2, 'openai', 'gpt-4o-mini',
       CASE WHEN r < 0.7 THEN 'SUCCEEDED' WHEN r < 0.9 THEN 'FAILED' ELSE 'CANCELLED' END,
       'req-' || g, 100 + g % 900, 20 + g % 300, g % 50, CASE WHEN g % 97 = 0 THEN NULL
       ELSE 1000 * (g % 5000) END,
       CASE WHEN r >= 0.7 AND r < 0.9 THEN
           (ARRAY['PROVIDER_SERVER_ERROR', 'OUTPUT_SCHEMA_VIOLATION'])[1 + g % 2] ELSE '' END,
       t, t + lat / 4, t + lat, (g % 20 = 0)::int
FROM generate_series($3::bigint, $4::bigint - 1) g,
     LATERAL (SELECT random() AS r,
                     $5::timestamptz - (g::float8 / $6::float8) * interval '90 days' AS t,
                     exp(ln(50) + random() * ln(1200)) * interval '1 ms' AS lat) x"""


async def _p50(call: Callable[[], Awaitable[object]], samples: int) -> float:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


async def _fresh(conn: asyncpg.Connection, now: dt.datetime) -> None:
    """Weekly partitions over the 90 days (the empty legacy partition of a fresh database
    covers the past up to this week: dropped so the bench's rows are partitioned)."""
    await conn.execute("ALTER TABLE executions DETACH PARTITION executions_legacy")
    await conn.execute("DROP TABLE executions_legacy")
    await maintenance.ensure_partitions(conn, 15, now=now - SPAN)


async def _grow(conn: asyncpg.Connection, now: dt.datetime, first: int, last: int) -> str:
    """Rows [first, last) in bulk with triggers off, then their keys and rollups in bulk.
    Each batch is older than the rows before it, so it is exactly the rows created before
    the oldest row so far."""
    started = time.perf_counter()
    hi = await conn.fetchval("SELECT coalesce(min(create_time), 'infinity') FROM executions")
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(GENERATE_SQL, WS, AGENT, first, last, now, 10_000_000)
    lo = await conn.fetchval("SELECT min(create_time) FROM executions")
    await conn.execute(
        """INSERT INTO execution_keys (id, create_time, workspace, request_id)
           SELECT id, create_time, workspace, request_id FROM executions
           WHERE create_time >= $1 AND create_time < $2""",
        lo,
        hi,
    )
    await conn.execute("SELECT execution_rollup_backfill($1, $2)", lo, hi)
    await maintenance.fold_rollups(conn, dt.datetime.max.replace(tzinfo=dt.UTC))
    await conn.execute("VACUUM ANALYZE")
    return f"{last - first:,} rows generated in {time.perf_counter() - started:.0f} s"


async def stats_latency(conn: asyncpg.Connection, now: dt.datetime, count: int) -> list[str]:
    # Only the rows generated so far: the agent's rows reach back count / 10M of 90 days.
    odd = dt.timedelta(seconds=7, milliseconds=250)  # windows not aligned to the minute
    lines = []
    for label, span in (("1 hour", dt.timedelta(hours=1)), ("1 day", dt.timedelta(days=1))):
        end = now - odd
        lines.append(await _compare(conn, f"{label:<8}", end - span, end, count, 20))
    end = now + dt.timedelta(minutes=1)
    lines.append(await _compare(conn, "90 days ", end - SPAN - odd, end, count, 20))
    return lines


async def _compare(
    conn: asyncpg.Connection,
    label: str,
    start: dt.datetime,
    end: dt.datetime,
    count: int,
    samples: int,
) -> str:
    in_window = await conn.fetchval(
        "SELECT count(*) FROM executions WHERE workspace = $1 AND agent_id = $2"
        " AND create_time >= $3 AND create_time < $4",
        WS,
        AGENT,
        start,
        end,
    )
    before_samples = 3 if in_window > 2_000_000 else 7 if in_window > 100_000 else samples
    before = await _p50(
        lambda: conn.fetchrow(BEFORE_SQL, WS, AGENT, start, end, list(OUTPUT_FAILURES)),
        before_samples,
    )
    after = await _p50(lambda: repo.agent_stats(conn, WS, AGENT, start, end), samples)
    return (
        f"    {count / 1e6:>4.0f}M rows, window {label} ({in_window:>10,} in it): "
        f"BEFORE p50 {before:9.1f} ms   AFTER p50 {after:6.2f} ms"
    )


async def list_pages(conn: asyncpg.Connection, now: dt.datetime) -> list[str]:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    lines = []
    filters: list[tuple[str, dict[str, object]]] = [
        ("no filter", {}),
        ("agent", {"agent_id": AGENT}),
        ("state FAILED", {"state": "FAILED"}),
        ("agent+state", {"agent_id": AGENT, "state": "SUCCEEDED"}),
        ("time range", {"start_time": now - SPAN, "end_time": now}),
    ]
    for label, given in filters:
        args: dict[str, object] = {
            "agent_id": None,
            "state": None,
            "start_time": None,
            "end_time": None,
            **given,
        }
        # Page 10,000's cursor: the last row of page 9,999, found once by walking the keyset.
        cursor = None
        deep = (PAGE * 9_999) - 1
        row = await conn.fetchrow(
            "SELECT create_time, id FROM executions WHERE workspace = $1"
            " AND ($2::text IS NULL OR agent_id = $2) AND ($3::text IS NULL OR state = $3)"
            " ORDER BY create_time DESC, id DESC OFFSET $4 LIMIT 1",
            WS,
            args["agent_id"],
            args["state"],
            deep,
        )
        if row is not None:
            cursor = (row["create_time"], row["id"])

        async def page(after: object, given: dict[str, object] = args) -> object:
            return await repo.list_page(conn, WS, after=after, limit=PAGE + 1, **given)  # type: ignore[arg-type]

        for _ in range(6):  # past the plan cache's first custom plans
            await page(None)
        first = await _p50(lambda: page(None), 50)
        deep_ms = await _p50(functools.partial(page, cursor), 50) if cursor else float("nan")
        lines.append(f"    {label:<13} page 1 {first:6.2f} ms   page 10,000 {deep_ms:6.2f} ms")
    await conn.execute("RESET plan_cache_mode")
    return lines


async def run(sizes: tuple[int, ...] = (1_000_000, 10_000_000)) -> list[str]:
    lines = [
        "## Statistics at scale: GetAgentStats BEFORE (raw rows, percentile_cont) and AFTER "
        "(rollups); windows end 7.25 s off the minute"
    ]
    server = embedded_pg.start()
    uri = server.get_uri()
    await embedded_pg.drop_database(uri, "bench_stats")
    conn = await asyncpg.connect(await embedded_pg.ensure_database(uri, "bench_stats"))
    try:
        await db.migrate(conn, "execution_service")
        now = await conn.fetchval("SELECT now()")
        await _fresh(conn, now)
        have = 0
        for size in sizes:
            lines.append("  " + await _grow(conn, now, have, size))
            have = size
            lines += await stats_latency(conn, now, size)
        lines.append(
            f"(b) ListExecutions, {PAGE} a page, {have / 1e6:.0f}M rows, "
            "plan_cache_mode=force_generic_plan (p50 of 50):"
        )
        lines += await list_pages(conn, now)
        table = await conn.fetchval(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(relid)))"
            " FROM pg_partition_tree('executions')"
        )
        rollups = await conn.fetchval(
            "SELECT pg_size_pretty(pg_total_relation_size('execution_rollups'))"
        )
        lines.append(f"  executions (all partitions, one level): {table}; rollups: {rollups}")
    finally:
        await conn.close()
    return lines


async def trigger_cost(seconds: float, rounds: int = 3) -> list[str]:
    """Tracked executions per second with the rollup trigger off and on, alternated."""
    from bench import execution_bench
    from bench.load import run_load
    from bench.stack import running_stack

    lines = [
        "(c) tracked executions/s, 20-chunk streams, 32 concurrent, 1 service process, "
        f"{seconds:.0f} s a run, rollup trigger off/on alternated {rounds} times:"
    ]
    async with running_stack(with_execution=True) as stack:
        assert stack.execution_port
        await execution_bench.store_key(stack.vault_port)
        server = embedded_pg.start()  # attaches to the stack's server
        url = await embedded_pg.ensure_database(server.get_uri(), "bench_execution")
        conn = await asyncpg.connect(url)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        try:
            call = functools.partial(execution_bench.execute_call, stack.execution_port)
            run_load(call, concurrency=32, seconds=2, processes=1)  # warm up
            for _ in range(rounds):
                for mode in ("off", "on"):
                    action = "DISABLE" if mode == "off" else "ENABLE"
                    for trigger in ("executions_rollup_insert", "executions_rollup_update"):
                        await conn.execute(f"ALTER TABLE executions {action} TRIGGER {trigger}")
                    result = run_load(call, concurrency=32, seconds=seconds, processes=1)
                    rates[mode].append(result.rate)
        finally:
            await conn.close()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    runs = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(rates["off"], rates["on"], strict=True))
    lines.append(
        f"    trigger off {off:.0f}/s, on {on:.0f}/s (medians): {on / off * 100:.0f} % "
        f"(runs off/on: {runs})"
    )
    return lines
