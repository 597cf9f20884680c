"""Caller cancellation, the revealed-key cache, the refetch after a 401, and the vault being
unreachable: all through the real vault, the real emulator and real PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    CHUNKS,
    Stub,
    Workspace,
    error_info,
    get_execution,
    openai_key,
    request,
    reveal_count,
    run,
    wait_for_state,
)


@pytest.fixture
def admin_vault(
    pair_vault: RunningKeyVault, tls_for: Callable[[str], TlsFiles]
) -> kv_grpc.KeyVaultServiceStub:
    return kv_grpc.KeyVaultServiceStub(secure_channel(pair_vault.port, tls_for("admin")))


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never answers (a hung key vault)."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes its side
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_caller_cancel_closes_the_provider_request_and_records_cancelled(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script({"chunk_delay_ms": 200}, key=key)
    stub = execution_stub()

    call = stub.Execute(request(ws))
    started = await call.read()
    first = await call.read()
    assert started.WhichOneof("event") == "started"
    assert first.WhichOneof("event") == "delta" and first.delta.text.startswith(CHUNKS[0])
    call.cancel()

    # The provider request is closed at once, long before its 20 chunks x 200 ms are sent.
    await emulator.state.wait_for(
        lambda s: any(r.disconnected for r in s.find_requests(key=key)), timeout=3.0
    )
    sent = emulator.state.find_requests(key=key)
    assert len(sent) == 1 and sent[0].outcome == "disconnected"
    assert sent[0].chunks_sent < len(CHUNKS)

    cancelled = await wait_for_state(stub, started.started.name)
    assert cancelled.state == res.EXECUTION_STATE_CANCELLED
    assert cancelled.error.reason == "CANCELLED"
    assert cancelled.attempts == 1
    # The partial output: what the caller saw, possibly a chunk more that was in flight.
    assert cancelled.output_text.startswith(first.delta.text)
    assert "".join(CHUNKS).startswith(cancelled.output_text)
    assert cancelled.usage.output_tokens > 0
    assert cancelled.HasField("end_time")


async def test_deadline_mid_stream_is_failed_not_cancelled(
    workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    emulator.state.script({"chunk_delay_ms": 100}, key=key)
    stub = execution_stub()

    outcome = await run(stub, request(ws), timeout=0.5)

    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert outcome.text and "".join(CHUNKS).startswith(outcome.text)
    await emulator.state.wait_for(
        lambda s: any(r.disconnected for r in s.find_requests(key=key)), timeout=3.0
    )
    failed = await wait_for_state(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "DEADLINE_EXCEEDED"
    assert failed.output_text.startswith(outcome.text)
    assert "".join(CHUNKS).startswith(failed.output_text)


async def test_shared_cache_reveals_a_key_once_for_two_executions(
    workspace: Workspace,
    execution_stub: Stub,
    admin_vault: kv_grpc.KeyVaultServiceStub,
) -> None:
    ws = await workspace(openai=openai_key())
    stub = execution_stub()
    for _ in range(2):
        assert (await run(stub, request(ws))).completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert await reveal_count(admin_vault, ws) == 1


async def test_cache_disabled_reveals_the_key_for_every_execution(
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    admin_vault: kv_grpc.KeyVaultServiceStub,
) -> None:
    service = await start_execution_service(key_cache_ttl=0)
    ws = await workspace(openai=openai_key())
    stub = execution_stub(port=service.port)
    for _ in range(2):
        assert (await run(stub, request(ws))).completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert await reveal_count(admin_vault, ws) == 2


async def test_a_replaced_key_is_used_by_the_next_execution_despite_the_cache(
    workspace: Workspace,
    execution_stub: Stub,
    emulator: RunningEmulator,
    app_vault: kv_grpc.KeyVaultServiceStub,
    admin_vault: kv_grpc.KeyVaultServiceStub,
) -> None:
    key_a, key_b = openai_key(), openai_key()
    ws = await workspace(openai=key_a)
    stub = execution_stub()
    assert (await run(stub, request(ws))).completed.attempts == 1  # key A is now cached

    await app_vault.SetApiKey(
        kv.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/openai", api_key=key_b)
    )
    emulator.state.revoke(key_a)
    try:
        completed = (await run(stub, request(ws))).completed
    finally:
        emulator.state.restore(key_a)

    # The vault announced the change: the cached key A was dropped, not tried and refused.
    assert completed.state == res.EXECUTION_STATE_SUCCEEDED
    assert completed.attempts == 1
    assert completed.output_text == "".join(CHUNKS)
    assert [r.status for r in emulator.state.find_requests(key=key_a)] == [200]
    assert [r.status for r in emulator.state.find_requests(key=key_b)] == [200]
    assert await reveal_count(admin_vault, ws) == 2


async def test_revoked_current_key_fails_after_exactly_one_refetch(
    workspace: Workspace,
    execution_stub: Stub,
    emulator: RunningEmulator,
    admin_vault: kv_grpc.KeyVaultServiceStub,
) -> None:
    key = openai_key()
    ws = await workspace(openai=key)
    stub = execution_stub()
    assert (await run(stub, request(ws))).completed.attempts == 1  # cached

    emulator.state.revoke(key)
    try:
        outcome = await run(stub, request(ws))
    finally:
        emulator.state.restore(key)

    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(outcome.error)
    assert info.reason == "PROVIDER_AUTH_FAILED"
    assert info.metadata["execution"] == outcome.started.name
    failed = await get_execution(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "PROVIDER_AUTH_FAILED"
    assert failed.attempts == 2
    assert [r.status for r in emulator.state.find_requests(key=key)] == [200, 401, 401]
    assert await reveal_count(admin_vault, ws) == 2  # the first fetch and one refetch


async def test_unreachable_vault_fails_unavailable_and_tracked(
    workspace: Workspace,
    execution_stub: Stub,
    start_execution_service: StartExecution,
    emulator: RunningEmulator,
) -> None:
    service = await start_execution_service(vault_port=closed_port())
    key = openai_key()
    ws = await workspace(openai=key)
    stub = execution_stub(port=service.port)

    outcome = await run(stub, request(ws))

    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.UNAVAILABLE, outcome.error.details()
    info = error_info(outcome.error)
    assert info.reason == "KEYVAULT_UNAVAILABLE"
    assert info.metadata["execution"] == outcome.started.name
    failed = await get_execution(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "KEYVAULT_UNAVAILABLE"
    assert failed.attempts == 0
    assert failed.HasField("end_time")
    assert emulator.state.find_requests(key=key) == []  # the provider was never called


async def test_a_cancelled_key_fetch_does_not_cancel_the_executions_sharing_it(
    execution_stub: Stub, start_execution_service: StartExecution, silent_port: int
) -> None:
    """Two executions wait for one RevealApiKey; the caller that started it cancels. The
    other execution is not cancelled with it: it fetches the key itself (here the vault
    hangs, so it runs into its own deadline)."""
    service = await start_execution_service(vault_port=silent_port)
    stub = execution_stub(port=service.port)
    ws = f"ws-{uuid.uuid4().hex[:12]}"

    first = stub.Execute(request(ws))
    first_name = (await first.read()).started.name
    await asyncio.sleep(0.2)  # the first execution is now fetching the key
    second = stub.Execute(request(ws), timeout=1.0)
    second_name = (await second.read()).started.name
    await asyncio.sleep(0.2)  # and the second one waits for that same fetch
    first.cancel()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.read()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await wait_for_state(stub, first_name)).state == res.EXECUTION_STATE_CANCELLED
    second_row = await wait_for_state(stub, second_name)
    assert second_row.state == res.EXECUTION_STATE_FAILED
    assert second_row.error.reason == "DEADLINE_EXCEEDED"


async def test_deadline_while_the_vault_hangs_is_failed_not_cancelled(
    execution_stub: Stub, start_execution_service: StartExecution, silent_port: int
) -> None:
    """The caller's own deadline cancels the call a little before the deadline the service
    computed (the caller's clock started first): that is still a deadline, not a cancel."""
    service = await start_execution_service(vault_port=silent_port)
    stub = execution_stub(port=service.port)

    outcome = await run(stub, request(f"ws-{uuid.uuid4().hex[:12]}"), timeout=0.5)

    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    failed = await wait_for_state(stub, outcome.started.name)
    assert failed.state == res.EXECUTION_STATE_FAILED
    assert failed.error.reason == "DEADLINE_EXCEEDED"
    assert failed.attempts == 0
