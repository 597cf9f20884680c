"""The execution record as the domain sees it, independent of SQL and protobuf."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from execution_service.schemas import SchemaViolation

RUNNING, SUCCEEDED, FAILED, CANCELLED = "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

# Reasons the service itself gives a FAILED execution. INTERRUPTED is the sweeper's verdict on
# a row whose owner stopped renewing its lease; the owner's own record replaces it if it lands
# later. SHUTDOWN: the stream was still running when the server's drain period ended.
INTERRUPTED = "INTERRUPTED"
SHUTDOWN = "SHUTDOWN"
# A CANCELLED execution's reason when CancelExecution ended it (the message names who asked).
CANCELLED_BY_REQUEST = "CANCELLED_BY_REQUEST"
# The output came back but is not the structured output asked for: not JSON, or JSON that
# breaks the output schema; or the model refused to answer. Counted apart from provider
# failures in the agent statistics.
OUTPUT_SCHEMA_VIOLATION = "OUTPUT_SCHEMA_VIOLATION"
OUTPUT_REFUSED = "OUTPUT_REFUSED"
OUTPUT_FAILURES = (OUTPUT_SCHEMA_VIOLATION, OUTPUT_REFUSED)


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True)
class ExecutionError:
    reason: str
    message: str
    provider_status: int = 0
    violations: tuple[SchemaViolation, ...] = ()


@dataclass(frozen=True)
class RouteAttempt:
    """One route's try within an execution (its own retries included): what the provider
    answered, when, how long it took, and what it billed."""

    route: int  # index into the plan's routes
    provider: str
    model: str
    start_time: dt.datetime
    latency_ms: int
    http_status: int = 0  # the last HTTP status seen; 0 when none (unreachable, skipped)
    reason: str = ""  # why the route failed or was skipped; "" for the route that answered
    usage: Usage = Usage()
    cost_nanos: int | None = 0  # None: the model's price is unknown


@dataclass(frozen=True)
class Execution:
    id: uuid.UUID
    workspace: str
    agent_id: str
    provider: str
    model: str
    state: str
    create_time: dt.datetime
    request_id: str | None = None
    # The hash of the request that took `request_id` (plan.request_hash); None without a
    # request id, and on rows recorded before hashes were kept.
    request_hash: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    usage: Usage = Usage()
    cost_nanos: int | None = None
    attempts: int = 0
    error: ExecutionError | None = None
    finish_reason: str = ""
    output_text: str | None = None
    first_token_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    agent: str = ""  # the agent's name when run by name
    agent_etag: str = ""
    output: Any = None  # the parsed structured output (JSON), when there is one
    output_valid: bool | None = None  # None: no output schema, or no complete output
    cancelled_by: str = ""  # the caller identity whose CancelExecution ended it
    route_index: int = 0  # the route that produced the answer (0: the first)
    route_attempts: tuple[RouteAttempt, ...] = ()

    @property
    def name(self) -> str:
        return f"workspaces/{self.workspace}/executions/{self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Outcome:
    """What a finished execution records."""

    state: str
    usage: Usage
    cost_nanos: int | None
    attempts: int
    error: ExecutionError | None
    finish_reason: str
    output_text: str | None
    first_token_time: dt.datetime | None
    end_time: dt.datetime
    output: Any = None
    output_valid: bool | None = None
    cancelled_by: str = ""
    route_index: int = 0
    route_attempts: tuple[RouteAttempt, ...] = ()


@dataclass(frozen=True)
class AgentStats:
    agent_id: str
    total: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nanos: int
    unknown_cost_count: int
    latency_p50: float | None  # seconds
    latency_p95: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    output_invalid: int = 0
    fallback: int = 0  # answered by a fallback route (route_index > 0)

    @property
    def success_rate(self) -> float:
        finished = self.succeeded + self.failed + self.cancelled
        return self.succeeded / finished if finished else 0.0
