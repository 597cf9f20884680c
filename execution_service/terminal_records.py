"""Writing an execution's terminal record, and keeping it while the database is unavailable.

Records are written through a group commit (`execution_service.group_commit`): concurrent
finishes share one statement and one durable commit, and each caller still waits for its own.
A record the database refuses is not dropped: it stays in memory and is retried with backoff
until it lands or ``retry_for`` seconds have passed. Past that bound it is logged at ERROR
with its outcome and counted as lost; its row, still RUNNING with a lease that nobody renews,
is left to the sweeper (FAILED, INTERRUPTED). The metrics and the ``execution finished`` log
line count an outcome only once the database holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from execution_service import telemetry
from execution_service.group_commit import DEFAULT_MAX_BATCH, GroupCommit
from execution_service.model import Execution, Outcome
from execution_service.retry import RetryPolicy, next_delay
from service_kit import metrics
from service_kit.db import UNAVAILABLE_ERRORS, Executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TerminalRecord:
    execution: Execution  # as it started (the RUNNING row)
    outcome: Outcome
    model_family: str | None  # the metrics' model label (None: no listed price)


def retry_delay(
    policy: RetryPolicy,
    failures: int,
    *,
    elapsed: float,
    retry_for: float,
    rand: Callable[[], float],
) -> float | None:
    """Seconds to wait before the next write of a record that failed ``failures`` times,
    ``elapsed`` seconds after its first failure; None once ``retry_for`` seconds have passed.
    The last wait ends at the bound, so the bound itself gets one last attempt."""
    remaining = retry_for - elapsed
    if remaining <= 0:
        return None
    return min(next_delay(policy, failures, None, rand), remaining)


class TerminalRecords:
    """Writes terminal records; keeps and retries the ones the database refused."""

    def __init__(
        self,
        pool: Executor,
        *,
        retry_for: float,
        backoff: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.writer = GroupCommit(pool, max_batch=max_batch)
        self._retry_for = retry_for
        self._backoff = backoff
        self._clock = clock
        self._rand = rand
        self._pending: dict[uuid.UUID, TerminalRecord] = {}
        self._retries: dict[uuid.UUID, asyncio.Task[None]] = {}

    def pending_ids(self) -> list[uuid.UUID]:
        return list(self._pending)

    async def record(self, record: TerminalRecord) -> Execution | None:
        """The execution as recorded, or None when the database is unavailable: the record
        is then kept and retried in the background."""
        try:
            return await self._write(record)
        except UNAVAILABLE_ERRORS as exc:
            self._keep(record, exc)
            return None

    async def close(self, timeout: float) -> None:
        """At shutdown: keep trying every pending record, with the same backoff, for at most
        ``timeout`` seconds; the ones still pending then are lost (logged and counted)."""
        for task in list(self._retries.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        started, failures = self._clock(), 0
        while self._pending:
            remaining = timeout - (self._clock() - started)
            if remaining <= 0:
                break
            attempts = [asyncio.create_task(self._last_attempt(r)) for r in self._pending.values()]
            _, late = await asyncio.wait(attempts, timeout=remaining)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            failures += 1
            delay = retry_delay(
                self._backoff,
                failures,
                elapsed=self._clock() - started,
                retry_for=timeout,
                rand=self._rand,
            )
            if not self._pending or delay is None:
                break
            await asyncio.sleep(delay)
        for record in list(self._pending.values()):
            self._lose(record, "the service stopped before the database took it")

    async def _write(self, record: TerminalRecord) -> Execution:
        execution, outcome = record.execution, record.outcome
        recorded, ours = await self.writer.finish(execution, outcome)
        if ours:
            telemetry.execution_finished(execution, outcome, model_family=record.model_family)
        else:
            log.warning(
                "execution already finished",
                extra={"execution": execution.name, "state": recorded.state},
            )
        return recorded

    def _keep(self, record: TerminalRecord, exc: BaseException) -> None:
        execution_id = record.execution.id
        self._pending[execution_id] = record
        metrics.EXECUTION_RECORDS_PENDING.inc()
        log.warning(
            "execution record pending: the database is unavailable",
            extra={
                "execution": record.execution.name,
                "state": record.outcome.state,
                "error": type(exc).__name__,
            },
        )
        self._retries[execution_id] = asyncio.create_task(self._retry(record))

    async def _retry(self, record: TerminalRecord) -> None:
        execution_id = record.execution.id
        first_failure, failures = self._clock(), 1
        try:
            while True:
                delay = retry_delay(
                    self._backoff,
                    failures,
                    elapsed=self._clock() - first_failure,
                    retry_for=self._retry_for,
                    rand=self._rand,
                )
                if delay is None:
                    self._lose(record, "the database stayed unavailable")
                    return
                await asyncio.sleep(delay)
                try:
                    await self._write(record)
                except UNAVAILABLE_ERRORS:
                    failures += 1
                    continue
                except Exception:
                    self._refused(record)
                    return
                self._landed(record, failures)
                return
        finally:
            self._retries.pop(execution_id, None)

    async def _last_attempt(self, record: TerminalRecord) -> None:
        try:
            await self._write(record)
        except UNAVAILABLE_ERRORS:
            return  # still pending: `close` decides
        except Exception:
            self._refused(record)
            return
        self._landed(record, None)

    def _refused(self, record: TerminalRecord) -> None:
        """Not an outage (a bug, a constraint): retrying would not help."""
        log.exception("execution record refused", extra={"execution": record.execution.name})
        self._lose(record, "the database refused it")

    def _landed(self, record: TerminalRecord, failures: int | None) -> None:
        if self._pending.pop(record.execution.id, None) is not None:
            metrics.EXECUTION_RECORDS_PENDING.dec()
        log.info(
            "execution record written after the database came back",
            extra={"execution": record.execution.name, "failed_writes": failures},
        )

    def _lose(self, record: TerminalRecord, why: str) -> None:
        if self._pending.pop(record.execution.id, None) is None:
            return
        metrics.EXECUTION_RECORDS_PENDING.dec()
        execution, outcome = record.execution, record.outcome
        metrics.EXECUTION_RECORDS_LOST.labels(execution.provider, outcome.state).inc()
        usage = outcome.usage
        log.error(
            "execution record lost; the sweeper will mark its row INTERRUPTED",
            extra={
                "execution": execution.name,
                "why": why,
                "state": outcome.state,
                "reason": outcome.error.reason if outcome.error else None,
                "attempts": outcome.attempts,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "usage_estimated": usage.estimated,
                "cost_nanos": outcome.cost_nanos,
            },
        )
