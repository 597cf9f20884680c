"""SQL for budgets (the resource). Admission and settlement are migration 007's functions."""

from __future__ import annotations

import datetime as dt
import json

import asyncpg

from execution_service.budgets import Budget, BudgetSpec, PeriodUsage
from service_kit.db import Executor

_COLUMNS = """b.workspace, b.budget_id, b.agent_id, b.display_name, b.limit_nanos, b.period,
    b.mode, b.allow_unpriced_models, b.requests_per_minute, b.tokens_per_minute, b.labels,
    b.create_time, b.update_time, b.etag"""

# A budget with its period at $now (the current one, from budget_periods when it has one,
# plus the settlements not yet folded into it).
_WITH_PERIOD = f"""
    SELECT {_COLUMNS}, s.start AS period_start,
           budget_period_end(b.period, s.start) AS period_end,
           coalesce(p.spent_nanos, 0) + coalesce(q.spent, 0) AS spent_nanos,
           coalesce(p.reserved_nanos, 0) + coalesce(q.reserved, 0) AS reserved_nanos
    FROM budgets b
    CROSS JOIN LATERAL (SELECT budget_period_start(b.period, $NOW::timestamptz) AS start) s
    LEFT JOIN budget_periods p
        ON p.workspace = b.workspace AND p.budget_id = b.budget_id AND p.period = b.period
       AND p.period_start = s.start
    CROSS JOIN LATERAL (
        SELECT sum(spent_delta)::bigint AS spent, sum(reserved_delta)::bigint AS reserved
        FROM budget_settlements q
        WHERE q.workspace = b.workspace AND q.budget_id = b.budget_id AND q.period = b.period
          AND q.period_start = s.start) q"""


def _with_period(now_param: int) -> str:
    return _WITH_PERIOD.replace("$NOW", f"${now_param}")


