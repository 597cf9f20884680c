"""Key vault clients: `KeyVaultClient` (asyncio) and `KeyVaultClientSync` (blocking).

Both take a channel (`mtls_channel` / `mtls_channel_sync`), or make one with `connect(...)`.
Workspaces are given by id (`demo`) or name (`workspaces/demo`); providers as `"openai"` /
`"anthropic"` or the `keyvault.v1.Provider` value. Every failure raises a `ClientError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from ._base import AsyncClientBase, SyncClientBase
from ._types import (
    Page,
    ProviderLike,
    RevealedApiKey,
    api_key_name,
    audit_parent,
    walk_pages,
    walk_pages_sync,
    workspace_name,
)
from .gen.keyvault.v1 import keyvault_service_pb2 as kv
from .gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from .gen.keyvault.v1 import resources_pb2 as kv_res

DEFAULT_KEYVAULT_ADDRESS = "localhost:50051"


class KeyVaultClient(AsyncClientBase):
    """asyncio client of `keyvault.v1.KeyVaultService`.

    ```python
    async with KeyVaultClient.connect(ca="certs/ca.pem", cert="certs/app.pem",
                                      key="certs/app-key.pem") as vault:
        stored = await vault.set_api_key("demo", "openai", os.environ["OPENAI_API_KEY"])
        print(stored.api_key.key_hint, stored.created)
    ```
    """

    stub_class = kv_grpc.KeyVaultServiceStub
    default_address = DEFAULT_KEYVAULT_ADDRESS
    _stub: kv_grpc.KeyVaultServiceAsyncStub

    async def set_api_key(
        self,
        workspace: str,
        provider: ProviderLike,
        api_key: str,
        *,
        base_url: str = "",
        timeout: float | None = None,
    ) -> kv.SetApiKeyResponse:
        """Create or replace the workspace's key; the answer has the metadata (`api_key`)
        and whether no key existed before (`created`)."""
        request = kv.SetApiKeyRequest(
            name=api_key_name(workspace, provider), api_key=api_key, base_url=base_url
        )
        return await self._unary(self._stub.SetApiKey, request, timeout)

    async def get_api_key(
        self, workspace: str, provider: ProviderLike, *, timeout: float | None = None
    ) -> kv_res.ApiKey:
        request = kv.GetApiKeyRequest(name=api_key_name(workspace, provider))
        return (await self._unary(self._stub.GetApiKey, request, timeout)).api_key

    async def list_api_keys(
        self,
        workspace: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[kv_res.ApiKey]:
        request = kv.ListApiKeysRequest(
            parent=workspace_name(workspace), page_size=page_size, page_token=page_token
        )
        reply = await self._unary(self._stub.ListApiKeys, request, timeout)
        return Page(list(reply.api_keys), reply.next_page_token)

    def iter_api_keys(
        self, workspace: str, *, page_size: int = 0, limit: int | None = None
    ) -> AsyncIterator[kv_res.ApiKey]:
        """Every key of the workspace (at most `limit`), fetching pages as needed."""
        return walk_pages(
            lambda token: self.list_api_keys(workspace, page_size=page_size, page_token=token),
            limit,
        )

    async def delete_api_key(
        self, workspace: str, provider: ProviderLike, *, timeout: float | None = None
    ) -> None:
        request = kv.DeleteApiKeyRequest(name=api_key_name(workspace, provider))
        await self._unary(self._stub.DeleteApiKey, request, timeout)

    async def reveal_api_key(
        self, workspace: str, provider: ProviderLike, *, timeout: float | None = None
    ) -> RevealedApiKey:
        """The plaintext key. Only the execution service's identity may call this."""
        request = kv.RevealApiKeyRequest(name=api_key_name(workspace, provider))
        reply = await self._unary(self._stub.RevealApiKey, request, timeout)
        return RevealedApiKey(reply.api_key, reply.plaintext_key)

    async def rewrap_api_keys(
        self, *, batch_size: int = 0, timeout: float | None = None
    ) -> kv.RewrapApiKeysResponse:
        """Admin: re-encrypt every key under the primary master key version."""
        request = kv.RewrapApiKeysRequest(batch_size=batch_size)
        return await self._unary(self._stub.RewrapApiKeys, request, timeout)

    async def list_audit_events(
        self,
        workspace: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[kv_res.AuditEvent]:
        """Admin: audit records, newest first; `workspace` None or `-` means all of them."""
        request = kv.ListAuditEventsRequest(
            parent=audit_parent(workspace), page_size=page_size, page_token=page_token
        )
        reply = await self._unary(self._stub.ListAuditEvents, request, timeout)
        return Page(list(reply.audit_events), reply.next_page_token)

    def iter_audit_events(
        self, workspace: str | None = None, *, page_size: int = 0, limit: int | None = None
    ) -> AsyncIterator[kv_res.AuditEvent]:
        return walk_pages(
            lambda token: self.list_audit_events(workspace, page_size=page_size, page_token=token),
            limit,
        )


class KeyVaultClientSync(SyncClientBase):
    """Blocking client of `keyvault.v1.KeyVaultService`; the same methods as
    `KeyVaultClient`, without `await`."""

    stub_class = kv_grpc.KeyVaultServiceStub
    default_address = DEFAULT_KEYVAULT_ADDRESS
    _stub: kv_grpc.KeyVaultServiceStub

    def set_api_key(
        self,
        workspace: str,
        provider: ProviderLike,
        api_key: str,
        *,
        base_url: str = "",
        timeout: float | None = None,
    ) -> kv.SetApiKeyResponse:
        request = kv.SetApiKeyRequest(
            name=api_key_name(workspace, provider), api_key=api_key, base_url=base_url
        )
        return self._unary(self._stub.SetApiKey, request, timeout)

    def get_api_key(
        self, workspace: str, provider: ProviderLike, *, timeout: float | None = None
    ) -> kv_res.ApiKey:
        request = kv.GetApiKeyRequest(name=api_key_name(workspace, provider))
        return self._unary(self._stub.GetApiKey, request, timeout).api_key

    def list_api_keys(
        self,
        workspace: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[kv_res.ApiKey]:
        request = kv.ListApiKeysRequest(
            parent=workspace_name(workspace), page_size=page_size, page_token=page_token
        )
        reply = self._unary(self._stub.ListApiKeys, request, timeout)
        return Page(list(reply.api_keys), reply.next_page_token)

    def iter_api_keys(
        self, workspace: str, *, page_size: int = 0, limit: int | None = None
    ) -> Iterator[kv_res.ApiKey]:
        return walk_pages_sync(
            lambda token: self.list_api_keys(workspace, page_size=page_size, page_token=token),
            limit,
        )

    def delete_api_key(
        self, workspace: str, provider: ProviderLike, *, timeout: float | None = None
    ) -> None:
        request = kv.DeleteApiKeyRequest(name=api_key_name(workspace, provider))
        self._unary(self._stub.DeleteApiKey, request, timeout)

    def reveal_api_key(
        self, workspace: str, provider: ProviderLike, *, timeout: float | None = None
    ) -> RevealedApiKey:
        request = kv.RevealApiKeyRequest(name=api_key_name(workspace, provider))
        reply = self._unary(self._stub.RevealApiKey, request, timeout)
        return RevealedApiKey(reply.api_key, reply.plaintext_key)

    def rewrap_api_keys(
        self, *, batch_size: int = 0, timeout: float | None = None
    ) -> kv.RewrapApiKeysResponse:
        request = kv.RewrapApiKeysRequest(batch_size=batch_size)
        return self._unary(self._stub.RewrapApiKeys, request, timeout)

    def list_audit_events(
        self,
        workspace: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[kv_res.AuditEvent]:
        request = kv.ListAuditEventsRequest(
            parent=audit_parent(workspace), page_size=page_size, page_token=page_token
        )
        reply = self._unary(self._stub.ListAuditEvents, request, timeout)
        return Page(list(reply.audit_events), reply.next_page_token)

    def iter_audit_events(
        self, workspace: str | None = None, *, page_size: int = 0, limit: int | None = None
    ) -> Iterator[kv_res.AuditEvent]:
        return walk_pages_sync(
            lambda token: self.list_audit_events(workspace, page_size=page_size, page_token=token),
            limit,
        )
