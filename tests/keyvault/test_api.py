"""Every KeyVaultService RPC's success and error paths, over real mTLS on real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res

Stub = Callable[[str], kv_grpc.KeyVaultServiceStub]
OPENAI_KEY = "sk-proj-test-0123456789abcdefXY12"
ANTHROPIC_KEY = "sk-ant-api03-test-0123456789abcdefZZ99"


def workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


def details(err: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) from a rich status."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "error carries no google.rpc.Status"
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            assert info.domain == "keyvault.agents.internal"
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


async def expect_error(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def test_set_get_list_delete_round_trip(vault_stub: Stub) -> None:
    app = vault_stub("app")
    ws = workspace()
    name = f"workspaces/{ws}/apiKeys/openai"

    first = await app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=OPENAI_KEY))
    assert first.created
    assert first.api_key.name == name
    assert first.api_key.provider == res.PROVIDER_OPENAI
    assert first.api_key.key_hint == "sk-...XY12"
    assert first.api_key.fingerprint.startswith("fp_")
    assert first.api_key.master_key_version == 1

    replaced = await app.SetApiKey(
        pb.SetApiKeyRequest(name=name, api_key=OPENAI_KEY + "9", base_url="http://127.0.0.1:9/v1")
    )
    assert not replaced.created
    assert replaced.api_key.fingerprint != first.api_key.fingerprint
    assert replaced.api_key.base_url == "http://127.0.0.1:9/v1"
    assert replaced.api_key.create_time == first.api_key.create_time

    got = await app.GetApiKey(pb.GetApiKeyRequest(name=name))
    assert got.api_key == replaced.api_key

    await app.SetApiKey(
        pb.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/anthropic", api_key=ANTHROPIC_KEY)
    )
    listed = await app.ListApiKeys(pb.ListApiKeysRequest(parent=f"workspaces/{ws}"))
    assert [k.provider for k in listed.api_keys] == [res.PROVIDER_ANTHROPIC, res.PROVIDER_OPENAI]
    assert listed.next_page_token == ""

    await app.DeleteApiKey(pb.DeleteApiKeyRequest(name=name))
    await expect_error(app.GetApiKey(pb.GetApiKeyRequest(name=name)), grpc.StatusCode.NOT_FOUND)
    err = await expect_error(
        app.DeleteApiKey(pb.DeleteApiKeyRequest(name=name)), grpc.StatusCode.NOT_FOUND
    )
    assert details(err)[0] == "API_KEY_NOT_FOUND"


async def test_list_paginates_with_opaque_tokens(vault_stub: Stub) -> None:
    app = vault_stub("app")
    ws = workspace()
    for provider in ("openai", "anthropic"):
        await app.SetApiKey(
            pb.SetApiKeyRequest(name=f"workspaces/{ws}/apiKeys/{provider}", api_key=OPENAI_KEY)
        )
    page1 = await app.ListApiKeys(pb.ListApiKeysRequest(parent=f"workspaces/{ws}", page_size=1))
    assert [k.name.rsplit("/", 1)[1] for k in page1.api_keys] == ["anthropic"]
    assert page1.next_page_token
    page2 = await app.ListApiKeys(
        pb.ListApiKeysRequest(
            parent=f"workspaces/{ws}", page_size=1, page_token=page1.next_page_token
        )
    )
    assert [k.name.rsplit("/", 1)[1] for k in page2.api_keys] == ["openai"]
    assert page2.next_page_token == ""

    # A token from one workspace's listing is refused for another's.
    err = await expect_error(
        app.ListApiKeys(
            pb.ListApiKeysRequest(
                parent=f"workspaces/{workspace()}", page_token=page1.next_page_token
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(err)[1] == ["page_token"]


async def test_reveal_returns_plaintext_to_execution_only(vault_stub: Stub) -> None:
    ws = workspace()
    name = f"workspaces/{ws}/apiKeys/anthropic"
    await vault_stub("app").SetApiKey(pb.SetApiKeyRequest(name=name, api_key=ANTHROPIC_KEY))
    revealed = await vault_stub("execution").RevealApiKey(pb.RevealApiKeyRequest(name=name))
    assert revealed.plaintext_key == ANTHROPIC_KEY
    assert revealed.api_key.name == name
    err = await expect_error(
        vault_stub("execution").RevealApiKey(
            pb.RevealApiKeyRequest(name=f"workspaces/{ws}/apiKeys/openai")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details(err)[0] == "API_KEY_NOT_FOUND"


@pytest.mark.parametrize(
    ("request_fields", "bad_fields"),
    [
        ({"name": "workspaces/w/apiKeys/gemini", "api_key": OPENAI_KEY}, ["name"]),
        ({"name": "workspaces/w/apiKeys/openai", "api_key": ""}, ["api_key"]),
        ({"name": "workspaces/w/apiKeys/openai", "api_key": "k" * 4097}, ["api_key"]),
        ({"name": "workspaces/w/apiKeys/openai", "api_key": "has space"}, ["api_key"]),
        ({"name": "projects/w/apiKeys/openai", "api_key": OPENAI_KEY}, ["name"]),
        ({"name": "workspaces/-bad/apiKeys/openai", "api_key": OPENAI_KEY}, ["name"]),
        ({"name": f"workspaces/{'w' * 64}/apiKeys/openai", "api_key": OPENAI_KEY}, ["name"]),
        ({"name": "workspaces/w\u00e9/apiKeys/openai", "api_key": OPENAI_KEY}, ["name"]),
        (
            {"name": "workspaces/w/apiKeys/openai", "api_key": OPENAI_KEY, "base_url": "ftp://x"},
            ["base_url"],
        ),
        (
            {
                "name": "workspaces/w/apiKeys/openai",
                "api_key": OPENAI_KEY,
                "base_url": "http://example.com/v1",
            },
            ["base_url"],
        ),
        ({"name": "", "api_key": ""}, ["name", "api_key"]),
    ],
)
async def test_set_rejects_bad_input_and_writes_nothing(
    vault_stub: Stub, request_fields: dict[str, str], bad_fields: list[str]
) -> None:
    app = vault_stub("app")
    err = await expect_error(
        app.SetApiKey(pb.SetApiKeyRequest(**request_fields)), grpc.StatusCode.INVALID_ARGUMENT
    )
    reason, fields = details(err)
    assert reason == "INVALID_ARGUMENT"
    assert fields == bad_fields
    assert request_fields["api_key"] not in err.details() or not request_fields["api_key"]
    listed = await app.ListApiKeys(pb.ListApiKeysRequest(parent="workspaces/w"))
    assert list(listed.api_keys) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListApiKeysRequest(parent="workspaces/w", page_size=-1), "page_size"),
        (pb.ListApiKeysRequest(parent="workspaces/w", page_token="not-a-token"), "page_token"),
        (pb.ListApiKeysRequest(parent="workspaces/"), "parent"),
    ],
)
async def test_list_rejects_bad_paging(
    vault_stub: Stub, request_: pb.ListApiKeysRequest, field: str
) -> None:
    err = await expect_error(
        vault_stub("app").ListApiKeys(request_), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(err)[1] == [field]


async def test_get_and_delete_reject_malformed_names(vault_stub: Stub) -> None:
    app = vault_stub("app")
    for call in (
        app.GetApiKey(pb.GetApiKeyRequest(name="workspaces/w/apiKeys")),
        app.DeleteApiKey(pb.DeleteApiKeyRequest(name="workspaces/w/apiKeys/openai/extra")),
    ):
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert details(err)[1] == ["name"]


async def test_rewrap_and_audit_need_admin_and_validate(vault_stub: Stub) -> None:
    admin = vault_stub("admin")
    result = await admin.RewrapApiKeys(pb.RewrapApiKeysRequest())
    assert result.primary_version == 1
    assert result.remaining_count == 0
    await expect_error(
        admin.RewrapApiKeys(pb.RewrapApiKeysRequest(batch_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    events = await admin.ListAuditEvents(pb.ListAuditEventsRequest(parent="workspaces/-"))
    assert events.audit_events[0].action == res.AUDIT_ACTION_REWRAP
    assert events.audit_events[0].caller == "spiffe://agents.internal/admin"
    await expect_error(
        admin.ListAuditEvents(pb.ListAuditEventsRequest(parent="workspaces/a/b")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
