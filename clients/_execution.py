"""Execution clients: `ExecutionClient` (asyncio) and `ExecutionClientSync` (blocking).

`execute(...)` yields typed events: `Started` (the execution as recorded before the provider
is called), `Delta` (output text as it arrives), and finally `Completed` (the finished
execution: usage, cost, latency, attempts); the iteration ends after `Completed`. A failure
raises a `ClientError` whose `execution_name` names the execution recorded as FAILED.
Leaving the loop early cancels the call (the service records the execution as CANCELLED).
Execute is never retried automatically; repeat it with the same `request_id` to have the
service answer from its record instead of calling the provider again (every event then has
`replayed` set). A request id already used for a different request raises
`FailedPrecondition` with reason `REQUEST_ID_REUSED`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from ._base import AsyncClientBase, SyncClientBase
from ._budgets import AsyncBudgetMethods, SyncBudgetMethods
from ._errors import error_from_rpc
from ._types import (
    AgentRoute,
    AgentView,
    ExecuteEvent,
    MessageLike,
    Page,
    ProviderLike,
    Started,
    StateLike,
    agent_name,
    agent_stats_request,
    create_agent_request,
    event_from_response,
    execute_request,
    key_check_request,
    list_executions_request,
    route_changes,
    update_agent_request,
    walk_pages,
    walk_pages_sync,
    workspace_name,
)
from .gen.execution.v1 import execution_service_pb2 as ex
from .gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from .gen.execution.v1 import resources_pb2 as ex_res

DEFAULT_EXECUTION_ADDRESS = "localhost:50052"


class ExecutionClient(AsyncBudgetMethods, AsyncClientBase):
    """asyncio client of `execution.v1.ExecutionService`.

    ```python
    async with ExecutionClient.connect(ca=..., cert=..., key=...) as client:
        async for event in client.execute("demo", agent_id="bot", provider="anthropic",
                                          model="claude-3-5-sonnet-20241022", prompt="Hi"):
            match event:
                case Delta(text=text):
                    print(text, end="")
                case Completed(execution=done):
                    print(done.usage.output_tokens, done.cost_nanos)
    ```
    """

    stub_class = ex_grpc.ExecutionServiceStub
    default_address = DEFAULT_EXECUTION_ADDRESS
    _stub: ex_grpc.ExecutionServiceAsyncStub

    async def execute(
        self,
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
        timeout: float | None = None,
    ) -> AsyncIterator[ExecuteEvent]:
        """Run a request: yields `Started`, `Delta`s, then `Completed` (whose `output` is the
        parsed structured output, if any). Ad hoc, the conversation is `system`, then
        `messages`, then `prompt` as a user message, with an optional `output_schema`. Or run
        an agent: `agent` (id or name) with `input` (a dict) or `input_json`. `timeout` is a
        deadline for the whole stream (none by default)."""
        request = execute_request(
            workspace,
            agent_id=agent_id,
            provider=provider,
            model=model,
            prompt=prompt,
            system=system,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_sequences=stop_sequences,
            request_id=request_id,
            labels=labels,
            agent=agent,
            input=input,
            input_json=input_json,
            output_schema=output_schema,
            routes=routes,
        )
        call = self._stub.Execute(request, timeout=timeout, metadata=self._metadata)
        started: str | None = None
        try:
            async for response in call:
                event = event_from_response(response)
                if isinstance(event, Started):
                    started = event.execution.name
                yield event
        except grpc.RpcError as err:
            raise error_from_rpc(err, execution_name=started) from err
        finally:
            call.cancel()  # a no-op once the call has finished

    async def get_execution(self, name: str, *, timeout: float | None = None) -> ex_res.Execution:
        """`name` is `workspaces/{workspace}/executions/{execution}`."""
        request = ex.GetExecutionRequest(name=name)
        return (await self._unary(self._stub.GetExecution, request, timeout)).execution

    async def cancel_execution(
        self, name: str, *, timeout: float | None = None
    ) -> ex_res.Execution:
        """Cancel a running execution, whichever replica runs it: the execution as recorded
        CANCELLED, or still RUNNING when its owner had not recorded it within about a second
        (it does so shortly). A finished execution raises FAILED_PRECONDITION."""
        request = ex.CancelExecutionRequest(name=name)
        return (await self._unary(self._stub.CancelExecution, request, timeout)).execution

    async def list_executions(
        self,
        workspace: str,
        *,
        agent_id: str = "",
        state: StateLike | None = None,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[ex_res.Execution]:
        """One page of the workspace's executions, newest first, filtered as given."""
        request = list_executions_request(
            workspace,
            agent_id=agent_id,
            state=state,
            start_time=start_time,
            end_time=end_time,
            page_size=page_size,
            page_token=page_token,
        )
        reply = await self._unary(self._stub.ListExecutions, request, timeout)
        return Page(list(reply.executions), reply.next_page_token)

    def iter_executions(
        self,
        workspace: str,
        *,
        agent_id: str = "",
        state: StateLike | None = None,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[ex_res.Execution]:
        """The workspace's executions (at most `limit`), newest first, across pages."""
        return walk_pages(
            lambda token: self.list_executions(
                workspace,
                agent_id=agent_id,
                state=state,
                start_time=start_time,
                end_time=end_time,
                page_size=page_size,
                page_token=token,
            ),
            limit,
        )

    async def get_agent_stats(
        self,
        workspace: str,
        agent_id: str,
        *,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        timeout: float | None = None,
    ) -> ex_res.AgentStats:
        """Aggregates over [start_time, end_time); by default the last 24 hours."""
        request = agent_stats_request(workspace, agent_id, start_time=start_time, end_time=end_time)
        return (await self._unary(self._stub.GetAgentStats, request, timeout)).stats

    async def test_api_key(
        self,
        workspace: str,
        provider: ProviderLike,
        *,
        candidate_api_key: str = "",
        base_url: str = "",
        timeout: float | None = None,
    ) -> ex.TestApiKeyResponse:
        """Check the stored key (or `candidate_api_key`, with its `base_url`) against the
        provider. A rejected key is an answer (`valid` False, `reason`), not an error."""
        request = key_check_request(
            workspace, provider, candidate_api_key=candidate_api_key, base_url=base_url
        )
        return await self._unary(self._stub.TestApiKey, request, timeout)

    # --- agents ---------------------------------------------------------------------------

    async def create_agent(
        self,
        workspace: str,
        agent_id: str,
        *,
        provider: ProviderLike | None = None,
        model: str | None = None,
        routes: Sequence[AgentRoute] | None = None,
        fallback_on: Iterable[str] | None = None,
        instructions: str = "",
        display_name: str = "",
        description: str = "",
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop_sequences: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AgentView:
        """Define an agent (its id unique in the workspace), on `provider` and `model` or on
        `routes` (`AgentRoute`s, in order of preference: the next runs when one fails with a
        `fallback_on` trigger, by default rate_limited, overloaded, server_error, unreachable
        and context_window_exceeded; `[]` never falls back). Schemas are JSON Schema (draft
        2020-12) dicts; the service refuses one a route's provider cannot use."""
        request = create_agent_request(
            workspace,
            agent_id,
            provider=provider,
            model=model,
            routes=routes,
            fallback_on=fallback_on,
            instructions=instructions,
            display_name=display_name,
            description=description,
            input_schema=input_schema,
            output_schema=output_schema,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_sequences=stop_sequences,
            labels=labels,
        )
        return AgentView.of((await self._unary(self._stub.CreateAgent, request, timeout)).agent)

    async def get_agent(
        self, workspace: str, agent_id: str, *, timeout: float | None = None
    ) -> AgentView:
        request = ex.GetAgentRequest(name=agent_name(workspace, agent_id))
        return AgentView.of((await self._unary(self._stub.GetAgent, request, timeout)).agent)

    async def list_agents(
        self,
        workspace: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[AgentView]:
        """One page of the workspace's agents, by id."""
        request = ex.ListAgentsRequest(
            parent=workspace_name(workspace), page_size=page_size, page_token=page_token
        )
        reply = await self._unary(self._stub.ListAgents, request, timeout)
        return Page([AgentView.of(a) for a in reply.agents], reply.next_page_token)

    def iter_agents(
        self, workspace: str, *, page_size: int = 0, limit: int | None = None
    ) -> AsyncIterator[AgentView]:
        return walk_pages(
            lambda token: self.list_agents(workspace, page_size=page_size, page_token=token),
            limit,
        )

    async def update_agent(
        self,
        workspace: str,
        agent_id: str,
        *,
        etag: str = "",
        clear: Iterable[str] = (),
        timeout: float | None = None,
        **changes: Any,
    ) -> AgentView:
        """Change the fields given as keywords (display_name, description, instructions,
        input_schema, output_schema, labels, routes, fallback_on, and the first route's
        provider, model, max_tokens, temperature, top_p, stop_sequences); `clear` names
        fields to empty. With `etag`,
        only if the agent is still at that version (else `Aborted`). Changing a route
        setting reads the agent first and updates only the version read."""
        base: Sequence[ex_res.Route] = ()
        if route_changes(changes):
            current = await self.get_agent(workspace, agent_id, timeout=timeout)
            base = current.message.routes
            etag = etag or current.etag
        request = update_agent_request(
            workspace, agent_id, etag=etag, base_routes=base, clear=clear, **changes
        )
        return AgentView.of((await self._unary(self._stub.UpdateAgent, request, timeout)).agent)

    async def delete_agent(
        self, workspace: str, agent_id: str, *, etag: str = "", timeout: float | None = None
    ) -> None:
        """With `etag`, only if the agent is still at that version (else `Aborted`)."""
        request = ex.DeleteAgentRequest(name=agent_name(workspace, agent_id), etag=etag)
        await self._unary(self._stub.DeleteAgent, request, timeout)


class ExecutionClientSync(SyncBudgetMethods, SyncClientBase):
    """Blocking client of `execution.v1.ExecutionService`; the same methods as
    `ExecutionClient`, without `await` (`execute` is a plain iterator)."""

    stub_class = ex_grpc.ExecutionServiceStub
    default_address = DEFAULT_EXECUTION_ADDRESS
    _stub: ex_grpc.ExecutionServiceStub

    def execute(
        self,
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
        timeout: float | None = None,
    ) -> Iterator[ExecuteEvent]:
        request = execute_request(
            workspace,
            agent_id=agent_id,
            provider=provider,
            model=model,
            prompt=prompt,
            system=system,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_sequences=stop_sequences,
            request_id=request_id,
            labels=labels,
            agent=agent,
            input=input,
            input_json=input_json,
            output_schema=output_schema,
            routes=routes,
        )
        call: Any = self._stub.Execute(request, timeout=timeout, metadata=self._metadata)
        started: str | None = None
        try:
            for response in call:
                event = event_from_response(response)
                if isinstance(event, Started):
                    started = event.execution.name
                yield event
        except grpc.RpcError as err:
            raise error_from_rpc(err, execution_name=started) from err
        finally:
            call.cancel()

    def get_execution(self, name: str, *, timeout: float | None = None) -> ex_res.Execution:
        request = ex.GetExecutionRequest(name=name)
        return self._unary(self._stub.GetExecution, request, timeout).execution

    def cancel_execution(self, name: str, *, timeout: float | None = None) -> ex_res.Execution:
        request = ex.CancelExecutionRequest(name=name)
        return self._unary(self._stub.CancelExecution, request, timeout).execution

    def list_executions(
        self,
        workspace: str,
        *,
        agent_id: str = "",
        state: StateLike | None = None,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[ex_res.Execution]:
        request = list_executions_request(
            workspace,
            agent_id=agent_id,
            state=state,
            start_time=start_time,
            end_time=end_time,
            page_size=page_size,
            page_token=page_token,
        )
        reply = self._unary(self._stub.ListExecutions, request, timeout)
        return Page(list(reply.executions), reply.next_page_token)

    def iter_executions(
        self,
        workspace: str,
        *,
        agent_id: str = "",
        state: StateLike | None = None,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[ex_res.Execution]:
        return walk_pages_sync(
            lambda token: self.list_executions(
                workspace,
                agent_id=agent_id,
                state=state,
                start_time=start_time,
                end_time=end_time,
                page_size=page_size,
                page_token=token,
            ),
            limit,
        )

    def get_agent_stats(
        self,
        workspace: str,
        agent_id: str,
        *,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        timeout: float | None = None,
    ) -> ex_res.AgentStats:
        request = agent_stats_request(workspace, agent_id, start_time=start_time, end_time=end_time)
        return self._unary(self._stub.GetAgentStats, request, timeout).stats

    def test_api_key(
        self,
        workspace: str,
        provider: ProviderLike,
        *,
        candidate_api_key: str = "",
        base_url: str = "",
        timeout: float | None = None,
    ) -> ex.TestApiKeyResponse:
        request = key_check_request(
            workspace, provider, candidate_api_key=candidate_api_key, base_url=base_url
        )
        return self._unary(self._stub.TestApiKey, request, timeout)

    # --- agents ---------------------------------------------------------------------------

    def create_agent(
        self,
        workspace: str,
        agent_id: str,
        *,
        provider: ProviderLike | None = None,
        model: str | None = None,
        routes: Sequence[AgentRoute] | None = None,
        fallback_on: Iterable[str] | None = None,
        instructions: str = "",
        display_name: str = "",
        description: str = "",
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop_sequences: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AgentView:
        request = create_agent_request(
            workspace,
            agent_id,
            provider=provider,
            model=model,
            routes=routes,
            fallback_on=fallback_on,
            instructions=instructions,
            display_name=display_name,
            description=description,
            input_schema=input_schema,
            output_schema=output_schema,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_sequences=stop_sequences,
            labels=labels,
        )
        return AgentView.of((self._unary(self._stub.CreateAgent, request, timeout)).agent)

    def get_agent(
        self, workspace: str, agent_id: str, *, timeout: float | None = None
    ) -> AgentView:
        request = ex.GetAgentRequest(name=agent_name(workspace, agent_id))
        return AgentView.of((self._unary(self._stub.GetAgent, request, timeout)).agent)

    def list_agents(
        self,
        workspace: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[AgentView]:
        request = ex.ListAgentsRequest(
            parent=workspace_name(workspace), page_size=page_size, page_token=page_token
        )
        reply = self._unary(self._stub.ListAgents, request, timeout)
        return Page([AgentView.of(a) for a in reply.agents], reply.next_page_token)

    def iter_agents(
        self, workspace: str, *, page_size: int = 0, limit: int | None = None
    ) -> Iterator[AgentView]:
        return walk_pages_sync(
            lambda token: self.list_agents(workspace, page_size=page_size, page_token=token),
            limit,
        )

    def update_agent(
        self,
        workspace: str,
        agent_id: str,
        *,
        etag: str = "",
        clear: Iterable[str] = (),
        timeout: float | None = None,
        **changes: Any,
    ) -> AgentView:
        base: Sequence[ex_res.Route] = ()
        if route_changes(changes):
            current = self.get_agent(workspace, agent_id, timeout=timeout)
            base = current.message.routes
            etag = etag or current.etag
        request = update_agent_request(
            workspace, agent_id, etag=etag, base_routes=base, clear=clear, **changes
        )
        return AgentView.of((self._unary(self._stub.UpdateAgent, request, timeout)).agent)

    def delete_agent(
        self, workspace: str, agent_id: str, *, etag: str = "", timeout: float | None = None
    ) -> None:
        request = ex.DeleteAgentRequest(name=agent_name(workspace, agent_id), etag=etag)
        self._unary(self._stub.DeleteAgent, request, timeout)
