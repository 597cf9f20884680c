"""The execution service's domain errors. service_kit.interceptor maps them to gRPC status;
each carries the execution's name (ErrorInfo metadata `execution`) when a row exists."""

from __future__ import annotations

import grpc

from service_kit.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

DOMAIN = "execution.agents.internal"


class ExecutionNotFound(NotFound):
    default_reason = "EXECUTION_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} does not exist", metadata={"execution": name})


class ExecutionInProgress(AlreadyExists):
    default_reason = "EXECUTION_IN_PROGRESS"

    def __init__(self, name: str, request_id: str) -> None:
        super().__init__(
            f"request id {request_id!r} is already running as {name}",
            metadata={"execution": name},
        )


class ExecutionAlreadyFinished(FailedPrecondition):
    default_reason = "EXECUTION_ALREADY_FINISHED"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} has already finished; only a running execution can be cancelled",
            metadata={"execution": name},
        )


class CancelledByRequest(ServiceError):
    """How a cancelled execution's Execute stream ends (its record is CANCELLED)."""

    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED_BY_REQUEST"

    def __init__(self, name: str, caller: str) -> None:
        super().__init__(
            f"{name} was cancelled at the request of {caller}",
            metadata={"execution": name, "cancelled_by": caller},
        )


class RequestIdReused(FailedPrecondition):
    """A request id already taken by a different request (its hash differs). Not
    INVALID_ARGUMENT: the request is valid on its own, and is refused only because of what
    the id already holds; the caller's fix is a new request id."""

    default_reason = "REQUEST_ID_REUSED"

    def __init__(self, name: str, request_id: str) -> None:
        super().__init__(
            f"request id {request_id!r} was already used for a different request, {name}; "
            "send this request with a new request id",
            metadata={"execution": name, "request_id": request_id},
        )


class AgentNotFound(NotFound):
    default_reason = "AGENT_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} does not exist", metadata={"agent": name})


class AgentAlreadyExists(AlreadyExists):
    default_reason = "AGENT_ALREADY_EXISTS"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} already exists", metadata={"agent": name})


class EtagMismatch(ServiceError):
    """The resource changed since the caller read it (optimistic concurrency): read it again."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ETAG_MISMATCH"

    def __init__(self, name: str, *, kind: str = "agent") -> None:
        super().__init__(
            f"{name} has changed since the given etag was read; get it again and retry",
            metadata={kind: name},
        )


class AgentConcurrentlyModified(ServiceError):
    """An update without an etag lost the race to other writers on every attempt."""

    code = grpc.StatusCode.ABORTED
    default_reason = "AGENT_CONCURRENTLY_MODIFIED"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} kept changing while this call ran; retry it", metadata={"agent": name}
        )


class InputSchemaViolation(ServiceError):
    """An agent's input breaks its input schema: one field violation per error (the first
    `shown`), each named by its JSON pointer. The message names only the first two, so
    that the status stays small (it travels in trailers, which peers cap at 8 KB)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INPUT_SCHEMA_VIOLATION"

    def __init__(self, violations: list[FieldViolation], *, shown: int) -> None:
        named = "; ".join(f"{v.field}: {v.description}" for v in violations[:2])
        if len(violations) > 2:
            named += f" (and {len(violations) - 2} more)"
        listed = violations[:shown]
        if len(violations) > shown:
            more = len(violations) - shown
            listed.append(FieldViolation("input", f"and {more} more violations not listed"))
        super().__init__(
            f"the input does not match the agent's input schema: {named}", violations=listed
        )


class KeyVaultUnavailable(Unavailable):
    default_reason = "KEYVAULT_UNAVAILABLE"


class ApiKeyNotConfigured(FailedPrecondition):
    default_reason = "API_KEY_NOT_CONFIGURED"


class ProviderRejectedRequest(ServiceError):
    """The provider refused the request itself (400/404/422: unknown model, bad settings)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "PROVIDER_BAD_REQUEST"


# How a provider failure (reason from providers.errors.ErrorReason) reaches the caller.
_PROVIDER_STATUS: dict[str, type[ServiceError]] = {
    "PROVIDER_AUTH_FAILED": FailedPrecondition,
    "PROVIDER_PERMISSION_DENIED": FailedPrecondition,
    "PROVIDER_BAD_REQUEST": ProviderRejectedRequest,
    "PROVIDER_CONTEXT_WINDOW_EXCEEDED": ProviderRejectedRequest,
    # The key's base URL points where this service may not connect (egress policy).
    "PROVIDER_DESTINATION_FORBIDDEN": FailedPrecondition,
    "PROVIDER_RATE_LIMITED": ResourceExhausted,
    "PROVIDER_QUOTA_EXCEEDED": ResourceExhausted,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    # The answer came, but not the structured output asked for: retrying the same request is
    # not the fix (the error message names the first violations; the record has them all).
    "OUTPUT_SCHEMA_VIOLATION": FailedPrecondition,
    "OUTPUT_REFUSED": FailedPrecondition,
}


def execution_failed(reason: str, message: str, execution_name: str) -> ServiceError:
    """The error an Execute stream ends with once its FAILED row is recorded."""
    cls = _PROVIDER_STATUS.get(reason, Unavailable)
    metadata = {"execution": execution_name}
    return cls(message, reason=reason, metadata=metadata)


# --- admission: budgets and rate limits ---------------------------------------------------


class BudgetExceeded(ResourceExhausted):
    """The execution's worst-case cost does not fit in a budget's period. Recorded FAILED
    (the metadata names it, with the limit, the amount spent and when the period ends)."""

    default_reason = "BUDGET_EXCEEDED"

    def __init__(self, budget: str, limit_nanos: int, spent_nanos: int, period_end: str) -> None:
        super().__init__(
            f"{budget} does not have room for this execution's worst-case cost: "
            f"{spent_nanos} of {limit_nanos} nano-dollars spent in the period ending {period_end}",
            metadata={
                "budget": budget,
                "limit_nanos": str(limit_nanos),
                "spent_nanos": str(spent_nanos),
                "period_end": period_end,
            },
        )


class PriceUnknown(FailedPrecondition):
    """An enforced budget cannot bound the cost of a model without a known price."""

    default_reason = "PRICE_UNKNOWN"

    def __init__(self, budget: str, provider: str, model: str) -> None:
        super().__init__(
            f"{budget} enforces a spend limit and {provider} model {model!r} has no known "
            "price; use a priced model, or allow unpriced models on the budget",
            metadata={"budget": budget, "provider": provider, "model": model},
        )


class RateLimited(ResourceExhausted):
    """A budget's requests-per-minute or tokens-per-minute bucket is empty: retry after
    `retry_delay` seconds (google.rpc.RetryInfo). Nothing is recorded."""

    default_reason = "RATE_LIMITED"

    def __init__(self, budget: str, retry_delay: float) -> None:
        super().__init__(
            f"{budget} rate limit reached; retry in {retry_delay:.3f} s",
            metadata={"budget": budget, "retry_after_seconds": f"{retry_delay:.3f}"},
        )
        self.retry_delay = retry_delay


class BudgetNotFound(NotFound):
    default_reason = "BUDGET_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} does not exist", metadata={"budget": name})


class BudgetAlreadyExists(AlreadyExists):
    default_reason = "BUDGET_ALREADY_EXISTS"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} already exists", metadata={"budget": name})


class BudgetConcurrentlyModified(ServiceError):
    code = grpc.StatusCode.ABORTED
    default_reason = "BUDGET_CONCURRENTLY_MODIFIED"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} kept changing while this call ran; retry it", metadata={"budget": name}
        )
