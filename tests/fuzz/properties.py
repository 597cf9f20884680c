"""The properties every call must keep, checked against the running fuzz stack.

1. No INTERNAL, UNKNOWN or DATA_LOSS, whatever the request.
2. A caller the policy does not admit is answered PERMISSION_DENIED (UNAUTHENTICATED without
   an identity), changes nothing, and the audited methods record exactly that denial.
3. A request the contract calls invalid is answered INVALID_ARGUMENT; a valid one is not.
4. An INVALID_ARGUMENT changes no API key, no execution and no agent, and leaves at most the one
   FAILED audit record its method documents.
5. The services keep serving (`assert_serving`, after every batch of examples).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import event
from hypothesis import strategies as st

from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from tests.fuzz.stack import ANONYMOUS, IDENTITIES, AuditRow, FuzzStack, Snapshot, spiffe_of
from tests.fuzz.strategies import INVALID, KEY_CANARY, VALID

KV = "/keyvault.v1.KeyVaultService/"
EX = "/execution.v1.ExecutionService/"

# Who may call what: written out here from the documented policy, not read from its file.
CALLERS: dict[str, frozenset[str]] = {
    KV + "SetApiKey": frozenset({"app"}),
    KV + "GetApiKey": frozenset({"app", "admin"}),
    KV + "ListApiKeys": frozenset({"app", "admin"}),
    KV + "DeleteApiKey": frozenset({"app"}),
    KV + "RevealApiKey": frozenset({"execution"}),
    KV + "RewrapApiKeys": frozenset({"admin"}),
    KV + "ListAuditEvents": frozenset({"admin"}),
    KV + "WatchApiKeyChanges": frozenset({"execution"}),  # a stream that stays open
    EX + "Execute": frozenset({"app"}),
    EX + "GetExecution": frozenset({"app", "admin"}),
    EX + "CancelExecution": frozenset({"app", "admin"}),
    EX + "ListExecutions": frozenset({"app", "admin"}),
    EX + "GetAgentStats": frozenset({"app", "admin"}),
    EX + "TestApiKey": frozenset({"app"}),
    EX + "CreateAgent": frozenset({"app"}),
    EX + "GetAgent": frozenset({"app", "admin"}),
    EX + "ListAgents": frozenset({"app", "admin"}),
    EX + "UpdateAgent": frozenset({"app"}),
    EX + "DeleteAgent": frozenset({"app"}),
    EX + "CreateBudget": frozenset({"admin"}),
    EX + "GetBudget": frozenset({"app", "admin"}),
    EX + "ListBudgets": frozenset({"app", "admin"}),
    EX + "UpdateBudget": frozenset({"admin"}),
    EX + "DeleteBudget": frozenset({"admin"}),
}
# Every call of these leaves one audit record, a denied one included.
DENIALS_AUDITED = frozenset(
    KV + m
    for m in ("SetApiKey", "DeleteApiKey", "RevealApiKey", "RewrapApiKeys", "ListAuditEvents")
)
# These record a request they refuse as invalid (one FAILED record).
FAILURES_AUDITED = frozenset(KV + m for m in ("SetApiKey", "DeleteApiKey", "RevealApiKey"))
FORBIDDEN_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
MAX_STREAMED = 100  # a streaming answer is read this far, then the call is cancelled
CALL_TIMEOUT = 30.0
# Execute's stream ends by itself; any other stream (a subscription) is watched this long,
# and one still open after answering is a success.
FINITE_STREAMS = frozenset({EX + "Execute"})
OPEN_STREAM_WINDOW = 1.5


def callers(right: str) -> st.SearchStrategy[str]:
    """Mostly the identity the policy admits, sometimes any other."""
    return st.sampled_from([right] * len(IDENTITIES) + list(IDENTITIES))


@dataclass(frozen=True)
class Method:
    path: str
    streaming: bool
    request_class: type[Message]

    @property
    def service(self) -> str:
        return "keyvault" if self.path.startswith(KV) else "execution"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def every_method() -> dict[str, Method]:
    """Every RPC the protos declare, so an RPC added later is fuzzed without being listed."""
    services = [
        kv.DESCRIPTOR.services_by_name["KeyVaultService"],
        ex.DESCRIPTOR.services_by_name["ExecutionService"],
    ]
    return {
        f"/{service.full_name}/{m.name}": Method(
            f"/{service.full_name}/{m.name}",
            m.server_streaming,
            message_factory.GetMessageClass(m.input_type),
        )
        for service in services
        for m in service.methods
    }


METHODS = every_method()


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    responses: int
    error_bytes: bytes = b""  # the details and trailing metadata of an error, for leak checks
    body: bytes = b""  # the serialized response of a unary call that succeeded


def _error_bytes(err: grpc.RpcError) -> bytes:
    values = [v if isinstance(v, bytes) else v.encode() for _, v in err.trailing_metadata() or ()]
    return b"\n".join([(err.details() or "").encode(), *values])


def invoke(stack: FuzzStack, method: Method, identity: str, payload: bytes) -> Answer:
    """Send `payload` as the serialized request, exactly as given."""
    channel = stack.channel(method.service, identity)
    metadata = (("x-request-id", f"fuzz-{uuid.uuid4().hex}"),)
    open_ended = method.streaming and method.path not in FINITE_STREAMS
    received = 0
    try:
        if method.streaming:
            call = channel.unary_stream(method.path)(
                payload,
                timeout=OPEN_STREAM_WINDOW if open_ended else CALL_TIMEOUT,
                metadata=metadata,
            )
            for _ in call:
                received += 1
                if received >= MAX_STREAMED:
                    call.cancel()
                    break
        else:
            body = channel.unary_unary(method.path)(
                payload, timeout=CALL_TIMEOUT, metadata=metadata
            )
            return Answer(grpc.StatusCode.OK, "", 1, body=body)
    except grpc.RpcError as err:
        if received >= MAX_STREAMED and err.code() == grpc.StatusCode.CANCELLED:
            return Answer(grpc.StatusCode.OK, "", received)
        if open_ended and received and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Answer(grpc.StatusCode.OK, "", received)  # answered, and still open
        return Answer(err.code(), err.details() or "", received, _error_bytes(err))
    return Answer(grpc.StatusCode.OK, "", received)


def _unchanged(before: Snapshot, after: Snapshot, what: str) -> None:
    assert after.api_keys == before.api_keys, f"{what} changed the API keys"
    assert after.executions == before.executions, f"{what} changed the executions"
    assert after.agents == before.agents, f"{what} changed the agents"


def check_call(
    stack: FuzzStack,
    path: str,
    request: Message | bytes,
    verdict: str,
    identity: str,
    *,
    malformed: bool = False,
    secret: str = "",
) -> Answer:
    """Call `path` as `identity` and check every property. `malformed`: `request` is bytes
    that are not a well-formed message (the server cannot know which fields it named).
    `secret`: an API key the request carries (with the canary prefix), which no error and no
    audit record may echo."""
    method = METHODS[path]
    payload = request if isinstance(request, bytes) else request.SerializeToString()
    before = stack.snapshot()
    answer = invoke(stack, method, identity, payload)
    what = f"{method.name} as {identity} ({answer.code.name}: {answer.details[:300]!r})"
    event(f"{method.name}: {verdict} request as {identity} -> {answer.code.name}")

    assert answer.code not in FORBIDDEN_CODES, f"forbidden status: {what}"

    after = stack.snapshot()
    audit = stack.audit_after(before.audit_last_id)
    if KEY_CANARY in secret:
        _assert_not_echoed(secret, answer, audit, what)
    callers = CALLERS.get(path)
    if callers is not None and identity not in callers:
        _assert_denied(path, identity, answer, before, after, audit, what)
        return answer
    if verdict == INVALID:
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, f"invalid request accepted: {what}"
    if verdict == VALID:
        assert answer.code != grpc.StatusCode.INVALID_ARGUMENT, f"valid request refused: {what}"
    if answer.code == grpc.StatusCode.INVALID_ARGUMENT:
        audits_failure = path in FAILURES_AUDITED and not malformed
        _assert_refused_cleanly(audits_failure, identity, before, after, audit, what)
    return answer


def _assert_not_echoed(secret: str, answer: Answer, audit: list[AuditRow], what: str) -> None:
    needle = secret.encode().lower()
    assert needle not in answer.error_bytes.lower(), f"the error echoes the key: {what}"
    assert not any(needle in repr(r).encode().lower() for r in audit), (
        f"an audit record holds the key: {what}"
    )


def _assert_denied(
    path: str,
    identity: str,
    answer: Answer,
    before: Snapshot,
    after: Snapshot,
    audit: list[AuditRow],
    what: str,
) -> None:
    """Denied as the identity calls for, nothing changed, the denial audited where due."""
    denial = (
        grpc.StatusCode.UNAUTHENTICATED
        if identity == ANONYMOUS
        else grpc.StatusCode.PERMISSION_DENIED
    )
    assert answer.code == denial, f"not denied as {denial.name}: {what}"
    _unchanged(before, after, what)
    records = [(r.outcome, r.caller, r.reason) for r in audit]
    if path in DENIALS_AUDITED:
        expected = [("DENIED", spiffe_of(identity), denial.name)]
        assert records == expected, f"denial audit {records} != {expected}: {what}"
    else:
        assert all(r.outcome == "DENIED" for r in audit) and len(audit) <= 1, (
            f"a denial wrote audit records {records}: {what}"
        )


def _assert_refused_cleanly(
    audits_failure: bool,
    identity: str,
    before: Snapshot,
    after: Snapshot,
    audit: list[AuditRow],
    what: str,
) -> None:
    """An INVALID_ARGUMENT changed nothing, and left at most its one FAILED record."""
    _unchanged(before, after, what)
    records = [(r.outcome, r.caller) for r in audit]
    if audits_failure:
        expected = [("FAILED", spiffe_of(identity))]
        assert records == expected, f"invalid-request audit {records} != {expected}: {what}"
    else:
        assert len(audit) <= 1 and all(r.outcome == "FAILED" for r in audit), (
            f"an invalid request wrote audit records {records}: {what}"
        )


def assert_serving(stack: FuzzStack) -> None:
    """Both services answer health checks SERVING, and known-good calls succeed."""
    for service in ("keyvault", "execution"):
        check = stack.channel(service, "app").unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"{service}: {reply}"
    ws = f"workspaces/{stack.seed_workspace}"
    key = stack.channel("keyvault", "app").unary_unary(
        KV + "GetApiKey",
        request_serializer=kv.GetApiKeyRequest.SerializeToString,
        response_deserializer=kv.GetApiKeyResponse.FromString,
    )(kv.GetApiKeyRequest(name=f"{ws}/apiKeys/openai"), timeout=10)
    assert key.api_key.name == f"{ws}/apiKeys/openai"
    events = list(
        stack.channel("execution", "app").unary_stream(
            EX + "Execute",
            request_serializer=ex.ExecuteRequest.SerializeToString,
            response_deserializer=ex.ExecuteResponse.FromString,
        )(
            ex.ExecuteRequest(
                parent=ws,
                agent_id="serving-check",
                provider=1,
                model="gpt-4o-mini",
                messages=[{"role": 2, "content": "still there?"}],
            ),
            timeout=30,
        )
    )
    assert events[-1].completed.state == 2, f"serving check execution: {events[-1]}"
