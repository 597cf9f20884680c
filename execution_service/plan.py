"""Plan: an Execute request becomes the immutable plan the engine runs.

Every refusal a caller causes happens here, before anything is recorded or any key fetched:
malformed fields, an agent that does not exist, input that is not JSON or breaks the agent's
input schema, an ad hoc output schema the provider cannot enforce. Decoding (`decode`) and
planning an agent's run (`agent_plan`) are pure; `AgentPlanner` only adds the agent read
(after a replay of the request id has had its chance, so a replay answers even when the
agent has changed since).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from clients import json_document  # Struct -> JSON, the same on both ends of the wire
from clients.gen.execution.v1 import execution_service_pb2 as pb
from execution_service.agent_requests import parse_agent_name, route_of, routes_of
from execution_service.agents import Agent, Route, agent_name
from execution_service.errors import AgentNotFound, InputSchemaViolation
from execution_service.providers.base import ChatMessage, ChatRequest, OutputSchema
from execution_service.routing import DEFAULT_TRIGGERS, Trigger
from execution_service.schemas import (
    JsonSchema,
    canonical_json,
    output_schema_violations,
    parse_json,
)
from execution_service.schemas import compiled as compiled_schema
from execution_service.validation import (
    MAX_PROMPT_CHARS,
    ROLES,
    execute_violations,
    label_violations,
    request_id_violations,
)
from service_kit.errors import FieldViolation, InvalidArgument, ServiceError
from service_kit.names import workspace_of

# The ad hoc fields an Execute by agent must leave unset (the agent supplies them).
AD_HOC_FIELDS = ("agent_id", "provider", "model", "messages", "generation_config", "output_schema")
MAX_INPUT_CHARS = MAX_PROMPT_CHARS
MAX_INPUT_VIOLATIONS = 6  # field violations listed (the status travels in trailers: 8 KB)


@dataclass(frozen=True)
class PlannedRoute:
    """One way to run the execution: a provider and the chat request to send it."""

    provider: str
    chat: ChatRequest


@dataclass(frozen=True)
class ExecutionPlan:
    """What one execution runs: its routes in order of preference (at least one), falling
    back on the `fallback` triggers (see `routing`). `output_schema` is what the output is
    validated against (the same schema every route's chat request asks the provider to
    follow), None for free text."""

    workspace: str
    agent_id: str
    routes: tuple[PlannedRoute, ...]
    request_id: str | None
    labels: dict[str, str] = field(default_factory=dict)
    agent: str = ""  # the agent's name when run by name, else empty
    agent_etag: str = ""
    output_schema: JsonSchema | None = None
    request_hash: str | None = None  # of the request as sent, when it has a request id
    fallback: frozenset[Trigger] = DEFAULT_TRIGGERS

    @property
    def provider(self) -> str:
        """The first route's provider: what the execution is recorded with as it starts."""
        return self.routes[0].provider

    @property
    def chat(self) -> ChatRequest:
        return self.routes[0].chat


@dataclass(frozen=True)
class AgentCall:
    """An Execute by agent, decoded and checked, before the agent is read."""

    workspace: str
    agent_id: str
    input: Any  # the parsed JSON input
    request_id: str | None
    labels: dict[str, str]
    request_hash: str | None = None  # when it has a request id


def decode(request: pb.ExecuteRequest) -> ExecutionPlan | AgentCall:
    """The ad hoc form's complete plan, or the agent form's call (which needs its agent)."""
    if request.agent:
        return _agent_call(request)
    if request.routes:
        violations, routes = _listed_routes(request)
    else:
        violations = execute_violations(request)
        routes = ()
        if not violations:
            routes = (route_of(request.provider, request.model, request.generation_config),)
    input_kind = request.WhichOneof("agent_input")
    if input_kind:
        violations.append(FieldViolation(input_kind, "is only for an Execute by agent"))
    schema = None
    if request.HasField("output_schema") and routes:
        document = json_document(request.output_schema)
        providers = list(dict.fromkeys(r.provider for r in routes))
        found = output_schema_violations(document, "output_schema", providers)
        violations += found
        schema = None if found else JsonSchema.of(document)
    if violations:
        raise InvalidArgument(violations)
    messages = tuple(ChatMessage(ROLES[m.role], m.content) for m in request.messages)  # type: ignore[arg-type]
    output = OutputSchema.create(schema.document) if schema else None
    plan = ExecutionPlan(
        workspace=workspace_of(request.parent),
        agent_id=request.agent_id,
        routes=tuple(PlannedRoute(r.provider, _chat(r, messages, output)) for r in routes),
        request_id=request.request_id or None,
        labels=dict(request.labels),
        output_schema=schema,
    )
    if plan.request_id is None:
        return plan
    return dataclasses.replace(plan, request_hash=request_hash(_ad_hoc_form(plan)))


