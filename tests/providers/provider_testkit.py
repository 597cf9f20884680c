"""Test helpers: a scripted local HTTP server (aiohttp, port 0) standing in for a provider.

Each test scripts the replies; the server records every request it received, serves the
scripted reply for each attempt (the last reply repeats), and can reset the connection
before answering, cut a stream after N writes, or hold a stream open until the client goes
away (recording that it did).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from execution_service.providers import ProviderError, StreamEvent, TextDelta

# Headers the server computes itself; copying a recorded value would contradict the body
# framing aiohttp chooses (chunked for streams).
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection"}


@dataclass
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: Sequence[bytes] | None = None
    """Stream the body as these writes (SSE events); None sends ``body`` at once."""
    cut_after: int | None = None
    """Abort the connection after this many ``chunks`` were written."""
    reset: bool = False
    """Abort the connection before sending any byte."""
    hold_open: bool = False
    """After the chunks, keep the stream open with SSE comments until the client leaves."""
    pause: float = 0.0
    """Seconds between two ``chunks`` writes, so that each arrives in a read of its own."""


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ProviderServer:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.received: list[Received] = []
        self.client_left = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(
            Received(
                request.method,
                request.path,
                {k.lower(): v for k, v in request.headers.items()},
                await request.read(),
            )
        )
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        headers = {k: v for k, v in reply.headers.items() if k.lower() not in _FRAMING_HEADERS}
        transport = request.transport
        assert transport is not None
        if reply.reset:
            transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if reply.chunks is None:
            return web.Response(status=reply.status, headers=headers, body=reply.body)
        response = web.StreamResponse(status=reply.status, headers=headers)
        await response.prepare(request)
        for index, chunk in enumerate(reply.chunks):
            if reply.cut_after is not None and index >= reply.cut_after:
                break
            if index and reply.pause:
                await asyncio.sleep(reply.pause)
            await response.write(chunk)
        if reply.cut_after is not None:
            await asyncio.sleep(0.01)  # let the written bytes leave before the abort
            transport.abort()
            return response
        if reply.hold_open:
            try:
                while True:
                    await asyncio.sleep(0.01)
                    await response.write(b": keep-alive\n\n")
            except (ConnectionError, RuntimeError):
                self.client_left.set()
                return response
        await response.write_eof()
        return response


class RecordingSleep:
    """An injected ``sleep`` that records the requested delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@dataclass
class Outcome:
    events: list[StreamEvent]
    error: ProviderError | None

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


async def collect(stream: AsyncIterator[StreamEvent]) -> Outcome:
    """Drain a stream, keeping the events that arrived before a ProviderError."""
    events: list[StreamEvent] = []
    try:
        async for event in stream:
            events.append(event)
    except ProviderError as err:
        return Outcome(events, err)
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    return Outcome(events, None)


def sse_chunks(body: bytes) -> list[bytes]:
    """Split an SSE body into its events (each keeps its blank-line terminator)."""
    parts = body.split(b"\n\n")
    chunks = [part + b"\n\n" for part in parts[:-1]]
    if parts[-1]:
        chunks.append(parts[-1])
    return chunks


class ClosingProbe(httpx.AsyncHTTPTransport):
    """A real HTTP transport that counts response bodies not yet closed.

    Lets a test check that closing a stream closed the HTTP response synchronously, not
    later when the garbage collector finalizes an abandoned generator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.open_bodies = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.open_bodies += 1
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CountedBody(self, response),
            extensions=response.extensions,
        )


class _CountedBody(httpx.AsyncByteStream):
    def __init__(self, probe: ClosingProbe, response: httpx.Response) -> None:
        self._probe = probe
        self._response = response
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._probe.open_bodies -= 1
        await self._response.aclose()
