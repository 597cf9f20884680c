"""keyvault.v1.KeyVaultService: decode the request, call the vault, encode the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

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
from keyvault_service.vault import DEFAULT_REWRAP_BATCH, KeyVault
from service_kit.call_context import CallInfo, call_info
from service_kit.errors import FieldViolation, InvalidArgument
from service_kit.names import parse_workspace_name, workspace_of
from service_kit.pagination import MAX_PAGE_SIZE, page_request, page_token
from service_kit.secret import Secret
from service_kit.urls import base_url_violations

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["KeyVaultService"].full_name
_METHOD_ACTIONS = {
    "SetApiKey": "SET",
    "DeleteApiKey": "DELETE",
    "RevealApiKey": "REVEAL",
    "RewrapApiKeys": "REWRAP",
}
PROVIDER_ENUM = {"openai": res.PROVIDER_OPENAI, "anthropic": res.PROVIDER_ANTHROPIC}
# WatchApiKeyChanges sends a heartbeat when it has sent nothing for this long.
WATCH_HEARTBEAT_SECONDS = 5
# A change is answered once every subscriber has applied it, or after this long.
APPLIED_WAIT_SECONDS = 1.0


def _timestamp(value: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def api_key_message(stored: StoredKey) -> res.ApiKey:
    return res.ApiKey(
        name=stored.ref.name,
        provider=PROVIDER_ENUM[stored.ref.provider],
        key_hint=stored.key_hint,
        fingerprint=stored.fingerprint,
        base_url=stored.base_url,
        master_key_version=stored.key_version,
        create_time=_timestamp(stored.create_time),
        update_time=_timestamp(stored.update_time),
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
        create_time=_timestamp(row.create_time),
    )


class KeyVaultServicer(pb_grpc.KeyVaultServiceServicer):
    def __init__(self, vault: KeyVault, key_changes: KeyChangeFeed) -> None:
        self._vault = vault
        self._key_changes = key_changes

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
        violations += base_url_violations(request.base_url)
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
        page = page_request(request.page_size, request.page_token, query=request.parent)
        keys, last = await self._vault.list_keys(workspace, page)
        return pb.ListApiKeysResponse(
            api_keys=[api_key_message(k) for k in keys],
            next_page_token=page_token({"provider": last}, query=request.parent) if last else "",
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
        if not 0 <= request.batch_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                [FieldViolation("batch_size", f"must be between 0 and {MAX_PAGE_SIZE}")]
            )
        result = await self._vault.rewrap_all(
            request.batch_size or DEFAULT_REWRAP_BATCH, call_info()
        )
        return pb.RewrapApiKeysResponse(
            primary_version=result.primary_version,
            rewrapped_count=result.rewrapped,
            remaining_count=result.remaining,
        )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> pb.ListAuditEventsResponse:
        workspace = parse_workspace_name(request.parent, allow_all=True)
        page = page_request(request.page_size, request.page_token, query=request.parent)
        rows, last_id = await self._vault.list_audit(workspace, page)
        return pb.ListAuditEventsResponse(
            audit_events=[_audit_message(r) for r in rows],
            next_page_token=page_token({"id": last_id}, query=request.parent) if last_id else "",
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


async def audit_denied_call(vault: KeyVault, call: CallInfo, request: Any) -> None:
    """Interceptor hook: audited methods record denied attempts too."""
    action = _METHOD_ACTIONS.get(call.method.rsplit("/", 1)[-1])
    if action is None or not call.method.startswith(f"/{SERVICE_NAME}/"):
        return
    ref = try_parse_key_name(getattr(request, "name", "") or "")
    await vault.record_denied(action, ref, call)


def register(servicer: KeyVaultServicer) -> Any:
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_KeyVaultServiceServicer_to_server(servicer, server)

    return add
