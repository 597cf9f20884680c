"""Key changes as the database announces them, fanned out to this replica's
WatchApiKeyChanges streams.

A trigger (migration 004) notifies the channel `api_key_changes` in the transaction of every
change a reader would see, so every replica hears every change once it commits, whichever
replica made it. The feed listens on a connection of its own: pooled connections go back to
the pool without a session reset, so they must never LISTEN. While that connection is down,
changes go unheard; the feed then ends every subscription and takes new ones only once it
listens again, so that no subscriber believes it hears everything when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from keyvault_service.errors import KeyChangesUnavailable
from keyvault_service.names import KeyRef
from service_kit import db

log = logging.getLogger(__name__)

# The connection cannot be made or was lost: listen again after a pause.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *db.UNAVAILABLE_ERRORS,
    asyncpg.PostgresError,
)

CHANNEL = "api_key_changes"
# A subscriber this far behind is cut off; it subscribes again and starts afresh.
MAX_PENDING = 1000


@dataclass(frozen=True)
class KeyChange:
    ref: KeyRef
    sequence: int


def parse_notification(payload: str) -> KeyChange | None:
    """The change a notification announces; None for anything the trigger does not send."""
    try:
        fields = json.loads(payload)
        change = KeyChange(
            KeyRef(str(fields["workspace"]), str(fields["provider"])), int(fields["sequence"])
        )
    except (ValueError, KeyError, TypeError):
        return None
    return change


class SubscriptionEnded(Exception):
    """The feed stopped hearing changes (database lost, vault stopping, subscriber too slow)."""


class Subscription:
    """The changes heard since it was taken, in order."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[KeyChange | None] = asyncio.Queue()
        self._ended = False
        self._taken = asyncio.Event()  # set whenever the queue has been emptied
        self._taken.set()

    def _deliver(self, change: KeyChange) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= MAX_PENDING:
            self._end()
            return
        self._queue.put_nowait(change)
        self._taken.clear()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)

    async def next(self, timeout: float) -> KeyChange | None:
        """The next change, or None when none came within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                change = await self._queue.get()
        except TimeoutError:
            return None
        if self._queue.empty():
            self._taken.set()
        if change is None:
            raise SubscriptionEnded
        return change

    async def taken(self) -> None:
        """Until every change delivered so far has been taken by the subscriber."""
        while not self._ended and not self._taken.is_set():
            await self._taken.wait()


class KeyChangeFeed:
    """LISTENs for key changes on its own connection, reconnecting whenever it is lost."""

    def __init__(
        self,
        database_url: str,
        *,
        reconnect_delay: float = 0.25,
        max_reconnect_delay: float = 2.0,
        check_interval: float = 1.0,
    ) -> None:
        self._database_url = database_url
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._check_interval = check_interval
        self._subscriptions: set[Subscription] = set()
        self._live = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()  # one query at a time on the LISTEN connection
        self.listener_pid: int | None = None  # the LISTEN connection's backend, while live

    @property
    def live(self) -> bool:
        return self._live.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def wait_live(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._live.wait()
        return self.live

    async def stop(self) -> None:
        """End every subscription (their streams finish normally), then stop listening."""
        self._stopping = True
        self._lose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def catch_up(self, timeout: float) -> None:
        """Return once every change committed before the call has been handed to this
        replica's subscribers (or after `timeout`). A query on the LISTEN connection is the
        barrier: PostgreSQL sends a listener the notifications already committed before its
        answer to the next query, and asyncpg runs their callbacks in that order."""
        conn = self._conn
        if conn is None:  # not listening: every subscription has ended already
            return
        with contextlib.suppress(TimeoutError, *_CONNECTION_ERRORS):
            async with asyncio.timeout(timeout):
                async with self._conn_lock:
                    await conn.fetchval("SELECT 1")
                for subscription in list(self._subscriptions):
                    await subscription.taken()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        if self._stopping or not self.live:
            raise KeyChangesUnavailable("the key vault is not hearing key changes; retry shortly")
        subscription = Subscription()
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        change = parse_notification(str(payload))
        if change is None:
            log.warning("unreadable key change notification ignored")
            return
        for subscription in list(self._subscriptions):
            subscription._deliver(change)

    def _lose(self) -> None:
        self._live.clear()
        self._conn = None
        self.listener_pid = None
        for subscription in self._subscriptions:
            subscription._end()
        self._subscriptions.clear()

    async def _run(self) -> None:
        delay = self._reconnect_delay
        while not self._stopping:
            try:
                conn = await asyncpg.connect(self._database_url, timeout=self._check_interval * 5)
            except _CONNECTION_ERRORS as exc:
                log.warning("key change feed cannot connect", extra={"error": type(exc).__name__})
            else:
                try:
                    await self._listen(conn)
                    delay = self._reconnect_delay  # it was up: reconnect promptly
                except _CONNECTION_ERRORS as exc:
                    log.warning("key change feed failed", extra={"error": type(exc).__name__})
                finally:
                    self._lose()
                    conn.terminate()
                if not self._stopping:
                    log.warning("key change feed lost its database connection; reconnecting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Listen until the connection is lost (closed by the server, or not answering)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._on_notification)
        self.listener_pid = conn.get_server_pid()
        self._conn = conn
        self._live.set()
        log.info("key change feed listening")
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await lost.wait()
            if not lost.is_set():  # a silent network fails this check rather than hanging
                async with self._conn_lock:
                    await conn.fetchval("SELECT 1", timeout=self._check_interval)
