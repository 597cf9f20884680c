"""Deterministic answer text and token counts (pure functions, no I/O).

Token counting rule (the same for both providers, so tests can compute usage exactly):

* words(x) = len(x.split()) for a string; for a list of content parts, the sum of
  words(part["text"]) + words(part["content"]) over the parts that are dicts
  (so text blocks and nested tool_result content count, images count 0).
* Each message counts 3 + words(message["content"]).
* The Anthropic top-level `system` (string or text blocks), when present and non-empty,
  counts as one more message: 3 + words(system). (OpenAI system/developer messages are in
  `messages` and count like any other.)
* input tokens = the sum of the above; output tokens = the number of content chunks sent.
* Cache figures set through the control plane come on top: OpenAI reports
  prompt_tokens = input + cache_read with prompt_tokens_details.cached_tokens = cache_read;
  Anthropic reports input_tokens = input, cache_read_input_tokens = cache_read and
  cache_creation_input_tokens = cache_write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .config import DEFAULT_CHUNKS

TOKENS_PER_MESSAGE = 3

_WORD_PIECE = re.compile(r"\s*\S+(?:\s+$)?")


def words(content: Any) -> int:
    """Whitespace-separated words in a message content (string or list of parts)."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                total += words(part.get("text")) + words(part.get("content"))
        return total
    return 0


def count_input_tokens(messages: Iterable[Any], system: Any = None) -> int:
    """Input tokens of a request under the documented rule."""
    total = TOKENS_PER_MESSAGE + words(system) if system else 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += TOKENS_PER_MESSAGE + words(content)
    return total


@dataclass(frozen=True, slots=True)
class Pieces:
    """An answer split into stream chunks, each also pre-encoded as a JSON string."""

    texts: tuple[str, ...]
    json: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def text(self, count: int) -> str:
        return "".join(self.texts[:count])


def default_text(chunks: int = DEFAULT_CHUNKS) -> str:
    """The answer sent when no text is configured: "word0 word1 ... word{chunks-1}"."""
    return " ".join(f"word{i}" for i in range(chunks))


def _split(text: str | None, chunks: int | None) -> tuple[str, ...]:
    if text is None:
        count = DEFAULT_CHUNKS if chunks is None else chunks
        return tuple(f"word{i}" if i == 0 else f" word{i}" for i in range(count))
    if chunks is None:
        return tuple(_WORD_PIECE.findall(text))
    count = min(chunks, len(text))
    return tuple(text[i * len(text) // count : (i + 1) * len(text) // count] for i in range(count))


@lru_cache(maxsize=256)
def pieces(text: str | None, chunks: int | None) -> Pieces:
    """The chunks of an answer.

    No text: `chunks` (default 20) words "word0", " word1", ... Text without `chunks`: one
    whitespace-led word per chunk. Text and `chunks`: the text in `chunks` near-equal slices
    (at most one per character). Joining the chunks gives back the text (a blank text gives
    no chunks).
    """
    texts = _split(text, chunks)
    return Pieces(texts, tuple(json.dumps(t, ensure_ascii=False).encode() for t in texts))
