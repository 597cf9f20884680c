"""Token counts when the provider never reported them (a stream cut before its usage).

Tokens that streamed are never counted as zero: their cost was incurred. The estimate is the common
rule of thumb of about four characters per token for English text, rounded up; it is marked
as an estimate wherever it is used (`ResolvedUsage.estimated`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from execution_service.providers.base import ChatMessage, UsageReport

__all__ = ["CHARS_PER_TOKEN", "ResolvedUsage", "estimate_tokens", "resolve_usage"]

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """``ceil(len(text) / 4)``: 0 for empty text, at least 1 for any other."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class ResolvedUsage:
    """Final token counts of an execution; satisfies `pricing.TokenUsage`."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    estimated: bool
    """True when any figure is an estimate rather than the provider's report."""


def resolve_usage(
    report: UsageReport | None,
    *,
    prompt: Iterable[ChatMessage],
    output_text: str,
) -> ResolvedUsage:
    """Combine the provider's last usage report with estimates for what it did not report.

    ``report`` is the last `UsageReport` the stream yielded (None if none came). Input is
    estimated from the prompt's message contents only when no report arrived at all; output
    is estimated from the text that streamed when the report lacks it.
    """
    if report is None:
        return ResolvedUsage(
            input_tokens=estimate_tokens("".join(m.content for m in prompt)),
            output_tokens=estimate_tokens(output_text),
            cache_read_tokens=0,
            cache_write_tokens=0,
            estimated=True,
        )
    output = report.output_tokens
    return ResolvedUsage(
        input_tokens=report.input_tokens,
        output_tokens=output if output is not None else estimate_tokens(output_text),
        cache_read_tokens=report.cache_read_tokens,
        cache_write_tokens=report.cache_write_tokens,
        estimated=output is None,
    )
