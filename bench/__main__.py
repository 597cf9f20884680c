"""Run every benchmark and print a report (also written to bench-results/latest.txt)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from pathlib import Path

from bench import keyvault_bench, schema_bench


def machine() -> str:
    return (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.machine()}; load generator, services, emulator and PostgreSQL share the cores"
    )


async def main(args: argparse.Namespace) -> None:
    lines = [f"# make bench ({machine()})", ""]
    if args.only in (None, "schema"):
        lines += schema_bench.run(args.seconds)
        lines.append("")
    if args.only in (None, "keyvault"):
        lines += await keyvault_bench.run(args.seconds, profile=args.profile)
        lines.append("")
    if args.only in (None, "execution"):
        from bench import execution_bench

        lines += await execution_bench.run(
            args.seconds, agent=not args.skip_agent, profile=args.profile
        )
    if args.only == "limits":
        from bench import limits_bench

        lines += await limits_bench.run(args.seconds)
    if args.only == "stats":
        from bench import stats_bench

        sizes = tuple(int(n) for n in args.stats_rows.split(","))
        lines += await stats_bench.run(sizes)
        lines += await stats_bench.trigger_cost(args.seconds)
    if args.only == "agent":
        from bench import execution_bench

        lines += await execution_bench.run_agent_comparison()
    report = "\n".join(lines)
    print(report)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)  # noqa: ASYNC240
    (out / "latest.txt").write_text(report + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy profiles of the services under load (the vault at 16 reveals in flight)",
    )
    parser.add_argument(
        "--only", choices=["schema", "keyvault", "execution", "agent", "limits", "stats"]
    )
    parser.add_argument(
        "--skip-agent", action="store_true", help="leave out (d), agent by name vs ad hoc"
    )
    parser.add_argument(
        "--stats-rows",
        default="1000000,10000000",
        help="executions of one agent for --only stats (comma-separated, growing)",
    )
    asyncio.run(main(parser.parse_args()))
