"""keyvault.v1.KeyVaultService: decode the request, call the vault, encode the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as pb_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res
from keyvault_service.key_changes import KeyChangeFeed, SubscriptionEnded
from keyvault_service.names import (
    KeyRef,
    api_key_violations,
    key_name_violation,
    parse_key_name,
    try_parse_key_name,
)
from keyvault_service.repository import AuditRow, StoredKey
from keyvault_service.vault import AUDIT_CURSOR, DEFAULT_REWRAP_BATCH, KEY_CURSOR, KeyVault
from service_kit import wellknown
from service_kit.call_context import CallInfo, call_info
from service_kit.egress import NO_ALLOWLIST, EgressPolicy
from service_kit.errors import InvalidArgument
from service_kit.names import parse_workspace_name, workspace_of
from service_kit.pagination import page_request, page_size, page_token
from service_kit.secret import Secret
from service_kit.urls import base_url_violations

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["KeyVaultService"].full_name
# Methods whose denied calls are audited, and their audit action. Reading the audit log is
# recorded only when denied: recording every allowed read would bury the changes and
# reveals the log is for.
_DENIAL_ACTIONS = {
    "SetApiKey": "SET",
    "DeleteApiKey": "DELETE",
    "RevealApiKey": "REVEAL",
    "RewrapApiKeys": "REWRAP",
    "ListAuditEvents": "LIST_AUDIT_EVENTS",
}
PROVIDER_ENUM = {"openai": res.PROVIDER_OPENAI, "anthropic": res.PROVIDER_ANTHROPIC}
# WatchApiKeyChanges sends a heartbeat when it has sent nothing for this long.
WATCH_HEARTBEAT_SECONDS = 5
# A change is answered once every subscriber has applied it, or after this long.
APPLIED_WAIT_SECONDS = 1.0


def api_key_message(stored: StoredKey) -> res.ApiKey:
    return res.ApiKey(
        name=stored.ref.name,
        provider=PROVIDER_ENUM[stored.ref.provider],
        key_hint=stored.key_hint,
        fingerprint=stored.fingerprint,
        base_url=stored.base_url,
        master_key_version=stored.key_version,
        create_time=wellknown.timestamp(stored.create_time),
        update_time=wellknown.timestamp(stored.update_time),
    )


def _audit_message(row: AuditRow) -> res.AuditEvent:
    r = row.record
    return res.AuditEvent(
        id=row.id,
        action=res.AuditAction.Value(f"AUDIT_ACTION_{r.action}"),
        outcome=res.AuditOutcome.Value(f"AUDIT_OUTCOME_{r.outcome}"),
        caller=r.caller,
        workspace=r.workspace,
        provider=PROVIDER_ENUM.get(r.provider, res.PROVIDER_UNSPECIFIED),
        request_id=r.request_id,
        reason=r.reason,
        create_time=wellknown.timestamp(row.create_time),
    )


class KeyVaultServicer(pb_grpc.KeyVaultServiceServicer):
    def __init__(
        self, vault: KeyVault, key_changes: KeyChangeFeed, egress: EgressPolicy = NO_ALLOWLIST
    ) -> None:
        self._vault = vault
        self._key_changes = key_changes
        self._egress = egress  # which base URLs may be stored

    async def _name_or_audit_invalid(self, action: str, name: str, call: CallInfo) -> KeyRef:
        try:
            return parse_key_name(name)
        except InvalidArgument:
            await self._vault.record_invalid(action, None, call)
            raise

    async def SetApiKey(self, request: pb.SetApiKeyRequest, context: Any) -> pb.SetApiKeyResponse:
        call = call_info()
        violations = [v for v in [key_name_violation(request.name)] if v]
        violations += api_key_violations(request.api_key)
        violations += base_url_violations(request.base_url, self._egress)
        if violations:
            await self._vault.record_invalid("SET", try_parse_key_name(request.name), call)
            raise InvalidArgument(violations)
        ref = parse_key_name(request.name)
        stored, created = await self._vault.set_key(
            ref, Secret(request.api_key), request.base_url.rstrip("/"), call
        )
        await self._key_changes.wait_applied(APPLIED_WAIT_SECONDS)
        return pb.SetApiKeyResponse(api_key=api_key_message(stored), created=created)

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Any) -> pb.GetApiKeyResponse:
        stored = await self._vault.get_key(parse_key_name(request.name))
        return pb.GetApiKeyResponse(api_key=api_key_message(stored))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Any
    ) -> pb.ListApiKeysResponse:
        workspace = workspace_of(request.parent)
        page = page_request(
            request.page_size, request.page_token, query=request.parent, cursor=KEY_CURSOR
        )
        keys, last = await self._vault.list_keys(workspace, page)
        token = page_token({"provider": last}, query=request.parent, cursor=KEY_CURSOR)
        return pb.ListApiKeysResponse(
            api_keys=[api_key_message(k) for k in keys], next_page_token=token if last else ""
        )

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: Any
    ) -> pb.DeleteApiKeyResponse:
        call = call_info()
        ref = await self._name_or_audit_invalid("DELETE", request.name, call)
        await self._vault.delete_key(ref, call)
        await self._key_changes.wait_applied(APPLIED_WAIT_SECONDS)
        return pb.DeleteApiKeyResponse()

    async def RevealApiKey(
        self, request: pb.RevealApiKeyRequest, context: Any
    ) -> pb.RevealApiKeyResponse:
        call = call_info()
        ref = await self._name_or_audit_invalid("REVEAL", request.name, call)
        stored, plaintext = await self._vault.reveal_key(ref, call)
        return pb.RevealApiKeyResponse(
            api_key=api_key_message(stored), plaintext_key=plaintext.reveal()
        )

    async def RewrapApiKeys(
        self, request: pb.RewrapApiKeysRequest, context: Any
    ) -> pb.RewrapApiKeysResponse:
        call = call_info()
        try:
            # Keys re-encrypted per transaction: a page-like size, with the same rules.
            batch_size = page_size(request.batch_size, "batch_size", default=DEFAULT_REWRAP_BATCH)
        except InvalidArgument:
            await self._vault.record_invalid("REWRAP", None, call)
            raise
        result = await self._vault.rewrap_all(batch_size, call)
        return pb.RewrapApiKeysResponse(
            primary_version=result.primary_version,
            rewrapped_count=result.rewrapped,
            remaining_count=result.remaining,
        )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> pb.ListAuditEventsResponse:
        workspace = parse_workspace_name(request.parent, allow_all=True)
        page = page_request(
            request.page_size, request.page_token, query=request.parent, cursor=AUDIT_CURSOR
        )
        rows, last_id = await self._vault.list_audit(workspace, page)
        token = page_token({"id": last_id}, query=request.parent, cursor=AUDIT_CURSOR)
        return pb.ListAuditEventsResponse(
            audit_events=[_audit_message(r) for r in rows],
            next_page_token=token if last_id else "",
        )

    async def WatchApiKeyChanges(
        self, requests: AsyncIterator[pb.WatchApiKeyChangesRequest], context: Any
    ) -> AsyncIterator[pb.WatchApiKeyChangesResponse]:
        async with self._key_changes.watcher(requests) as subscription:
            yield pb.WatchApiKeyChangesResponse(
                started=pb.WatchStarted(heartbeat_interval_seconds=WATCH_HEARTBEAT_SECONDS)
            )
            while True:
                try:
                    change = await subscription.next(timeout=WATCH_HEARTBEAT_SECONDS)
                except SubscriptionEnded:
                    return  # the subscriber notices the end and subscribes again
                if change is None:
                    await self._key_changes.acknowledge(subscription, 0)  # still waited for
                    yield pb.WatchApiKeyChangesResponse(heartbeat=pb.WatchHeartbeat())
                else:
                    event = pb.ApiKeyChange(name=change.ref.name, sequence=change.sequence)
                    yield pb.WatchApiKeyChangesResponse(change=event)


def _audited_action(call: CallInfo) -> str | None:
    """The audit action of the call's method, None when the method is not audited."""
    if not call.method.startswith(f"/{SERVICE_NAME}/"):
        return None
    return _DENIAL_ACTIONS.get(call.method.rsplit("/", 1)[-1])


