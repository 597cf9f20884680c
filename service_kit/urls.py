"""Provider base URLs a caller may configure."""

from __future__ import annotations

from ipaddress import ip_address
from urllib.parse import urlsplit

from service_kit.errors import FieldViolation

MAX_BASE_URL_LENGTH = 2048
_LOOPBACK_NAMES = {"localhost"}


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
