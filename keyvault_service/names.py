"""Resource names and request validation: everything a caller sends is checked here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from service_kit.errors import FieldViolation, InvalidArgument
from service_kit.names import WORKSPACE_PATTERN

PROVIDERS = ("openai", "anthropic")
MAX_KEY_BYTES = 4096

_KEY_NAME = re.compile(rf"workspaces/({WORKSPACE_PATTERN})/apiKeys/([a-z]+)")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, order=True)
class KeyRef:
    workspace: str
    provider: str

    @property
    def name(self) -> str:
        return f"workspaces/{self.workspace}/apiKeys/{self.provider}"


def key_name_violation(name: str, field: str = "name") -> FieldViolation | None:
    match = _KEY_NAME.fullmatch(name)
    if not match:
        return FieldViolation(
            field,
            "must be workspaces/{workspace}/apiKeys/{provider} with a workspace id of 1-63 "
            "letters, digits, '-' or '_' (starting with a letter or digit)",
        )
    if match.group(2) not in PROVIDERS:
        return FieldViolation(field, f"provider must be one of {', '.join(PROVIDERS)}")
    return None


def parse_key_name(name: str, field: str = "name") -> KeyRef:
    violation = key_name_violation(name, field)
    if violation:
        raise InvalidArgument([violation])
    match = _KEY_NAME.fullmatch(name)
    assert match is not None
    return KeyRef(match.group(1), match.group(2))


def try_parse_key_name(name: str) -> KeyRef | None:
    """Best effort, for audit records of denied calls."""
    return None if key_name_violation(name) else parse_key_name(name)


def api_key_violations(api_key: str) -> list[FieldViolation]:
    # Descriptions state the rule, never the value: it may be a real secret.
    if not api_key:
        return [FieldViolation("api_key", "is required")]
    if len(api_key.encode()) > MAX_KEY_BYTES:
        return [FieldViolation("api_key", f"must be at most {MAX_KEY_BYTES} bytes")]
    if not _PRINTABLE_ASCII.fullmatch(api_key):
        return [FieldViolation("api_key", "must be printable ASCII without spaces")]
    return []
