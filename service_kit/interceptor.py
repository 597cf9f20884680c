"""One wrapper around every method handler: request id, authorization, request parsing,
error mapping, and one observation (method, final status code, duration) per call for the
metrics.

Python gRPC has no engine for A43 policies, so authorization happens here, before the
servicer sees the request: no identity is UNAUTHENTICATED, a denied identity is
PERMISSION_DENIED, and both come before any existence check in the servicer, and before a
malformed request is refused as INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc_status import rpc_status

from service_kit import db, metrics
from service_kit.authz import Policy
from service_kit.call_context import CallInfo, current_call, request_id_from
from service_kit.errors import (
    FieldViolation,
    Internal,
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
    to_rpc_status,
)
from service_kit.tls import peer_identity

log = logging.getLogger(__name__)

# Called with the request (None when it does not parse) to record a refused call.
RefusalHook = Callable[[CallInfo, Any], Awaitable[None]]
Decoder = Callable[[Any], Any]
Observer = Callable[[str, grpc.StatusCode, float], None]

# Transient database trouble is something the caller can retry, not an internal error.
_UNAVAILABLE_ERRORS = db.UNAVAILABLE_ERRORS


def _as_service_error(exc: BaseException, method: str) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        log.warning("dependency unavailable", extra={"method": method, "error": type(exc).__name__})
        return Unavailable(
            "a dependency is unavailable; retry later", reason="DATABASE_UNAVAILABLE"
        )
    log.exception("unhandled error", extra={"method": method})
    return Internal("internal error")


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        policy: Policy,
        domain: str,
        on_denied: RefusalHook | None = None,
        on_malformed: RefusalHook | None = None,
        observe: Observer = metrics.observe_rpc,
    ) -> None:
        self._policy = policy
        self._domain = domain
        self._on_denied = on_denied
        self._on_malformed = on_malformed
        self._observe = observe
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    @contextlib.contextmanager
    def _observed(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Report the call's final status code and duration however it ends: a return, an
        abort (ours or the servicer's), or the caller going away."""
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self._observe(method, _final_code(context, exc), time.perf_counter() - started)
            raise
        self._observe(method, _final_code(context, None), time.perf_counter() - started)

    async def _abort(self, context: grpc.aio.ServicerContext, error: ServiceError) -> None:
        status = rpc_status.to_status(to_rpc_status(error, self._domain))
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def _admit(
        self, method: str, raw: Any, decode: Decoder, context: grpc.aio.ServicerContext
    ) -> Any:
        """Authorize the call and return its parsed request. A request that does not parse
        is refused only after authorization: a denied caller is denied (and audited, with no
        request to read) whatever it sent; an allowed one hears INVALID_ARGUMENT."""
        request, malformed = _parse(decode, raw)
        caller = peer_identity(context)
        metadata: Any = context.invocation_metadata()
        info = CallInfo(method, caller, request_id_from(metadata))
        current_call.set(info)
        decision = self._policy.evaluate(caller, method)
        if not decision.allowed:
            await _record(self._on_denied, info, request)
            log.info("call denied", extra={"method": method, "caller": caller})
            if caller is None:
                raise Unauthenticated("a client certificate with a SPIFFE ID is required")
            raise PermissionDenied(f"{caller} may not call {method}")
        if malformed:
            await _record(self._on_malformed, info, None)
            raise malformed
        return request

    async def _fail(self, context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
        await self._abort(context, _as_service_error(exc, method))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            # Handlers are per method: wrap each once, not on every call.
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    @contextlib.asynccontextmanager
    async def _guarded(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Observe the call, and turn any error into its status (never a traceback)."""
        with self._observed(method, context):
            try:
                yield
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                await self._fail(context, method, exc)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # gRPC would parse the request before any wrapper runs, and a request that does not
        # parse would end as UNKNOWN, unauthorized and unaudited. So the handler receives
        # the raw bytes (no deserializer) and parses them itself, after authorization.
        decode: Decoder = handler.request_deserializer or _raw
        serialize = handler.response_serializer
        admit, observe = self._admit, self._observe

        if handler.unary_unary is not None:
            inner_unary: Any = handler.unary_unary

            # What `_guarded` does, written out: a generator-based context manager around
            # every call costs more than the rest of this wrapper.
            async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    try:
                        request = await admit(method, raw, decode, context)
                        response = await inner_unary(request, context)
                    except _PASS_THROUGH:
                        raise
                    except Exception as exc:
                        await self._fail(context, method, exc)
                        response = None
                except BaseException as exc:
                    observe(method, _final_code(context, exc), time.perf_counter() - started)
                    raise
                observe(method, _final_code(context, None), time.perf_counter() - started)
                return response

            return grpc.unary_unary_rpc_method_handler(unary, None, serialize)

        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    try:
                        request = await admit(method, raw, decode, context)
                        responses = inner_stream(request, context)
                        if inspect.isawaitable(responses):  # writes with context.write (Watch)
                            await responses
                        else:
                            async for response in responses:
                                yield response
                    except _PASS_THROUGH:
                        raise
                    except Exception as exc:
                        await self._fail(context, method, exc)
                except BaseException as exc:
                    observe(method, _final_code(context, exc), time.perf_counter() - started)
                    raise
                observe(method, _final_code(context, None), time.perf_counter() - started)

            return grpc.unary_stream_rpc_method_handler(stream, None, serialize)

        if handler.stream_stream is not None:  # server reflection
            inner_bidi: Any = handler.stream_stream

            async def bidi(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._guarded(method, context):
                    await self._admit(method, None, _raw, context)  # no request read yet
                    async for response in inner_bidi(_parsed(decode, requests), context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(bidi, None, serialize)

        raise RuntimeError(f"{method}: client-streaming methods are not wrapped")


def _final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """A call's final status code: as set (an abort, ours or the servicer's), else OK after
    a return; CANCELLED or DEADLINE_EXCEEDED when the caller went away or its time ran out."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    return context.code() or (grpc.StatusCode.UNKNOWN if exc else grpc.StatusCode.OK)


async def _record(hook: RefusalHook | None, info: CallInfo, request: Any) -> None:
    if hook is None:
        return
    try:
        await hook(info, request)
    except Exception as exc:  # the refusal stands even when it cannot be recorded
        log.error(
            "refused call not recorded", extra={"method": info.method, "error": type(exc).__name__}
        )


def _raw(data: Any) -> Any:
    return data


def _parse(decode: Decoder, raw: Any) -> tuple[Any, InvalidArgument | None]:
    """The request, or None and the error to give an authorized caller."""
    try:
        return decode(raw), None
    except Exception:  # whatever the parser raises, the bytes came from the caller
        return None, InvalidArgument([_MALFORMED], reason="MALFORMED_REQUEST")


async def _parsed(decode: Decoder, requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """A request stream, parsed message by message."""
    async for raw in requests:
        request, malformed = _parse(decode, raw)
        if malformed:
            raise malformed
        yield request


_MALFORMED = FieldViolation(
    "request",
    "is not a valid message for this method (it does not parse, or a string field is not "
    "valid UTF-8)",
)
_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError)
