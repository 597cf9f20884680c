"""Two versions of the execution service side by side: the working tree against a git
revision (default HEAD), on one vault, emulator and PostgreSQL server, each version with a
database of its own, measured alternately so that the machine's drift falls on both alike:
(a) client time to first token, one request at a time, alternating between the versions
    (which goes first alternates too), with the paired differences;
(b) executions per second and CPU per execution (the service's and PostgreSQL's) at 128 in
    flight, in runs alternating between the versions.
A change's before/after figure on a shared machine, where two runs an hour apart differ by
more than most changes do.

    python -m bench.ab [--base REV] [--samples N] [--rounds N] [--seconds S] [--coalesced]
                       [--limits]

`--limits` runs every execution in a workspace with a budget and both rate limits (set so
high that nothing is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.execution_bench import (
    BEHAVIOURS,
    WORKSPACE,
    execute_call,
    execute_request,
    pct,
    store_key,
)
from bench.limits_bench import LIMITED, create_limits
from bench.load import LoadResult, run_load
from bench.stack import fresh_database, running_stack, secure_channel, start_execution
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from service_kit.settings import PROJECT_ROOT

WARMUP = 20


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A detached work tree of `revision`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    git = ("git", "-C", str(PROJECT_ROOT), "worktree")
    subprocess.run((*git, "add", "-q", "--detach", "--force", str(path), revision), check=True)
    try:
        yield path
    finally:
        subprocess.run((*git, "remove", "--force", str(path)), check=False)


async def first_token(stub: ex_grpc.ExecutionServiceStub, workspace: str) -> float:
    t0 = time.perf_counter()
    first = None
    async for event in stub.Execute(execute_request(workspace)):
        if first is None and event.HasField("delta"):
            first = time.perf_counter() - t0
    assert first is not None
    return first


async def time_to_first_token(ports: dict[str, int], samples: int, workspace: str) -> list[str]:
    stubs = {
        name: ex_grpc.ExecutionServiceStub(secure_channel(port)) for name, port in ports.items()
    }
    names = list(ports)
    seen: dict[str, list[float]] = {name: [] for name in names}
    for i in range(samples + WARMUP):
        for name in names if i % 2 else reversed(names):
            first = await first_token(stubs[name], workspace)
            if i >= WARMUP:
                seen[name].append(first)
    base, new = (seen[name] for name in names)
    paired = [n - b for n, b in zip(new, base, strict=True)]
    lines = [f"(a) client time to first token, {samples} sequential requests each, alternating:"]
    lines += [
        f"    {name:<10} p50 {pct(v, 0.5) * 1e3:6.3f} ms  p99 {pct(v, 0.99) * 1e3:6.3f} ms"
        for name, v in seen.items()
    ]
    lines.append(
        f"    {names[1]} - {names[0]}: paired differences p50 {pct(paired, 0.5) * 1e3:+.3f} ms, "
        f"mean {statistics.fmean(paired) * 1e3:+.3f} ms"
    )
    return lines


def load_rounds(
    ports: dict[str, int],
    pids: dict[str, int],
    postgres: int,
    rounds: int,
    seconds: float,
    workspace: str,
) -> list[str]:
    names = list(ports)
    runs: dict[str, list[LoadResult]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            runs[name].append(
                run_load(
                    functools.partial(execute_call, ports[name], workspace=workspace),
                    concurrency=128,
                    seconds=seconds,
                    watch={"execution": pids[name], "postgres": postgres},
                )
            )
    lines = [f"(b) 128 in flight, {rounds} runs of {seconds:g} s each, alternating:"]
    for name, results in runs.items():
        rates = ", ".join(f"{r.rate:.0f}" for r in results)
        cpu = ", ".join(f"{r.cpu_per_call_ms('execution'):.2f}" for r in results)
        pg = ", ".join(f"{r.cpu_per_call_ms('postgres'):.2f}" for r in results)
        errors = sum(r.errors for r in results)
        lines.append(
            f"    {name:<10} executions/s {rates}; service CPU ms/execution {cpu}; "
            f"PostgreSQL {pg}; errors {errors}"
        )
    return lines


async def compare(args: argparse.Namespace) -> list[str]:
    behaviour = "coalesced (one write)" if args.coalesced else "one write per event"
    workspace = LIMITED if args.limits else WORKSPACE
    lines = [
        f"# execution service: {args.base} vs working tree (provider: {behaviour}; "
        f"{'a budget and both rate limits' if args.limits else 'no budget'})"
    ]
    with checkout(args.base) as base_tree:
        async with running_stack(with_execution=True, emulator_args=BEHAVIOURS[behaviour]) as stack:
            assert stack.execution_port and stack.env
            env = dict(
                stack.env,
                EXECUTION_DATABASE_URL=await fresh_database(stack.server_uri, "bench_execution_ab"),
            )
            base_port, base_process = await start_execution(
                env, ("-m", "execution_service"), base_tree
            )
            try:
                await store_key(stack.vault_port, workspace)
                ports = {args.base: base_port, "working": stack.execution_port}
                if args.limits:
                    for port in ports.values():
                        await create_limits(port)
                pids = {args.base: base_process.pid, "working": stack.pids["execution"]}
                lines += await time_to_first_token(ports, args.samples, workspace)
                postgres = stack.pids["postgres"]
                lines += load_rounds(ports, pids, postgres, args.rounds, args.seconds, workspace)
            finally:
                base_process.terminate()
                await base_process.wait()
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against")
    parser.add_argument("--samples", type=int, default=500, help="sequential requests each")
    parser.add_argument("--rounds", type=int, default=4, help="load runs each (alternating)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--coalesced", action="store_true", help="the provider writes at once")
    parser.add_argument("--limits", action="store_true", help="a budget and both rate limits")
    print("\n".join(asyncio.run(compare(parser.parse_args()))))
