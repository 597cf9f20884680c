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
from service_kit.errors import InvalidArgument
from service_kit.listen import CONNECTION_ERRORS, Listener

log = logging.getLogger(__name__)


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
        self._pool = pool
        self._replica = uuid.uuid4()  # names this process's subscribers in the registry
        self._heard = 0  # the last change heard (changes are heard in commit order)
        self._subscriptions: set[Subscription] = set()
        self._stopping = False
        self._listener = Listener(
            "key change feed",
            database_url,
            CHANNEL,
            self._on_notification,
            on_listening=self._catch_up,
            on_lost=self._end_subscriptions,
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

    @property
    def running(self) -> bool:
        """The feed is listening or trying to (it ends only when stopped)."""
        return self._listener.running

    def start(self) -> None:
        self._listener.start()

    async def wait_live(self, timeout: float) -> bool:
        return await self._listener.wait_live(timeout)

    async def stop(self) -> None:
        """End every subscription (their streams finish normally), then stop listening."""
        self._stopping = True
        self._end_subscriptions()
        await self._listener.stop()

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
        except CONNECTION_ERRORS as exc:  # the change is made; the feed, cut off, ends streams
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
        with contextlib.suppress(*CONNECTION_ERRORS):
            await repo.remove_watcher(self._pool, subscription.id)

    def _on_notification(self, conn: object, pid: int, channel: str, payload: object) -> None:
        change = parse_notification(str(payload))
        if change is None:
            log.warning("unreadable key change notification ignored")
            return
        self._heard = max(self._heard, change.sequence)
        for subscription in list(self._subscriptions):
            subscription._deliver(change)

    def _end_subscriptions(self) -> None:
        for subscription in self._subscriptions:
            subscription._end()
        self._subscriptions.clear()

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        # Listening from here on: every later change will be heard, every earlier one is
        # at most this number.
        self._heard = max(self._heard, await repo.last_committed_change(conn))
        # Streams ended when the connection was lost, perhaps without being unregistered
        # (the database was down): they are not waited for.
        await repo.remove_replica_watchers(conn, self._replica)
