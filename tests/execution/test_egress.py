"""Provider calls reach only destinations the egress policy allows, checked when connecting."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from ipaddress import ip_address

import grpc
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.http_transport import PolicyResolver
from keyvault_service.app import start_keyvault
from provider_emulator.server import RunningEmulator
from service_kit.egress import NO_ALLOWLIST, EgressPolicy, EgressRefused, is_public_address
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.execution.conftest import StartExecution
from tests.execution.support import (
    OPENAI,
    Stub,
    Workspace,
    error_details,
    error_info,
    expect_error,
    get_execution,
    openai_key,
    request,
    run,
)
from tests.keyvault.conftest import keyring_of, vault_settings

NOT_THE_EMULATOR = "https://provider.invalid"  # default URLs that allowlist nothing local


def _port(emulator: RunningEmulator) -> int:
    return int(emulator.base_url.rsplit(":", 1)[1])


def _this_host_resolves_privately() -> str:
    """This machine's host name: not a forbidden name, but it resolves to loopback or a
    private address (``/etc/hosts``) on practically every machine."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    if any(is_public_address(ip_address(a.split("%")[0])) for a in addresses):
        pytest.skip(f"{name} resolves to a public address here: {addresses}")
    return name


async def _store(vault: kv_grpc.KeyVaultServiceStub, ws: str, key: str, base_url: str) -> None:
    await vault.SetApiKey(
        kv.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/openai", api_key=key, base_url=base_url)
    )


async def test_a_stored_url_to_a_forbidden_name_is_refused_when_connecting(
    workspace: Workspace,
    app_vault: kv_grpc.KeyVaultServiceStub,
    start_execution_service: StartExecution,
    execution_stub: Stub,
    emulator: RunningEmulator,
) -> None:
    # The vault's allowlist admits localhost; this execution service's does not (a key stored
    # under an older or looser policy). Its default URLs point at the emulator on 127.0.0.1,
    # which makes that address trusted, but not the name localhost.
    service = await start_execution_service(egress=NO_ALLOWLIST)
    stub = execution_stub(port=service.port)
    ws, key = await workspace(), openai_key()
    await _store(app_vault, ws, key, f"http://localhost:{_port(emulator)}")

    outcome = await run(stub, request(ws))
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.FAILED_PRECONDITION, outcome.error.details()
    info = error_info(outcome.error)
    assert info.reason == "PROVIDER_DESTINATION_FORBIDDEN"
    recorded = await get_execution(stub, info.metadata["execution"])
    assert recorded.state == res.EXECUTION_STATE_FAILED
    assert recorded.error.reason == "PROVIDER_DESTINATION_FORBIDDEN"
    assert recorded.attempts == 1  # refused, not retried
    assert emulator.state.find_requests(key=key) == []

    # The default base URL's host is trusted: the same emulator by its address works.
    ws2 = await workspace()
    await _store(app_vault, ws2, key, emulator.base_url)
    assert (await run(stub, request(ws2))).completed.state == res.EXECUTION_STATE_SUCCEEDED


async def test_a_name_resolving_to_a_forbidden_address_is_refused_at_connect_time(
    workspace: Workspace,
    app_vault: kv_grpc.KeyVaultServiceStub,
    start_execution_service: StartExecution,
    execution_stub: Stub,
    emulator: RunningEmulator,
) -> None:
    """DNS rebinding: the name passed when the key was stored; its address is refused when
    the service connects, by the real system resolver's answer."""
    host = _this_host_resolves_privately()
    ws, key = await workspace(), openai_key()
    await _store(app_vault, ws, key, f"https://{host}:{_port(emulator)}")  # accepted by name

    strict = await start_execution_service(
        egress=NO_ALLOWLIST, openai_base_url=NOT_THE_EMULATOR, anthropic_base_url=NOT_THE_EMULATOR
    )
    stub = execution_stub(port=strict.port)
    outcome = await run(stub, request(ws))
    assert outcome.error is not None
    assert outcome.error.code() == grpc.StatusCode.FAILED_PRECONDITION, outcome.error.details()
    assert error_info(outcome.error).reason == "PROVIDER_DESTINATION_FORBIDDEN"
    verdict = await stub.TestApiKey(
        pb.TestApiKeyRequest(parent=f"workspaces/{ws}", provider=OPENAI)
    )
    assert (verdict.valid, verdict.reason) == (False, "PROVIDER_DESTINATION_FORBIDDEN")

    # Control: allowlisting the name, or the address it resolves to, lets the connection be
    # attempted (it then fails TLS against the plain-HTTP emulator: unreachable, not refused).
    for allowlist in (host, "127.0.0.0/8,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"):
        admitted = await start_execution_service(
            egress=EgressPolicy.parse(allowlist),
            openai_base_url=NOT_THE_EMULATOR,
            anthropic_base_url=NOT_THE_EMULATOR,
        )
        outcome = await run(execution_stub(port=admitted.port), request(ws))
        assert outcome.error is not None
        assert error_info(outcome.error).reason == "PROVIDER_UNREACHABLE", allowlist


