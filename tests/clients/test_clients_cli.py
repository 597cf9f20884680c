"""The CLI in-process (`main(argv)`), against the real pair and the provider emulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clients import ClientError, ExecutionClient, Started
from clients.cli import build_parser, main
from provider_emulator.server import RunningEmulator
from tests.clients.conftest import Cli

CHUNKS = ["word0", *(f" word{i}" for i in range(1, 20))]
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def new_workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


def secret() -> str:
    return f"sk-cli-{uuid.uuid4().hex}"


async def test_keys_lifecycle(cli: Cli) -> None:
    ws, key, other = new_workspace(), secret(), secret()

    done = await cli("keys", "set", ws, "openai", env={"AGENTS_API_KEY": key})
    assert (done.code, done.err) == (0, "")
    assert done.out == f"created workspaces/{ws}/apiKeys/openai: sk-...{key[-4:]}\n"

    done = await cli("keys", "set", ws, "OpenAI", "--stdin", "--json", stdin=other + "\n")
    assert done.code == 0
    stored = json.loads(done.out)
    assert stored["created"] is False
    assert stored["api_key"]["key_hint"].endswith(other[-4:])

    done = await cli(
        "keys", "set", ws, "anthropic", "--from-env", "MY_KEY", env={"MY_KEY": "sk-ant-" + key}
    )
    assert done.code == 0 and done.out.startswith("created ")

    done = await cli("keys", "list", ws)
    lines = done.out.splitlines()
    assert done.code == 0 and lines[0].split()[:3] == ["PROVIDER", "HINT", "FINGERPRINT"]
    assert [line.split()[0] for line in lines[1:]] == ["anthropic", "openai"]

    listed = json.loads((await cli("keys", "list", ws, "--json")).out)
    assert [k["name"] for k in listed["api_keys"]] == [
        f"workspaces/{ws}/apiKeys/anthropic",
        f"workspaces/{ws}/apiKeys/openai",
    ]

    done = await cli("keys", "get", ws, "openai")
    assert done.code == 0 and f"workspaces/{ws}/apiKeys/openai" in done.out
    assert json.loads((await cli("keys", "get", ws, "openai", "--json")).out)["provider"] == (
        "PROVIDER_OPENAI"
    )

    done = await cli("keys", "delete", ws, "openai")
    assert (done.code, done.out) == (0, f"deleted workspaces/{ws}/apiKeys/openai\n")
    deleted = json.loads((await cli("keys", "delete", ws, "anthropic", "--json")).out)
    assert deleted == {"name": f"workspaces/{ws}/apiKeys/anthropic", "deleted": True}

    done = await cli("keys", "get", ws, "openai")
    assert done.code == 1 and done.out == ""
    assert done.err == (
        f"error: NOT_FOUND (API_KEY_NOT_FOUND): workspaces/{ws}/apiKeys/openai does not exist\n"
    )
    for output in (done.out, done.err):
        assert key not in output and other not in output


async def test_keys_set_never_takes_the_key_from_argv(cli: Cli) -> None:
    ws, key = new_workspace(), secret()
    done = await cli("keys", "set", ws, "openai", key)
    assert done.code == 2
    assert "unrecognized arguments" in done.err and key not in done.err + done.out
    done = await cli("keys", "set", ws, key)  # the key in the provider's place
    assert done.code == 2 and key not in done.err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["keys", "set", ws, "openai", key])
    positionals = [
        action.dest
        for action in _leaf(build_parser(), "keys", "set")._actions
        if not action.option_strings
    ]
    assert positionals == ["workspace", "provider"]

    done = await cli("keys", "set", ws, "openai")  # AGENTS_API_KEY is unset
    assert done.code == 2 and "no API key in $AGENTS_API_KEY" in done.err
    done = await cli("keys", "set", ws, "openai", "--stdin", stdin="")
    assert done.code == 2 and "standard input" in done.err
    assert (await cli("keys", "list", ws)).out == f"no API keys in workspaces/{ws}\n"


async def test_keys_test(cli: Cli, emulator: RunningEmulator) -> None:
    ws, key = new_workspace(), secret()
    await cli("keys", "set", ws, "openai", env={"AGENTS_API_KEY": key})
    done = await cli("keys", "test", ws, "openai")
    assert done.code == 0 and done.out.startswith(f"workspaces/{ws}/apiKeys/openai: valid (")

    candidate = secret()
    emulator.state.revoke(candidate)
    try:
        done = await cli(
            "keys",
            "test",
            ws,
            "anthropic",
            "--candidate-from-env",
            "CANDIDATE",
            "--base-url",
            emulator.base_url,
            "--json",
            env={"CANDIDATE": candidate},
        )
    finally:
        emulator.state.restore(candidate)
    assert done.code == 1
    verdict = json.loads(done.out)
    assert verdict["valid"] is False and verdict["reason"] == "PROVIDER_AUTH_FAILED"
    assert candidate not in done.out + done.err


async def test_execute_streams_text_then_a_summary(cli: Cli) -> None:
    ws = new_workspace()
    await cli("keys", "set", ws, "openai", env={"AGENTS_API_KEY": secret()})
    done = await cli(
        "execute",
        ws,
        "--agent",
        "cli-bot",
        "--provider",
        "openai",
        "--model",
        "gpt-4o-mini",
        "--system",
        "Be brief.",
        "--max-tokens",
        "100",
        "--request-id",
        "cli-1",
        "--label",
        "team=qa",
        "Say hello",
    )
    assert done.code == 0, done.err
    assert done.out == "".join(CHUNKS) + "\n"
    summary = done.err.strip()
    assert "\n" not in summary
    assert summary.startswith("SUCCEEDED: ")
    assert " out tokens, cost $0.0000" in summary and "attempts 1" in summary
    assert "latency " in summary and f"(workspaces/{ws}/executions/" in summary

    # The same request (the prompt from stdin this time) with the same request id: answered
    # from the record, as JSON lines of events, each marked as a replay.
    done = await cli(
        "execute",
        ws,
        "--agent=cli-bot",
        "--provider=openai",
        "--model=gpt-4o-mini",
        "--system=Be brief.",
        "--max-tokens=100",
        "--request-id=cli-1",
        "--label=team=qa",
        "--json",
        "-",
        stdin="Say hello",
    )
    assert done.code == 0 and done.err == ""
    events = [json.loads(line) for line in done.out.splitlines()]
    assert [sorted(e) for e in events] == [
        ["replayed", "started"],
        ["delta", "replayed"],
        ["completed", "replayed"],
    ]
    assert all(e["replayed"] is True for e in events)
    assert events[-1]["completed"]["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert events[-1]["completed"]["labels"] == {"team": "qa"}
    assert summary.endswith(f"({events[-1]['completed']['name']})")


async def test_execute_says_replayed_and_refuses_a_request_id_reused_for_another_prompt(
    cli: Cli,
) -> None:
    ws = new_workspace()  # no key stored: the first call is recorded FAILED
    form = ["execute", ws, "--agent", "a", "--provider", "anthropic", "--model", "m"]
    first = await cli(*form, "--request-id", "dup-1", "hi")
    assert first.code == 1 and "(API_KEY_NOT_CONFIGURED)" in first.err
    name = first.err.rstrip().rsplit("(execution ", 1)[1].rstrip(")")
    assert name.startswith(f"workspaces/{ws}/executions/")

    # The same request: the recorded FAILED outcome, said to be a replay, exit code as recorded.
    again = await cli(*form, "--request-id", "dup-1", "hi")
    assert again.code == 1 and again.out == ""
    assert again.err.startswith("FAILED: ") and "error API_KEY_NOT_CONFIGURED" in again.err
    assert again.err.rstrip().endswith(f", replayed from {name}")

    # Another prompt with that request id: refused, naming the execution that holds it.
    other = await cli(*form, "--request-id", "dup-1", "hello")
    assert other.code == 1 and other.out == ""
    assert other.err.startswith("error: FAILED_PRECONDITION (REQUEST_ID_REUSED): ")
    assert name in other.err and other.err.count("\n") == 1
    listed = json.loads((await cli("executions", "list", ws, "--json")).out)
    assert [e["name"] for e in listed["executions"]] == [name]


async def test_execute_failure_is_one_line_with_the_execution(cli: Cli) -> None:
    ws = new_workspace()  # no key stored
    done = await cli("execute", ws, "--agent", "a", "--provider", "anthropic", "--model", "m", "hi")
    assert done.code == 1 and done.out == ""
    assert done.err.startswith("error: FAILED_PRECONDITION (API_KEY_NOT_CONFIGURED): ")
    assert f"(execution workspaces/{ws}/executions/" in done.err
    assert done.err.count("\n") == 1 and "Traceback" not in done.err


async def test_executions_and_stats(cli: Cli) -> None:
    ws = new_workspace()
    await cli("keys", "set", ws, "anthropic", env={"AGENTS_API_KEY": secret()})
    for agent in ("bot-a", "bot-a", "bot-b"):
        run = await cli(
            "execute", ws, "--agent", agent, "--provider", "anthropic",
            "--model", "claude-3-5-sonnet-20241022", "--json", "hi",
        )  # fmt: skip
        assert run.code == 0, run.err

    done = await cli("executions", "list", ws)
    lines = done.out.splitlines()
    assert done.code == 0 and lines[0].split()[:3] == ["NAME", "AGENT", "PROVIDER"]
    assert [line.split()[1] for line in lines[1:]] == ["bot-b", "bot-a", "bot-a"]
    assert all("SUCCEEDED" in line for line in lines[1:])

    listed = json.loads(
        (await cli("executions", "list", ws, "--agent", "bot-a", "--limit", "1", "--json")).out
    )
    assert len(listed["executions"]) == 1 and listed["executions"][0]["agent_id"] == "bot-a"
    failed = await cli("executions", "list", ws, "--state", "failed", "--since", "1h")
    assert failed.out == f"no executions in workspaces/{ws} match\n"

    name = listed["executions"][0]["name"]
    done = await cli("executions", "get", name)
    assert done.code == 0 and name in done.out and "SUCCEEDED" in done.out
    assert done.out.rstrip().endswith("word19")  # the stored output text
    assert json.loads((await cli("executions", "get", name, "--json")).out)["name"] == name

    done = await cli("stats", ws, "bot-a")
    assert done.code == 0
    assert "2 (running 0, succeeded 2, failed 0, cancelled 0)" in done.out
    assert "success rate  100.0%" in done.out
    stats = json.loads((await cli("stats", ws, "bot-a", "--since", "1h", "--json")).out)
    assert stats["total_count"] == "2" and stats["output_tokens"] == "40"

    missing = await cli("executions", "get", f"workspaces/{ws}/executions/{uuid.uuid4()}")
    assert missing.code == 1 and missing.err.startswith("error: NOT_FOUND (EXECUTION_NOT_FOUND)")


async def test_executions_cancel(
    cli: Cli, runner: ExecutionClient, emulator: RunningEmulator
) -> None:
    """`executions cancel` on a running execution prints it CANCELLED; on a finished one it
    is a one-line FAILED_PRECONDITION."""
    ws, key = new_workspace(), secret()
    await cli("keys", "set", ws, "openai", env={"AGENTS_API_KEY": key})
    emulator.state.script({"chunks": 100, "chunk_delay_ms": 100}, key=key)
    stream = runner.execute(ws, agent_id="bot", provider="openai", model="gpt-4o-mini", prompt="x")
    started = await anext(stream)
    assert isinstance(started, Started)
    name = started.execution.name

    done = await cli("executions", "cancel", name)
    assert done.code == 0, done.err
    assert re.search(r"^state\s+CANCELLED$", done.out, re.M)
    assert re.search(r"^cancelled by\s+spiffe://agents.internal/app$", done.out, re.M)
    with pytest.raises(ClientError) as caught:
        async for _ in stream:
            pass
    assert caught.value.reason == "CANCELLED_BY_REQUEST"

    again = await cli("executions", "cancel", name, "--json")
    assert again.code == 1
    assert again.err.startswith("error: FAILED_PRECONDITION (EXECUTION_ALREADY_FINISHED)")


async def test_admin_commands_use_the_admin_certificate(cli: Cli, pki: Path) -> None:
    ws = new_workspace()
    await cli("keys", "set", ws, "openai", env={"AGENTS_API_KEY": secret()})

    done = await cli("admin", "rewrap", "--batch-size", "10")
    assert done.code == 0 and done.out.startswith("primary master key v1: rewrapped ")
    assert json.loads((await cli("admin", "rewrap", "--json")).out)["primary_version"] == 1

    done = await cli("admin", "audit", ws)
    lines = done.out.splitlines()
    assert done.code == 0 and lines[0].split()[:3] == ["TIME", "ACTION", "OUTCOME"]
    assert len(lines) == 2 and "SET" in lines[1] and "ALLOWED" in lines[1]
    everything = json.loads((await cli("admin", "audit", "-", "--limit", "2", "--json")).out)
    assert len(everything["audit_events"]) == 2

    # The app certificate, given explicitly, is not allowed.
    done = await cli(
        "admin", "audit", "--cert", str(pki / "app.pem"), "--key", str(pki / "app-key.pem")
    )
    assert done.code == 1 and done.err.startswith("error: PERMISSION_DENIED: ")


async def test_connection_flags_and_unreadable_certificates(cli: Cli, tmp_path: Path) -> None:
    done = await cli("keys", "list", "demo", "--ca", str(tmp_path / "missing.pem"))
    assert done.code == 2 and done.err.startswith("error: cannot read ")
    assert "missing.pem" in done.err and "Traceback" not in done.err

    done = await cli("keys", "list", "demo", "--vault", "localhost:1", "--timeout", "20")
    assert done.code == 1 and done.err.startswith("error: UNAVAILABLE")


def _leaf(parser, *path: str):
    for name in path:
        (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        parser = subparsers.choices[name]
    return parser


COMMANDS = [
    (),
    ("keys",),
    ("keys", "set"),
    ("keys", "list"),
    ("keys", "get"),
    ("keys", "delete"),
    ("keys", "test"),
    ("execute",),
    ("executions",),
    ("executions", "list"),
    ("executions", "get"),
    ("stats",),
    ("admin",),
    ("admin", "rewrap"),
    ("admin", "audit"),
]


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "top")
def test_help_everywhere(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: agentctl " + " ".join(path))


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["executions", "list", "ws", "--state", "done"]) == 2
    assert main(["stats", "ws", "agent", "--since", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_python_dash_m_clients() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clients", "keys", "--help"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m clients keys")
