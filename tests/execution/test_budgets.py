"""Budgets and rate limits through the real pair: the resource's standard methods, admission
that refuses what does not fit (recorded FAILED without a provider call), PRICE_UNKNOWN,
ALERT_ONLY, rate limits with RetryInfo, and what the sweeper releases."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator.server import RunningEmulator
from tests.execution.support import (
    Stub,
    Workspace,
    error_info,
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
