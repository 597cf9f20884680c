"""Helpers shared by the execution service's end-to-end tests: requests, streams, rich errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import execution_service_pb2_grpc as ex_grpc
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from service_kit import db

DOMAIN = "execution.agents.internal"
OPENAI = kv_res.PROVIDER_OPENAI
ANTHROPIC = kv_res.PROVIDER_ANTHROPIC
Workspace = Callable[..., Awaitable[str]]
Stub = Callable[..., ex_grpc.ExecutionServiceStub]
# The emulator's default answer: 20 chunks "word0", " word1", ... " word19".
CHUNKS = ["word0", *(f" word{i}" for i in range(1, 20))]


def openai_key() -> str:
    """A key of its own per test, so scripted steps queued for it reach only this test."""
    return f"sk-test-{uuid.uuid4().hex}"


def anthropic_key() -> str:
    return f"sk-ant-test-{uuid.uuid4().hex}"


def request(
    ws: str,
    provider: int = OPENAI,
    model: str = "gpt-4o-mini",
    *,
    agent_id: str = "agent-1",
    prompt: str = "Say hello to the team",
    **fields: Any,
) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        parent=f"workspaces/{ws}",
        agent_id=agent_id,
        provider=provider,  # type: ignore[arg-type]
        model=model,
        messages=[res.Message(role=res.MESSAGE_ROLE_USER, content=prompt)],
        **fields,
    )


@dataclass
class Outcome:
    """An Execute stream as the caller saw it."""

    events: list[pb.ExecuteResponse] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None

    @property
    def started(self) -> res.Execution:
        assert self.events and self.events[0].WhichOneof("event") == "started"
        return self.events[0].started

    @property
    def completed(self) -> res.Execution:
        assert self.error is None, (self.error.code(), self.error.details())
        assert self.events[-1].WhichOneof("event") == "completed"
        return self.events[-1].completed

    @property
    def deltas(self) -> list[str]:
        return [e.delta.text for e in self.events if e.WhichOneof("event") == "delta"]

    @property
    def text(self) -> str:
        return "".join(self.deltas)


async def run(stub: ex_grpc.ExecutionServiceStub, req: pb.ExecuteRequest, **kwargs: Any) -> Outcome:
    """Drive one Execute call to its end, keeping the events and the final error, if any."""
    outcome = Outcome()
    try:
        async for event in stub.Execute(req, **kwargs):
            outcome.events.append(event)
    except grpc.aio.AioRpcError as err:
        outcome.error = err
    return outcome


def error_details(
    err: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, list[str]]:
    """(ErrorInfo, BadRequest field names) of a rich status."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status in {err.code()}: {err.details()}"
    info, fields = None, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == DOMAIN
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return info, fields


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info, _ = error_details(err)
    assert info is not None, f"no ErrorInfo in {err.code()}: {err.details()}"
    return info


async def expect_error(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, (caught.value.code(), caught.value.details())
    return caught.value


async def read_rest(call: Any) -> list[pb.ExecuteResponse]:
    """The remaining events of a call already being read with `read()`."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def get_execution(stub: ex_grpc.ExecutionServiceStub, name: str) -> res.Execution:
    return (await stub.GetExecution(pb.GetExecutionRequest(name=name))).execution


async def wait_for_state(
    stub: ex_grpc.ExecutionServiceStub, name: str, timeout: float = 5.0
) -> res.Execution:
    """Poll GetExecution until the execution is terminal."""
    async with asyncio.timeout(timeout):
        while True:
            found = await get_execution(stub, name)
            if found.state != res.EXECUTION_STATE_RUNNING:
                return found
            await asyncio.sleep(0.02)


async def list_all(
    stub: ex_grpc.ExecutionServiceStub, ws: str, page_size: int = 1000, **filters: Any
) -> list[res.Execution]:
    found: list[res.Execution] = []
    token = ""
    while True:
        page = await stub.ListExecutions(
            pb.ListExecutionsRequest(
                parent=f"workspaces/{ws}", page_size=page_size, page_token=token, **filters
            )
        )
        found.extend(page.executions)
        token = page.next_page_token
        if not token:
            return found


async def reveal_count(admin_vault: kv_grpc.KeyVaultServiceStub, ws: str) -> int:
    """RevealApiKey calls the vault audited for a workspace."""
    events: list[kv_res.AuditEvent] = []
    token = ""
    while True:
        page = await admin_vault.ListAuditEvents(
            kv.ListAuditEventsRequest(parent=f"workspaces/{ws}", page_size=1000, page_token=token)
        )
        events.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            break
    return sum(e.action == kv_res.AUDIT_ACTION_REVEAL for e in events)


async def migrate_below(conn: Any, version: int) -> None:
    """Apply the execution service's migrations older than `version`, recorded as the
    service records them: a database as an older release left it."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for m in db.load_migrations("execution_service"):
        if m.version < version:
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", m.version, m.name)
