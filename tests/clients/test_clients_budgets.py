"""`agentctl budgets ...` and the typed clients' budget methods, against the real pair: the
admin certificate manages budgets, a refusal is one line naming the reason, and a rate
limit's line says how long to wait."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from clients import PermissionDenied, usd_to_nanos
from tests.clients.conftest import Cli, CliResult


def new_workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


async def execute(cli: Cli, ws: str) -> CliResult:
    args = ("execute", ws, "--agent", "bot", "--provider", "openai", "--model", "gpt-4o-mini")
    return await cli(*args, "Say hello")


async def test_budgets_lifecycle_and_refusals(cli: Cli) -> None:
    ws = new_workspace()
    await cli("keys", "set", ws, "openai", env={"AGENTS_API_KEY": f"sk-{uuid.uuid4().hex}"})

    done = await cli("budgets", "create", ws, "daily", "--limit", "0.00001", "--period", "day")
    assert done.code == 0, done.err
    assert f"workspaces/{ws}/budgets/daily" in done.out
    assert "limit" in done.out and "$0.00001 per day" in done.out
    assert "remaining        $0.00001" in done.out

    refused = await execute(cli, ws)
    assert refused.code == 1
    assert refused.err.startswith("error: RESOURCE_EXHAUSTED (BUDGET_EXCEEDED): ")
    assert f"(execution workspaces/{ws}/executions/" in refused.err

    shown = json.loads((await cli("budgets", "get", ws, "daily", "--json")).out)
    assert shown["limit_nanos"] == "10000" and shown["mode"] == "BUDGET_MODE_ENFORCE"
    etag = shown["etag"]
    done = await cli(
        "budgets",
        "update",
        ws,
        "daily",
        "--clear",
        "limit",
        "--requests-per-minute",
        "1",
        "--etag",
        etag,
    )
    assert done.code == 0, done.err
    assert "requests/minute  1" in done.out and "limit            none per day" in done.out
    assert (await execute(cli, ws)).code == 0
    limited = await execute(cli, ws)
    assert limited.code == 1
    assert limited.err.startswith("error: RESOURCE_EXHAUSTED (RATE_LIMITED): ")
    assert "[retry after " in limited.err

    listed = await cli("budgets", "list", ws)
    assert listed.out.split()[:6] == ["BUDGET", "AGENT", "MODE", "LIMIT", "SPENT", "REMAINING"]
    assert listed.out.splitlines()[1].split()[:3] == ["daily", "*", "ENFORCE"]
    stale = await cli("budgets", "delete", ws, "daily", "--etag", etag)
    assert stale.code == 1 and "ABORTED" in stale.err
    done = await cli("budgets", "delete", ws, "daily")
    assert done.out == f"deleted workspaces/{ws}/budgets/daily\n"
    done = await cli("budgets", "list", ws)
    assert done.out == f"no budgets in workspaces/{ws}\n"


async def test_the_app_certificate_cannot_create_budgets(cli: Cli) -> None:
    done = await cli(
        "budgets",
        "create",
        new_workspace(),
        "b",
        "--limit",
        "1",
        "--cert",
        "certs/app.pem",
        "--key",
        "certs/app-key.pem",
    )
    assert done.code == 1 and "PERMISSION_DENIED" in done.err


def test_usd_is_exact() -> None:
    assert usd_to_nanos("2.50") == 2_500_000_000
    assert usd_to_nanos(Decimal("0.000000001")) == 1
    with pytest.raises(ValueError):
        usd_to_nanos("0.0000000001")
    with pytest.raises(TypeError):
        usd_to_nanos(0.1)  # type: ignore[arg-type]
    assert PermissionDenied.default_code.name == "PERMISSION_DENIED"
