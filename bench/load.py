"""Closed-loop load: `concurrency` callers each issue calls back to back for `seconds`,
spread over `processes` worker processes (one process can be the bottleneck), and the
latencies come back for percentiles."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psutil

CallFactory = Callable[[], Awaitable[Callable[[], Awaitable[object]]]]
"""Builds (inside the worker) the async function that makes one call."""


@dataclass(frozen=True)
class LoadResult:
    calls: int
    errors: int
    seconds: float
    latencies: list[float]
    loadgen_cpu_percent: float  # summed over worker processes (100 = one full core)
    # CPU seconds each watched process (and its children) used over the measured window.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    # How much each watched counter moved over the measured window.
    counted: dict[str, float] = field(default_factory=dict)

    def cpu_per_call_ms(self, name: str) -> float:
        return 1e3 * self.cpu_seconds[name] / self.calls if self.calls else float("nan")

    def cpu_line(self) -> str:
        """`name X% (Y ms/call)` for every watched process."""
        return ", ".join(
            f"{name} {100 * cpu / self.seconds:.0f}% ({self.cpu_per_call_ms(name):.2f} ms/call)"
            for name, cpu in self.cpu_seconds.items()
        )

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self, label: str) -> str:
        return (
            f"{label:<44} {self.rate:>9.0f}/s  p50 {self.percentile(0.5) * 1e3:6.2f} ms  "
            f"p99 {self.percentile(0.99) * 1e3:7.2f} ms  errors {self.errors}  "
            f"loadgen CPU {self.loadgen_cpu_percent:.0f}%"
        )


async def _worker_async(factory: CallFactory, concurrency: int, seconds: float, warmup: float):
    call = await factory()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def caller() -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await call()
            except Exception:
                if t0 >= measure_from:
                    errors += 1
                continue
            if t0 >= measure_from:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, errors


def _worker(factory: CallFactory, concurrency: int, seconds: float, warmup: float, out, go) -> None:
    import uvloop

    go.wait()  # every worker starts together, so the measured windows line up
    cpu0 = time.process_time()
    latencies, errors = uvloop.run(_worker_async(factory, concurrency, seconds, warmup))
    out.put((latencies, errors, time.process_time() - cpu0))


def run_load(
    factory: CallFactory,
    *,
    concurrency: int,
    seconds: float,
    processes: int = 1,
    warmup: float = 1.0,
    watch: dict[str, int] | None = None,
    counters: dict[str, Callable[[], float]] | None = None,
) -> LoadResult:
    """`watch`: processes (name: pid; their children count with them) whose CPU time over
    the measured window is reported; `counters`: readings whose change over it is."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    go = ctx.Event()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    workers = [
        ctx.Process(target=_worker, args=(factory, share, seconds, warmup, queue, go))
        for share in shares
        if share
    ]
    for w in workers:
        w.start()
    time.sleep(1.5)  # the spawned workers import grpc before they wait for `go`
    go.set()
    time.sleep(warmup)
    before = {name: process_tree_cpu(pid) for name, pid in (watch or {}).items()}
    readings = {name: read() for name, read in (counters or {}).items()}
    time.sleep(seconds)
    cpu = {name: process_tree_cpu(pid) - before[name] for name, pid in (watch or {}).items()}
    counted = {name: read() - readings[name] for name, read in (counters or {}).items()}
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    latencies = [x for r in results for x in r[0]]
    loadgen_cpu = sum(r[2] for r in results)
    return LoadResult(
        calls=len(latencies),
        errors=sum(r[1] for r in results),
        seconds=seconds,
        latencies=latencies,
        loadgen_cpu_percent=100 * loadgen_cpu / (seconds + warmup),
        cpu_seconds=cpu,
        counted=counted,
    )


def process_tree_cpu(pid: int) -> float:
    """User and system CPU seconds of a process and its live children (a supervisor's
    workers)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def process_cpu_percent(pid: int, seconds: float) -> float:
    process = psutil.Process(pid)
    process.cpu_percent(None)
    time.sleep(seconds)
    return process.cpu_percent(None)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def closed_loop_in_process(
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    watch_pid: int | None = None,
) -> dict[str, float]:
    """`call` back to back from `concurrency` tasks of this process: the calls completed in
    the measured window, this process's CPU seconds over it, and `watch_pid`'s (and its
    children's) when given. For a floor, where the caller is what is measured."""
    calls = 0
    measuring = False
    stop_at = time.monotonic() + warmup + seconds

    async def caller() -> None:
        nonlocal calls
        while time.monotonic() < stop_at:
            await call()
            calls += measuring

    async def window() -> dict[str, float]:
        nonlocal measuring
        await asyncio.sleep(warmup)
        watched0 = process_tree_cpu(watch_pid) if watch_pid else 0.0
        measuring, cpu0 = True, time.process_time()
        await asyncio.sleep(seconds)
        measuring = False
        cpu = time.process_time() - cpu0
        watched = process_tree_cpu(watch_pid) - watched0 if watch_pid else 0.0
        return {"calls": calls, "cpu": cpu, "watched_cpu": watched}

    tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    measured = await window()
    await asyncio.gather(*tasks)
    return measured


def floor_in_subprocess(module: str, *args: object) -> dict[str, float]:
    """Runs `python -m module args...` (a floor's client, which prints what
    `closed_loop_in_process` measured as its last line, in JSON) and returns that."""
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))
