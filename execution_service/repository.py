"""SQL for the execution service's own database. Every query is here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import asyncpg

from execution_service import histogram
from execution_service.admission import ADMITTED, AdmissionRequest, Verdict
from execution_service.model import (
    CANCELLED,
    CANCELLED_BY_REQUEST,
    FAILED,
    INTERRUPTED,
    OUTPUT_FAILURES,
    RUNNING,
    AgentStats,
    Execution,
    ExecutionError,
    Outcome,
    RouteAttempt,
    Usage,
)
from execution_service.rollup_window import rollup_window
from execution_service.schemas import SchemaViolation
from service_kit.db import Executor

_COLUMNS = """id, workspace, agent_id, provider, model, state, request_id, labels, input_tokens,
    output_tokens, cache_read_tokens, cache_write_tokens, usage_estimated, cost_nanos, attempts,
    error_reason, error_message, provider_status, finish_reason, output_text, create_time,
    first_token_time, end_time, agent, agent_etag, output::text AS output, output_valid,
    error_violations::text AS error_violations, request_hash, cancel_requested_by, route_index,
    route_attempts::text AS route_attempts"""


def _from_row(row: asyncpg.Record) -> Execution:
    error = (
        ExecutionError(
            row["error_reason"],
            row["error_message"],
            row["provider_status"],
            _violations(row["error_violations"]),
        )
        if row["error_reason"]
        else None
    )
    labels = row["labels"]
    return Execution(
        id=row["id"],
        workspace=row["workspace"],
        agent_id=row["agent_id"],
        provider=row["provider"],
        model=row["model"],
        state=row["state"],
        request_id=row["request_id"],
        request_hash=row["request_hash"],
        labels=json.loads(labels) if isinstance(labels, str) else dict(labels),
        usage=Usage(
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            row["usage_estimated"],
        ),
        cost_nanos=row["cost_nanos"],
        attempts=row["attempts"],
        error=error,
        finish_reason=row["finish_reason"],
        output_text=row["output_text"],
        create_time=row["create_time"],
        first_token_time=row["first_token_time"],
        end_time=row["end_time"],
        agent=row["agent"] or "",
        agent_etag=row["agent_etag"] or "",
        output=None if row["output"] is None else json.loads(row["output"]),
        output_valid=row["output_valid"],
        cancelled_by=_cancelled_by(row),
        route_index=row["route_index"],
        route_attempts=_route_attempts(row["route_attempts"]),
    )


def _route_attempts(text: str | None) -> tuple[RouteAttempt, ...]:
    if text is None:
        return ()
    return tuple(
        RouteAttempt(
            route=a["route"],
            provider=a["provider"],
            model=a["model"],
            start_time=dt.datetime.fromisoformat(a["start_time"]),
            latency_ms=a["latency_ms"],
            http_status=a["http_status"],
            reason=a["reason"],
            usage=Usage(
                a["input_tokens"],
                a["output_tokens"],
                a["cache_read_tokens"],
                a["cache_write_tokens"],
                a["usage_estimated"],
            ),
            cost_nanos=a["cost_nanos"],
        )
        for a in json.loads(text)
    )


def _route_attempts_json(attempts: tuple[RouteAttempt, ...]) -> str | None:
    if not attempts:
        return None
    return json.dumps(
        [
            {
                "route": a.route,
                "provider": a.provider,
                "model": a.model,
                "start_time": a.start_time.isoformat(),
                "latency_ms": a.latency_ms,
                "http_status": a.http_status,
                "reason": a.reason,
                "input_tokens": a.usage.input_tokens,
                "output_tokens": a.usage.output_tokens,
                "cache_read_tokens": a.usage.cache_read_tokens,
                "cache_write_tokens": a.usage.cache_write_tokens,
                "usage_estimated": a.usage.estimated,
                "cost_nanos": a.cost_nanos,
            }
            for a in attempts
        ]
    )


def _cancelled_by(row: asyncpg.Record) -> str:
    """Who cancelled it: only when a cancel request is what ended it (a request that came
    too late, after the execution finished otherwise, names nobody)."""
    ended_by_request = row["state"] == CANCELLED and row["error_reason"] == CANCELLED_BY_REQUEST
    return (row["cancel_requested_by"] or "") if ended_by_request else ""


def _violations(text: str | None) -> tuple[SchemaViolation, ...]:
    if text is None:
        return ()
    return tuple(SchemaViolation(v["pointer"], v["description"]) for v in json.loads(text))


def _jsonb(value: Any) -> str:
    """JSON text for a jsonb column, which cannot hold NUL characters: a model may write
    `\\u0000` in its output, so those become U+FFFD in the stored document (the raw text
    keeps them as written)."""
    text = json.dumps(value)
    return json.dumps(_without_nul(value)) if "\\u0000" in text else text


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _violations_json(error: ExecutionError) -> str | None:
    if not error.violations:
        return None
    return _jsonb([{"pointer": v.pointer, "description": v.description} for v in error.violations])


def _start_columns(execution: Execution) -> tuple[object, ...]:
    """What an execution is from its start: the first eleven columns of both writes below."""
    return (
        execution.id,
        execution.workspace,
        execution.agent_id,
        execution.provider,
        execution.model,
        execution.request_id,
        json.dumps(execution.labels),
        execution.create_time,
        execution.agent or None,
        execution.agent_etag or None,
        execution.request_hash,
    )


# Executions are partitioned by create_time (migration 006): an execution's key row gives
# it, so a lookup by id reads one partition (pruned at execution time), not every one.
_PARTITION_OF_ID = "create_time = (SELECT create_time FROM execution_keys WHERE id = $1)"


class AgentChanged(Exception):
    """The agent an execution was planned from is no longer at that version (or is gone)."""


async def insert_running(
    db: Executor,
    execution: Execution,
    *,
    lease_owner: str,
    lease_seconds: float,
    admission: AdmissionRequest | None = None,
) -> tuple[Execution | None, Verdict]:
    """Record a new RUNNING execution, and the admission's verdict. The execution is None
    when its request id is already taken (the caller then reads the execution that holds it,
    `get_by_request_id`) or when the admission refused it.

    With `admission`, the execution's budgets are reserved and its rate-limit tokens taken in
    the same statement (`budget_admit`, migrations 007 and 008): all of them, or, when one
    refuses, none and no row. The row carries what it holds (`budget_holds`), released when it
    turns terminal (a trigger); when a duplicate took the request id, the same statement
    releases it.

    An execution of an agent is recorded only while the agent is still at the version it
    was planned from (`agent_etag`), checked in the same statement; otherwise nothing is
    written and AgentChanged is raised (plan again from the agent as it is now). So a plan
    may come from a copy of the agent kept in memory at no extra round trip, and an update
    or delete still applies to every execution that starts after it.

    A request id already taken makes the row's insert trigger skip it (migration 006:
    request ids are unique across partitions in `execution_keys`), so nothing is returned.

    The row holds exactly what was given, so the answer is `execution` itself rather than
    the row decoded again (this is on every execution's time-to-first-token path).
    """
    row = await db.fetchrow(
        """
        WITH agent_current AS (
            SELECT $9::text IS NULL OR EXISTS (
                SELECT 1 FROM agents WHERE workspace = $2 AND agent_id = $3 AND etag = $10
            ) AS ok
        ), admitted AS (
            SELECT a.* FROM agent_current,
                budget_admit($14::boolean AND agent_current.ok, $2, $3, $15::timestamptz,
                             $16::bigint, $17::boolean, $18::bigint) a
        ), inserted AS (
            INSERT INTO executions (id, workspace, agent_id, provider, model, state, request_id,
                                    labels, create_time, agent, agent_etag, request_hash,
                                    lease_owner, lease_expires_at, reserved_nanos, budget_holds)
            SELECT $1, $2, $3, $4, $5, 'RUNNING', $6, $7::jsonb, $8::timestamptz, $9, $10, $11,
                   $12, $8::timestamptz + make_interval(secs => $13::float8),
                   CASE WHEN cardinality(admitted.holds) > 0 THEN $16::bigint END,
                   nullif(admitted.holds, '{}')
            FROM agent_current, admitted WHERE agent_current.ok AND admitted.ok
            RETURNING true
        ), released AS (  -- admitted, but a concurrent duplicate took the request id
            INSERT INTO budget_settlements (workspace, budget_id, period, period_start,
                                            reserved_delta, spent_delta, token_refund)
            SELECT $2, h.budget_id, h.period, h.period_start, -$16::bigint, 0, h.tokens
            FROM admitted, unnest(admitted.holds) h
            WHERE admitted.ok AND NOT EXISTS (SELECT 1 FROM inserted)
        )
        SELECT (SELECT ok FROM agent_current) AS agent_current,
               EXISTS (SELECT 1 FROM inserted) AS inserted, a.ok, a.reason, a.budget,
               a.limit_nanos, a.spent_nanos, a.period_end, a.retry_after, a.alerts, a.enforced,
               cardinality(a.holds) > 0 AS held
        FROM admitted a""",
        *_start_columns(execution),
        lease_owner,
        lease_seconds,
        *_admission_args(admission, execution),
    )
    assert row is not None
    if not row["agent_current"]:
        raise AgentChanged(execution.agent)
    verdict = _verdict(row) if admission is not None else ADMITTED
    return (execution if row["inserted"] else None), verdict


def _admission_args(admission: AdmissionRequest | None, execution: Execution) -> tuple[object, ...]:
    """$14..$18: whether to admit, and the reservation (see `budget_admit`)."""
    if admission is None:
        return (False, execution.create_time, 0, False, 0)
    r = admission.reservation
    return (True, admission.time or execution.create_time, r.amount_nanos, r.unpriced, r.tokens)


def _verdict(row: asyncpg.Record) -> Verdict:
    return Verdict(
        ok=row["ok"],
        reason=row["reason"],
        budget=row["budget"],
        limit_nanos=row["limit_nanos"],
        spent_nanos=row["spent_nanos"],
        period_end=row["period_end"],
        retry_after=row["retry_after"],
        alerts=tuple(row["alerts"]),
        enforced=row["enforced"],
        budgeted=bool(row["held"]) or not row["ok"],
    )


# The finish's columns, in the order of `_finish_row`.
_FINISH_COLUMNS = """id, workspace, agent_id, provider, model, request_id, labels, create_time,
    agent, agent_etag, request_hash, state, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, usage_estimated, cost_nanos, attempts, error_reason, error_message,
    provider_status, finish_reason, output_text, first_token_time, end_time, output,
    output_valid, error_violations, route_index, route_attempts"""

# What a terminal record replaces, and which rows it may replace (see `finish`).
_FINISH_CONFLICT = f"""ON CONFLICT (id, create_time) DO UPDATE SET state = EXCLUDED.state,
    input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
    cache_read_tokens = EXCLUDED.cache_read_tokens,
    cache_write_tokens = EXCLUDED.cache_write_tokens,
    usage_estimated = EXCLUDED.usage_estimated, cost_nanos = EXCLUDED.cost_nanos,
    attempts = EXCLUDED.attempts, error_reason = EXCLUDED.error_reason,
    error_message = EXCLUDED.error_message,
    provider_status = EXCLUDED.provider_status,
    finish_reason = EXCLUDED.finish_reason, output_text = EXCLUDED.output_text,
    first_token_time = EXCLUDED.first_token_time, end_time = EXCLUDED.end_time,
    output = EXCLUDED.output, output_valid = EXCLUDED.output_valid,
    error_violations = EXCLUDED.error_violations,
    route_index = EXCLUDED.route_index, route_attempts = EXCLUDED.route_attempts,
    provider = EXCLUDED.provider, model = EXCLUDED.model,
    lease_owner = NULL, lease_expires_at = NULL
WHERE e.state = '{RUNNING}' OR (e.state = '{FAILED}' AND e.error_reason = '{INTERRUPTED}')"""

_FINISH = f"""
    INSERT INTO executions AS e ({_FINISH_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16,
        $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27::jsonb, $28, $29::jsonb, $30,
        $31::jsonb)
    {_FINISH_CONFLICT}
    RETURNING true"""

# The same upsert for many rows: one array per column (jsonb ones as text), unnested in the
# order given. Row triggers (the key claim, rollups, budget settlement) fire per row as for
# `_FINISH`, all in the one transaction.
_FINISH_MANY = f"""
    INSERT INTO executions AS e ({_FINISH_COLUMNS})
    SELECT r.id, r.workspace, r.agent_id, r.provider, r.model, r.request_id, r.labels::jsonb,
        r.create_time, r.agent, r.agent_etag, r.request_hash, r.state, r.input_tokens,
        r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.usage_estimated,
        r.cost_nanos, r.attempts, r.error_reason, r.error_message, r.provider_status,
        r.finish_reason, r.output_text, r.first_token_time, r.end_time, r.output::jsonb,
        r.output_valid, r.error_violations::jsonb, r.route_index, r.route_attempts::jsonb
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::bool[], $18::int8[],
        $19::int4[], $20::text[], $21::text[], $22::int4[], $23::text[], $24::text[],
        $25::timestamptz[], $26::timestamptz[], $27::text[], $28::bool[], $29::text[],
        $30::int4[], $31::text[])
        WITH ORDINALITY AS r({_FINISH_COLUMNS}, n)
    ORDER BY r.n
    {_FINISH_CONFLICT}
    RETURNING e.id"""


def _finish_row(execution: Execution, outcome: Outcome) -> tuple[object, ...]:
    """The finish's values, in the order of `_FINISH_COLUMNS`."""
    u = outcome.usage
    error = outcome.error or ExecutionError("", "", 0)
    return (
        *_start_columns(execution),
        outcome.state,
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.estimated,
        outcome.cost_nanos,
        outcome.attempts,
        error.reason,
        error.message,
        error.provider_status,
        outcome.finish_reason,
        outcome.output_text,
        outcome.first_token_time,
        outcome.end_time,
        None if outcome.output is None else _jsonb(outcome.output),
        outcome.output_valid,
        _violations_json(error),
        outcome.route_index,
        _route_attempts_json(outcome.route_attempts),
    )


async def finish(db: Executor, execution: Execution, outcome: Outcome) -> tuple[Execution, bool]:
    """Record a RUNNING execution's terminal state (on a durably committing pool): the
    execution as recorded, and whether this outcome is what was recorded.

    An upsert: the RUNNING row commits asynchronously (see `execution_service.app`), so one
    committed just before a PostgreSQL crash may be gone. A row the sweeper failed as
    INTERRUPTED takes this outcome instead (the process that ran the execution knows better
    than the sweeper, e.g. a record written late after a database outage); any other
    terminal state stays, returned unchanged.
    """
    if await db.fetchval(_FINISH, *_finish_row(execution, outcome)):
        return finished(execution, outcome), True
    return await recorded(db, execution.id), False


def _rollup_lock_order(record: tuple[Execution, Outcome]) -> tuple[object, ...]:
    """The execution_rollup_pending row a finish adds to (workspace, agent, minute, shard,
    as `execution_rollup_add` computes them)."""
    e = record[0]
    minute = e.create_time.astimezone(dt.UTC).replace(second=0, microsecond=0)
    return (e.workspace, e.agent_id, minute, e.id.bytes[15] % 8, e.id)


async def finish_many(db: Executor, records: list[tuple[Execution, Outcome]]) -> set[uuid.UUID]:
    """`finish` for several executions in one statement (one round trip, one commit): the
    ids whose outcome is what was recorded (for the others, see `recorded`). All or nothing:
    when any row fails, the statement fails and nothing is written.

    Rows go in the order of the rollup rows their triggers lock, so that two batches
    (another process's, or the next one here) cannot deadlock on them."""
    ids = [e.id for e, _ in records]
    if len(set(ids)) != len(ids):
        raise ValueError("an execution may be finished only once per statement")
    rows = [_finish_row(e, o) for e, o in sorted(records, key=_rollup_lock_order)]
    columns = [list(column) for column in zip(*rows, strict=True)]
    return {r["id"] for r in await db.fetch(_FINISH_MANY, *columns)}


def finished(execution: Execution, outcome: Outcome) -> Execution:
    """A RUNNING execution as its outcome records it."""
    return dataclasses.replace(
        execution,
        state=outcome.state,
        usage=outcome.usage,
        cost_nanos=outcome.cost_nanos,
        attempts=outcome.attempts,
        error=outcome.error,
        finish_reason=outcome.finish_reason,
        output_text=outcome.output_text,
        first_token_time=outcome.first_token_time,
        end_time=outcome.end_time,
        output=outcome.output,
        output_valid=outcome.output_valid,
        cancelled_by=outcome.cancelled_by,
        route_index=outcome.route_index,
        route_attempts=outcome.route_attempts,
    )


async def recorded(db: Executor, execution_id: uuid.UUID) -> Execution:
    """An execution as recorded, when a finish found it already terminal."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM executions WHERE id = $1 AND {_PARTITION_OF_ID}", execution_id
    )
    assert row is not None
    return _from_row(row)


async def get(db: Executor, workspace: str, execution_id: uuid.UUID) -> Execution | None:
    row = await db.fetchrow(
        f"""SELECT {_COLUMNS} FROM executions
            WHERE id = $1 AND workspace = $2 AND {_PARTITION_OF_ID}""",
        execution_id,
        workspace,
    )
    return _from_row(row) if row else None


async def get_by_request_id(db: Executor, workspace: str, request_id: str) -> Execution | None:
    row = await db.fetchrow(
        f"""SELECT {_COLUMNS} FROM executions WHERE (id, create_time) = (
                SELECT id, create_time FROM execution_keys WHERE workspace = $1 AND request_id = $2
            )""",
        workspace,
        request_id,
    )
    return _from_row(row) if row else None


async def list_page(
    db: Executor,
    workspace: str,
    *,
    agent_id: str | None,
    state: str | None,
    start_time: dt.datetime | None,
    end_time: dt.datetime | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Execution]:
    """Newest first; keyset on (create_time, id) so pages never shift or skip.

    Only the filters given are written into the statement (one prepared statement per
    combination): a generic plan of `($n IS NULL OR column = $n)` could not use the keyset
    as an index condition nor prune partitions, and page 10,000 would cost 10,000 pages.
    """
    where = ["workspace = $1"]
    args: list[object] = [workspace]

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if agent_id is not None:
        where.append(f"agent_id = {arg(agent_id)}")
    if state is not None:
        where.append(f"state = {arg(state)}")
    if start_time is not None:
        where.append(f"create_time >= {arg(start_time)}")
    if end_time is not None and after is None:
        # Past page 1 the cursor, from a token bound to this query, lies before end_time: a
        # second upper bound would let a generic plan start its index scan at end_time and
        # walk every row down to the cursor.
        where.append(f"create_time < {arg(end_time)}")
    if after is not None:
        t, i = arg(after[0]), arg(after[1])
        # The row comparison is the index condition; the plain bound lets partitions be
        # pruned at execution time.
        where.append(f"(create_time, id) < ({t}::timestamptz, {i}::uuid) AND create_time <= {t}")
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM executions WHERE {" AND ".join(where)}
            ORDER BY create_time DESC, id DESC LIMIT {arg(limit)}""",
        *args,
    )
    return [_from_row(r) for r in rows]


