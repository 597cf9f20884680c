"""Background upkeep of the executions table (migration 006), safe with many replicas.

- Weekly partitions are created ahead of time, so rows never wait in the default partition.
- Pending rollup rows (written by the trigger as executions end, sharded) are folded into the
  minute, hour and day rollups that GetAgentStats reads.
- EXECUTION_RETENTION_DAYS drops whole partitions older than that; ROLLUP_RETENTION_DAYS
  deletes older rollups.

Each task runs in its own transaction under a transaction-level advisory lock taken with
`pg_try_advisory_xact_lock`: at most one replica does it at a time, the others skip that round.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import zlib
from dataclasses import dataclass

import asyncpg

from execution_service.settings import MaintenanceSettings
from service_kit.db import UNAVAILABLE_ERRORS, Connection

log = logging.getLogger(__name__)

WEEK = dt.timedelta(days=7)
_EPOCH_MONDAY = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # partitions start on Mondays, UTC
_BOUND = re.compile(r"FROM \((?P<lo>[^)]*)\) TO \((?P<hi>[^)]*)\)")
# DDL on the partitioned table waits at most this long for its lock, so a long query does not
# make every other query queue behind the waiting DDL; the next round tries again.
DDL_LOCK_TIMEOUT = "2s"


def _lock_key(task: str) -> int:
    return zlib.crc32(f"execution_service:{task}".encode())


@dataclass(frozen=True)
class Partition:
    name: str
    lo: dt.datetime | None  # None: MINVALUE
    hi: dt.datetime | None  # None: MAXVALUE


def week_start(t: dt.datetime) -> dt.datetime:
    return _EPOCH_MONDAY + (t - _EPOCH_MONDAY) // WEEK * WEEK


def partition_name(lo: dt.datetime) -> str:
    return f"executions_p{lo:%Y%m%d}"


def weeks_to_create(
    existing: list[Partition], now: dt.datetime, ahead_weeks: int
) -> list[dt.datetime]:
    """Week starts, from the current week to `ahead_weeks` after it, that no partition covers
    even in part (the legacy partition ends at a week boundary)."""
    first = week_start(now)
    wanted = [first + k * WEEK for k in range(ahead_weeks + 1)]
    minimum = dt.datetime.min.replace(tzinfo=dt.UTC)
    maximum = dt.datetime.max.replace(tzinfo=dt.UTC)

    def overlaps(w: dt.datetime, p: Partition) -> bool:
        return (p.lo or minimum) < w + WEEK and w < (p.hi or maximum)

    return [w for w in wanted if not any(overlaps(w, p) for p in existing)]


def _bound(text: str) -> dt.datetime | None:
    text = text.strip()
    if text in ("MINVALUE", "MAXVALUE"):
        return None
    return dt.datetime.fromisoformat(text.strip("'"))


async def partitions(conn: Connection) -> list[Partition]:
    """The range partitions of executions, oldest first (the default partition left out)."""
    rows = await conn.fetch(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'executions'::regclass"""
    )
    found = []
    for r in rows:
        match = _BOUND.search(r["bound"])
        if match:  # the default partition has no range
            found.append(Partition(r["relname"], _bound(match["lo"]), _bound(match["hi"])))
    minimum = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(found, key=lambda p: p.lo or minimum)


