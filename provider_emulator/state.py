"""Mutable emulator state: scripted fault steps, revoked keys, cache figures and the
request log. One instance per app; used by the control plane over HTTP and by in-process
tests directly (everything runs on the event loop, so there is no locking)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .config import EmulatorConfig
from .framing import LINE_ENDINGS

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/messages"})
_AUTH_HEADERS = frozenset({"authorization", "x-api-key"})

Outcome = Literal[
    "in_progress",  # still being answered
    "completed",  # the whole answer was handed to the transport
    "error",  # answered with an HTTP error status (auth, validation or scripted)
    "reset",  # scripted: connection closed before any response byte
    "cut",  # scripted: stream aborted after N content chunks
    "malformed",  # scripted: a non-JSON event ended the stream
    "stream_error",  # scripted: an error event ended the stream
    "disconnected",  # the client went away before the answer was finished
]
OutputFault = Literal["invalid_json", "schema_violation", "refusal"]
OUTPUT_FAULTS: frozenset[str] = frozenset(("invalid_json", "schema_violation", "refusal"))


class StepError(ValueError):
    """A scripted step is malformed."""


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted, one-shot behaviour for the next matching request.

    Error answer: `status` (+ `error_type`, `error_code`, `error_message`, or `error_body`
    for a plain-text body instead of the provider's JSON); `headers` are added to whatever
    answer the request gets. In `error_message` and `error_body`, `{api_key}` and
    `{api_key_lower}` stand for the request's key (an endpoint that echoes the key back).
    Timing: `delay_before_first_ms`, `chunk_delay_ms`. Stream framing: `line_ending` ("lf",
    "crlf" or "cr") ends every SSE line so; `split_writes_ms` cuts the stream inside every
    multi-byte UTF-8 character and between every CR and LF, writing each part separately that
    many ms apart (see `framing.torn_parts`). Ending a stream early (at most one):
    `cut_after_chunks`, `malformed_after_chunks`, `error_after_chunks` (alias
    `anthropic_error_after_chunks`; error type from `error_type`). `reset` closes the
    connection before any byte. Answer override: `chunks`, `text`, `cache_read_tokens`,
    `cache_write_tokens`. `output_fault` spoils a structured answer: ``invalid_json``,
    ``schema_violation`` (valid JSON that breaks the schema) or ``refusal`` (any request;
    `text` is then the refusal message). `path` limits the step to one endpoint (default: the two
    generation endpoints, never `/v1/models`).
    """

    status: int | None = None
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_before_first_ms: float | None = None
    chunk_delay_ms: float | None = None
    line_ending: str | None = None
    split_writes_ms: float | None = None
    cut_after_chunks: int | None = None
    malformed_after_chunks: int | None = None
    error_after_chunks: int | None = None
    reset: bool = False
    chunks: int | None = None
    text: str | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_fault: OutputFault | None = None
    path: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Step:
        if not isinstance(raw, Mapping):
            raise StepError("a step must be a JSON object")
        data = dict(raw)
        if "anthropic_error_after_chunks" in data:
            data["error_after_chunks"] = data.pop("anthropic_error_after_chunks")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise StepError(f"unknown step fields: {sorted(unknown)}")
        headers = data.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise StepError("headers must be an object")
        data["headers"] = {str(k): str(v) for k, v in headers.items()}
        try:
            step = cls(**data)
        except TypeError as exc:
            raise StepError(str(exc)) from exc
        step.validate()
        return step

    def validate(self) -> None:
        for name in (
            "status",
            "cut_after_chunks",
            "malformed_after_chunks",
            "error_after_chunks",
            "chunks",
            "cache_read_tokens",
            "cache_write_tokens",
        ):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise StepError(f"{name} must be a non-negative integer")
        if self.output_fault is not None and self.output_fault not in OUTPUT_FAULTS:
            raise StepError(f"output_fault must be one of {sorted(OUTPUT_FAULTS)}")
        if self.line_ending is not None and self.line_ending not in LINE_ENDINGS:
            raise StepError(f"line_ending must be one of {sorted(LINE_ENDINGS)}")
        for name in ("delay_before_first_ms", "chunk_delay_ms", "split_writes_ms"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise StepError(f"{name} must be a non-negative number")
        for name in ("error_message", "error_body"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise StepError(f"{name} must be a string")
        if self.status is not None and not 100 <= self.status <= 599:
            raise StepError("status must be an HTTP status code")
        endings = [self.cut_after_chunks, self.malformed_after_chunks, self.error_after_chunks]
        if sum(e is not None for e in endings) > 1:
            raise StepError("use at most one of cut/malformed/error_after_chunks per step")

    def echoing(self, key: str | None) -> Step:
        """This step with the key placeholders of its error texts filled in."""

        def fill(text: str | None) -> str | None:
            if text is None:
                return None
            return text.replace("{api_key}", key or "").replace(
                "{api_key_lower}", (key or "").lower()
            )

        if self.error_message is None and self.error_body is None:
            return self
        return replace(
            self, error_message=fill(self.error_message), error_body=fill(self.error_body)
        )

    def matches(self, path: str) -> bool:
        return path in GENERATION_PATHS if self.path is None else path == self.path

    def to_json(self) -> dict[str, Any]:
        return {
            k: v for k, v in asdict(self).items() if v is not None and v is not False and v != {}
        }


NO_STEP = Step()


def key_fingerprint(key: str) -> str:
    """How the request log identifies a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(slots=True)
class RecordedRequest:
    """One request as the emulator saw it (the API key itself is never stored)."""

    seq: int
    request_id: str
    provider: str
    method: str
    path: str
    headers: dict[str, str]
    key_last4: str | None
    key_sha256: str | None
    body: Any
    stream: bool
    started_at: float
    step: Step | None = None
    status: int | None = None
    outcome: Outcome = "in_progress"
    chunks_sent: int = 0
    disconnected: bool = False
    finished_at: float | None = None
    usage: dict[str, int] | None = None

    def finish(self, status: int | None, outcome: Outcome) -> None:
        """Record how the answer ended (unless the client already went away)."""
        if self.outcome == "in_progress":
            self.status = status
            self.outcome = outcome
            self.finished_at = time.time()

    def mark_disconnected(self) -> None:
        if self.outcome == "in_progress":
            self.disconnected = True
            self.outcome = "disconnected"
            self.finished_at = time.time()

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["step"] = None if self.step is None else self.step.to_json()
        return data


def _redact(headers: Mapping[str, str], last4: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        out[lower] = f"<redacted ...{last4 or ''}>" if lower in _AUTH_HEADERS else value
    return out


class EmulatorState:
    """Scripts, revocations, cache figures and the request log of one emulator."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.requests: deque[RecordedRequest] = deque(maxlen=config.max_recorded_requests)
        self.revoked: set[str] = set()
        self._any_key_steps: deque[Step] = deque()
        self._key_steps: dict[str, deque[Step]] = {}
        self._cache_default = (0, 0)
        self._cache_by_key: dict[str, tuple[int, int]] = {}
        self._seq = 0

    # -- keys ----------------------------------------------------------------------------

    def key_accepted(self, key: str | None) -> bool:
        if not key or key in self.revoked:
            return False
        allowed = self.config.accepted_keys
        return allowed is None or key in allowed

    def revoke(self, key: str) -> None:
        self.revoked.add(key)

    def restore(self, key: str) -> None:
        self.revoked.discard(key)

    # -- scripts -------------------------------------------------------------------------

    def script(
        self, *steps: Step | Mapping[str, Any] | Iterable[Any], key: str | None = None
    ) -> int:
        """Queue one-shot steps (Step objects or dicts) for requests with `key` (any key
        when None). A single list argument is accepted too. Returns the number queued."""
        if len(steps) == 1 and isinstance(steps[0], list | tuple):
            steps = tuple(steps[0])
        parsed = [s if isinstance(s, Step) else Step.from_dict(s) for s in steps]  # type: ignore[arg-type]
        for step in parsed:
            step.validate()
        queue = self._any_key_steps if key is None else self._key_steps.setdefault(key, deque())
        queue.extend(parsed)
        return len(parsed)

    def take_step(self, key: str | None, path: str) -> Step | None:
        """The first queued step matching this request, removed from its queue; steps
        queued for the request's key come before steps queued for any key."""
        if key and self._key_steps:
            queue = self._key_steps.get(key)
            if queue and (step := _pop_match(queue, path)) is not None:
                return step
        if self._any_key_steps:
            return _pop_match(self._any_key_steps, path)
        return None

    def pending_steps(self, key: str | None = None) -> int:
        """Steps still queued for `key` (None: steps queued for any key)."""
        if key is None:
            return len(self._any_key_steps)
        return len(self._key_steps.get(key, ()))

    def clear_scripts(self) -> None:
        self._any_key_steps.clear()
        self._key_steps.clear()

    # -- cache figures ---------------------------------------------------------------------

    def set_cache_tokens(self, read: int = 0, write: int = 0, key: str | None = None) -> None:
        """Cache read/write token figures reported by every later request (with `key`)."""
        if read < 0 or write < 0:
            raise ValueError("cache token figures must be >= 0")
        if key is None:
            self._cache_default = (read, write)
        else:
            self._cache_by_key[key] = (read, write)

    def cache_tokens(self, key: str | None) -> tuple[int, int]:
        if key and self._cache_by_key:
            return self._cache_by_key.get(key, self._cache_default)
        return self._cache_default

    # -- request log -----------------------------------------------------------------------

    def record(
        self,
        provider: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        key: str | None,
        body: Any,
        request_id: str,
    ) -> RecordedRequest:
        self._seq += 1
        last4 = key[-4:] if key else None
        entry = RecordedRequest(
            seq=self._seq,
            request_id=request_id,
            provider=provider,
            method=method,
            path=path,
            headers=_redact(headers, last4),
            key_last4=last4,
            key_sha256=key_fingerprint(key) if key else None,
            body=body,
            stream=isinstance(body, dict) and body.get("stream") is True,
            started_at=time.time(),
        )
        self.requests.append(entry)
        return entry

    def find_requests(
        self, *, key: str | None = None, path: str | None = None
    ) -> list[RecordedRequest]:
        fingerprint = key_fingerprint(key) if key else None
        return [
            r
            for r in self.requests
            if (fingerprint is None or r.key_sha256 == fingerprint)
            and (path is None or r.path == path)
        ]

    async def wait_for(
        self, predicate: Callable[[EmulatorState], bool], timeout: float = 5.0
    ) -> None:
        """Poll until `predicate(state)` holds (e.g. a request was recorded as
        disconnected); raises TimeoutError after `timeout` seconds."""
        # Polling keeps the request hot path free of wake-ups for waiters nobody has.
        async with asyncio.timeout(timeout):
            while not predicate(self):  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    def clear_requests(self) -> None:
        self.requests.clear()

    def reset(self) -> None:
        """Forget requests, scripts, revocations and cache figures."""
        self.clear_requests()
        self.clear_scripts()
        self.revoked.clear()
        self._cache_default = (0, 0)
        self._cache_by_key.clear()


def _pop_match(queue: deque[Step], path: str) -> Step | None:
    for i, step in enumerate(queue):
        if step.matches(path):
            del queue[i]
            return step
    return None
