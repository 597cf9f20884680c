"""`execution_executions_interrupted_total` counts what the sweeper fails as INTERRUPTED, so
an alert can tell that a process died with executions in flight."""

from __future__ import annotations

import uuid

from tests.ops.conftest import MeteredPair, scrape

INTERRUPTED = "execution_executions_interrupted_total"


async def test_the_sweeper_counts_the_executions_it_interrupts(metered_pair: MeteredPair) -> None:
    engine, pool = metered_pair.execution.engine, metered_pair.execution.pool
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    orphans = [uuid.uuid4(), uuid.uuid4()]
    await engine.sweep_once()  # nothing of an earlier test left to sweep
    before = await scrape(metered_pair.execution_metrics_port)
    # Two executions whose owner crashed: RUNNING, their lease long expired.
    await pool.executemany(
        """INSERT INTO executions (id, workspace, agent_id, provider, model, state,
               create_time, lease_owner, lease_expires_at)
           VALUES ($1, $2, 'agent-1', 'openai', 'gpt-4o-mini', 'RUNNING',
               now() - interval '1 minute', 'crashed-owner', now() - interval '30 seconds')""",
        [(orphan, ws) for orphan in orphans],
    )

    assert await engine.sweep_once() == 2
    assert await engine.sweep_once() == 0

    after = await scrape(metered_pair.execution_metrics_port)
    assert after.value(INTERRUPTED) - before.value(INTERRUPTED) == 2
