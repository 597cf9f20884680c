"""Group commit of terminal records: finishes that arrive while one is being written go out
together, as one statement and one durable commit.

A lone finish is written at once, by its caller, as `repository.finish` alone: nothing waits
when the service is idle. Only what arrives while a write is in flight queues, and goes out
in the next batch (at most ``max_batch`` records).
Each caller still gets its own result, only once its record is committed: the execution as
recorded, or the error its own write raised. A batch is all or nothing in PostgreSQL, so
when its statement fails for any other reason than an outage (one row refused, a deadlock),
its records are written again one by one, and only the record at fault fails.

A statement for one record runs in its caller's context (its trace, as before); a batch's
runs in none, since it belongs to no one call.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field

from execution_service import repository as repo
from execution_service.model import Execution, Outcome
from service_kit import metrics
from service_kit.db import UNAVAILABLE_ERRORS, Executor

# Enough to take a full load's finishes in one or two round trips, small enough that one
# statement stays short (each row runs its triggers).
DEFAULT_MAX_BATCH = 64

Recorded = tuple[Execution, bool]  # as `repository.finish` returns it


@dataclass
class _Finish:
    execution: Execution
    outcome: Outcome
    done: asyncio.Future[Recorded] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class GroupCommit:
    """`repository.finish`, with concurrent calls batched into one statement."""

    def __init__(self, pool: Executor, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._pool = pool
        self._max_batch = max_batch
        self._queue: deque[_Finish] = deque()
        self._busy = False  # a write is in flight: a new record queues
        self._writer: asyncio.Task[None] | None = None  # the leader of the queued records
        # Counted for tests and benchmarks: the statements sent, and the most records one took.
        self.statements = 0
        self.largest_batch = 0

    async def finish(self, execution: Execution, outcome: Outcome) -> Recorded:
        """As `repository.finish`: the execution as recorded, and whether this outcome is
        what was recorded; raises what writing this record raised."""
        if self._busy:
            item = _Finish(execution, outcome)
            self._queue.append(item)
            return await item.done
        # Nothing in flight: written at once, by the caller itself, as before.
        self._busy = True
        self._count(1)
        try:
            return await repo.finish(self._pool, execution, outcome)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """After a write: what queued meanwhile goes out next, led by a task of its own (in
        no call's context)."""
        if self._queue:
            self._writer = asyncio.create_task(self._write_queued(), context=contextvars.Context())
        else:
            self._busy = False

    async def _write_queued(self) -> None:
        """The leader: writes whatever queued up, batch after batch, until nothing waits."""
        try:
            while batch := self._next_batch():
                await self._write(batch)
        finally:
            self._writer = None
            self._busy = False
            if self._queue:  # cancelled: the waiting callers are told so, none waits forever
                for item in self._queue:
                    item.done.cancel()
                self._queue.clear()

    def _count(self, records: int) -> None:
        self.statements += 1
        self.largest_batch = max(self.largest_batch, records)
        metrics.RECORD_BATCH_SIZE.observe(records)

    def _next_batch(self) -> list[_Finish]:
        """Up to ``max_batch`` queued records, oldest first; a record whose caller is gone is
        dropped, and a second record of an execution already in the batch waits for the next
        one (a statement may change a row only once)."""
        batch: list[_Finish] = []
        ids: set[uuid.UUID] = set()
        later: list[_Finish] = []
        while self._queue and len(batch) < self._max_batch:
            item = self._queue.popleft()
            if item.done.done():
                continue
            if item.execution.id in ids:
                later.append(item)
                continue
            ids.add(item.execution.id)
            batch.append(item)
        self._queue.extendleft(reversed(later))
        return batch

    async def _write(self, batch: list[_Finish]) -> None:
        try:
            if len(batch) == 1:
                await _as_caller(batch[0], self._write_one(batch[0]))
                return
            self._count(len(batch))
            try:
                ours = await repo.finish_many(
                    self._pool, [(item.execution, item.outcome) for item in batch]
                )
            except UNAVAILABLE_ERRORS as exc:
                for item in batch:
                    _fail(item, exc)
                return
            except Exception:  # one record at fault fails alone
                await asyncio.gather(*(_as_caller(i, self._write_one(i)) for i in batch))
                return
            for item in batch:
                if item.execution.id in ours:
                    _resolve(item, (repo.finished(item.execution, item.outcome), True))
            await asyncio.gather(
                *(_as_caller(i, self._read_back(i)) for i in batch if not i.done.done())
            )
        finally:
            for item in batch:  # cancelled mid-write
                item.done.cancel()

    async def _write_one(self, item: _Finish) -> None:
        self._count(1)
        try:
            recorded = await repo.finish(self._pool, item.execution, item.outcome)
        except Exception as exc:
            _fail(item, exc)
            return
        _resolve(item, recorded)

    async def _read_back(self, item: _Finish) -> None:
        """A record the batch did not write: the execution was terminal already."""
        try:
            recorded = await repo.recorded(self._pool, item.execution.id)
        except Exception as exc:
            _fail(item, exc)
            return
        _resolve(item, (recorded, False))


def _as_caller(item: _Finish, write: Coroutine[object, object, None]) -> asyncio.Task[None]:
    """A write of this record alone, in its caller's context."""
    return asyncio.create_task(write, context=item.context)


def _resolve(item: _Finish, recorded: Recorded) -> None:
    if not item.done.done():
        item.done.set_result(recorded)


def _fail(item: _Finish, exc: BaseException) -> None:
    if not item.done.done():
        item.done.set_exception(exc)
