"""Runs one execution: record it, fetch the key, stream from the provider, record the end.

The row is written before the provider is called and always ends terminal: SUCCEEDED,
FAILED with a reason, or CANCELLED when the caller goes away or CancelExecution asks (the
provider request is then closed at once, because closing this generator closes the HTTP
response). When the database cannot take the terminal record, the caller is told so
(UNAVAILABLE naming the execution) and the record is retried in the background
(`terminal_records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import NoReturn

import asyncpg
import httpx

from execution_service import budget_metrics
from execution_service import repository as repo
from execution_service.admission import (
    RATE_LIMITED,
    AdmissionRequest,
    Reservation,
    RouteCost,
    Verdict,
    bounded,
    count_verdict,
    input_token_bound,
    refusal,
    reservation,
)
from execution_service.early_start import EarlyStream, UnbudgetedScopes
from execution_service.errors import (
    AgentConcurrentlyModified,
    CancelledByRequest,
    ExecutionInProgress,
    RequestIdReused,
    execution_failed,
)
from execution_service.keys import KeySource
from execution_service.model import (
    CANCELLED,
    CANCELLED_BY_REQUEST,
    FAILED,
    RUNNING,
    SHUTDOWN,
    SUCCEEDED,
    Execution,
    ExecutionError,
    Outcome,
    RouteAttempt,
    Usage,
)
from execution_service.output_check import check_output
from execution_service.plan import AgentCall, AgentPlanner, ExecutionPlan
from execution_service.pricing import PriceTable, cost_nanos
from execution_service.providers.errors import ProviderError
from execution_service.route_runner import Progress, RouteRunner
from execution_service.settings import EngineSettings, stored_text
from execution_service.terminal_records import TerminalRecord, TerminalRecords
from execution_service.token_estimate import resolve_usage
from service_kit import metrics
from service_kit.db import UNAVAILABLE_ERRORS
from service_kit.errors import ServiceError, Unavailable

log = logging.getLogger(__name__)


# `replayed`: the event answers from the record of an earlier call with the same request id.
@dataclass(frozen=True)
class Started:
    execution: Execution
    replayed: bool = False


@dataclass(frozen=True)
class Delta:
    text: str
    replayed: bool = False


@dataclass(frozen=True)
class Completed:
    execution: Execution
    replayed: bool = False


Event = Started | Delta | Completed


# The caller's deadline timer started before its request reached this process, so the
# cancellation it causes arrives up to a network delay before the deadline computed here.
DEADLINE_SLACK = 0.25
# An agent changing again and again while an execution of it is being recorded: plan it
# again this often, then give up with ABORTED.
MAX_REPLANS = 3


def total_usage(attempts: tuple[RouteAttempt, ...]) -> Usage:
    """An execution's tokens: the sum over its route attempts (those that failed before any
    output usually report none)."""
    return Usage(
        sum(a.usage.input_tokens for a in attempts),
        sum(a.usage.output_tokens for a in attempts),
        sum(a.usage.cache_read_tokens for a in attempts),
        sum(a.usage.cache_write_tokens for a in attempts),
        any(a.usage.estimated for a in attempts),
    )


def total_cost(attempts: tuple[RouteAttempt, ...]) -> int | None:
    """What the providers billed, summed over the attempts; unknown (None) when any attempt's
    price is unknown."""
    costs = [a.cost_nanos for a in attempts]
    return None if None in costs else sum(c for c in costs if c is not None)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def cut_short(
    now: float, *, deadline: float | None, cut_at: float | None, cancelled_by: str | None = None
) -> tuple[str, ExecutionError]:
    """How an execution whose stream was cancelled ends: CancelExecution asked for it
    (`cancelled_by` names who), the server's drain ran out (the server cut it), the caller's
    deadline passed, or the caller cancelled. `now`, `deadline` and `cut_at` are on one
    monotonic clock."""
    if cancelled_by is not None:
        return CANCELLED, cancelled_by_request(cancelled_by)
    if cut_at is not None and now >= cut_at - DEADLINE_SLACK:
        return FAILED, ExecutionError(
            SHUTDOWN, "the server shut down before the execution finished"
        )
    if deadline is not None and now >= deadline - DEADLINE_SLACK:
        return FAILED, ExecutionError("DEADLINE_EXCEEDED", "the caller's deadline passed")
    return CANCELLED, ExecutionError("CANCELLED", "the caller cancelled the call")


def cancelled_by_request(caller: str) -> ExecutionError:
    return ExecutionError(CANCELLED_BY_REQUEST, f"cancelled at the request of {caller}")


@dataclass
class _Cancellable:
    """A running execution's stream, which a cancel request ends by cancelling its task, but
    only while the task waits for the provider (`waiting`): a cancellation landing while the
    servicer writes an event to the caller ends the call in gRPC without any status, and the
    caller would wait for one forever. A request that comes during a write is carried out
    as soon as the write is done."""

    task: asyncio.Task[object] | None
    requested_by: str | None = None
    waiting: bool = False


def record_pending(execution: Execution, state: str) -> Unavailable:
    """What the caller is told when the execution ended but its record could not be written."""
    return Unavailable(
        f"{execution.name} ended {state}, but the database is unavailable; its record is "
        "kept and written when the database is back",
        reason="DATABASE_UNAVAILABLE",
        metadata={"execution": execution.name},
    )


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
        self._prices = prices
        self._settings = settings
        self.owner = owner or f"execution-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._now = now
        self._runner = RouteRunner(
            keys=keys, http=http, prices=prices, settings=settings, clock=clock, now=now
        )
        self._records = TerminalRecords(
            pool, retry_for=settings.finish_retry_seconds, backoff=settings.finish_retry_backoff
        )
        # Executions this process is running (their leases are renewed), until their
        # terminal record is written or handed to `_records`.
        self._running: set[uuid.UUID] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut_at: float | None = None  # when the server's drain cuts remaining streams
        # Scopes whose executions may call their provider while their row is written (none
        # until something hears of new budgets: `change_notices.ChangeNotices`).
        self.unbudgeted = UnbudgetedScopes()
        # Executions whose stream is still running here: a cancel request may end them.
        self._cancellable: dict[uuid.UUID, _Cancellable] = {}

    # --- Execute ----------------------------------------------------------------------------

    async def execute(
        self,
        request: ExecutionPlan | AgentCall,
        *,
        deadline: float | None,
        request_id: str,
        planner: AgentPlanner | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Started, then Deltas, then Completed; a failure raises a ServiceError naming the
        execution after its FAILED row is written. When the database cannot take the terminal
        record, the stream ends UNAVAILABLE naming the execution instead, and the record is
        retried in the background. An agent's run is planned by `planner` once a replay of
        its request id is ruled out, and planned again from a fresh read of the agent when
        the agent changed meanwhile (nothing is recorded for a stale plan). A request id
        taken by another request is refused (REQUEST_ID_REUSED) before anything is run."""
        if request.request_id:
            existing = await repo.get_by_request_id(
                self._pool, request.workspace, request.request_id
            )
            if existing is not None:
                async for event in self._replay(existing, request.request_hash):
                    yield event
                return
        if isinstance(request, ExecutionPlan):
            cmd = request
        else:
            assert planner is not None, "an agent's run needs a planner"
            cmd = await planner.plan(request)
        progress = Progress()
        early = None  # the provider's stream, when it starts while the row is written
        if not cmd.request_id and (cmd.workspace, cmd.agent_id) in self.unbudgeted:
            early = EarlyStream(self._runner.run(cmd, progress, deadline, request_id))
        try:
            candidate, execution, verdict, admitted = await self._record_start(
                request, cmd, planner
            )
        except BaseException as exc:
            if early is not None:
                await early.close()
            if isinstance(exc, UNAVAILABLE_ERRORS):
                self.unbudgeted.clear()
            raise
        self.unbudgeted.learn(admitted.workspace, admitted.agent_id, budgeted=verdict.budgeted)
        if early is not None and (verdict.budgeted or admitted is not cmd):
            # Refused, planned again, or a budget may cap the request: not the one sent.
            await early.close()
            early, progress = None, Progress()
        cmd = admitted
        count_verdict(verdict)
        if not verdict.ok:
            await self._refuse(candidate, cmd, verdict)
        if execution is None:  # a concurrent duplicate took the request id first
            assert cmd.request_id is not None
            existing = await repo.get_by_request_id(self._pool, cmd.workspace, cmd.request_id)
            assert existing is not None
            async for event in self._replay(existing, cmd.request_hash):
                yield event
            return

        cmd = bounded(cmd, verdict, self._settings.default_max_tokens)
        metrics.EXECUTIONS_IN_FLIGHT.inc()  # until _finish, which every path below reaches
        self._running.add(execution.id)
        self._idle.clear()
        texts = early.texts() if early else self._runner.run(cmd, progress, deadline, request_id)
        cancellable = self._cancellable[execution.id] = _Cancellable(asyncio.current_task())
        try:
            try:
                yield Started(execution)
                while True:
                    if cancellable.requested_by is not None:  # asked for during a write
                        raise asyncio.CancelledError
                    cancellable.waiting = True
                    try:
                        text = await anext(texts, None)
                    finally:
                        cancellable.waiting = False
                    if text is None:
                        break
                    yield Delta(text)
            finally:  # before anything is recorded: a cancel request now comes too late
                del self._cancellable[execution.id]
                if early is not None:  # however the stream ended, its request is closed
                    await early.close()
            progress.verdict = check_output(
                cmd.output_schema,
                "".join(progress.parts),
                refusal=None if progress.refusal is None else "".join(progress.refusal),
                finish_reason=progress.finish_reason,
            )
        except (asyncio.CancelledError, GeneratorExit) as cut:
            by = cancellable.requested_by
            state, error = cut_short(
                self._clock(), deadline=deadline, cut_at=self._cut_at, cancelled_by=by
            )
            finished = await asyncio.shield(
                self._finish(execution, cmd, progress, state, error, cancelled_by=by or "")
            )
            if by is None or not isinstance(cut, asyncio.CancelledError):
                raise
            # The cancel was ours, not the caller's: the stream ends with its status.
            if cancellable.task is not None:
                cancellable.task.uncancel()
            if finished is None:
                raise record_pending(execution, state) from None
            raise CancelledByRequest(execution.name, by) from None
        except ProviderError as err:
            error = ExecutionError(str(err.reason), err.message, err.status)
            await self._recorded(execution, cmd, progress, FAILED, error)
            raise execution_failed(error.reason, error.message, execution.name) from None
        except ServiceError as err:  # key vault unavailable, key not configured
            error = ExecutionError(err.reason, err.message)
            await self._recorded(execution, cmd, progress, FAILED, error)
            err.metadata["execution"] = execution.name
            raise
        except Exception:
            log.exception("execution failed unexpectedly", extra={"execution": execution.name})
            error = ExecutionError("INTERNAL", "internal error")
            await self._recorded(execution, cmd, progress, FAILED, error)
            raise
        if progress.verdict and progress.verdict.error:  # not the output asked for
            error = progress.verdict.error
            await self._recorded(execution, cmd, progress, FAILED, error)
            raise execution_failed(error.reason, error.message, execution.name) from None
        yield Completed(await self._recorded(execution, cmd, progress, SUCCEEDED, None))

    async def _record_start(
        self, request: ExecutionPlan | AgentCall, cmd: ExecutionPlan, planner: AgentPlanner | None
    ) -> tuple[Execution, Execution | None, Verdict, ExecutionPlan]:
        """Write the RUNNING row of `cmd` with its admission, planning an agent's run again
        while the agent changes under it. Returns the row as proposed, the row written (None
        when refused, or when a concurrent duplicate took the request id), the verdict, and
        the plan it was written for."""
        for attempt in range(MAX_REPLANS + 1):
            candidate = Execution(
                id=uuid.uuid4(),
                workspace=cmd.workspace,
                agent_id=cmd.agent_id,
                provider=cmd.provider,
                model=cmd.chat.model,
                state=RUNNING,
                create_time=self._now(),
                request_id=cmd.request_id,
                request_hash=cmd.request_hash,
                labels=cmd.labels,
                agent=cmd.agent,
                agent_etag=cmd.agent_etag,
            )
            try:
                # The budgets' reservation and the rate limits' tokens go with the row.
                execution, verdict = await repo.insert_running(
                    self._start_pool,
                    candidate,
                    lease_owner=self.owner,
                    lease_seconds=self._settings.lease_seconds,
                    admission=AdmissionRequest(self._reservation(cmd)),
                )
                return candidate, execution, verdict, cmd
            except repo.AgentChanged:
                if planner is None or isinstance(request, ExecutionPlan):
                    raise
                if attempt == MAX_REPLANS:
                    raise AgentConcurrentlyModified(cmd.agent) from None
                cmd = await planner.plan(request, fresh=True)
        raise AssertionError("unreachable")

    def _reservation(self, cmd: ExecutionPlan) -> Reservation:
        """The worst case of `cmd` over the routes that may run."""
        routes = [RouteCost(r.provider, r.chat.model, r.chat.max_tokens) for r in cmd.routes]
        return reservation(
            self._prices,
            routes,
            input_token_bound(cmd.chat.messages),
            self._settings.default_max_tokens,
        )

    async def _refuse(self, execution: Execution, cmd: ExecutionPlan, verdict: Verdict) -> NoReturn:
        """A budget or rate limit refused the execution before any provider call. A budget's
        refusal is recorded FAILED (no row was written by the refused admission); a rate
        limit's is not recorded (a caller over its rate must not fill the table)."""
        error = refusal(verdict, cmd.provider, cmd.chat.model)
        if verdict.reason == RATE_LIMITED:
            raise error
        outcome = Outcome(
            state=FAILED,
            usage=Usage(),
            cost_nanos=0,
            attempts=0,
            error=ExecutionError(error.reason, error.message),
            finish_reason="",
            output_text=None,
            first_token_time=None,
            end_time=self._now(),
        )
        if await self._records.record(TerminalRecord(execution, outcome, None)) is None:
            raise record_pending(execution, FAILED)
        error.metadata["execution"] = execution.name
        raise error

    async def _recorded(
        self,
        execution: Execution,
        cmd: ExecutionPlan,
        progress: Progress,
        state: str,
        error: ExecutionError | None,
    ) -> Execution:
        """The execution as recorded; raises UNAVAILABLE naming it when the record waits for
        the database. Shielded: a cancel arriving during the write must not leave it undone."""
        finished = await asyncio.shield(self._finish(execution, cmd, progress, state, error))
        if finished is None:
            raise record_pending(execution, state)
        return finished

    async def _finish(
        self,
        execution: Execution,
        cmd: ExecutionPlan,
        progress: Progress,
        state: str,
        error: ExecutionError | None,
        *,
        cancelled_by: str = "",
    ) -> Execution | None:
        """Record the end; None when the database is unavailable and the record is kept for
        retry (from then on its lease is no longer renewed)."""
        try:
            outcome = self._outcome(cmd, progress, state, error, cancelled_by)
            route = cmd.routes[progress.route]
            price = self._prices.lookup(route.provider, route.chat.model)
            family = price.family if price else None
            # Recorded with the provider and model of the route that answered (or failed last).
            served = dataclasses.replace(execution, provider=route.provider, model=route.chat.model)
            return await self._records.record(TerminalRecord(served, outcome, family))
        finally:
            metrics.EXECUTIONS_IN_FLIGHT.dec()
            self._running.discard(execution.id)
            if not self._running:
                self._idle.set()

    def _outcome(
        self,
        cmd: ExecutionPlan,
        progress: Progress,
        state: str,
        error: ExecutionError | None,
        cancelled_by: str = "",
    ) -> Outcome:
        text = "".join(progress.parts)
        verdict = progress.verdict
        route = cmd.routes[progress.route]
        if progress.usage is None and not text:
            usage = Usage()  # the provider never answered with anything billable
        else:
            resolved = resolve_usage(progress.usage, prompt=route.chat.messages, output_text=text)
            usage = Usage(
                resolved.input_tokens,
                resolved.output_tokens,
                resolved.cache_read_tokens,
                resolved.cache_write_tokens,
                resolved.estimated,
            )
        end_time = self._now()
        last = RouteAttempt(
            route=progress.route,
            provider=route.provider,
            model=route.chat.model,
            start_time=progress.route_start or end_time,
            # A route that never started (cancelled first) took no time.
            latency_ms=round((self._clock() - progress.route_started_at) * 1000)
            if progress.route_start
            else 0,
            http_status=error.provider_status if error else 200,
            reason=error.reason if error else "",
            usage=usage,
            cost_nanos=cost_nanos(self._prices, route.provider, route.chat.model, usage),
        )
        attempts = (*progress.failed_routes, last)
        return Outcome(
            state=state,
            usage=total_usage(attempts),
            cost_nanos=total_cost(attempts),
            attempts=progress.attempts,
            error=error,
            finish_reason=progress.finish_reason,
            output_text=stored_text(text, self._settings),
            first_token_time=progress.first_token_time,
            end_time=end_time,
            output=verdict.output if verdict else None,
            output_valid=verdict.output_valid if verdict else None,
            cancelled_by=cancelled_by,
            route_index=progress.route,
            route_attempts=attempts,
        )

    async def _replay(self, existing: Execution, request_hash: str | None) -> AsyncIterator[Event]:
        """A duplicate request id: refused when `existing` ran another request (a row from
        before hashes were kept matches any), in progress while it runs, and otherwise
        answered from its record, every event marked replayed."""
        if existing.request_hash is not None and existing.request_hash != request_hash:
            raise RequestIdReused(existing.name, existing.request_id or "")
        if not existing.is_terminal:
            raise ExecutionInProgress(existing.name, existing.request_id or "")
        yield Started(existing, replayed=True)
        if existing.output_text:
            yield Delta(existing.output_text, replayed=True)
        yield Completed(existing, replayed=True)

    # --- cancel requests --------------------------------------------------------------------

    def cancel(self, execution_id: uuid.UUID, requested_by: str) -> bool:
        """End the execution's stream here, if it is still running here: its provider request
        closes at once and it is recorded CANCELLED, naming `requested_by`."""
        cancellable = self._cancellable.get(execution_id)
        if cancellable is None or cancellable.task is None:
            return False
        if cancellable.requested_by is None:
            cancellable.requested_by = requested_by
            if cancellable.waiting:
                cancellable.task.cancel()
        return True

    def streaming(self) -> list[uuid.UUID]:
        """The executions whose stream is running here (those a cancel request may end)."""
        return list(self._cancellable)

    # --- shutdown ---------------------------------------------------------------------------

    def shutting_down(self, cut_at: float) -> None:
        """The server drains; streams still running at `cut_at` (monotonic) are cut by it and
        recorded FAILED with reason SHUTDOWN."""
        self._cut_at = cut_at

    async def close(self, timeout: float) -> None:
        """After the server stopped: let the records of cut streams be written, then give
        every record still waiting for the database one last attempt, within `timeout`."""
        ends = self._clock() + timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        await self._records.close(ends - self._clock())

    # --- leases -----------------------------------------------------------------------------

    async def renew_leases(self) -> int:
        """Renew the leases of the executions this process is running."""
        return await repo.renew_leases(
            self._pool, self.owner, list(self._running), self._settings.lease_seconds
        )

    async def keep_leases(self) -> None:
        """Renew this process's running executions' leases, forever."""
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_leases()
            except UNAVAILABLE_ERRORS as exc:
                log.warning("lease renewal failed", extra={"error": type(exc).__name__})
            except Exception:  # the loop must outlive any one failure
                log.exception("lease renewal failed")

    async def sweep_once(self) -> int:
        swept = await repo.fail_expired_leases(
            self._pool,
            "the process running this execution stopped before it finished",
            spare=self._records.pending_ids(),
        )
        metrics.EXECUTIONS_INTERRUPTED.inc(swept)
        if swept:
            log.warning("marked interrupted executions failed", extra={"count": swept})
        # Swept rows released their budgets' reservations (a trigger).
        await budget_metrics.refresh(self._pool)
        return swept

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            try:
                await self.sweep_once()
            except UNAVAILABLE_ERRORS as exc:
                log.warning("sweep failed", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("sweep failed")
