"""Provider failures as one exception type, and the one place that translates httpx errors.

Every failure of a provider call, whatever its origin (an HTTP error status, an error event
inside a stream, a broken connection), surfaces as `ProviderError` with an UPPER_SNAKE
`reason` that the service maps to a gRPC status. Messages are the provider's own words or a
fixed text of ours; they never contain an API key (the caller redacts the key it holds,
see `call.py`, and `translate_transport_error` never quotes request headers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

import httpx

from execution_service import retry
from execution_service.http_transport import DestinationForbidden
from service_kit.redaction import MAX_SCAN_CHARS, redact_secret

__all__ = [
    "DeadlineExceeded",
    "ErrorReason",
    "ProviderError",
    "http_error",
    "reason_for_status",
    "translate_transport_error",
]

# Provider messages are shown to callers and stored with the execution; a misbehaving
# endpoint could send megabytes, so keep the useful head only (cut after redaction).
MAX_MESSAGE_CHARS = 1000
# One text for every connection failure before an answer: refused, reset, no route, name
# not found. Socket details would let a caller map ports and hosts the service can reach.
UNREACHABLE_MESSAGE = "could not connect to the provider"
# A stream cut after the status line: the HTTP library's own text for it (a chunked body
# ending early reads "TransferEncodingError: 400, ...") looks like an HTTP status it is not.
CUT_MESSAGE = "the connection to the provider closed before the response was complete"


class ErrorReason(StrEnum):
    """The `reason` of a ProviderError; also used as the ErrorInfo reason on the wire."""

    PROVIDER_AUTH_FAILED = "PROVIDER_AUTH_FAILED"
    PROVIDER_PERMISSION_DENIED = "PROVIDER_PERMISSION_DENIED"
    PROVIDER_BAD_REQUEST = "PROVIDER_BAD_REQUEST"
    # A 400 saying the prompt (with max_tokens) does not fit the model's context window.
    PROVIDER_CONTEXT_WINDOW_EXCEEDED = "PROVIDER_CONTEXT_WINDOW_EXCEEDED"
    PROVIDER_RATE_LIMITED = "PROVIDER_RATE_LIMITED"
    PROVIDER_QUOTA_EXCEEDED = "PROVIDER_QUOTA_EXCEEDED"
    PROVIDER_OVERLOADED = "PROVIDER_OVERLOADED"
    PROVIDER_SERVER_ERROR = "PROVIDER_SERVER_ERROR"
    PROVIDER_UNREACHABLE = "PROVIDER_UNREACHABLE"
    PROVIDER_DESTINATION_FORBIDDEN = "PROVIDER_DESTINATION_FORBIDDEN"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_STREAM_ERROR = "PROVIDER_STREAM_ERROR"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


class ProviderError(Exception):
    """A failed provider call.

    Attributes:
        reason: what went wrong, as an `ErrorReason`.
        message: the provider's message (or ours), safe to show: never contains the key.
        status: the HTTP status of the failing response; 0 when there was none (connection
            failure, or an error event inside a 200 stream).
        retryable: whether the failure is transient by the retry policy. Whether a retry is
            still *allowed* (output already sent, attempts left, deadline) is the caller's
            decision.
        retry_after: seconds the provider asked us to wait, if it said; the retry policy
            decides whether to honour it (`retry.next_delay`).
        provider_code: the provider's machine-readable error code or type, if any
            (``insufficient_quota``, ``overloaded_error``, ...).
    """

    def __init__(
        self,
        reason: ErrorReason,
        message: str,
        *,
        status: int = 0,
        retryable: bool = False,
        retry_after: float | None = None,
        provider_code: str | None = None,
    ) -> None:
        self.reason = reason
        # A bounded head of the provider's words, cut to MAX_MESSAGE_CHARS only when shown,
        # so that `redact` sees a key that straddles the cut whole.
        self._text = message[:MAX_SCAN_CHARS]
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.provider_code = provider_code
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The provider's message (or ours), at most MAX_MESSAGE_CHARS."""
        return self._text[:MAX_MESSAGE_CHARS]

    def redact(self, secret: str) -> None:
        """Remove every trace of ``secret`` from the message (service_kit.redaction's rule).

        Providers echo at most a masked key, but a compatible endpoint might quote the whole
        header back, or part of it, in any case; the code that holds the key calls this
        before letting the error out.
        """
        self._text = redact_secret(self._text, secret)
        self.args = (self.message,)

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{self.reason.value}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reason={self.reason.value!r}, status={self.status}, "
            f"retryable={self.retryable}, retry_after={self.retry_after!r}, "
            f"provider_code={self.provider_code!r}, message={self.message!r})"
        )


