"""One wrapper around every method handler: request id, authorization, error mapping, and
one observation (method, final status code, duration) per call for the metrics.

Python gRPC has no engine for A43 policies, so authorization happens here, before the
servicer sees the request: no identity is UNAUTHENTICATED, a denied identity is
PERMISSION_DENIED, and both come before any existence check in the servicer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc_status import rpc_status

from service_kit import db, metrics
from service_kit.authz import Policy
from service_kit.call_context import CallInfo, current_call, request_id_from
from service_kit.errors import (
    Internal,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
    to_rpc_status,
)
from service_kit.tls import peer_identity

log = logging.getLogger(__name__)

DeniedHook = Callable[[CallInfo, Any], Awaitable[None]]
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
        on_denied: DeniedHook | None = None,
        observe: Observer = metrics.observe_rpc,
    ) -> None:
        self._policy = policy
        self._domain = domain
        self._on_denied = on_denied
        self._observe = observe
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    @contextlib.contextmanager
    def _observed(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Report the call's final status code and duration however it ends: a return, an
        abort (ours or the servicer's), or the caller going away."""
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            yield
            code = context.code() or grpc.StatusCode.OK
        except (asyncio.CancelledError, GeneratorExit):
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            self._observe(method, code, time.perf_counter() - started)

    async def _abort(self, context: grpc.aio.ServicerContext, error: ServiceError) -> None:
        status = rpc_status.to_status(to_rpc_status(error, self._domain))
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def _admit(
        self, method: str, request: Any, context: grpc.aio.ServicerContext
    ) -> CallInfo:
        caller = peer_identity(context)
        metadata: Any = context.invocation_metadata()
        info = CallInfo(method, caller, request_id_from(metadata))
        current_call.set(info)
        decision = self._policy.evaluate(caller, method)
        if decision.allowed:
            return info
        if self._on_denied is not None:
            try:
                await self._on_denied(info, request)
            except Exception as exc:  # the denial stands even when it cannot be recorded
                log.error(
                    "denied call not recorded",
                    extra={"method": method, "error": type(exc).__name__},
                )
        log.info("call denied", extra={"method": method, "caller": caller})
        if caller is None:
            raise Unauthenticated("a client certificate with a SPIFFE ID is required")
        raise PermissionDenied(f"{caller} may not call {method}")

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

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        serializers = (handler.request_deserializer, handler.response_serializer)

        if handler.unary_unary is not None:
            inner_unary: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with self._observed(method, context):
                    try:
                        await self._admit(method, request, context)
                        return await inner_unary(request, context)
                    except _PASS_THROUGH:
                        raise
                    except Exception as exc:  # mapped to a status, never leaked as a traceback
                        await self._fail(context, method, exc)

            return grpc.unary_unary_rpc_method_handler(unary, *serializers)

        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with self._observed(method, context):
                    try:
                        await self._admit(method, request, context)
                        responses = inner_stream(request, context)
                        if inspect.isawaitable(responses):  # writes with context.write (Watch)
                            await responses
                            return
                        async for response in responses:
                            yield response
                    except _PASS_THROUGH:
                        raise
                    except Exception as exc:
                        await self._fail(context, method, exc)

            return grpc.unary_stream_rpc_method_handler(stream, *serializers)

        if handler.stream_stream is not None:  # server reflection
            inner_bidi: Any = handler.stream_stream

            async def bidi(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with self._observed(method, context):
                    try:
                        await self._admit(method, None, context)
                        async for response in inner_bidi(requests, context):
                            yield response
                    except _PASS_THROUGH:
                        raise
                    except Exception as exc:
                        await self._fail(context, method, exc)

            return grpc.stream_stream_rpc_method_handler(bidi, *serializers)

        raise RuntimeError(f"{method}: client-streaming methods are not wrapped")


_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError)