async def ensure_partitions(
    conn: Connection, ahead_weeks: int, *, now: dt.datetime | None = None
) -> list[str]:
    """Create the weekly partitions due; rows the default partition took for such a week
    move into it. Returns the partitions created ('' work when another replica holds the
    lock)."""
    created: list[str] = []
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _lock_key("parts")):
            return created
        await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        now = now or await conn.fetchval("SELECT now()")
        for lo in weeks_to_create(await partitions(conn), now, ahead_weeks):
            name, hi = partition_name(lo), lo + WEEK
            await conn.execute(
                f"CREATE TABLE {name} (LIKE executions INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            await conn.execute(
                f"""WITH moved AS (
                        DELETE FROM executions_default WHERE create_time >= $1 AND create_time < $2
                        RETURNING *)
                    INSERT INTO {name} SELECT * FROM moved""",
                lo,
                hi,
            )
            await conn.execute(
                f"ALTER TABLE executions ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
            created.append(name)
    if created:
        log.info("execution partitions created", extra={"partitions": created})
    return created


async def fold_rollups(conn: Connection, before: dt.datetime | None = None) -> int:
    """Move pending rollup rows of minutes before `before` (default: the minute before the
    current one, which may still be written) into the minute, hour and day rollups, in one
    statement. Returns the pending rows moved (0 when another replica holds the lock)."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _lock_key("fold")):
            return 0
        moved = await conn.fetchval(
            """
            WITH moved AS (
                DELETE FROM execution_rollup_pending
                WHERE minute < coalesce($1, date_trunc('minute', now()) - interval '1 minute')
                RETURNING *
            ), levels AS (
                SELECT m.workspace, m.agent_id, g.grain,
                       date_trunc(g.unit, m.minute, 'UTC') AS bucket_start,
                       sum(succeeded)::bigint AS succeeded, sum(failed)::bigint AS failed,
                       sum(cancelled)::bigint AS cancelled,
                       sum(input_tokens)::bigint AS input_tokens,
                       sum(output_tokens)::bigint AS output_tokens,
                       sum(cache_read_tokens)::bigint AS cache_read_tokens,
                       sum(cache_write_tokens)::bigint AS cache_write_tokens,
                       sum(cost_nanos)::bigint AS cost_nanos,
                       sum(unknown_cost)::bigint AS unknown_cost,
                       sum(output_invalid)::bigint AS output_invalid,
                       sum(fallback)::bigint AS fallback,
                       rollup_hist_sum(latency_hist) AS latency_hist,
                       rollup_hist_sum(ttft_hist) AS ttft_hist
                FROM moved m
                CROSS JOIN (VALUES (60, 'minute'), (3600, 'hour'), (86400, 'day')) g(grain, unit)
                GROUP BY 1, 2, 3, 4
            ), folded AS (
                INSERT INTO execution_rollups AS r (workspace, agent_id, grain, bucket_start,
                    succeeded, failed, cancelled, input_tokens, output_tokens, cache_read_tokens,
                    cache_write_tokens, cost_nanos, unknown_cost, output_invalid, fallback,
                    latency_hist, ttft_hist)
                SELECT * FROM levels
                ON CONFLICT (workspace, agent_id, grain, bucket_start) DO UPDATE SET
                    succeeded = r.succeeded + EXCLUDED.succeeded,
                    failed = r.failed + EXCLUDED.failed,
                    cancelled = r.cancelled + EXCLUDED.cancelled,
                    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
                    output_tokens = r.output_tokens + EXCLUDED.output_tokens,
                    cache_read_tokens = r.cache_read_tokens + EXCLUDED.cache_read_tokens,
                    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
                    cost_nanos = r.cost_nanos + EXCLUDED.cost_nanos,
                    unknown_cost = r.unknown_cost + EXCLUDED.unknown_cost,
                    output_invalid = r.output_invalid + EXCLUDED.output_invalid,
                    fallback = r.fallback + EXCLUDED.fallback,
                    latency_hist = rollup_hist_add(r.latency_hist, EXCLUDED.latency_hist),
                    ttft_hist = rollup_hist_add(r.ttft_hist, EXCLUDED.ttft_hist)
            )
            SELECT count(*) FROM moved""",
            before,
        )
    return int(moved)


async def drop_expired(
    conn: Connection, *, execution_days: int, rollup_days: int, now: dt.datetime | None = None
) -> list[str]:
    """Drop the partitions that end more than `execution_days` ago (their key rows first),
    and delete rollups older than `rollup_days`; 0 keeps them. Returns the partitions
    dropped."""
    dropped: list[str] = []
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _lock_key("retain")):
            return dropped
        await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        now = now or await conn.fetchval("SELECT now()")
        if execution_days > 0:
            cutoff = now - dt.timedelta(days=execution_days)
            for p in await partitions(conn):
                if p.hi is None or p.hi > cutoff:
                    continue
                await conn.execute(
                    f"DELETE FROM execution_keys k USING {p.name} e WHERE k.id = e.id"
                )
                await conn.execute(f"ALTER TABLE executions DETACH PARTITION {p.name}")
                await conn.execute(f"DROP TABLE {p.name}")
                dropped.append(p.name)
        if rollup_days > 0:
            cutoff = now - dt.timedelta(days=rollup_days)
            await conn.execute("DELETE FROM execution_rollups WHERE bucket_start < $1", cutoff)
            await conn.execute("DELETE FROM execution_rollup_pending WHERE minute < $1", cutoff)
    if dropped:
        log.info("expired execution partitions dropped", extra={"partitions": dropped})
    return dropped


async def run_once(pool: asyncpg.Pool, settings: MaintenanceSettings) -> None:
    async with pool.acquire() as conn:
        await ensure_partitions(conn, settings.partitions_ahead_weeks)
        await fold_rollups(conn)
        await drop_expired(
            conn,
            execution_days=settings.execution_retention_days,
            rollup_days=settings.rollup_retention_days,
        )


async def run_forever(pool: asyncpg.Pool, settings: MaintenanceSettings) -> None:
    while True:
        try:
            await run_once(pool, settings)
        except UNAVAILABLE_ERRORS as exc:
            log.warning("maintenance failed", extra={"error": type(exc).__name__})
        except asyncpg.LockNotAvailableError:
            log.warning("maintenance skipped: the executions table is busy")
        except Exception:  # the loop must outlive any one failure
            log.exception("maintenance failed")
        await asyncio.sleep(settings.interval_seconds)
