"""Calling the provider while the RUNNING row is written.

An execution's row is written, with its admission (budgets, rate limits, the agent's
version) in the same statement, before any of its output reaches the caller: `Started`
names a row that exists, and a refusal comes before any text. Normally the row is also
written before the provider is called. When nothing is expected to refuse the execution,
the provider request goes out at once instead and the write runs meanwhile, so its round
trip leaves the time to first token: the first text waits, if need be, for the write.

Nothing is expected to refuse it when it has no request id (no earlier execution to answer
instead), and the last admission of its workspace and agent in this process found no
budget. Every replica hears of a new budget at once, whichever created it (PostgreSQL
NOTIFY, `change_notices`), and knows no such scope while it does not listen (at start, after
a lost connection). Should the write refuse an execution all the same (a budget whose notice
had not arrived yet, the agent changed under this process's cached copy, the database
failing), its provider request is closed before any output reached the caller, and the
execution is refused or runs the ordinary way. A write that fails for want of the database
makes every scope unknown again, so that in an outage executions fail before any provider
call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator

__all__ = ["EarlyStream", "UnbudgetedScopes"]

# Scopes remembered at most (least recently used go first): a forgotten one merely runs
# its next execution the ordinary way.
MAX_SCOPES = 100_000


class UnbudgetedScopes:
    """The (workspace, agent id) pairs whose last admission here found no budget, while new
    budgets are heard of (`hearing`, see `change_notices`); none otherwise."""

    def __init__(self, capacity: int = MAX_SCOPES) -> None:
        self._capacity = capacity
        self._scopes: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.hearing = False

    def __contains__(self, scope: tuple[str, str]) -> bool:
        return scope in self._scopes

    def hear(self, hearing: bool) -> None:
        """New budgets are heard of from now on, or no longer: nothing learned before counts."""
        self._scopes.clear()
        self.hearing = hearing

    def learn(self, workspace: str, agent_id: str, *, budgeted: bool) -> None:
        """What an admission found for the scope."""
        scope = (workspace, agent_id)
        if budgeted or not self.hearing:
            self._scopes.pop(scope, None)
            return
        self._scopes[scope] = None
        self._scopes.move_to_end(scope)
        if len(self._scopes) > self._capacity:
            self._scopes.popitem(last=False)

    def forget_workspace(self, workspace: str) -> None:
        """A budget was created in `workspace`: any scope of it may now have one."""
        for scope in [s for s in self._scopes if s[0] == workspace]:
            del self._scopes[scope]

    def clear(self) -> None:
        self._scopes.clear()


class _End:
    """The stream ended without any text."""


class EarlyStream:
    """A provider stream already under way: its first text is awaited in a task of its own
    from the start, so that the request goes out while the caller does something else."""

    def __init__(self, texts: AsyncGenerator[str, None]) -> None:
        self._texts = texts
        self._first: asyncio.Task[str | _End] = asyncio.create_task(self._first_text())

    async def _first_text(self) -> str | _End:
        async for text in self._texts:
            return text
        return _End()

    async def texts(self) -> AsyncIterator[str]:
        """The whole stream's texts, the first included; its failure raises here."""
        first = await self._first
        if isinstance(first, _End):
            return
        yield first
        async for text in self._texts:
            yield text

    async def close(self) -> None:
        """End the stream here, whatever its state: its provider request is closed."""
        if not self._first.done():
            self._first.cancel()
            await asyncio.wait([self._first])
        if not self._first.cancelled():
            with contextlib.suppress(Exception):
                self._first.result()  # retrieved, so that asyncio does not log it as lost
        await self._texts.aclose()
