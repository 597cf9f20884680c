"""The package's public surface, its retry configuration and its rich-status decoding:
what can be checked without a server."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import clients
from clients import _cli_output as show
from clients._channel import channel_options
from clients._rich_status import decode_status, details_from_trailers
from clients._types import execute_request, provider_value, state_value
from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import resources_pb2 as ex_res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import resources_pb2 as kv_res

EXPECTED_PUBLIC = {
    "KeyVaultClient",
    "KeyVaultClientSync",
    "ExecutionClient",
    "ExecutionClientSync",
    "mtls_channel",
    "mtls_channel_sync",
    "RetryPolicy",
    "ClientError",
    "NotFound",
    "InvalidArgument",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "FailedPrecondition",
    "AlreadyExists",
    "ResourceExhausted",
    "DeadlineExceeded",
    "Started",
    "Delta",
    "Completed",
    "ExecuteEvent",
    "Page",
    "RevealedApiKey",
    "FieldViolation",
}


def test_every_public_name_exists() -> None:
    assert len(clients.__all__) == len(set(clients.__all__))
    missing = [name for name in clients.__all__ if not hasattr(clients, name)]
    assert missing == []
    assert set(clients.__all__) >= EXPECTED_PUBLIC
    namespace: dict[str, object] = {}
    exec("from clients import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(clients.__all__)


def test_error_classes_form_one_hierarchy() -> None:
    codes = set()
    for name in EXPECTED_PUBLIC:
        cls = getattr(clients, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, clients.ClientError)
            and cls is not clients.ClientError
        ):
            codes.add(cls.default_code)
    assert len(codes) == 9
    err = clients.NotFound("x does not exist", reason="API_KEY_NOT_FOUND")
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert str(err) == "NOT_FOUND (API_KEY_NOT_FOUND): x does not exist"
    assert (
        str(clients.PermissionDenied("no", reason="PERMISSION_DENIED")) == "PERMISSION_DENIED: no"
    )


def _all_methods() -> set[tuple[str, str]]:
    found = set()
    for module in (kv, ex):
        for service in module.DESCRIPTOR.services_by_name.values():
            found |= {(service.full_name, m.name) for m in service.methods}
    return found


def test_every_method_has_a_retry_decision_and_execute_is_never_retried() -> None:
    retried, not_retried = set(clients.RETRIED_METHODS), set(clients.NOT_RETRIED_METHODS)
    assert retried | not_retried == _all_methods()  # a new method forces a decision here
    assert not retried & not_retried
    assert ("execution.v1.ExecutionService", "Execute") in not_retried

    options = dict(channel_options())
    assert options["grpc.enable_retries"] == 1
    config = json.loads(options["grpc.service_config"])
    (method_config,) = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert names == retried
    assert all("method" in n for n in method_config["name"])  # no service-wide wildcard
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] == 5 and policy["initialBackoff"] == "0.2s"

    assert "grpc.service_config" not in dict(channel_options(retry_unavailable=False))
    with pytest.raises(ValueError):
        clients.RetryPolicy(max_attempts=6)


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def test_rich_status_decoding_reads_google_rpc_messages() -> None:
    """The client's private, protobuf-only schema parses what googleapis' classes write."""
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="invalid request",
        details=[
            _packed(error_details_pb2.DebugInfo(detail="ignored")),
            _packed(
                error_details_pb2.ErrorInfo(
                    reason="BAD",
                    domain="d.example",
                    metadata={"execution": "workspaces/w/executions/e"},
                )
            ),
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="parent", description="must be workspaces/{workspace}", reason="X"
                        )
                    ]
                )
            ),
        ],
    )
    data = status.SerializeToString()
    details = decode_status(data)
    assert (details.code, details.message, details.reason, details.domain) == (
        3,
        "invalid request",
        "BAD",
        "d.example",
    )
    assert details.metadata == {"execution": "workspaces/w/executions/e"}
    assert details.field_violations == (
        clients.FieldViolation("parent", "must be workspaces/{workspace}"),
    )
    trailers = [("other", "x"), ("grpc-status-details-bin", data)]
    assert details_from_trailers(trailers, 3) == details
    assert details_from_trailers(trailers, 5) is None  # describes another status: ignored
    assert details_from_trailers([("grpc-status-details-bin", b"\xff\xff")], 3) is None
    assert details_from_trailers(None, 3) is None


def test_request_building() -> None:
    assert provider_value("OpenAI") == kv_res.PROVIDER_OPENAI
    assert provider_value("PROVIDER_ANTHROPIC") == kv_res.PROVIDER_ANTHROPIC
    assert state_value("failed") == ex_res.EXECUTION_STATE_FAILED
    with pytest.raises(ValueError, match="unknown provider"):
        provider_value("gemini")
    assert clients.api_key_name("demo", "anthropic") == "workspaces/demo/apiKeys/anthropic"
    assert clients.workspace_name("workspaces/demo") == "workspaces/demo"

    request = execute_request(
        "demo",
        agent_id="a",
        provider="openai",
        model="m",
        system="Be brief.",
        messages=[("user", "hi"), ("assistant", "hello")],
        prompt="again",
        max_tokens=5,
    )
    assert [(m.role, m.content) for m in request.messages] == [
        (ex_res.MESSAGE_ROLE_SYSTEM, "Be brief."),
        (ex_res.MESSAGE_ROLE_USER, "hi"),
        (ex_res.MESSAGE_ROLE_ASSISTANT, "hello"),
        (ex_res.MESSAGE_ROLE_USER, "again"),
    ]
    assert request.generation_config.max_tokens == 5
    assert not request.generation_config.HasField("temperature")


def test_revealed_key_repr_hides_the_plaintext() -> None:
    revealed = clients.RevealedApiKey(kv_res.ApiKey(name="n"), "sk-canary-secret")
    assert "sk-canary-secret" not in repr(revealed)
    assert revealed.plaintext_key == "sk-canary-secret"


@pytest.mark.parametrize(
    ("nanos", "text"),
    [(0, "$0.00"), (318_000, "$0.000318"), (1_500_000_000, "$1.50"), (1, "$0.000000001")],
)
def test_dollars_are_exact(nanos: int, text: str) -> None:
    assert show.dollars(nanos) == text


def test_summary_says_unknown_cost() -> None:
    execution = ex_res.Execution(
        name="workspaces/w/executions/e",
        state=ex_res.EXECUTION_STATE_SUCCEEDED,
        usage=ex_res.Usage(input_tokens=3, output_tokens=4),
        attempts=2,
    )
    execution.latency.FromMilliseconds(1234)
    line = show.summary(execution)
    assert line.startswith("SUCCEEDED: 3 in / 4 out tokens, cost unknown, latency 1234 ms")
    assert "attempts 2" in line and "workspaces/w/executions/e" in line
    execution.cost_nanos = 0
    assert "cost $0.00" in show.summary(execution)
