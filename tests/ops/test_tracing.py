"""OpenTelemetry tracing across the pair: a caller's `traceparent` continues through Execute,
the vault's RevealApiKey, the provider request and the database statements, into one trace
with spans from both services; no span carries a key, a prompt or an output; export is
configured by the standard OTEL_* variables; trace ids reach the logs even with export off."""

from __future__ import annotations

import asyncio
import http.server
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from execution_service.app import start_execution
from keyvault_service.app import start_keyvault
from provider_emulator.server import start_emulator
from service_kit.settings import SettingsError
from service_kit.tls import TlsFiles
from service_kit.tracing import Tracing, TracingSettings
from tests.conftest import secure_channel
from tests.execution.conftest import execution_settings
from tests.execution.support import ANTHROPIC, OPENAI, openai_key, request, run
from tests.keyvault.conftest import keyring_of, vault_settings
from tests.ops.conftest import LogCapture, MeteredPair

EXECUTE = "/execution.v1.ExecutionService/Execute"
REVEAL = "/keyvault.v1.KeyVaultService/RevealApiKey"
WATCH = "/keyvault.v1.KeyVaultService/WatchApiKeyChanges"


class TracedPair(MeteredPair):
    exporter: InMemorySpanExporter
    execution_tracing: Tracing


@pytest.fixture(scope="module")
async def traced_pair(
    tls_for: Callable[[str], TlsFiles], make_database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[TracedPair]:
    """The pair with a tracer provider each (so that spans name their service), both
    exporting to one in-memory exporter. An operator asked for every provider request
    header to be recorded (credentials must be redacted even then)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
        async for pair in _traced_pair(tls_for, make_database):
            yield pair


async def _traced_pair(
    tls_for: Callable[[str], TlsFiles], make_database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[TracedPair]:
    exporter = InMemorySpanExporter()
    vault_tracing = Tracing.start(TracingSettings(service_name="keyvault"), exporter=exporter)
    execution_tracing = Tracing.start(TracingSettings(service_name="execution"), exporter=exporter)
    async with start_emulator() as emulator:
        vault = await start_keyvault(
            vault_settings(tls_for("keyvault"), keyring_of(1)),
            await make_database("kv"),
            tracing=vault_tracing,
        )
        execution = await start_execution(
            execution_settings(tls_for("execution"), vault.port, emulator.base_url),
            await make_database("ex"),
            background=False,
            tracing=execution_tracing,
        )
        pair = TracedPair(vault, execution, emulator, tls_for)
        pair.exporter, pair.execution_tracing = exporter, execution_tracing
        yield pair
        await execution.stop(grace=0.5)
        await vault.stop(grace=0.5)


def workspace() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


def new_traceparent() -> tuple[str, int, int]:
    """A caller's sampled `traceparent`, its trace id and its span id."""
    trace_id, span_id = secrets.randbits(128) | 1, secrets.randbits(64) | 1
    return f"00-{trace_id:032x}-{span_id:016x}-01", trace_id, span_id


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def spans_of_trace(
    exporter: InMemorySpanExporter, trace_id: int, *, until: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """The trace's finished spans once `until` holds: a server ends its span when the handler
    returns, which may be just after the caller has seen the call end."""
    async with asyncio.timeout(5.0):
        while True:
            found = [
                s
                for s in exporter.get_finished_spans()
                if s.context is not None and s.context.trace_id == trace_id
            ]
            if until(found):
                return found
            await asyncio.sleep(0.02)


def one(spans: Sequence[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    matching = [s for s in spans if s.name == name and s.kind == kind]
    assert len(matching) == 1, [(s.name, s.kind) for s in spans]
    return matching[0]


def has(name: str, kind: SpanKind) -> Callable[[list[ReadableSpan]], bool]:
    return lambda spans: any(s.name == name and s.kind == kind for s in spans)


async def test_one_execute_is_one_trace_across_both_services(traced_pair: TracedPair) -> None:
    pair, ws, key = traced_pair, workspace(), openai_key()
    await pair.store_key(ws, "openai", key)
    pair.emulator.state.script({"chunk_delay_ms": 10}, key=key)  # deltas one by one
    traceparent, trace_id, caller_span = new_traceparent()

    with LogCapture() as logs:
        outcome = await run(
            pair.execution_stub(), request(ws), metadata=(("traceparent", traceparent),)
        )
        done = outcome.completed
        spans = await spans_of_trace(pair.exporter, trace_id, until=has(EXECUTE, SpanKind.SERVER))

    # The execution service's span continues the caller's trace.
    execute = one(spans, EXECUTE, SpanKind.SERVER)
    assert execute.parent is not None and execute.parent.is_remote
    assert parent_id(execute) == caller_span
    assert service_of(execute) == "execution"
    assert execute.attributes is not None and execute.attributes["rpc.grpc.status_code"] == 0
    # RevealApiKey: the execution service's client span, the vault's server span under it.
    reveal_out = one(spans, REVEAL, SpanKind.CLIENT)
    reveal_in = one(spans, REVEAL, SpanKind.SERVER)
    assert (parent_id(reveal_out), service_of(reveal_out)) == (span_id(execute), "execution")
    assert (parent_id(reveal_in), service_of(reveal_in)) == (span_id(reveal_out), "keyvault")
    # The provider request, with `traceparent` sent on to the provider.
    provider_calls = [s for s in spans if s.attributes and "http.url" in s.attributes]
    assert len(provider_calls) == 1
    http_span = provider_calls[0]
    assert http_span.kind == SpanKind.CLIENT and service_of(http_span) == "execution"
    assert parent_id(http_span) == span_id(execute)
    assert http_span.attributes is not None
    assert str(http_span.attributes["http.url"]).startswith(pair.emulator.base_url)
    assert http_span.attributes["http.status_code"] == 200
    [seen] = pair.emulator.state.find_requests(key=key)
    assert seen.headers["traceparent"] == f"00-{trace_id:032x}-{span_id(http_span):016x}-01"
    # The database statements, each under the call of the service that ran it.
    statements = [s for s in spans if s.attributes and s.attributes.get("db.system")]
    vault_statements = [s for s in statements if service_of(s) == "keyvault"]
    execution_statements = [s for s in statements if service_of(s) == "execution"]
    assert vault_statements and execution_statements
    assert all(s.kind == SpanKind.CLIENT and s.attributes for s in statements)
    assert all(s.attributes and s.attributes["db.statement"] for s in statements)
    assert {parent_id(s) for s in vault_statements} == {span_id(reveal_in)}
    assert {parent_id(s) for s in execution_statements} == {span_id(execute)}
    # Nothing else: no span per streamed delta.
    expected = {execute, reveal_out, reveal_in, http_span, *statements}
    assert len(spans) == len(expected) and set(spans) == expected
    assert len(outcome.deltas) > 1

    # Both services' log lines carry the trace.
    [finished] = [r for r in logs.records("execution finished") if r["execution"] == done.name]
    assert finished["trace_id"] == f"{trace_id:032x}"
    [revealed] = [
        r for r in logs.records("key revealed") if r["key"].startswith(f"workspaces/{ws}/")
    ]
    assert (revealed["trace_id"], revealed["span_id"]) == (
        f"{trace_id:032x}",
        f"{span_id(reveal_in):016x}",
    )


async def test_a_cancelled_execute_still_ends_its_span_with_its_statements(
    traced_pair: TracedPair,
) -> None:
    pair, ws, key = traced_pair, workspace(), openai_key()
    await pair.store_key(ws, "openai", key)
    pair.emulator.state.script({"chunk_delay_ms": 200}, key=key)
    traceparent, trace_id, _ = new_traceparent()
    call = pair.execution_stub().Execute(request(ws), metadata=(("traceparent", traceparent),))
    started = await call.read()
    assert (await call.read()).WhichOneof("event") == "delta"
    call.cancel()

    def row_written_twice(found: list[ReadableSpan]) -> bool:
        """The Execute span has ended, and the execution's row was written when it started
        and again when it was cancelled (the terminal record)."""
        return has(EXECUTE, SpanKind.SERVER)(found) and len(execution_statements(found)) >= 2

    spans = await spans_of_trace(pair.exporter, trace_id, until=row_written_twice)
    execute = one(spans, EXECUTE, SpanKind.SERVER)
    assert {parent_id(s) for s in execution_statements(spans)} == {span_id(execute)}
    stored = await pair.execution_stub().GetExecution(
        pb.GetExecutionRequest(name=started.started.name)
    )
    assert stored.execution.state == res.EXECUTION_STATE_CANCELLED


def execution_statements(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.attributes and s.attributes.get("db.system") and service_of(s) == "execution"
    ]


async def test_refused_calls_are_traced_with_their_status(traced_pair: TracedPair) -> None:
    """The project's interceptor hands handlers raw bytes and answers refusals itself; the
    tracing interceptor ahead of it still records each call and its final status."""
    pair = traced_pair
    traceparent, trace_id, _ = new_traceparent()
    metadata = (("traceparent", traceparent),)
    reveal = kv.RevealApiKeyRequest(name=f"workspaces/{workspace()}/apiKeys/openai")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await pair.vault_stub("app").RevealApiKey(reveal, metadata=metadata)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with secure_channel(pair.vault.port, pair.tls_for("execution")) as channel:
        raw = channel.unary_unary(REVEAL, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await raw(b"\xff\xff\xff", metadata=metadata)
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def both_calls(found: list[ReadableSpan]) -> bool:
        return sum(s.name == REVEAL and s.kind == SpanKind.SERVER for s in found) == 2

    spans = await spans_of_trace(pair.exporter, trace_id, until=both_calls)
    codes = sorted(
        s.attributes["rpc.grpc.status_code"]
        for s in spans
        if s.name == REVEAL and s.kind == SpanKind.SERVER and s.attributes
    )
    assert codes == [
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.PERMISSION_DENIED.value[0],
    ]
    # The denied call's audit record was written inside it.
    assert [s for s in spans if s.attributes and s.attributes.get("db.system")]


CANARY = "sk-proj-CANARY-7c2e9a41d6b3f0e85a1c4d7bTRACE"


def windows(secret: str, width: int = 8) -> list[str]:
    return [secret[i : i + width] for i in range(len(secret) - width + 1)]


async def test_no_span_carries_a_key_a_prompt_or_an_output(traced_pair: TracedPair) -> None:
    pair = traced_pair
    ws, failing_ws = workspace(), workspace()
    prompt = f"Summarise the board pack {uuid.uuid4().hex}"
    stub = pair.execution_stub()
    pair.exporter.clear()

    await pair.store_key(ws, "openai", CANARY)
    await pair.store_key(failing_ws, "anthropic", CANARY)
    succeeded = await run(stub, request(ws, prompt=prompt))
    assert succeeded.completed.state == res.EXECUTION_STATE_SUCCEEDED
    # The provider refuses the key and quotes it back.
    pair.emulator.state.script(
        {"status": 401, "error_message": f"Incorrect API key provided: {CANARY}"}, key=CANARY
    )
    refused = await run(stub, request(failing_ws, ANTHROPIC, "claude-3-5-sonnet-20241022"))
    assert refused.error is not None
    checked = await stub.TestApiKey(
        pb.TestApiKeyRequest(parent=f"workspaces/{ws}", provider=OPENAI, candidate_api_key=CANARY)
    )
    assert checked.valid
    revealed = await pair.vault_stub("execution").RevealApiKey(
        kv.RevealApiKeyRequest(name=f"workspaces/{ws}/apiKeys/openai")
    )
    assert revealed.plaintext_key == CANARY

    def recorded() -> list[ReadableSpan]:
        return list(pair.exporter.get_finished_spans())

    spans = await spans_of_trace_any(recorded, lambda found: _saw_everything(found))
    text = "\n".join(s.to_json() for s in spans)  # names, attributes, events, status, resource
    assert "db.statement" in text and "http.url" in text
    assert "http.request.header.authorization" in text  # recorded, as the operator asked
    assert "http.request.header.x_api_key" in text
    for window in windows(CANARY) + windows(prompt.rsplit(" ", 1)[1]):
        assert window not in text
    assert succeeded.text and succeeded.text not in text


def _saw_everything(spans: list[ReadableSpan]) -> bool:
    """Every call of the scenario has ended its span: the direct RevealApiKey is the last."""
    return sum(s.name == REVEAL and s.kind == SpanKind.SERVER for s in spans) >= 2 and any(
        s.name == "/execution.v1.ExecutionService/TestApiKey" for s in spans
    )


async def spans_of_trace_any(
    recorded: Callable[[], list[ReadableSpan]], until: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    async with asyncio.timeout(5.0):
        while not until(found := recorded()):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return found


async def test_no_span_for_health_checks_the_key_watch_or_background_statements(
    traced_pair: TracedPair,
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Awaitable[str]],
) -> None:
    pair = traced_pair
    traceparent, trace_id, _ = new_traceparent()
    async with secure_channel(pair.vault.port, tls_for("app")) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        answer = await check(
            health_pb2.HealthCheckRequest(), metadata=(("traceparent", traceparent),)
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # A second execution service opens its key-change watch on the vault, runs its
    # migrations, and stops: the watch stream ends on both sides.
    second = await start_execution(
        execution_settings(tls_for("execution"), pair.vault.port, pair.emulator.base_url),
        await make_database("ex"),
        background=True,
        tracing=pair.execution_tracing,
    )
    assert await second.keys.wait_subscribed(5.0)
    await second.stop(grace=0.5)
    await asyncio.sleep(0.2)  # the vault's side of the watch ends a moment later

    spans = list(pair.exporter.get_finished_spans())
    assert spans  # the module's other calls were recorded
    assert not [s for s in spans if s.context and s.context.trace_id == trace_id]
    assert not [s for s in spans if s.name in (WATCH, "/grpc.health.v1.Health/Check")]
    # Database statements belong to calls; background work starts no traces of its own.
    assert not [s for s in spans if s.attributes and s.attributes.get("db.system") and not s.parent]


async def test_trace_ids_reach_both_services_logs_with_export_off(
    metered_pair: MeteredPair,
) -> None:
    """The shared fixture's services run with the default tracing: nothing exported, the
    caller's trace continued to the vault and the provider."""
    pair, ws, key = metered_pair, workspace(), openai_key()
    await pair.store_key(ws, "openai", key)
    traceparent, trace_id, _ = new_traceparent()
    with LogCapture() as logs:
        outcome = await run(
            pair.execution_stub(), request(ws), metadata=(("traceparent", traceparent),)
        )
    done = outcome.completed
    [finished] = [r for r in logs.records("execution finished") if r["execution"] == done.name]
    [revealed] = [
        r for r in logs.records("key revealed") if r["key"].startswith(f"workspaces/{ws}/")
    ]
    assert finished["trace_id"] == revealed["trace_id"] == f"{trace_id:032x}"
    assert finished["span_id"] != revealed["span_id"]
    # ... and on to the provider, unsampled (nothing of it was recorded).
    [seen] = pair.emulator.state.find_requests(key=key)
    version, sent_trace, sent_parent, flags = seen.headers["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", f"{trace_id:032x}", "00")
    assert sent_parent == finished["span_id"]


# --- settings and export --------------------------------------------------------------------


def test_export_is_off_unless_an_endpoint_is_configured() -> None:
    default = TracingSettings.from_env({}, service="keyvault")
    assert default == TracingSettings(service_name="keyvault", enabled=True, export=False)
    on = TracingSettings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "vault-eu"},
        service="keyvault",
    )
    assert on == TracingSettings(service_name="vault-eu", enabled=True, export=True)
    traces_only = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}
    assert TracingSettings.from_env(traces_only, service="execution").export
    assert not TracingSettings.from_env(
        {**traces_only, "OTEL_TRACES_EXPORTER": "none"}, service="execution"
    ).export
    disabled = TracingSettings.from_env(
        {**traces_only, "OTEL_SDK_DISABLED": "true"}, service="execution"
    )
    assert (disabled.enabled, disabled.export) == (False, False)
    assert Tracing.start(disabled).server_interceptors() == []


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_SDK_DISABLED": "maybe"},
    ],
)
def test_unsupported_otel_settings_are_refused_by_name(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as refused:
        TracingSettings.from_env(env, service="keyvault")
    assert next(iter(env)) in str(refused.value)


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # no stderr noise
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    """A stand-in OTLP/HTTP collector: keeps what it is sent."""
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


async def test_spans_are_exported_over_otlp_http_to_the_configured_endpoint(
    collector: str,
    monkeypatch: pytest.MonkeyPatch,
    tls_for: Callable[[str], TlsFiles],
    make_database: Callable[[str], Awaitable[str]],
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)  # the exporter reads it too
    settings = TracingSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": collector}, service="kv")
    tracing = Tracing.start(settings)
    vault = await start_keyvault(
        vault_settings(tls_for("keyvault"), keyring_of(1)),
        await make_database("kv"),
        tracing=tracing,
    )
    try:
        stub = kv_grpc.KeyVaultServiceStub(secure_channel(vault.port, tls_for("app")))
        await stub.ListApiKeys(kv.ListApiKeysRequest(parent=f"workspaces/{workspace()}"))
    finally:
        await vault.stop(grace=0.5)
    await asyncio.to_thread(tracing.shutdown)  # flushes the batch

    exported = []
    for path, body in _Collector.received:
        assert path == "/v1/traces"
        message = ExportTraceServiceRequest.FromString(body)
        for resource_spans in message.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                "service.name"
            ]
            for scope in resource_spans.scope_spans:
                exported += [(service, span.name) for span in scope.spans]
    assert ("kv", "/keyvault.v1.KeyVaultService/ListApiKeys") in exported
