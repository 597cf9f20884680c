"""Which rollup rows and which raw rows answer a statistics window.

Rollups are kept per minute, hour, day and week (UTC, weeks from Monday) of the executions'
create_time. A window [start, end) is read as: its whole weeks from week rows, the whole days
around them from day rows, the whole hours around those from hour rows, the whole minutes
around those from minute rows (and the not yet folded minute rows), and the partial minute at
either edge from the executions themselves. So at most about 12 week rows, 12 day rows, 46
hour rows, 118 minute rows and two minutes of raw rows answer any 90-day window, and its
totals are exact.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 604800
# Grains are counted from a Monday (as PostgreSQL's date_trunc('week') is); every smaller
# grain divides the four days between it and the Unix epoch, so nothing else moves.
_ORIGIN = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)


@dataclass(frozen=True)
class GrainRange:
    grain: int  # seconds: MINUTE, HOUR, DAY or WEEK
    lo: dt.datetime  # rows whose bucket starts in [lo, hi)
    hi: dt.datetime


@dataclass(frozen=True)
class RollupWindow:
    ranges: tuple[GrainRange, ...]
    minutes: tuple[dt.datetime, dt.datetime]  # the whole minutes: pending rows in [lo, hi)
    raw: tuple[tuple[dt.datetime, dt.datetime], tuple[dt.datetime, dt.datetime]]  # edges


def floor_to(t: dt.datetime, grain: int) -> dt.datetime:
    seconds = (t - _ORIGIN) // dt.timedelta(seconds=grain) * grain
    return _ORIGIN + dt.timedelta(seconds=seconds)


def ceil_to(t: dt.datetime, grain: int) -> dt.datetime:
    down = floor_to(t, grain)
    return down if down == t else down + dt.timedelta(seconds=grain)


def rollup_window(start: dt.datetime, end: dt.datetime) -> RollupWindow:
    a, b = ceil_to(start, MINUTE), floor_to(end, MINUTE)
    if a >= b:  # no whole minute: the rows themselves answer
        return RollupWindow((), (start, start), ((start, max(start, end)), (start, start)))
    ranges: list[GrainRange] = []
    h1, h2 = ceil_to(a, HOUR), floor_to(b, HOUR)
    if h1 >= h2:
        ranges.append(GrainRange(MINUTE, a, b))
    else:
        ranges += _coarser(h1, h2, HOUR, (DAY, WEEK))
        ranges += [GrainRange(MINUTE, a, h1), GrainRange(MINUTE, h2, b)]
    return RollupWindow(tuple(r for r in ranges if r.lo < r.hi), (a, b), ((start, a), (b, end)))


def _coarser(
    lo: dt.datetime, hi: dt.datetime, grain: int, larger: tuple[int, ...]
) -> list[GrainRange]:
    """[lo, hi) (aligned to `grain`) as the next larger grain's whole buckets in the middle,
    recursively, and `grain` rows around them."""
    if not larger:
        return [GrainRange(grain, lo, hi)]
    g1, g2 = ceil_to(lo, larger[0]), floor_to(hi, larger[0])
    if g1 >= g2:
        return [GrainRange(grain, lo, hi)]
    return [
        GrainRange(grain, lo, g1),
        *_coarser(g1, g2, larger[0], larger[1:]),
        GrainRange(grain, g2, hi),
    ]
