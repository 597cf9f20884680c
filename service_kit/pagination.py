"""Keyset pagination: page size rules and opaque page tokens bound to their query.

A page token is base64 JSON that a caller can forge, so every listing declares its cursor:
the fields it carries and each field's type and range. A token is decoded against that
declaration in one place, and anything else (not base64, not JSON, a missing or extra
field, a wrong type, a value out of range) is INVALID_ARGUMENT before the listing runs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from service_kit.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Tokens we issue are a few hundred characters; a bound keeps forged ones cheap to refuse.
MAX_TOKEN_CHARS = 2048
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")  # unpadded URL-safe base64, nothing else
_BAD_TOKEN = "is not a token from this listing's previous page"


class CursorField(Protocol):
    """One field of a cursor: how its value is written into a token and read back."""

    def encode(self, value: Any) -> Any: ...

    def decode(self, raw: object) -> Any:
        """The typed value, or ValueError when `raw` is not one this field could hold."""
        ...


@dataclass(frozen=True)
class Choice:
    """A string from a fixed set (for example a provider name)."""

    values: Collection[str]

    def encode(self, value: str) -> str:
        return value

    def decode(self, raw: object) -> str:
        if not isinstance(raw, str) or raw not in self.values:
            raise ValueError("not one of the allowed values")
        return raw


@dataclass(frozen=True)
class Integer:
    """An integer within [minimum, maximum] (a database id, for example)."""

    minimum: int
    maximum: int

    def encode(self, value: int) -> int:
        return value

    def decode(self, raw: object) -> int:
        # bool is an int in Python, but `true` is not an id.
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError("not an integer")
        if not self.minimum <= raw <= self.maximum:
            raise ValueError("out of range")
        return raw


BIGINT_ID = Integer(1, 2**63 - 1)  # a PostgreSQL bigserial


@dataclass(frozen=True)
class Timestamp:
    """A time with an explicit offset, read back in UTC (so that any offset is range-checked
    once, here, rather than overflowing later when the database driver converts it)."""

    def encode(self, value: dt.datetime) -> str:
        return value.isoformat()

    def decode(self, raw: object) -> dt.datetime:
        if not isinstance(raw, str):
            raise ValueError("not a string")
        parsed = dt.datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            raise ValueError("no UTC offset")
        try:
            return parsed.astimezone(dt.UTC)
        except OverflowError:  # e.g. year 1 at +14:00 is before year 1 in UTC
            raise ValueError("out of range") from None


@dataclass(frozen=True)
class Uuid:
    def encode(self, value: uuid.UUID) -> str:
        return str(value)

    def decode(self, raw: object) -> uuid.UUID:
        if not isinstance(raw, str):
            raise ValueError("not a string")
        return uuid.UUID(raw)


Cursor = Mapping[str, CursorField]
"""A listing's cursor declaration: field name in the token -> its type."""


@dataclass(frozen=True)
class PageRequest:
    size: int
    cursor: dict[str, Any] | None  # the last row's sort key, typed; None for the first page


def page_size(value: int, field: str = "page_size", *, default: int = DEFAULT_PAGE_SIZE) -> int:
    """A requested size: 0 means the default, above the maximum means the maximum (a caller
    may ask for more than a page holds and get fewer), negative is an error."""
    if value < 0:
        raise InvalidArgument([FieldViolation(field, f"must not be negative, got {value}")])
    return min(value, MAX_PAGE_SIZE) or default


def page_request(size: int, token: str, *, query: str, cursor: Cursor) -> PageRequest:
    """Validate a page size and decode a page token issued for the same `query` (a string
    naming the parent and filters, so a token cannot be replayed against another listing)
    into the typed fields `cursor` declares."""
    violations: list[FieldViolation] = []
    try:
        size = page_size(size)
    except InvalidArgument as exc:
        violations += exc.violations
    decoded = None
    if token:
        decoded = _decode(token, query, cursor)
        if decoded is None:
            violations.append(FieldViolation("page_token", _BAD_TOKEN))
    if violations:
        raise InvalidArgument(violations)
    return PageRequest(size=size, cursor=decoded)


def page_token(values: Mapping[str, Any], *, query: str, cursor: Cursor) -> str:
    encoded = {name: field.encode(values[name]) for name, field in cursor.items()}
    raw = json.dumps({**encoded, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, query: str, cursor: Cursor) -> dict[str, Any] | None:
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: deeply nested JSON
        return None
    if not isinstance(value, dict) or value.pop("q", None) != query:
        return None
    if value.keys() != cursor.keys():
        return None
    try:
        return {name: field.decode(value[name]) for name, field in cursor.items()}
    except ValueError:
        return None
