"""The token counting rule and answer splitting (pure functions)."""

from __future__ import annotations

import pytest

from provider_emulator import count_input_tokens, default_text, pieces
from provider_emulator.textgen import words


def test_words_of_strings_and_parts() -> None:
    assert words("  two   words ") == 2
    assert words(None) == 0
    assert words([{"type": "text", "text": "one two"}, {"type": "image"}, "stray"]) == 2
    assert words([{"type": "tool_result", "content": [{"type": "text", "text": "a b c"}]}]) == 3


def test_input_tokens_rule() -> None:
    messages = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "x y z"}]},
    ]
    assert count_input_tokens(messages) == (3 + 2) + 3 + (3 + 3)
    assert count_input_tokens(messages, system="be kind") == 14 + (3 + 2)
    assert count_input_tokens(messages, system="") == 14
    assert count_input_tokens(messages, system=[{"type": "text", "text": "a"}]) == 14 + 4


def test_default_pieces() -> None:
    answer = pieces(None, 3)
    assert answer.texts == ("word0", " word1", " word2")
    assert answer.json == (b'"word0"', b'" word1"', b'" word2"')
    assert answer.text(3) == default_text(3) == "word0 word1 word2"
    assert len(pieces(None, None)) == 20


@pytest.mark.parametrize(
    ("text", "chunks", "expected"),
    [
        ("Hello  there\nworld ", None, ("Hello", "  there", "\nworld ")),
        ("abcdefg", 3, ("ab", "cd", "efg")),
        ("ab", 5, ("a", "b")),
        ("", None, ()),
        ('say "hi"', None, ("say", ' "hi"')),
    ],
)
def test_text_pieces(text: str, chunks: int | None, expected: tuple[str, ...]) -> None:
    answer = pieces(text, chunks)
    assert answer.texts == expected
    assert "".join(answer.texts) == text
