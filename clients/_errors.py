"""The client's exceptions: one class per common status code under `ClientError`.

Every failed call raises a `ClientError` (chained, with `from`, to the `grpc.RpcError` it
translates). The rich details the services send (`google.rpc.ErrorInfo`, `BadRequest`) are
decoded by `clients._rich_status` with `protobuf` alone; when a status carries none (a
connection failure, a deadline), `reason` and `domain` are empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from ._rich_status import FieldViolation, details_from_trailers


class ClientError(Exception):
    """A call failed. `code` is the gRPC status; `reason` and `domain` come from the status'
    `ErrorInfo` (empty when it has none), `metadata` is the ErrorInfo's metadata,
    `field_violations` the `BadRequest` details, `retry_delay` the seconds the server asks the
    caller to wait before trying again (`RetryInfo`; None when it gave none), and
    `execution_name` the execution a failed Execute (or another execution call) concerns,
    when there is one."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        execution_name: str | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_delay = retry_delay
        self.message = message
        self.code = code or self.default_code
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.execution_name = execution_name or self.metadata.get("execution") or None

    def __str__(self) -> str:
        """`NOT_FOUND (API_KEY_NOT_FOUND): workspaces/x/apiKeys/openai does not exist`; the
        reason is left out when it only repeats the code."""
        shown = self.reason and self.reason != self.code.name
        label = self.code.name + (f" ({self.reason})" if shown else "")
        text = f"{label}: {self.message}" if self.message else label
        if self.retry_delay is not None:
            text += f" [retry after {self.retry_delay:.3f} s]"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r})"
        )


class InvalidArgument(ClientError):
    """The request is malformed; `field_violations` says which fields and why."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ClientError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ClientError):
    """For Execute: the request id is already running (`execution_name` names it)."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(ClientError):
    """A conditional write lost: the resource changed since its etag was read
    (`reason` ETAG_MISMATCH). Read it again and retry."""

    default_code = grpc.StatusCode.ABORTED


class PermissionDenied(ClientError):
    """The caller's certificate identity is not allowed to call this method."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ClientError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(ClientError):
    """The system is not in a state that allows the call, e.g. no key stored for a provider,
    or (reason `REQUEST_ID_REUSED`) an Execute whose request id an earlier, different request
    already took (`execution_name` names that execution)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ClientError):
    """A limit was hit: the provider rate-limited the workspace's key, a budget has no room
    (reason `BUDGET_EXCEEDED`), or a budget's rate limit (reason `RATE_LIMITED`, with
    `retry_delay`)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ClientError):
    """The server (or one it depends on) could not be reached; retrying later may succeed."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ClientError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Aborted,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def error_from_rpc(error: grpc.RpcError, *, execution_name: str | None = None) -> ClientError:
    """Translate a failed call (sync or asyncio) into the matching `ClientError` subclass.
    `execution_name` fills in the execution when the status does not name one."""
    call: Any = error  # both grpc.aio.AioRpcError and the sync errors are grpc.Call-like
    code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    message = (call.details() if hasattr(call, "details") else None) or ""
    trailers = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    details = details_from_trailers(trailers, code.value[0])
    cls = _BY_CODE.get(code, ClientError)
    if details is None:
        return cls(message, code=code, execution_name=execution_name)
    return cls(
        details.message or message,
        code=code,
        reason=details.reason,
        domain=details.domain,
        metadata=details.metadata,
        field_violations=details.field_violations,
        execution_name=details.metadata.get("execution") or execution_name,
        retry_delay=details.retry_delay,
    )
