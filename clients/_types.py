"""Values the clients take and return beyond the generated messages, and the request
builders the asyncio and blocking clients share."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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


@dataclass(frozen=True)
class Started:
    """First event of Execute: the execution as recorded before the provider is called."""

    execution: ex_res.Execution


@dataclass(frozen=True)
class Delta:
    """Output text as it arrives."""

    text: str


@dataclass(frozen=True)
class Completed:
    """Last event of Execute: the finished execution (usage, cost, latency, attempts)."""

    execution: ex_res.Execution


ExecuteEvent = Started | Delta | Completed


def event_from_response(response: ex.ExecuteResponse) -> ExecuteEvent:
    kind = response.WhichOneof("event")
    if kind == "started":
        return Started(response.started)
    if kind == "delta":
        return Delta(response.delta.text)
    if kind == "completed":
        return Completed(response.completed)
    raise ValueError(f"unexpected Execute event {kind!r}")


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
    agent_id: str,
    provider: ProviderLike,
    model: str,
    prompt: str | None = None,
    system: str | None = None,
    messages: Iterable[MessageLike] = (),
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop_sequences: Iterable[str] = (),
    request_id: str = "",
    labels: Mapping[str, str] | None = None,
) -> ex.ExecuteRequest:
    """The conversation is `system` (if given), then `messages`, then `prompt` as a user
    message (if given)."""
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
    return ex.ExecuteRequest(
        parent=workspace_name(workspace),
        agent_id=agent_id,
        provider=provider_value(provider),
        model=model,
        messages=conversation,
        generation_config=config,
        request_id=request_id,
        labels=dict(labels or {}),
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
