"""The provider HTTP client: httpx's API over aiohttp's connection pool, behind the egress policy.

httpcore's pool scans every pooled connection (a readability syscall each) on every request,
which took most of the service's CPU once a hundred streams were in flight; aiohttp's
connector does not (httpx-aiohttp). That package maps a refused connection to
`httpx.ConnectTimeout`; we correct it to `httpx.ConnectError` here, so the provider layer's
one translation of transport errors stays right (unreachable is not a timeout).

Every connection is checked against the egress policy (service_kit.egress) when it is made,
not only when a base URL is stored: the URL's host and scheme before the request, and each
address a name resolves to inside the connector's resolver, so a name that later resolves to
a private address (DNS rebinding) is refused too. Execute, TestApiKey and every retry go
through this one client. A refusal raises `DestinationForbidden`.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from service_kit.egress import EgressPolicy, EgressRefused
from service_kit.tracing import Tracing

__all__ = ["DestinationForbidden", "PolicyResolver", "ProviderTransport", "provider_http_client"]


class DestinationForbidden(httpx.ConnectError):
    """The egress policy refused the destination; no connection was attempted."""


class PolicyResolver(AbstractResolver):
    """Wraps a resolver and keeps only the addresses the egress policy allows.

    Raises `EgressRefused` when a name resolves to forbidden addresses only.
    """

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.address_allowed(host, r["host"])]
        if not allowed:
            raise EgressRefused(f"{host} resolves only to addresses provider calls may not reach")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class ProviderTransport(AiohttpTransport):
    def __init__(self, *, egress: EgressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._egress = egress

    def get_client(self) -> aiohttp.ClientSession:
        # Called on first use, inside the running event loop that the session belongs to.
        limit = self.limits.max_connections or 0
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=limit,
            resolver=PolicyResolver(self._egress),
        )
        # Provider calls of every workspace share this session: a cookie one answer sets
        # must not travel with another's request (and keeping none costs nothing per call).
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # aiohttp does not resolve a literal IP address, so the resolver never sees one:
        # the URL itself is checked here.
        refusal = self._egress.host_refusal(request.url.host, scheme=request.url.scheme)
        if refusal is not None:
            raise DestinationForbidden(f"the provider base URL {refusal}", request=request)
        try:
            return await super().handle_async_request(request)
        except (httpx.ConnectTimeout, httpx.ConnectError) as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ClientConnectorError):
                if isinstance(cause.os_error, EgressRefused):
                    raise DestinationForbidden(
                        "the provider base URL's host resolves only to addresses provider "
                        "calls may not reach",
                        request=request,
                    ) from None
                raise httpx.ConnectError(_no_connection(request), request=request) from cause
            if isinstance(cause, aiohttp.ServerDisconnectedError):
                raise httpx.ConnectError(_no_connection(request), request=request) from cause
            raise


def _no_connection(request: httpx.Request) -> str:
    # aiohttp's own text says "ssl:default" even for a plain http URL.
    url = request.url
    return f"could not connect to {url.scheme}://{url.host}:{url.port or ''}".rstrip(":")


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing. httpx files every answer's cookies (a urllib request
    object with every header copied, per call); no provider call needs cookies, and calls
    of different workspaces share the client."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def provider_http_client(
    *,
    connect_timeout: float,
    read_timeout: float,
    egress: EgressPolicy,
    max_connections: int = 2000,
    tracing: Tracing | None = None,
) -> httpx.AsyncClient:
    """One client for every provider call, created at start-up: pooled keep-alive, and a
    span per request (the egress check included) when `tracing` is given."""
    client = httpx.AsyncClient(
        transport=ProviderTransport(
            egress=egress,
            limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=30.0),
        ),
        timeout=httpx.Timeout(connect_timeout, read=read_timeout),
        follow_redirects=False,
    )
    client._cookies = _NoCookies()  # the `cookies` setter would copy it into a plain jar
    if tracing is not None:
        tracing.instrument_http(client)
    return client
