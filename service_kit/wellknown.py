"""Protobuf Timestamp and Duration from Python values, by integer arithmetic.

protobuf's own `Timestamp.FromDatetime` goes through `utctimetuple()` and `calendar.timegm`,
and `Duration.FromNanoseconds` through Python-level normalization: several microseconds
each, and an execution's messages carry several of them."""

from __future__ import annotations

import datetime as dt

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NANOS = 1_000_000_000


def timestamp(value: dt.datetime) -> Timestamp:
    """As `Timestamp.FromDatetime`: a naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def duration(nanoseconds: int) -> Duration:
    """As `Duration.FromNanoseconds`: seconds and nanos carry the same sign."""
    seconds, nanos = divmod(abs(nanoseconds), _NANOS)
    sign = -1 if nanoseconds < 0 else 1
    return Duration(seconds=sign * seconds, nanos=sign * nanos)


def nanoseconds(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * _NANOS + delta.microseconds * 1000
