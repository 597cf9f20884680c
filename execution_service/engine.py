"""Runs one execution: record it, fetch the key, stream from the provider, record the end.

The row is written before the provider is called and always ends terminal: SUCCEEDED,
FAILED with a reason, or CANCELLED when the caller goes away (the provider request is then
closed at once, because closing this generator closes the HTTP response).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import asyncpg
import httpx

from execution_service import repository as repo
from execution_service import telemetry
from execution_service.errors import ExecutionInProgress, execution_failed
from execution_service.keys import KeySource
from execution_service.model import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    Execution,
    ExecutionError,
    Outcome,
    Usage,
)
from execution_service.pricing import PriceTable, cost_nanos
from execution_service.providers.base import Finish, TextDelta, UsageReport
from execution_service.providers.call import stream_chat
from execution_service.providers.errors import ErrorReason, ProviderError
from execution_service.providers.registry import get_provider
from execution_service.settings import EngineSettings
from execution_service.token_estimate import resolve_usage
from execution_service.validation import ExecuteCommand
from service_kit import metrics
from service_kit.errors import ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    execution: Execution


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Completed:
    execution: Execution


Event = Started | Delta | Completed


@dataclass
class _Progress:
    """What one execution has seen so far; becomes its Outcome."""

    attempts: int = 0
    parts: list[str] = field(default_factory=list)
    usage: UsageReport | None = None
    finish_reason: str = ""
    first_token_time: dt.datetime | None = None


# The caller's deadline timer started before its request reached this process, so the
# cancellation it causes arrives up to a network delay before the deadline computed here.
DEADLINE_SLACK = 0.25


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ExecutionEngine:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        start_pool: asyncpg.Pool | None = None,
        keys: KeySource,
        http: httpx.AsyncClient,
        prices: PriceTable,
        settings: EngineSettings,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._pool = pool
        # RUNNING rows may go through a pool that commits without waiting for the disk.
        self._start_pool = start_pool or pool
        self._keys = keys
        self._http = http
        self._prices = prices
        self._settings = settings
        self.owner = owner or f"execution-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._now = now
        self._base_urls = {
            "openai": settings.openai_base_url,
            "anthropic": settings.anthropic_base_url,
        }

    # --- Execute ----------------------------------------------------------------------------

    async def execute(
        self, cmd: ExecuteCommand, *, deadline: float | None, request_id: str
    ) -> AsyncGenerator[Event, None]:
        """Started, then Deltas, then Completed; a failure raises a ServiceError naming the
        execution after its FAILED row is written."""
        if cmd.request_id:
            existing = await repo.get_by_request_id(self._pool, cmd.workspace, cmd.request_id)
            if existing is not None:
                async for event in self._replay(existing):
                    yield event
                return
        execution = await repo.insert_running(
            self._start_pool,
            Execution(
                id=uuid.uuid4(),
                workspace=cmd.workspace,
                agent_id=cmd.agent_id,
                provider=cmd.provider,
                model=cmd.chat.model,
                state=RUNNING,
                create_time=self._now(),
                request_id=cmd.request_id,
                labels=cmd.labels,
            ),
            lease_owner=self.owner,
            lease_seconds=self._settings.lease_seconds,
        )
        if execution is None:  # a concurrent duplicate took the request id first
            assert cmd.request_id is not None
            existing = await repo.get_by_request_id(self._pool, cmd.workspace, cmd.request_id)
            assert existing is not None
            async for event in self._replay(existing):
                yield event
            return

        metrics.EXECUTIONS_IN_FLIGHT.inc()  # until _finish, which every path below reaches
        progress = _Progress()
        try:
            yield Started(execution)
            async for text in self._stream(cmd, progress, deadline, request_id):
                yield Delta(text)
        except (asyncio.CancelledError, GeneratorExit):
            if deadline is not None and self._clock() >= deadline - DEADLINE_SLACK:
                error = ExecutionError("DEADLINE_EXCEEDED", "the caller's deadline passed")
                await asyncio.shield(self._finish(execution, cmd, progress, FAILED, error))
            else:
                error = ExecutionError("CANCELLED", "the caller cancelled the call")
                await asyncio.shield(self._finish(execution, cmd, progress, CANCELLED, error))
            raise
        except ProviderError as err:
            error = ExecutionError(str(err.reason), err.message, err.status)
            await self._finish(execution, cmd, progress, FAILED, error)
            raise execution_failed(error.reason, error.message, execution.name) from None
        except ServiceError as err:  # key vault unavailable, key not configured
            error = ExecutionError(err.reason, err.message)
            await self._finish(execution, cmd, progress, FAILED, error)
            err.metadata["execution"] = execution.name
            raise
        except Exception:
            log.exception("execution failed unexpectedly", extra={"execution": execution.name})
            error = ExecutionError("INTERNAL", "internal error")
            await asyncio.shield(self._finish(execution, cmd, progress, FAILED, error))
            raise
        finished = await self._finish(execution, cmd, progress, SUCCEEDED, None)
        yield Completed(finished)

    async def _stream(
        self, cmd: ExecuteCommand, progress: _Progress, deadline: float | None, request_id: str
    ) -> AsyncIterator[str]:
        provider = get_provider(cmd.provider)
        refetched = False
        while True:
            key, from_cache = await self._keys.get(cmd.workspace, cmd.provider, request_id)
            attempts_before = progress.attempts

            def count_attempt(n: int, before: int = attempts_before) -> None:
                progress.attempts = before + n
                metrics.PROVIDER_ATTEMPTS.labels(cmd.provider).inc()

            def count_retry(failure: ProviderError) -> None:
                metrics.PROVIDER_RETRIES.labels(cmd.provider, failure.reason.value).inc()

            events = stream_chat(
                self._http,
                provider,
                cmd.chat,
                key.secret,
                base_url=key.base_url or self._base_urls[cmd.provider],
                policy=self._settings.retry,
                default_max_tokens=self._settings.default_max_tokens,
                deadline=deadline,
                on_attempt=count_attempt,
                on_retry=count_retry,
            )
            try:
                async with aclosing(events):
                    async for event in events:
                        if isinstance(event, TextDelta):
                            if progress.first_token_time is None:
                                progress.first_token_time = self._now()
                            progress.parts.append(event.text)
                            yield event.text
                        elif isinstance(event, UsageReport):
                            progress.usage = event
                        elif isinstance(event, Finish):
                            progress.finish_reason = event.reason
                return
            except ProviderError as err:
                # A cached key the provider now refuses was probably rotated: fetch it again.
                stale = err.reason == ErrorReason.PROVIDER_AUTH_FAILED and from_cache
                if stale and not refetched and not progress.parts:
                    self._keys.invalidate(cmd.workspace, cmd.provider)
                    refetched = True
                    count_retry(err)
                    continue
                raise

    async def _finish(
        self,
        execution: Execution,
        cmd: ExecuteCommand,
        progress: _Progress,
        state: str,
        error: ExecutionError | None,
    ) -> Execution:
        try:
            outcome = self._outcome(cmd, progress, state, error)
            price = self._prices.lookup(cmd.chat.model)
            telemetry.execution_finished(
                execution, outcome, model_family=price.family if price else None
            )
            return await repo.finish(self._pool, execution, outcome)
        finally:
            metrics.EXECUTIONS_IN_FLIGHT.dec()

    def _outcome(
        self,
        cmd: ExecuteCommand,
        progress: _Progress,
        state: str,
        error: ExecutionError | None,
    ) -> Outcome:
        text = "".join(progress.parts)
        if progress.usage is None and not text:
            usage = Usage()  # the provider never answered with anything billable
        else:
            resolved = resolve_usage(progress.usage, prompt=cmd.chat.messages, output_text=text)
            usage = Usage(
                resolved.input_tokens,
                resolved.output_tokens,
                resolved.cache_read_tokens,
                resolved.cache_write_tokens,
                resolved.estimated,
            )
        return Outcome(
            state=state,
            usage=usage,
            cost_nanos=cost_nanos(self._prices, cmd.chat.model, usage),
            attempts=progress.attempts,
            error=error,
            finish_reason=progress.finish_reason,
            output_text=text if self._settings.store_output else None,
            first_token_time=progress.first_token_time,
            end_time=self._now(),
        )

    async def _replay(self, existing: Execution) -> AsyncIterator[Event]:
        """A duplicate request id: a finished execution is answered from its record."""
        if not existing.is_terminal:
            raise ExecutionInProgress(existing.name, existing.request_id or "")
        yield Started(existing)
        if existing.output_text:
            yield Delta(existing.output_text)
        yield Completed(existing)

    # --- leases -----------------------------------------------------------------------------

    async def keep_leases(self) -> None:
        """Renew this process's running executions' leases, forever."""
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await repo.renew_leases(self._pool, self.owner, self._settings.lease_seconds)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("lease renewal failed", extra={"error": type(exc).__name__})

    async def sweep_once(self) -> int:
        swept = await repo.fail_expired_leases(
            self._pool, "the process running this execution stopped before it finished"
        )
        if swept:
            log.warning("marked interrupted executions failed", extra={"count": swept})
        return swept

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            try:
                await self.sweep_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("sweep failed", extra={"error": type(exc).__name__})