def _listed_routes(request: pb.ExecuteRequest) -> tuple[list[FieldViolation], tuple[Route, ...]]:
    """An ad hoc Execute's `routes`, which replace its provider, model and generation_config."""
    violations = [
        FieldViolation(name, "must be unset when routes are given (each route has its own)")
        for name, present in (
            ("provider", bool(request.provider)),
            ("model", bool(request.model)),
            ("generation_config", request.HasField("generation_config")),
        )
        if present
    ]
    violations += execute_violations(request, route=False)
    routes, found = routes_of(request.routes, "routes")
    return violations + found, routes


def _chat(
    route: Route, messages: tuple[ChatMessage, ...], output: OutputSchema | None
) -> ChatRequest:
    generation = route.generation
    return ChatRequest(
        model=route.model,
        messages=messages,
        max_tokens=generation.max_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
        stop=generation.stop_sequences,
        output_schema=output,
    )


def _set_ad_hoc_fields(request: pb.ExecuteRequest) -> list[str]:
    present = {
        "agent_id": bool(request.agent_id),
        "provider": bool(request.provider),
        "model": bool(request.model),
        "messages": bool(request.messages),
        "generation_config": request.HasField("generation_config"),
        "output_schema": request.HasField("output_schema"),
    }
    return [name for name in AD_HOC_FIELDS if present[name]]


def _agent_call(request: pb.ExecuteRequest) -> AgentCall:
    violations = [
        FieldViolation(name, "must be unset in an Execute by agent (the agent defines it)")
        for name in _set_ad_hoc_fields(request)
    ]
    workspace = ""
    try:
        workspace = workspace_of(request.parent)
    except InvalidArgument as exc:
        violations += exc.violations
    try:
        agent_workspace, agent_id = parse_agent_name(request.agent, "agent")
        if workspace and agent_workspace != workspace:
            violations.append(FieldViolation("agent", f"must be an agent of {request.parent}"))
    except InvalidArgument as exc:
        violations += exc.violations
        agent_id = ""
    violations += request_id_violations(request.request_id)
    labels = dict(request.labels)
    violations += label_violations(labels)
    document, input_violations = _input(request)
    violations += input_violations
    if violations:
        raise InvalidArgument(violations)
    call = AgentCall(workspace, agent_id, document, request.request_id or None, labels)
    if call.request_id is None:
        return call
    return dataclasses.replace(call, request_hash=request_hash(_agent_form(call)))


def _input(request: pb.ExecuteRequest) -> tuple[Any, list[FieldViolation]]:
    """The input as parsed JSON: `input` (a Struct) or `input_json` (JSON text)."""
    kind = request.WhichOneof("agent_input")
    if kind is None:
        return None, [
            FieldViolation("input", "is required: the agent's input, as input or input_json")
        ]
    if kind == "input":
        document = json_document(request.input)
        if len(canonical_json(document)) > MAX_INPUT_CHARS:
            return None, [FieldViolation("input", f"at most {MAX_INPUT_CHARS} characters as JSON")]
        return document, []
    text = request.input_json
    if len(text) > MAX_INPUT_CHARS:
        return None, [FieldViolation("input_json", f"at most {MAX_INPUT_CHARS} characters")]
    try:
        return parse_json(text), []
    except (ValueError, RecursionError) as exc:
        return None, [FieldViolation("input_json", f"is not valid JSON: {exc}")]


def input_message(document: Any) -> str:
    """How the input reaches the model: compact JSON with a stable key order."""
    return canonical_json(document)


