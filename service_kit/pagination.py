"""Keyset pagination: page size rules and opaque page tokens bound to their query."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from service_kit.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class PageRequest:
    size: int
    cursor: dict[str, Any] | None  # the last row's sort key, None for the first page


def page_request(page_size: int, page_token: str, *, query: str) -> PageRequest:
    """Validate a page size and decode a page token issued for the same `query` (a string
    naming the parent and filters), so a token cannot be replayed against another listing."""
    violations = []
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        violations.append(
            FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {page_size}")
        )
    cursor = None
    if page_token:
        cursor = _decode(page_token)
        if cursor is None or cursor.pop("q", None) != query:
            violations.append(
                FieldViolation("page_token", "is not a token from this listing's previous page")
            )
            cursor = None
    if violations:
        raise InvalidArgument(violations)
    return PageRequest(size=page_size or DEFAULT_PAGE_SIZE, cursor=cursor)


def page_token(cursor: dict[str, Any], *, query: str) -> str:
    raw = json.dumps({**cursor, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
