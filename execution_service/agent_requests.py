"""The agents RPCs' requests, checked and decoded before any row is read or written.

Every problem is one field violation named by its path in the request
(`agent.routes[0].model`, `agent.output_schema.properties.items`), all reported at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from clients import json_document  # Struct -> JSON, the same on both ends of the wire
from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from execution_service.agents import (
    UPDATABLE_FIELDS,
    AgentSpec,
    GenerationSettings,
    Route,
    refused,
    structured_output_fit,
)
from execution_service.field_masks import ResourceName, decode_fields, mask_fields
from execution_service.routing import MAX_ROUTES, Trigger
from execution_service.schemas import JsonSchema, schema_violations
from execution_service.validation import (
    PROVIDERS,
    agent_id_violations,
    generation_config_violations,
    label_violations,
    model_violations,
    provider_violations,
)
from service_kit.errors import FieldViolation, InvalidArgument
from service_kit.names import has_control_characters, workspace_of

MAX_DISPLAY_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 4096
MAX_INSTRUCTIONS_CHARS = 100_000
MAX_ETAG_CHARS = 128
_AGENT_NAME = ResourceName("agents", "agent")


@dataclass(frozen=True)
class CreateAgent:
    workspace: str
    agent_id: str
    spec: AgentSpec


@dataclass(frozen=True)
class UpdateAgent:
    workspace: str
    agent_id: str
    changes: dict[str, Any]  # updatable field -> new value
    etag: str | None


def _prefixed(prefix: str, violations: list[FieldViolation]) -> list[FieldViolation]:
    return [FieldViolation(f"{prefix}.{v.field}", v.description) for v in violations]


def parse_agent_name(name: str, field: str = "name") -> tuple[str, str]:
    """`workspaces/{workspace}/agents/{agent}` -> (workspace, agent id)."""
    return _AGENT_NAME.parse(name, field)


def _text(value: str, field: str, limit: int, *, single_line: bool) -> list[FieldViolation]:
    if len(value) > limit:
        return [FieldViolation(field, f"at most {limit} characters")]
    if single_line and has_control_characters(value):
        return [FieldViolation(field, "must not contain control characters")]
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        return [FieldViolation(field, "must not contain NUL characters")]
    return []


def routes_of(
    listed: Sequence[res.Route], field: str
) -> tuple[tuple[Route, ...], list[FieldViolation]]:
    """Routes in order of preference (1 to MAX_ROUTES), each checked at `field[i]`."""
    if not 1 <= len(listed) <= MAX_ROUTES:
        return (), [FieldViolation(field, f"must list 1 to {MAX_ROUTES} routes")]
    routes, violations = [], []
    for i, route in enumerate(listed):
        where = f"{field}[{i}]"
        found = provider_violations(route.provider, f"{where}.provider")
        found += model_violations(route.model, f"{where}.model")
        found += _prefixed(where, generation_config_violations(route.generation_config))
        violations += found
        if not found:
            routes.append(route_of(route.provider, route.model, route.generation_config))
    return tuple(routes), violations


def route_of(provider: int, model: str, config: res.GenerationConfig) -> Route:
    """A checked route's value (see `routes_of`)."""
    return Route(
        provider=PROVIDERS[provider],  # type: ignore[index]
        model=model,
        generation=GenerationSettings(
            max_tokens=config.max_tokens if config.HasField("max_tokens") else None,
            temperature=config.temperature if config.HasField("temperature") else None,
            top_p=config.top_p if config.HasField("top_p") else None,
            stop_sequences=tuple(config.stop_sequences),
        ),
    )


def _fallback(
    agent: res.Agent, field: str
) -> tuple[frozenset[Trigger] | None, list[FieldViolation]]:
    """The agent's fallback triggers; None (the defaults) when it sets no policy."""
    if not agent.HasField("fallback"):
        return None, []
    triggers, violations = [], []
    for i, value in enumerate(agent.fallback.triggers):
        name = res.FallbackTrigger.Name(value) if value in res.FallbackTrigger.values() else ""
        trigger = name.removeprefix("FALLBACK_TRIGGER_")
        if trigger not in Trigger.__members__:
            violations.append(FieldViolation(f"{field}.triggers[{i}]", "must be a FallbackTrigger"))
        else:
            triggers.append(Trigger(trigger))
    return frozenset(triggers), violations


