"""Latency histograms with bounded relative error, as the rollups keep them.

A duration in milliseconds falls in bucket 0 when at most 0.1 ms, else in bucket
``ceil(log(ms / 0.1) / log(1.04))``: bucket i holds (0.1 * 1.04^(i-1), 0.1 * 1.04^i] ms. Its
midpoint in relative terms, ``0.1 * 1.04^i * 2 / 2.04``, is within ``0.04 / 2.04`` (1.96 %) of
every value in the bucket. The database computes the same bucket (``rollup_bucket`` in
migration 006); a test holds the two to the same answers.

Percentiles are taken as PostgreSQL's ``percentile_cont`` takes them (linear interpolation
between the two values around the rank), with each value replaced by its bucket's midpoint:
a convex combination of values each within the bound is within the bound of the exact
answer. Below 0.1 ms (bucket 0) the answer is 0.05 ms, with no relative bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

RATIO = 1.04
BASE_MS = 0.1
MAX_BUCKET = 1023
# The largest relative error of a bucket's midpoint against any value in the bucket.
RELATIVE_ERROR = (RATIO - 1) / (RATIO + 1)


def bucket(ms: float) -> int:
    if ms <= BASE_MS:
        return 0
    return min(math.ceil(math.log(ms / BASE_MS) / math.log(RATIO)), MAX_BUCKET)


def midpoint_ms(index: int) -> float:
    """The value a bucket stands for."""
    if index <= 0:
        return BASE_MS / 2
    return BASE_MS * RATIO**index * 2 / (RATIO + 1)


def percentile(counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0..1) in milliseconds of the values counted per bucket, interpolated
    like ``percentile_cont``; None when nothing is counted. Non-positive counts are ignored
    (a bucket that lost its values to a replaced record)."""
    buckets = sorted((i, n) for i, n in counts.items() if n > 0)
    total = sum(n for _, n in buckets)
    if total == 0:
        return None
    rank = q * (total - 1)
    low = math.floor(rank)
    fraction = rank - low
    below = _value_at(buckets, low)
    if fraction == 0:
        return below
    return below + fraction * (_value_at(buckets, low + 1) - below)


def _value_at(buckets: list[tuple[int, int]], rank: int) -> float:
    seen = 0
    for index, n in buckets:
        seen += n
        if rank < seen:
            return midpoint_ms(index)
    return midpoint_ms(buckets[-1][0])


def merge(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for part in parts:
        for i, n in part.items():
            merged[i] = merged.get(i, 0) + n
    return merged