async def audit_denied_call(vault: KeyVault, call: CallInfo, request: Any) -> None:
    """Interceptor hook: audited methods, and reading the audit log, record denied attempts
    too. `request` is None when the message could not be parsed."""
    action = _audited_action(call)
    if action is None:
        return
    if action == "LIST_AUDIT_EVENTS":
        workspace = _try_workspace(getattr(request, "parent", ""))
        await vault.record_denied(action, call, workspace=workspace or "")
        return
    ref = try_parse_key_name(getattr(request, "name", "") or "")
    await vault.record_denied(
        action, call, workspace=ref.workspace if ref else "", provider=ref.provider if ref else ""
    )


def _try_workspace(parent: str) -> str | None:
    try:
        return parse_workspace_name(parent, allow_all=True)
    except InvalidArgument:
        return None


async def audit_malformed_call(vault: KeyVault, call: CallInfo, request: Any) -> None:
    """Interceptor hook: an audited method's request that does not parse is a failed
    attempt, recorded as any invalid request is."""
    action = _audited_action(call)
    if action is not None and action != "LIST_AUDIT_EVENTS":  # reads are audited only denied
        await vault.record_invalid(action, None, call)


def register(servicer: KeyVaultServicer) -> Any:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_KeyVaultServiceServicer_to_server(servicer, server)

    return add
