"""The tracking side's floor: what an execution's two statements cost a client process alone,
8 and 128 executions in flight. Each writes its RUNNING row with its admission (`insert_running`
on a pool that commits asynchronously, as the service's) and then its terminal record
(through the group commit, durably), with nothing else: no gRPC, no provider call. The
process's CPU per execution is the database's share of the service's; PostgreSQL's is shown
beside it.

`python -m bench.db_floor DATABASE_URL POSTGRES_PID IN_FLIGHT SECONDS` runs one (the bench
starts it)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid

from bench.load import closed_loop_in_process, floor_in_subprocess

IN_FLIGHT = (8, 128)  # few at a time (small batches), and the execution bench's load


async def client(
    database_url: str, postgres_pid: int, in_flight: int, seconds: float
) -> dict[str, float]:
    from execution_service import repository as repo
    from execution_service.admission import AdmissionRequest, Reservation
    from execution_service.group_commit import GroupCommit
    from execution_service.model import RUNNING, SUCCEEDED, Execution, Outcome, Usage
    from service_kit import db

    pool = await db.create_pool(database_url, min_size=20, max_size=20)
    start_pool = await db.create_pool(
        database_url, min_size=20, max_size=20, synchronous_commit=False
    )
    records = GroupCommit(pool)
    admission = AdmissionRequest(Reservation(amount_nanos=12_000, unpriced=False, tokens=1_100))

    async def execution() -> None:
        now = dt.datetime.now(dt.UTC)
        started = Execution(
            id=uuid.uuid4(),
            workspace="bench",
            agent_id="",
            provider="openai",
            model="gpt-4o-mini",
            state=RUNNING,
            create_time=now,
        )
        written, verdict = await repo.insert_running(
            start_pool, started, lease_owner="bench", lease_seconds=60, admission=admission
        )
        assert written is not None and verdict.ok
        outcome = Outcome(
            state=SUCCEEDED,
            usage=Usage(12, 20),
            cost_nanos=11_000,
            attempts=1,
            error=None,
            finish_reason="stop",
            output_text="abcdefg " * 20,
            first_token_time=now,
            end_time=dt.datetime.now(dt.UTC),
        )
        await records.finish(started, outcome)

    measured = await closed_loop_in_process(
        execution, concurrency=in_flight, seconds=seconds, watch_pid=postgres_pid
    )
    await pool.close()
    await start_pool.close()
    return measured


def run(database_url: str, postgres_pid: int, seconds: float) -> list[str]:
    lines = [
        "(f) the tracking side alone: one client process writing each execution's RUNNING row",
        "    (with its admission) and its terminal record (group commit)",
    ]
    for in_flight in IN_FLIGHT:
        result = floor_in_subprocess(
            "bench.db_floor", database_url, postgres_pid, in_flight, seconds
        )
        calls = max(result["calls"], 1)
        lines.append(
            f"    {in_flight:3} in flight: {calls / seconds:6.0f} executions/s, client CPU "
            f"{1e3 * result['cpu'] / calls:.2f} ms/execution, PostgreSQL "
            f"{1e3 * result['watched_cpu'] / calls:.2f} ms/execution"
        )
    return lines


if __name__ == "__main__":
    import uvloop

    database_url, postgres_pid, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seconds = float(sys.argv[4])
    print(json.dumps(uvloop.run(client(database_url, postgres_pid, in_flight, seconds))))
