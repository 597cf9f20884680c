"""Start-up configuration of the emulator: typed, frozen, with module-level defaults."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_CHUNKS = 20
DEFAULT_MAX_RECORDED_REQUESTS = 10_000
DEFAULT_SHUTDOWN_TIMEOUT_S = 1.0
DEFAULT_CLIENT_MAX_SIZE = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How every request is answered unless a scripted step says otherwise.

    chunks: content chunks per answer (the default text is "word0 word1 ... word{N-1}").
    text: a fixed answer text instead; sent one whitespace-led word per chunk, or in
        `chunks` near-equal slices when `chunks` is also set.
    chunk_delay_ms: pause between two content chunks of a stream.
    write_per_event: without a chunk delay, send each SSE event in a write of its own
        (as a provider's server does) instead of the whole stream in one write.
    first_token_delay_ms: pause before the first event of a stream (after its headers)
        and before any other answer.
    accepted_keys: when set, only these API keys are accepted; otherwise any non-empty
        key that has not been revoked.
    max_recorded_requests: size of the request log (oldest entries dropped).
    access_log: log one line per request (off by default: the benchmarks are hot).
    shutdown_timeout_s: how long `stop()` waits for in-flight responses.
    """

    chunks: int | None = None
    text: str | None = None
    chunk_delay_ms: float = 0.0
    write_per_event: bool = False
    first_token_delay_ms: float = 0.0
    accepted_keys: frozenset[str] | None = field(default=None)
    max_recorded_requests: int = DEFAULT_MAX_RECORDED_REQUESTS
    access_log: bool = False
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    client_max_size: int = DEFAULT_CLIENT_MAX_SIZE

    def __post_init__(self) -> None:
        keys: Iterable[str] | None = self.accepted_keys
        if keys is not None and not isinstance(keys, frozenset):
            object.__setattr__(self, "accepted_keys", frozenset(keys))
        if self.chunks is not None and self.chunks < 0:
            raise ValueError("chunks must be >= 0")
        if self.chunk_delay_ms < 0 or self.first_token_delay_ms < 0:
            raise ValueError("delays must be >= 0")
        if self.max_recorded_requests < 1:
            raise ValueError("max_recorded_requests must be >= 1")
