"""Group writes: calls that arrive while a write is in flight go out together, as one
statement, one round trip and one durable commit.

A lone call is written at once, by its caller, alone: nothing waits when the service is
idle. Only what arrives while a write is in flight queues, and goes out in the next batch
(at most ``max_batch`` items). Each caller still gets its own result, only once its batch is
committed, or the error its own write raised. A batch is all or nothing in PostgreSQL, so
when its statement fails for any other reason than an outage (one row refused, a deadlock),
its items are written again one by one, and only the item at fault fails.

A write of one item runs in its caller's context (its trace, as without batching); a
batch's runs in none, since it belongs to no one call.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service_kit.db import UNAVAILABLE_ERRORS

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Call(Generic[Item, Result]):
    item: Item
    done: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class GroupWriter(Generic[Item, Result]):
    """``write_one(item)``, with concurrent calls batched into ``write_many(items)``.

    ``write_many`` returns one entry per item, in order: its result, or None for an item the
    batch could not settle, which ``settle(item)`` then answers in its caller's context
    (``write_one`` unless given). ``key`` names what a statement may change only once: a
    second item with a key already in a batch waits for the next one. ``observe`` hears the
    number of items of each statement sent (a metric)."""

    def __init__(
        self,
        write_one: Callable[[Item], Awaitable[Result]],
        write_many: Callable[[list[Item]], Awaitable[Sequence[Result | None]]],
        *,
        max_batch: int,
        settle: Callable[[Item], Awaitable[Result]] | None = None,
        key: Callable[[Item], Hashable] | None = None,
        observe: Callable[[int], None] = lambda size: None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write_one = write_one
        self._write_many = write_many
        self._settle = settle or write_one
        self._key = key
        self._observe = observe
        self._max_batch = max_batch
        self._queue: deque[_Call[Item, Result]] = deque()
        self._busy = False  # a write is in flight: a new call queues
        self._leader: asyncio.Task[None] | None = None  # writes what queued
        # Counted for tests and benchmarks: the statements sent, and the most items one took.
        self.statements = 0
        self.largest_batch = 0

    async def write(self, item: Item) -> Result:
        """As ``write_one(item)``, shared with whatever else is waiting to be written."""
        if self._busy:
            call: _Call[Item, Result] = _Call(item)
            self._queue.append(call)
            return await call.done
        # Nothing in flight: written at once, by the caller itself.
        self._busy = True
        self._count(1)
        try:
            return await self._write_one(item)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """After a write: what queued meanwhile goes out next, led by a task of its own (in
        no call's context)."""
        if self._queue:
            self._leader = asyncio.create_task(self._write_queued(), context=contextvars.Context())
        else:
            self._busy = False

    async def _write_queued(self) -> None:
        """The leader: writes whatever queued up, batch after batch, until nothing waits."""
        try:
            while batch := self._next_batch():
                await self._write(batch)
        finally:
            self._leader = None
            self._busy = False
            if self._queue:  # cancelled: the waiting callers are told so, none waits forever
                for call in self._queue:
                    call.done.cancel()
                self._queue.clear()

    def _count(self, items: int) -> None:
        self.statements += 1
        self.largest_batch = max(self.largest_batch, items)
        self._observe(items)

    def _next_batch(self) -> list[_Call[Item, Result]]:
        """Up to ``max_batch`` queued calls, oldest first; a call whose caller is gone is
        dropped, and one whose key is already in the batch waits for the next."""
        batch: list[_Call[Item, Result]] = []
        keys: set[Hashable] = set()
        later: list[_Call[Item, Result]] = []
        while self._queue and len(batch) < self._max_batch:
            call = self._queue.popleft()
            if call.done.done():
                continue
            if self._key is not None:
                key = self._key(call.item)
                if key in keys:
                    later.append(call)
                    continue
                keys.add(key)
            batch.append(call)
        self._queue.extendleft(reversed(later))
        return batch

    async def _write(self, batch: list[_Call[Item, Result]]) -> None:
        try:
            if len(batch) == 1:
                await self._alone(batch[0])
                return
            self._count(len(batch))
            try:
                results = await self._write_many([call.item for call in batch])
            except UNAVAILABLE_ERRORS as exc:
                for call in batch:
                    _fail(call, exc)
                return
            except Exception:  # one item at fault fails alone
                await asyncio.gather(*(self._alone(call) for call in batch))
                return
            unsettled = []
            for call, result in zip(batch, results, strict=True):
                if result is None:
                    unsettled.append(call)
                elif not call.done.done():
                    call.done.set_result(result)
            await asyncio.gather(*(self._as_caller(c, self._settle) for c in unsettled))
        finally:
            for call in batch:  # cancelled mid-write
                call.done.cancel()

    def _alone(self, call: _Call[Item, Result]) -> asyncio.Task[None]:
        self._count(1)
        return self._as_caller(call, self._write_one)

    def _as_caller(
        self, call: _Call[Item, Result], write: Callable[[Item], Awaitable[Result]]
    ) -> asyncio.Task[None]:
        """``write(item)`` for this call alone, in its caller's context."""

        async def written() -> None:
            try:
                result = await write(call.item)
            except Exception as exc:
                _fail(call, exc)
                return
            if not call.done.done():
                call.done.set_result(result)

        return asyncio.create_task(written(), context=call.context)


def _fail(call: _Call[Item, Result], exc: BaseException) -> None:
    if not call.done.done():
        call.done.set_exception(exc)
