"""The one rule for keeping a secret out of text that came from elsewhere.

A provider (or anything posing as one) may quote the key it was sent: whole, lower-cased,
or cut by a length limit. The rule: every run of ``MIN_RUN`` or more consecutive characters
of the secret, compared case-insensitively, is replaced by ``MARKER`` (a secret shorter than
``MIN_RUN`` is replaced wherever it appears whole). Redact first, then cut text to length:
cutting first could leave the head of a key that the full text would have matched.

No window of ``MIN_RUN`` characters in the result matches the secret: every matching window
of the input is covered by a marker, and a window overlapping a marker contains one of its
non-ASCII brackets (its inside is shorter than ``MIN_RUN``), which an API key, printable
ASCII by the vault's rules, never contains.
"""

from __future__ import annotations

from typing import Final

MIN_RUN: Final = 8
# "secret" in single angle quotation marks: non-ASCII brackets, shorter than MIN_RUN inside.
MARKER: Final = "\u2039secret\u203a"
# Text longer than this is cut to it before redaction; callers keep far less.
MAX_SCAN_CHARS: Final = 16 * 1024

# ASCII-only case folding keeps every character at its index (str.lower can change lengths).
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def redact_secret(text: str, secret: str, *, max_chars: int = MAX_SCAN_CHARS) -> str:
    """``text[:max_chars]`` with every run of ``MIN_RUN``+ characters of ``secret``
    (case-insensitive) replaced by ``MARKER``."""
    text = text[:max_chars]
    if not secret or not text:
        return text
    window = min(MIN_RUN, len(secret))
    folded_secret = secret.translate(_ASCII_LOWER)
    windows = {folded_secret[i : i + window] for i in range(len(folded_secret) - window + 1)}
    folded = text.translate(_ASCII_LOWER)
    covered_until = 0  # end of the current run of matched windows
    runs: list[tuple[int, int]] = []
    for start in range(len(folded) - window + 1):
        if folded[start : start + window] in windows:
            if runs and start <= covered_until:
                runs[-1] = (runs[-1][0], start + window)
            else:
                runs.append((start, start + window))
            covered_until = start + window
    if not runs:
        return text
    parts: list[str] = []
    position = 0
    for start, end in runs:
        parts += [text[position:start], MARKER]
        position = end
    parts.append(text[position:])
    return "".join(parts)
