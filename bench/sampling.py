"""A sampling profile of a running service, taken with py-spy while a load runs: where the
process spends its CPU, with no instrumentation in it (`python -m bench --profile`).

py-spy sees Python frames only (native stacks would stop the process at every sample): time
in C extensions (grpc's core, uvloop, asyncpg's protocol, aiohttp's parser) is charged to
the Python frame that called them, and a thread with no Python frame of its own (grpc's
poller) shows as `Thread.run`."""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

RATE = 250  # samples per second


@contextlib.contextmanager
def sampled(pid: int, seconds: float, lines: list[str], *, top: int = 15) -> Iterator[None]:
    """Samples `pid` for `seconds` from entering; on leaving, appends to `lines` the `top`
    frames by own time and the `top` functions by time including what they call."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        lines.append("    (profile: py-spy is not installed)")
        yield
        return
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stacks.txt"
        command = [spy, "record", "--pid", str(pid), "--duration", str(round(seconds))]
        command += ["--rate", str(RATE), "--format", "raw", "--nonblocking", "--output", str(out)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            process.wait()
        lines += summary(out.read_text() if out.exists() else "", top)


def summary(collapsed: str, top: int) -> list[str]:
    """The top frames of py-spy's collapsed stacks (`frame;frame;... count` per line)."""
    own: collections.Counter[str] = collections.Counter()
    including: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        # A function counts once per sample, however deep it recurses; lines are dropped.
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            including[function] += n
    if not total:
        return ["    (profile: no samples)"]
    out = [f"    profile, {total} samples: own time (the frame itself, and C it calls)"]
    out += [f"      {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    out.append("    including callees (the event loop and process entry left out)")
    shown = [(f, n) for f, n in including.most_common() if not _entry(f)][:top]
    out += [f"      {100 * n / total:5.1f}%  {frame}" for frame, n in shown]
    return out


def _entry(frame: str) -> bool:
    """Frames every sample of the main thread passes through."""
    return any(
        part in frame
        for part in ("runpy", "__main__.py", "entry_point", "runtime.py", "uvloop", "Runner.run")
    )
