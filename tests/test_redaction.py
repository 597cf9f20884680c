"""The redaction rule, pure, with properties checked by Hypothesis."""

from __future__ import annotations

import string
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from execution_service.providers.errors import MAX_MESSAGE_CHARS, ErrorReason, ProviderError
from execution_service.providers.openai import OpenAIProvider
from service_kit.redaction import MARKER, MIN_RUN, redact_secret

KEY = "sk-canary-0123456789abcdefGHIJKLMNOPqrstuv"
KEY_ALPHABET = "".join(chr(c) for c in range(33, 127))  # the vault's rule for API keys


def leaked_windows(text: str, key: str) -> list[str]:
    """Every window of MIN_RUN characters of the key found in text, case-insensitively."""
    folded = text.lower()
    width = min(MIN_RUN, len(key))
    return [
        key[i : i + width]
        for i in range(len(key) - width + 1)
        if key[i : i + width].lower() in folded
    ]


def test_whole_key_lower_and_upper_case_and_pieces_are_redacted() -> None:
    text = f"a {KEY} b {KEY.lower()} c {KEY.upper()} d {KEY[5:13]} e {KEY[-9:]} f"
    redacted = redact_secret(text, KEY)
    assert leaked_windows(redacted, KEY) == []
    assert redacted.startswith("a ") and redacted.endswith(" f")
    assert redacted.count(MARKER) == 5


def test_runs_shorter_than_the_rule_stay() -> None:
    assert redact_secret(f"hint {KEY[-4:]}", KEY) == f"hint {KEY[-4:]}"
    assert redact_secret(f"x{KEY[:7]}x", KEY) == f"x{KEY[:7]}x"


def test_a_short_secret_is_redacted_whole() -> None:
    assert redact_secret("token AbC12 and abc12", "abc12") == f"token {MARKER} and {MARKER}"


def test_a_key_straddling_the_message_cut_is_redacted_before_the_cut() -> None:
    for offset in range(MAX_MESSAGE_CHARS - len(KEY), MAX_MESSAGE_CHARS + 1):
        err = ProviderError(ErrorReason.PROVIDER_AUTH_FAILED, "x" * offset + KEY + " tail")
        err.redact(KEY)
        assert len(err.message) <= MAX_MESSAGE_CHARS
        assert leaked_windows(err.message, KEY) == [], offset
        assert leaked_windows(str(err), KEY) == [] and leaked_windows(repr(err), KEY) == []


def test_a_plain_text_error_body_is_redacted_before_it_is_cut() -> None:
    # A non-JSON error body (a proxy's page) is quoted; the key sits across the length cut.
    body = ("y" * (MAX_MESSAGE_CHARS - 20) + KEY.lower()).encode()
    err = OpenAIProvider().parse_error(502, {}, body, time.time())
    err.redact(KEY)
    assert err.message.startswith("HTTP 502: yyy")
    assert leaked_windows(err.message, KEY) == []


def test_long_texts_and_long_keys_are_fast() -> None:
    key = "".join(KEY_ALPHABET[i * 7 % len(KEY_ALPHABET)] for i in range(4096))
    text = ("noise " * 3000) + key + key.lower()
    started = time.perf_counter()
    redacted = redact_secret(text, key)
    elapsed = time.perf_counter() - started
    assert leaked_windows(redacted, key) == []
    assert elapsed < 1.0, elapsed  # generous: typical is a few milliseconds


@st.composite
def key_and_text(draw: st.DrawFn) -> tuple[str, str]:
    # Keys of MIN_RUN characters or more: a shorter secret is redacted whole where it appears
    # (test_a_short_secret_is_redacted_whole), but its letters may occur in the marker.
    key = draw(st.text(alphabet=KEY_ALPHABET, min_size=MIN_RUN, max_size=80))
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, len(key)))
        end = draw(st.integers(start, len(key)))
        piece = key[start:end]
        case = draw(st.sampled_from(["same", "lower", "upper", "swap"]))
        piece = {
            "same": piece,
            "lower": piece.lower(),
            "upper": piece.upper(),
            "swap": piece.swapcase(),
        }[case]
        filler = draw(st.text(alphabet=string.printable + "\u00e9\u2039\u203a", max_size=30))
        pieces += [filler, piece]
    return key, "".join(pieces)


@settings(max_examples=300, deadline=None)
@given(key_and_text())
def test_no_window_of_the_key_survives(case: tuple[str, str]) -> None:
    key, text = case
    redacted = redact_secret(text, key)
    assert leaked_windows(redacted, key) == []


@settings(max_examples=200, deadline=None)
@given(key_and_text(), st.integers(0, 200))
def test_no_window_survives_the_message_cut(case: tuple[str, str], pad: int) -> None:
    key, text = case
    err = ProviderError(ErrorReason.PROVIDER_SERVER_ERROR, "z" * (MAX_MESSAGE_CHARS - pad) + text)
    err.redact(key)
    assert leaked_windows(err.message, key) == []


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=KEY_ALPHABET, min_size=MIN_RUN, max_size=40), st.text(max_size=200))
def test_text_without_the_key_is_unchanged(key: str, text: str) -> None:
    if not leaked_windows(text, key):
        assert redact_secret(text, key) == text