def _from_row(row: asyncpg.Record) -> Budget:
    labels = row["labels"]
    return Budget(
        workspace=row["workspace"],
        budget_id=row["budget_id"],
        spec=BudgetSpec(
            display_name=row["display_name"],
            agent_id=row["agent_id"] or "",
            limit_nanos=row["limit_nanos"],
            period=row["period"],
            mode=row["mode"],
            allow_unpriced_models=row["allow_unpriced_models"],
            requests_per_minute=row["requests_per_minute"],
            tokens_per_minute=row["tokens_per_minute"],
            labels=json.loads(labels) if isinstance(labels, str) else dict(labels),
        ),
        current=PeriodUsage(
            start=row["period_start"],
            end=row["period_end"],
            spent_nanos=row["spent_nanos"],
            reserved_nanos=row["reserved_nanos"],
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


def _spec_values(spec: BudgetSpec) -> tuple[object, ...]:
    """$3..$11 of the writes below."""
    return (
        spec.agent_id or None,
        spec.display_name,
        spec.limit_nanos,
        spec.period,
        spec.mode,
        spec.allow_unpriced_models,
        spec.requests_per_minute,
        spec.tokens_per_minute,
        json.dumps(dict(spec.labels)),
    )


async def insert(
    db: Executor,
    workspace: str,
    budget_id: str,
    spec: BudgetSpec,
    etag: str,
    *,
    now: dt.datetime,
    max_per_workspace: int,
) -> tuple[Budget | None, bool]:
    """A new budget: (the budget, True); (None, True) when the id is taken; (None, False) when
    the workspace already has `max_per_workspace` budgets."""
    row = await db.fetchrow(
        """
        WITH room AS (
            SELECT count(*) < $14 AS ok FROM budgets WHERE workspace = $1
        ), inserted AS (
            INSERT INTO budgets (workspace, budget_id, agent_id, display_name, limit_nanos,
                period, mode, allow_unpriced_models, requests_per_minute, tokens_per_minute,
                labels, create_time, update_time, etag)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $13, $13, $12
            FROM room WHERE ok
            ON CONFLICT (workspace, budget_id) DO NOTHING
            RETURNING *
        )
        SELECT (SELECT ok FROM room) AS room, inserted.workspace, inserted.budget_id,
               inserted.agent_id, inserted.display_name, inserted.limit_nanos, inserted.period,
               inserted.mode, inserted.allow_unpriced_models, inserted.requests_per_minute,
               inserted.tokens_per_minute, inserted.labels, inserted.create_time,
               inserted.update_time, inserted.etag,
               budget_period_start(inserted.period, $13) AS period_start,
               budget_period_end(inserted.period, budget_period_start(inserted.period, $13))
                   AS period_end,
               0::bigint AS spent_nanos, 0::bigint AS reserved_nanos
        FROM (SELECT 1) one LEFT JOIN inserted ON true""",
        workspace,
        budget_id,
        *_spec_values(spec),
        etag,
        now,
        max_per_workspace,
    )
    assert row is not None
    if not row["room"]:
        return None, False
    return (_from_row(row) if row["workspace"] else None), True


async def get(db: Executor, workspace: str, budget_id: str, *, now: dt.datetime) -> Budget | None:
    row = await db.fetchrow(
        f"{_with_period(3)} WHERE b.workspace = $1 AND b.budget_id = $2", workspace, budget_id, now
    )
    return _from_row(row) if row else None


async def list_page(
    db: Executor, workspace: str, *, after: str | None, size: int, now: dt.datetime
) -> tuple[list[Budget], bool]:
    """Up to `size` budgets by id after `after`, and whether more follow."""
    rows = await db.fetch(
        f"""{_with_period(4)}
        WHERE b.workspace = $1 AND ($2::text IS NULL OR b.budget_id > $2)
        ORDER BY b.budget_id LIMIT $3 + 1""",
        workspace,
        after,
        size,
        now,
    )
    return [_from_row(r) for r in rows[:size]], len(rows) > size


async def update_if_unchanged(
    db: Executor, current: Budget, spec: BudgetSpec, *, new_etag: str
) -> bool:
    """Write `spec` only if the budget still has `current`'s etag (one statement). A changed
    rate starts its bucket full."""
    updated = await db.fetchval(
        """
        WITH updated AS (
            UPDATE budgets SET agent_id = $3, display_name = $4, limit_nanos = $5, period = $6,
                mode = $7, allow_unpriced_models = $8, requests_per_minute = $9,
                tokens_per_minute = $10, labels = $11::jsonb,
                update_time = greatest(now(), create_time), etag = $12
            WHERE workspace = $1 AND budget_id = $2 AND etag = $13
            RETURNING true
        ), refilled AS (  -- the buckets live on the period rows (migration 008)
            UPDATE budget_periods
            SET request_tokens = CASE WHEN $14::bigint IS DISTINCT FROM $9
                                      THEN NULL ELSE request_tokens END,
                token_tokens = CASE WHEN $15::bigint IS DISTINCT FROM $10
                                    THEN NULL ELSE token_tokens END
            WHERE workspace = $1 AND budget_id = $2 AND EXISTS (SELECT 1 FROM updated)
        )
        SELECT true FROM updated""",
        current.workspace,
        current.budget_id,
        *_spec_values(spec),
        new_etag,
        current.etag,
        current.spec.requests_per_minute,
        current.spec.tokens_per_minute,
    )
    return bool(updated)


async def delete(db: Executor, workspace: str, budget_id: str, *, etag: str | None) -> bool:
    deleted = await db.fetchval(
        """
        WITH deleted AS (
            DELETE FROM budgets
            WHERE workspace = $1 AND budget_id = $2 AND ($3::text IS NULL OR etag = $3)
            RETURNING workspace, budget_id
        ), settlements AS (
            DELETE FROM budget_settlements s USING deleted d
            WHERE s.workspace = d.workspace AND s.budget_id = d.budget_id
        )
        SELECT true FROM deleted""",
        workspace,
        budget_id,
        etag,
    )
    return bool(deleted)


async def most_used(db: Executor, limit: int, *, now: dt.datetime) -> tuple[list[Budget], int]:
    """The `limit` workspace-wide budgets with a spend limit that have used the largest
    share of it in their current period, and how many such budgets there are in all."""
    rows = await db.fetch(
        f"""SELECT * FROM ({_with_period(2)}
            WHERE b.agent_id IS NULL AND b.limit_nanos IS NOT NULL) used
        ORDER BY (spent_nanos + reserved_nanos)::float8 / greatest(limit_nanos, 1) DESC,
                 workspace, budget_id
        LIMIT $1""",
        limit,
        now,
    )
    total = await db.fetchval(
        "SELECT count(*) FROM budgets WHERE agent_id IS NULL AND limit_nanos IS NOT NULL"
    )
    return [_from_row(r) for r in rows], int(total)
