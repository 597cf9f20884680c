"""The RUNNING row goes through a pool that commits without waiting for the disk; the
terminal record (on the durable pool) stands even when the RUNNING row it finishes was lost
to a PostgreSQL crash in between, and replaces the sweeper's INTERRUPTED verdict, but no
other terminal state."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from execution_service import repository as repo
from execution_service.model import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    Execution,
    ExecutionError,
    Outcome,
    Usage,
)
from service_kit import db


def _started() -> Execution:
    return Execution(
        id=uuid.uuid4(),
        workspace="durable",
        agent_id="agent",
        provider="openai",
        model="gpt-4o-mini",
        state=RUNNING,
        create_time=dt.datetime.now(dt.UTC),
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        labels={"team": "core"},
    )


def _outcome(state: str) -> Outcome:
    now = dt.datetime.now(dt.UTC)
    return Outcome(
        state=state,
        usage=Usage(10, 20, 0, 0, False),
        cost_nanos=13_500,
        attempts=1,
        error=None if state == SUCCEEDED else ExecutionError("PROVIDER_SERVER_ERROR", "boom", 500),
        finish_reason="stop",
        output_text="hello",
        first_token_time=now,
        end_time=now,
    )


async def test_finish_recreates_a_lost_running_row_and_replaces_only_the_sweepers_verdict(
    make_database: Callable[[str], Awaitable[str]],
) -> None:
    url = await make_database("ex")
    pool = await db.create_pool(url, min_size=1, max_size=2)
    start_pool = await db.create_pool(url, min_size=1, max_size=2, synchronous_commit=False)
    try:
        async with start_pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
        async with pool.acquire() as conn:
            await db.migrate(conn, "execution_service")
            assert await conn.fetchval("SHOW synchronous_commit") == "on"

            # Never inserted (as if PostgreSQL lost the RUNNING row): finishing records it whole.
            lost = _started()
            finished, ours = await repo.finish(conn, lost, _outcome(SUCCEEDED))
            assert ours
            assert (finished.state, finished.request_id, finished.labels) == (
                SUCCEEDED,
                lost.request_id,
                {"team": "core"},
            )
            assert finished.usage.output_tokens == 20 and finished.cost_nanos == 13_500

            # Inserted, then failed by the sweeper (its owner's record was late, e.g. waiting
            # out a database outage): the real outcome replaces the INTERRUPTED verdict.
            swept = _started()
            inserted, _ = await repo.insert_running(
                conn, swept, lease_owner="gone", lease_seconds=0.0
            )
            assert inserted is not None
            assert await repo.fail_expired_leases(conn, "owner stopped") >= 1
            interrupted = await repo.get(conn, swept.workspace, swept.id)
            assert interrupted is not None and interrupted.error is not None
            assert interrupted.error.reason == "INTERRUPTED"
            late, ours = await repo.finish(conn, swept, _outcome(SUCCEEDED))
            assert ours and late.state == SUCCEEDED and late.output_text == "hello"
            stored = await repo.get(conn, swept.workspace, swept.id)
            assert stored is not None and stored.state == SUCCEEDED and stored.error is None
            assert stored.usage.output_tokens == 20 and stored.cost_nanos == 13_500

            # Any other terminal state stays: a second record does not overwrite the first.
            again, ours = await repo.finish(conn, swept, _outcome(FAILED))
            assert not ours and again.state == SUCCEEDED
    finally:
        await pool.close()
        await start_pool.close()
