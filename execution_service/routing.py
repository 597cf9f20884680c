"""Fallback along an execution's routes: which failures move it on to the next route.

Pure rules; the engine's route loop (`engine.ExecutionEngine._stream`) applies them. A route
is one provider and model, tried with its own retries; when it fails for a reason the plan's
triggers name, and no output has reached the caller, the next route runs. A route whose
provider has no key in the workspace is skipped whatever the triggers say, unless it is the
last. The deadline covers the whole chain: no route starts once it has passed.
"""

from __future__ import annotations

from enum import StrEnum

from execution_service.providers.errors import ErrorReason

# The key vault has no key for the route's provider in the workspace.
KEY_NOT_CONFIGURED = "API_KEY_NOT_CONFIGURED"
MAX_ROUTES = 4


class Trigger(StrEnum):
    """A kind of failure that may move an execution to its next route (FallbackTrigger)."""

    RATE_LIMITED = "RATE_LIMITED"
    OVERLOADED = "OVERLOADED"
    SERVER_ERROR = "SERVER_ERROR"
    UNREACHABLE = "UNREACHABLE"
    CONTEXT_WINDOW_EXCEEDED = "CONTEXT_WINDOW_EXCEEDED"
    AUTH_FAILED = "AUTH_FAILED"


# Authentication and permission errors are left out: a wrong key is better fixed than hidden.
DEFAULT_TRIGGERS = frozenset(
    {
        Trigger.RATE_LIMITED,
        Trigger.OVERLOADED,
        Trigger.SERVER_ERROR,
        Trigger.UNREACHABLE,
        Trigger.CONTEXT_WINDOW_EXCEEDED,
    }
)

_TRIGGER_OF_REASON: dict[str, Trigger] = {
    ErrorReason.PROVIDER_RATE_LIMITED: Trigger.RATE_LIMITED,
    ErrorReason.PROVIDER_QUOTA_EXCEEDED: Trigger.RATE_LIMITED,  # a 429 as well
    ErrorReason.PROVIDER_OVERLOADED: Trigger.OVERLOADED,
    ErrorReason.PROVIDER_SERVER_ERROR: Trigger.SERVER_ERROR,
    ErrorReason.PROVIDER_TIMEOUT: Trigger.SERVER_ERROR,
    ErrorReason.PROVIDER_STREAM_ERROR: Trigger.SERVER_ERROR,
    ErrorReason.PROVIDER_UNREACHABLE: Trigger.UNREACHABLE,
    ErrorReason.PROVIDER_CONTEXT_WINDOW_EXCEEDED: Trigger.CONTEXT_WINDOW_EXCEEDED,
    ErrorReason.PROVIDER_AUTH_FAILED: Trigger.AUTH_FAILED,
    ErrorReason.PROVIDER_PERMISSION_DENIED: Trigger.AUTH_FAILED,
}


def falls_back(reason: str, triggers: frozenset[Trigger]) -> bool:
    """Whether a route that failed with `reason` (after its own retries) hands over to the
    next route. The caller checks the rest: a next route exists, no output was sent, the
    deadline has not passed."""
    if reason == KEY_NOT_CONFIGURED:
        return True
    return _TRIGGER_OF_REASON.get(reason) in triggers
