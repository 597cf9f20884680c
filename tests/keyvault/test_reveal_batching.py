"""Concurrent reveals through one statement, on the real database over mTLS: each caller gets
its own key (or NOT_FOUND) and exactly one audit record of its own, written by fewer
transactions than reveals; a lone reveal goes out at once; and a batch whose audit records
are refused reveals nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import resources_pb2 as res
from tests.keyvault.conftest import StartVault, Stubs, keyring_of
from tests.keyvault.support import (
    audit_events,
    block_audit,
    expect_error,
    key_name,
    reason_of,
    request_id,
    unblock_audit,
    with_request_id,
    workspace,
)

MakeDatabase = Callable[[str], Awaitable[str]]
REVEALS = 24


async def reveal_transactions(url: str) -> int:
    """The transactions that wrote this database's REVEAL records (each row's xmin): exact,
    whatever else the shared server runs meanwhile."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(DISTINCT xmin::text) FROM audit_events WHERE action = 'REVEAL'"
            )
        )
    finally:
        await conn.close()


def key_of(ws: str, provider: str) -> str:
    return f"sk-proj-batch-{provider}-{ws}-0123456789"


async def test_concurrent_reveals_share_statements_and_each_gets_its_own_record(
    start_vault: StartVault, make_database: MakeDatabase, stubs_for: Callable[..., Stubs]
) -> None:
    url = await make_database("kv")
    running = await start_vault(keyring_of(1), url)
    stubs = stubs_for(running)
    spaces = [workspace() for _ in range(3)]
    for ws in spaces:  # each has an OpenAI key and no Anthropic key
        await stubs.app.SetApiKey(
            pb.SetApiKeyRequest(name=key_name(ws, "openai"), api_key=key_of(ws, "openai"))
        )
    asked = [
        (request_id(), spaces[i % 3], "openai" if i % 4 else "anthropic") for i in range(REVEALS)
    ]

    async def reveal(rid: str, ws: str, provider: str) -> str | grpc.StatusCode:
        try:
            reply = await stubs.execution.RevealApiKey(
                pb.RevealApiKeyRequest(name=key_name(ws, provider)),
                metadata=with_request_id(rid),
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
        return reply.plaintext_key

    answers = await asyncio.gather(*(reveal(*a) for a in asked))
    writes = await reveal_transactions(url)

    for (_, ws, provider), answer in zip(asked, answers, strict=True):
        expected = key_of(ws, provider) if provider == "openai" else grpc.StatusCode.NOT_FOUND
        assert answer == expected
    # Fewer statements than reveals, each one write transaction.
    reveals = running.vault.reveals
    assert writes == reveals.statements < REVEALS
    assert reveals.largest_batch > 1
    # Exactly one record per reveal, with its own request id, caller and outcome.
    events = [
        e
        for ws in spaces
        for e in await audit_events(stubs.admin, f"workspaces/{ws}")
        if e.action == res.AUDIT_ACTION_REVEAL
    ]
    recorded = {e.request_id: e for e in events}
    assert len(events) == len(recorded) == REVEALS
    for rid, ws, provider in asked:
        event = recorded[rid]
        assert (event.workspace, event.caller) == (ws, "spiffe://agents.internal/execution")
        if provider == "openai":
            assert (event.outcome, event.reason) == (res.AUDIT_OUTCOME_ALLOWED, "")
        else:
            assert (event.outcome, event.reason) == (res.AUDIT_OUTCOME_FAILED, "API_KEY_NOT_FOUND")

    # A lone reveal does not wait for company: one statement of its own.
    statements = reveals.statements
    assert await reveal(request_id(), spaces[0], "openai") == key_of(spaces[0], "openai")
    assert reveals.statements == statements + 1


async def test_a_batch_whose_audit_records_are_refused_reveals_nothing(
    start_vault: StartVault, make_database: MakeDatabase, stubs_for: Callable[..., Stubs]
) -> None:
    url = await make_database("kv")
    running = await start_vault(keyring_of(1), url)
    stubs = stubs_for(running)
    ws = workspace()
    await stubs.app.SetApiKey(
        pb.SetApiKeyRequest(name=key_name(ws, "openai"), api_key=key_of(ws, "openai"))
    )

    await block_audit(url)
    try:
        calls = [
            stubs.execution.RevealApiKey(pb.RevealApiKeyRequest(name=key_name(ws, "openai")))
            for _ in range(REVEALS)
        ]
        errors = await asyncio.gather(
            *(expect_error(c, grpc.StatusCode.UNAVAILABLE) for c in calls)
        )
    finally:
        await unblock_audit(url)
    assert running.vault.reveals.largest_batch > 1  # the refused batch, then each alone
    for err in errors:
        assert reason_of(err) == "AUDIT_UNAVAILABLE"
        assert key_of(ws, "openai") not in f"{err.details()} {err.trailing_metadata()}"
    events = await audit_events(stubs.admin, f"workspaces/{ws}")
    assert [e for e in events if e.action == res.AUDIT_ACTION_REVEAL] == []
