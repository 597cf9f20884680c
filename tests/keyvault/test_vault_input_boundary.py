"""Hostile input at the vault's boundary, over real mTLS: identifiers with control
characters, forged page tokens, oversized page sizes, and bytes that are not a message."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res
from keyvault_service.app import RunningKeyVault
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.keyvault.conftest import StartVault, keyring_of
from tests.keyvault.support import (
    audit_events,
    channel,
    client_credentials,
    expect_error,
    key_name,
    reason_of,
    request_id,
    session_ca,
    with_request_id,
    workspace,
)
from tests.keyvault.test_api import details
from tests.keyvault.test_authorization import mint
from tests.page_tokens import decode_token, encode_token, forged

Stub = Callable[[str], kv_grpc.KeyVaultServiceStub]
API_KEY = "sk-proj-boundary-0123456789abcdefQR77"
SERVICE = "/keyvault.v1.KeyVaultService"
# A trailing newline once passed `^...$` with re.match; the others are control characters.
CONTROL_SUFFIXES = ["\n", "\r\n", "\x00", "\t", "\x7f", "\x85", "\x1b[0m"]


def bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    return details(err)[1]


# --- identifiers ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", CONTROL_SUFFIXES, ids=repr)
async def test_key_names_with_control_characters_address_nothing(
    vault_stub: Stub, suffix: str
) -> None:
    app, ws = vault_stub("app"), workspace()
    name = key_name(ws)
    await app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY))
    bad_name = name + suffix
    for call in (
        app.GetApiKey(pb.GetApiKeyRequest(name=bad_name)),
        app.DeleteApiKey(pb.DeleteApiKeyRequest(name=bad_name)),
        app.SetApiKey(pb.SetApiKeyRequest(name=bad_name, api_key=API_KEY + "X")),
        vault_stub("execution").RevealApiKey(pb.RevealApiKeyRequest(name=bad_name)),
        app.ListApiKeys(pb.ListApiKeysRequest(parent=f"workspaces/{ws}{suffix}")),
    ):
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert bad_request_fields(err) in (["name"], ["parent"])
    # The real key is untouched: not deleted, not replaced.
    got = await app.GetApiKey(pb.GetApiKeyRequest(name=name))
    revealed = await vault_stub("execution").RevealApiKey(pb.RevealApiKeyRequest(name=name))
    assert revealed.plaintext_key == API_KEY
    assert got.api_key.name == name


@pytest.mark.parametrize("suffix", CONTROL_SUFFIXES, ids=repr)
async def test_api_key_with_control_characters_is_refused(vault_stub: Stub, suffix: str) -> None:
    app, ws = vault_stub("app"), workspace()
    err = await expect_error(
        app.SetApiKey(pb.SetApiKeyRequest(name=key_name(ws), api_key=API_KEY + suffix)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(err) == ["api_key"]
    listed = await app.ListApiKeys(pb.ListApiKeysRequest(parent=f"workspaces/{ws}"))
    assert list(listed.api_keys) == []


# --- page tokens and sizes ------------------------------------------------------------------


async def test_forged_list_api_keys_tokens_are_invalid_argument(vault_stub: Stub) -> None:
    app, ws = vault_stub("app"), workspace()
    parent = f"workspaces/{ws}"
    for provider in ("openai", "anthropic"):
        await app.SetApiKey(pb.SetApiKeyRequest(name=key_name(ws, provider), api_key=API_KEY))
    first = await app.ListApiKeys(pb.ListApiKeysRequest(parent=parent, page_size=1))
    genuine = first.next_page_token
    second = await app.ListApiKeys(
        pb.ListApiKeysRequest(parent=parent, page_size=1, page_token=genuine)
    )
    assert [k.provider for k in second.api_keys] == [res.PROVIDER_OPENAI]

    tokens = [
        forged(genuine, provider=7),
        forged(genuine, provider=["anthropic"]),
        forged(genuine, provider={"a": 1}),
        forged(genuine, provider="anthropic\x00"),
        forged(genuine, provider="zzz"),
        forged(genuine, provider=None),
        forged(genuine, provider=...),
        forged(genuine, extra=1),
        forged(genuine, q="workspaces/other"),
        encode_token([1, 2]),
        encode_token("[" * 5000),
        base64.urlsafe_b64encode(b"[" * 1400).decode(),  # nesting past the recursion limit
        base64.urlsafe_b64encode(b"\xff\xfe{}").decode(),  # not UTF-8
        genuine + "\n",  # base64 decoders skip what is not in the alphabet; we do not
        genuine[:-1] + "~",
        "A" * 5000,
    ]
    for token in tokens:
        err = await expect_error(
            app.ListApiKeys(pb.ListApiKeysRequest(parent=parent, page_token=token)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert bad_request_fields(err) == ["page_token"], token


async def test_forged_audit_tokens_are_invalid_argument(vault_stub: Stub) -> None:
    admin = vault_stub("admin")
    await admin.RewrapApiKeys(pb.RewrapApiKeysRequest())  # at least two audit events
    await admin.RewrapApiKeys(pb.RewrapApiKeysRequest())
    request = pb.ListAuditEventsRequest(parent="workspaces/-", page_size=1)
    genuine = (await admin.ListAuditEvents(request)).next_page_token
    assert isinstance(decode_token(genuine)["id"], int)

    for bad_id in (10**30, 2**63, 0, -1, True, 1.5, "5", None):
        token = forged(genuine, id=bad_id)
        err = await expect_error(
            admin.ListAuditEvents(
                pb.ListAuditEventsRequest(parent="workspaces/-", page_token=token)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert bad_request_fields(err) == ["page_token"], bad_id
    # The largest id a bigint holds is a valid cursor: every event is older than it.
    top = await admin.ListAuditEvents(
        pb.ListAuditEventsRequest(parent="workspaces/-", page_token=forged(genuine, id=2**63 - 1))
    )
    assert top.audit_events


async def test_page_size_above_the_maximum_is_lowered_to_it(
    start_vault: StartVault, tls_for: Callable[[str], TlsFiles]
) -> None:
    vault = await start_vault(keyring_of(1))
    app = kv_grpc.KeyVaultServiceStub(secure_channel(vault.port, tls_for("app")))
    admin = kv_grpc.KeyVaultServiceStub(secure_channel(vault.port, tls_for("admin")))
    # 1001 audit events: each denied reveal records one.
    name = key_name(workspace())
    for start in range(0, 1001, 100):
        await asyncio.gather(
            *(
                expect_error(
                    app.RevealApiKey(pb.RevealApiKeyRequest(name=name)),
                    grpc.StatusCode.PERMISSION_DENIED,
                )
                for _ in range(start, min(start + 100, 1001))
            )
        )
    for size in (1001, 5000, 2**31 - 1):
        page = await admin.ListAuditEvents(
            pb.ListAuditEventsRequest(parent="workspaces/-", page_size=size)
        )
        assert len(page.audit_events) == 1000
        assert page.next_page_token
    rest = await admin.ListAuditEvents(
        pb.ListAuditEventsRequest(
            parent="workspaces/-", page_size=2**31 - 1, page_token=page.next_page_token
        )
    )
    assert len(rest.audit_events) == 1 and not rest.next_page_token

    listed = await app.ListApiKeys(pb.ListApiKeysRequest(parent="workspaces/w", page_size=5000))
    assert list(listed.api_keys) == []
    # RewrapApiKeys' batch size is a page-like size with the same rule.
    rewrap = await admin.RewrapApiKeys(pb.RewrapApiKeysRequest(batch_size=2**31 - 1))
    assert rewrap.remaining_count == 0
    for call in (
        admin.RewrapApiKeys(pb.RewrapApiKeysRequest(batch_size=-1)),
        admin.ListAuditEvents(pb.ListAuditEventsRequest(parent="workspaces/-", page_size=-1)),
    ):
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert bad_request_fields(err) in (["batch_size"], ["page_size"])


# --- bytes that are not a message ------------------------------------------------------------

# A corrupt wire format, and a request whose field 1 (`name` or `parent`, a string in every
# request but RewrapApiKeys') is not UTF-8.
MALFORMED = {"corrupt": b"\xff\xff\xff", "bad-utf8": b"\x0a\x04ab\xc3\x28"}


def raw_call(ch: grpc.aio.Channel, method: str) -> Any:
    return ch.unary_unary(
        f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None
    )


@pytest.mark.parametrize("body", sorted(MALFORMED))
async def test_malformed_reveal_from_app_is_denied_and_audited(
    shared_vault: RunningKeyVault, vault_stub: Stub, tls_for: Callable[[str], TlsFiles], body: str
) -> None:
    rid = request_id()
    async with secure_channel(shared_vault.port, tls_for("app")) as ch:
        err = await expect_error(
            raw_call(ch, "RevealApiKey")(MALFORMED[body], metadata=with_request_id(rid)),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    assert reason_of(err) == "PERMISSION_DENIED"
    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    assert [(e.action, e.outcome) for e in events] == [
        (res.AUDIT_ACTION_REVEAL, res.AUDIT_OUTCOME_DENIED)
    ]
    assert events[0].caller == "spiffe://agents.internal/app"


@pytest.mark.parametrize("body", sorted(MALFORMED))
async def test_malformed_reveal_without_spiffe_id_is_unauthenticated_and_audited(
    shared_vault: RunningKeyVault, vault_stub: Stub, pki: Path, body: str
) -> None:
    ca = session_ca(pki)
    rid = request_id()
    no_identity = mint(ca, [], common_name="execution")
    async with channel(shared_vault.port, client_credentials(ca.cert_pem, no_identity)) as ch:
        err = await expect_error(
            raw_call(ch, "RevealApiKey")(MALFORMED[body], metadata=with_request_id(rid)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert reason_of(err) == "UNAUTHENTICATED"
    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    assert [(e.action, e.outcome, e.caller) for e in events] == [
        (res.AUDIT_ACTION_REVEAL, res.AUDIT_OUTCOME_DENIED, "")
    ]


@pytest.mark.parametrize("body", sorted(MALFORMED))
async def test_malformed_messages_from_allowed_callers_are_invalid_argument(
    shared_vault: RunningKeyVault,
    vault_stub: Stub,
    tls_for: Callable[[str], TlsFiles],
    body: str,
) -> None:
    calls = {
        "execution": ["RevealApiKey"],
        "app": ["SetApiKey", "GetApiKey", "ListApiKeys", "DeleteApiKey"],
        "admin": ["ListAuditEvents"] + (["RewrapApiKeys"] if body == "corrupt" else []),
    }
    request_ids = {}
    for workload, methods in calls.items():
        async with secure_channel(shared_vault.port, tls_for(workload)) as ch:
            for method in methods:
                rid = request_ids[method] = request_id()
                err = await expect_error(
                    raw_call(ch, method)(MALFORMED[body], metadata=with_request_id(rid)),
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
                assert reason_of(err) == "MALFORMED_REQUEST"
                assert bad_request_fields(err) == ["request"]
                assert "does not parse" in (err.details() or "")
            # The server keeps serving on the same connection.
            health = ch.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            reply = await health(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # Audited methods record the attempt as failed, like any invalid request.
    events = await audit_events(vault_stub("admin"))
    audited = {
        "SetApiKey": res.AUDIT_ACTION_SET,
        "DeleteApiKey": res.AUDIT_ACTION_DELETE,
        "RevealApiKey": res.AUDIT_ACTION_REVEAL,
        "RewrapApiKeys": res.AUDIT_ACTION_REWRAP,
    }
    for method, action in audited.items():
        if method not in request_ids:
            continue
        recorded = [e for e in events if e.request_id == request_ids[method]]
        assert [(e.action, e.outcome, e.reason) for e in recorded] == [
            (action, res.AUDIT_OUTCOME_FAILED, "INVALID_ARGUMENT")
        ], method


async def test_malformed_health_and_reflection_requests_are_invalid_argument(
    shared_vault: RunningKeyVault, tls_for: Callable[[str], TlsFiles]
) -> None:
    async with secure_channel(shared_vault.port, tls_for("app")) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check")
        await expect_error(check(MALFORMED["corrupt"]), grpc.StatusCode.INVALID_ARGUMENT)
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in watch(MALFORMED["corrupt"]):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Reflection is a request stream: a good message is answered, then a bad one ends it.
        reflect = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
        call = reflect(iter([good, MALFORMED["bad-utf8"]]))
        replies = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for reply in call:
                replies.append(reflection_pb2.ServerReflectionResponse.FromString(reply))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert replies and replies[0].list_services_response.service
