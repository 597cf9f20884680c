"""Budgets and rate limits shared by two execution processes (real processes, real mTLS, one
database): 200 concurrent executions against a nearly exhausted budget never overspend it; a
rate limit taken through one process refuses through the other, with a retry delay; and a
process killed mid-execution does not keep its reservation (the survivor's sweeper releases
it)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from clients import ClientError, Completed, Delta, ExecutionClient, ResourceExhausted, Started
from provider_emulator.server import RunningEmulator, start_emulator
from tests.execution.support import openai_key
from tests.ops.replicas import start_replicas
from tests.ops.test_processes import Spawn, spawn

__all__ = ["spawn"]  # the fixture

MODEL = "gpt-4o-mini"
# gpt-4o-mini: 150 nano-dollars per input token, 600 per output token. A prompt of "hi" is
# bounded by 2 bytes + 8 tokens; the service's default max_tokens is 1024.
WORST_CASE = 10 * 150 + 1024 * 600


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with start_emulator(chunks=5, chunk_delay_ms=20) as running:
        yield running


async def _run(client: ExecutionClient, ws: str, agent_id: str = "a") -> Completed | ClientError:
    try:
        async for event in client.execute(
            ws, agent_id=agent_id, provider="openai", model=MODEL, prompt="hi"
        ):
            if isinstance(event, Completed):
                return event
    except ClientError as err:
        return err
    raise AssertionError("no completed event")


async def test_two_processes_share_budgets_and_rate_limits(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
) -> None:
    replicas = await start_replicas(spawn, pki, make_database)
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    admin = replicas.client(ExecutionClient, replicas.exec_ports, "admin")
    async with replicas.vault() as vaults, replicas.execution() as both, admin:
        await vaults.set_api_key(ws, "openai", openai_key(), base_url=emulator.base_url)
        budget = await admin.create_budget(ws, "tight", limit_nanos=10 * WORST_CASE + 1000)
        outcomes = await asyncio.gather(*(_run(both, ws) for _ in range(200)))
        ran = [o.execution for o in outcomes if isinstance(o, Completed)]
        refused = [o for o in outcomes if isinstance(o, ClientError)]
        assert {e.reason for e in refused} == {"BUDGET_EXCEEDED"}
        assert all(isinstance(e, ResourceExhausted) and e.execution_name for e in refused)
        assert len(ran) >= 10 and len(refused) >= 100
        final = await both.get_budget(ws, "tight")
        assert final.current_period.reserved_nanos == 0
        assert final.current_period.spent_nanos == sum(e.cost_nanos for e in ran)
        assert final.current_period.spent_nanos <= budget.limit_nanos

        # Three requests a minute for agent "r", taken through process 0...
        await admin.create_budget(ws, "rate", agent_id="r", requests_per_minute=3)
        async with replicas.execution(0) as first, replicas.execution(1) as second:
            for _ in range(3):
                assert isinstance(await _run(first, ws, "r"), Completed)
            # ...refused through process 1, with how long to wait.
            limited = await _run(second, ws, "r")
            assert isinstance(limited, ResourceExhausted)
            assert limited.reason == "RATE_LIMITED"
            assert limited.retry_delay is not None and 15 < limited.retry_delay <= 20
            assert "retry after" in str(limited)


async def test_a_killed_process_does_not_keep_its_reservation(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
    emulator: RunningEmulator,
) -> None:
    lease = {"EXECUTION_LEASE_SECONDS": "2", "EXECUTION_SWEEP_INTERVAL_SECONDS": "0.5"}
    replicas = await start_replicas(spawn, pki, make_database, lease)
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    admin = replicas.client(ExecutionClient, replicas.exec_ports, "admin")
    async with (
        start_emulator(chunks=400, chunk_delay_ms=50) as slow,  # 20 s streams
        replicas.vault() as vaults,
        replicas.execution(0) as doomed,
        replicas.execution(1) as survivor,
        admin,
    ):
        await vaults.set_api_key(ws, "openai", openai_key(), base_url=slow.base_url)
        await admin.create_budget(ws, "m", limit_nanos=10 * WORST_CASE)
        stream = doomed.execute(ws, agent_id="a", provider="openai", model=MODEL, prompt="hi")
        assert isinstance(await anext(stream), Started)
        assert isinstance(await anext(stream), Delta)
        held = await survivor.get_budget(ws, "m")
        assert held.current_period.reserved_nanos == WORST_CASE
        replicas.executions[0].send_signal(signal.SIGKILL)
        assert await replicas.executions[0].wait() == -signal.SIGKILL
        with pytest.raises(ClientError):
            async for _ in stream:
                pass
        for _ in range(100):  # the survivor sweeps it within a few seconds
            budget = await survivor.get_budget(ws, "m")
            if budget.current_period.reserved_nanos == 0:
                break
            await asyncio.sleep(0.1)
        assert budget.current_period.reserved_nanos == 0
        assert budget.current_period.remaining_nanos == 10 * WORST_CASE
