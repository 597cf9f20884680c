"""Fallback routes through the typed clients and the CLI: agents with several routes, ad hoc
routes, and what each shows of a fallback (the answering route, the attempts before it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from clients import AgentRoute, Completed, ExecutionClient, ExecutionClientSync
from execution_service.app import RunningExecution
from provider_emulator.server import RunningEmulator
from tests.clients.conftest import Cli, Tls

Workspace = Callable[..., Awaitable[str]]
OVERLOADED = {"status": 529, "error_type": "overloaded_error"}
RETRIES = 3  # attempts per route in the test services


def keys() -> tuple[str, str]:
    return f"sk-ant-test-{uuid.uuid4().hex}", f"sk-test-{uuid.uuid4().hex}"


async def test_async_client_agent_with_routes_and_fallback_policy(
    runner: ExecutionClient, workspace: Workspace, emulator: RunningEmulator
) -> None:
    ant, oai = keys()
    ws = await workspace(anthropic=ant, openai=oai)
    routes = [AgentRoute("anthropic", "claude-3-5-sonnet-20241022", max_tokens=64)]
    routes.append(AgentRoute("openai", "gpt-4o-mini"))
    created = await runner.create_agent(ws, "bot", routes=routes, fallback_on=["overloaded"])
    assert created.routes == tuple(routes) and created.fallback_on == ("overloaded",)

    emulator.state.script([OVERLOADED] * RETRIES, key=ant)
    events = [e async for e in runner.execute(ws, agent="bot", input={"q": "hi"})]
    done = events[-1]
    assert isinstance(done, Completed)
    assert done.execution.route_index == 1
    assert [a.reason for a in done.execution.route_attempts] == ["PROVIDER_OVERLOADED", ""]

    # A first-route setting alone keeps the other routes; clearing the policy restores
    # the defaults.
    moved = await runner.update_agent(ws, "bot", max_tokens=128, clear=["fallback"])
    assert moved.routes[0].max_tokens == 128 and moved.routes[1] == routes[1]
    assert moved.fallback_on is None
    never = await runner.update_agent(ws, "bot", fallback_on=[])
    assert never.fallback_on == ()


async def test_sync_client_runs_ad_hoc_routes(
    execution: RunningExecution, tls: Tls, workspace: Workspace, emulator: RunningEmulator
) -> None:
    ant, oai = keys()
    ws = await workspace(anthropic=ant, openai=oai)
    emulator.state.script([{"status": 503}] * RETRIES, key=oai)

    def scenario() -> Completed:
        with ExecutionClientSync.connect(f"localhost:{execution.port}", **tls("app")) as client:
            events = list(
                client.execute(
                    ws,
                    agent_id="adhoc",
                    prompt="Say hello",
                    routes=[
                        AgentRoute("openai", "gpt-4o"),
                        AgentRoute("anthropic", "claude-3-haiku-20240307"),
                    ],
                )
            )
        done = events[-1]
        assert isinstance(done, Completed)
        return done

    done = await asyncio.to_thread(scenario)
    assert done.execution.model == "claude-3-haiku-20240307"
    assert [(a.http_status, a.reason) for a in done.execution.route_attempts] == [
        (503, "PROVIDER_SERVER_ERROR"),
        (200, ""),
    ]


async def test_cli_agents_with_routes_and_a_fallback_in_the_summary(
    cli: Cli, workspace: Workspace, emulator: RunningEmulator
) -> None:
    ant, oai = keys()
    ws = await workspace(anthropic=ant, openai=oai)
    created = await cli(
        "agents", "create", ws, "bot",
        "--route", "anthropic:claude-3-5-sonnet-20241022", "--route", "openai:gpt-4o-mini",
        "--max-tokens", "64", "--fallback-on", "overloaded", "--fallback-on", "server_error",
    )  # fmt: skip
    assert created.code == 0, created.err
    assert "route 1" in created.out and "route 2" in created.out
    assert "overloaded, server_error" in created.out

    emulator.state.script([OVERLOADED] * RETRIES, key=ant)
    ran = await cli("execute", ws, "--agent", "bot", "--input", "{}")
    assert ran.code == 0, ran.err
    assert "served by route 2 (anthropic PROVIDER_OVERLOADED)" in ran.err

    name = ran.err.rsplit("(", 1)[1].rstrip(")\n")
    shown = await cli("executions", "get", name)
    assert "route 1" in shown.out and "PROVIDER_OVERLOADED (HTTP 529)" in shown.out

    adhoc = await cli(
        "execute", ws, "--agent", "a", "--route", "openai:gpt-4o", "--route", "nobody:x", "hi"
    )
    assert adhoc.code == 2 and "openai or anthropic" in adhoc.err
    both = await cli(
        "execute", ws, "--agent", "a", "--route", "openai:gpt-4o", "--model", "m", "hi"
    )
    assert both.code == 2 and "--route" in both.err
    neither = await cli("agents", "create", ws, "bot2", "--model", "gpt-4o")
    assert neither.code == 2 and "--route" in neither.err