def _schema(
    agent: res.Agent, name: Literal["input_schema", "output_schema"], field: str, *, output: bool
) -> tuple[JsonSchema | None, list[FieldViolation]]:
    if not agent.HasField(name):
        return None, []
    try:
        document = json_document(getattr(agent, name))
    except ValueError:  # a Struct number that is NaN or infinite has no JSON form
        return None, [FieldViolation(field, "numbers must be finite (JSON has no NaN or infinity)")]
    violations = schema_violations(document, field, output=output)
    return (None if violations else JsonSchema.of(document)), violations


def _decoders(
    agent: res.Agent, prefix: str
) -> dict[str, Callable[[], tuple[Any, list[FieldViolation]]]]:
    def text(name: str, limit: int, single_line: bool) -> Callable[[], tuple[Any, Any]]:
        value = getattr(agent, name)
        return lambda: (value, _text(value, f"{prefix}.{name}", limit, single_line=single_line))

    def labels() -> tuple[Any, list[FieldViolation]]:
        value = dict(agent.labels)
        return value, _prefixed(prefix, label_violations(value))

    return {
        "display_name": text("display_name", MAX_DISPLAY_NAME_CHARS, True),
        "description": text("description", MAX_DESCRIPTION_CHARS, False),
        "instructions": text("instructions", MAX_INSTRUCTIONS_CHARS, False),
        "routes": lambda: routes_of(agent.routes, f"{prefix}.routes"),
        "fallback": lambda: _fallback(agent, f"{prefix}.fallback"),
        "input_schema": lambda: _schema(
            agent, "input_schema", f"{prefix}.input_schema", output=False
        ),
        "output_schema": lambda: _schema(
            agent, "output_schema", f"{prefix}.output_schema", output=True
        ),
        "labels": labels,
    }


def _decode(
    agent: res.Agent, fields: Collection[str], prefix: str = "agent"
) -> tuple[dict[str, Any], list[FieldViolation]]:
    return decode_fields(_decoders(agent, prefix), fields, UPDATABLE_FIELDS)


def create_agent(request: pb.CreateAgentRequest) -> CreateAgent:
    violations: list[FieldViolation] = []
    workspace = ""
    try:
        workspace = workspace_of(request.parent)
    except InvalidArgument as exc:
        violations += exc.violations
    violations += agent_id_violations(request.agent_id)
    values, found = _decode(request.agent, UPDATABLE_FIELDS)
    violations += found
    spec = AgentSpec(**values)  # an invalid schema or route is left out: nothing to fit
    violations += structured_output_fit(spec)
    if violations:
        raise refused(violations)
    return CreateAgent(workspace, request.agent_id, spec)


def update_agent(request: pb.UpdateAgentRequest) -> UpdateAgent:
    workspace, agent_id, violations = _AGENT_NAME.violations(request.agent.name, "agent.name")
    try:
        fields = mask_fields(list(request.update_mask.paths), UPDATABLE_FIELDS)
    except InvalidArgument as exc:
        violations += exc.violations
        fields = frozenset()
    changes, found = _decode(request.agent, fields)
    violations += found
    violations += _etag_violations(request.agent.etag, "agent.etag")
    if violations:
        raise refused(violations)
    return UpdateAgent(workspace, agent_id, changes, request.agent.etag or None)


def _etag_violations(etag: str, field: str) -> list[FieldViolation]:
    if len(etag) > MAX_ETAG_CHARS or has_control_characters(etag):
        return [FieldViolation(field, "is not an etag this service issued")]
    return []


def delete_agent(request: pb.DeleteAgentRequest) -> tuple[str, str, str | None]:
    """(workspace, agent id, etag or None)."""
    workspace, agent_id, violations = _AGENT_NAME.violations(request.name, "name")
    violations += _etag_violations(request.etag, "etag")
    if violations:
        raise refused(violations)
    return workspace, agent_id, request.etag or None
