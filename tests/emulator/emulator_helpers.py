"""Constants and request builders shared by the emulator tests."""

from __future__ import annotations

import json

import httpx

OPENAI_KEY = "sk-test-openai-0001"
ANTHROPIC_KEY = "sk-ant-test-0002"
ANTHROPIC_VERSION = "2023-06-01"
CHUNKS = 6


def openai_headers(key: str = OPENAI_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def anthropic_headers(key: str = ANTHROPIC_KEY) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}


def openai_body(stream: bool = False, **extra: object) -> dict[str, object]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the world"},
        ],
        "stream": stream,
        **extra,
    }


def anthropic_body(stream: bool = False, **extra: object) -> dict[str, object]:
    return {
        "model": "claude-3-5-sonnet-20241022",
        "max_tokens": 100,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Say hello to the world"}],
        "stream": stream,
        **extra,
    }


# Under the documented rule: (3 + 3 words) + (3 + 5 words) for both bodies above.
EXPECTED_INPUT_TOKENS = 14


def expected_text(chunks: int = CHUNKS) -> str:
    return " ".join(f"word{i}" for i in range(chunks))


SseEvent = tuple[str | None, str]


async def collect_sse(response: httpx.Response, into: list[SseEvent]) -> None:
    """Append each SSE event (event name, data) of `response` to `into` as it arrives, so
    a caller still has the events read before a transport error."""
    event: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                into.append((event, "\n".join(data)))
            event, data = None, []
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].lstrip())


def openai_texts(events: list[SseEvent]) -> list[str]:
    """The content deltas of an OpenAI stream (events that parse and carry content)."""
    texts = []
    for _, data in events:
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        for choice in chunk.get("choices", []):
            if choice["delta"].get("content"):
                texts.append(choice["delta"]["content"])
    return texts


def anthropic_texts(events: list[SseEvent]) -> list[str]:
    return [
        json.loads(data)["delta"]["text"] for name, data in events if name == "content_block_delta"
    ]
