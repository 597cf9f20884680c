"""The fuzz suite's own stack: a key vault, an execution service and the provider emulator,
running on an event loop in a background thread, so that Hypothesis can drive them from
plain (blocking) test functions.

The async session fixtures of the other suites run on pytest-asyncio's session loop, which
is idle while a synchronous test runs: servers started there would not answer. The servers
here are built with the same settings builders, on databases made by the same fixture.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc

from clients.gen.execution.v1 import execution_service_pb2 as ex
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import keyvault_service_pb2 as kv
from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from service_kit import devcerts
from service_kit.tls import TlsFiles, channel_credentials
from tests.fuzz.strategies import EMULATOR, SEED, SEED_AGENT_IDS
from tests.keyvault.support import session_ca
from tests.keyvault.test_authorization import mint

T = TypeVar("T")

# --- identities ----------------------------------------------------------------------------
# Every workload certificate of the development PKI, plus a certificate from the right CA
# that carries no SPIFFE ID (the server must answer it UNAUTHENTICATED).
ANONYMOUS = "anonymous"
IDENTITIES = ("app", "admin", "execution", "keyvault", ANONYMOUS)


def spiffe_of(identity: str) -> str:
    """The caller an audit record names for this identity ("" when it has none)."""
    return "" if identity == ANONYMOUS else devcerts.spiffe_id(identity)


# --- the stack -----------------------------------------------------------------------------


class LoopThread:
    """An event loop running forever in a daemon thread; `run` waits for one coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass(frozen=True)
class Snapshot:
    """What a request may change: API keys, audit records, executions, agents."""

    api_keys: tuple[int, str]  # row count and a digest of every row's content
    audit_last_id: int
    executions: tuple[int, str]
    agents: tuple[int, str]  # row count and a digest of every agent's version


@dataclass(frozen=True)
class AuditRow:
    id: int
    action: str
    outcome: str
    caller: str
    reason: str
    request_id: str


@dataclass(repr=False)
class FuzzStack:
    runner: LoopThread
    vault: RunningKeyVault
    execution: RunningExecution
    emulator: RunningEmulator
    kv_db: asyncpg.Connection
    ex_db: asyncpg.Connection
    credentials: dict[str, grpc.ChannelCredentials]
    channels: dict[tuple[str, str], grpc.Channel] = field(default_factory=dict)
    # Filled by `seed`: a workspace with both providers' keys, and real page tokens.
    seed_workspace: str = ""
    seed_execution: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    # An etag each agent had before its last write seen by the agents tests.
    stale_etags: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # Hypothesis prints it with every failing example
        return f"FuzzStack(vault :{self.vault.port}, execution :{self.execution.port})"

    def port(self, service: str) -> int:
        return self.vault.port if service == "keyvault" else self.execution.port

    def channel(self, service: str, identity: str) -> grpc.Channel:
        key = (service, identity)
        if key not in self.channels:
            self.channels[key] = grpc.secure_channel(
                f"localhost:{self.port(service)}",
                self.credentials[identity],
                # Room for the huge-identifier examples (the server's limit is the default 4 MB).
                options=[("grpc.max_send_message_length", 16 * 1024 * 1024)],
            )
        return self.channels[key]

    def with_emulator(self, url: str) -> str:
        return url.replace(EMULATOR, self.emulator.base_url)

    def set_key(self, name: str) -> None:
        """Store a key (as app) under `name`, so that a later call finds one."""
        self.channel("keyvault", "app").unary_unary(
            "/keyvault.v1.KeyVaultService/SetApiKey",
            request_serializer=kv.SetApiKeyRequest.SerializeToString,
            response_deserializer=kv.SetApiKeyResponse.FromString,
        )(kv.SetApiKeyRequest(name=name, api_key=SEED_KEYS["openai"]), timeout=30)

    def snapshot(self) -> Snapshot:
        return self.runner.run(self._snapshot())

    async def _snapshot(self) -> Snapshot:
        keys = await self.kv_db.fetchrow(
            "SELECT count(*) AS n, coalesce(md5(string_agg(concat_ws('|', workspace, provider,"
            " fingerprint, base_url, key_version, update_time, encode(ciphertext, 'hex')), ','"
            " ORDER BY workspace, provider)), '') AS digest FROM api_keys"
        )
        last_audit = await self.kv_db.fetchval("SELECT coalesce(max(id), 0) FROM audit_events")
        runs = await self.ex_db.fetchrow(
            "SELECT count(*) AS n, coalesce(md5(string_agg(concat_ws('|', id, state, end_time,"
            " request_id, labels::text), ',' ORDER BY id)), '') AS digest FROM executions"
        )
        agents = await self.ex_db.fetchrow(
            "SELECT count(*) AS n, coalesce(md5(string_agg(concat_ws('|', workspace, agent_id,"
            " etag, update_time), ',' ORDER BY workspace, agent_id)), '') AS digest FROM agents"
        )
        return Snapshot(
            (keys["n"], keys["digest"]),
            last_audit,
            (runs["n"], runs["digest"]),
            (agents["n"], agents["digest"]),
        )

    def agent_etag(self, workspace: str, agent_id: str) -> str | None:
        """The agent's current etag, read from the database (None: no such agent)."""
        etag: str | None = self.runner.run(
            self.ex_db.fetchval(
                "SELECT etag FROM agents WHERE workspace = $1 AND agent_id = $2",
                workspace,
                agent_id,
            )
        )
        return etag

    def audit_after(self, last_id: int) -> list[AuditRow]:
        rows = self.runner.run(
            self.kv_db.fetch(
                "SELECT id, action, outcome, caller, reason, request_id FROM audit_events"
                " WHERE id > $1 ORDER BY id",
                last_id,
            )
        )
        return [AuditRow(**dict(r)) for r in rows]


