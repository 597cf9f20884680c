"""WatchApiKeyChanges on real vaults: every change, from any replica sharing the database,
reaches every subscriber in commit order; only the execution identity may subscribe; the
stream ends cleanly when the vault stops or its LISTEN connection is lost, and the feed
listens again by itself."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest

from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.app import RunningKeyVault
from keyvault_service.key_changes import KeyChange, KeyChangeFeed, parse_notification
from keyvault_service.names import KeyRef
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.keyvault.conftest import StartVault, keyring_of
from tests.keyvault.test_readme_grpcurl_keyvault import run_grpcurl

Tls = Callable[[str], TlsFiles]
_WATCH = "keyvault.v1.KeyVaultService/WatchApiKeyChanges"


def _stub(vault: RunningKeyVault, tls_for: Tls, workload: str) -> kv_grpc.KeyVaultServiceStub:
    return kv_grpc.KeyVaultServiceStub(secure_channel(vault.port, tls_for(workload)))


async def _watch(vault: RunningKeyVault, tls_for: Tls) -> grpc.aio.StreamStreamCall:
    """A live subscription: its first message, the confirmation, already read."""
    call = _stub(vault, tls_for, "execution").WatchApiKeyChanges()
    first = await asyncio.wait_for(call.read(), timeout=10)
    assert first.WhichOneof("event") == "started"
    assert first.started.heartbeat_interval_seconds > 0
    return call


async def _next_change(call: grpc.aio.StreamStreamCall, *, ack: bool = True) -> kv.ApiKeyChange:
    """The next change, acknowledged as applied (as the execution service does) if `ack`."""
    while True:
        message = await asyncio.wait_for(call.read(), timeout=10)
        assert message is not grpc.aio.EOF, "the stream ended"
        if message.WhichOneof("event") == "change":
            if ack:
                await _ack(call, message.change.sequence)
            return message.change


async def _ack(call: grpc.aio.StreamStreamCall, sequence: int) -> None:
    await call.write(kv.WatchApiKeyChangesRequest(acknowledged_sequence=sequence))


def _name(ws: str, provider: str = "openai") -> str:
    return f"workspaces/{ws}/apiKeys/{provider}"


async def test_every_change_from_either_replica_reaches_a_subscriber_in_order(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]], tls_for: Tls
) -> None:
    url = await make_database("kv")
    keyring = keyring_of(1)
    watched, other = await start_vault(keyring, url), await start_vault(keyring, url)
    call = await _watch(watched, tls_for)
    app = _stub(other, tls_for, "app")  # changes made through the other replica
    ws = f"ws-{uuid.uuid4().hex[:12]}"

    await app.SetApiKey(kv.SetApiKeyRequest(name=_name(ws), api_key="sk-watch-0123456789"))
    created = await _next_change(call)
    await app.SetApiKey(
        kv.SetApiKeyRequest(
            name=_name(ws), api_key="sk-watch-0123456789", base_url="https://llm.example.com"
        )
    )
    rebased = await _next_change(call)
    await app.SetApiKey(
        kv.SetApiKeyRequest(name=_name(ws, "anthropic"), api_key="sk-ant-watch-0123456789")
    )
    anthropic = await _next_change(call)
    await app.DeleteApiKey(kv.DeleteApiKeyRequest(name=_name(ws)))
    deleted = await _next_change(call)

    assert [c.name for c in (created, rebased, anthropic, deleted)] == [
        _name(ws),
        _name(ws),
        _name(ws, "anthropic"),
        _name(ws),
    ]
    sequences = [c.sequence for c in (created, rebased, anthropic, deleted)]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4
    call.cancel()


async def test_only_the_execution_identity_may_watch(
    shared_vault: RunningKeyVault, tls_for: Tls
) -> None:
    for workload in ("app", "admin", "keyvault"):
        call = _stub(shared_vault, tls_for, workload).WatchApiKeyChanges()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_acknowledgement_that_does_not_parse_ends_the_stream_invalid(
    shared_vault: RunningKeyVault, tls_for: Tls
) -> None:
    channel = secure_channel(shared_vault.port, tls_for("execution"))
    call = channel.stream_stream(f"/{_WATCH}")()  # raw bytes both ways
    await asyncio.wait_for(call.read(), timeout=10)  # the confirmation
    await call.write(b"\x00")  # field number 0: not a protobuf message

    async def until_it_ends() -> None:
        while await call.read() is not grpc.aio.EOF:
            pass  # heartbeats

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(until_it_ends(), timeout=8)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_lost_listen_connection_ends_streams_and_the_feed_listens_again(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]], tls_for: Tls
) -> None:
    url = await make_database("kv")
    vault = await start_vault(keyring_of(1), url)
    call = await _watch(vault, tls_for)
    pid = vault.key_changes.listener_pid
    assert pid is not None

    # As when PostgreSQL restarts: the server ends the listening backend.
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()

    # The stream ends normally: changes may now go unheard, and the subscriber must know.
    assert await asyncio.wait_for(call.read(), timeout=10) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert await vault.key_changes.wait_live(timeout=10)
    assert vault.key_changes.listener_pid not in (None, pid)

    again = await _watch(vault, tls_for)
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    await _stub(vault, tls_for, "app").SetApiKey(
        kv.SetApiKeyRequest(name=_name(ws), api_key="sk-again-0123456789")
    )
    assert (await _next_change(again)).name == _name(ws)
    again.cancel()


async def test_vault_shutdown_ends_the_stream_cleanly_at_once(
    start_vault: StartVault, tls_for: Tls
) -> None:
    vault = await start_vault(keyring_of(1))
    call = await _watch(vault, tls_for)
    started = time.monotonic()
    stopping = asyncio.create_task(vault.stop(grace=10))
    assert await asyncio.wait_for(call.read(), timeout=5) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    await stopping
    assert time.monotonic() - started < 5  # not held until the grace period ran out


def test_notifications_parse_and_anything_else_is_ignored() -> None:
    assert parse_notification('{"sequence": 7, "workspace": "w", "provider": "openai"}') == (
        KeyChange(KeyRef("w", "openai"), 7)
    )
    for junk in ("", "null", "[]", '{"sequence": "x", "workspace": "w", "provider": "o"}', "{"):
        assert parse_notification(junk) is None


async def test_grpcurl_finds_the_method_by_reflection_and_follows_the_stream(
    shared_vault: RunningKeyVault, pki: Path
) -> None:
    certs = ["-cacert", "certs/ca.pem", "-cert", "certs/execution.pem"]
    certs += ["-key", "certs/execution-key.pem"]
    code, out, err = await run_grpcurl(
        ["grpcurl", *certs, "localhost:50051", "describe", "keyvault.v1.KeyVaultService"],
        shared_vault.port,
        pki,
    )
    assert code == 0, err
    assert "rpc WatchApiKeyChanges ( stream" in out and "returns ( stream" in out
    # The stream never ends by itself: grpcurl stops after -max-time, having printed the
    # confirmation that the subscription is live.
    code, out, err = await run_grpcurl(
        ["grpcurl", *certs, "-d", "{}", "-max-time", "2", "localhost:50051", _WATCH],
        shared_vault.port,
        pki,
    )
    assert json.loads(out.split("\n}")[0] + "}") == {"started": {"heartbeat_interval_seconds": 5}}


async def test_a_change_is_answered_once_every_subscriber_has_applied_it(
    start_vault: StartVault, make_database: Callable[[str], Awaitable[str]], tls_for: Tls
) -> None:
    """Subscribers of either replica acknowledge each change; SetApiKey and DeleteApiKey
    answer only then, and after at most about a second for a subscriber that never does."""
    url = await make_database("kv")
    keyring = keyring_of(1)
    first, second = await start_vault(keyring, url), await start_vault(keyring, url)
    prompt, slow = await _watch(first, tls_for), await _watch(second, tls_for)
    app = _stub(first, tls_for, "app")
    ws = f"ws-{uuid.uuid4().hex[:12]}"

    async def slow_subscriber() -> None:
        change = await _next_change(slow, ack=False)
        await asyncio.sleep(0.5)
        await _ack(slow, change.sequence)

    acknowledging = asyncio.create_task(slow_subscriber())
    prompt_reader = asyncio.create_task(_next_change(prompt))
    started = time.monotonic()
    await app.SetApiKey(kv.SetApiKeyRequest(name=_name(ws), api_key="sk-acked-0123456789"))
    assert time.monotonic() - started >= 0.5  # answered once the slow subscriber applied it
    await acknowledging
    await prompt_reader

    # A subscriber that never acknowledges holds a change up for about a second, no more.
    never = asyncio.create_task(_next_change(slow, ack=False))
    prompt_reader = asyncio.create_task(_next_change(prompt))
    started = time.monotonic()
    await app.DeleteApiKey(kv.DeleteApiKeyRequest(name=_name(ws)))
    assert 0.9 <= time.monotonic() - started < 5
    await never
    await prompt_reader
    prompt.cancel()
    slow.cancel()


async def test_the_feed_keeps_trying_while_the_database_socket_is_gone(
    shared_vault: RunningKeyVault, tmp_path: Path
) -> None:
    # A stopped local server leaves no socket file: connecting raises FileNotFoundError, which
    # must count as "unreachable, try again", not end the feed for good.
    gone = f"postgresql://postgres@/keyvault?host={tmp_path / 'no-server-here'}"
    feed = KeyChangeFeed(gone, shared_vault.pool, reconnect_delay=0.05, max_reconnect_delay=0.1)
    feed.start()
    try:
        await asyncio.sleep(1.0)
        assert feed.running, "the feed stopped trying"
    finally:
        await feed.stop()
