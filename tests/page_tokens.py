"""Page tokens as a caller can forge them: a genuine token decoded, changed, re-encoded."""

from __future__ import annotations

import base64
import json
from typing import Any


def decode_token(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


def encode_token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def forged(genuine: str, **changes: Any) -> str:
    """The genuine token with fields changed (a value of ... removes the field)."""
    fields = decode_token(genuine)
    for field, value in changes.items():
        if value is ...:
            fields.pop(field)
        else:
            fields[field] = value
    return encode_token(fields)
