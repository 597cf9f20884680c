"""Admission: what an execution must reserve of its budgets before a provider is called, and
what the database answered. Pure apart from
`count_verdict`'s metrics; the reservation itself is one statement
(`repository.insert_running`, over the `budget_admit` function of migration 007).

The reservation is the worst case, so that admitted executions can never spend past a limit
together: the input at an upper bound of its tokens, plus `max_tokens` of output, priced at
the most expensive of the routes that may run. The input bound is one token per UTF-8 byte
of the messages plus a per-message allowance for the chat template: the providers' tokenizers
are byte-level BPE, whose tokens are each at least one byte. It is about four times the usual
count for English text, and is released at finish, when the actual cost is charged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from execution_service.errors import BudgetExceeded, PriceUnknown, RateLimited
from execution_service.plan import ExecutionPlan
from execution_service.pricing import PriceTable, cost_nanos
from execution_service.providers.base import ChatMessage
from execution_service.token_estimate import ResolvedUsage
from service_kit import metrics
from service_kit.errors import ServiceError

__all__ = [
    "TOKENS_PER_MESSAGE",
    "AdmissionRequest",
    "Reservation",
    "RouteCost",
    "Verdict",
    "bounded",
    "count_verdict",
    "input_token_bound",
    "refusal",
    "reservation",
]

# Chat-template tokens around each message (role markers, separators): a generous allowance.
TOKENS_PER_MESSAGE = 8

BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
PRICE_UNKNOWN = "PRICE_UNKNOWN"
RATE_LIMITED = "RATE_LIMITED"


@dataclass(frozen=True)
class RouteCost:
    """One route that may run: its provider, model and output limit (None: the default)."""

    provider: str
    model: str
    max_tokens: int | None


@dataclass(frozen=True)
class Reservation:
    """The worst case of an execution: `amount_nanos` over its priced routes, whether some
    route has no known price, and the tokens it may use (for tokens-per-minute limits)."""

    amount_nanos: int
    unpriced: bool
    tokens: int


def input_token_bound(messages: Iterable[ChatMessage]) -> int:
    """An upper bound of the input tokens of `messages` (see the module docstring)."""
    return sum(
        len(m.content.encode("utf-8", "surrogatepass")) + TOKENS_PER_MESSAGE for m in messages
    )


def reservation(
    prices: PriceTable, routes: Sequence[RouteCost], input_tokens: int, default_max_tokens: int
) -> Reservation:
    """The worst case over `routes` (every route that may run): the largest cost of
    `input_tokens` in plus the route's `max_tokens` (else `default_max_tokens`) out, and the
    largest token count. A route without a known price makes the reservation `unpriced`
    (refused by an enforced spend limit unless the budget allows unpriced models)."""
    amount, unpriced, tokens = 0, False, 0
    for route in routes:
        output = route.max_tokens if route.max_tokens is not None else default_max_tokens
        tokens = max(tokens, input_tokens + output)
        usage = ResolvedUsage(input_tokens, output, 0, 0, estimated=True)
        cost = cost_nanos(prices, route.provider, route.model, usage)
        if cost is None:
            unpriced = True
        else:
            amount = max(amount, cost)
    return Reservation(amount, unpriced, tokens)


@dataclass(frozen=True)
class AdmissionRequest:
    """What `insert_running` reserves with the RUNNING row: the reservation for the
    execution's workspace and agent, its periods decided by `time` (the execution's
    create_time, so that a test's clock decides the period)."""

    reservation: Reservation
    time: dt.datetime | None = None


@dataclass(frozen=True)
class Verdict:
    """The database's answer. Refused: `reason` (PRICE_UNKNOWN, BUDGET_EXCEEDED,
    RATE_LIMITED) with the refusing budget's name, limit, spent and period end, and for
    RATE_LIMITED the seconds until a retry may fit. `alerts`: what ALERT_ONLY budgets would
    have refused. `enforced`: an ENFORCE spend limit applied (the output is then capped at the
    reserved `max_tokens`, so the worst case is a real bound). `budgeted`: some budget
    applies to the execution's workspace and agent (it held a reservation, or refused)."""

    ok: bool = True
    reason: str = ""
    budget: str = ""
    limit_nanos: int | None = None
    spent_nanos: int | None = None
    period_end: dt.datetime | None = None
    retry_after: float = 0.0
    alerts: tuple[str, ...] = ()
    enforced: bool = False
    budgeted: bool = False


ADMITTED = Verdict()


def bounded(plan: ExecutionPlan, verdict: Verdict, default_max_tokens: int) -> ExecutionPlan:
    """The plan to run once admitted: under an enforced spend limit, an output left unbounded
    (OpenAI gets no limit unless asked) is capped at the `max_tokens` the reservation
    assumed, so the reservation really is the worst case."""
    if not verdict.enforced or all(r.chat.max_tokens is not None for r in plan.routes):
        return plan
    routes = tuple(
        r
        if r.chat.max_tokens is not None
        else dataclasses.replace(r, chat=dataclasses.replace(r.chat, max_tokens=default_max_tokens))
        for r in plan.routes
    )
    return dataclasses.replace(plan, routes=routes)


def refusal(verdict: Verdict, provider: str, model: str) -> ServiceError:
    """The error a refused admission ends the call with."""
    if verdict.reason == PRICE_UNKNOWN:
        return PriceUnknown(verdict.budget, provider, model)
    if verdict.reason == BUDGET_EXCEEDED:
        end = verdict.period_end.isoformat().replace("+00:00", "Z") if verdict.period_end else ""
        return BudgetExceeded(
            verdict.budget, verdict.limit_nanos or 0, verdict.spent_nanos or 0, end
        )
    return RateLimited(verdict.budget, verdict.retry_after)


def count_verdict(verdict: Verdict) -> None:
    """Refusals by reason; what ALERT_ONLY budgets would have refused, by reason."""
    if not verdict.ok:
        metrics.ADMISSION_REFUSALS.labels(verdict.reason).inc()
    for reason in verdict.alerts:
        metrics.BUDGET_ALERTS.labels(reason).inc()
