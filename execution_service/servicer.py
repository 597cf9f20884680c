"""execution.v1.ExecutionService: decode the request, call the domain, encode the answer."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import execution_service_pb2_grpc as pb_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from execution_service import agent_requests, budget_requests
from execution_service.agent_store import AgentStore
from execution_service.agents import AGENT_CURSOR, Agent
from execution_service.budget_store import BudgetStore
from execution_service.engine import Completed, Delta, ExecutionEngine, Started
from execution_service.history import EXECUTION_CURSOR, History
from execution_service.key_check import KeyChecker
from execution_service.model import AgentStats, Execution, ExecutionError, RouteAttempt
from execution_service.plan import AgentPlanner, decode
from execution_service.validation import (
    PROVIDERS,
    STATES,
    agent_id_of,
    parse_execution_name,
    time_window,
)
from service_kit import wellknown
from service_kit.call_context import call_info
from service_kit.errors import FieldViolation, InvalidArgument
from service_kit.names import workspace_of
from service_kit.pagination import page_request, page_token
from service_kit.secret import Secret
from service_kit.urls import base_url_violations

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExecutionService"].full_name
_PROVIDER_ENUM = {name: value for value, name in PROVIDERS.items()}
_STATE_ENUM = {name: value for value, name in STATES.items()}


def _timestamp(value: dt.datetime | None) -> Timestamp | None:
    return None if value is None else wellknown.timestamp(value)


def _duration(seconds: float | None) -> Duration | None:
    return None if seconds is None else wellknown.duration(round(seconds * 1e9))


def _between(start: dt.datetime, end: dt.datetime | None) -> Duration | None:
    return wellknown.duration(wellknown.nanoseconds(end - start)) if end else None


def execution_message(e: Execution) -> res.Execution:
    message = res.Execution(
        name=e.name,
        agent_id=e.agent_id,
        provider=_PROVIDER_ENUM[e.provider],  # type: ignore[arg-type]
        model=e.model,
        state=_STATE_ENUM[e.state],  # type: ignore[arg-type]
        usage=res.Usage(
            input_tokens=e.usage.input_tokens,
            output_tokens=e.usage.output_tokens,
            cache_read_tokens=e.usage.cache_read_tokens,
            cache_write_tokens=e.usage.cache_write_tokens,
            estimated=e.usage.estimated,
        ),
        cost_nanos=e.cost_nanos,
        attempts=e.attempts,
        error=_error_message(e.error),
        create_time=_timestamp(e.create_time),
        first_token_time=_timestamp(e.first_token_time),
        end_time=_timestamp(e.end_time),
        latency=_between(e.create_time, e.end_time),
        time_to_first_token=_between(e.create_time, e.first_token_time),
        request_id=e.request_id or "",
        labels=e.labels,
        output_text=e.output_text or "",
        finish_reason=e.finish_reason,
        agent=e.agent,
        agent_etag=e.agent_etag,
        output=_struct(e.output) if isinstance(e.output, dict) else None,
        output_valid=e.output_valid,
        cancelled_by=e.cancelled_by,
        route_index=e.route_index,
        route_attempts=[_attempt_message(a) for a in e.route_attempts],
    )
    return message


def _attempt_message(a: RouteAttempt) -> res.RouteAttempt:
    return res.RouteAttempt(
        route_index=a.route,
        provider=_PROVIDER_ENUM[a.provider],  # type: ignore[arg-type]
        model=a.model,
        http_status=a.http_status,
        reason=a.reason,
        start_time=_timestamp(a.start_time),
        latency=wellknown.duration(a.latency_ms * 1_000_000),
        usage=res.Usage(
            input_tokens=a.usage.input_tokens,
            output_tokens=a.usage.output_tokens,
            cache_read_tokens=a.usage.cache_read_tokens,
            cache_write_tokens=a.usage.cache_write_tokens,
            estimated=a.usage.estimated,
        ),
        cost_nanos=a.cost_nanos,
    )


def _error_message(error: ExecutionError | None) -> res.ExecutionError | None:
    if error is None:
        return None
    return res.ExecutionError(
        reason=error.reason,
        message=error.message,
        provider_status=error.provider_status,
        violations=[
            res.SchemaViolation(pointer=v.pointer, description=v.description)
            for v in error.violations
        ],
    )


def _stats_message(s: AgentStats) -> res.AgentStats:
    return res.AgentStats(
        agent_id=s.agent_id,
        total_count=s.total,
        running_count=s.running,
        succeeded_count=s.succeeded,
        failed_count=s.failed,
        cancelled_count=s.cancelled,
        success_rate=s.success_rate,
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cache_read_tokens=s.cache_read_tokens,
        cache_write_tokens=s.cache_write_tokens,
        cost_nanos=s.cost_nanos,
        unknown_cost_count=s.unknown_cost_count,
        latency_p50=_duration(s.latency_p50),
        latency_p95=_duration(s.latency_p95),
        time_to_first_token_p50=_duration(s.ttft_p50),
        time_to_first_token_p95=_duration(s.ttft_p95),
        output_invalid_count=s.output_invalid,
        fallback_count=s.fallback,
    )


def _struct(document: Any) -> struct_pb2.Struct | None:
    if document is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(document)
    return struct


def agent_message(agent: Agent) -> res.Agent:
    spec = agent.spec
    return res.Agent(
        name=agent.name,
        display_name=spec.display_name,
        description=spec.description,
        instructions=spec.instructions,
        routes=[
            res.Route(
                provider=_PROVIDER_ENUM[r.provider],  # type: ignore[arg-type]
                model=r.model,
                generation_config=res.GenerationConfig(
                    max_tokens=r.generation.max_tokens,
                    temperature=r.generation.temperature,
                    top_p=r.generation.top_p,
                    stop_sequences=r.generation.stop_sequences,
                ),
            )
            for r in spec.routes
        ],
        input_schema=_struct(spec.input_schema.document if spec.input_schema else None),
        output_schema=_struct(spec.output_schema.document if spec.output_schema else None),
        labels=spec.labels,
        create_time=_timestamp(agent.create_time),
        update_time=_timestamp(agent.update_time),
        etag=agent.etag,
        fallback=None
        if spec.fallback is None
        else res.FallbackPolicy(
            triggers=[
                res.FallbackTrigger.Value(f"FALLBACK_TRIGGER_{t}")  # type: ignore[misc]
                for t in sorted(spec.fallback)
            ]
        ),
    )


def _optional_time(message: Any, field: str) -> dt.datetime | None:
    if not message.HasField(field):
        return None
    try:
        return getattr(message, field).ToDatetime(tzinfo=dt.UTC)
    except ValueError:  # seconds or nanos outside the Timestamp range
        raise InvalidArgument([FieldViolation(field, "is not a valid timestamp")]) from None


def _deadline(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# Asks for a running execution to be cancelled: (workspace, execution id, caller identity).
Canceller = Callable[[str, uuid.UUID, str], Awaitable[Execution]]


class ExecutionServicer(pb_grpc.ExecutionServiceServicer):
    def __init__(
        self,
        engine: ExecutionEngine,
        history: History,
        checker: KeyChecker,
        agents: AgentStore,
        budgets: BudgetStore,
        *,
        cancel: Canceller,
    ) -> None:
        self._engine = engine
        self._budgets = budgets
        self._cancel = cancel
        self._history = history
        self._checker = checker
        self._agents = agents
        self._planner = AgentPlanner(agents.read, agents.read_fresh)

    async def Execute(  # type: ignore[override]
        self, request: pb.ExecuteRequest, context: Any
    ) -> AsyncIterator[pb.ExecuteResponse]:
        events = self._engine.execute(
            decode(request),
            planner=self._planner,
            deadline=_deadline(context),
            request_id=call_info().request_id,
        )
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Delta):
                    yield pb.ExecuteResponse(
                        delta=pb.TextDelta(text=event.text), replayed=event.replayed
                    )
                elif isinstance(event, Started):
                    yield pb.ExecuteResponse(
                        started=execution_message(event.execution), replayed=event.replayed
                    )
                elif isinstance(event, Completed):
                    yield pb.ExecuteResponse(
                        completed=execution_message(event.execution), replayed=event.replayed
                    )

    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: Any
    ) -> pb.GetExecutionResponse:
        workspace, execution_id = parse_execution_name(request.name)
        found = await self._history.get(workspace, execution_id)
        return pb.GetExecutionResponse(execution=execution_message(found))

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: Any
    ) -> pb.CancelExecutionResponse:
        workspace, execution_id = parse_execution_name(request.name)
        caller = call_info().caller or "an unidentified caller"
        execution = await self._cancel(workspace, uuid.UUID(execution_id), caller)
        return pb.CancelExecutionResponse(execution=execution_message(execution))

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: Any
    ) -> pb.ListExecutionsResponse:
        workspace = workspace_of(request.parent)
        agent_id = agent_id_of(request.agent_id, required=False)
        start, end = _optional_time(request, "start_time"), _optional_time(request, "end_time")
        time_window(start, end)
        if request.state and request.state not in STATES:
            raise InvalidArgument([FieldViolation("state", "is not a known execution state")])
        state = STATES.get(request.state)
        query = "|".join(
            [request.parent, request.agent_id, str(request.state), str(start), str(end)]
        )
        page = page_request(
            request.page_size, request.page_token, query=query, cursor=EXECUTION_CURSOR
        )
        rows, last = await self._history.page(
            workspace, page, agent_id=agent_id, state=state, start_time=start, end_time=end
        )
        return pb.ListExecutionsResponse(
            executions=[execution_message(e) for e in rows],
            next_page_token=page_token(last, query=query, cursor=EXECUTION_CURSOR) if last else "",
        )

    async def GetAgentStats(
        self, request: pb.GetAgentStatsRequest, context: Any
    ) -> pb.GetAgentStatsResponse:
        workspace = workspace_of(request.parent)
        agent_id = agent_id_of(request.agent_id, required=True)
        assert agent_id is not None
        start, end = _optional_time(request, "start_time"), _optional_time(request, "end_time")
        time_window(start, end)
        stats = await self._history.agent_stats(workspace, agent_id, start, end)
        return pb.GetAgentStatsResponse(stats=_stats_message(stats))

    async def TestApiKey(
        self, request: pb.TestApiKeyRequest, context: Any
    ) -> pb.TestApiKeyResponse:
        workspace = workspace_of(request.parent)
        violations = []
        if request.provider not in PROVIDERS:
            violations.append(
                FieldViolation("provider", "must be PROVIDER_OPENAI or PROVIDER_ANTHROPIC")
            )
        if len(request.candidate_api_key.encode()) > 4096:
            violations.append(FieldViolation("candidate_api_key", "must be at most 4096 bytes"))
        violations += base_url_violations(request.base_url, self._checker.egress)
        if violations:
            raise InvalidArgument(violations)
        provider = PROVIDERS[request.provider]
        if request.candidate_api_key:
            verdict = await self._checker.check_candidate(
                provider, Secret(request.candidate_api_key), request.base_url
            )
        else:
            verdict = await self._checker.check_stored(workspace, provider, call_info().request_id)
        return pb.TestApiKeyResponse(
            valid=verdict.valid,
            reason=verdict.reason,
            message=verdict.message,
            latency=_duration(verdict.seconds),
        )

    # --- agents: standard methods ---------------------------------------------------------

    async def CreateAgent(
        self, request: pb.CreateAgentRequest, context: Any
    ) -> pb.CreateAgentResponse:
        command = agent_requests.create_agent(request)
        agent = await self._agents.create(command.workspace, command.agent_id, command.spec)
        return pb.CreateAgentResponse(agent=agent_message(agent))

    async def GetAgent(self, request: pb.GetAgentRequest, context: Any) -> pb.GetAgentResponse:
        workspace, agent_id = agent_requests.parse_agent_name(request.name)
        return pb.GetAgentResponse(agent=agent_message(await self._agents.get(workspace, agent_id)))

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Any
    ) -> pb.ListAgentsResponse:
        workspace = workspace_of(request.parent)
        page = page_request(
            request.page_size, request.page_token, query=request.parent, cursor=AGENT_CURSOR
        )
        agents, last = await self._agents.page(workspace, page)
        token = page_token({"id": last}, query=request.parent, cursor=AGENT_CURSOR) if last else ""
        return pb.ListAgentsResponse(
            agents=[agent_message(a) for a in agents], next_page_token=token
        )

    async def UpdateAgent(
        self, request: pb.UpdateAgentRequest, context: Any
    ) -> pb.UpdateAgentResponse:
        command = agent_requests.update_agent(request)
        agent = await self._agents.update(
            command.workspace, command.agent_id, command.changes, etag=command.etag
        )
        return pb.UpdateAgentResponse(agent=agent_message(agent))

    async def DeleteAgent(
        self, request: pb.DeleteAgentRequest, context: Any
    ) -> pb.DeleteAgentResponse:
        workspace, agent_id, etag = agent_requests.delete_agent(request)
        await self._agents.delete(workspace, agent_id, etag=etag)
        return pb.DeleteAgentResponse()

    # --- budgets: standard methods --------------------------------------------------------

    async def CreateBudget(
        self, request: pb.CreateBudgetRequest, context: Any
    ) -> pb.CreateBudgetResponse:
        command = budget_requests.create_budget(request)
        budget = await self._budgets.create(command.workspace, command.budget_id, command.spec)
        return pb.CreateBudgetResponse(budget=budget_requests.budget_message(budget))

    async def GetBudget(self, request: pb.GetBudgetRequest, context: Any) -> pb.GetBudgetResponse:
        workspace, budget_id = budget_requests.parse_budget_name(request.name)
        budget = await self._budgets.get(workspace, budget_id)
        return pb.GetBudgetResponse(budget=budget_requests.budget_message(budget))

    async def ListBudgets(
        self, request: pb.ListBudgetsRequest, context: Any
    ) -> pb.ListBudgetsResponse:
        workspace = workspace_of(request.parent)
        page = page_request(
            request.page_size, request.page_token, query=request.parent, cursor=AGENT_CURSOR
        )
        budgets, last = await self._budgets.page(workspace, page)
        token = page_token({"id": last}, query=request.parent, cursor=AGENT_CURSOR) if last else ""
        return pb.ListBudgetsResponse(
            budgets=[budget_requests.budget_message(b) for b in budgets], next_page_token=token
        )

    async def UpdateBudget(
        self, request: pb.UpdateBudgetRequest, context: Any
    ) -> pb.UpdateBudgetResponse:
        command = budget_requests.update_budget(request)
        budget = await self._budgets.update(
            command.workspace, command.budget_id, command.changes, etag=command.etag
        )
        return pb.UpdateBudgetResponse(budget=budget_requests.budget_message(budget))

    async def DeleteBudget(
        self, request: pb.DeleteBudgetRequest, context: Any
    ) -> pb.DeleteBudgetResponse:
        workspace, budget_id, etag = budget_requests.delete_budget(request)
        await self._budgets.delete(workspace, budget_id, etag=etag)
        return pb.DeleteBudgetResponse()


def register(servicer: ExecutionServicer) -> Any:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_ExecutionServiceServicer_to_server(servicer, server)

    return add
