"""CancelExecution through any replica.

The replica taking the call records the request on the execution's row and notifies the
channel `execution_cancels` with the execution's id, in one statement
(`repository.request_cancel`). Every replica LISTENs on a connection of its own (pooled
connections go back to the pool without a session reset, so they must never LISTEN); the one
running the execution cancels its stream, which closes the provider request at once and
records the execution CANCELLED, naming who asked. While that connection is down,
notifications go unheard: each time it listens again, the replica looks for cancel requests
on the executions it is running, so none is missed for longer than a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import asyncpg

from execution_service import repository as repo
from execution_service.engine import ExecutionEngine
from execution_service.errors import ExecutionAlreadyFinished, ExecutionNotFound
from execution_service.model import Execution
from service_kit.listen import CONNECTION_ERRORS, Listener

log = logging.getLogger(__name__)

# How long CancelExecution waits for the owner's CANCELLED record before answering with the
# execution as it stands.
CANCEL_WAIT_SECONDS = 2.0  # the record normally lands in ~15 ms; this bounds a slow or gone owner


async def request_cancel(
    pool: asyncpg.Pool,
    engine: ExecutionEngine,
    workspace: str,
    execution_id: uuid.UUID,
    caller: str,
    *,
    wait: float = CANCEL_WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Execution:
    """Ask for a running execution to be cancelled; the execution once its owner recorded
    it CANCELLED, or as it stands after `wait` seconds (still RUNNING: the owner is slow or
    gone; the request stays recorded and is carried out, or the sweeper ends it)."""
    name = f"workspaces/{workspace}/executions/{execution_id}"
    request = await repo.request_cancel(pool, workspace, execution_id, caller)
    if not request.found:
        raise ExecutionNotFound(name)
    if not request.accepted:
        raise ExecutionAlreadyFinished(name)
    if request.lease_owner == engine.owner:  # running here: no need to wait for the notice
        engine.cancel(execution_id, caller)
    ends = clock() + wait
    delay = 0.005
    while True:
        execution = await repo.get(pool, workspace, execution_id)
        if execution is None:
            raise ExecutionNotFound(name)
        if execution.is_terminal or clock() >= ends:
            return execution
        await asyncio.sleep(min(delay, max(ends - clock(), 0)))
        delay = min(delay * 2, 0.05)


def parse_notification(payload: str) -> uuid.UUID | None:
    """The execution a notification names; None for anything else."""
    try:
        return uuid.UUID(payload)
    except ValueError:
        return None


class CancelFeed:
    """LISTENs for cancel requests on its own connection, reconnecting whenever it is lost,
    and cancels those that name an execution this process is running."""

    def __init__(
        self,
        database_url: str,
        pool: asyncpg.Pool,
        engine: ExecutionEngine,
        *,
        reconnect_delay: float = 0.25,
        max_reconnect_delay: float = 2.0,
        check_interval: float = 1.0,
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._lookups: set[asyncio.Task[None]] = set()
        self._listener = Listener(
            "cancel feed",
            database_url,
            repo.CANCELS_CHANNEL,
            self._on_notification,
            on_listening=self._catch_up,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            check_interval=check_interval,
        )

    @property
    def live(self) -> bool:
        return self._listener.live

    @property
    def listener_pid(self) -> int | None:
        return self._listener.listener_pid

    def start(self) -> None:
        self._listener.start()

    async def wait_live(self, timeout: float) -> bool:
        return await self._listener.wait_live(timeout)

    async def stop(self) -> None:
        await self._listener.stop()
        for task in list(self._lookups):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def apply_requests(self, db_: asyncpg.Pool | asyncpg.Connection) -> int:
        """Cancel the executions running here that have a cancel request; how many."""
        requests = await repo.cancel_requests(db_, self._engine.streaming())
        return sum(self._engine.cancel(execution_id, by) for execution_id, by in requests)

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        execution_id = parse_notification(str(payload))
        if execution_id is None:
            log.warning("unreadable cancel notification ignored")
            return
        if execution_id not in self._engine.streaming():
            return  # another replica's, or already over
        lookup = asyncio.create_task(self._apply_one(execution_id))
        self._lookups.add(lookup)
        lookup.add_done_callback(self._lookups.discard)

    async def _apply_one(self, execution_id: uuid.UUID) -> None:
        """Read who asked (the notice carries only the id), then cancel."""
        try:
            for found, by in await repo.cancel_requests(self._pool, [execution_id]):
                self._engine.cancel(found, by)
        except CONNECTION_ERRORS as exc:  # the next reconnect's check will find it
            log.warning("cancel request not read", extra={"error": type(exc).__name__})

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Requests made while not listening are found now."""
        missed = await self.apply_requests(conn)
        if missed:
            log.info("cancel requests found on reconnect", extra={"count": missed})
