"""What every client shares: the channel it owns or borrows, per-call deadline and metadata,
and the one place where `grpc.RpcError` becomes `ClientError`."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self, TypeVar

import grpc

from ._channel import DEFAULT_TIMEOUT
from ._errors import error_from_rpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Metadata = Sequence[tuple[str, str]]


class _Common:
    def __init__(self, *, timeout: float | None, metadata: Metadata, owns_channel: bool) -> None:
        self._timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] | None = tuple(metadata) or None
        self._owns_channel = owns_channel

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout


class AsyncClientBase(_Common):
    """Base of the asyncio clients. Use as `async with`; `close()` closes the channel only
    when the client made it (`connect`)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata = (),
        owns_channel: bool = False,
    ) -> None:
        super().__init__(timeout=timeout, metadata=metadata, owns_channel=owns_channel)
        self.channel = channel

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
    ) -> Resp:
        try:
            return await method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SyncClientBase(_Common):
    """Base of the blocking clients. Use as `with`; `close()` closes the channel only when
    the client made it (`connect`)."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata = (),
        owns_channel: bool = False,
    ) -> None:
        super().__init__(timeout=timeout, metadata=metadata, owns_channel=owns_channel)
        self.channel = channel

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
    ) -> Resp:
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
