"""Provider base URLs a caller may configure."""

from __future__ import annotations

from urllib.parse import urlsplit

from service_kit.egress import EgressPolicy
from service_kit.errors import FieldViolation

MAX_BASE_URL_LENGTH = 2048


def base_url_violations(base_url: str, egress: EgressPolicy) -> list[FieldViolation]:
    """Empty, or an http(s) URL the egress policy lets provider calls reach."""
    if not base_url:
        return []
    if len(base_url) > MAX_BASE_URL_LENGTH:
        return [FieldViolation("base_url", f"must be at most {MAX_BASE_URL_LENGTH} characters")]
    # Printable ASCII only: a control character or space would be stored, then break every
    # request built from the URL (and urlsplit silently drops tabs and newlines).
    if not all(33 <= ord(ch) <= 126 for ch in base_url):
        return [
            FieldViolation(
                "base_url", "must be printable ASCII without spaces or control characters"
            )
        ]
    try:
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return [FieldViolation("base_url", "is not a valid URL")]
    if parts.scheme not in ("https", "http") or not host or parts.query or parts.fragment:
        return [FieldViolation("base_url", "must be an http(s) URL without query or fragment")]
    if parts.username or parts.password:
        return [FieldViolation("base_url", "must not contain credentials")]
    if port == 0:
        return [FieldViolation("base_url", "must not use port 0")]
    refusal = egress.host_refusal(host, scheme=parts.scheme)
    return [FieldViolation("base_url", refusal)] if refusal else []
