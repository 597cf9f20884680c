"""The provider layer: normalized chat types, OpenAI and Anthropic adapters, the HTTP call.

Public names are re-exported here; the modules behind them are private details::

    provider = get_provider("anthropic")
    async with aclosing(stream_chat(client, provider, request, key, base_url=None,
                                    default_max_tokens=1024, deadline=None)) as events:
        async for event in events:
            ...
"""

from .base import (
    ChatMessage,
    ChatRequest,
    Finish,
    OutputSchema,
    Provider,
    Refusal,
    RequestSpec,
    StreamEvent,
    StreamParser,
    TextDelta,
    UsageReport,
    api_url,
)
from .call import KeyCheckResult, check_key, stream_chat
from .errors import DeadlineExceeded, ErrorReason, ProviderError
from .registry import UnknownProviderError, get_provider, provider_names

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "DeadlineExceeded",
    "ErrorReason",
    "Finish",
    "KeyCheckResult",
    "OutputSchema",
    "Provider",
    "ProviderError",
    "Refusal",
    "RequestSpec",
    "StreamEvent",
    "StreamParser",
    "TextDelta",
    "UnknownProviderError",
    "UsageReport",
    "api_url",
    "check_key",
    "get_provider",
    "provider_names",
    "stream_chat",
]
