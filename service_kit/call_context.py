"""Per-call facts (caller identity, method, request id) that the interceptor establishes
and servicers, domain code and log records read."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

REQUEST_ID_HEADER = "x-request-id"
# The one rule for request ids, in a header or a request field (matched whole).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class CallInfo:
    method: str  # full path: /package.Service/Method
    caller: str | None  # SPIFFE ID, None when the peer presented none
    request_id: str


current_call: ContextVar[CallInfo | None] = ContextVar("current_call", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    """The caller's request id when it is well formed, otherwise a fresh one (never trust
    arbitrary header bytes into logs and audit records)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and REQUEST_ID.fullmatch(value):
            return value
    return new_request_id()


def call_info() -> CallInfo:
    info = current_call.get()
    if info is None:
        raise RuntimeError("no call in progress")
    return info