async def test_an_allowlisted_name_may_use_plain_http(
    workspace: Workspace,
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Awaitable[str]],
    start_execution_service: StartExecution,
    execution_stub: Stub,
    emulator: RunningEmulator,
) -> None:
    """A self-hosted server on the private network, named in both services' allowlist."""
    host = _this_host_resolves_privately()
    allowlist = EgressPolicy.parse(host)
    settings = dataclasses.replace(
        vault_settings(tls_for("keyvault"), keyring_of(1)), egress=allowlist
    )
    vault = await start_keyvault(settings, await make_database("kv"))
    try:
        app = kv_grpc.KeyVaultServiceStub(secure_channel(vault.port, tls_for("app")))
        ws, key = await workspace(), openai_key()
        await _store(app, ws, key, f"http://{host}:{_port(emulator)}/v1")
        service = await start_execution_service(
            vault_port=vault.port,
            egress=allowlist,
            openai_base_url=NOT_THE_EMULATOR,
            anthropic_base_url=NOT_THE_EMULATOR,
        )
        outcome = await run(execution_stub(port=service.port), request(ws))
        assert outcome.completed.state == res.EXECUTION_STATE_SUCCEEDED
        assert len(emulator.state.find_requests(key=key)) == 1
    finally:
        await vault.stop(grace=0.5)


@pytest.mark.parametrize(
    "base_url",
    [
        "https://169.254.169.254/v1",
        "https://metadata.google.internal",
        "https://[fd00::1]/v1",
        "https://10.0.0.1/v1",
        "https://api.example.com:0/v1",
        "https://api.example.com/v1\n",
        "http://api.example.com/v1",
    ],
)
async def test_test_api_key_refuses_a_forbidden_candidate_base_url(
    base_url: str, workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace()
    err = await expect_error(
        execution_stub().TestApiKey(
            pb.TestApiKeyRequest(
                parent=f"workspaces/{ws}",
                provider=OPENAI,
                candidate_api_key=openai_key(),
                base_url=base_url,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_details(err)[1] == ["base_url"]


# --- the resolver, with its lookup replaced ------------------------------------------------


class _ScriptedResolver(AbstractResolver):
    """Answers each lookup with the next list of addresses: a name whose DNS changes."""

    def __init__(self, *answers: list[str]) -> None:
        self._answers = list(answers)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._answers.pop(0)
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        pass


async def test_the_resolver_drops_forbidden_addresses_and_refuses_when_none_remain() -> None:
    inner = _ScriptedResolver(
        ["93.184.216.34"],  # first lookup: public
        ["93.184.216.34", "10.0.0.5", "169.254.169.254"],  # mixed: keep the public one
        ["127.0.0.1", "::ffff:10.0.0.1"],  # rebound to private addresses only
        ["10.1.2.3"],
    )
    resolver = PolicyResolver(EgressPolicy.parse("10.1.0.0/16"), inner)
    assert [r["host"] for r in await resolver.resolve("llm.example.com", 443)] == ["93.184.216.34"]
    assert [r["host"] for r in await resolver.resolve("llm.example.com", 443)] == ["93.184.216.34"]
    with pytest.raises(EgressRefused):
        await resolver.resolve("llm.example.com", 443)
    assert [r["host"] for r in await resolver.resolve("vllm.corp.example", 443)] == ["10.1.2.3"]


# --- no port scanning through TestApiKey ------------------------------------------------


@asynccontextmanager
async def _tcp_server(handle: Callable[..., Awaitable[None]]) -> AsyncIterator[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def _http_server(body: bytes, content_type: str) -> AsyncIterator[int]:
    async def anything(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_unreachable_endpoints_look_alike_and_only_a_provider_validates_a_key(
    workspace: Workspace, execution_stub: Stub
) -> None:
    ws = await workspace()
    stub = execution_stub()

    async def check(port: int) -> pb.TestApiKeyResponse:
        return await stub.TestApiKey(
            pb.TestApiKeyRequest(
                parent=f"workspaces/{ws}",
                provider=OPENAI,
                candidate_api_key=openai_key(),
                base_url=f"http://127.0.0.1:{port}",
            )
        )

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    verdicts = {"closed": await check(closed)}
    async with _tcp_server(hang_up) as port:
        verdicts["hangs up"] = await check(port)
    for what, verdict in verdicts.items():
        assert not verdict.valid, what
        assert verdict.reason == "PROVIDER_UNREACHABLE", (what, verdict.message)
        assert "127.0.0.1" not in verdict.message and str(closed) not in verdict.message
    assert verdicts["closed"].message == verdicts["hangs up"].message

    for body, content_type in (
        (b"hello", "text/plain"),
        (b'{"status": "ok"}', "application/json"),
        (b"<html>login</html>", "text/html"),
    ):
        async with _http_server(body, content_type) as port:
            verdict = await check(port)
        assert not verdict.valid, body
        assert verdict.reason != "", body
