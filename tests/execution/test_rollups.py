"""Rollups, partitions and retention on the real database (migration 006).

Rollups equal the raw aggregates after every way an execution ends (the owner's record, the
sweeper, a late record replacing the sweeper's verdict, a record whose RUNNING row was lost),
before and after they are folded, for aligned and unaligned windows; concurrent finishes of
one agent do not deadlock; partitions are created ahead (rows the default partition took
move into them) and dropped by retention while rollups stay; request ids are unique across
partitions; and a populated table of the old schema migrates."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from execution_service import histogram, maintenance
from execution_service import repository as repo
from execution_service.model import (
    CANCELLED,
    FAILED,
    OUTPUT_FAILURES,
    OUTPUT_SCHEMA_VIOLATION,
    RUNNING,
    SUCCEEDED,
    AgentStats,
    Execution,
    ExecutionError,
    Outcome,
    Usage,
)
from execution_service.rollup_window import WEEK, rollup_window
from service_kit import db
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    Workspace,
    get_execution,
    migrate_below,
    openai_key,
    request,
    run,
)

WS, AGENT = "roll", "agent-r"
NOW = dt.datetime.now(dt.UTC)


def started(create_time: dt.datetime, request_id: str | None = None) -> Execution:
    return Execution(
        id=uuid.uuid4(),
        workspace=WS,
        agent_id=AGENT,
        provider="openai",
        model="gpt-4o-mini",
        state=RUNNING,
        create_time=create_time,
        request_id=request_id,
    )


def outcome(e: Execution, rand: random.Random, state: str | None = None) -> Outcome:
    state = state or rand.choice([SUCCEEDED, SUCCEEDED, FAILED, CANCELLED])
    latency = dt.timedelta(milliseconds=rand.lognormvariate(7, 1))
    reason = rand.choice(["PROVIDER_SERVER_ERROR", *OUTPUT_FAILURES])
    return Outcome(
        state=state,
        usage=Usage(*(rand.randrange(1000) for _ in range(4))),
        cost_nanos=rand.choice([None, rand.randrange(10**6)]),
        attempts=1,
        error=None if state == SUCCEEDED else ExecutionError(reason, "x"),
        finish_reason="stop",
        output_text="out",
        first_token_time=rand.choice([None, e.create_time + latency / 3]),
        end_time=e.create_time + latency,
        route_index=rand.choice([0, 0, 1]),
    )


async def raw_stats(
    conn: asyncpg.Connection, start: dt.datetime, end: dt.datetime
) -> asyncpg.Record:
    """The statistics as GetAgentStats computed them before rollups: from every row."""
    row = await conn.fetchrow(
        """
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
               count(*) FILTER (WHERE state <> 'RUNNING' AND route_index > 0) AS fallback,
               count(*) FILTER (WHERE state = 'FAILED' AND error_reason = ANY($4::text[]))
                   AS output_invalid,
               percentile_cont(0.5) WITHIN GROUP
                   (ORDER BY extract(epoch FROM end_time - create_time))
                   FILTER (WHERE end_time IS NOT NULL) AS latency_p50,
               percentile_cont(0.95) WITHIN GROUP
                   (ORDER BY extract(epoch FROM end_time - create_time))
                   FILTER (WHERE end_time IS NOT NULL) AS latency_p95,
               percentile_cont(0.5) WITHIN GROUP
                   (ORDER BY extract(epoch FROM first_token_time - create_time))
                   FILTER (WHERE first_token_time IS NOT NULL) AS ttft_p50,
               percentile_cont(0.95) WITHIN GROUP
                   (ORDER BY extract(epoch FROM first_token_time - create_time))
                   FILTER (WHERE first_token_time IS NOT NULL) AS ttft_p95
        FROM executions
        WHERE workspace = $1 AND agent_id = $2 AND create_time >= $3 AND create_time < $5""",
        WS,
        AGENT,
        start,
        list(OUTPUT_FAILURES),
        end,
    )
    assert row is not None
    return row


def assert_matches(stats: AgentStats, raw: asyncpg.Record) -> None:
    exact = {
        "total": stats.total,
        "running": stats.running,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "cancelled": stats.cancelled,
        "input_tokens": stats.input_tokens,
        "output_tokens": stats.output_tokens,
        "cache_read_tokens": stats.cache_read_tokens,
        "cache_write_tokens": stats.cache_write_tokens,
        "cost_nanos": stats.cost_nanos,
        "unknown_cost": stats.unknown_cost_count,
        "output_invalid": stats.output_invalid,
        "fallback": stats.fallback,
    }
    assert exact == {k: int(raw[k]) for k in exact}
    for name in ("latency_p50", "latency_p95", "ttft_p50", "ttft_p95"):
        got, want = getattr(stats, name), raw[name]
        if want is None:
            assert got is None, name
        else:
            assert abs(got - float(want)) <= float(want) * histogram.RELATIVE_ERROR + 1e-9, name


async def test_rollups_equal_raw_aggregates_after_every_way_of_ending(
    pool: asyncpg.Pool,
) -> None:
    rand = random.Random(10)
    # Over 17 days: windows read week, day, hour and minute rows and raw edges.
    base = NOW.replace(second=0, microsecond=0) - dt.timedelta(days=16, hours=3)
    times = [base + dt.timedelta(seconds=rand.uniform(0, 17 * 86400)) for _ in range(300)]
    async with pool.acquire() as conn:
        for i, t in enumerate(times):
            e = started(t, request_id=f"r{i}" if i % 3 == 0 else None)
            kind = i % 6
            if kind == 5:  # the RUNNING row was lost: the record inserts the whole row
                await repo.finish(conn, e, outcome(e, rand))
                continue
            assert (await repo.insert_running(conn, e, lease_owner="o", lease_seconds=3600))[0]
            if kind == 4:
                continue  # still running
            if kind in (0, 1, 2):
                await repo.finish(conn, e, outcome(e, rand))
            else:  # swept, then (for half of them) its late real record replaces the verdict
                await conn.execute(
                    "UPDATE executions SET lease_expires_at = now() - interval '1 s' WHERE id = $1",
                    e.id,
                )
                await repo.fail_expired_leases(conn, "gone")
                if i % 2:
                    _, ours = await repo.finish(conn, e, outcome(e, rand))
                    assert ours
        # A terminal record that does not replace anything leaves rollups alone.
        done = started(base + dt.timedelta(hours=1))
        await repo.finish(conn, done, outcome(done, rand, SUCCEEDED))
        _, ours = await repo.finish(conn, done, outcome(done, rand, FAILED))
        assert not ours

        end = base + dt.timedelta(days=17, hours=1)
        windows = [
            (base - dt.timedelta(days=1), end),
            (base + dt.timedelta(seconds=17.25), end - dt.timedelta(minutes=61, seconds=3)),
            (base + dt.timedelta(hours=5, seconds=30), base + dt.timedelta(hours=5, seconds=50)),
            (base + dt.timedelta(hours=30), base + dt.timedelta(hours=31, minutes=7)),
        ]
        assert WEEK in {r.grain for r in rollup_window(*windows[1]).ranges}
        for folded in (False, True):
            if folded:
                assert await maintenance.fold_rollups(conn, dt.datetime.max.replace(tzinfo=dt.UTC))
                assert await conn.fetchval("SELECT count(*) FROM execution_rollup_pending") == 0
            for start, stop in windows:
                stats = await repo.agent_stats(conn, WS, AGENT, start, stop)
                assert_matches(stats, await raw_stats(conn, start, stop))
        whole = await repo.agent_stats(conn, WS, AGENT, windows[0][0], windows[0][1])
        # (rows whose lease ran out, created hours ago, were swept with the others)
        assert whole.total == 301 and whole.running > 0 and whole.fallback > 0


async def test_sql_buckets_match_the_python_ones(pool: asyncpg.Pool) -> None:
    rand = random.Random(3)
    values = [10 ** rand.uniform(-2, 7) for _ in range(5000)] + [0.0, 0.1, 1.0, 1000.0]
    got = await pool.fetchval(
        "SELECT array_agg(rollup_bucket(v)) FROM unnest($1::float8[]) v", values
    )
    assert got == [histogram.bucket(v) for v in values]


async def test_concurrent_finishes_of_one_agent_do_not_deadlock(pool: asyncpg.Pool) -> None:
    rand = random.Random(5)
    minute = NOW.replace(second=0, microsecond=0)
    runs = [started(minute + dt.timedelta(milliseconds=i)) for i in range(120)]
    for e in runs:
        await repo.insert_running(pool, e, lease_owner="o", lease_seconds=3600)

    async def finish(e: Execution) -> None:
        await repo.finish(pool, e, outcome(e, rand, SUCCEEDED))

    await asyncio.wait_for(asyncio.gather(*(finish(e) for e in runs)), timeout=60)
    stats = await repo.agent_stats(pool, WS, AGENT, minute, minute + dt.timedelta(minutes=1))
    assert stats.succeeded == 120 and stats.running == 0
    shards = await pool.fetchval("SELECT count(*) FROM execution_rollup_pending")
    assert shards > 1  # the minute's contributions are spread over several rows


async def test_partitions_are_created_ahead_and_take_rows_from_the_default(
    pool: asyncpg.Pool,
) -> None:
    far = NOW + dt.timedelta(weeks=10)
    e = started(far, request_id="far")
    async with pool.acquire() as conn:
        assert (await repo.insert_running(conn, e, lease_owner="o", lease_seconds=60))[0]
        where = "SELECT tableoid::regclass::text FROM executions WHERE id = $1"
        assert await conn.fetchval(where, e.id) == "executions_default"
        created = await maintenance.ensure_partitions(conn, 11)
        home = maintenance.partition_name(maintenance.week_start(far))
        assert home in created
        assert await conn.fetchval(where, e.id) == home
        assert (await repo.get(conn, WS, e.id)) == e
        assert await maintenance.ensure_partitions(conn, 11) == []  # nothing more due
        names = [p.name for p in await maintenance.partitions(conn)]
        assert names[0] == "executions_legacy" and home in names


async def test_retention_drops_whole_partitions_and_keeps_rollups(pool: asyncpg.Pool) -> None:
    rand = random.Random(9)
    async with pool.acquire() as conn:
        week = maintenance.week_start(NOW) + maintenance.WEEK  # the next week's partition
        e = started(week + dt.timedelta(hours=1), request_id="old")
        await repo.finish(conn, e, outcome(e, rand, SUCCEEDED))
        later = started(week + 2 * maintenance.WEEK + dt.timedelta(hours=1))
        await maintenance.ensure_partitions(conn, 3)
        await repo.finish(conn, later, outcome(later, rand, SUCCEEDED))
        window = (week - dt.timedelta(days=30), week + dt.timedelta(days=30))
        before = await repo.agent_stats(conn, WS, AGENT, *window)

        # Thirty days after the next week ends: it (and the legacy partition) are past 30 days.
        dropped = await maintenance.drop_expired(
            conn,
            execution_days=30,
            rollup_days=0,
            now=week + maintenance.WEEK + dt.timedelta(days=30),
        )
        assert dropped == ["executions_legacy", maintenance.partition_name(week)]
        assert await repo.get(conn, WS, e.id) is None
        assert await conn.fetchval("SELECT count(*) FROM execution_keys WHERE id = $1", e.id) == 0
        assert await repo.get(conn, WS, later.id) is not None
        # The request id is free again, and the statistics still count the dropped rows.
        assert await repo.get_by_request_id(conn, WS, "old") is None
        after = await repo.agent_stats(conn, WS, AGENT, *window)
        assert (after.succeeded, after.total) == (before.succeeded, before.total) == (2, 2)

        # Rollups have their own retention.
        await maintenance.fold_rollups(conn, dt.datetime.max.replace(tzinfo=dt.UTC))
        await maintenance.drop_expired(
            conn, execution_days=0, rollup_days=1, now=week + 2 * maintenance.WEEK
        )
        gone = await repo.agent_stats(conn, WS, AGENT, window[0], week + maintenance.WEEK)
        assert gone.succeeded == 0
        kept = (week + 2 * maintenance.WEEK, week + 3 * maintenance.WEEK)
        assert (await repo.agent_stats(conn, WS, AGENT, *kept)).succeeded == 1


async def test_a_request_id_is_taken_once_across_partitions(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await maintenance.ensure_partitions(conn, 2)
    this_week, next_week = NOW, NOW + maintenance.WEEK
    first = started(this_week, request_id="once")
    assert (await repo.insert_running(pool, first, lease_owner="o", lease_seconds=60))[0]
    assert (
        await repo.insert_running(
            pool, started(next_week, "once"), lease_owner="o", lease_seconds=60
        )
    )[0] is None
    assert (await repo.get_by_request_id(pool, WS, "once")) == first

    # Two at once, in two partitions: exactly one takes it.
    pair = [started(this_week, "race"), started(next_week, "race")]
    results = await asyncio.gather(
        *(repo.insert_running(pool, e, lease_owner="o", lease_seconds=60) for e in pair)
    )
    assert sum(r is not None for r, _ in results) == 1
    held = await repo.get_by_request_id(pool, WS, "race")
    assert held is not None and held.id in {e.id for e in pair}
    total = await pool.fetchval("SELECT count(*) FROM executions WHERE request_id = 'race'")
    assert total == 1


async def test_a_populated_table_of_the_old_schema_migrates(
    make_database: Callable[[str], Awaitable[str]],
) -> None:
    conn = await asyncpg.connect(await make_database("old"))
    try:
        await migrate_below(conn, 6)
        # 3,000 rows over the last 20 days, as the old service wrote them.
        await conn.execute(
            """
            INSERT INTO executions (id, workspace, agent_id, provider, model, state, request_id,
                input_tokens, output_tokens, cost_nanos, error_reason, create_time,
                first_token_time, end_time, route_index, lease_owner, lease_expires_at)
            SELECT gen_random_uuid(), $1, $2, 'openai', 'gpt-4o-mini', s.state,
                   CASE WHEN g % 2 = 0 THEN 'old-' || g END,
                   -- a RUNNING row has no usage or cost yet
                   CASE WHEN s.state <> 'RUNNING' THEN g % 100 ELSE 0 END,
                   CASE WHEN s.state <> 'RUNNING' THEN g % 37 ELSE 0 END,
                   CASE WHEN g % 11 = 0 OR s.state = 'RUNNING' THEN NULL ELSE g * 1000 END,
                   CASE WHEN s.state = 'FAILED' AND g % 3 = 0 THEN $3 ELSE '' END,
                   t, CASE WHEN g % 4 <> 0 THEN t + (g % 700 + 5) * interval '1 ms' END,
                   CASE WHEN s.state <> 'RUNNING' THEN t + (g % 5000 + 50) * interval '1 ms' END,
                   g % 2, CASE WHEN s.state = 'RUNNING' THEN 'o' END,
                   CASE WHEN s.state = 'RUNNING' THEN now() + interval '1 hour' END
            FROM generate_series(1, 3000) g,
                 LATERAL (SELECT (ARRAY['SUCCEEDED', 'FAILED', 'CANCELLED', 'RUNNING'])[g % 4 + 1]
                          AS state) s,
                 LATERAL (SELECT now() - g * interval '9 minutes 37 seconds' AS t) x""",
            WS,
            AGENT,
            OUTPUT_SCHEMA_VIOLATION,
        )
        window = (NOW - dt.timedelta(days=30), NOW + dt.timedelta(minutes=1))
        before = await raw_stats(conn, *window)
        applied = await db.migrate(conn, "execution_service")
        assert applied[:3] == [  # and any later migration
            "006_partitions_rollups.sql",
            "007_budgets.sql",
            "008_cheaper_admission.sql",
        ]
        await maintenance.ensure_partitions(conn, 2)

        assert await conn.fetchval("SELECT count(*) FROM executions") == 3000
        assert await conn.fetchval("SELECT count(*) FROM execution_keys") == 3000
        stats = await repo.agent_stats(conn, WS, AGENT, *window)
        assert_matches(stats, before)
        assert stats.running == 750 and stats.total == 3000
        # Old rows are found by id and by request id, and their request ids stay taken.
        old = await repo.get_by_request_id(conn, WS, "old-2")
        assert old is not None and await repo.get(conn, WS, old.id) == old
        again = started(NOW, request_id="old-2")
        assert (await repo.insert_running(conn, again, lease_owner="o", lease_seconds=60))[
            0
        ] is None
        # New rows land in the new weekly partition after the legacy one.
        fresh = started(NOW + 2 * maintenance.WEEK)
        assert (await repo.insert_running(conn, fresh, lease_owner="o", lease_seconds=60))[0]
        home = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM executions WHERE id = $1", fresh.id
        )
        assert home == maintenance.partition_name(maintenance.week_start(fresh.create_time))
    finally:
        await conn.close()


async def test_stored_output_is_limited_to_store_output_max_bytes(
    start_execution_service: StartExecution,
    execution_stub: Callable[..., ex_grpc.ExecutionServiceStub],
    workspace: Workspace,
) -> None:
    service = await start_execution_service(store_output_max_bytes=7)
    stub = execution_stub(port=service.port)
    ws = await workspace(openai=openai_key())
    done = await run(stub, request(ws))
    assert len(done.text.encode()) > 7  # the caller gets the whole answer
    stored = await get_execution(stub, done.completed.name)
    assert stored.output_text == done.text.encode()[:7].decode("utf-8", "ignore")
    assert done.completed.output_text == stored.output_text