async def agent_stats(
    db: Executor, workspace: str, agent_id: str, start: dt.datetime, end: dt.datetime
) -> AgentStats:
    """An agent's executions created in [start, end): from the rollups for every whole
    minute (rollup_window), from the rows themselves for a partial minute at either edge, so
    totals are exact for any window; running executions are counted from the rows. Latency
    percentiles come from merged histogram buckets (execution_service.histogram: within
    1.96 % of the exact value)."""
    window = rollup_window(start, end)
    grains = [r.grain for r in window.ranges]
    (head_lo, head_hi), (tail_lo, tail_hi) = window.raw
    row = await db.fetchrow(
        """
        WITH parts AS (
            SELECT x.succeeded, x.failed, x.cancelled, x.input_tokens, x.output_tokens,
                   x.cache_read_tokens, x.cache_write_tokens, x.cost_nanos, x.unknown_cost,
                   x.output_invalid, x.fallback, x.latency_hist, x.ttft_hist
            FROM unnest($3::integer[], $4::timestamptz[], $5::timestamptz[]) AS r(grain, lo, hi)
            -- One index range scan per range: OFFSET 0 keeps the planner from turning this
            -- into a hash join over the whole table (its estimates for these ranges are poor).
            CROSS JOIN LATERAL (
                SELECT * FROM execution_rollups x
                WHERE x.workspace = $1 AND x.agent_id = $2 AND x.grain = r.grain
                  AND x.bucket_start >= r.lo AND x.bucket_start < r.hi
                OFFSET 0
            ) x
            UNION ALL
            SELECT succeeded, failed, cancelled, input_tokens, output_tokens, cache_read_tokens,
                   cache_write_tokens, cost_nanos, unknown_cost, output_invalid, fallback,
                   latency_hist, ttft_hist
            FROM execution_rollup_pending
            WHERE workspace = $1 AND agent_id = $2 AND minute >= $6 AND minute < $7
            UNION ALL
            SELECT (state = 'SUCCEEDED')::int, (state = 'FAILED')::int,
                   (state = 'CANCELLED')::int, input_tokens, output_tokens, cache_read_tokens,
                   cache_write_tokens, coalesce(cost_nanos, 0), (cost_nanos IS NULL)::int,
                   (state = 'FAILED' AND error_reason = ANY($14::text[]))::int,
                   (route_index > 0)::int,
                   CASE WHEN end_time IS NOT NULL THEN array_fill(1, ARRAY[1], ARRAY[
                       rollup_bucket(extract(epoch FROM end_time - create_time)::float8 * 1000)
                   ]) END,
                   CASE WHEN first_token_time IS NOT NULL THEN array_fill(1, ARRAY[1], ARRAY[
                       rollup_bucket(
                           extract(epoch FROM first_token_time - create_time)::float8 * 1000)
                   ]) END
            FROM executions
            WHERE workspace = $1 AND agent_id = $2 AND state <> 'RUNNING'
              AND ((create_time >= $8 AND create_time < $9)
                   OR (create_time >= $10 AND create_time < $11))
        ), latency AS (  -- unnest reads each array once (a subscript per element would not)
            SELECT array_lower(p.latency_hist, 1) + u.o - 1 AS i, sum(u.n) AS n
            FROM parts p, unnest(p.latency_hist) WITH ORDINALITY AS u(n, o) GROUP BY 1
        ), ttft AS (
            SELECT array_lower(p.ttft_hist, 1) + u.o - 1 AS i, sum(u.n) AS n
            FROM parts p, unnest(p.ttft_hist) WITH ORDINALITY AS u(n, o) GROUP BY 1
        )
        SELECT coalesce(sum(succeeded), 0) AS succeeded,
               coalesce(sum(failed), 0) AS failed,
               coalesce(sum(cancelled), 0) AS cancelled,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens,
               coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
               coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
               coalesce(sum(cost_nanos), 0) AS cost_nanos,
               coalesce(sum(unknown_cost), 0) AS unknown_cost,
               coalesce(sum(output_invalid), 0) AS output_invalid,
               coalesce(sum(fallback), 0) AS fallback,
               (SELECT count(*) FROM executions
                WHERE workspace = $1 AND agent_id = $2 AND state = 'RUNNING'
                  AND create_time >= $12 AND create_time < $13) AS running,
               (SELECT array_agg(ARRAY[i, n::integer]) FROM latency WHERE n > 0) AS latency,
               (SELECT array_agg(ARRAY[i, n::integer]) FROM ttft WHERE n > 0) AS ttft
        FROM parts""",
        workspace,
        agent_id,
        grains,
        [r.lo for r in window.ranges],
        [r.hi for r in window.ranges],
        window.minutes[0],
        window.minutes[1],
        head_lo,
        head_hi,
        tail_lo,
        tail_hi,
        start,
        end,
        list(OUTPUT_FAILURES),
    )
    assert row is not None
    latency = {i: n for i, n in row["latency"] or ()}
    ttft = {i: n for i, n in row["ttft"] or ()}
    succeeded, failed, cancelled = (int(row[k]) for k in ("succeeded", "failed", "cancelled"))
    return AgentStats(
        agent_id=agent_id,
        total=succeeded + failed + cancelled + row["running"],
        running=row["running"],
        succeeded=succeeded,
        failed=failed,
        cancelled=cancelled,
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        cache_read_tokens=int(row["cache_read_tokens"]),
        cache_write_tokens=int(row["cache_write_tokens"]),
        cost_nanos=int(row["cost_nanos"]),
        unknown_cost_count=int(row["unknown_cost"]),
        latency_p50=_seconds(histogram.percentile(latency, 0.5)),
        latency_p95=_seconds(histogram.percentile(latency, 0.95)),
        ttft_p50=_seconds(histogram.percentile(ttft, 0.5)),
        ttft_p95=_seconds(histogram.percentile(ttft, 0.95)),
        output_invalid=int(row["output_invalid"]),
        fallback=int(row["fallback"]),
    )


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


