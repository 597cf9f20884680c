"""What every client shares: the channel it owns or borrows, per-call deadline and metadata,
and the one place where `grpc.RpcError` becomes `ClientError`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import grpc

from ._channel import (
    DEFAULT_RETRY_POLICY,
    DEFAULT_TIMEOUT,
    PathLike,
    RetryPolicy,
    mtls_channel,
    mtls_channel_sync,
)
from ._errors import error_from_rpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Metadata = Sequence[tuple[str, str]]


class _Common:
    """A client is its service's stub on a channel; subclasses name the stub and address."""

    stub_class: ClassVar[Any]  # the generated stub class
    default_address: ClassVar[str]
    make_channel: ClassVar[Callable[..., Any]]  # mtls_channel or mtls_channel_sync

    def __init__(
        self,
        channel: Any,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata = (),
        owns_channel: bool = False,
    ) -> None:
        self.channel = channel
        self._stub = self.stub_class(channel)
        self._timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] | None = tuple(metadata) or None
        self._owns_channel = owns_channel

    @classmethod
    def connect(
        cls,
        address: str | None = None,
        *,
        ca: PathLike,
        cert: PathLike,
        key: PathLike,
        retry_unavailable: bool = True,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> Self:
        """A client on its own mTLS channel (to `default_address` unless given), closed by
        `close()` or by leaving its `with` block."""
        channel = cls.make_channel(
            address or cls.default_address,
            ca=ca,
            cert=cert,
            key=key,
            retry_unavailable=retry_unavailable,
            retry_policy=retry_policy,
            options=options,
        )
        return cls(channel, timeout=timeout, metadata=metadata, owns_channel=True)

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout


class AsyncClientBase(_Common):
    """Base of the asyncio clients. Use as `async with`; `close()` closes the channel only
    when the client made it (`connect`)."""

    channel: grpc.aio.Channel
    make_channel = staticmethod(mtls_channel)

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

    channel: grpc.Channel
    make_channel = staticmethod(mtls_channel_sync)

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
