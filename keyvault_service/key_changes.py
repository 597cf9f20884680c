"""Key changes as the database announces them, fanned out to this replica's
WatchApiKeyChanges streams.

A trigger (migration 004) notifies the channel `api_key_changes` in the transaction of every
change a reader would see, so every replica hears every change once it commits, whichever
replica made it. The feed listens on a connection of its own: pooled connections go back to
the pool without a session reset, so they must never LISTEN. While that connection is down,
changes go unheard; the feed then ends every subscription and takes new ones only once it
listens again, so that no subscriber believes it hears everything when it does not.

Subscribers acknowledge each change once applied; acknowledgements are kept in the database
(`key_change_watchers`), so that the replica answering a SetApiKey or DeleteApiKey can wait
until every live subscriber of every replica has applied it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from keyvault_service import repository as repo
from keyvault_service.errors import KeyChangesUnavailable
from keyvault_service.names import KeyRef
from service_kit import db
from service_kit.errors import InvalidArgument

log = logging.getLogger(__name__)

# The connection cannot be made or was lost: listen again after a pause.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *db.UNAVAILABLE_ERRORS,
    asyncpg.PostgresError,
)

CHANNEL = "api_key_changes"
# A subscriber this far behind is cut off; it subscribes again and starts afresh.
MAX_PENDING = 1000
# A subscriber that neither acknowledges nor is sent a heartbeat for this long is taken for
# gone (its process died without closing the stream) and no longer waited for.
WATCHER_TTL_SECONDS = 15.0


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

    def __init__(self, heard: int) -> None:
        self.id = uuid.uuid4()
        self.heard_at_start = heard  # changes up to this one committed before it began
        self._queue: asyncio.Queue[KeyChange | None] = asyncio.Queue()
        self._ended = False
        self._failure: Exception | None = None  # why the subscriber's stream must end

    def _deliver(self, change: KeyChange) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= MAX_PENDING:
            self._end()
            return
        self._queue.put_nowait(change)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)

    def fail(self, error: Exception) -> None:
        """End the subscription with `error`, raised to the stream by `next`."""
        self._failure = error
        self._end()

    async def next(self, timeout: float) -> KeyChange | None:
        """The next change, or None when none came within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                change = await self._queue.get()
        except TimeoutError:
            return None
        if change is None:
            raise self._failure or SubscriptionEnded()
        return change


class KeyChangeFeed:
    """LISTENs for key changes on its own connection, reconnecting whenever it is lost."""

    def __init__(
        self,
        database_url: str,
        pool: asyncpg.Pool,
        *,
        reconnect_delay: float = 0.25,
        max_reconnect_delay: float = 2.0,
        check_interval: float = 1.0,
    ) -> None:
        self._database_url = database_url
        self._pool = pool
        self._replica = uuid.uuid4()  # names this process's subscribers in the registry
        self._heard = 0  # the last change heard (changes are heard in commit order)
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._check_interval = check_interval
        self._subscriptions: set[Subscription] = set()
        self._live = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.listener_pid: int | None = None  # the LISTEN connection's backend, while live

    @property
    def live(self) -> bool:
        return self._live.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def running(self) -> bool:
        """The feed is listening or trying to (it ends only when stopped)."""
        return self._task is not None and not self._task.done()

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

    async def wait_applied(self, timeout: float) -> None:
        """Return once every live subscriber, through any replica, has acknowledged every
        change committed before the call, or after `timeout` (logged: a subscriber stuck
        that long is taken for gone)."""
        delay = 0.002
        try:
            async with asyncio.timeout(timeout):
                target = await repo.latest_change(self._pool)
                while await repo.watchers_behind(self._pool, target):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.02)
        except TimeoutError:
            log.warning("key change not acknowledged by every subscriber in time")
        except _CONNECTION_ERRORS as exc:  # the change is made; the feed, cut off, ends streams
            log.warning("key change acknowledgements unknown", extra={"error": type(exc).__name__})

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        if self._stopping or not self.live:
            raise KeyChangesUnavailable("the key vault is not hearing key changes; retry shortly")
        subscription = Subscription(self._heard)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    @contextlib.asynccontextmanager
    async def watcher(self, acknowledgements: AsyncIterator[Any]) -> AsyncIterator[Subscription]:
        """A registered subscription whose subscriber acknowledges changes as it applies them
        (WatchApiKeyChangesRequest messages on `acknowledgements`)."""
        with self.subscribe() as subscription:
            await self.register(subscription)
            recording = asyncio.create_task(
                self.apply_acknowledgements(subscription, acknowledgements)
            )
            try:
                yield subscription
            finally:
                recording.cancel()
                await self.unregister(subscription)

    async def register(self, subscription: Subscription) -> None:
        """Make the subscriber one that changes wait for. It starts from an empty cache, so
        it has nothing to apply for the changes committed before it subscribed."""
        await repo.add_watcher(
            self._pool,
            subscription.id,
            self._replica,
            subscription.heard_at_start,
            WATCHER_TTL_SECONDS,
        )

    async def acknowledge(self, subscription: Subscription, sequence: int) -> None:
        """The subscriber applied every change up to `sequence` (0: it is alive, no more)."""
        await repo.ack_watcher(self._pool, subscription.id, sequence, WATCHER_TTL_SECONDS)

    async def apply_acknowledgements(
        self, subscription: Subscription, requests: AsyncIterator[Any]
    ) -> None:
        """Record the subscriber's acknowledgements (WatchApiKeyChangesRequest messages) as
        they come, until it stops sending or goes away."""
        try:
            async for request in requests:
                if request.acknowledged_sequence > 0:
                    await self.acknowledge(subscription, request.acknowledged_sequence)
        except InvalidArgument as exc:  # a message that does not parse: the caller hears it
            subscription.fail(exc)
        except Exception as exc:  # the stream or the database went away: nothing to record
            log.info("key change acknowledgements ended", extra={"error": type(exc).__name__})

    async def unregister(self, subscription: Subscription) -> None:
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await repo.remove_watcher(self._pool, subscription.id)

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        change = parse_notification(str(payload))
        if change is None:
            log.warning("unreadable key change notification ignored")
            return
        self._heard = max(self._heard, change.sequence)
        for subscription in list(self._subscriptions):
            subscription._deliver(change)

    def _lose(self) -> None:
        self._live.clear()
        self.listener_pid = None
        for subscription in self._subscriptions:
            subscription._end()
        self._subscriptions.clear()

    async def _run(self) -> None:
        delay = self._reconnect_delay
        while not self._stopping:
            try:
                conn = await db.connect(self._database_url, timeout=self._check_interval * 5)
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
        # Listening from here on: every later change will be heard, every earlier one is
        # at most this number.
        self._heard = max(self._heard, await repo.last_committed_change(conn))
        # Streams ended when the connection was lost, perhaps without being unregistered
        # (the database was down): they are not waited for.
        await repo.remove_replica_watchers(conn, self._replica)
        self.listener_pid = conn.get_server_pid()
        self._live.set()
        log.info("key change feed listening")
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await lost.wait()
            if not lost.is_set():  # a silent network fails this check rather than hanging
                await conn.fetchval("SELECT 1", timeout=self._check_interval)