def agent_plan(call: AgentCall, agent: Agent | None) -> ExecutionPlan:
    """The plan of one run of `agent` (as read just now); NOT_FOUND when there is none, and
    INVALID_ARGUMENT, one violation per error at its JSON pointer, when the input breaks the
    agent's input schema."""
    if agent is None:
        raise AgentNotFound(agent_name(call.workspace, call.agent_id))
    spec = agent.spec
    if spec.input_schema is not None:
        found = compiled_schema(spec.input_schema).validate(call.input, "input")
        if found:
            raise InputSchemaViolation(
                [FieldViolation(v.pointer, v.description) for v in found],
                shown=MAX_INPUT_VIOLATIONS,
            )
    elif not isinstance(call.input, dict):
        raise InvalidArgument(
            [FieldViolation("input", "must be a JSON object (the agent has no input schema)")]
        )
    messages = [ChatMessage("user", input_message(call.input))]
    if spec.instructions:
        messages.insert(0, ChatMessage("system", spec.instructions))
    output = spec.output_schema
    requested = OutputSchema.create(output.document, call.agent_id) if output else None
    return ExecutionPlan(
        workspace=call.workspace,
        agent_id=call.agent_id,
        routes=tuple(
            PlannedRoute(r.provider, _chat(r, tuple(messages), requested)) for r in spec.routes
        ),
        fallback=DEFAULT_TRIGGERS if spec.fallback is None else spec.fallback,
        request_id=call.request_id,
        labels=call.labels,
        agent=agent.name,
        agent_etag=agent.etag,
        output_schema=output,
        request_hash=call.request_hash,
    )


# --- request hash: a request id answers only the request it was first used for --------------


def request_hash(form: dict[str, Any]) -> str:
    """SHA-256 (hex) of a request's canonical form (`_ad_hoc_form`, `_agent_form`): its
    canonical JSON (keys sorted, no whitespace, UTF-8), leaving out what is unset (None).

    The form is built from the request as decoded, so what means the same hashes the same:
    labels in any order, an input sent as a Struct or as the same JSON text, a generation
    config left out or sent empty. Its keys are named here, not taken from the protobuf
    encoding, and a field added later enters the form only when set, so the hash of a request
    stays the same across processes and releases. The request id itself is not part of it."""
    text = canonical_json({k: v for k, v in form.items() if v is not None})
    # Input JSON may hold an escaped lone surrogate: hash it as written rather than fail.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _ad_hoc_form(plan: ExecutionPlan) -> dict[str, Any]:
    """An ad hoc request's canonical form: its own plan is exactly what it asked for. One
    route is written as the provider, model and generation config it is (so a request sent
    either way hashes the same); several are listed."""
    routes = [_route_form(r) for r in plan.routes]
    return {
        "parent": f"workspaces/{plan.workspace}",
        "agent_id": plan.agent_id,
        **(routes[0] if len(routes) == 1 else {"routes": routes}),
        "messages": [{"role": m.role, "content": m.content} for m in plan.chat.messages],
        "output_schema": plan.output_schema.document if plan.output_schema else None,
        "labels": plan.labels,
    }


def _route_form(route: PlannedRoute) -> dict[str, Any]:
    chat = route.chat
    generation = {
        "max_tokens": chat.max_tokens,
        "temperature": chat.temperature,
        "top_p": chat.top_p,
        "stop_sequences": list(chat.stop) or None,
    }
    return {
        "provider": route.provider,
        "model": chat.model,
        "generation_config": {k: v for k, v in generation.items() if v is not None},
    }


def _agent_form(call: AgentCall) -> dict[str, Any]:
    """An Execute by agent's canonical form: the agent's name, not what the agent holds (a
    replay answers even after the agent changed). The input is the parsed JSON, as the model
    gets it (`input_message`): a Struct's integral numbers are integers, so `{"n": 1}` is
    the same input sent either way, while `1.0` in JSON text stays `1.0`."""
    return {
        "parent": f"workspaces/{call.workspace}",
        "agent": agent_name(call.workspace, call.agent_id),
        "input": call.input,
        "labels": call.labels,
    }


ReadAgent = Callable[[str, str], Awaitable[Agent | None]]


@dataclass(frozen=True)
class AgentPlanner:
    """Plans runs of agents read by `read_agent`, which may give a copy read earlier, or by
    `read_fresh`, which reads the agent as it is now. A refusal (input that breaks the
    schema, an agent that is gone) is given only for the agent as it is now."""

    read_agent: ReadAgent
    read_fresh: ReadAgent

    async def plan(self, call: AgentCall, *, fresh: bool = False) -> ExecutionPlan:
        if not fresh:
            try:
                return agent_plan(call, await self.read_agent(call.workspace, call.agent_id))
            except ServiceError:
                pass  # the copy may be out of date: decide on the agent as it is now
        return agent_plan(call, await self.read_fresh(call.workspace, call.agent_id))
