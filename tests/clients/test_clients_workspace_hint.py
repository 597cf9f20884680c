"""`keys list` tells a workspace with nothing at all (often a mistyped name: workspace names
are case-sensitive and nothing registers them) from one that has executions or agents; and
`keys set --help` describes `--base-url` for both providers."""

from __future__ import annotations

import socket
import uuid

from clients import ExecutionClient
from tests.clients.conftest import Cli


def note_for(workspace: str) -> str:
    return f"note: workspace {workspace} has no keys, no executions and no agents"


async def test_a_workspace_with_nothing_at_all_is_pointed_out(cli: Cli) -> None:
    typo = f"Demo-{uuid.uuid4().hex[:8]}"
    done = await cli("keys", "list", typo)
    assert done.code == 0
    assert done.out == f"no API keys in workspaces/{typo}\n"
    assert note_for(typo) in done.err and "case-sensitive" in done.err


async def test_a_workspace_with_executions_but_no_keys_is_not(
    cli: Cli, runner: ExecutionClient
) -> None:
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    await cli("keys", "set", ws, "openai", env={"AGENTS_API_KEY": f"sk-cli-{uuid.uuid4().hex}"})
    events = [
        e
        async for e in runner.execute(
            ws, agent_id="bot", provider="openai", model="gpt-4o-mini", prompt="Hi"
        )
    ]
    assert events
    await cli("keys", "delete", ws, "openai")

    done = await cli("keys", "list", ws)
    assert (done.code, done.out, done.err) == (0, f"no API keys in workspaces/{ws}\n", "")


async def test_without_the_execution_service_only_the_keys_are_reported(cli: Cli) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    ws = f"Demo-{uuid.uuid4().hex[:8]}"
    done = await cli("keys", "list", ws, "--execution", nowhere)
    assert (done.code, done.out, done.err) == (0, f"no API keys in workspaces/{ws}\n", "")


async def test_keys_set_help_offers_base_url_for_either_provider(cli: Cli) -> None:
    done = await cli("keys", "set", "--help")
    help_text = " ".join(done.out.split())
    assert "for either provider" in help_text
    assert "OpenAI-compatible endpoint for the key" not in help_text
