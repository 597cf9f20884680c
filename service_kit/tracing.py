"""OpenTelemetry tracing: one tracer provider per process, made at start-up and handed to the
gRPC server, the outgoing channels and the HTTP client like any other I/O object.

What records spans:
- calls served: opentelemetry-instrumentation-grpc's aio server interceptor, placed ahead of
  the project's interceptor so that the span covers authorization and error mapping too;
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
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from service_kit.settings import Env, SettingsError

__all__ = ["Tracing", "TracingSettings"]

_OTLP_HTTP = "http/protobuf"
_HEALTH_METHODS = "/grpc.health.v1.Health/"
_DB_SCOPE = "opentelemetry.instrumentation.asyncpg"


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
        provider = _CallMarkingProvider(self._provider) if self._exporting else self._provider
        return [_ServerSpans(aio_server_interceptor(tracer_provider=provider))]

    def channel_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """For an outgoing channel: a span per call and `traceparent` in its metadata.
        Bidirectional streams get neither (see the module's docstring)."""
        if self._provider is None:
            return []
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


class _ServerSpans(grpc.aio.ServerInterceptor):
    """The OpenTelemetry server interceptor, for every call but health checks and
    bidirectional streams (only known once the handler is found)."""

    def __init__(self, spans: grpc.aio.ServerInterceptor) -> None:
        self._spans = spans

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        untraced = (
            handler is None
            or (handler.request_streaming and handler.response_streaming)
            or details.method.startswith(_HEALTH_METHODS)
        )
        if untraced:
            return handler

        async def found(_: grpc.HandlerCallDetails) -> Any:
            return handler

        return await self._spans.intercept_service(found, details)


# The tracer for database statements of the traced call running in this context.
_call_db_tracer: ContextVar[trace.Tracer | None] = ContextVar("call_db_tracer", default=None)


class _CallMarkingProvider(trace.TracerProvider):
    """Gives the server interceptor tracers whose spans, while current, also name the tracer
    that the call's database statements are recorded with."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._db_tracer = provider.get_tracer(_DB_SCOPE)

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _CallMarkingTracer(self._provider.get_tracer(*args, **kwargs), self._db_tracer)


class _CallMarkingTracer(trace.Tracer):
    def __init__(self, inner: trace.Tracer, db_tracer: trace.Tracer) -> None:
        self._inner = inner
        self._db_tracer = db_tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._inner.start_span(*args, **kwargs)

    @contextlib.contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]
        token = _call_db_tracer.set(self._db_tracer)
        try:
            with self._inner.start_as_current_span(*args, **kwargs) as span:
                yield span
        finally:
            # A stream's handler may be finalized in another context; the call is over then.
            with contextlib.suppress(ValueError):
                _call_db_tracer.reset(token)


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
    instrumentor = AsyncPGInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_CallTracerProvider())
