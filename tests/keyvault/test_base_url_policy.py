"""SetApiKey's base_url rules over the real vault: refused forms, audit, the allowlist."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res
from service_kit.egress import NO_ALLOWLIST
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.keyvault.conftest import StartVault, keyring_of
from tests.keyvault.support import (
    audit_events,
    expect_error,
    key_name,
    reason_of,
    request_id,
    with_request_id,
    workspace,
)

Stub = Callable[[str], kv_grpc.KeyVaultServiceStub]
KEY = "sk-proj-base-url-test-0123456789abcd"

REFUSED = [
    "https://api.example.com/v\n1",  # newline: stored, it broke every later call
    "https://api.example.com/v1\n",
    "https://api.exa\tmple.com/v1",
    "https://api.example.com/v1\x00",  # NUL: gave INTERNAL and no audit row
    "https://api.example.com /v1",
    "https://api.example.com:0/v1",
    "https://169.254.169.254/latest/meta-data",
    "https://metadata.google.internal/computeMetadata/v1",
    "https://metadata.goog/v1",
    "https://10.0.0.1/v1",
    "https://192.168.1.1/v1",
    "https://172.16.5.4/v1",
    "https://100.64.0.1/v1",
    "https://[fd00::1]/v1",
    "https://[fe80::1]/v1",
    "https://[::ffff:169.254.169.254]/v1",
    "https://0.0.0.0/v1",
    "https://224.0.0.1/v1",
    "http://api.example.com/v1",  # plain http to a host that is not allowlisted
]


def violations_of(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


@pytest.mark.parametrize("base_url", REFUSED)
async def test_refused_base_urls_are_invalid_argument_and_audited(
    vault_stub: Stub, base_url: str
) -> None:
    ws, rid = workspace(), request_id()
    err = await expect_error(
        vault_stub("app").SetApiKey(
            pb.SetApiKeyRequest(name=key_name(ws), api_key=KEY, base_url=base_url),
            metadata=with_request_id(rid),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(violations_of(err)) == ["base_url"]
    assert reason_of(err) == "INVALID_ARGUMENT"
    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    assert [(e.action, e.outcome, e.workspace) for e in events] == [
        (res.AUDIT_ACTION_SET, res.AUDIT_OUTCOME_FAILED, ws)
    ]
    # Nothing was stored.
    await expect_error(
        vault_stub("app").GetApiKey(pb.GetApiKeyRequest(name=key_name(ws))),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_allowlisted_hosts_may_be_used_over_http(vault_stub: Stub) -> None:
    # The test vault allowlists 127.0.0.1 and localhost (the emulator's address).
    for url in ("http://127.0.0.1:8089/v1", "http://localhost:8089", "https://api.example.com"):
        answer = await vault_stub("app").SetApiKey(
            pb.SetApiKeyRequest(name=key_name(workspace()), api_key=KEY, base_url=url)
        )
        assert answer.api_key.base_url == url


async def test_without_an_allowlist_loopback_is_refused(
    start_vault: StartVault, tls_for: Callable[[str], TlsFiles]
) -> None:
    vault = await start_vault(keyring_of(1), egress=NO_ALLOWLIST)
    app = kv_grpc.KeyVaultServiceStub(secure_channel(vault.port, tls_for("app")))
    for url in ("http://127.0.0.1:8089", "https://127.0.0.1:8089", "https://localhost/v1"):
        err = await expect_error(
            app.SetApiKey(
                pb.SetApiKeyRequest(name=key_name(workspace()), api_key=KEY, base_url=url)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "base_url" in violations_of(err)
    stored = await app.SetApiKey(
        pb.SetApiKeyRequest(
            name=key_name(workspace()), api_key=KEY, base_url="https://llm.example.com/v1"
        )
    )
    assert stored.api_key.base_url == "https://llm.example.com/v1"
