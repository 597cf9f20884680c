"""Budgets and rate limits through the real pair: the resource's standard methods, admission
that refuses what does not fit (recorded FAILED without a provider call), PRICE_UNKNOWN,
ALERT_ONLY, rate limits with RetryInfo, and what the sweeper releases."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from execution_service import budget_metrics
from execution_service import repository as repo
from execution_service.admission import AdmissionRequest, Reservation
from execution_service.app import RunningExecution
from execution_service.budget_store import BudgetStore
from execution_service.model import RUNNING, SUCCEEDED, Execution, Outcome, Usage
from provider_emulator.server import RunningEmulator
from service_kit import db
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    Stub,
    Workspace,
    error_details,
    error_info,
    expect_error,
    migrate_below,
    openai_key,
    request,
    run,
)

# gpt-4o-mini: 150 nano-dollars per input token, 600 per output token. The tests' service
# default max_tokens is 64, and the prompt "Say hello to the team" is 21 bytes (+ 8 per
# message): the worst case is 29 * 150 + 64 * 600.
WORST_CASE = 29 * 150 + 64 * 600


async def create_budget(
    stub: Any, ws: str, budget_id: str = "monthly", **fields: Any
) -> res.Budget:
    fields.setdefault("period", res.BUDGET_PERIOD_MONTH)
    response = await stub.CreateBudget(
        pb.CreateBudgetRequest(
            parent=f"workspaces/{ws}", budget_id=budget_id, budget=res.Budget(**fields)
        )
    )
    return response.budget


async def get_budget(stub: Any, name: str) -> res.Budget:
    return (await stub.GetBudget(pb.GetBudgetRequest(name=name))).budget


async def test_a_budget_refuses_what_does_not_fit_and_records_it_failed(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    admin = execution_stub("admin")
    budget = await create_budget(admin, ws, limit_nanos=WORST_CASE + 10_000)
    assert budget.name == f"workspaces/{ws}/budgets/monthly"
    assert budget.mode == res.BUDGET_MODE_ENFORCE
    assert budget.current_period.remaining_nanos == WORST_CASE + 10_000

    first = await run(execution_stub(), request(ws))
    assert first.error is None, first.error
    done = first.completed
    after = await get_budget(admin, budget.name)
    assert after.current_period.spent_nanos == done.cost_nanos > 0
    assert after.current_period.reserved_nanos == 0
    now = dt.datetime.now(dt.UTC)
    assert after.current_period.start_time.ToDatetime(dt.UTC) == dt.datetime(
        now.year, now.month, 1, tzinfo=dt.UTC
    )

    calls = len(emulator.state.find_requests(key=key))
    second = await run(execution_stub(), request(ws))
    assert second.error is not None
    assert second.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(second.error)
    assert info.reason == "BUDGET_EXCEEDED"
    assert info.metadata["budget"] == budget.name
    assert info.metadata["limit_nanos"] == str(WORST_CASE + 10_000)
    assert info.metadata["spent_nanos"] == str(done.cost_nanos)
    assert info.metadata["period_end"] == after.current_period.end_time.ToJsonString()
    assert len(emulator.state.find_requests(key=key)) == calls  # no provider call
    refused = await execution_stub().GetExecution(
        pb.GetExecutionRequest(name=info.metadata["execution"])
    )
    assert refused.execution.state == res.EXECUTION_STATE_FAILED
    assert refused.execution.error.reason == "BUDGET_EXCEEDED"
    # Nothing stays reserved by the refusal.
    last = await get_budget(admin, budget.name)
    assert last.current_period.reserved_nanos == 0
    assert last.current_period.spent_nanos == done.cost_nanos


def retry_delay(err: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of a rich status, in seconds."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_price_unknown_is_refused_unless_the_budget_allows_unpriced_models(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    admin = execution_stub("admin")
    budget = await create_budget(admin, ws, limit_nanos=10**9)
    before = metric("execution_admission_refusals_total", reason="PRICE_UNKNOWN")
    refused = await run(execution_stub(), request(ws, model="gpt-4.1-mini"))
    assert refused.error is not None
    assert refused.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.error)
    assert info.reason == "PRICE_UNKNOWN"
    assert info.metadata["model"] == "gpt-4.1-mini"
    assert emulator.state.find_requests(key=key) == []
    assert metric("execution_admission_refusals_total", reason="PRICE_UNKNOWN") == before + 1

    await admin.UpdateBudget(
        pb.UpdateBudgetRequest(
            budget=res.Budget(name=budget.name, allow_unpriced_models=True),
            update_mask=field_mask_pb2.FieldMask(paths=["allow_unpriced_models"]),
        )
    )
    allowed = await run(execution_stub(), request(ws, model="gpt-4.1-mini"))
    assert allowed.error is None
    assert not allowed.completed.HasField("cost_nanos")  # unknown, not zero
    assert (await get_budget(admin, budget.name)).current_period.spent_nanos == 0


async def test_alert_only_never_refuses_but_counts(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    admin = execution_stub("admin")
    budget = await create_budget(
        admin, ws, limit_nanos=0, mode=res.BUDGET_MODE_ALERT_ONLY, requests_per_minute=1
    )
    exceeded = metric("execution_budget_alerts_total", reason="BUDGET_EXCEEDED")
    for _ in range(2):
        outcome = await run(execution_stub(), request(ws))
        assert outcome.error is None, outcome.error
    assert metric("execution_budget_alerts_total", reason="BUDGET_EXCEEDED") == exceeded + 2
    after = await get_budget(admin, budget.name)
    assert after.current_period.spent_nanos > 0  # tracked past the limit
    assert after.current_period.remaining_nanos == 0


async def test_workspace_and_agent_budgets_both_apply(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    admin = execution_stub("admin")
    await create_budget(admin, ws, "whole", limit_nanos=10**9, period=res.BUDGET_PERIOD_DAY)
    agent = await create_budget(admin, ws, "small", limit_nanos=1000, agent_id="agent-1")
    refused = await run(execution_stub(), request(ws, agent_id="agent-1"))
    assert refused.error is not None
    assert error_info(refused.error).metadata["budget"] == agent.name
    other = await run(execution_stub(), request(ws, agent_id="agent-2"))
    assert other.error is None
    whole = await get_budget(admin, f"workspaces/{ws}/budgets/whole")
    assert whole.current_period.spent_nanos == other.completed.cost_nanos


async def test_rate_limit_refuses_with_retry_info_and_records_nothing(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    await create_budget(execution_stub("admin"), ws, "rpm", requests_per_minute=2)
    for _ in range(2):
        assert (await run(execution_stub(), request(ws))).error is None
    limited = await run(execution_stub(), request(ws))
    assert limited.error is not None
    assert limited.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(limited.error)
    assert info.reason == "RATE_LIMITED" and "execution" not in info.metadata
    delay = retry_delay(limited.error)
    assert 25 < delay <= 30  # one request back every 30 s
    listed = await execution_stub().ListExecutions(
        pb.ListExecutionsRequest(parent=f"workspaces/{ws}")
    )
    assert len(listed.executions) == 2


async def test_tokens_per_minute_take_the_worst_case_and_give_back_what_was_not_used(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace(openai=openai_key())
    # Each execution takes 29 + 64 = 93 tokens and uses about 30: without the refund the
    # second would not fit in 150.
    await create_budget(execution_stub("admin"), ws, "tpm", tokens_per_minute=150)
    first = await run(execution_stub(), request(ws))
    assert first.error is None
    used = first.completed.usage.input_tokens + first.completed.usage.output_tokens
    assert used < 93 - 36
    second = await run(execution_stub(), request(ws))
    assert second.error is None, second.error


async def test_only_admin_manages_budgets_and_app_may_read_them(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace()
    app, admin = execution_stub(), execution_stub("admin")
    denied = await expect_error(
        app.CreateBudget(pb.CreateBudgetRequest(parent=f"workspaces/{ws}", budget_id="b")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert error_info(denied).reason == "PERMISSION_DENIED"
    budget = await create_budget(admin, ws, "b", limit_nanos=5)
    assert (await get_budget(app, budget.name)).etag == budget.etag
    listed = await app.ListBudgets(pb.ListBudgetsRequest(parent=f"workspaces/{ws}"))
    assert [b.name for b in listed.budgets] == [budget.name]
    for call in (
        app.UpdateBudget(pb.UpdateBudgetRequest(budget=budget)),
        app.DeleteBudget(pb.DeleteBudgetRequest(name=budget.name)),
    ):
        await expect_error(call, grpc.StatusCode.PERMISSION_DENIED)


async def test_update_mask_etag_and_delete(workspace: Workspace, execution_stub: Stub) -> None:
    ws = await workspace()
    admin = execution_stub("admin")
    budget = await create_budget(admin, ws, "b", limit_nanos=5, display_name="five")
    await expect_error(
        admin.CreateBudget(
            pb.CreateBudgetRequest(parent=f"workspaces/{ws}", budget_id="b", budget=res.Budget())
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    bad = await expect_error(
        admin.CreateBudget(
            pb.CreateBudgetRequest(
                parent=f"workspaces/{ws}", budget_id="bad id", budget=res.Budget(limit_nanos=-1)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(error_details(bad)[1]) == {"budget_id", "budget.limit_nanos"}
    changed = (
        await admin.UpdateBudget(
            pb.UpdateBudgetRequest(
                budget=res.Budget(name=budget.name, limit_nanos=7, display_name="ignored"),
                update_mask=field_mask_pb2.FieldMask(paths=["limit_nanos"]),
            )
        )
    ).budget
    assert changed.limit_nanos == 7 and changed.display_name == "five"
    assert changed.etag != budget.etag
    stale = res.Budget(name=budget.name, etag=budget.etag, limit_nanos=9)
    await expect_error(
        admin.UpdateBudget(
            pb.UpdateBudgetRequest(
                budget=stale, update_mask=field_mask_pb2.FieldMask(paths=["limit_nanos"])
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    cleared = (
        await admin.UpdateBudget(
            pb.UpdateBudgetRequest(
                budget=res.Budget(name=budget.name),
                update_mask=field_mask_pb2.FieldMask(paths=["limit_nanos"]),
            )
        )
    ).budget
    assert not cleared.HasField("limit_nanos")
    assert not cleared.current_period.HasField("remaining_nanos")
    await admin.DeleteBudget(pb.DeleteBudgetRequest(name=budget.name, etag=cleared.etag))
    await expect_error(
        admin.GetBudget(pb.GetBudgetRequest(name=budget.name)), grpc.StatusCode.NOT_FOUND
    )


# --- the database's side, with an injected clock --------------------------------------------


def _execution(ws: str, at: dt.datetime, request_id: str | None = None) -> Execution:
    return Execution(
        id=uuid.uuid4(),
        workspace=ws,
        agent_id="agent-1",
        provider="openai",
        model="gpt-4o-mini",
        state=RUNNING,
        create_time=at,
        request_id=request_id,
    )


def _done(cost: int) -> Outcome:
    now = dt.datetime.now(dt.UTC)
    return Outcome(SUCCEEDED, Usage(10, 10), cost, 1, None, "stop", None, None, now)


async def test_periods_roll_over_by_the_clock(
    workspace: Workspace, execution_stub: Stub, execution: RunningExecution
) -> None:
    ws = await workspace()
    await create_budget(
        execution_stub("admin"), ws, "daily", limit_nanos=1000, period=res.BUDGET_PERIOD_DAY
    )
    day1 = dt.datetime(2031, 5, 31, 23, 59, 59, tzinfo=dt.UTC)
    day2 = dt.datetime(2031, 6, 1, 0, 0, 1, tzinfo=dt.UTC)
    admit = AdmissionRequest(Reservation(600, False, 0))
    first, verdict = await repo.insert_running(
        execution.pool, _execution(ws, day1), lease_owner="t", lease_seconds=30, admission=admit
    )
    assert first is not None and verdict.ok
    second, verdict = await repo.insert_running(
        execution.pool, _execution(ws, day1), lease_owner="t", lease_seconds=30, admission=admit
    )
    assert second is None and verdict.reason == "BUDGET_EXCEEDED"
    assert verdict.period_end == day2.replace(second=0)
    third, verdict = await repo.insert_running(
        execution.pool, _execution(ws, day2), lease_owner="t", lease_seconds=30, admission=admit
    )
    assert third is not None and verdict.ok  # a new day, a new budget
    # The first finishes after midnight: it is charged to the day it was admitted in.
    await repo.finish(execution.pool, first, _done(450))
    on_day1 = await BudgetStore(execution.pool, now=lambda: day1).get(ws, "daily")
    on_day2 = await BudgetStore(execution.pool, now=lambda: day2).get(ws, "daily")
    assert (on_day1.current.spent_nanos, on_day1.current.reserved_nanos) == (450, 0)
    assert on_day1.current.end == on_day2.current.start == day2.replace(second=0)
    assert (on_day2.current.spent_nanos, on_day2.current.reserved_nanos) == (0, 600)
    assert on_day2.remaining_nanos == 400


async def test_the_sweeper_releases_a_crashed_executions_reservation(
    workspace: Workspace, execution_stub: Stub, start_execution_service: StartExecution
) -> None:
    ws = await workspace()
    service = await start_execution_service()
    admin = execution_stub("admin", port=service.port)
    budget = await create_budget(admin, ws, "m", limit_nanos=1000)
    admit = AdmissionRequest(Reservation(700, False, 0))
    now = dt.datetime.now(dt.UTC)
    # Admitted and recorded RUNNING by a process that then died (its lease is not renewed).
    crashed, verdict = await repo.insert_running(
        service.pool, _execution(ws, now), lease_owner="gone", lease_seconds=0.0, admission=admit
    )
    assert crashed is not None and verdict.ok
    assert (await get_budget(admin, budget.name)).current_period.reserved_nanos == 700
    assert await service.engine.sweep_once() >= 1
    released = await get_budget(admin, budget.name)
    assert released.current_period.reserved_nanos == 0
    assert released.current_period.spent_nanos == 0


async def test_an_admission_whose_request_id_was_taken_releases_what_it_reserved(
    workspace: Workspace, execution_stub: Stub, execution: RunningExecution
) -> None:
    """The statement admits before the row's insert finds the request id taken (by a
    concurrent duplicate): the same statement gives the reservation back."""
    ws = await workspace()
    admin = execution_stub("admin")
    budget = await create_budget(admin, ws, "m", limit_nanos=1000, tokens_per_minute=500)
    now = dt.datetime.now(dt.UTC)
    taken = _execution(ws, now, request_id="dup")
    await repo.insert_running(execution.pool, taken, lease_owner="t", lease_seconds=60.0)
    duplicate, verdict = await repo.insert_running(
        execution.pool,
        _execution(ws, now, request_id="dup"),
        lease_owner="t",
        lease_seconds=60.0,
        admission=AdmissionRequest(Reservation(600, False, 400)),
    )
    assert duplicate is None and verdict.ok
    assert (await get_budget(admin, budget.name)).current_period.reserved_nanos == 0
    # Its tokens came back too: another 400 fit in the 500 a minute.
    again, verdict = await repo.insert_running(
        execution.pool,
        _execution(ws, now),
        lease_owner="t",
        lease_seconds=60.0,
        admission=AdmissionRequest(Reservation(600, False, 400)),
    )
    assert again is not None and verdict.ok, verdict


async def test_concurrent_executions_through_two_services_never_overspend(
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    make_database: Any,
) -> None:
    ws = await workspace(openai=openai_key())
    url = await make_database("ex")
    services = [await start_execution_service(database_url=url) for _ in range(2)]
    admin = execution_stub("admin", port=services[0].port)
    # Room for about 12 worst cases out of 200 asked for at once.
    budget = await create_budget(admin, ws, "tight", limit_nanos=12 * WORST_CASE + 5000)
    stubs = [execution_stub(port=s.port) for s in services]
    outcomes = await asyncio.gather(
        *(run(stubs[i % 2], request(ws, prompt=f"Say hello {i:03}")) for i in range(200))
    )
    ran = [o for o in outcomes if o.error is None]
    refused = [o for o in outcomes if o.error is not None]
    assert all(error_info(o.error).reason == "BUDGET_EXCEEDED" for o in refused if o.error)
    assert 12 <= len(ran) < 200
    final = await get_budget(stubs[1], budget.name)
    assert final.current_period.reserved_nanos == 0
    assert final.current_period.spent_nanos == sum(o.completed.cost_nanos for o in ran)
    assert final.current_period.spent_nanos <= budget.limit_nanos


async def test_a_finish_never_waits_for_the_budgets_lock(
    workspace: Workspace,
    execution_stub: Stub,
    execution: RunningExecution,
    emulator: RunningEmulator,
) -> None:
    """Admissions hold the budget's row lock; a finish only appends its settlement, so an
    execution ends while another transaction holds that lock, and the next read and the next
    admission see what it spent."""
    key = openai_key()
    ws = await workspace(openai=key)
    admin = execution_stub("admin")
    budget = await create_budget(admin, ws, limit_nanos=10 * WORST_CASE)
    emulator.state.script({"chunk_delay_ms": 50}, key=key)
    call = execution_stub().Execute(request(ws))
    started = await call.read()
    assert started.HasField("started")
    async with execution.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM budgets WHERE workspace = $1 FOR UPDATE", ws
        )  # as an admission of the workspace would, for as long as this block runs
        rest = []
        while (event := await call.read()) is not grpc.aio.EOF:
            rest.append(event)
        done = rest[-1].completed
        assert done.state == res.EXECUTION_STATE_SUCCEEDED
        stored = await repo.get(execution.pool, ws, uuid.UUID(done.name.rsplit("/", 1)[1]))
        assert stored is not None and stored.state == SUCCEEDED
    after = await get_budget(admin, budget.name)
    assert (after.current_period.spent_nanos, after.current_period.reserved_nanos) == (
        done.cost_nanos,
        0,
    )
    second = await run(execution_stub(), request(ws, prompt="Say hello again"))
    assert second.error is None
    folded = await get_budget(admin, budget.name)
    assert folded.current_period.spent_nanos == done.cost_nanos + second.completed.cost_nanos


async def test_settlements_are_folded_in_batches_and_nothing_is_lost(
    workspace: Workspace, execution_stub: Stub, execution: RunningExecution
) -> None:
    """Admission adds the settlements not yet folded and folds them once there are many
    (migration 008): through two folds, spent is every cost, nothing stays reserved, and the
    tokens-per-minute bucket got back what the executions did not use."""
    ws = await workspace(openai=openai_key())
    admin = execution_stub("admin")
    # Each takes its worst case, 20 + 64 tokens, and uses about 30: 70 of them fit in 4,000
    # tokens a minute only if what they did not use comes back.
    budget = await create_budget(admin, ws, limit_nanos=100 * WORST_CASE, tokens_per_minute=4000)
    costs = []
    for i in range(70):
        outcome = await run(execution_stub(), request(ws, prompt=f"Say hello {i:02}"))
        assert outcome.error is None, (i, outcome.error)
        costs.append(outcome.completed.cost_nanos)
    pending = await execution.pool.fetchval(
        "SELECT count(*) FROM budget_settlements WHERE workspace = $1", ws
    )
    assert pending < 32  # folded at least twice on the way
    final = await get_budget(admin, budget.name)
    assert final.current_period.spent_nanos == sum(costs)
    assert final.current_period.reserved_nanos == 0


async def test_reservations_and_buckets_held_before_migration_8_carry_over(
    make_database: Any,
) -> None:
    """Migration 008 moves what executions hold onto their rows (an unrecorded one's hold is
    released) and the token buckets onto the current period; what was held settles as
    before."""
    conn = await asyncpg.connect(await make_database("m8"))
    try:
        await migrate_below(conn, 8)
        await conn.execute(
            """INSERT INTO budgets (workspace, budget_id, limit_nanos, period, mode,
                   tokens_per_minute, create_time, update_time, etag)
               VALUES ('w', 'b', 10000, 'MONTH', 'ENFORCE', 1000, now(), now(), 'e')"""
        )
        now = dt.datetime.now(dt.UTC)
        held, orphan = uuid.uuid4(), uuid.uuid4()
        for execution_id in (held, orphan):  # as migration 007's admission did
            assert await conn.fetchval(
                "SELECT ok FROM budget_admit(true, 'w', 'a', $1, $2, 3000, false, 300)",
                execution_id,
                now,
            )
        await conn.execute(
            """INSERT INTO executions (id, workspace, agent_id, provider, model, state,
                   create_time, lease_owner, lease_expires_at)
               VALUES ($1, 'w', 'a', 'openai', 'gpt-4o-mini', 'RUNNING', $2, 'o', $2)""",
            held,
            now,
        )
        applied = await db.migrate(conn, "execution_service")
        assert applied[0] == "008_cheaper_admission.sql"  # and any later migration

        store = BudgetStore(conn)
        assert (await store.get("w", "b")).current.reserved_nanos == 3000  # the orphan's went
        bucket = await conn.fetchval("SELECT token_tokens FROM budget_periods")
        assert 400 <= bucket <= 410  # 1000 - 2 x 300, refilled a little since
        await conn.execute(
            """UPDATE executions SET state = 'SUCCEEDED', cost_nanos = 1200, input_tokens = 50,
                   output_tokens = 50 WHERE id = $1""",
            held,
        )
        settled = await store.get("w", "b")
        assert (settled.current.spent_nanos, settled.current.reserved_nanos) == (1200, 0)
        assert await conn.fetchval("SELECT token_refund FROM budget_settlements") == 200
    finally:
        await conn.close()


async def test_budget_gauges_follow_spend_and_a_deleted_budget_loses_its_series(
    workspace: Workspace, execution_stub: Stub, execution: RunningExecution
) -> None:
    ws = await workspace(openai=openai_key())
    admin = execution_stub("admin")
    budget = await create_budget(admin, ws, limit_nanos=10 * WORST_CASE)
    done = await run(execution_stub(), request(ws))
    assert done.error is None
    await budget_metrics.refresh(execution.pool, limit=10_000)
    spent = metric("execution_budget_spent_nanodollars", budget=budget.name)
    assert spent == done.completed.cost_nanos > 0
    remaining = metric("execution_budget_remaining_nanodollars", budget=budget.name)
    assert remaining == 10 * WORST_CASE - spent
    await admin.DeleteBudget(pb.DeleteBudgetRequest(name=budget.name))
    await budget_metrics.refresh(execution.pool, limit=10_000)
    assert (
        REGISTRY.get_sample_value("execution_budget_remaining_nanodollars", {"budget": budget.name})
        is None
    )
