"""mTLS channels with gRPC's own retry policy for the idempotent methods.

Retry on UNAVAILABLE is done by gRPC itself, from the channel's service config
(`grpc.service_config` with a `methodConfig` whose `retryPolicy` lists the methods that are
safe to repeat), not by a loop in this client. Execute is deliberately absent: repeating it
would run (and bill) the agent's request twice, so a failed Execute is reported to the caller,
who can repeat it with the same `request_id` to have the service answer from its record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

KEYVAULT_SERVICE = "keyvault.v1.KeyVaultService"
EXECUTION_SERVICE = "execution.v1.ExecutionService"

# Methods whose repetition is harmless: reads, create-or-replace (SetApiKey), delete (a repeat
# of a delete that had in fact succeeded answers NOT_FOUND), the resumable rewrap, the key
# check (one cheap provider call), and a cancel (a repeat while the execution still runs asks
# again; once it is CANCELLED, a repeat answers FAILED_PRECONDITION).
RETRIED_METHODS: tuple[tuple[str, str], ...] = (
    (KEYVAULT_SERVICE, "SetApiKey"),
    (KEYVAULT_SERVICE, "GetApiKey"),
    (KEYVAULT_SERVICE, "ListApiKeys"),
    (KEYVAULT_SERVICE, "DeleteApiKey"),
    (KEYVAULT_SERVICE, "RevealApiKey"),
    (KEYVAULT_SERVICE, "RewrapApiKeys"),
    (KEYVAULT_SERVICE, "ListAuditEvents"),
    (EXECUTION_SERVICE, "GetExecution"),
    (EXECUTION_SERVICE, "CancelExecution"),
    (EXECUTION_SERVICE, "ListExecutions"),
    (EXECUTION_SERVICE, "GetAgentStats"),
    (EXECUTION_SERVICE, "TestApiKey"),
    (EXECUTION_SERVICE, "GetAgent"),
    (EXECUTION_SERVICE, "ListAgents"),
    (EXECUTION_SERVICE, "DeleteAgent"),
    (EXECUTION_SERVICE, "GetBudget"),
    (EXECUTION_SERVICE, "ListBudgets"),
    (EXECUTION_SERVICE, "DeleteBudget"),
)
# Never retried automatically: Execute calls the provider and records an execution; a
# repeated CreateAgent or UpdateAgent that had in fact succeeded would answer ALREADY_EXISTS
# or ABORTED (its etag is spent), hiding the success; WatchApiKeyChanges is a long-lived
# stream that its subscriber opens again itself.
NOT_RETRIED_METHODS: tuple[tuple[str, str], ...] = (
    (EXECUTION_SERVICE, "Execute"),
    (EXECUTION_SERVICE, "CreateAgent"),
    (EXECUTION_SERVICE, "UpdateAgent"),
    (EXECUTION_SERVICE, "CreateBudget"),
    (EXECUTION_SERVICE, "UpdateBudget"),
    (KEYVAULT_SERVICE, "WatchApiKeyChanges"),
)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retry policy for UNAVAILABLE. gRPC waits a random time up to the current backoff
    between attempts (initial, then times the multiplier, at most max); a call's deadline
    bounds all attempts together. gRPC caps `max_attempts` at 5."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be 2 to 5 (gRPC caps retries at 5 attempts)")
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoffs and multiplier must be positive")


DEFAULT_RETRY_POLICY = RetryPolicy()
DEFAULT_TIMEOUT = 30.0  # seconds, for each unary call (Execute has no default deadline)


def _seconds(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".") + "s"


def service_config(policy: RetryPolicy = DEFAULT_RETRY_POLICY) -> dict[str, Any]:
    """The service config (as a dict) that retries RETRIED_METHODS on UNAVAILABLE."""
    return {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method} for service, method in RETRIED_METHODS
                ],
                "retryPolicy": {
                    "maxAttempts": policy.max_attempts,
                    "initialBackoff": _seconds(policy.initial_backoff),
                    "maxBackoff": _seconds(policy.max_backoff),
                    "backoffMultiplier": policy.backoff_multiplier,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }


def channel_options(
    *,
    retry_unavailable: bool = True,
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    options: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """Channel options: the retry service config when asked, then the caller's own."""
    built: list[tuple[str, Any]] = []
    if retry_unavailable:
        built += [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(service_config(retry_policy))),
        ]
    return built + list(options)


def channel_credentials(*, ca: PathLike, cert: PathLike, key: PathLike) -> grpc.ChannelCredentials:
    """mTLS credentials from PEM files: the CA that signs the servers, and this client's
    certificate and private key. Raises OSError when a file cannot be read."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )


def mtls_channel(
    address: str,
    *,
    ca: PathLike,
    cert: PathLike,
    key: PathLike,
    retry_unavailable: bool = True,
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio mTLS channel to `address` (`host:port`). With `retry_unavailable`, gRPC
    retries the idempotent methods (RETRIED_METHODS) on UNAVAILABLE; never Execute."""
    return grpc.aio.secure_channel(
        address,
        channel_credentials(ca=ca, cert=cert, key=key),
        options=channel_options(
            retry_unavailable=retry_unavailable, retry_policy=retry_policy, options=options
        ),
    )


def mtls_channel_sync(
    address: str,
    *,
    ca: PathLike,
    cert: PathLike,
    key: PathLike,
    retry_unavailable: bool = True,
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """The blocking counterpart of `mtls_channel`."""
    return grpc.secure_channel(
        address,
        channel_credentials(ca=ca, cert=cert, key=key),
        options=channel_options(
            retry_unavailable=retry_unavailable, retry_policy=retry_policy, options=options
        ),
    )
