"""Model prices and the cost of an execution, in exact decimal arithmetic.

Prices live in a JSON data file (the packaged ``pricing.json`` by default; an operator's
override file is passed as a path) as USD per million tokens, written as decimal strings so
no binary float ever touches money. Costs are integer nano-dollars: every listed price is a
whole number of nano-dollars per token (USD 0.075 per million = 75 nano-dollars per token).

Model ids map to a price family by exact id, else by the longest family that the id extends
with a date or alias suffix: ``gpt-4o-2024-08-06`` -> ``gpt-4o``,
``claude-3-5-sonnet-20241022`` -> ``claude-3-5-sonnet``, ``claude-3-opus-latest`` ->
``claude-3-opus``. The suffix must be such a tag, not any text, so that
``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini`` and an unlisted variant (``gpt-4.1-mini``,
``gpt-4o-audio-preview``, ``claude-opus-4-7``) has an unknown cost rather than its parent's.

Cache tokens without a listed cache price are charged at the input price: OpenAI bills
cached tokens at the full input rate where it offers no discount, and for Anthropic it is the
closest listed figure (an estimate on the low side for cache writes, which cost more).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from importlib import resources
from typing import Any, Protocol

__all__ = [
    "ModelPrice",
    "PriceTable",
    "PricingError",
    "TokenUsage",
    "cost_nanos",
    "load_prices",
    "parse_prices",
]

# Nano-dollars per token for a price in USD per million tokens: 10**9 / 10**6.
_NANOS_PER_TOKEN_PER_USD_PER_MILLION = Decimal(1000)

# What may follow "<family>-" in a dated or aliased model id: OpenAI's YYYY-MM-DD,
# Anthropic's YYYYMMDD, Anthropic's moving "latest" alias.
_VERSION_SUFFIX = re.compile(r"\d{4}-\d{2}-\d{2}|\d{8}|latest")


class PricingError(ValueError):
    """The price file is missing, not JSON, or has an invalid entry."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens for one model family; None where the provider lists no price."""

    provider: str
    family: str
    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    cache_write: Decimal | None


@dataclass(frozen=True)
class PriceTable:
    # Keyed by (provider, family): a model is priced by the provider that serves it, so an
    # OpenAI model id sent through another provider has no price rather than OpenAI's.
    families: Mapping[tuple[str, str], ModelPrice]
    # Each provider's families, longest first, so a dated id finds its most specific family;
    # worked out once (a lookup runs several times per execution).
    _by_length: Mapping[str, tuple[ModelPrice, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ordered: dict[str, list[ModelPrice]] = {}
        for price in sorted(self.families.values(), key=lambda p: len(p.family), reverse=True):
            ordered.setdefault(price.provider, []).append(price)
        object.__setattr__(self, "_by_length", {k: tuple(v) for k, v in ordered.items()})

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price of ``model`` served by ``provider``: exact family id, else the longest
        family it extends with a version suffix (see the module docstring), else None."""
        model = model.strip().lower()
        exact = self.families.get((provider, model))
        if exact is not None:
            return exact
        for price in self._by_length.get(provider, ()):
            prefix = price.family + "-"
            if model.startswith(prefix) and _VERSION_SUFFIX.fullmatch(model[len(prefix) :]):
                return price
        return None


class TokenUsage(Protocol):
    """Final token counts; ``input_tokens`` excludes cached tokens (see providers.UsageReport)."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """Read a price file; the packaged ``pricing.json`` when ``path`` is None."""
    try:
        if path is None:
            text = resources.files("execution_service").joinpath("pricing.json").read_text("utf-8")
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        # parse_float=Decimal keeps a price written as a bare JSON number exact as well.
        document = json.loads(text, parse_float=Decimal)
    except (OSError, ValueError) as exc:
        raise PricingError(f"cannot read price file {path or 'pricing.json'}: {exc}") from exc
    return parse_prices(document)


def parse_prices(document: Any) -> PriceTable:
    """Validate a price document (the JSON shape of ``pricing.json``) into a PriceTable."""
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict) or not models:
        raise PricingError("price file has no 'models' object")
    families: dict[tuple[str, str], ModelPrice] = {}
    for family, entry in models.items():
        if not isinstance(entry, dict):
            raise PricingError(f"price entry {family!r} is not an object")
        provider = entry.get("provider")
        if not isinstance(provider, str) or not provider:
            raise PricingError(f"price entry {family!r} lacks 'provider' (openai, anthropic)")
        families[(provider, family.lower())] = ModelPrice(
            provider=provider,
            family=family.lower(),
            input=_price(family, entry, "input", required=True) or Decimal(0),
            output=_price(family, entry, "output", required=True) or Decimal(0),
            cache_read=_price(family, entry, "cache_read", required=False),
            cache_write=_price(family, entry, "cache_write", required=False),
        )
    return PriceTable(families)


def _price(family: str, entry: Mapping[str, Any], field: str, *, required: bool) -> Decimal | None:
    raw = entry.get(field)
    if raw is None:
        if required:
            raise PricingError(f"price entry {family!r} lacks {field!r}")
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, Decimal)):
        raise PricingError(f"price {family!r}.{field} must be a decimal string")
    try:
        value = Decimal(raw)
    except InvalidOperation as exc:
        raise PricingError(f"price {family!r}.{field} is not a decimal: {raw!r}") from exc
    if not value.is_finite() or value < 0:
        raise PricingError(f"price {family!r}.{field} must be a non-negative number")
    return value


def cost_nanos(prices: PriceTable, provider: str, model: str, usage: TokenUsage) -> int | None:
    """Cost in integer nano-dollars (USD 1e-9), or None when the model has no known price.

    Exact for every price that is a whole number of nano-dollars per token (all listed ones);
    a finer price from an override file is rounded once, at the end, half up.
    """
    price = prices.lookup(provider, model)
    if price is None:
        return None
    cache_read = price.cache_read if price.cache_read is not None else price.input
    cache_write = price.cache_write if price.cache_write is not None else price.input
    with localcontext() as ctx:
        ctx.prec = 60  # far beyond any real count x price: no rounding in the sum
        usd_millionths = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_read_tokens * cache_read
            + usage.cache_write_tokens * cache_write
        )
        nanos = usd_millionths * _NANOS_PER_TOKEN_PER_USD_PER_MILLION
        return int(nanos.to_integral_value(rounding=ROUND_HALF_UP))
