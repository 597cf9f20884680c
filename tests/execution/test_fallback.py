"""Fallback routes, end to end through the fault-injecting emulator: which failures move an
execution on to its next route, what the record says about every attempt, and when it
never falls back (authentication, output already sent, a policy without triggers)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from provider_emulator.server import RunningEmulator
from tests.execution.support import (
    ANTHROPIC,
    CHUNKS,
    OPENAI,
    Stub,
    Workspace,
    anthropic_key,
    error_info,
    expect_error,
    get_execution,
    openai_key,
    request,
    run,
)
from tests.execution.test_agents import create, route, struct

SONNET = "claude-3-5-sonnet-20241022"
OVERLOADED = {"status": 529, "error_type": "overloaded_error"}
RETRIES = 3  # the test services' retry policy: attempts per route


def by_agent(ws: str, agent_id: str) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        parent=f"workspaces/{ws}",
        agent=f"workspaces/{ws}/agents/{agent_id}",
        input=struct({"question": "Where is my order?"}),
    )


async def fallback_agent(stub: Stub, ws: str, **changes: Any) -> str:
    """An agent on Anthropic first, falling back to OpenAI."""
    agent_id = f"bot-{uuid.uuid4().hex[:8]}"
    await create(
        stub,
        ws,
        agent_id,
        routes=[route(ANTHROPIC, SONNET, max_tokens=64), route(OPENAI, "gpt-4o-mini")],
        input_schema=None,
        output_schema=None,
        **changes,
    )
    return agent_id


def ad_hoc(ws: str, *routes: res.Route) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        parent=f"workspaces/{ws}",
        agent_id="agent-1",
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content="Say hello")],
        routes=list(routes),
    )


async def test_an_overloaded_first_route_falls_back_to_the_second(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ant, oai = anthropic_key(), openai_key()
    ws, stub = await workspace(anthropic=ant, openai=oai), execution_stub()
    agent_id = await fallback_agent(stub, ws)
    emulator.state.script([OVERLOADED] * RETRIES, key=ant)

    outcome = await run(stub, by_agent(ws, agent_id))

    done = outcome.completed
    assert outcome.text == "".join(CHUNKS)
    assert done.state == res.EXECUTION_STATE_SUCCEEDED
    assert outcome.started.provider == ANTHROPIC  # recorded with the first route as it starts
    assert (done.route_index, done.provider, done.model) == (1, OPENAI, "gpt-4o-mini")
    assert done.attempts == RETRIES + 1
    first, second = done.route_attempts
    assert (first.route_index, first.provider, first.model) == (0, ANTHROPIC, SONNET)
    assert (first.http_status, first.reason) == (529, "PROVIDER_OVERLOADED")
    assert first.cost_nanos == 0 and first.usage.output_tokens == 0
    assert (second.route_index, second.provider, second.http_status, second.reason) == (
        1,
        OPENAI,
        200,
        "",
    )
    assert second.usage == done.usage and second.usage.output_tokens > 0
    assert done.cost_nanos == second.cost_nanos > 0  # the sum over what was billed
    assert first.start_time.ToDatetime() <= second.start_time.ToDatetime()
    assert (await get_execution(stub, done.name)) == done
    assert [r.outcome for r in emulator.state.find_requests(key=ant)] == ["error"] * RETRIES
    assert [r.outcome for r in emulator.state.find_requests(key=oai)] == ["completed"]

    stats = await stub.GetAgentStats(
        pb.GetAgentStatsRequest(parent=f"workspaces/{ws}", agent_id=agent_id)
    )
    assert stats.stats.fallback_count == 1 and stats.stats.succeeded_count == 1


async def test_an_ad_hoc_execute_may_list_routes(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ant, oai = anthropic_key(), openai_key()
    ws, stub = await workspace(anthropic=ant, openai=oai), execution_stub()
    emulator.state.script([{"status": 500}] * RETRIES, key=oai)

    outcome = await run(stub, ad_hoc(ws, route(OPENAI, "gpt-4o"), route(ANTHROPIC, SONNET)))

    done = outcome.completed
    assert done.state == res.EXECUTION_STATE_SUCCEEDED
    assert (done.route_index, done.provider, done.model) == (1, ANTHROPIC, SONNET)
    assert [(a.provider, a.http_status, a.reason) for a in done.route_attempts] == [
        (OPENAI, 500, "PROVIDER_SERVER_ERROR"),
        (ANTHROPIC, 200, ""),
    ]


async def test_a_route_without_a_key_is_skipped_unless_it_is_the_last(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    oai = openai_key()
    ws, stub = await workspace(openai=oai), execution_stub()  # no Anthropic key

    outcome = await run(stub, ad_hoc(ws, route(ANTHROPIC, SONNET), route(OPENAI, "gpt-4o-mini")))
    done = outcome.completed
    assert done.state == res.EXECUTION_STATE_SUCCEEDED and done.route_index == 1
    skipped = done.route_attempts[0]
    assert (skipped.provider, skipped.reason, skipped.http_status) == (
        ANTHROPIC,
        "API_KEY_NOT_CONFIGURED",
        0,
    )

    call = stub.Execute(ad_hoc(ws, route(OPENAI, "gpt-4o-mini"), route(ANTHROPIC, SONNET)))
    emulator.state.script([OVERLOADED | {"status": 503}] * RETRIES, key=oai)
    err = await expect_error(_drain(call), grpc.StatusCode.FAILED_PRECONDITION)
    assert error_info(err).reason == "API_KEY_NOT_CONFIGURED"
    failed = await get_execution(stub, error_info(err).metadata["execution"])
    assert [(a.provider, a.reason) for a in failed.route_attempts] == [
        (OPENAI, "PROVIDER_OVERLOADED"),
        (ANTHROPIC, "API_KEY_NOT_CONFIGURED"),
    ]


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def test_no_fallback_on_an_auth_error_unless_the_agent_says_so(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ant, oai = anthropic_key(), openai_key()
    ws, stub = await workspace(anthropic=ant, openai=oai), execution_stub()
    default = await fallback_agent(stub, ws)
    emulator.state.script([{"status": 401}] * 2, key=ant)  # the key is refused, refetched

    err = await expect_error(_drain(stub.Execute(by_agent(ws, default))), _FAILED_PRECONDITION)
    assert error_info(err).reason == "PROVIDER_AUTH_FAILED"
    assert emulator.state.find_requests(key=oai) == []

    emulator.state.clear_scripts()
    willing = await fallback_agent(
        stub,
        ws,
        fallback=res.FallbackPolicy(triggers=[res.FALLBACK_TRIGGER_AUTH_FAILED]),
    )
    emulator.state.script([{"status": 401}] * 2, key=ant)
    done = (await run(stub, by_agent(ws, willing))).completed
    assert done.state == res.EXECUTION_STATE_SUCCEEDED and done.route_index == 1
    assert done.route_attempts[0].reason == "PROVIDER_AUTH_FAILED"


_FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def test_a_context_window_error_falls_back_by_default_and_never_with_no_triggers(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ant, oai = anthropic_key(), openai_key()
    ws, stub = await workspace(anthropic=ant, openai=oai), execution_stub()
    too_long = {
        "status": 400,
        "error_type": "invalid_request_error",
        "error_message": "prompt is too long: 215000 tokens > 200000 maximum",
    }
    emulator.state.script(too_long, key=ant)
    done = (await run(stub, by_agent(ws, await fallback_agent(stub, ws)))).completed
    assert done.route_index == 1
    assert done.route_attempts[0].reason == "PROVIDER_CONTEXT_WINDOW_EXCEEDED"

    never = await fallback_agent(stub, ws, fallback=res.FallbackPolicy(triggers=[]))
    emulator.state.script([OVERLOADED] * RETRIES, key=ant)
    err = await expect_error(_drain(stub.Execute(by_agent(ws, never))), grpc.StatusCode.UNAVAILABLE)
    assert error_info(err).reason == "PROVIDER_OVERLOADED"
    assert len(emulator.state.find_requests(key=oai)) == 1  # the first execution's only


async def test_no_fallback_once_output_reached_the_caller(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    ant, oai = anthropic_key(), openai_key()
    ws, stub = await workspace(anthropic=ant, openai=oai), execution_stub()
    agent_id = await fallback_agent(stub, ws)
    emulator.state.script({"error_after_chunks": 3, "error_type": "overloaded_error"}, key=ant)

    call = stub.Execute(by_agent(ws, agent_id))
    seen: list[pb.ExecuteResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            seen.append(event)
    assert any(e.HasField("delta") for e in seen)  # output reached the caller
    assert error_info(caught.value).reason == "PROVIDER_OVERLOADED"
    assert emulator.state.find_requests(key=oai) == []
    failed = await get_execution(stub, error_info(caught.value).metadata["execution"])
    assert failed.route_index == 0 and len(failed.route_attempts) == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"provider": OPENAI}, "provider"),
        ({"model": "gpt-4o"}, "model"),
        ({"generation_config": res.GenerationConfig(max_tokens=5)}, "generation_config"),
    ],
)
async def test_routes_replace_the_single_route_fields(
    fields: dict[str, Any], field: str, workspace: Workspace, execution_stub: Stub
) -> None:
    ws, stub = await workspace(), execution_stub()
    req = ad_hoc(ws, route(OPENAI, "gpt-4o"))
    for name, value in fields.items():
        if isinstance(value, res.GenerationConfig):
            req.generation_config.CopyFrom(value)
        else:
            setattr(req, name, value)
    err = await expect_error(_drain(stub.Execute(req)), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in (err.details() or "")


async def test_too_many_routes_are_refused(workspace: Workspace, execution_stub: Stub) -> None:
    ws, stub = await workspace(), execution_stub()
    req = ad_hoc(ws, *[route(OPENAI, "gpt-4o")] * 5)
    err = await expect_error(_drain(stub.Execute(req)), grpc.StatusCode.INVALID_ARGUMENT)
    assert "routes" in (err.details() or "")


def test_a_single_route_hashes_like_the_single_route_fields() -> None:
    from execution_service.plan import decode

    legacy = request("ws-1", OPENAI, "gpt-4o", request_id="r-1", prompt="Say hello")
    listed = ad_hoc("ws-1", route(OPENAI, "gpt-4o"))
    listed.request_id = "r-1"
    a, b = decode(legacy), decode(listed)
    assert a.request_hash == b.request_hash is not None
    two = ad_hoc("ws-1", route(OPENAI, "gpt-4o"), route(ANTHROPIC, SONNET))
    two.request_id = "r-1"
    assert decode(two).request_hash != a.request_hash
