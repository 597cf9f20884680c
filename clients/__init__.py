"""Typed Python clients and a CLI for the key vault and execution services.

```python
from clients import ExecutionClient, KeyVaultClient, Delta, Completed

tls = dict(ca="certs/ca.pem", cert="certs/app.pem", key="certs/app-key.pem")
async with KeyVaultClient.connect("localhost:50051", **tls) as vault:
    await vault.set_api_key("demo", "anthropic", key, base_url="http://127.0.0.1:8089")
async with ExecutionClient.connect("localhost:50052", **tls) as execution:
    async for event in execution.execute("demo", agent_id="bot", provider="anthropic",
                                         model="claude-3-5-sonnet-20241022", prompt="Hi"):
        ...  # Started, then Delta(text) as it arrives, then Completed(execution)
```

- `KeyVaultClient` / `ExecutionClient` (asyncio) and `KeyVaultClientSync` /
  `ExecutionClientSync` (blocking) wrap the generated stubs in `clients.gen`; methods take
  workspace ids and provider names and return the generated messages (`ApiKey`,
  `Execution`, `AgentStats`, ...), pages as `Page`, Execute's stream as `Started` / `Delta`
  / `Completed` events (`Completed.output`: the parsed structured output); agents as
  `AgentView` (plain values, schemas as dicts).
- `mtls_channel` / `mtls_channel_sync` build mTLS channels from PEM paths. gRPC itself
  retries the idempotent methods (`RETRIED_METHODS`) on UNAVAILABLE through the channel's
  service config; Execute is never retried automatically.
- Failures raise `ClientError` subclasses carrying the status code and the rich details
  (`reason`, `domain`, `metadata`, `field_violations`, `execution_name`), decoded with
  `protobuf` alone: the package depends on `grpcio` and `protobuf` only.
- `python -m clients --help` (or the `agentctl` script) is the command-line interface.
"""

from ._budgets import budget_name, usd_to_nanos
from ._channel import (
    DEFAULT_RETRY_POLICY,
    DEFAULT_TIMEOUT,
    NOT_RETRIED_METHODS,
    RETRIED_METHODS,
    RetryPolicy,
    mtls_channel,
    mtls_channel_sync,
    service_config,
)
from ._errors import (
    Aborted,
    AlreadyExists,
    ClientError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ._execution import DEFAULT_EXECUTION_ADDRESS, ExecutionClient, ExecutionClientSync
from ._keyvault import DEFAULT_KEYVAULT_ADDRESS, KeyVaultClient, KeyVaultClientSync
from ._rich_status import FieldViolation
from ._types import (
    AgentRoute,
    AgentView,
    Completed,
    Delta,
    ExecuteEvent,
    MessageLike,
    Page,
    ProviderLike,
    RevealedApiKey,
    Started,
    StateLike,
    agent_name,
    api_key_name,
    json_document,
    output_of,
    output_valid_of,
    violations_of,
    workspace_name,
)
from .gen.execution.v1.resources_pb2 import (
    Agent,
    AgentStats,
    Budget,
    BudgetMode,
    BudgetPeriod,
    BudgetPeriodUsage,
    Execution,
    ExecutionError,
    ExecutionState,
    Message,
    MessageRole,
    Route,
    SchemaViolation,
    Usage,
)
from .gen.keyvault.v1.resources_pb2 import ApiKey, AuditEvent, Provider

__all__ = [
    "DEFAULT_EXECUTION_ADDRESS",
    "DEFAULT_KEYVAULT_ADDRESS",
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_TIMEOUT",
    "NOT_RETRIED_METHODS",
    "RETRIED_METHODS",
    "Aborted",
    "Agent",
    "AgentRoute",
    "AgentStats",
    "AgentView",
    "AlreadyExists",
    "ApiKey",
    "AuditEvent",
    "Budget",
    "BudgetMode",
    "BudgetPeriod",
    "BudgetPeriodUsage",
    "ClientError",
    "Completed",
    "DeadlineExceeded",
    "Delta",
    "ExecuteEvent",
    "Execution",
    "ExecutionClient",
    "ExecutionClientSync",
    "ExecutionError",
    "ExecutionState",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "KeyVaultClient",
    "KeyVaultClientSync",
    "Message",
    "MessageLike",
    "MessageRole",
    "NotFound",
    "Page",
    "PermissionDenied",
    "Provider",
    "ProviderLike",
    "ResourceExhausted",
    "RetryPolicy",
    "RevealedApiKey",
    "Route",
    "SchemaViolation",
    "Started",
    "StateLike",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "agent_name",
    "api_key_name",
    "budget_name",
    "json_document",
    "mtls_channel",
    "mtls_channel_sync",
    "output_of",
    "output_valid_of",
    "service_config",
    "usd_to_nanos",
    "violations_of",
    "workspace_name",
]
