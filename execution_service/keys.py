"""Provider keys from the key vault over mTLS, cached in memory for a short TTL while the
vault's key-change announcements are heard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.errors import ApiKeyNotConfigured, KeyVaultUnavailable
from service_kit import metrics
from service_kit.call_context import REQUEST_ID_HEADER
from service_kit.secret import Secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderKey:
    secret: Secret
    base_url: str | None
    fingerprint: str


@dataclass(frozen=True)
class _Cached:
    key: ProviderKey
    expires_at: float


@dataclass
class _Fetch:
    """A RevealApiKey in flight. `current` turns False when the key changes (or the change
    subscription is lost or restarted) while it runs: its answer may predate the change, so
    it is neither cached nor shared with executions that start afterwards."""

    answer: asyncio.Future[ProviderKey]
    current: bool = True


class KeySource:
    """RevealApiKey with a TTL cache that is trusted only while the vault's key-change
    subscription is live (see execution_service.key_watch): a change or deletion drops the
    key at once, and while the subscription is down every lookup asks the vault afresh.
    Concurrent misses for one key share a single call."""

    def __init__(
        self,
        vault: kv_grpc.KeyVaultServiceStub,
        *,
        ttl: float,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self._vault = vault
        self._max_entries = max_entries
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._inflight: dict[tuple[str, str], _Fetch] = {}
        self._subscribed = asyncio.Event()

    # --- what the key-change subscription reports ---------------------------------------

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    async def wait_subscribed(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        return self.subscribed

    def subscription_started(self) -> None:
        """Changes are heard from now on; what was cached before may be stale."""
        self.forget_all()
        self._subscribed.set()

    def subscription_lost(self) -> None:
        """Changes may go unheard: trust nothing cached until subscribed again."""
        self._subscribed.clear()
        self.forget_all()

    def key_changed(self, workspace: str, provider: str) -> None:
        slot = (workspace, provider)
        self._cache.pop(slot, None)
        fetch = self._inflight.pop(slot, None)
        if fetch is not None:
            fetch.current = False

    def forget_all(self) -> None:
        self._cache.clear()
        for fetch in self._inflight.values():
            fetch.current = False
        self._inflight.clear()

    def invalidate(self, workspace: str, provider: str) -> None:
        self._cache.pop((workspace, provider), None)

    # --- lookups -----------------------------------------------------------------------

    async def get(self, workspace: str, provider: str, request_id: str) -> tuple[ProviderKey, bool]:
        """The key and whether it came from the cache."""
        if not self.subscribed:  # a change could have gone unheard: ask the vault
            metrics.child(metrics.KEY_CACHE_LOOKUPS, "bypass").inc()
            return await self._reveal(workspace, provider, request_id), False
        slot = (workspace, provider)
        cached = self._cache.get(slot)
        if cached is not None and cached.expires_at > self._clock():
            metrics.child(metrics.KEY_CACHE_LOOKUPS, "hit").inc()
            return cached.key, True
        metrics.child(metrics.KEY_CACHE_LOOKUPS, "miss").inc()
        pending = self._inflight.get(slot)
        if pending is not None:
            try:
                return await asyncio.shield(pending.answer), False
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.answer.cancelled() or (task is not None and task.cancelling()):
                    raise  # this caller was cancelled, not the one fetching for it
            # The caller that was fetching went away; that says nothing about this one.
            return await self.get(workspace, provider, request_id)
        fetch = _Fetch(asyncio.get_running_loop().create_future())
        self._inflight[slot] = fetch
        try:
            key = await self._reveal(workspace, provider, request_id)
        except asyncio.CancelledError:
            fetch.answer.cancel()  # waiters fetch for themselves rather than inherit the cancel
            raise
        except BaseException as exc:
            fetch.answer.set_exception(exc)
            fetch.answer.exception()  # consumed: waiters re-raise it, nobody else needs to
            raise
        else:
            fetch.answer.set_result(key)
            if self._ttl > 0 and fetch.current:
                self._remember(slot, key)
            return key, False
        finally:
            if self._inflight.get(slot) is fetch:
                del self._inflight[slot]

    def _remember(self, slot: tuple[str, str], key: ProviderKey) -> None:
        now = self._clock()
        if len(self._cache) >= self._max_entries:
            # Bounded memory however many workspaces pass through: drop what has expired,
            # and if that is not enough, everything (the next calls simply fetch again).
            self._cache = {s: c for s, c in self._cache.items() if c.expires_at > now}
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
        self._cache[slot] = _Cached(key, now + self._ttl)

    async def _reveal(self, workspace: str, provider: str, request_id: str) -> ProviderKey:
        name = f"workspaces/{workspace}/apiKeys/{provider}"
        try:
            response = await self._vault.RevealApiKey(  # type: ignore[misc]
                kv.RevealApiKeyRequest(name=name),
                timeout=self._timeout,
                # A vault coming back is used as soon as the channel reconnects, rather than
                # failing the calls made while the reconnect attempt is still pending.
                wait_for_ready=True,
                metadata=((REQUEST_ID_HEADER, request_id),),
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise ApiKeyNotConfigured(
                    f"workspace {workspace} has no {provider} API key; store one with SetApiKey",
                    metadata={"workspace": workspace, "provider": provider},
                ) from None
            log.warning("key vault call failed", extra={"code": err.code().name, "key": name})
            raise KeyVaultUnavailable(
                f"the key vault could not provide the {provider} key ({err.code().name})"
            ) from None
        return ProviderKey(
            secret=Secret(response.plaintext_key),
            base_url=response.api_key.base_url or None,
            fingerprint=response.api_key.fingerprint,
        )
