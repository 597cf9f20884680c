"""The tracking side's floor: what an execution's two statements cost a client process alone,
128 executions in flight. Each writes its RUNNING row with its admission (`insert_running`
on a pool that commits asynchronously, as the service's) and then its terminal record
(through the group commit, durably), with nothing else: no gRPC, no provider call. The
process's CPU per execution is the database's share of the service's; PostgreSQL's is shown
beside it.

`python -m bench.db_floor DATABASE_URL POSTGRES_PID SECONDS` runs one (the bench starts it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
import uuid

from bench.load import process_tree_cpu

IN_FLIGHT = 128
WARMUP = 1.0


async def client(database_url: str, postgres_pid: int, seconds: float) -> dict[str, float]:
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
    calls = 0
    measuring = False
    stop_at = time.monotonic() + WARMUP + seconds

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

    async def caller() -> None:
        nonlocal calls
        while time.monotonic() < stop_at:
            await execution()
            calls += measuring

    async def window() -> tuple[float, float]:
        nonlocal measuring
        await asyncio.sleep(WARMUP)
        measuring, cpu0, postgres0 = True, time.process_time(), process_tree_cpu(postgres_pid)
        await asyncio.sleep(seconds)
        measuring = False
        return time.process_time() - cpu0, process_tree_cpu(postgres_pid) - postgres0

    tasks = [asyncio.create_task(caller()) for _ in range(IN_FLIGHT)]
    cpu, postgres = await window()
    counted = calls
    await asyncio.gather(*tasks)
    await pool.close()
    await start_pool.close()
    return {"calls": counted, "cpu": cpu, "postgres": postgres}


def run(database_url: str, postgres_pid: int, seconds: float) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.db_floor", database_url, str(postgres_pid), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    calls = max(result["calls"], 1)
    return [
        "(f) the tracking side alone: one client process writing each execution's RUNNING row",
        f"    (with its admission) and its terminal record (group commit), {IN_FLIGHT} in flight",
        f"    {calls / seconds:6.0f} executions/s, client CPU {1e3 * result['cpu'] / calls:.2f} "
        f"ms/execution, PostgreSQL {1e3 * result['postgres'] / calls:.2f} ms/execution",
    ]


if __name__ == "__main__":
    import uvloop

    database_url, postgres_pid, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(uvloop.run(client(database_url, postgres_pid, seconds))))
