"""Provider failures are told in the service's own words wherever they reach someone: the
caller's status, the stored execution's error message and the log lines. The HTTP library's
wording ("Cannot connect to host ... ssl:default" for a plain http URL, a cut chunked stream
as "TransferEncodingError: 400, message='Not enough data...'", which reads like an HTTP 400)
never does."""

from __future__ import annotations

import socket

import grpc
import httpx
import pytest

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.http_transport import provider_http_client
from provider_emulator.server import RunningEmulator
from service_kit.egress import EgressPolicy
from tests.execution.support import (
    ANTHROPIC,
    OPENAI,
    Stub,
    Workspace,
    anthropic_key,
    error_info,
    get_execution,
    openai_key,
    request,
    run,
)
from tests.ops.conftest import LogCapture

# Phrases of aiohttp's and httpx's exception texts and class names.
LIBRARY_WORDING = (
    "ssl:default",
    "Cannot connect to host",
    "TransferEncodingError",
    "ClientPayloadError",
    "Not enough data",
    "message=",
    "400,",
    "RemoteProtocolError",
    "ConnectError",
    "ConnectTimeout",
)


def assert_own_words(*texts: str) -> None:
    for text in texts:
        leaked = [phrase for phrase in LIBRARY_WORDING if phrase in text]
        assert not leaked, (leaked, text)


@pytest.mark.parametrize("provider", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
async def test_a_stream_cut_mid_way_says_so(
    provider: int, workspace: Workspace, execution_stub: Stub, emulator: RunningEmulator
) -> None:
    key = anthropic_key() if provider == ANTHROPIC else openai_key()
    ws = await workspace(**{"anthropic" if provider == ANTHROPIC else "openai": key})
    model = "claude-3-5-sonnet-20241022" if provider == ANTHROPIC else "gpt-4o-mini"
    emulator.state.script({"cut_after_chunks": 5}, key=key)
    stub = execution_stub()

    with LogCapture() as logs:
        outcome = await run(stub, request(ws, provider, model))
    assert outcome.error is not None
    assert error_info(outcome.error).reason == "PROVIDER_STREAM_ERROR"
    stored = await get_execution(stub, outcome.started.name)

    assert "closed before the response was complete" in stored.error.message
    assert outcome.error.details() == stored.error.message
    assert_own_words(outcome.error.details() or "", stored.error.message, logs.text)


async def test_an_unreachable_http_endpoint_says_so(
    workspace: Workspace, execution_stub: Stub, app_vault: kv_grpc.KeyVaultServiceStub
) -> None:
    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ws = await workspace()
    await app_vault.SetApiKey(
        kv.SetApiKeyRequest(
            name=f"workspaces/{ws}/apiKeys/openai",
            api_key=openai_key(),
            base_url=f"http://127.0.0.1:{port}",
        )
    )
    stub = execution_stub()

    with LogCapture() as logs:
        outcome = await run(stub, request(ws, OPENAI, "gpt-4o-mini"))
        verdict = await stub.TestApiKey(
            pb.TestApiKeyRequest(parent=f"workspaces/{ws}", provider=OPENAI)
        )
    assert (verdict.valid, verdict.reason) == (False, "PROVIDER_UNREACHABLE")
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(outcome.error).reason == "PROVIDER_UNREACHABLE"
    stored = await get_execution(stub, outcome.started.name)

    assert stored.error.message.startswith("could not connect to the provider")
    assert_own_words(
        outcome.error.details() or "", stored.error.message, verdict.message, logs.text
    )


async def test_the_transport_names_a_refused_connection_in_its_own_words() -> None:
    """Below the one translation into provider errors: what a traceback or a debugger shows."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = provider_http_client(
        connect_timeout=5, read_timeout=5, egress=EgressPolicy.parse("127.0.0.1")
    )
    try:
        with pytest.raises(httpx.ConnectError) as refused:
            await client.get(f"http://127.0.0.1:{port}/v1/models")
    finally:
        await client.aclose()
    assert str(refused.value) == f"could not connect to http://127.0.0.1:{port}"