class DeadlineExceeded(ProviderError):
    """Giving up because the next retry would start after the caller's deadline.

    ``last_error`` is the failure that would have been retried (also the ``__cause__``).
    """

    def __init__(self, message: str, *, last_error: ProviderError) -> None:
        super().__init__(
            ErrorReason.DEADLINE_EXCEEDED,
            message,
            status=last_error.status,
            retryable=False,
            provider_code=last_error.provider_code,
        )
        self.last_error = last_error


# How each provider says a request does not fit the model's context window: OpenAI's code
# `context_length_exceeded`; Anthropic's invalid_request_error "prompt is too long: ..." or
# "input length and `max_tokens` exceed context limit: ...".
_CONTEXT_WINDOW_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_WINDOW_WORDS = re.compile(
    r"prompt is too long|exceeds? (?:the )?context (?:limit|window)|maximum context length",
    re.IGNORECASE,
)


def reason_for_status(
    status: int, error_type: str | None, error_code: str | None, message: str = ""
) -> ErrorReason:
    """Map an HTTP error status plus the body's type/code (and, for a 400, its message) to a
    reason (both providers)."""
    if error_code == "insufficient_quota" or error_type == "insufficient_quota":
        return ErrorReason.PROVIDER_QUOTA_EXCEEDED
    if error_type == "overloaded_error" or status == 529:
        return ErrorReason.PROVIDER_OVERLOADED
    if status == 401:
        return ErrorReason.PROVIDER_AUTH_FAILED
    if status == 403:
        return ErrorReason.PROVIDER_PERMISSION_DENIED
    if status == 408:
        return ErrorReason.PROVIDER_TIMEOUT
    if status == 429:
        return ErrorReason.PROVIDER_RATE_LIMITED
    if status >= 500:
        return ErrorReason.PROVIDER_SERVER_ERROR
    if status == 400 and (
        error_code in _CONTEXT_WINDOW_CODES or _CONTEXT_WINDOW_WORDS.search(message[:500])
    ):
        return ErrorReason.PROVIDER_CONTEXT_WINDOW_EXCEEDED
    # 400, 404, 409, 413, 422 and any other 4xx (or an unexpected 1xx/3xx): the request
    # as sent was not accepted.
    return ErrorReason.PROVIDER_BAD_REQUEST


def http_error(
    status: int,
    headers: Mapping[str, str],
    *,
    error_type: str | None,
    error_code: str | None,
    message: str,
    now: float,
) -> ProviderError:
    """Build the ProviderError for an HTTP error answer, classifying it by the retry policy.

    ``now`` is the wall clock (seconds since the epoch) for an HTTP-date ``retry-after``.
    """
    code = error_code or error_type
    return ProviderError(
        reason_for_status(status, error_type, error_code, message),
        message or f"HTTP {status} from provider",
        status=status,
        retryable=retry.classify(status, headers, code),
        retry_after=retry.parse_retry_after(headers, now),
        provider_code=code,
    )


def translate_transport_error(exc: httpx.HTTPError, *, response_started: bool) -> ProviderError:
    """The one place where httpx exceptions become ProviderErrors (raise the result ``from exc``).

    ``response_started`` tells whether the response's status line had arrived: a reset
    before it means the provider was not reached; a reset after it cuts the stream.
    Messages name the exception class; a failure to connect, and a connection lost once the
    response has begun, each get one fixed text whatever the cause (no addresses, ports, OS
    or library words); they never quote a request header (h11's protocol errors can echo
    header values, so those get a fixed text).
    """
    name = type(exc).__name__
    if isinstance(exc, DestinationForbidden):
        return ProviderError(ErrorReason.PROVIDER_DESTINATION_FORBIDDEN, str(exc))
    if isinstance(exc, httpx.ConnectTimeout):
        return ProviderError(ErrorReason.PROVIDER_UNREACHABLE, UNREACHABLE_MESSAGE, retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        phase = "reading the response" if response_started else "waiting for the response"
        return ProviderError(
            ErrorReason.PROVIDER_TIMEOUT,
            f"timed out {phase} ({name})",
            retryable=True,
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ProviderError(
            ErrorReason.PROVIDER_BAD_REQUEST,
            "the provider base URL must start with http:// or https://",
        )
    if isinstance(exc, httpx.LocalProtocolError):
        return ProviderError(
            ErrorReason.PROVIDER_BAD_REQUEST,
            f"the request could not be sent ({name})",
        )
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)):
        if response_started:
            return ProviderError(
                ErrorReason.PROVIDER_STREAM_ERROR,
                CUT_MESSAGE,
                retryable=True,
            )
        return ProviderError(ErrorReason.PROVIDER_UNREACHABLE, UNREACHABLE_MESSAGE, retryable=True)
    # DecodingError (a body that is not what its headers say), TooManyRedirects and the
    # rest: a deterministic fault in the answer, not worth repeating.
    return ProviderError(
        ErrorReason.PROVIDER_STREAM_ERROR,
        f"the provider's response could not be read ({name})",
    )
