"""Defensive readers for provider JSON: a field of the wrong type reads as absent, never crashes."""

from __future__ import annotations

import json
from typing import Any

import orjson

from service_kit.redaction import MAX_SCAN_CHARS

from .errors import ErrorReason, ProviderError


def load_object(data: str | bytes, *, what: str) -> dict[str, Any]:
    """Parse a JSON object, or raise PROVIDER_STREAM_ERROR (not retryable: a malformed
    answer is a fault of the endpoint that a repeat is unlikely to fix).

    orjson: every chunk of every stream is parsed here, at about a third of json's cost. It is
    stricter than json only where a provider's JSON would be broken: a lone surrogate escape
    (text no gRPC answer can carry) and NaN are refused here, as malformed."""
    try:
        value = orjson.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProviderError(
            ErrorReason.PROVIDER_STREAM_ERROR, f"malformed {what}: not valid JSON"
        ) from exc
    if not isinstance(value, dict):
        raise ProviderError(ErrorReason.PROVIDER_STREAM_ERROR, f"malformed {what}: not an object")
    return value


def obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def count(value: Any) -> int | None:
    """A token count: a non-negative int (bool excluded), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def error_body(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an error body (both providers nest it there), or {}."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return obj(obj(parsed).get("error"))


def fallback_message(status: int, body: bytes) -> str:
    """A message for an error body that is not the provider's JSON (a proxy's HTML page).

    The whole (bounded) body goes into the message: `ProviderError` redacts the key before
    it cuts the message to length, so a key near the cut cannot escape half-redacted.
    """
    snippet = " ".join(body[:MAX_SCAN_CHARS].decode("utf-8", "replace").split())
    if snippet and snippet.isprintable() and not snippet.startswith("<"):
        return f"HTTP {status}: {snippet}"
    return f"HTTP {status} from provider"