async def renew_leases(
    db: Executor, owner: str, execution_ids: list[uuid.UUID], lease_seconds: float
) -> int:
    """One statement renews the leases of the given executions, those this process is still
    running; a row whose record waits for the database is not among them, so the sweeper can
    take it over if that record never lands."""
    if not execution_ids:
        return 0
    status = await db.execute(
        f"""UPDATE executions SET lease_expires_at = now() + make_interval(secs => $3::float8)
            WHERE id = ANY($2::uuid[]) AND lease_owner = $1 AND state = '{RUNNING}'""",
        owner,
        execution_ids,
        lease_seconds,
    )
    return int(status.split()[-1])


async def fail_expired_leases(
    db: Executor, message: str, *, spare: list[uuid.UUID] | None = None
) -> int:
    """The sweeper: executions whose owner stopped renewing (it crashed, or gave up on their
    record) become FAILED, except `spare` (the sweeping process's own records that wait for
    the database: it knows their real outcome)."""
    status = await db.execute(
        f"""UPDATE executions SET state = '{FAILED}', error_reason = '{INTERRUPTED}',
                error_message = $1, end_time = now(), lease_owner = NULL, lease_expires_at = NULL
            WHERE state = '{RUNNING}' AND lease_expires_at < now()
              AND NOT (id = ANY($2::uuid[]))""",
        message,
        spare or [],
    )
    return int(status.split()[-1])


