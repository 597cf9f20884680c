"""A PostgreSQL LISTEN that stays up: its own connection, watched, reconnected with backoff.

Pooled connections go back to the pool without a session reset (see `db.create_pool`), so
they must never LISTEN: a listener holds a connection of its own. Notifications sent while
that connection is down are never delivered, so whoever listens gets a hook each time the
listen is (re)established, to catch up on what it may have missed, and one each time it is
lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from service_kit import db

log = logging.getLogger(__name__)

# The connection cannot be made or was lost: listen again after a pause.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *db.UNAVAILABLE_ERRORS,
    asyncpg.PostgresError,
)

Notification = Callable[[Any, int, str, object], None]  # asyncpg's listener signature


class Listener:
    """LISTENs on `channel`, reconnecting whenever the connection is lost.

    `on_listening(conn)` runs once the listen is in place and before `live` is set (catch up
    on anything missed while not listening); `on_lost()` runs whenever it is lost."""

    def __init__(
        self,
        name: str,
        database_url: str,
        channel: str,
        on_notification: Notification,
        *,
        on_listening: Callable[[asyncpg.Connection], Awaitable[None]],
        on_lost: Callable[[], None] = lambda: None,
        reconnect_delay: float = 0.25,
        max_reconnect_delay: float = 2.0,
        check_interval: float = 1.0,
    ) -> None:
        self._name = name
        self._database_url = database_url
        self._channel = channel
        self._on_notification = on_notification
        self._on_listening = on_listening
        self._on_lost = on_lost
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._check_interval = check_interval
        self._live = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.listener_pid: int | None = None  # the LISTEN connection's backend, while live

    @property
    def live(self) -> bool:
        return self._live.is_set()

    @property
    def running(self) -> bool:
        """Listening or trying to (it ends only when stopped)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._stopping = False  # a stopped listener may be started again
        self._task = asyncio.create_task(self._run())

    async def wait_live(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._live.wait()
        return self.live

    async def stop(self) -> None:
        # The flag as well as the cancel: Python 3.11's wait_for (inside asyncpg's timeouts)
        # can swallow a cancel that lands as the statement completes; the loops below then
        # still end within a check interval.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self._reconnect_delay
        while not self._stopping:
            try:
                conn = await db.connect(self._database_url, timeout=self._check_interval * 5)
            except CONNECTION_ERRORS as exc:
                log.warning(f"{self._name} cannot connect", extra={"error": type(exc).__name__})
            else:
                try:
                    await self._listen(conn)
                    delay = self._reconnect_delay  # it was up: reconnect promptly
                except CONNECTION_ERRORS as exc:
                    log.warning(f"{self._name} failed", extra={"error": type(exc).__name__})
                except Exception:  # the listener must outlive any one failure
                    log.exception(f"{self._name} failed")
                finally:
                    self._live.clear()
                    self.listener_pid = None
                    self._on_lost()
                    conn.terminate()
                if not self._stopping:
                    log.warning(f"{self._name} lost its database connection; reconnecting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Listen until the connection is lost (closed by the server, or not answering)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(self._channel, self._on_notification)
        await self._on_listening(conn)  # listening from here on: catch up on the rest
        self.listener_pid = conn.get_server_pid()
        self._live.set()
        log.info(f"{self._name} listening")
        while not lost.is_set() and not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await lost.wait()
            if not lost.is_set() and not self._stopping:  # a silent network fails this check
                await conn.fetchval("SELECT 1", timeout=self._check_interval)
