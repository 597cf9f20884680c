"""Retry policy for provider calls: pure functions, no I/O, no global clock or randomness.

The policy retries the failures the official OpenAI and Anthropic SDKs treat as transient
(except OpenAI's out-of-credit 429, see `classify`), with this project's own delays:

- at most ``max_attempts`` attempts (3 by default: the first call and two retries);
- backoff ``base_delay * 2**(attempt - 1)`` (1 s, 2 s, 4 s, ...) capped at ``max_delay``
  (10 s), then jittered by up to +/- ``jitter`` (25 %) of itself, and never above
  ``max_delay`` after jitter either;
- a ``retry-after-ms`` / ``retry-after`` header replaces the computed delay (no jitter: the
  server named the moment) when it lies between 0 and ``max_retry_after`` (60 s); outside
  that range it is ignored and the computed backoff applies, as the official SDKs do;
- no sleep may end at or after the caller's deadline (``should_give_up``).

Callers pass the clock and the random source in, so every rule here is tested without I/O.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_RETRY_POLICY",
    "RetryPolicy",
    "classify",
    "next_delay",
    "parse_retry_after",
    "should_give_up",
]

# Statuses that signal a transient condition (as the SDKs treat them): request timeout, conflict
# (lock contention at the provider), rate limiting. Every 5xx is added in `classify`,
# which covers Anthropic's 529 "overloaded".
_RETRY_STATUSES = frozenset({408, 409, 429})

# OpenAI answers 429 both for "slow down" and for "out of credit"; only the body's error
# code tells them apart, and an empty account does not refill itself within a retry.
_NEVER_RETRY_CODES = frozenset({"insufficient_quota"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a provider call before any output has flowed."""

    max_attempts: int = 3
    """Attempts in total, the first included; 1 disables retries."""
    base_delay: float = 1.0
    """Seconds before the first retry; doubles for each later one."""
    max_delay: float = 10.0
    """Upper bound of any computed (backoff) delay, jitter included."""
    jitter: float = 0.25
    """Fraction of the delay by which it may be shortened or lengthened at random."""
    max_retry_after: float = 60.0
    """A server-sent retry-after above this many seconds is ignored."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be a fraction between 0 and 1")


DEFAULT_POLICY = RetryPolicy()
# The same, under a name that cannot clash with other "policies" (authorization) at import.
DEFAULT_RETRY_POLICY = DEFAULT_POLICY


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts as well as httpx.Headers."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def classify(status: int | None, headers: Mapping[str, str], error_code: str | None) -> bool:
    """Whether a failed attempt may be retried.

    ``status`` is None for a failure without an HTTP answer (connection refused or reset,
    timeout before any byte): those are transient. ``error_code`` is the provider's error
    code or type from the body, when there is one.

    Order of precedence: ``insufficient_quota`` is never retried, even if a header says so
    (the body is more specific than a generic header); then ``x-should-retry: true|false``
    wins over the status; then the status table.
    """
    if error_code in _NEVER_RETRY_CODES:
        return False
    should_retry = _header(headers, "x-should-retry")
    if should_retry is not None:
        flag = should_retry.strip().lower()
        if flag == "true":
            return True
        if flag == "false":
            return False
    if status is None:
        return True
    return status in _RETRY_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The server's requested wait in seconds, or None when absent, unparseable or negative.

    The only reader of these headers. They are read in the official SDKs' order:
    ``retry-after-ms`` (milliseconds), then ``retry-after`` as seconds (a float is
    accepted), then ``retry-after`` as an HTTP date, measured from ``now`` (seconds since
    the epoch, wall clock). The value is not capped here: whether it is honoured is the
    policy's decision, in `next_delay`.
    """
    value: float | None = None
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        value = _finite_float(raw_ms)
        if value is not None:
            value /= 1000.0
    if value is None:
        raw = _header(headers, "retry-after")
        if raw is not None:
            value = _finite_float(raw)
            if value is None:
                value = _seconds_until_http_date(raw, now)
    if value is None or value < 0:
        return None
    return value


def _finite_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _seconds_until_http_date(text: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; a date without a zone is not one we can trust.
        return None
    return when.timestamp() - now


def next_delay(
    policy: RetryPolicy,
    attempt: int,
    retry_after: float | None,
    rand: Callable[[], float],
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    ``retry_after`` (from `parse_retry_after`) replaces the computed delay when it is at
    most ``policy.max_retry_after``; a longer one is ignored, as the official SDKs do.
    Otherwise the delay is ``min(base_delay * 2**(attempt-1), max_delay)`` scaled by a factor
    in ``[1 - jitter, 1 + jitter]``: ``rand() == 0`` gives the lower bound, ``rand() == 1``
    the upper bound. Jitter is symmetric ("jittered by up to 25 %" either way), and the
    result is clamped to ``max_delay`` so that the cap holds after jitter too.
    """
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    if retry_after is not None and 0 <= retry_after <= policy.max_retry_after:
        return retry_after
    # Cap the exponent before computing 2**n so that a large attempt number cannot overflow.
    exponent = min(attempt - 1, 62)
    backoff = min(policy.base_delay * (2.0**exponent), policy.max_delay)
    factor = 1.0 + policy.jitter * (2.0 * rand() - 1.0)
    return max(0.0, min(backoff * factor, policy.max_delay))


def should_give_up(delay: float, now: float, deadline: float | None) -> bool:
    """True when sleeping ``delay`` seconds from ``now`` would reach or pass ``deadline``.

    ``now`` and ``deadline`` are on the same (monotonic) clock. Waking exactly at the
    deadline leaves no time for another attempt, so that counts as passing it.
    """
    return deadline is not None and now + delay >= deadline
