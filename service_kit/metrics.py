"""Every Prometheus metric of both services, and the /metrics endpoint that serves them.

The metrics are module-level objects in prometheus_client's default registry, created once
per process on first import: a deployed process runs one service and shows that service's
series; tests run several servers in one process and share these objects instead of
registering duplicates (which prometheus_client refuses).

Worker processes (``*_WORKERS`` > 1) run in prometheus_client's multiprocess mode: the
supervisor gives them a private ``PROMETHEUS_MULTIPROC_DIR`` (read when prometheus_client is
imported), each worker writes its values to memory-mapped files there, and the supervisor
serves one ``/metrics`` that adds the workers up (``serve_pod_metrics``). Counters and
histograms of a worker that died keep their totals, so rates never go backwards; each gauge
names how its workers' values combine (``multiprocess_mode``), and a dead worker's gauges are
dropped. A single process keeps the ordinary in-memory values.

Labels take values from small fixed sets only (method names, status codes, providers, price
families, reasons, states), never text a caller chooses freely, and never a secret.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

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
    "(health checks then answer NOT_SERVING). With several workers: 1 only while every live "
    "worker reaches it.",
    ["grpc_service"],
    multiprocess_mode="livemin",
)

# --- key vault --------------------------------------------------------------------------

KEY_REVEALS = Counter(
    "keyvault_reveals_total",
    "RevealApiKey calls by outcome: revealed, denied, not_found, undecryptable, "
    "audit_unavailable, unavailable, error.",
    ["outcome"],
)
REVEAL_BATCH_SIZE = Histogram(
    "keyvault_reveal_batch_size",
    "Reveals (each with its audit record) per statement: 1 for a reveal that found none in "
    "flight, more for those that queued behind one.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
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
EXECUTION_FALLBACKS = Counter(
    "execution_fallbacks_total",
    "Executions moved on from a failed route to the next one, by the failed route's provider "
    "and the failure's reason (API_KEY_NOT_CONFIGURED: the route was skipped).",
    ["provider", "reason"],
)
PROVIDER_RETRIES = Counter(
    "execution_provider_retries_total",
    "Provider requests repeated after a failure, by the failure's reason "
    "(PROVIDER_AUTH_FAILED: a cached key was refused and fetched again).",
    ["provider", "reason"],
)
EXECUTIONS_IN_FLIGHT = Gauge(
    "execution_executions_in_flight",
    "Executions this process (with several workers: the live workers together) has started "
    "and not yet finished.",
    multiprocess_mode="livesum",
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
    "Finished executions whose terminal record the database refused, being retried (a dead "
    "worker's are lost, so only live workers count).",
    multiprocess_mode="livesum",
)
EXECUTION_RECORDS_LOST = Counter(
    "execution_records_lost_total",
    "Terminal records given up after EXECUTION_FINISH_RETRY_SECONDS or at shutdown, by the "
    "state they would have recorded; their rows are left to the sweeper (INTERRUPTED).",
    ["provider", "state"],
)
RECORD_BATCH_SIZE = Histogram(
    "execution_record_batch_size",
    "Terminal records written per statement: 1 for a finish that found no write in flight, "
    "more for the finishes that queued behind one (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
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

ADMISSION_REFUSALS = Counter(
    "execution_admission_refusals_total",
    "Executions refused by a budget or rate limit before any provider call, by reason "
    "(BUDGET_EXCEEDED, PRICE_UNKNOWN, RATE_LIMITED).",
    ["reason"],
)
BUDGET_ALERTS = Counter(
    "execution_budget_alerts_total",
    "Executions an ALERT_ONLY budget would have refused (they ran), by the reason it would "
    "have given.",
    ["reason"],
)
# Bounded: only the MAX_BUDGET_SERIES workspace-wide budgets with a spend limit that have
# used the largest share of it are shown (budget = the budget's resource name); the rest are
# counted in BUDGETS_NOT_SHOWN. Every process reads the same rows, so workers agree.
BUDGET_SPENT = Gauge(
    "execution_budget_spent_nanodollars",
    "Spent in the current period of a workspace budget (the most used ones, see "
    "execution_budgets_not_shown), nano-dollars.",
    ["budget"],
    multiprocess_mode="livemax",
)
BUDGET_REMAINING = Gauge(
    "execution_budget_remaining_nanodollars",
    "Limit minus spent minus reserved in the current period of a workspace budget, "
    "nano-dollars (0 when used up).",
    ["budget"],
    multiprocess_mode="livemax",
)
BUDGETS_NOT_SHOWN = Gauge(
    "execution_budgets_not_shown",
    "Workspace budgets left out of the per-budget series (past the most used ones).",
    multiprocess_mode="livemax",
)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: prometheus_client's `labels` checks and
    joins the values and takes a lock on every call (several times per execution). The
    label sets are small and fixed (see above), so the cache stays small."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


def observe_rpc(method: str, code: grpc.StatusCode, seconds: float) -> None:
    """The interceptor's hook: one finished call of ``/package.Service/Method``."""
    service, _, name = method.lstrip("/").partition("/")
    child(RPCS_HANDLED, service, name, code.name).inc()
    child(RPC_SECONDS, service, name).observe(seconds)


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


def serve_metrics(
    port: int, host: str, registry: CollectorRegistry | None = None
) -> MetricsEndpoint:
    """Start serving ``/metrics`` on ``host:port`` (the process's own metrics, or those
    ``registry`` collects); OSError when the port is taken."""
    try:
        if registry is None:
            server, thread = start_http_server(port, addr=host)
        else:
            server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(f"could not serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    log.info("metrics endpoint serving", extra={"address": f"{host}:{server.server_port}"})
    return MetricsEndpoint(server, thread)


# --- several workers, one scrape ----------------------------------------------------------

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class PodMetrics:
    """A supervisor's view of its workers' metrics: the directory they write to, and the
    endpoint (if any) that serves their sum."""

    directory: str
    endpoint: MetricsEndpoint | None

    @property
    def worker_env(self) -> dict[str, str]:
        """What a worker's environment needs so that its metrics land in the directory."""
        return {MULTIPROCESS_ENV: self.directory}

    def worker_exited(self, pid: int) -> None:
        """Drop the live-only gauges of a worker that has exited (its counters stay)."""
        mark_process_dead(pid, self.directory)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def serve_pod_metrics(service: str, port: int, host: str) -> PodMetrics:
    """A fresh private directory for the workers' metric files and, when ``port`` > 0,
    ``/metrics`` on ``host:port`` adding up every worker's values."""
    directory = tempfile.mkdtemp(prefix=f"{service}-metrics-")
    if not port:
        return PodMetrics(directory, None)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    try:
        return PodMetrics(directory, serve_metrics(port, host, registry))
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