# Any non-empty key is accepted by the emulator.
SEED_KEYS = {"openai": "sk-fuzz-seed-openai-0123456789", "anthropic": "sk-ant-fuzz-seed-0123456789"}


def seed(stack: FuzzStack) -> None:
    """A workspace with both keys, two executions, two agents, and a real page token of
    each listing."""
    ws = stack.seed_workspace = SEED
    for provider in SEED_KEYS:
        stack.set_key(f"workspaces/{ws}/apiKeys/{provider}")
    app_exec = stack.channel("execution", "app")
    for agent in ("agent-a", "agent-b"):
        responses = app_exec.unary_stream(
            "/execution.v1.ExecutionService/Execute",
            request_serializer=ex.ExecuteRequest.SerializeToString,
            response_deserializer=ex.ExecuteResponse.FromString,
        )(
            ex.ExecuteRequest(
                parent=f"workspaces/{ws}",
                agent_id=agent,
                provider=1,
                model="gpt-4o-mini",
                messages=[{"role": 2, "content": "hi"}],
            ),
            timeout=30,
        )
        stack.seed_execution = list(responses)[-1].completed.name

    for agent_id in SEED_AGENT_IDS:
        app_exec.unary_unary(
            "/execution.v1.ExecutionService/CreateAgent",
            request_serializer=ex.CreateAgentRequest.SerializeToString,
            response_deserializer=ex.CreateAgentResponse.FromString,
        )(
            ex.CreateAgentRequest(
                parent=f"workspaces/{ws}",
                agent_id=agent_id,
                agent=res.Agent(routes=[res.Route(provider=1, model="gpt-4o-mini")]),
            ),
            timeout=30,
        )

    def token(service: str, identity: str, method: str, request: Any, response: Any) -> str:
        answer = stack.channel(service, identity).unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )(request, timeout=30)
        assert answer.next_page_token, f"{method}: the seed must give a second page"
        return str(answer.next_page_token)

    stack.tokens = {
        "ListApiKeys": token(
            "keyvault",
            "app",
            "/keyvault.v1.KeyVaultService/ListApiKeys",
            kv.ListApiKeysRequest(parent=f"workspaces/{ws}", page_size=1),
            kv.ListApiKeysResponse,
        ),
        "ListAuditEvents": token(
            "keyvault",
            "admin",
            "/keyvault.v1.KeyVaultService/ListAuditEvents",
            kv.ListAuditEventsRequest(parent=f"workspaces/{ws}", page_size=1),
            kv.ListAuditEventsResponse,
        ),
        "ListExecutions": token(
            "execution",
            "app",
            "/execution.v1.ExecutionService/ListExecutions",
            ex.ListExecutionsRequest(parent=f"workspaces/{ws}", page_size=1),
            ex.ListExecutionsResponse,
        ),
        "ListAgents": token(
            "execution",
            "admin",
            "/execution.v1.ExecutionService/ListAgents",
            ex.ListAgentsRequest(parent=f"workspaces/{ws}", page_size=1),
            ex.ListAgentsResponse,
        ),
    }


def credentials(
    pki: Path, tls_for: Callable[[str], TlsFiles]
) -> dict[str, grpc.ChannelCredentials]:
    ca = session_ca(pki)
    anonymous = mint(ca, [], common_name="admin")
    by_identity = {
        identity: channel_credentials(tls_for(identity))
        for identity in IDENTITIES
        if identity != ANONYMOUS
    }
    by_identity[ANONYMOUS] = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem,
        private_key=anonymous.key_pem,
        certificate_chain=anonymous.cert_pem,
    )
    return by_identity
