"""Running agents through the typed clients (asyncio and blocking) and the CLI: the input goes
as a dict or as JSON text, the parsed output comes back, output failures carry violations."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from clients import (
    Completed,
    Delta,
    ExecutionClient,
    ExecutionClientSync,
    FailedPrecondition,
    InvalidArgument,
    violations_of,
)
from execution_service.app import RunningExecution
from provider_emulator.server import RunningEmulator
from tests.clients.conftest import Cli, Tls
from tests.clients.test_clients_agents import INPUT_SCHEMA, OUTPUT_SCHEMA

Workspace = Callable[..., Awaitable[str]]


def openai_key() -> str:
    return f"sk-test-{uuid.uuid4().hex}"


async def test_async_client_runs_an_agent_with_a_dict(
    runner: ExecutionClient, workspace: Workspace
) -> None:
    ws = await workspace(openai=openai_key())
    await runner.create_agent(
        ws,
        "bot",
        provider="openai",
        model="gpt-4o-mini",
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
    )
    events = [e async for e in runner.execute(ws, agent="bot", input={"email": "a@example.com"})]
    done = events[-1]
    assert isinstance(done, Completed)
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert done.output == json.loads(text) and done.output_valid is True
    assert done.execution.agent == f"workspaces/{ws}/agents/bot"

    with pytest.raises(InvalidArgument) as caught:
        async for _ in runner.execute(ws, agent=f"workspaces/{ws}/agents/bot", input={"email": 1}):
            pass
    assert [v.field for v in caught.value.field_violations] == ["input/email"]

    with pytest.raises(ValueError, match="model"):
        async for _ in runner.execute(ws, agent="bot", input={}, model="gpt-4o"):
            pass

    plain = [
        e async for e in runner.execute(ws, agent_id="a", provider="openai", model="m", prompt="x")
    ]
    assert isinstance(plain[-1], Completed) and plain[-1].output is None
    assert plain[-1].output_valid is None


async def test_sync_client_reports_an_output_schema_violation(
    execution: RunningExecution, tls: Tls, workspace: Workspace, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script({"output_fault": "schema_violation"}, key=key)

    def scenario() -> tuple[Any, ...]:
        with ExecutionClientSync.connect(f"localhost:{execution.port}", **tls("app")) as client:
            client.create_agent(
                ws, "bot", provider="openai", model="gpt-4o-mini", output_schema=OUTPUT_SCHEMA
            )
            try:
                for _ in client.execute(ws, agent="bot", input_json='{"q": 1}'):
                    pass
            except FailedPrecondition as err:
                return err, client.get_execution(err.execution_name or "")
            raise AssertionError("the execution succeeded")

    err, record = await asyncio.to_thread(scenario)
    assert err.reason == "OUTPUT_SCHEMA_VIOLATION"
    found = violations_of(record)
    assert found and found[0][0] in str(err)
    assert record.HasField("output_valid") and not record.output_valid


async def test_cli_runs_an_agent_and_lists_output_violations(
    cli: Cli, workspace: Workspace, emulator: RunningEmulator, tmp_path: Path
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    (tmp_path / "out.json").write_text(json.dumps(OUTPUT_SCHEMA))
    (tmp_path / "in.json").write_text(json.dumps(INPUT_SCHEMA))
    created = await cli(
        "agents", "create", ws, "bot", "--provider", "openai", "--model", "gpt-4o-mini",
        "--input-schema", "in.json", "--output-schema", "out.json",
    )  # fmt: skip
    assert created.code == 0, created.err

    ran = await cli("execute", ws, "--agent", "bot", "--input", '{"email": "a@example.com"}')
    assert ran.code == 0, ran.err
    assert set(json.loads(ran.out)) == {"answer", "items"}
    assert "SUCCEEDED" in ran.err and "output valid" in ran.err

    (tmp_path / "input.json").write_text('{"email": "b@example.com"}')
    emulator.state.script({"output_fault": "schema_violation"}, key=key)
    failed = await cli("execute", ws, "--agent", "bot", "--input", "@input.json")
    assert failed.code == 1
    lines = failed.err.splitlines()
    assert lines[0].startswith("error: FAILED_PRECONDITION (OUTPUT_SCHEMA_VIOLATION)")
    assert len(lines) >= 2 and all(line.startswith("  output") for line in lines[1:])

    bad = await cli("execute", ws, "--agent", "bot", "--input", "{not json")
    assert bad.code == 1 and "input_json" in bad.err
    mixed = await cli("execute", ws, "--agent", "bot", "--input", "{}", "--model", "m")
    assert mixed.code == 2 and "--model" in mixed.err
    missing = await cli("execute", ws, "--agent", "bot")
    assert missing.code == 2 and "--input" in missing.err
