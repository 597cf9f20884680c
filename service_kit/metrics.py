"""Every Prometheus metric of both services, and the /metrics endpoint that serves them.

The metrics are module-level objects in prometheus_client's default registry, created once
per process on first import: a deployed process runs one service and shows that service's
series; tests run several servers in one process and share these objects instead of
registering duplicates (which prometheus_client refuses).

Labels take values from small fixed sets only (method names, status codes, providers, price
families, reasons, states), never text a caller chooses freely, and never a secret.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# --- every service: one observation per RPC (service_kit.interceptor) ---------------------

RPCS_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs finished, by method and final status code (aborts and cancellations included).",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from a call's arrival to its final status; a streamed Execute until its last event.",
    ["grpc_service", "grpc_method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

DATABASE_UP = Gauge(
    "service_database_up",
    "1 while the service's database answers the health watch's ping, 0 while it does not "
    "(health checks then answer NOT_SERVING).",
    ["grpc_service"],
)

# --- key vault --------------------------------------------------------------------------

KEY_REVEALS = Counter(
    "keyvault_reveals_total",
    "RevealApiKey calls by outcome: revealed, denied, not_found, undecryptable, "
    "audit_unavailable, unavailable, error.",
    ["outcome"],
)

# --- execution service ------------------------------------------------------------------

KEY_CACHE_LOOKUPS = Counter(
    "execution_key_cache_lookups_total",
    "Provider key lookups by the execution service: hit (served from its cache) or miss.",
    ["result"],
)
PROVIDER_ATTEMPTS = Counter(
    "execution_provider_attempts_total",
    "HTTP requests made to a provider for executions (first attempts and retries).",
    ["provider"],
)
PROVIDER_RETRIES = Counter(
    "execution_provider_retries_total",
    "Provider requests repeated after a failure, by the failure's reason "
    "(PROVIDER_AUTH_FAILED: a cached key was refused and fetched again).",
    ["provider", "reason"],
)
EXECUTIONS_IN_FLIGHT = Gauge(
    "execution_executions_in_flight",
    "Executions this process has started and not yet finished.",
)
EXECUTIONS_FINISHED = Counter(
    "execution_executions_finished_total",
    "Executions finished, by provider, state (SUCCEEDED, FAILED, CANCELLED) and failure reason.",
    ["provider", "state", "reason"],
)
EXECUTIONS_INTERRUPTED = Counter(
    "execution_executions_interrupted_total",
    "Executions the sweeper failed with reason INTERRUPTED: their owner stopped renewing "
    "the lease (it crashed, or gave up on the terminal record).",
)
EXECUTION_RECORDS_PENDING = Gauge(
    "execution_records_pending",
    "Finished executions whose terminal record the database refused, being retried.",
)
EXECUTION_RECORDS_LOST = Counter(
    "execution_records_lost_total",
    "Terminal records given up after EXECUTION_FINISH_RETRY_SECONDS or at shutdown, by the "
    "state they would have recorded; their rows are left to the sweeper (INTERRUPTED).",
    ["provider", "state"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "execution_time_to_first_token_seconds",
    "From an execution's acceptance to its first output text, by provider.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
TOKENS = Counter(
    "execution_tokens_total",
    "Tokens used by executions, by provider, model price family ('other' for a model "
    "without a listed price) and kind (input, output, cache_read, cache_write).",
    ["provider", "model", "kind"],
)
COST_NANODOLLARS = Counter(
    "execution_cost_nanodollars_total",
    "Cost of executions in nano-dollars (1e-9 USD), by provider and model price family; "
    "executions of models without a listed price add nothing.",
    ["provider", "model"],
)


def observe_rpc(method: str, code: grpc.StatusCode, seconds: float) -> None:
    """The interceptor's hook: one finished call of ``/package.Service/Method``."""
    service, _, name = method.lstrip("/").partition("/")
    RPCS_HANDLED.labels(service, name, code.name).inc()
    RPC_SECONDS.labels(service, name).observe(seconds)


# --- the endpoint -----------------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """prometheus_client's HTTP server for the default registry, on a daemon thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def metrics_host(listen_address: str) -> str:
    """The host part of a gRPC listen address (``0.0.0.0:50051`` -> ``0.0.0.0``,
    ``[::]:50051`` -> ``::``): metrics are exposed on the interface the service is."""
    host, sep, _ = listen_address.rpartition(":")
    host = host.strip("[]")
    return host if sep and host else "0.0.0.0"


def serve_metrics(port: int, host: str) -> MetricsEndpoint:
    """Start serving ``/metrics`` on ``host:port``; OSError when the port is taken."""
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise OSError(f"could not serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    log.info("metrics endpoint serving", extra={"address": f"{host}:{server.server_port}"})
    return MetricsEndpoint(server, thread)
