"""Pure tests of the retry policy: classification, retry-after parsing, delays, deadline."""

from __future__ import annotations

import email.utils

import pytest

from execution_service.retry import (
    DEFAULT_POLICY,
    RetryPolicy,
    classify,
    next_delay,
    parse_retry_after,
    should_give_up,
)

NOW = 1_750_000_000.0  # an arbitrary wall-clock instant


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retried(status: int) -> None:
    assert classify(status, {}, None) is True


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_caller_faults_are_never_retried(status: int) -> None:
    assert classify(status, {}, None) is False


def test_connection_failure_without_status_is_retried() -> None:
    assert classify(None, {}, None) is True


def test_insufficient_quota_is_not_retried_despite_429() -> None:
    assert classify(429, {}, "insufficient_quota") is False
    assert classify(429, {}, "rate_limit_exceeded") is True


def test_x_should_retry_overrides_the_status_both_ways() -> None:
    assert classify(500, {"x-should-retry": "false"}, None) is False
    assert classify(400, {"x-should-retry": "true"}, None) is True
    # Header names are case-insensitive even in a plain dict.
    assert classify(503, {"X-Should-Retry": "False"}, None) is False


def test_x_should_retry_with_an_unknown_value_falls_back_to_the_status() -> None:
    assert classify(503, {"x-should-retry": "maybe"}, None) is True
    assert classify(401, {"x-should-retry": "maybe"}, None) is False


def test_insufficient_quota_beats_x_should_retry_true() -> None:
    assert classify(429, {"x-should-retry": "true"}, "insufficient_quota") is False


def test_retry_after_seconds_including_fractions() -> None:
    assert parse_retry_after({"retry-after": "1"}, NOW) == 1.0
    assert parse_retry_after({"retry-after": "2.5"}, NOW) == 2.5
    assert parse_retry_after({"Retry-After": "0"}, NOW) == 0.0


def test_retry_after_ms_is_read_first() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    assert parse_retry_after(headers, NOW) == 1.5


def test_unparseable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "3"}, NOW) == 3.0


def test_retry_after_http_date_is_measured_from_the_injected_now() -> None:
    date = email.utils.formatdate(NOW + 7, usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) == pytest.approx(7.0)


def test_retry_after_http_date_in_the_past_is_ignored() -> None:
    date = email.utils.formatdate(NOW - 5, usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) is None


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "soon", ""])
def test_negative_or_garbage_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after({"retry-after": value}, NOW) is None


def test_a_long_retry_after_is_read_as_sent() -> None:
    # Reading is not deciding: the policy's cap applies in next_delay.
    assert parse_retry_after({"retry-after": "3600"}, NOW) == 3600.0
    assert parse_retry_after({"retry-after-ms": "61000"}, NOW) == 61.0


@pytest.mark.parametrize(
    ("retry_after", "honoured"), [(60.0, True), (60.5, False), (3600.0, False)]
)
def test_retry_after_up_to_the_policy_cap_is_honoured(retry_after: float, honoured: bool) -> None:
    assert DEFAULT_POLICY.max_retry_after == 60.0
    backoff = next_delay(DEFAULT_POLICY, 2, None, lambda: 0.5)
    expected = retry_after if honoured else backoff
    assert next_delay(DEFAULT_POLICY, 2, retry_after, lambda: 0.5) == expected


def test_the_retry_after_cap_is_the_policys() -> None:
    strict = RetryPolicy(max_retry_after=20.0, jitter=0.0)
    assert next_delay(strict, 1, 30.0, lambda: 0.5) == 1.0  # ignored: the backoff applies
    assert next_delay(strict, 1, 20.0, lambda: 0.5) == 20.0
    patient = RetryPolicy(max_retry_after=120.0)
    assert next_delay(patient, 1, 90.0, lambda: 0.5) == 90.0


def test_no_retry_after_header() -> None:
    assert parse_retry_after({"x-ratelimit-reset-requests": "1s"}, NOW) is None


def test_backoff_doubles_from_one_second_without_jitter_at_mid_rand() -> None:
    delays = [next_delay(DEFAULT_POLICY, attempt, None, lambda: 0.5) for attempt in (1, 2, 3)]
    assert delays == [1.0, 2.0, 4.0]


def test_jitter_bounds_are_plus_minus_a_quarter() -> None:
    assert next_delay(DEFAULT_POLICY, 1, None, lambda: 0.0) == 0.75
    assert next_delay(DEFAULT_POLICY, 1, None, lambda: 1.0) == 1.25
    assert next_delay(DEFAULT_POLICY, 3, None, lambda: 0.0) == 3.0
    assert next_delay(DEFAULT_POLICY, 3, None, lambda: 1.0) == 5.0


def test_backoff_is_capped_at_ten_seconds_even_after_jitter() -> None:
    assert next_delay(DEFAULT_POLICY, 5, None, lambda: 0.5) == 10.0  # 16 s capped
    assert next_delay(DEFAULT_POLICY, 5, None, lambda: 1.0) == 10.0  # 12.5 s clamped
    assert next_delay(DEFAULT_POLICY, 5, None, lambda: 0.0) == 7.5
    assert next_delay(DEFAULT_POLICY, 500, None, lambda: 0.5) == 10.0  # no overflow


def test_retry_after_replaces_the_computed_delay_without_jitter() -> None:
    assert next_delay(DEFAULT_POLICY, 1, 7.0, lambda: 0.0) == 7.0
    assert next_delay(DEFAULT_POLICY, 3, 0.0, lambda: 1.0) == 0.0


def test_a_custom_policy_is_followed() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, jitter=0.0)
    delays = [next_delay(policy, attempt, None, lambda: 0.9) for attempt in (1, 2, 3, 4)]
    assert delays == [0.5, 1.0, 2.0, 3.0]


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        next_delay(DEFAULT_POLICY, 0, None, lambda: 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"jitter": 1.5}, {"base_delay": -1.0}, {"max_retry_after": -1.0}],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_default_policy_is_three_attempts_1s_doubling_to_10s_with_a_quarter_jitter() -> None:
    p = DEFAULT_POLICY
    assert (p.max_attempts, p.base_delay, p.max_delay, p.jitter, p.max_retry_after) == (
        3,
        1.0,
        10.0,
        0.25,
        60.0,
    )


def test_should_give_up_when_the_sleep_reaches_the_deadline() -> None:
    assert should_give_up(2.0, now=100.0, deadline=101.0) is True
    assert should_give_up(1.0, now=100.0, deadline=101.0) is True  # wakes exactly at it
    assert should_give_up(0.5, now=100.0, deadline=101.0) is False
    assert should_give_up(1e9, now=100.0, deadline=None) is False
