"""Run: walk an execution's routes, each a retrying streamed provider call, and fall back.

The runner alone decides whether to move on to the next route (`routing.falls_back`), and
never once output has reached the caller or the caller's deadline has passed. Each route
fetches its own provider's key from the vault. What it saw goes into `Progress`, which the
engine turns into the execution's record: the answering route's output and usage, and one
`RouteAttempt` for every route that failed or was skipped on the way.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import httpx

from execution_service.keys import KeySource
from execution_service.model import RouteAttempt, Usage
from execution_service.output_check import OutputVerdict
from execution_service.plan import ExecutionPlan, PlannedRoute
from execution_service.pricing import PriceTable, cost_nanos
from execution_service.providers.base import Finish, Refusal, TextDelta, UsageReport
from execution_service.providers.call import stream_chat
from execution_service.providers.errors import ErrorReason, ProviderError
from execution_service.providers.registry import get_provider
from execution_service.routing import falls_back
from execution_service.settings import EngineSettings
from service_kit import metrics
from service_kit.errors import ServiceError


@dataclass
class Progress:
    """What one execution has seen so far; the engine makes it its Outcome. The output
    fields belong to the current route (`route`), the one that answers if any does."""

    attempts: int = 0  # provider HTTP requests, over every route
    parts: list[str] = field(default_factory=list)
    usage: UsageReport | None = None
    finish_reason: str = ""
    first_token_time: dt.datetime | None = None
    refusal: list[str] | None = None  # the refusal's pieces, once the model refused
    verdict: OutputVerdict | None = None  # on the output, once the stream completed
    route: int = 0
    route_start: dt.datetime | None = None
    route_started_at: float = 0.0  # monotonic
    failed_routes: list[RouteAttempt] = field(default_factory=list)


class RouteRunner:
    def __init__(
        self,
        *,
        keys: KeySource,
        http: httpx.AsyncClient,
        prices: PriceTable,
        settings: EngineSettings,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime],
    ) -> None:
        self._keys = keys
        self._http = http
        self._prices = prices
        self._settings = settings
        self._clock = clock
        self._now = now
        self._base_urls = {
            "openai": settings.openai_base_url,
            "anthropic": settings.anthropic_base_url,
        }

    async def run(
        self, plan: ExecutionPlan, progress: Progress, deadline: float | None, request_id: str
    ) -> AsyncGenerator[str, None]:
        """The answering route's output text, as it arrives. Raises the last route's failure
        (a ProviderError, or a ServiceError from the key vault) when no route answers."""
        last = len(plan.routes) - 1
        for index, route in enumerate(plan.routes):
            progress.route = index
            progress.route_start = self._now()
            progress.route_started_at = self._clock()
            progress.usage = None
            try:
                async for text in self._route(
                    plan.workspace, route, progress, deadline, request_id
                ):
                    yield text
                return
            except (ProviderError, ServiceError) as err:
                reason = str(err.reason)
                past_deadline = deadline is not None and self._clock() >= deadline
                if index == last or progress.parts or past_deadline:
                    raise
                if not falls_back(reason, plan.fallback):
                    raise
                progress.failed_routes.append(self._failed(route, progress, err))
                metrics.EXECUTION_FALLBACKS.labels(route.provider, reason).inc()

    async def _route(
        self,
        workspace: str,
        route: PlannedRoute,
        progress: Progress,
        deadline: float | None,
        request_id: str,
    ) -> AsyncIterator[str]:
        """One route: today's retrying streamed call, with its provider's key (fetched once
        more if the provider refuses a cached one, which was probably rotated)."""
        provider = get_provider(route.provider)
        refetched = False
        while True:
            key, from_cache = await self._keys.get(workspace, route.provider, request_id)
            attempts_before = progress.attempts

            def count_attempt(n: int, before: int = attempts_before) -> None:
                progress.attempts = before + n
                metrics.child(metrics.PROVIDER_ATTEMPTS, route.provider).inc()

            def count_retry(failure: ProviderError) -> None:
                metrics.child(metrics.PROVIDER_RETRIES, route.provider, failure.reason.value).inc()

            events = stream_chat(
                self._http,
                provider,
                route.chat,
                key.secret,
                base_url=key.base_url or self._base_urls[route.provider],
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
                        elif isinstance(event, Refusal):
                            progress.refusal = [*(progress.refusal or []), event.text]
                        elif isinstance(event, UsageReport):
                            progress.usage = event
                        elif isinstance(event, Finish):
                            progress.finish_reason = event.reason
                return
            except ProviderError as err:
                stale = err.reason == ErrorReason.PROVIDER_AUTH_FAILED and from_cache
                if stale and not refetched and not progress.parts:
                    self._keys.invalidate(workspace, route.provider)
                    refetched = True
                    count_retry(err)
                    continue
                raise

    def _failed(
        self, route: PlannedRoute, progress: Progress, err: ProviderError | ServiceError
    ) -> RouteAttempt:
        """The record of a route that failed (or was skipped) before any output: what the
        provider reported for it, if anything, is what it billed."""
        report = progress.usage
        usage = (
            Usage(
                report.input_tokens,
                report.output_tokens or 0,
                report.cache_read_tokens,
                report.cache_write_tokens,
            )
            if report
            else Usage()
        )
        billed = report is not None and (usage.input_tokens or usage.output_tokens)
        assert progress.route_start is not None
        return RouteAttempt(
            route=progress.route,
            provider=route.provider,
            model=route.chat.model,
            start_time=progress.route_start,
            latency_ms=round((self._clock() - progress.route_started_at) * 1000),
            http_status=err.status if isinstance(err, ProviderError) else 0,
            reason=str(err.reason),
            usage=usage,
            cost_nanos=cost_nanos(self._prices, route.provider, route.chat.model, usage)
            if billed
            else 0,
        )
