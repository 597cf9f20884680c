"""OpenTelemetry tracing: one tracer provider per process, made at start-up and handed to the
gRPC server, the outgoing channels and the HTTP client like any other I/O object.

What records spans:
- calls served: `_CallSpans`, placed ahead of the project's interceptor so that the span
  covers authorization and error mapping too. One span per call with the attributes
  opentelemetry-instrumentation-grpc gives (rpc.system, rpc.service, rpc.method,
  rpc.grpc.status_code), without that instrumentation's per-call handler and context proxy
  and its wrapper around every streamed message (~0.3 ms a call, ~10 % of throughput);
- calls made (RevealApiKey): its aio client interceptors, which put `traceparent` in the
  call's metadata;
- provider HTTP requests: opentelemetry-instrumentation-httpx on the client instance (the
  span ends when the response headers arrive; the streamed body belongs to the call's span);
  without export, only `traceparent` is added to the request (by an httpx event hook);
- database statements, when spans are exported: opentelemetry-instrumentation-asyncpg. It
  patches asyncpg for the whole process, so it records through `_CallTracerProvider` (ours):
  a statement is recorded by the tracer provider of the traced call it runs in, and not at
  all outside a call (the health watch, lease renewal and the sweeper would otherwise start a
  trace every few seconds).

Not traced: health checks, and bidirectional streams (server reflection, the key-change
watch), which last as long as a connection and would be one endless span.

Export is off unless an OTLP endpoint is configured. The calls' spans are still made when it
is off, unsampled (nothing kept, nothing queued): the caller's trace id continues to the vault
and the provider, and shows in the log lines. `OTEL_SDK_DISABLED=true` turns tracing off
altogether.

No content is ever recorded: span attributes are the instrumentations' defaults (method
names, status codes, peer addresses, SQL text without its parameters, URLs without
credentials), never a request or response body, a header value, a prompt, an output or a key.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from service_kit.settings import Env, SettingsError

__all__ = ["Tracing", "TracingSettings"]

_OTLP_HTTP = "http/protobuf"
_HEALTH_METHODS = "/grpc.health.v1.Health/"
_DB_SCOPE = "opentelemetry.instrumentation.asyncpg"
_GRPC_SCOPE = "opentelemetry.instrumentation.grpc"


@dataclass(frozen=True)
class TracingSettings:
    """Read from the standard OTEL_* variables. The SDK reads the rest itself: the endpoint,
    headers and timeout of the exporter (OTEL_EXPORTER_OTLP_*), the sampler
    (OTEL_TRACES_SAMPLER, default: follow the caller's decision, sample new traces), batching
    (OTEL_BSP_*) and resource attributes (OTEL_RESOURCE_ATTRIBUTES)."""

    service_name: str
    enabled: bool = True  # False: no spans, no propagation, no cost
    export: bool = False  # True: spans go to the OTLP/HTTP endpoint

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, service: str) -> TracingSettings:
        env = Env(environ)
        endpoint = env.optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.optional(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        exporter = env.string("OTEL_TRACES_EXPORTER", "otlp").lower()
        if exporter not in ("otlp", "none"):
            raise SettingsError(f"OTEL_TRACES_EXPORTER must be otlp or none, got {exporter!r}")
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.optional(name)
            if protocol is not None and protocol != _OTLP_HTTP:
                raise SettingsError(
                    f"{name} must be {_OTLP_HTTP} (spans are exported over OTLP/HTTP), "
                    f"got {protocol!r}"
                )
        enabled = not env.flag("OTEL_SDK_DISABLED", False)
        return cls(
            service_name=env.string("OTEL_SERVICE_NAME", service),
            enabled=enabled,
            export=enabled and endpoint is not None and exporter == "otlp",
        )


class Tracing:
    """One process's tracing. `start` makes it; the parts go to the server, channels and
    HTTP client; `shutdown` flushes spans still queued for export."""

    def __init__(self, provider: TracerProvider | None, *, exporting: bool = False) -> None:
        self._provider = provider  # None: tracing is disabled
        self._exporting = exporting

    @classmethod
    def start(cls, settings: TracingSettings, *, exporter: SpanExporter | None = None) -> Tracing:
        """`exporter` replaces the configured export (tests pass an in-memory one); its
        spans are handed over as each ends."""
        if not settings.enabled:
            return cls(None)
        processor: SpanProcessor | None = None
        if exporter is not None:
            processor = SimpleSpanProcessor(exporter)
        elif settings.export:
            # Imported only when used: the exporter pulls in an HTTP stack at import.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter())
        provider = TracerProvider(
            # With nowhere to send spans, sample none: ids still flow, nothing is recorded.
            sampler=None if processor else ALWAYS_OFF,
            resource=Resource.create({SERVICE_NAME: settings.service_name}),
            shutdown_on_exit=False,  # `shutdown` is called by the owner
        )
        if processor is None:
            return cls(provider)
        provider.add_span_processor(processor)
        _instrument_asyncpg()  # statement spans are of use only when exported
        return cls(provider, exporting=True)

    @classmethod
    def propagate_only(cls, service: str) -> Tracing:
        """Spans made but never exported: what a service runs with when given nothing."""
        return cls.start(TracingSettings(service_name=service))

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """To be placed first among a server's interceptors."""
        if self._provider is None:
            return []
        db_tracer = self._provider.get_tracer(_DB_SCOPE) if self._exporting else None
        return [_CallSpans(self._provider.get_tracer(_GRPC_SCOPE), db_tracer)]

    def channel_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """For an outgoing channel: a span per call and `traceparent` in its metadata.
        Bidirectional streams get neither (see the module's docstring)."""
        if self._provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        every = aio_client_interceptors(tracer_provider=self._provider)
        return [i for i in every if not isinstance(i, grpc.aio.StreamStreamClientInterceptor)]

    def instrument_http(self, client: httpx.AsyncClient) -> None:
        """`traceparent` in every request's headers and, when spans are exported, a span
        per request. Header values are recorded only as
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST asks, and those that carry
        credentials never."""
        if self._provider is None:
            return
        if not self._exporting:
            # The instrumentation's attributes cost more than the rest of tracing together
            # (~0.1 ms a request); without export only the header is of use.
            client.event_hooks["request"].append(_inject_trace_context)
            return
        # Imported only when spans are exported (memory: these pull in more modules).
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.metrics import NoOpMeterProvider

        HTTPXClientInstrumentor.instrument_client(
            client,
            tracer_provider=self._provider,
            meter_provider=NoOpMeterProvider(),
            request_hook=_redact_credential_headers,
        )

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


# Request headers that carry an API key or other credentials (OpenAI and compatible
# endpoints: Authorization; Anthropic: x-api-key; Azure OpenAI: api-key), as the attributes
# the instrumentation records them under.
_CREDENTIAL_HEADERS = tuple(
    f"http.request.header.{name}"
    for name in ("authorization", "proxy_authorization", "x_api_key", "api_key", "cookie")
)


async def _inject_trace_context(request: httpx.Request) -> None:
    propagate.inject(request.headers)


async def _redact_credential_headers(span: trace.Span, _request: Any) -> None:
    """Runs as each request's span starts, after any captured headers were recorded."""
    recorded = getattr(span, "attributes", None)
    if not span.is_recording() or not recorded:
        return
    for attribute in _CREDENTIAL_HEADERS:
        if attribute in recorded:
            span.set_attribute(attribute, ["[REDACTED]"])


class _CallSpans(grpc.aio.ServerInterceptor):
    """One SERVER span per call, the caller's `traceparent` as its parent, current while the
    handler runs (the vault call, the provider request and every log line carry its ids).
    Health checks and bidirectional streams are not traced. A span that is not sampled
    (export off) gets no attributes: only its ids are of use. Handlers are wrapped once per
    method, not per call."""

    def __init__(self, tracer: trace.Tracer, db_tracer: trace.Tracer | None) -> None:
        self._tracer = tracer
        self._db_tracer = db_tracer  # when exporting: what the call's statements record with
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None
            untraced = (
                handler.request_streaming and handler.response_streaming
            ) or method.startswith(_HEALTH_METHODS)
            wrapped = self._wrapped[method] = handler if untraced else self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        service, _, name = method.lstrip("/").rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        start, end = self._start, self._end

        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                span, tokens = start(method, attributes, context)
                try:
                    return await inner_unary(request, context)
                finally:
                    end(span, tokens, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                span, tokens = start(method, attributes, context)
                finalized = False
                try:
                    async for response in inner_stream(request, context):
                        yield response
                except GeneratorExit:
                    # Closed by the event loop after its caller went away: from a copy of
                    # the call's context, where the tokens cannot be reset (OpenTelemetry
                    # would log an error per cancelled stream). The call is over anyway.
                    finalized = True
                    raise
                finally:
                    end(span, () if finalized else tokens, context)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler  # client streaming: no such method is served

    def _start(
        self, method: str, attributes: dict[str, str], context: grpc.aio.ServicerContext
    ) -> tuple[trace.Span, tuple[Any, ...]]:
        carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        parent = propagate.extract(carrier) if "traceparent" in carrier else None
        span = self._tracer.start_span(method, context=parent, kind=trace.SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(attributes)
        tokens: tuple[Any, ...] = (otel_context.attach(trace.set_span_in_context(span, parent)),)
        if self._db_tracer is not None:
            tokens += (_call_db_tracer.set(self._db_tracer),)
        return span, tokens

    def _end(
        self, span: trace.Span, tokens: tuple[Any, ...], context: grpc.aio.ServicerContext
    ) -> None:
        if span.is_recording():
            code = context.code() or grpc.StatusCode.OK
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                details = context.details()
                description = details.decode() if isinstance(details, bytes) else details
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code}: {description}"))
        span.end()
        if len(tokens) > 1:
            _call_db_tracer.reset(tokens[1])
        if tokens:
            otel_context.detach(tokens[0])


# The tracer for database statements of the traced call running in this context.
_call_db_tracer: ContextVar[trace.Tracer | None] = ContextVar("call_db_tracer", default=None)


class _CallTracerProvider(trace.TracerProvider):
    """What the process-wide asyncpg instrumentation records with."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _CallTracer()


class _CallTracer(trace.Tracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        tracer = _call_db_tracer.get()
        return trace.INVALID_SPAN if tracer is None else tracer.start_span(*args, **kwargs)

    @contextlib.contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]
        tracer = _call_db_tracer.get()
        if tracer is None:  # outside a traced call: nothing to record, nothing to attach
            yield trace.INVALID_SPAN
            return
        with tracer.start_as_current_span(*args, **kwargs) as span:
            yield span


def _instrument_asyncpg() -> None:
    """Once per process. Statement parameters are not recorded (the instrumentor's default)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_CallTracerProvider())
