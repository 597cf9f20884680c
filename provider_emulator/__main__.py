"""`python -m provider_emulator`: serve until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

from .config import DEFAULT_CHUNKS, EmulatorConfig
from .server import start_emulator


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m provider_emulator",
        description="OpenAI / Anthropic wire-format emulator with scriptable faults.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument(
        "--chunks",
        type=int,
        default=None,
        help=f"content chunks per answer (default {DEFAULT_CHUNKS})",
    )
    parser.add_argument("--text", default=None, help="fixed answer text")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--write-per-event",
        action="store_true",
        help="without a chunk delay, one write per SSE event instead of one for the stream",
    )
    parser.add_argument(
        "--accepted-key",
        action="append",
        dest="accepted_keys",
        help="accept only these keys (repeatable; default: any non-empty key)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock event loop")
    return parser.parse_args(argv)


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with start_emulator(host, port, config=config) as emulator:
        print(f"provider emulator listening on {emulator.base_url}", flush=True)
        await stop.wait()


def _loop_factory(no_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if no_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.access_log:
        logging.basicConfig(level=logging.INFO)
    config = EmulatorConfig(
        chunks=args.chunks,
        text=args.text,
        chunk_delay_ms=args.chunk_delay_ms,
        first_token_delay_ms=args.first_token_delay_ms,
        write_per_event=args.write_per_event,
        accepted_keys=frozenset(args.accepted_keys) if args.accepted_keys else None,
        access_log=args.access_log,
    )
    with asyncio.Runner(loop_factory=_loop_factory(args.no_uvloop)) as runner:
        runner.run(_serve(config, args.host, args.port))


if __name__ == "__main__":
    main()
