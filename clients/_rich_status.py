"""Decoding `google.rpc.Status` rich error details with nothing but `protobuf`.

The services put a `google.rpc.Status` in the `grpc-status-details-bin` trailer, carrying an
`ErrorInfo` (reason, domain, metadata) and, for invalid input, a `BadRequest` (field
violations), and when a retry later may succeed, a `RetryInfo` (how long to wait). The
usual decoders (`grpcio-status`, `googleapis-common-protos`) are extra packages; this client
depends on `grpcio` and `protobuf` only, so it declares the few messages it reads here, field
numbers and types exactly as in `google/rpc/status.proto` and `google/rpc/error_details.proto`,
in a private descriptor pool. Protobuf's wire format is defined by field numbers and types
alone, so these messages parse the real ones; the private pool never clashes with
`googleapis-common-protos` when that is installed too. Fields this client does not read
(other detail types, `localized_message`, ...) are skipped by the parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "type.googleapis.com/"
_ERROR_INFO = "google.rpc.ErrorInfo"
_BAD_REQUEST = "google.rpc.BadRequest"
_RETRY_INFO = "google.rpc.RetryInfo"
_PACKAGE = "clients.wire.rpc"  # a private package name: wire-compatible, never registered globally

_F = descriptor_pb2.FieldDescriptorProto


@dataclass(frozen=True)
class FieldViolation:
    """One `google.rpc.BadRequest.FieldViolation`: which request field is wrong and why."""

    field: str
    description: str


@dataclass(frozen=True)
class RichDetails:
    """What a `google.rpc.Status` told beyond the status code."""

    code: int
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    retry_delay: float | None = None  # seconds, from `RetryInfo`: when to try again


def _add_field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    *,
    repeated: bool = False,
    type_name: str = "",
) -> None:
    added = message.field.add(
        name=name,
        number=number,
        type=kind,  # type: ignore[arg-type]
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
    )
    if type_name:  # set only for message fields: the descriptor field has presence
        added.type_name = type_name


def _schema() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="clients/wire/rpc.proto", package=_PACKAGE, syntax="proto3"
    )
    any_ = file.message_type.add(name="Any")  # google.protobuf.Any
    _add_field(any_, "type_url", 1, _F.TYPE_STRING)
    _add_field(any_, "value", 2, _F.TYPE_BYTES)

    status = file.message_type.add(name="Status")  # google.rpc.Status
    _add_field(status, "code", 1, _F.TYPE_INT32)
    _add_field(status, "message", 2, _F.TYPE_STRING)
    _add_field(status, "details", 3, _F.TYPE_MESSAGE, repeated=True, type_name=f".{_PACKAGE}.Any")

    info = file.message_type.add(name="ErrorInfo")  # google.rpc.ErrorInfo
    _add_field(info, "reason", 1, _F.TYPE_STRING)
    _add_field(info, "domain", 2, _F.TYPE_STRING)
    entry = info.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    _add_field(entry, "key", 1, _F.TYPE_STRING)
    _add_field(entry, "value", 2, _F.TYPE_STRING)
    _add_field(
        info,
        "metadata",
        3,
        _F.TYPE_MESSAGE,
        repeated=True,
        type_name=f".{_PACKAGE}.ErrorInfo.MetadataEntry",
    )

    bad = file.message_type.add(name="BadRequest")  # google.rpc.BadRequest
    violation = bad.nested_type.add(name="FieldViolation")
    _add_field(violation, "field", 1, _F.TYPE_STRING)
    _add_field(violation, "description", 2, _F.TYPE_STRING)
    _add_field(
        bad,
        "field_violations",
        1,
        _F.TYPE_MESSAGE,
        repeated=True,
        type_name=f".{_PACKAGE}.BadRequest.FieldViolation",
    )

    duration = file.message_type.add(name="Duration")  # google.protobuf.Duration
    _add_field(duration, "seconds", 1, _F.TYPE_INT64)
    _add_field(duration, "nanos", 2, _F.TYPE_INT32)
    retry = file.message_type.add(name="RetryInfo")  # google.rpc.RetryInfo
    _add_field(retry, "retry_delay", 1, _F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.Duration")
    return file


def _message_classes() -> tuple[Any, Any, Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_schema())

    def cls(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))

    return cls("Status"), cls("ErrorInfo"), cls("BadRequest"), cls("RetryInfo")


_Status, _ErrorInfo, _BadRequest, _RetryInfo = _message_classes()


def decode_status(data: bytes) -> RichDetails:
    """Decode a serialized `google.rpc.Status`. Raises `DecodeError` on malformed bytes."""
    status = _Status.FromString(data)
    reason, domain, metadata = "", "", {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for detail in status.details:
        type_name = detail.type_url.removeprefix(_TYPE_PREFIX)
        if type_name == _ERROR_INFO and not reason:
            info = _ErrorInfo.FromString(detail.value)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif type_name == _BAD_REQUEST:
            bad = _BadRequest.FromString(detail.value)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif type_name == _RETRY_INFO:
            delay = _RetryInfo.FromString(detail.value).retry_delay
            retry_delay = delay.seconds + delay.nanos / 1e9
    return RichDetails(
        code=status.code,
        message=status.message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_delay=retry_delay,
    )


def details_from_trailers(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None, code: int
) -> RichDetails | None:
    """The rich details of a call's trailing metadata, or None when it carries none, they do
    not parse, or they describe another status code than the call ended with."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            details = decode_status(value)
        except DecodeError:
            return None
        return details if details.code == code else None
    return None
