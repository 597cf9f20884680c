"""The pure rules of an execution's end: how long a refused terminal record is retried, and
how a cancelled stream is recorded."""

from __future__ import annotations

import pytest

from execution_service.engine import DEADLINE_SLACK, cut_short
from execution_service.model import CANCELLED, FAILED, SHUTDOWN
from execution_service.retry import RetryPolicy
from execution_service.terminal_records import retry_delay

BACKOFF = RetryPolicy(base_delay=0.5, max_delay=5.0, jitter=0.25)


def middle() -> float:
    return 0.5  # no jitter


def test_retry_delay_backs_off_to_its_cap() -> None:
    delays = [
        retry_delay(BACKOFF, n, elapsed=0.0, retry_for=600.0, rand=middle) for n in range(1, 7)
    ]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_delay_jitters_within_a_quarter() -> None:
    low = retry_delay(BACKOFF, 2, elapsed=0.0, retry_for=600.0, rand=lambda: 0.0)
    high = retry_delay(BACKOFF, 2, elapsed=0.0, retry_for=600.0, rand=lambda: 1.0)
    assert (low, high) == (0.75, 1.25)


def test_retry_delay_ends_at_the_bound_then_gives_up() -> None:
    # The last wait is shortened so that one attempt happens at the bound itself.
    assert retry_delay(BACKOFF, 9, elapsed=598.0, retry_for=600.0, rand=middle) == 2.0
    assert retry_delay(BACKOFF, 10, elapsed=600.0, retry_for=600.0, rand=middle) is None
    assert retry_delay(BACKOFF, 1, elapsed=0.0, retry_for=0.0, rand=middle) is None


def test_a_caller_cancel_is_cancelled() -> None:
    state, error = cut_short(10.0, deadline=None, cut_at=None)
    assert (state, error.reason) == (CANCELLED, "CANCELLED")
    state, error = cut_short(10.0, deadline=20.0, cut_at=30.0)
    assert (state, error.reason) == (CANCELLED, "CANCELLED")


@pytest.mark.parametrize(("deadline", "cut_at"), [(None, None), (20.0, None), (None, 10.0)])
def test_a_cancel_request_is_cancelled_naming_who_asked(
    deadline: float | None, cut_at: float | None
) -> None:
    """Whatever else is due (a deadline, the drain), the cancel that was asked for is the
    one recorded."""
    who = "spiffe://agents.internal/app"
    state, error = cut_short(20.0, deadline=deadline, cut_at=cut_at, cancelled_by=who)
    assert (state, error.reason) == (CANCELLED, "CANCELLED_BY_REQUEST")
    assert who in error.message


def test_a_passed_deadline_is_a_deadline_failure() -> None:
    state, error = cut_short(20.0 - DEADLINE_SLACK / 2, deadline=20.0, cut_at=None)
    assert (state, error.reason) == (FAILED, "DEADLINE_EXCEEDED")


@pytest.mark.parametrize("deadline", [None, 5.0, 100.0])
def test_a_stream_the_drain_cut_is_a_shutdown_failure(deadline: float | None) -> None:
    state, error = cut_short(30.0, deadline=deadline, cut_at=30.0)
    assert (state, error.reason) == (FAILED, SHUTDOWN)
    assert "shut down" in error.message