# Notified, with the execution id, in the transaction that records a cancel request.
CANCELS_CHANNEL = "execution_cancels"


@dataclasses.dataclass(frozen=True)
class CancelRequest:
    """What `request_cancel` found: nothing (`found` false), a finished execution
    (`accepted` false), or a RUNNING one now marked, held by `lease_owner`."""

    found: bool
    accepted: bool
    lease_owner: str | None = None


async def request_cancel(
    db: Executor, workspace: str, execution_id: uuid.UUID, caller: str
) -> CancelRequest:
    """Record `caller`'s request to cancel a RUNNING execution, and notify every replica, in
    one statement: the state is checked by the update itself, so an execution finishing
    meanwhile is either marked while still RUNNING or refused as finished, never both. The
    first caller to ask is the one recorded."""
    row = await db.fetchrow(
        f"""
        WITH target AS (
            SELECT 1 FROM executions WHERE id = $1 AND workspace = $2 AND {_PARTITION_OF_ID}
        ), marked AS (
            UPDATE executions
            SET cancel_requested_by = coalesce(cancel_requested_by, $3),
                cancel_requested_at = coalesce(cancel_requested_at, now())
            WHERE id = $1 AND workspace = $2 AND state = '{RUNNING}' AND {_PARTITION_OF_ID}
            RETURNING lease_owner, pg_notify('{CANCELS_CHANNEL}', id::text)
        )
        SELECT EXISTS (SELECT 1 FROM target) AS found,
               EXISTS (SELECT 1 FROM marked) AS accepted,
               (SELECT lease_owner FROM marked) AS lease_owner""",
        execution_id,
        workspace,
        caller,
    )
    assert row is not None
    return CancelRequest(row["found"], row["accepted"], row["lease_owner"])


async def cancel_requests(
    db: Executor, execution_ids: list[uuid.UUID]
) -> list[tuple[uuid.UUID, str]]:
    """Of the given executions, those still RUNNING with a cancel request, and who asked."""
    if not execution_ids:
        return []
    rows = await db.fetch(
        f"""SELECT id, cancel_requested_by FROM executions
            WHERE id = ANY($1::uuid[]) AND state = '{RUNNING}'
              AND cancel_requested_by IS NOT NULL""",
        execution_ids,
    )
    return [(r["id"], r["cancel_requested_by"]) for r in rows]
