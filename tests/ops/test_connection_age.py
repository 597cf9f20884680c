"""Servers close each client connection after a while, so that a client balancing over the
addresses of a headless Service resolves the name again and finds replicas added since; what
runs on the old connection (a long stream such as the key-change feed) is not cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from service_kit.server import GrpcServer
from service_kit.tls import TlsFiles, channel_credentials

AGE = 0.5  # seconds, for the test; MAX_CONNECTION_AGE_SECONDS in production


async def peer(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return context.peer().encode()  # the client's address and ephemeral port


async def ticks(_request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(12):  # outlives the connection's age several times
        await asyncio.sleep(0.2)
        yield b"tick"


def register(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.v1.ConnectionAgeService",
                {
                    "Peer": grpc.unary_unary_rpc_method_handler(peer),
                    "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
                },
            ),
        )
    )


async def test_connections_are_renewed_and_streams_on_them_finish(
    tls_for: Callable[[str], TlsFiles],
) -> None:
    server = GrpcServer(
        service_names=["test.v1.ConnectionAgeService"],
        register=register,
        interceptors=[],
        tls=tls_for("keyvault"),
        address="127.0.0.1:0",
        max_connection_age=AGE,
    )
    await server.start()
    try:
        credentials = channel_credentials(tls_for("app"))
        async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
            ask_peer = channel.unary_unary("/test.v1.ConnectionAgeService/Peer")
            stream = channel.unary_stream("/test.v1.ConnectionAgeService/Ticks")(b"", timeout=20)
            first = await ask_peer(b"", timeout=5)
            received = [message async for message in stream]
            assert len(received) == 12  # 2.4 s on a connection closed after about 0.5 s
            assert await stream.code() == grpc.StatusCode.OK
            later = await ask_peer(b"", timeout=5)
            assert later != first  # a new connection, from a new client port
    finally:
        await server.stop(grace=0)
