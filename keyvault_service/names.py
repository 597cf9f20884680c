"""Resource names and request validation: everything a caller sends is checked here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlsplit

from service_kit.errors import FieldViolation, InvalidArgument

# Workspace ids: 1-63 characters, letters, digits, '-' and '_', starting with a letter or digit.
WORKSPACE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"
PROVIDERS = ("openai", "anthropic")
MAX_KEY_BYTES = 4096
MAX_BASE_URL_LENGTH = 2048

_KEY_NAME = re.compile(rf"^workspaces/({WORKSPACE_PATTERN})/apiKeys/([a-z]+)$")
_WORKSPACE_NAME = re.compile(rf"^workspaces/({WORKSPACE_PATTERN})$")
_PRINTABLE_ASCII = re.compile(r"^[\x21-\x7e]+$")
_LOOPBACK_NAMES = {"localhost"}


@dataclass(frozen=True, order=True)
class KeyRef:
    workspace: str
    provider: str

    @property
    def name(self) -> str:
        return f"workspaces/{self.workspace}/apiKeys/{self.provider}"


def key_name_violation(name: str, field: str = "name") -> FieldViolation | None:
    match = _KEY_NAME.match(name)
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
    match = _KEY_NAME.match(name)
    assert match is not None
    return KeyRef(match.group(1), match.group(2))


def try_parse_key_name(name: str) -> KeyRef | None:
    """Best effort, for audit records of denied calls."""
    return None if key_name_violation(name) else parse_key_name(name)


def parse_workspace_name(
    parent: str, field: str = "parent", *, allow_all: bool = False
) -> str | None:
    """`workspaces/{workspace}`; with allow_all, `workspaces/-` means every workspace (None)."""
    if allow_all and parent == "workspaces/-":
        return None
    match = _WORKSPACE_NAME.match(parent)
    if not match:
        raise InvalidArgument(
            [
                FieldViolation(
                    field,
                    "must be workspaces/{workspace}" + (" or workspaces/-" if allow_all else ""),
                )
            ]
        )
    return match.group(1)


def api_key_violations(api_key: str) -> list[FieldViolation]:
    # Descriptions state the rule, never the value: it may be a real secret.
    if not api_key:
        return [FieldViolation("api_key", "is required")]
    if len(api_key.encode()) > MAX_KEY_BYTES:
        return [FieldViolation("api_key", f"must be at most {MAX_KEY_BYTES} bytes")]
    if not _PRINTABLE_ASCII.match(api_key):
        return [FieldViolation("api_key", "must be printable ASCII without spaces")]
    return []


def base_url_violations(base_url: str) -> list[FieldViolation]:
    """Empty, or an https URL (http only for loopback hosts, e.g. a local emulator)."""
    if not base_url:
        return []
    if len(base_url) > MAX_BASE_URL_LENGTH:
        return [FieldViolation("base_url", f"must be at most {MAX_BASE_URL_LENGTH} characters")]
    try:
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return [FieldViolation("base_url", "is not a valid URL")]
    if parts.scheme not in ("https", "http") or not host or parts.query or parts.fragment:
        return [FieldViolation("base_url", "must be an http(s) URL without query or fragment")]
    if parts.username or parts.password:
        return [FieldViolation("base_url", "must not contain credentials")]
    if parts.scheme == "http" and not _is_loopback(host):
        return [FieldViolation("base_url", "must use https unless the host is loopback")]
    return []


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
