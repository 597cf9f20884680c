"""service_kit.wellknown gives what protobuf's own conversions give, faster."""

import datetime as dt

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from service_kit import wellknown

_TIMES = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31), timezones=st.none()
) | st.datetimes(
    min_value=dt.datetime(2, 1, 1),
    max_value=dt.datetime(9998, 12, 31),
    timezones=st.sampled_from(
        [
            dt.UTC,
            dt.timezone(dt.timedelta(hours=5, minutes=30)),
            dt.timezone(-dt.timedelta(hours=8)),
        ]
    ),
)


@given(_TIMES)
def test_timestamp_as_from_datetime(value: dt.datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert wellknown.timestamp(value) == expected


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_duration_as_from_nanoseconds(nanoseconds: int) -> None:
    expected = Duration()
    expected.FromNanoseconds(nanoseconds)
    assert wellknown.duration(nanoseconds) == expected


@given(st.timedeltas(min_value=-dt.timedelta(days=10**5), max_value=dt.timedelta(days=10**5)))
def test_nanoseconds_of_a_timedelta(delta: dt.timedelta) -> None:
    expected = Duration()
    expected.FromTimedelta(delta)
    assert wellknown.duration(wellknown.nanoseconds(delta)) == expected
