"""What an execution's end tells operators: the metrics it moves and one log line.

Counts, names, states and reasons only: never the prompt, the output or the key.
"""

from __future__ import annotations

import datetime as dt
import logging

from execution_service.model import Execution, Outcome
from service_kit import metrics

log = logging.getLogger(__name__)

OTHER_MODEL = "other"  # the metrics' model label for a model without a listed price


def execution_finished(execution: Execution, outcome: Outcome, *, model_family: str | None) -> None:
    """Record a finished execution. ``model_family`` is the model's price family (a bounded
    label set, unlike the model ids callers may send), None when it has no listed price."""
    provider, model = execution.provider, model_family or OTHER_MODEL
    reason = outcome.error.reason if outcome.error is not None else ""
    usage = outcome.usage
    metrics.child(metrics.EXECUTIONS_FINISHED, provider, outcome.state, reason).inc()
    for kind, count in (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_read", usage.cache_read_tokens),
        ("cache_write", usage.cache_write_tokens),
    ):
        metrics.child(metrics.TOKENS, provider, model, kind).inc(count)
    if outcome.cost_nanos:
        metrics.child(metrics.COST_NANODOLLARS, provider, model).inc(outcome.cost_nanos)

    ttft = outcome.first_token_time
    if ttft is not None:
        seconds = (ttft - execution.create_time).total_seconds()
        metrics.child(metrics.TIME_TO_FIRST_TOKEN, provider).observe(max(seconds, 0.0))
    if not log.isEnabledFor(logging.INFO):  # LOG_LEVEL=WARNING: skip building the record
        return
    log.info(
        "execution finished",
        extra={
            "execution": execution.name,
            "agent_id": execution.agent_id,
            "provider": provider,
            "model": execution.model,
            "state": outcome.state,
            "reason": reason or None,
            "attempts": outcome.attempts,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "usage_estimated": usage.estimated,
            "cost_nanos": outcome.cost_nanos,
            "latency_ms": _millis(outcome.end_time - execution.create_time),
            "ttft_ms": _millis(ttft - execution.create_time) if ttft is not None else None,
        },
    )


def _millis(delta: dt.timedelta) -> int:
    return max(0, round(delta.total_seconds() * 1000))
