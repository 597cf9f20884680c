"""The framing options of a scripted step: SSE line endings (`line_ending`) and writes cut
inside characters and line endings (`split_writes_ms`), observed on the raw bytes."""

from __future__ import annotations

import itertools

import httpx
import pytest
from emulator_helpers import anthropic_body, anthropic_headers, openai_body, openai_headers

from provider_emulator import RunningEmulator, StepError, start_emulator
from provider_emulator.framing import torn_parts

TEXT = "Crème brûlée costs 5 € 🍮 today"


async def raw_reads(
    http: httpx.AsyncClient, url: str, body: dict[str, object], headers: dict[str, str]
) -> list[bytes]:
    """The response body as the network reads delivered it."""
    async with http.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200
        return [chunk async for chunk in response.aiter_raw()]


def sse_lines(body: bytes, ending: bytes) -> list[str]:
    return body.decode().split(ending.decode())


@pytest.mark.parametrize(
    ("line_ending", "ending"), [("crlf", b"\r\n"), ("cr", b"\r"), ("lf", b"\n")]
)
async def test_line_ending_frames_every_line_of_both_streams(
    emulator: RunningEmulator, http: httpx.AsyncClient, line_ending: str, ending: bytes
) -> None:
    for path, body, headers in (
        ("/v1/chat/completions", openai_body(stream=True), openai_headers()),
        ("/v1/messages", anthropic_body(stream=True), anthropic_headers()),
    ):
        emulator.state.script({"line_ending": line_ending, "text": TEXT})
        raw = b"".join(await raw_reads(http, emulator.base_url + path, body, headers))
        others = {b"\r\n", b"\r", b"\n"} - {ending}
        without = raw.replace(ending, b"")
        assert not any(other in without for other in others), raw[:200]
        assert raw.endswith(ending * 2)
        lines = sse_lines(raw, ending)
        assert any(line.startswith("data: ") for line in lines)
        # Framed with LF, the same answer has the same lines.
        emulator.state.script({"text": TEXT})
        plain = b"".join(await raw_reads(http, emulator.base_url + path, body, headers))
        assert len(sse_lines(plain, b"\n")) == len(lines)


async def test_split_writes_cut_every_character_and_crlf_across_reads(
    emulator: RunningEmulator, http: httpx.AsyncClient
) -> None:
    emulator.state.script({"text": TEXT, "chunks": 4, "line_ending": "crlf", "split_writes_ms": 5})
    reads = await raw_reads(
        http,
        emulator.base_url + "/v1/messages",
        anthropic_body(stream=True),
        anthropic_headers(),
    )
    body = b"".join(reads)
    assert "Crème".encode() in body  # the text travels unescaped, as UTF-8
    for read in reads:
        # No read holds a whole non-ASCII character, nor a whole CRLF.
        assert read.decode("utf-8", "ignore").isascii(), read
        assert b"\r\n" not in read, read
    seams = [a[-1:] + b[:1] for a, b in itertools.pairwise(reads)]
    assert seams.count(b"\r\n") == body.count(b"\r\n") > 0


def test_torn_parts_join_back_and_cut_inside_characters() -> None:
    data = "a é\r\n€🍮\n".encode()
    parts = torn_parts(data)
    assert b"".join(parts) == data
    assert parts == [b"a \xc3", b"\xa9\r", b"\n\xe2", b"\x82\xac\xf0", b"\x9f\x8d\xae\n"]
    assert torn_parts(b"") == [b""]


def test_unknown_line_ending_is_refused(emulator: RunningEmulator) -> None:
    with pytest.raises(StepError, match="line_ending"):
        emulator.state.script({"line_ending": "crcr"})
    with pytest.raises(StepError, match="split_writes_ms"):
        emulator.state.script({"split_writes_ms": -1})


async def test_write_per_event_sends_each_event_in_its_own_chunk(http: httpx.AsyncClient) -> None:
    # Each write is one HTTP chunk, and httpx hands over a chunk per read at most: the
    # reads show the writes, whatever the network coalesced.
    async with start_emulator(text="abcdefg " * 20, chunks=20, write_per_event=True) as emu:
        reads = await raw_reads(
            http, emu.base_url + "/v1/chat/completions", openai_body(stream=True), openai_headers()
        )
    events = [event for read in reads for event in read.split(b"\n\n") if event]
    assert len(events) == len(reads)  # one event per write
    contents = [e for e in events if b'"content":"abcdefg ' in e]
    assert len(contents) == 20
    assert events[-1] == b"data: [DONE]"
    assert b'"finish_reason":"stop"' in events[-2]
