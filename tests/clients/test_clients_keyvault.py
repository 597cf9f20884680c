"""KeyVaultClient and KeyVaultClientSync against the real key vault."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from clients import (
    ClientError,
    InvalidArgument,
    KeyVaultClient,
    KeyVaultClientSync,
    NotFound,
    Page,
    PermissionDenied,
)
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from keyvault_service.app import RunningKeyVault
from tests.clients.conftest import Tls

DOMAIN = "keyvault.agents.internal"


def new_workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


async def test_key_round_trip(
    vault: KeyVaultClient,
    admin_vault: KeyVaultClient,
    pair_vault: RunningKeyVault,
    tls: Tls,
) -> None:
    ws = new_workspace()
    secret = f"sk-client-{uuid.uuid4().hex}"

    created = await vault.set_api_key(ws, "openai", secret)
    assert created.created
    assert created.api_key.name == f"workspaces/{ws}/apiKeys/openai"
    assert created.api_key.key_hint.endswith(secret[-4:]) and secret not in str(created)
    replaced = await vault.set_api_key(
        ws, kv_res.PROVIDER_OPENAI, secret + "x", base_url="http://127.0.0.1:8089"
    )
    assert not replaced.created and replaced.api_key.base_url == "http://127.0.0.1:8089"
    await vault.set_api_key(ws, "anthropic", "sk-ant-" + secret)

    got = await vault.get_api_key(ws, "openai")
    assert got == replaced.api_key

    page = await vault.list_api_keys(f"workspaces/{ws}", page_size=1)
    assert isinstance(page, Page) and len(page.items) == 1 and page.next_page_token
    assert [k.provider for k in page.items] == [kv_res.PROVIDER_ANTHROPIC]  # ordered by provider
    listed = [k async for k in vault.iter_api_keys(ws, page_size=1)]
    assert [k.name for k in listed] == [
        f"workspaces/{ws}/apiKeys/anthropic",
        f"workspaces/{ws}/apiKeys/openai",
    ]
    assert [k.name async for k in vault.iter_api_keys(ws, limit=1)] == [listed[0].name]

    async with KeyVaultClient.connect(
        f"localhost:{pair_vault.port}", **tls("execution")
    ) as internal:
        revealed = await internal.reveal_api_key(ws, "openai")
    assert revealed.plaintext_key == secret + "x"
    assert revealed.api_key.name == got.name and secret not in repr(revealed)

    await vault.delete_api_key(ws, "openai")
    with pytest.raises(NotFound):
        await vault.get_api_key(ws, "openai")

    rewrap = await admin_vault.rewrap_api_keys(batch_size=50)
    assert rewrap.primary_version == 1 and rewrap.remaining_count == 0

    events = [e async for e in admin_vault.iter_audit_events(ws, page_size=2)]
    actions = [kv_res.AuditAction.Name(e.action) for e in events]
    assert actions == [  # newest first
        "AUDIT_ACTION_DELETE",
        "AUDIT_ACTION_REVEAL",
        "AUDIT_ACTION_SET",
        "AUDIT_ACTION_SET",
        "AUDIT_ACTION_SET",
    ]
    assert {e.workspace for e in events} == {ws}
    everywhere = await admin_vault.list_audit_events("-", page_size=3)
    assert len(everywhere.items) == 3 and everywhere.next_page_token


async def test_not_found_carries_reason_domain_and_metadata(vault: KeyVaultClient) -> None:
    ws = new_workspace()
    with pytest.raises(NotFound) as caught:
        await vault.get_api_key(ws, "anthropic")
    err = caught.value
    assert isinstance(err, ClientError)
    assert err.reason == "API_KEY_NOT_FOUND" and err.domain == DOMAIN
    assert err.metadata == {"name": f"workspaces/{ws}/apiKeys/anthropic"}
    assert str(err) == (
        f"NOT_FOUND (API_KEY_NOT_FOUND): workspaces/{ws}/apiKeys/anthropic does not exist"
    )
    assert err.execution_name is None
    assert err.__cause__ is not None  # chained to the grpc error it translates


async def test_invalid_argument_lists_field_violations(vault: KeyVaultClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await vault.set_api_key("not a workspace!", "openai", "sk-x", base_url="ftp://nope")
    err = caught.value
    assert err.domain == DOMAIN and err.reason
    fields = {v.field for v in err.field_violations}
    assert "name" in fields, err.field_violations
    assert all(v.description for v in err.field_violations)


async def test_permission_denied_before_existence(vault: KeyVaultClient) -> None:
    with pytest.raises(PermissionDenied) as caught:
        await vault.reveal_api_key(new_workspace(), "openai")  # app may not reveal
    assert caught.value.reason == "PERMISSION_DENIED"
    with pytest.raises(PermissionDenied):
        await vault.rewrap_api_keys()


async def test_sync_client_round_trip(pair_vault: RunningKeyVault, tls: Tls) -> None:
    ws = new_workspace()

    def scenario() -> list[str]:
        seen = []
        with KeyVaultClientSync.connect(f"localhost:{pair_vault.port}", **tls("app")) as client:
            seen.append(str(client.set_api_key(ws, "anthropic", "sk-ant-sync-0123").created))
            seen.append(client.get_api_key(ws, "anthropic").key_hint)
            seen.append(",".join(k.name for k in client.iter_api_keys(ws)))
            client.delete_api_key(ws, "anthropic")
            try:
                client.get_api_key(ws, "anthropic")
            except NotFound as err:
                seen.append(err.reason)
            seen.append(str(len(client.list_api_keys(ws).items)))
        with KeyVaultClientSync.connect(f"localhost:{pair_vault.port}", **tls("admin")) as admin:
            seen.append(str(admin.rewrap_api_keys().primary_version))
            seen.append(str(len(admin.list_audit_events(ws).items)))
            seen.append(str(sum(1 for _ in admin.iter_audit_events(ws, limit=1))))
        with KeyVaultClientSync.connect(
            f"localhost:{pair_vault.port}", **tls("execution")
        ) as internal:
            try:
                internal.reveal_api_key(ws, "anthropic")
            except NotFound as err:
                seen.append(err.code.name)
        return seen

    # Blocking calls run in a thread: the servers run on this event loop.
    seen = await asyncio.to_thread(scenario)
    assert seen == [
        "True",
        "sk-...0123",
        f"workspaces/{ws}/apiKeys/anthropic",
        "API_KEY_NOT_FOUND",
        "0",
        "1",
        "2",  # set and delete (the failed reveal below comes later)
        "1",
        "NOT_FOUND",
    ]
