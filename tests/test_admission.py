"""The worst case an execution reserves (pure): the input bound, the most expensive route,
unknown prices, and the output cap under an enforced spend limit."""

from __future__ import annotations

import dataclasses

from execution_service.admission import (
    ADMITTED,
    RouteCost,
    Verdict,
    bounded,
    input_token_bound,
    refusal,
    reservation,
)
from execution_service.errors import BudgetExceeded, PriceUnknown, RateLimited
from execution_service.plan import ExecutionPlan, PlannedRoute
from execution_service.pricing import load_prices
from execution_service.providers.base import ChatMessage, ChatRequest

PRICES = load_prices()


def test_the_input_bound_is_a_token_per_byte_plus_a_per_message_allowance() -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "héllo")]
    assert input_token_bound(messages) == (9 + 8) + (6 + 8)  # é is two bytes
    assert input_token_bound([]) == 0


def test_the_most_expensive_route_decides() -> None:
    cheap = RouteCost("openai", "gpt-4o-mini", 100)  # 150 / 600 nano-dollars per token
    dear = RouteCost("anthropic", "claude-3-5-sonnet-20241022", None)  # 3000 / 15000
    only_cheap = reservation(PRICES, [cheap], 10, default_max_tokens=50)
    assert only_cheap.amount_nanos == 10 * 150 + 100 * 600
    assert only_cheap.tokens == 110 and not only_cheap.unpriced
    both = reservation(PRICES, [cheap, dear], 10, default_max_tokens=50)
    assert both.amount_nanos == 10 * 3000 + 50 * 15000  # the default max_tokens applies
    assert both.tokens == 110  # the largest count, from the cheap route's 100


def test_a_route_without_a_price_makes_it_unpriced_not_free() -> None:
    unknown = RouteCost("anthropic", "gpt-4o-mini", 10)  # priced for OpenAI only
    alone = reservation(PRICES, [unknown], 5, default_max_tokens=50)
    assert alone.unpriced and alone.amount_nanos == 0 and alone.tokens == 15
    mixed = reservation(PRICES, [unknown, RouteCost("openai", "gpt-4o-mini", 10)], 5, 50)
    assert mixed.unpriced and mixed.amount_nanos == 5 * 150 + 10 * 600


def _plan(*max_tokens: int | None) -> ExecutionPlan:
    chat = ChatRequest(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),))
    routes = tuple(
        PlannedRoute("openai", dataclasses.replace(chat, max_tokens=n)) for n in max_tokens
    )
    return ExecutionPlan("ws", "a", routes, None)


def test_an_enforced_limit_caps_an_unbounded_output_at_what_was_reserved() -> None:
    enforced = Verdict(enforced=True)
    assert bounded(_plan(None), enforced, 64).chat.max_tokens == 64
    assert bounded(_plan(10), enforced, 64).chat.max_tokens == 10
    assert bounded(_plan(None), ADMITTED, 64).chat.max_tokens is None
    each = bounded(_plan(10, None), enforced, 64)  # every route that may run is capped
    assert [r.chat.max_tokens for r in each.routes] == [10, 64]


def test_refusals_become_their_errors() -> None:
    budget = "workspaces/w/budgets/b"
    price = refusal(Verdict(ok=False, reason="PRICE_UNKNOWN", budget=budget), "openai", "x")
    assert isinstance(price, PriceUnknown) and price.metadata["model"] == "x"
    rate = refusal(Verdict(ok=False, reason="RATE_LIMITED", budget=budget, retry_after=1.5), "", "")
    assert isinstance(rate, RateLimited) and rate.retry_delay == 1.5
    verdict = Verdict(
        ok=False, reason="BUDGET_EXCEEDED", budget=budget, limit_nanos=9, spent_nanos=4
    )
    exceeded = refusal(verdict, "openai", "gpt-4o-mini")
    assert isinstance(exceeded, BudgetExceeded)
    assert exceeded.metadata == {
        "budget": budget,
        "limit_nanos": "9",
        "spent_nanos": "4",
        "period_end": "",
    }
