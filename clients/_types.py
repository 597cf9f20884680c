"""Values the clients take and return beyond the generated messages, and the request
builders the asyncio and blocking clients share."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from .gen.execution.v1 import execution_service_pb2 as ex
from .gen.execution.v1 import resources_pb2 as ex_res
from .gen.keyvault.v1 import resources_pb2 as kv_res

T = TypeVar("T")

# A provider as `"openai"` / `"anthropic"` (any case, `PROVIDER_` prefix allowed) or the
# `keyvault.v1.Provider` enum value.
ProviderLike = str | int
# An execution state as `"succeeded"` (any case, `EXECUTION_STATE_` prefix allowed) or the
# `execution.v1.ExecutionState` enum value.
StateLike = str | int
# A chat message: a generated `Message`, or `(role, content)` with role
# `"system"`, `"user"` or `"assistant"`.
MessageLike = ex_res.Message | tuple[str, str]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list call; pass `next_page_token` back for the next ("" on the last)."""

    items: list[T]
    next_page_token: str


async def walk_pages(
    fetch: Callable[[str], Awaitable[Page[T]]], limit: int | None
) -> AsyncIterator[T]:
    """The items of successive pages (at most `limit`); `fetch(page_token)` gets a page and
    is called only when the items so far run out."""
    token, count = "", 0
    while True:
        page = await fetch(token)
        for item in page.items:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item
        token = page.next_page_token
        if not token:
            return


def walk_pages_sync(fetch: Callable[[str], Page[T]], limit: int | None) -> Iterator[T]:
    """`walk_pages` for the blocking clients."""
    token, count = "", 0
    while True:
        page = fetch(token)
        for item in page.items:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item
        token = page.next_page_token
        if not token:
            return


@dataclass(frozen=True)
class RevealedApiKey:
    """RevealApiKey's answer. The plaintext is left out of `repr`, so it stays out of logs
    and tracebacks that print the object."""

    api_key: kv_res.ApiKey
    plaintext_key: str = field(repr=False)


# `replayed` (on every event of the stream): the service answered from the record of an
# earlier call with the same request id instead of running the request again.


@dataclass(frozen=True)
class Started:
    """First event of Execute: the execution as recorded before the provider is called."""

    execution: ex_res.Execution
    replayed: bool = False


@dataclass(frozen=True)
class Delta:
    """Output text as it arrives."""

    text: str
    replayed: bool = False


@dataclass(frozen=True)
class Completed:
    """Last event of Execute: the finished execution (usage, cost, latency, attempts), and
    with an output schema its parsed `output`. `replayed`: answered from the record of an
    earlier call with the same request id (its state is whatever that call ended in)."""

    execution: ex_res.Execution
    replayed: bool = False

    @property
    def output(self) -> dict[str, Any] | None:
        """The structured output as plain JSON; None when no output schema applied."""
        return output_of(self.execution)

    @property
    def output_valid(self) -> bool | None:
        """Whether the output matched its schema; None when no output schema applied."""
        return output_valid_of(self.execution)


def output_of(execution: ex_res.Execution) -> dict[str, Any] | None:
    """An execution's parsed structured output as plain JSON (None when it has none)."""
    return json_document(execution.output) if execution.HasField("output") else None


def output_valid_of(execution: ex_res.Execution) -> bool | None:
    return execution.output_valid if execution.HasField("output_valid") else None


def violations_of(execution: ex_res.Execution) -> list[tuple[str, str]]:
    """Where a FAILED execution's output broke its schema: (JSON pointer, what is wrong)."""
    return [(v.pointer, v.description) for v in execution.error.violations]


ExecuteEvent = Started | Delta | Completed


def event_from_response(response: ex.ExecuteResponse) -> ExecuteEvent:
    kind = response.WhichOneof("event")
    if kind == "started":
        return Started(response.started, response.replayed)
    if kind == "delta":
        return Delta(response.delta.text, response.replayed)
    if kind == "completed":
        return Completed(response.completed, response.replayed)
    raise ValueError(f"unexpected Execute event {kind!r}")


# --- agents -----------------------------------------------------------------------------


