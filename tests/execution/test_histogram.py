"""The rollups' histogram math and window split, without a database: every value lies within
the bound of its bucket's midpoint, percentiles from buckets stay within the bound of the
exact ones, and a window splits into rollup ranges and raw edges that cover it exactly."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from execution_service import histogram
from execution_service.rollup_window import DAY, HOUR, MINUTE, rollup_window
from execution_service.settings import EngineSettings, stored_text


def exact_percentile(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def test_every_value_is_within_the_bound_of_its_bucket() -> None:
    assert histogram.RELATIVE_ERROR < 0.02
    rand = random.Random(7)
    for _ in range(20_000):
        ms = 10 ** rand.uniform(-0.9, 7)  # 0.13 ms .. 2.8 hours
        estimate = histogram.midpoint_ms(histogram.bucket(ms))
        assert abs(estimate - ms) <= ms * histogram.RELATIVE_ERROR * (1 + 1e-9)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.95, 0.99, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_percentiles_from_buckets_are_within_the_bound(q: float, seed: int) -> None:
    rand = random.Random(seed)
    values = [rand.lognormvariate(6, 1.5) + 1 for _ in range(rand.choice([1, 2, 17, 1000]))]
    counts: dict[int, int] = {}
    for v in values:
        counts[histogram.bucket(v)] = counts.get(histogram.bucket(v), 0) + 1
    got = histogram.percentile(counts, q)
    want = exact_percentile(values, q)
    assert got is not None
    assert abs(got - want) <= want * histogram.RELATIVE_ERROR * (1 + 1e-9)


def test_merging_adds_counts_and_ignores_emptied_buckets() -> None:
    merged = histogram.merge([{3: 1, 5: 2}, {5: -2, 7: 1}])
    assert merged == {3: 1, 5: 0, 7: 1}
    assert histogram.percentile(merged, 1.0) == histogram.midpoint_ms(7)
    assert histogram.percentile({}, 0.5) is None
    assert histogram.percentile({4: 0}, 0.5) is None


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2025-03-01 10:00:30", "2025-03-01 10:00:50"),  # inside one minute
        ("2025-03-01 10:00:30", "2025-03-01 10:05:10"),  # minutes only
        ("2025-03-01 10:00:00", "2025-03-01 13:00:00"),  # aligned hours
        ("2025-03-01 09:59:59.5", "2025-03-04 00:01:00.25"),  # days, hours, minutes, edges
        ("2025-01-01 07:13:00", "2025-03-31 22:47:31"),  # 90 days
    ],
)
def test_a_window_is_covered_exactly_once(start: str, end: str) -> None:
    lo, hi = _t(start), _t(end)
    window = rollup_window(lo, hi)
    pieces = [(r.lo, r.hi) for r in window.ranges] + [e for e in window.raw if e[0] < e[1]]
    pieces.sort()
    assert pieces[0][0] == lo and pieces[-1][1] == hi
    for (_, a_hi), (b_lo, _) in itertools.pairwise(pieces):
        assert a_hi == b_lo  # no gap, no overlap
    for r in window.ranges:
        step = dt.timedelta(seconds=r.grain)
        assert (r.lo - _t("1970-01-01")) % step == dt.timedelta(0)
        assert (r.hi - r.lo) % step == dt.timedelta(0)
    if window.ranges:
        assert window.minutes == (
            min(r.lo for r in window.ranges),
            max(r.hi for r in window.ranges),
        )
    # A 90-day window reads few rollup rows.
    rows = sum((r.hi - r.lo) // dt.timedelta(seconds=r.grain) for r in window.ranges)
    assert rows <= 90 + 2 * 23 + 2 * 59
    assert {r.grain for r in window.ranges} <= {MINUTE, HOUR, DAY}


def test_stored_output_is_cut_on_a_character_boundary() -> None:
    text = "ab€cd"  # € is 3 bytes of UTF-8
    assert stored_text(text, EngineSettings()) == text
    assert stored_text(text, EngineSettings(store_output_max_bytes=3)) == "ab"
    assert stored_text(text, EngineSettings(store_output_max_bytes=5)) == "ab€"
    assert stored_text(text, EngineSettings(store_output_max_bytes=100)) == text
    assert stored_text(text, EngineSettings(store_output=False)) is None
