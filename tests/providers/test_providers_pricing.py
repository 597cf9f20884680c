"""Pricing: the packaged table against the list prices, family lookup, exact nano-dollar costs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from execution_service.pricing import PricingError, cost_nanos, load_prices, parse_prices
from execution_service.token_estimate import ResolvedUsage

# The providers' published list prices, typed in by hand so that the data file is checked
# against a second copy: input / output / cache read / cache write, USD per million tokens;
# None = not listed.
LIST_PRICES: dict[str, tuple[str, str, str | None, str | None]] = {
    "gpt-4o": ("2.50", "10.00", "1.25", None),
    "gpt-4o-mini": ("0.15", "0.60", "0.075", None),
    "gpt-4.1": ("2.00", "8.00", "0.50", None),
    "gpt-4-turbo": ("10.00", "30.00", None, None),
    "gpt-4": ("30.00", "60.00", None, None),
    "gpt-3.5-turbo": ("0.50", "1.50", None, None),
    "claude-3-opus": ("15.00", "75.00", "1.50", "18.75"),
    "claude-3-5-sonnet": ("3.00", "15.00", "0.30", "3.75"),
    "claude-sonnet-4": ("3.00", "15.00", "0.30", "3.75"),
    "claude-3-haiku": ("0.25", "1.25", "0.03", "0.30"),
    "claude-opus-4": ("15.00", "75.00", "1.50", "18.75"),
    "claude-opus-4-1": ("15.00", "75.00", "1.50", "18.75"),
    "claude-opus-4-5": ("5.00", "25.00", None, None),
    "claude-haiku-4-5": ("1.00", "5.00", None, None),
}

PRICES = load_prices()


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


def _nanos_per_token(usd_per_million: str) -> int:
    value = Decimal(usd_per_million) * 1000
    assert value == value.to_integral_value(), "every list price is whole nanos"
    return int(value)


def test_packaged_table_lists_exactly_the_listed_models() -> None:
    assert set(PRICES.families) == {(_provider(family), family) for family in LIST_PRICES}


@pytest.mark.parametrize("family", sorted(LIST_PRICES))
def test_every_family_costs_exactly_its_list_price(family: str) -> None:
    inp, out, cache_read, cache_write = LIST_PRICES[family]
    usage = Usage(
        input_tokens=1_000, output_tokens=2_000, cache_read_tokens=300, cache_write_tokens=40
    )
    # Cache tokens without a listed price are charged at the input price (documented rule).
    expected = (
        1_000 * _nanos_per_token(inp)
        + 2_000 * _nanos_per_token(out)
        + 300 * _nanos_per_token(cache_read or inp)
        + 40 * _nanos_per_token(cache_write or inp)
    )
    assert cost_nanos(PRICES, _provider(family), family, usage) == expected


def test_one_million_tokens_cost_the_list_price_in_nanos() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert (
        cost_nanos(PRICES, _provider("gpt-4o"), "gpt-4o", usage) == 12_500_000_000
    )  # USD 2.50 + 10.00


def test_smallest_prices_are_exact_per_token() -> None:
    assert (
        cost_nanos(PRICES, _provider("gpt-4o-mini"), "gpt-4o-mini", Usage(cache_read_tokens=1))
        == 75
    )
    assert (
        cost_nanos(
            PRICES, _provider("claude-3-haiku"), "claude-3-haiku", Usage(cache_read_tokens=1)
        )
        == 30
    )
    assert cost_nanos(PRICES, _provider("gpt-4o-mini"), "gpt-4o-mini", Usage(input_tokens=1)) == 150


def test_cache_write_is_charged_at_its_own_price_where_listed() -> None:
    usage = Usage(cache_write_tokens=1_000)
    assert (
        cost_nanos(
            PRICES, _provider("claude-3-5-sonnet-20241022"), "claude-3-5-sonnet-20241022", usage
        )
        == 3_750_000
    )


def test_a_known_model_with_no_tokens_costs_zero_and_an_unknown_one_is_unknown() -> None:
    assert cost_nanos(PRICES, _provider("gpt-4o"), "gpt-4o", Usage()) == 0
    assert (
        cost_nanos(PRICES, _provider("mystery-model-1"), "mystery-model-1", Usage(input_tokens=10))
        is None
    )


def test_resolved_usage_is_accepted_as_usage() -> None:
    usage = ResolvedUsage(10, 20, 0, 0, estimated=True)
    assert cost_nanos(PRICES, "openai", "gpt-4", usage) == 10 * 30_000 + 20 * 60_000


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("claude-3-opus-latest", "claude-3-opus"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("Claude-3-Haiku-20240307", "claude-3-haiku"),
    ],
)
def test_dated_and_aliased_ids_map_to_their_family(model: str, family: str) -> None:
    price = PRICES.lookup(_provider(model), model)
    assert price is not None
    assert price.family == family


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4.1-mini",  # a different, cheaper model: not gpt-4.1's price
        "gpt-4o-audio-preview",
        "gpt-4-1106-preview",
        "claude-sonnet-4-5-20250929",  # not in the table: unknown, not claude-sonnet-4
        "claude-opus-4-7",
        "gpt-4o-",
        "o1",
        "",
    ],
)
def test_unlisted_variants_are_unknown_not_priced_as_their_parent(model: str) -> None:
    assert PRICES.lookup(_provider(model), model) is None


def _provider(model: str) -> str:
    return "anthropic" if model.lower().startswith("claude") else "openai"


def test_a_model_is_priced_by_the_provider_that_serves_it() -> None:
    usage = Usage(input_tokens=1_000)
    assert cost_nanos(PRICES, "openai", "gpt-4o-mini", usage) == 150_000
    # An OpenAI model id sent through Anthropic is not charged at OpenAI's rate.
    assert PRICES.lookup("anthropic", "gpt-4o-mini") is None
    assert cost_nanos(PRICES, "anthropic", "gpt-4o-mini", usage) is None
    assert PRICES.lookup("openai", "claude-3-haiku") is None


def test_override_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "models": {
                    "my-model": {
                        "provider": "openai",
                        "input": "1",
                        "output": "2",
                        "cache_read": None,
                    }
                }
            }
        )
    )
    prices = load_prices(path)
    assert cost_nanos(
        prices, "openai", "my-model-2025-01-01", Usage(input_tokens=3, output_tokens=1)
    ) == (3 * 1000 + 2000)
    assert prices.lookup("openai", "gpt-4o") is None


def test_bare_json_numbers_stay_exact(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"models": {"m": {"provider": "openai", "input": 0.1, "output": 0.3}}}')
    assert (
        cost_nanos(load_prices(path), "openai", "m", Usage(input_tokens=3, output_tokens=1)) == 600
    )


def test_prices_finer_than_a_nano_round_half_up_once() -> None:
    prices = parse_prices(
        {"models": {"m": {"provider": "openai", "input": "0.0005", "output": "0.0015"}}}
    )
    # 1 x 0.5 + 1 x 1.5 nanos = 2.0 exactly: summing before rounding keeps it exact.
    assert cost_nanos(prices, "openai", "m", Usage(input_tokens=1, output_tokens=1)) == 2
    assert cost_nanos(prices, "openai", "m", Usage(input_tokens=1)) == 1  # 0.5 rounds up


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"models": {}},
        {"models": {"m": {"output": "1"}}},
        {"models": {"m": {"input": "x", "output": "1"}}},
        {"models": {"m": {"input": "-1", "output": "1"}}},
        {"models": {"m": {"input": True, "output": "1"}}},
        {"models": {"m": {"input": "1", "output": "NaN"}}},
        {"models": {"m": ["1", "2"]}},
        {"models": {"m": {"input": "1", "output": "1"}}},  # no provider
    ],
)
def test_invalid_price_documents_are_refused(document: object) -> None:
    with pytest.raises(PricingError):
        parse_prices(document)


def test_unreadable_price_file_is_a_pricing_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError):
        load_prices(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PricingError):
        load_prices(bad)
