"""Agents through the typed clients (asyncio and blocking) and the CLI, against the real
execution service over mTLS."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from clients import (
    Aborted,
    AgentRoute,
    AlreadyExists,
    ExecutionClient,
    ExecutionClientSync,
    InvalidArgument,
    NotFound,
)
from execution_service.app import RunningExecution
from tests.clients.conftest import Cli, Tls

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "items": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["answer", "items"],
    "additionalProperties": False,
}
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"email": {"type": "string", "format": "email"}},
    "required": ["email"],
}


def new_workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


async def test_async_client_agent_lifecycle(runner: ExecutionClient) -> None:
    ws = new_workspace()
    created = await runner.create_agent(
        ws,
        "support-bot",
        provider="openai",
        model="gpt-4o-mini",
        instructions="Answer briefly.",
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
        max_tokens=200,
        labels={"team": "support"},
    )
    assert created.name == f"workspaces/{ws}/agents/support-bot"
    assert (created.workspace, created.agent_id) == (ws, "support-bot")
    assert created.routes == (AgentRoute("openai", "gpt-4o-mini", max_tokens=200),)
    assert created.output_schema == OUTPUT_SCHEMA  # integers stay integers (maxItems: 3)
    assert created.input_schema == INPUT_SCHEMA
    assert await runner.get_agent(ws, "support-bot") == created

    with pytest.raises(AlreadyExists) as taken:
        await runner.create_agent(ws, "support-bot", provider="openai", model="gpt-4o-mini")
    assert taken.value.reason == "AGENT_ALREADY_EXISTS"

    # A route setting alone: the client reads the route and changes only that setting.
    moved = await runner.update_agent(ws, "support-bot", max_tokens=400, description="v2")
    assert moved.routes == (AgentRoute("openai", "gpt-4o-mini", max_tokens=400),)
    assert moved.description == "v2" and moved.instructions == "Answer briefly."
    assert moved.etag != created.etag

    with pytest.raises(Aborted) as stale:
        await runner.update_agent(ws, "support-bot", etag=created.etag, description="v3")
    assert stale.value.reason == "ETAG_MISMATCH"

    cleared = await runner.update_agent(ws, "support-bot", clear=["input_schema", "labels"])
    assert cleared.input_schema is None and cleared.labels == {}
    assert cleared.output_schema == OUTPUT_SCHEMA

    await runner.create_agent(ws, "another", provider="anthropic", model="claude-3-5-haiku")
    ids = [a.agent_id async for a in runner.iter_agents(ws, page_size=1)]
    assert ids == ["another", "support-bot"]
    page = await runner.list_agents(ws, page_size=1)
    assert [a.agent_id for a in page.items] == ["another"] and page.next_page_token

    with pytest.raises(Aborted):
        await runner.delete_agent(ws, "support-bot", etag=created.etag)
    await runner.delete_agent(ws, "support-bot", etag=cleared.etag)
    with pytest.raises(NotFound) as gone:
        await runner.get_agent(ws, "support-bot")
    assert gone.value.reason == "AGENT_NOT_FOUND"


async def test_async_client_invalid_schema(runner: ExecutionClient) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await runner.create_agent(
            new_workspace(),
            "bot",
            provider="anthropic",
            model="claude-sonnet-4-5",
            output_schema={**OUTPUT_SCHEMA, "required": ["answer"]},
        )
    # Anthropic allows optional properties but not `maxItems`.
    assert [v.field for v in refused.value.field_violations] == [
        "agent.output_schema.properties.items.maxItems"
    ]
    with pytest.raises(ValueError, match="nothing to update"):
        await runner.update_agent(new_workspace(), "bot")


async def test_sync_client_agents(execution: RunningExecution, tls: Tls) -> None:
    ws = new_workspace()

    def scenario() -> tuple[Any, ...]:
        with ExecutionClientSync.connect(f"localhost:{execution.port}", **tls("app")) as client:
            created = client.create_agent(ws, "bot", provider="anthropic", model="claude-x")
            updated = client.update_agent(ws, "bot", model="claude-y", etag=created.etag)
            listed = [a.agent_id for a in client.iter_agents(ws)]
            got = client.get_agent(ws, "bot")
            client.delete_agent(ws, "bot")
            try:
                client.get_agent(ws, "bot")
                missing = ""
            except NotFound as err:
                missing = err.reason
            return created, updated, listed, got, missing

    created, updated, listed, got, missing = await asyncio.to_thread(scenario)
    assert updated.routes == (AgentRoute("anthropic", "claude-y"),)
    assert updated.create_time == created.create_time
    assert listed == ["bot"] and got == updated
    assert missing == "AGENT_NOT_FOUND"


async def test_cli_agents(cli: Cli, tmp_path: Path) -> None:
    ws = new_workspace()
    schema_file = tmp_path / "output.json"
    schema_file.write_text(json.dumps(OUTPUT_SCHEMA))
    (tmp_path / "prompt.txt").write_text("You answer order questions.\nBe brief.")

    done = await cli(
        "agents",
        "create",
        ws,
        "support-bot",
        "--provider",
        "openai",
        "--model",
        "gpt-4o-mini",
        "--max-tokens",
        "300",
        "--instructions",
        f"@{tmp_path / 'prompt.txt'}",
        "--output-schema",
        str(schema_file),
        "--label",
        "team=support",
    )
    assert (done.code, done.err) == (0, "")
    assert f"workspaces/{ws}/agents/support-bot" in done.out
    assert "openai gpt-4o-mini (max tokens 300)" in done.out
    assert "You answer order questions.\nBe brief." in done.out
    assert '"maxItems": 3' in done.out

    done = await cli("agents", "get", ws, "support-bot", "--json")
    assert done.code == 0
    agent = json.loads(done.out)
    etag = agent["etag"]
    assert agent["output_schema"]["required"] == ["answer", "items"]
    assert agent["routes"][0]["provider"] == "PROVIDER_OPENAI"

    done = await cli("agents", "update", ws, "support-bot", "--model", "gpt-4o", "--etag", etag)
    assert done.code == 0 and "openai gpt-4o (max tokens 300)" in done.out

    done = await cli("agents", "update", ws, "support-bot", "--description", "x", "--etag", etag)
    assert done.code == 1
    assert done.err.startswith("error: ABORTED (ETAG_MISMATCH): ")

    done = await cli("agents", "list", ws)
    assert done.code == 0
    header, row = done.out.splitlines()
    assert header.split()[:3] == ["AGENT", "PROVIDER", "MODEL"]
    assert row.split()[:5] == ["support-bot", "openai", "gpt-4o", "-", "2"]

    done = await cli("agents", "delete", ws, "support-bot")
    assert (done.code, done.out) == (0, f"deleted workspaces/{ws}/agents/support-bot\n")
    done = await cli("agents", "get", ws, "support-bot")
    assert done.code == 1 and "NOT_FOUND (AGENT_NOT_FOUND)" in done.err
    done = await cli("agents", "list", ws, "--json")
    assert json.loads(done.out) == {"agents": []}


async def test_cli_agent_input_problems(cli: Cli, tmp_path: Path) -> None:
    ws = new_workspace()
    base = ["agents", "create", ws, "bot", "--provider", "openai", "--model", "gpt-4o-mini"]
    done = await cli(*base, "--input-schema", str(tmp_path / "missing.json"))
    assert done.code == 2 and "cannot read --input-schema" in done.err
    (tmp_path / "bad.json").write_text("{not json")
    done = await cli(*base, "--output-schema", str(tmp_path / "bad.json"))
    assert done.code == 2 and "is not JSON" in done.err
    (tmp_path / "array.json").write_text("[]")
    done = await cli(*base, "--output-schema", str(tmp_path / "array.json"))
    assert done.code == 2 and "must hold a JSON object" in done.err
    (tmp_path / "open.json").write_text(json.dumps({"type": "object", "properties": {}}))
    done = await cli(*base, "--output-schema", str(tmp_path / "open.json"))
    assert done.code == 1
    assert "INVALID_ARGUMENT" in done.err and "agent.output_schema.additionalProperties" in done.err
    done = await cli("agents", "update", ws, "bot")
    assert done.code == 2 and "nothing to update" in done.err
