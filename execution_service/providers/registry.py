"""Provider lookup by name. A third provider is one new module plus one entry here."""

from __future__ import annotations

from .anthropic import AnthropicProvider
from .base import Provider
from .openai import OpenAIProvider

__all__ = ["UnknownProviderError", "get_provider", "provider_names"]


class UnknownProviderError(LookupError):
    """No provider is registered under the name."""


_PROVIDERS: dict[str, Provider] = {
    provider.name: provider for provider in (OpenAIProvider(), AnthropicProvider())
}


def get_provider(name: str) -> Provider:
    try:
        return _PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS))
        raise UnknownProviderError(f"unknown provider {name!r} (known: {known})") from None


def provider_names() -> tuple[str, ...]:
    return tuple(sorted(_PROVIDERS))