def json_document(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A `google.protobuf.Struct` as plain JSON. Struct numbers are doubles, so integral ones
    become ints again (a schema's `"maxItems": 3`, not `3.0`)."""
    document: dict[str, Any] = _integral(json_format.MessageToDict(struct))
    return document


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def struct(document: Mapping[str, Any]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(document)
    return value


@dataclass(frozen=True)
class AgentRoute:
    """Where an agent runs: provider (`openai` / `anthropic`), model, generation settings."""

    provider: str
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentView:
    """An agent as plain Python values (schemas as dicts); `message` is the `Agent` itself."""

    name: str
    workspace: str
    agent_id: str
    display_name: str
    description: str
    instructions: str
    routes: tuple[AgentRoute, ...]
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    labels: dict[str, str]
    create_time: dt.datetime
    update_time: dt.datetime
    etag: str
    # Lower-case FallbackTrigger names (`rate_limited`, ...); None: the service's defaults.
    fallback_on: tuple[str, ...] | None = None
    message: ex_res.Agent = field(default_factory=ex_res.Agent, repr=False, compare=False)

    @classmethod
    def of(cls, agent: ex_res.Agent) -> AgentView:
        _, workspace, _, agent_id = agent.name.split("/", 3)
        return cls(
            name=agent.name,
            workspace=workspace,
            agent_id=agent_id,
            display_name=agent.display_name,
            description=agent.description,
            instructions=agent.instructions,
            routes=tuple(_route_view(r) for r in agent.routes),
            input_schema=json_document(agent.input_schema)
            if agent.HasField("input_schema")
            else None,
            output_schema=json_document(agent.output_schema)
            if agent.HasField("output_schema")
            else None,
            labels=dict(agent.labels),
            create_time=agent.create_time.ToDatetime(tzinfo=dt.UTC),
            update_time=agent.update_time.ToDatetime(tzinfo=dt.UTC),
            etag=agent.etag,
            fallback_on=tuple(
                ex_res.FallbackTrigger.Name(t).removeprefix("FALLBACK_TRIGGER_").lower()
                for t in agent.fallback.triggers
            )
            if agent.HasField("fallback")
            else None,
            message=agent,
        )


def _route_view(route: ex_res.Route) -> AgentRoute:
    config = route.generation_config
    return AgentRoute(
        provider=kv_res.Provider.Name(route.provider).removeprefix("PROVIDER_").lower(),
        model=route.model,
        max_tokens=config.max_tokens if config.HasField("max_tokens") else None,
        temperature=config.temperature if config.HasField("temperature") else None,
        top_p=config.top_p if config.HasField("top_p") else None,
        stop_sequences=tuple(config.stop_sequences),
    )


def agent_name(workspace: str, agent_id: str) -> str:
    """`workspaces/{workspace}/agents/{agent}`."""
    return f"{workspace_name(workspace)}/agents/{agent_id}"


# The route's settings, by keyword: any given changes the agent's (single) route.
ROUTE_SETTINGS = ("provider", "model", "max_tokens", "temperature", "top_p", "stop_sequences")


def route_message(
    base: ex_res.Route | None = None,
    *,
    provider: ProviderLike | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop_sequences: Iterable[str] | None = None,
) -> ex_res.Route:
    """A route: `base` (if any) with the given settings changed."""
    route = ex_res.Route()
    if base is not None:
        route.CopyFrom(base)
    if provider is not None:
        route.provider = provider_value(provider)
    if model is not None:
        route.model = model
    config = route.generation_config
    if max_tokens is not None:
        config.max_tokens = max_tokens
    if temperature is not None:
        config.temperature = temperature
    if top_p is not None:
        config.top_p = top_p
    if stop_sequences is not None:
        config.ClearField("stop_sequences")
        config.stop_sequences.extend(stop_sequences)
    return route


def route_of(route: AgentRoute) -> ex_res.Route:
    return route_message(
        provider=route.provider,
        model=route.model,
        max_tokens=route.max_tokens,
        temperature=route.temperature,
        top_p=route.top_p,
        stop_sequences=route.stop_sequences,
    )


# FallbackTrigger names as the clients take them (`fallback_on`).
FALLBACK_TRIGGERS = tuple(
    name.removeprefix("FALLBACK_TRIGGER_").lower()
    for name in ex_res.FallbackTrigger.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
    if name != "FALLBACK_TRIGGER_UNSPECIFIED"
)


def fallback_policy(triggers: Iterable[str]) -> ex_res.FallbackPolicy:
    """`["overloaded", "RATE_LIMITED"]` -> a FallbackPolicy; an empty list never falls back."""
    values = []
    for trigger in triggers:
        name = f"FALLBACK_TRIGGER_{trigger.upper()}"
        if trigger.lower() not in FALLBACK_TRIGGERS:
            raise ValueError(f"unknown fallback trigger {trigger!r}: one of {FALLBACK_TRIGGERS}")
        values.append(ex_res.FallbackTrigger.Value(name))
    return ex_res.FallbackPolicy(triggers=values)


def agent_message(
    *,
    name: str = "",
    display_name: str | None = None,
    description: str | None = None,
    instructions: str | None = None,
    routes: Sequence[ex_res.Route] | None = None,
    fallback_on: Iterable[str] | None = None,
    input_schema: Mapping[str, Any] | None = None,
    output_schema: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    etag: str = "",
) -> tuple[ex_res.Agent, list[str]]:
    """An `Agent` with the given fields, and the names of the fields given (an update mask)."""
    agent = ex_res.Agent(name=name, etag=etag)
    given: list[str] = []
    for field_name, value in (
        ("display_name", display_name),
        ("description", description),
        ("instructions", instructions),
    ):
        if value is not None:
            setattr(agent, field_name, value)
            given.append(field_name)
    if routes is not None:
        agent.routes.extend(routes)
        given.append("routes")
    if fallback_on is not None:
        agent.fallback.CopyFrom(fallback_policy(fallback_on))
        given.append("fallback")
    for field_name, schema in (("input_schema", input_schema), ("output_schema", output_schema)):
        if schema is not None:
            getattr(agent, field_name).CopyFrom(struct(schema))
            given.append(field_name)
    if labels is not None:
        agent.labels.update(labels)
        given.append("labels")
    return agent, given


def create_agent_request(
    workspace: str,
    agent_id: str,
    *,
    input_schema: Mapping[str, Any] | None = None,
    output_schema: Mapping[str, Any] | None = None,
    display_name: str = "",
    description: str = "",
    instructions: str = "",
    labels: Mapping[str, str] | None = None,
    routes: Sequence[AgentRoute] | None = None,
    fallback_on: Iterable[str] | None = None,
    **route: Any,
) -> ex.CreateAgentRequest:
    """One route from the ROUTE_SETTINGS in `route` (provider and model at least), or
    `routes`, in order of preference."""
    agent, _ = agent_message(
        display_name=display_name,
        description=description,
        instructions=instructions,
        routes=_routes(routes, route_changes(route)),
        fallback_on=fallback_on,
        input_schema=input_schema,
        output_schema=output_schema,
        labels=labels or {},
    )
    return ex.CreateAgentRequest(parent=workspace_name(workspace), agent_id=agent_id, agent=agent)


def route_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The route settings among an update's keyword arguments (None: unchanged)."""
    return {k: v for k, v in changes.items() if k in ROUTE_SETTINGS and v is not None}


def _routes(
    routes: Sequence[AgentRoute] | None,
    settings: Mapping[str, Any],
    base: Sequence[ex_res.Route] = (),
) -> list[ex_res.Route] | None:
    """The routes to send: `routes` as given, or the first of `base` with the route
    `settings` changed (the others kept); None when neither changes them."""
    if routes is not None:
        given = [name for name, value in settings.items() if value not in ((), [])]
        if given:
            raise ValueError(f"give routes or {', '.join(given)}, not both")
        return [route_of(r) for r in routes]
    if not settings:
        return None
    return [route_message(base[0] if base else None, **settings), *base[1:]]


def update_agent_request(
    workspace: str,
    agent_id: str,
    *,
    etag: str = "",
    base_routes: Sequence[ex_res.Route] = (),
    clear: Iterable[str] = (),
    routes: Sequence[AgentRoute] | None = None,
    **changes: Any,
) -> ex.UpdateAgentRequest:
    """Change the fields given (None: unchanged; `routes` replaces the list, route settings
    change the first of `base_routes`, the agent's current routes) and reset the `clear`ed
    ones to empty (`fallback`: back to the defaults). With `etag`, only if the agent is
    still at that version."""
    others = {k: v for k, v in changes.items() if k not in ROUTE_SETTINGS}
    agent, given = agent_message(
        name=agent_name(workspace, agent_id),
        etag=etag,
        routes=_routes(routes, route_changes(changes), base_routes),
        **others,
    )
    paths = list(dict.fromkeys([*given, *clear]))
    if not paths:
        raise ValueError("nothing to update: give at least one field")
    return ex.UpdateAgentRequest(agent=agent, update_mask=FieldMask(paths=paths))


# --- names and enums ----------------------------------------------------------------------


def provider_value(provider: ProviderLike) -> kv_res.Provider.ValueType:
    """`"openai"`, `"ANTHROPIC"`, `"PROVIDER_OPENAI"` or an enum value -> the enum value."""
    if isinstance(provider, int):
        return kv_res.Provider.ValueType(provider)
    name = provider.strip().upper()
    try:
        return kv_res.Provider.Value(name if name.startswith("PROVIDER_") else f"PROVIDER_{name}")
    except ValueError:
        raise ValueError(f"unknown provider {provider!r}: expected openai or anthropic") from None


def provider_slug(provider: ProviderLike) -> str:
    """The provider's segment in a key's resource name: `openai` or `anthropic`."""
    value = provider_value(provider)
    if value == kv_res.PROVIDER_UNSPECIFIED:
        raise ValueError("provider must be openai or anthropic")
    return kv_res.Provider.Name(value).removeprefix("PROVIDER_").lower()


def state_value(state: StateLike) -> ex_res.ExecutionState.ValueType:
    if isinstance(state, int):
        return ex_res.ExecutionState.ValueType(state)
    name = state.strip().upper()
    prefixed = name if name.startswith("EXECUTION_STATE_") else f"EXECUTION_STATE_{name}"
    try:
        return ex_res.ExecutionState.Value(prefixed)
    except ValueError:
        raise ValueError(
            f"unknown state {state!r}: expected running, succeeded, failed or cancelled"
        ) from None


def workspace_name(workspace: str) -> str:
    """`demo` -> `workspaces/demo` (a name already in that form is kept)."""
    return workspace if workspace.startswith("workspaces/") else f"workspaces/{workspace}"


def api_key_name(workspace: str, provider: ProviderLike) -> str:
    """`workspaces/{workspace}/apiKeys/{provider}`."""
    return f"{workspace_name(workspace)}/apiKeys/{provider_slug(provider)}"


def timestamp(value: dt.datetime) -> Timestamp:
    """A protobuf Timestamp; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


_ROLES = {
    "system": ex_res.MESSAGE_ROLE_SYSTEM,
    "user": ex_res.MESSAGE_ROLE_USER,
    "assistant": ex_res.MESSAGE_ROLE_ASSISTANT,
}


def message(item: MessageLike) -> ex_res.Message:
    if isinstance(item, ex_res.Message):
        return item
    role, content = item
    try:
        return ex_res.Message(role=_ROLES[role.lower()], content=content)
    except KeyError:
        raise ValueError(f"unknown role {role!r}: expected system, user or assistant") from None


# --- requests -----------------------------------------------------------------------------


def execute_request(
    workspace: str,
    *,
    agent_id: str = "",
    provider: ProviderLike | None = None,
    model: str = "",
    prompt: str | None = None,
    system: str | None = None,
    messages: Iterable[MessageLike] = (),
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop_sequences: Iterable[str] = (),
    request_id: str = "",
    labels: Mapping[str, str] | None = None,
    agent: str | None = None,
    input: Any = None,
    input_json: str | None = None,
    output_schema: Mapping[str, Any] | None = None,
    routes: Sequence[AgentRoute] | None = None,
) -> ex.ExecuteRequest:
    """Ad hoc: the conversation is `system` (if given), then `messages`, then `prompt` as a
    user message (if given), optionally with an `output_schema`, run on `provider` and
    `model` with the generation settings, or on `routes` in order of preference (each with
    its own settings, falling back by the service's defaults). By agent: `agent` (its id
    or full name) with `input` (a JSON object as a dict, or any JSON value) or `input_json`
    (JSON text, sent as is); the agent supplies everything else."""
    if agent is not None:
        ad_hoc = {
            "agent_id": agent_id,
            "provider": provider,
            "model": model,
            "prompt": prompt,
            "system": system,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop_sequences": list(stop_sequences),
            "output_schema": output_schema,
            "routes": routes,
        }
        given = [name for name, value in ad_hoc.items() if value not in (None, "", [])]
        if given:
            raise ValueError(f"the agent defines {', '.join(given)}: leave them out with agent=")
        request = ex.ExecuteRequest(
            parent=workspace_name(workspace),
            agent=agent if "/" in agent else agent_name(workspace, agent),
            request_id=request_id,
            labels=dict(labels or {}),
        )
        if input_json is not None:
            request.input_json = input_json
        elif isinstance(input, Mapping):
            request.input.CopyFrom(struct(input))
        elif input is not None:
            request.input_json = json.dumps(input)
        return request
    conversation: list[ex_res.Message] = []
    if system is not None:
        conversation.append(ex_res.Message(role=ex_res.MESSAGE_ROLE_SYSTEM, content=system))
    conversation.extend(message(m) for m in messages)
    if prompt is not None:
        conversation.append(ex_res.Message(role=ex_res.MESSAGE_ROLE_USER, content=prompt))
    config = ex_res.GenerationConfig(stop_sequences=list(stop_sequences))
    if max_tokens is not None:
        config.max_tokens = max_tokens
    if temperature is not None:
        config.temperature = temperature
    if top_p is not None:
        config.top_p = top_p
    if routes is not None:
        single: dict[str, object] = {"provider": provider, "model": model}
        single |= {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        given = [k for k, v in single.items() if v not in (None, "")] + (
            ["stop_sequences"] if config.stop_sequences else []
        )
        if given:
            raise ValueError(f"each route has its own settings: leave out {', '.join(given)}")
        return ex.ExecuteRequest(
            parent=workspace_name(workspace),
            agent_id=agent_id,
            messages=conversation,
            routes=[route_of(r) for r in routes],
            request_id=request_id,
            labels=dict(labels or {}),
            output_schema=struct(output_schema) if output_schema is not None else None,
        )
    return ex.ExecuteRequest(
        parent=workspace_name(workspace),
        agent_id=agent_id,
        provider=provider_value(provider) if provider is not None else kv_res.PROVIDER_UNSPECIFIED,
        model=model,
        messages=conversation,
        generation_config=config,
        request_id=request_id,
        labels=dict(labels or {}),
        output_schema=struct(output_schema) if output_schema is not None else None,
    )


def list_executions_request(
    workspace: str,
    *,
    agent_id: str = "",
    state: StateLike | None = None,
    start_time: dt.datetime | None = None,
    end_time: dt.datetime | None = None,
    page_size: int = 0,
    page_token: str = "",
) -> ex.ListExecutionsRequest:
    request = ex.ListExecutionsRequest(
        parent=workspace_name(workspace),
        agent_id=agent_id,
        page_size=page_size,
        page_token=page_token,
    )
    if state is not None:
        request.state = state_value(state)
    if start_time is not None:
        request.start_time.CopyFrom(timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(timestamp(end_time))
    return request


def agent_stats_request(
    workspace: str,
    agent_id: str,
    *,
    start_time: dt.datetime | None = None,
    end_time: dt.datetime | None = None,
) -> ex.GetAgentStatsRequest:
    request = ex.GetAgentStatsRequest(parent=workspace_name(workspace), agent_id=agent_id)
    if start_time is not None:
        request.start_time.CopyFrom(timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(timestamp(end_time))
    return request


def key_check_request(
    workspace: str, provider: ProviderLike, *, candidate_api_key: str = "", base_url: str = ""
) -> ex.TestApiKeyRequest:
    return ex.TestApiKeyRequest(
        parent=workspace_name(workspace),
        provider=provider_value(provider),
        candidate_api_key=candidate_api_key,
        base_url=base_url,
    )


def audit_parent(workspace: str | None) -> str:
    """`None` or `-` means every workspace (and vault-wide events)."""
    if workspace is None or workspace == "-":
        return "workspaces/-"
    return workspace_name(workspace)
