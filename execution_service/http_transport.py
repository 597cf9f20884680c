"""The provider HTTP client: httpx's API over aiohttp's connection pool.

httpcore's pool scans every pooled connection (a readability syscall each) on every request,
which took most of the service's CPU once a hundred streams were in flight; aiohttp's
connector does not (httpx-aiohttp). That package maps a refused connection to
`httpx.ConnectTimeout`; we correct it to `httpx.ConnectError` here, so the provider layer's
one translation of transport errors stays right (unreachable is not a timeout).
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class ProviderTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
                raise httpx.ConnectError(str(exc), request=request) from cause
            raise


def provider_http_client(
    *, connect_timeout: float, read_timeout: float, max_connections: int = 2000
) -> httpx.AsyncClient:
    """One client for every provider call, created at start-up: pooled keep-alive."""
    return httpx.AsyncClient(
        transport=ProviderTransport(
            limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=30.0)
        ),
        timeout=httpx.Timeout(connect_timeout, read=read_timeout),
        follow_redirects=False,
    )
