"""Terminal records through the group commit, on the real database: concurrent finishes go
out in few statements (counted by the transactions that wrote the rows) and each caller
gets its own record; a lone finish goes out at once and what queues meanwhile follows in one
batch; a record the database refuses fails alone; every way a finish may end (recorded,
replacing the sweeper's verdict, already terminal, its RUNNING row lost) holds in a batch,
with rollups and budgets exact; a batch cut by an outage leaves every record pending,
retried and written once; and two processes' batches on the same rollup rows never
deadlock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random

import asyncpg
from prometheus_client import REGISTRY

from execution_service import maintenance
from execution_service import repository as repo
from execution_service.admission import AdmissionRequest, Reservation
from execution_service.app import RunningExecution
from execution_service.budget_store import BudgetStore
from execution_service.model import FAILED, SUCCEEDED, Execution, Outcome
from execution_service.retry import RetryPolicy
from execution_service.terminal_records import TerminalRecord, TerminalRecords
from tests.execution.support import Stub, Workspace
from tests.execution.test_budgets import create_budget, get_budget
from tests.execution.test_rollups import AGENT, WS, assert_matches, outcome, raw_stats, started

NOW = dt.datetime.now(dt.UTC)
FAST_BACKOFF = RetryPolicy(base_delay=0.05, max_delay=0.2)


def records_on(pool: asyncpg.Pool) -> TerminalRecords:
    return TerminalRecords(pool, retry_for=30.0, backoff=FAST_BACKOFF)


async def finishing_transactions(pool: asyncpg.Pool, runs: list[Execution]) -> int:
    """The transactions that wrote these executions' terminal rows (each row's xmin): exact,
    whatever else the shared server runs meanwhile."""
    ids = [e.id for e in runs]
    return int(
        await pool.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM executions WHERE id = ANY($1::uuid[])", ids
        )
    )


async def running(pool: asyncpg.Pool, count: int, at: dt.datetime = NOW) -> list[Execution]:
    runs = [started(at + dt.timedelta(milliseconds=i)) for i in range(count)]
    for e in runs:
        assert (await repo.insert_running(pool, e, lease_owner="o", lease_seconds=3600))[0]
    return runs


def answered(e: Execution, i: int, state: str = SUCCEEDED) -> Outcome:
    return dataclasses.replace(outcome(e, random.Random(i), state), output_text=f"answer {i}")


async def finish_all(records: TerminalRecords, finishes: list[tuple[Execution, Outcome]]) -> list:
    return await asyncio.gather(
        *(records.record(TerminalRecord(e, o, None)) for e, o in finishes),
        return_exceptions=True,
    )


# The backend of a terminal record's statement waiting for a lock.
WAITING_FINISH = """SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'
    AND datname = current_database() AND query LIKE '%INSERT INTO executions%'"""


async def wait_for_lock_wait(pool: asyncpg.Pool) -> int:
    for _ in range(200):
        pid = await pool.fetchval(WAITING_FINISH)
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("no terminal record waited for the lock")


async def test_concurrent_finishes_share_one_statement_and_each_caller_gets_its_own(
    pool: asyncpg.Pool,
) -> None:
    runs = await running(pool, 40)
    finishes = [(e, answered(e, i, SUCCEEDED if i % 3 else FAILED)) for i, e in enumerate(runs)]
    records = records_on(pool)
    results = await finish_all(records, finishes)
    writes = await finishing_transactions(pool, runs)
    # The first record went out alone at once, the others queued behind it: 2 commits, not 40.
    assert writes == records.writer.statements <= 4
    assert records.writer.largest_batch >= 10
    for (e, o), got in zip(finishes, results, strict=True):
        assert isinstance(got, Execution)
        assert (got.id, got.state, got.output_text, got.cost_nanos) == (
            e.id,
            o.state,
            o.output_text,
            o.cost_nanos,
        )
        stored = await repo.get(pool, WS, e.id)
        assert stored is not None
        assert (stored.state, stored.output_text, stored.usage) == (o.state, o.output_text, o.usage)
    assert records.pending_ids() == []


async def test_a_lone_finish_goes_out_at_once_and_what_queues_meanwhile_follows_together(
    pool: asyncpg.Pool,
) -> None:
    runs = await running(pool, 21)
    records = records_on(pool)
    statements, records_written = batch_size_samples()
    async with pool.acquire() as blocker, blocker.transaction():
        # The first record's triggers wait for this lock: its write stays in flight.
        await blocker.execute("LOCK TABLE execution_rollup_pending IN EXCLUSIVE MODE")
        first = asyncio.create_task(finish_all(records, [(runs[0], answered(runs[0], 0))]))
        await wait_for_lock_wait(pool)
        assert records.writer.statements == 1  # sent alone, without waiting for company
        rest = asyncio.create_task(
            finish_all(records, [(e, answered(e, i)) for i, e in enumerate(runs[1:], 1)])
        )
        await asyncio.sleep(0.2)
        assert not rest.done() and records.writer.statements == 1  # queued behind it
    results = [*await first, *await rest]
    assert [r.output_text for r in results] == [f"answer {i}" for i in range(21)]
    assert (records.writer.statements, records.writer.largest_batch) == (2, 20)
    # What operators see: two statements, 21 records.
    assert batch_size_samples() == (statements + 2, records_written + 21)


def batch_size_samples() -> tuple[float, float]:
    """execution_record_batch_size: (statements, records) so far."""
    count = REGISTRY.get_sample_value("execution_record_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("execution_record_batch_size_sum") or 0.0
    return count, total


async def test_a_record_the_database_refuses_fails_alone(pool: asyncpg.Pool) -> None:
    runs = await running(pool, 12)
    finishes = [(e, answered(e, i)) for i, e in enumerate(runs)]
    bad = 5
    finishes[bad] = (runs[bad], dataclasses.replace(finishes[bad][1], state="DONE-ISH"))
    records = records_on(pool)
    results = await finish_all(records, finishes)
    # The first went out alone (nothing was in flight); the others queued meanwhile and were
    # tried together first.
    assert records.writer.largest_batch == 11
    assert isinstance(results[bad], asyncpg.CheckViolationError)
    for i, got in enumerate(results):
        if i != bad:
            assert isinstance(got, Execution) and got.output_text == f"answer {i}", i
    states = {e.id: (await repo.get(pool, WS, e.id)).state for e in runs}  # type: ignore[union-attr]
    assert list(states.values()).count(SUCCEEDED) == 11
    assert states[runs[bad].id] == "RUNNING"  # left for its lease to run out, as before
    assert records.pending_ids() == []


async def test_every_way_a_finish_ends_holds_in_a_batch_and_rollups_stay_exact(
    pool: asyncpg.Pool,
) -> None:
    minute = NOW.replace(second=0, microsecond=0)
    fresh = await running(pool, 10, minute)
    swept = await running(pool, 4, minute)
    await pool.execute(
        "UPDATE executions SET lease_expires_at = now() - interval '1 s' WHERE id = ANY($1)",
        [e.id for e in swept],
    )
    assert await repo.fail_expired_leases(pool, "gone") == 4
    done = await running(pool, 3, minute)
    for i, e in enumerate(done):
        await repo.finish(pool, e, answered(e, 100 + i))
    lost = [started(minute + dt.timedelta(seconds=1)) for _ in range(3)]  # RUNNING row lost
    twice = fresh[0]  # recorded twice at once: the first one counts
    finishes = [
        *((e, answered(e, i)) for i, e in enumerate([*fresh, *swept, *lost])),
        *((e, answered(e, 200 + i, FAILED)) for i, e in enumerate(done)),
        (twice, answered(twice, 300, FAILED)),
    ]
    records = records_on(pool)
    results = await finish_all(records, finishes)
    assert records.writer.largest_batch > 10
    for (e, o), got in zip(finishes[:17], results[:17], strict=True):
        assert isinstance(got, Execution)
        assert (got.id, got.state, got.output_text) == (e.id, o.state, o.output_text)
    for i, got in enumerate(results[17:20]):  # already terminal: returned unchanged
        assert isinstance(got, Execution)
        assert (got.state, got.output_text) == (SUCCEEDED, f"answer {100 + i}")
    assert isinstance(results[-1], Execution) and results[-1].output_text == "answer 0"
    stored = await repo.get(pool, WS, twice.id)
    assert stored is not None and stored.output_text == "answer 0"
    for e in swept:
        row = await repo.get(pool, WS, e.id)
        assert row is not None and row.state == SUCCEEDED and row.error is None

    window = (minute - dt.timedelta(minutes=1), minute + dt.timedelta(minutes=2))
    async with pool.acquire() as conn:
        for folded in (False, True):
            if folded:
                assert await maintenance.fold_rollups(conn, dt.datetime.max.replace(tzinfo=dt.UTC))
            stats = await repo.agent_stats(conn, WS, AGENT, *window)
            assert_matches(stats, await raw_stats(conn, *window))
            assert (stats.total, stats.running) == (20, 0)


async def test_budgets_settle_exactly_under_batched_finishes(
    workspace: Workspace, execution_stub: Stub, execution: RunningExecution
) -> None:
    ws = await workspace()
    admin = execution_stub("admin")
    budget = await create_budget(admin, ws, "m", limit_nanos=10**12, tokens_per_minute=10**6)
    admit = AdmissionRequest(Reservation(50_000, False, 500))
    now = dt.datetime.now(dt.UTC)
    runs = []
    for i in range(30):
        e = dataclasses.replace(started(now + dt.timedelta(milliseconds=i)), workspace=ws)
        inserted, verdict = await repo.insert_running(
            execution.pool, e, lease_owner="t", lease_seconds=3600, admission=admit
        )
        assert inserted is not None and verdict.ok
        runs.append(e)
    held = await get_budget(admin, budget.name)
    assert held.current_period.reserved_nanos == 30 * 50_000
    finishes = [
        (e, dataclasses.replace(answered(e, i), cost_nanos=1_000 + i)) for i, e in enumerate(runs)
    ]
    records = records_on(execution.pool)
    results = await finish_all(records, finishes)
    assert all(isinstance(r, Execution) for r in results)
    assert records.writer.largest_batch > 1
    settled = await BudgetStore(execution.pool).get(ws, "m")
    spent = sum(1_000 + i for i in range(30))
    assert (settled.current.spent_nanos, settled.current.reserved_nanos) == (spent, 0)
    stats = await repo.agent_stats(
        execution.pool, ws, AGENT, now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=2)
    )
    assert (stats.succeeded, stats.cost_nanos, stats.running) == (30, spent, 0)


async def test_a_batch_cut_by_an_outage_leaves_every_record_pending_then_writes_each_once(
    pool: asyncpg.Pool,
) -> None:
    minute = NOW.replace(second=0, microsecond=0)
    runs = await running(pool, 16, minute)
    finishes = [(e, answered(e, i)) for i, e in enumerate(runs)]
    records = records_on(pool)
    async with pool.acquire() as blocker:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE execution_rollup_pending IN EXCLUSIVE MODE")
            batch = asyncio.create_task(finish_all(records, finishes))
            # Each write's backend dies mid-statement (the first record's, then the batch
            # that queued behind it), as in a database restart.
            cut: set[int] = set()
            while not batch.done():
                pid = await pool.fetchval(WAITING_FINISH)
                if pid is not None and pid not in cut:
                    await blocker.execute("SELECT pg_terminate_backend($1)", pid)
                    cut.add(pid)
                await asyncio.sleep(0.02)
            results = await batch
        assert len(cut) == 2 and records.writer.largest_batch == 15
        assert results == [None] * 16  # each caller told its record is pending, as before
        assert sorted(records.pending_ids()) == sorted(e.id for e in runs)
    for _ in range(200):
        if not records.pending_ids():
            break
        await asyncio.sleep(0.05)
    assert records.pending_ids() == []
    for e, o in finishes:
        stored = await repo.get(pool, WS, e.id)
        assert stored is not None and (stored.state, stored.output_text) == (o.state, o.output_text)
    window = (minute - dt.timedelta(minutes=1), minute + dt.timedelta(minutes=2))
    stats = await repo.agent_stats(pool, WS, AGENT, *window)
    assert (stats.succeeded, stats.running) == (16, 0)  # each counted once


async def test_batches_of_two_processes_on_one_agents_rollups_never_deadlock(
    pool: asyncpg.Pool,
) -> None:
    """Two processes' batches add to the same rollup rows (one agent, one minute, its eight
    shards), each listing its records in an order of its own. Both are held at one shard's
    row while each has locked others, then let go: both go through, since rows are written
    in the rollups' lock order (in any other order, each would wait for the other)."""
    minute = NOW.replace(second=0, microsecond=0)
    first = await running(pool, 64, minute)
    for i, e in enumerate(first):
        await repo.finish(pool, e, answered(e, i))
    shards = "SELECT count(*) FROM execution_rollup_pending WHERE minute = $1"
    assert await pool.fetchval(shards, minute) == 8
    rand = random.Random(7)
    for _ in range(5):
        runs = await running(pool, 64, minute)
        rand.shuffle(runs)
        halves = [[(e, answered(e, i)) for i, e in enumerate(runs[k::2])] for k in (0, 1)]
        async with pool.acquire() as blocker:
            async with blocker.transaction():
                await blocker.execute(
                    "SELECT 1 FROM execution_rollup_pending WHERE minute = $1 AND shard = 4 "
                    "FOR UPDATE",
                    minute,
                )
                batches = [asyncio.create_task(repo.finish_many(pool, h)) for h in halves]
                for _ in range(200):
                    if len(await pool.fetch(WAITING_FINISH)) == 2:
                        break
                    await asyncio.sleep(0.02)
            written = await asyncio.gather(*batches)
        assert [len(w) for w in written] == [32, 32]
    stats = await repo.agent_stats(
        pool, WS, AGENT, minute - dt.timedelta(minutes=1), minute + dt.timedelta(minutes=2)
    )
    assert (stats.succeeded, stats.running) == (64 * 6, 0)
