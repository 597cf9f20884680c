"""Writing answers to the client: whole bodies, SSE streams and scripted endings.

Every writer catches a vanished client (ConnectionError from a write) and records it, so
aiohttp never logs a traceback for it; a client that leaves while the handler sleeps is
noticed through handler cancellation (see app.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from .framing import torn_parts
from .state import Outcome, RecordedRequest
from .wire import ErrorReply, StreamEvents


@dataclass(frozen=True, slots=True)
class Ending:
    """How a stream ends: after `stop` content chunks, `data` then a clean end, or an
    abort of the connection when `abort` is set."""

    stop: int
    data: bytes
    outcome: Outcome
    abort: bool = False


def abort_connection(request: web.BaseRequest) -> None:
    """Close the TCP connection at once, without finishing the HTTP message."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def sleep_ms(delay_ms: float) -> None:
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)


async def send_body(
    request: web.BaseRequest,
    record: RecordedRequest,
    status: int,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
    outcome: Outcome,
) -> web.StreamResponse:
    """A complete answer, written now so that a vanished client is recorded."""
    response = web.Response(
        status=status, body=body, headers={**headers, "Content-Type": content_type}
    )
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        record.mark_disconnected()
    record.finish(status, outcome)
    return response


async def send_error(
    request: web.BaseRequest,
    record: RecordedRequest,
    reply: ErrorReply,
    headers: Mapping[str, str],
) -> web.StreamResponse:
    merged = {**reply.headers, **headers}
    return await send_body(
        request, record, reply.status, reply.body, reply.content_type, merged, "error"
    )


async def send_cut_body(
    request: web.BaseRequest,
    record: RecordedRequest,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
) -> web.StreamResponse:
    """Announce the whole body, send half of it, then abort the connection."""
    response = web.StreamResponse(status=200, headers={**headers, "Content-Type": content_type})
    response.content_length = len(body)
    try:
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
    except ConnectionError:
        record.mark_disconnected()
    record.finish(200, "cut")
    abort_connection(request)
    return response


async def send_stream(
    request: web.BaseRequest,
    record: RecordedRequest,
    events: StreamEvents,
    ending: Ending,
    content_type: str,
    headers: Mapping[str, str],
    first_delay_ms: float,
    chunk_delay_ms: float,
    *,
    split_writes_ms: float | None = None,
    write_per_event: bool = False,
) -> web.StreamResponse:
    """An SSE stream: headers at once, then (after `first_delay_ms`) the events.

    Without a chunk delay the whole stream goes out in one write (coalesced), which keeps
    the benchmarks' hot path to a couple of syscalls per request; `write_per_event` sends
    every SSE event in a write of its own instead, with no delay, as a real provider's
    server does (the reader then sees many small reads). With `split_writes_ms`, each write
    is further cut by `framing.torn_parts`, its parts sent that many ms apart."""
    response = web.StreamResponse(
        status=200,
        headers={**headers, "Content-Type": content_type, "Cache-Control": "no-cache"},
    )
    content = events.content

    async def write(data: bytes, *, eof: bool = False) -> None:
        if split_writes_ms is None:
            await (response.write_eof(data) if eof else response.write(data))
            return
        for index, part in enumerate(torn_parts(data)):
            if index:
                await sleep_ms(split_writes_ms)
            await response.write(part)
        if eof:
            await response.write_eof()

    try:
        await response.prepare(request)
        record.status = 200
        await sleep_ms(first_delay_ms)
        if chunk_delay_ms <= 0 and write_per_event:
            await write(events.head)
            for chunk in content[: ending.stop]:
                await write(chunk)
                record.chunks_sent += 1
            if not ending.abort:
                # The usage event, then [DONE]: one write each, as they were encoded.
                *rest, last = ending.data.split(b"\n\n")
                events_left = [event + b"\n\n" for event in rest if event] + [last]
                for event in events_left[:-1]:
                    await write(event)
                await write(events_left[-1], eof=True)
        elif chunk_delay_ms <= 0:
            payload = b"".join((events.head, *content[: ending.stop], ending.data))
            record.chunks_sent = ending.stop
            await write(payload, eof=not ending.abort)
        else:
            await write(events.head + (content[0] if ending.stop else b""))
            record.chunks_sent = min(ending.stop, 1)
            for chunk in content[1 : ending.stop]:
                await sleep_ms(chunk_delay_ms)
                await write(chunk)
                record.chunks_sent += 1
            if not ending.abort:
                await write(ending.data, eof=True)
    except ConnectionError:
        record.mark_disconnected()
        return response
    record.finish(200, ending.outcome)
    if ending.abort:
        abort_connection(request)
    return response
