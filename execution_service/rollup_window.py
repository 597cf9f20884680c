"""Which rollup rows and which raw rows answer a statistics window.

Rollups are kept per minute, hour and day (UTC) of the executions' create_time. A window
[start, end) is read as: its whole days from day rows, the whole hours around them from hour
rows, the whole minutes around those from minute rows (and the not yet folded minute rows),
and the partial minute at either edge from the executions themselves. So at most about 90
day rows, 46 hour rows, 118 minute rows and two minutes of raw rows answer any 90-day
window, and its totals are exact.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MINUTE, HOUR, DAY = 60, 3600, 86400
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class GrainRange:
    grain: int  # seconds: MINUTE, HOUR or DAY
    lo: dt.datetime  # rows whose bucket starts in [lo, hi)
    hi: dt.datetime


@dataclass(frozen=True)
class RollupWindow:
    ranges: tuple[GrainRange, ...]
    minutes: tuple[dt.datetime, dt.datetime]  # the whole minutes: pending rows in [lo, hi)
    raw: tuple[tuple[dt.datetime, dt.datetime], tuple[dt.datetime, dt.datetime]]  # edges


def floor_to(t: dt.datetime, grain: int) -> dt.datetime:
    seconds = (t - _EPOCH) // dt.timedelta(seconds=grain) * grain
    return _EPOCH + dt.timedelta(seconds=seconds)


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
        d1, d2 = ceil_to(h1, DAY), floor_to(h2, DAY)
        if d1 >= d2:
            ranges.append(GrainRange(HOUR, h1, h2))
        else:
            ranges += [GrainRange(HOUR, h1, d1), GrainRange(DAY, d1, d2), GrainRange(HOUR, d2, h2)]
        ranges += [GrainRange(MINUTE, a, h1), GrainRange(MINUTE, h2, b)]
    return RollupWindow(tuple(r for r in ranges if r.lo < r.hi), (a, b), ((start, a), (b, end)))
