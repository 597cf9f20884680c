"""The floor under the execution service's figures: a grpc.aio server on uvloop, over the same
mTLS, whose handler streams N tiny messages per call and does nothing else. Its CPU per call
is what gRPC itself costs an execution that streams that many messages, before any of the
service's own work (database, provider call, parsing).

`python -m bench.grpc_floor serve PORT MESSAGES` runs the server (the bench starts it)."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc

from bench.load import run_load
from bench.stack import free_port, secure_channel, tls, wait_listening
from service_kit.tls import server_credentials

METHOD = "/bench.Floor/Stream"
PAYLOAD = b"abcdefg " * 2  # about the size of one 20-event stream's text delta


async def serve(port: int, messages: int) -> None:
    async def stream(request: bytes, context: object) -> AsyncIterator[bytes]:
        for _ in range(messages):
            yield PAYLOAD

    handler = grpc.method_handlers_generic_handler(
        "bench.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(tls("execution")))
    await server.start()
    await server.wait_for_termination()


async def _caller(port: int, channels: int = 4):
    """Calls spread over several connections, as the execution bench's load generator makes."""
    methods = [
        secure_channel(port, "app").unary_stream(METHOD, None, None) for _ in range(channels)
    ]
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        async for _ in methods[calls % channels](b""):
            pass

    return call


def floor(messages: int, seconds: float) -> str:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_floor", "serve", str(port), str(messages)]
    )
    try:
        wait_listening(port)
        result = run_load(
            functools.partial(_caller, port),
            concurrency=128,
            seconds=seconds,
            watch={"server": server.pid},
        )
    finally:
        server.kill()
        server.wait()
    return (
        f"    {messages:2} messages per call: {result.rate:6.0f} calls/s, "
        f"server CPU {result.cpu_per_call_ms('server'):.2f} ms/call"
    )


def run(seconds: float) -> list[str]:
    return [
        "(d) the floor: grpc.aio alone streaming tiny messages over mTLS, 128 in flight",
        *(floor(messages, seconds) for messages in (22, 3)),
        "    (an execution streams Started, its deltas and Completed: 22 messages for 20",
        "    provider events read one by one, 3 when they arrive in one read)",
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        import uvloop

        uvloop.install()
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
