"""Errors a caller can cause or see, and their one mapping to rich gRPC status.

Domain code raises `ServiceError` subclasses (each service's `errors.py` names its reasons);
`to_rpc_status` is the single place that turns them into `google.rpc.Status` with
`ErrorInfo` (UPPER_SNAKE reason, domain), `BadRequest` field violations, and `RetryInfo`
when the error says how long to wait before trying again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ServiceError(Exception):
    """An error with a canonical status code, a machine-readable reason and a safe message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: str = "INTERNAL"
    # Seconds the caller should wait before retrying (google.rpc.RetryInfo); None: no advice.
    retry_delay: float | None = None

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation], *, reason: str | None = None) -> None:
        violations = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}", reason=reason, violations=violations)


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Internal(ServiceError):
    """Something the caller did not cause. The message is generic on purpose."""


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(error: ServiceError, domain: str) -> status_pb2.Status:
    code_value: int = error.code.value[0]  # grpc.StatusCode and google.rpc.Code share numbers
    details = [
        _packed(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
        )
    ]
    if error.violations:
        details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if error.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(round(error.retry_delay * 1e9), 0))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code_value, message=error.message, details=details)
