"""Byte-level stream framing options, for testing how clients decode a stream (pure).

Server-sent events may end their lines with LF, CRLF or a lone CR, and a network read may
end anywhere, even inside a multi-byte UTF-8 character or between the CR and LF of one line
ending. These helpers let a scripted step produce those streams on purpose.
"""

from __future__ import annotations

import itertools

from .wire import StreamEvents

LINE_ENDINGS: dict[str, bytes] = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def reframe(data: bytes, line_ending: str) -> bytes:
    """`data` (SSE framed with LF) with every line ending replaced.

    Safe for the emulator's events: their JSON is compact, so a raw LF only ever ends a line.
    """
    return data if line_ending == "lf" else data.replace(b"\n", LINE_ENDINGS[line_ending])


def reframe_events(events: StreamEvents, line_ending: str) -> StreamEvents:
    return StreamEvents(
        reframe(events.head, line_ending),
        [reframe(chunk, line_ending) for chunk in events.content],
        reframe(events.tail, line_ending),
    )


def torn_parts(data: bytes) -> list[bytes]:
    """`data` cut inside every multi-byte UTF-8 character (after its first byte) and between
    the CR and LF of every CRLF; joining the parts gives `data` back."""
    cuts = [
        i
        for i in range(1, len(data))
        if (_is_continuation(data[i]) and _is_lead(data[i - 1]))
        or (data[i] == 0x0A and data[i - 1] == 0x0D)
    ]
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def _is_lead(byte: int) -> bool:
    """The first byte of a multi-byte UTF-8 character (0b11xxxxxx)."""
    return byte & 0b1100_0000 == 0b1100_0000


def _is_continuation(byte: int) -> bool:
    return byte & 0b1100_0000 == 0b1000_0000
