"""Helpers shared by the key vault's server tests: rich error details, audit reads, PKI."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res
from service_kit import devcerts

DOMAIN = "keyvault.agents.internal"
# A fresh subchannel per channel: a test about handshakes must not reuse a connection.
FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


def key_name(ws: str, provider: str = "openai") -> str:
    return f"workspaces/{ws}/apiKeys/{provider}"


def request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def with_request_id(rid: str) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", rid),)


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def reason_of(err: grpc.aio.AioRpcError) -> str:
    info = error_info(err)
    assert info is not None, f"no ErrorInfo in {err.code()}: {err.details()}"
    assert info.domain == DOMAIN
    return info.reason


async def expect_error(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, (caught.value.code(), caught.value.details())
    return caught.value


async def audit_events(
    admin: kv_grpc.KeyVaultServiceStub, parent: str = "workspaces/-"
) -> list[res.AuditEvent]:
    """Every audit event under `parent`, newest first, following page tokens."""
    events: list[res.AuditEvent] = []
    token = ""
    while True:
        page = await admin.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=parent, page_size=1000, page_token=token)
        )
        events.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            return events


def session_ca(pki: Path) -> devcerts.Issued:
    """The test session's CA, to issue extra certificates from it."""
    return devcerts.Issued((pki / "ca.pem").read_bytes(), (pki / "ca-key.pem").read_bytes())


def client_credentials(
    root: bytes, issued: devcerts.Issued | None = None
) -> grpc.ChannelCredentials:
    if issued is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=issued.key_pem, certificate_chain=issued.cert_pem
    )


def channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"localhost:{port}", credentials, options=FRESH_CONNECTION)


async def block_audit(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "ALTER TABLE audit_events ADD CONSTRAINT audit_block CHECK (false) NOT VALID"
        )
    finally:
        await conn.close()


async def unblock_audit(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS audit_block")
    finally:
        await conn.close()
