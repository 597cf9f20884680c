"""Master key rotation end to end (restarts on one database, batched rewrap beside
concurrent writes, start-up refusal) and tampering with stored rows."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import grpc
import pytest

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res
from keyvault_service.app import RunningKeyVault, StartupError
from keyvault_service.keyring import Keyring
from service_kit.tls import TlsFiles
from tests.conftest import secure_channel
from tests.keyvault.conftest import StartVault
from tests.keyvault.support import audit_events, key_name, reason_of, workspace

MASTER = {1: os.urandom(32), 2: os.urandom(32)}
MakeDatabase = Callable[[str], Awaitable[str]]


def ring(*versions: int, primary: int | None = None) -> Keyring:
    """A keyring whose versions keep the same key material across restarts."""
    return Keyring(keys={v: MASTER[v] for v in versions}, primary_version=primary or max(versions))


def secret_for(ws: str, generation: int = 0) -> str:
    return f"sk-proj-rot-{ws}-gen{generation}-Zz09"


class Clients:
    """Stubs on one running vault, one per workload."""

    def __init__(self, running: RunningKeyVault, tls_for: Callable[[str], TlsFiles]) -> None:
        self._channels = {
            w: secure_channel(running.port, tls_for(w)) for w in ("app", "execution", "admin")
        }
        self.app = kv_grpc.KeyVaultServiceStub(self._channels["app"])
        self.execution = kv_grpc.KeyVaultServiceStub(self._channels["execution"])
        self.admin = kv_grpc.KeyVaultServiceStub(self._channels["admin"])

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()

    async def set(self, name: str, value: str) -> res.ApiKey:
        reply = await self.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=value))
        return reply.api_key

    async def reveal(self, name: str) -> pb.RevealApiKeyResponse:
        return await self.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name))

    async def get(self, name: str) -> res.ApiKey:
        return (await self.admin.GetApiKey(pb.GetApiKeyRequest(name=name))).api_key

    async def rewrap(self, batch_size: int = 0) -> pb.RewrapApiKeysResponse:
        return await self.admin.RewrapApiKeys(pb.RewrapApiKeysRequest(batch_size=batch_size))


Connect = Callable[[RunningKeyVault], Clients]


@pytest.fixture
async def connect(tls_for: Callable[[str], TlsFiles]) -> AsyncIterator[Connect]:
    opened: list[Clients] = []

    def make(running: RunningKeyVault) -> Clients:
        clients = Clients(running, tls_for)
        opened.append(clients)
        return clients

    yield make
    for clients in opened:
        await clients.close()


async def stored_versions(url: str) -> dict[str, tuple[int, bytes]]:
    """workspace/provider -> (key_version column, ciphertext), read directly."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT workspace, provider, key_version, ciphertext FROM api_keys")
    finally:
        await conn.close()
    return {f"{r['workspace']}/{r['provider']}": (r["key_version"], r["ciphertext"]) for r in rows}


async def rewrap_times(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT workspace, provider, rewrap_time FROM api_keys")
    finally:
        await conn.close()
    return {f"{r['workspace']}/{r['provider']}": r["rewrap_time"] for r in rows}


async def test_rotation_through_restarts_and_batched_rewrap(
    start_vault: StartVault, make_database: MakeDatabase, connect: Connect
) -> None:
    url = await make_database("kv")
    workspaces = [workspace() for _ in range(7)]
    names = [key_name(ws) for ws in workspaces]

    # Generation 1: one master key.
    v1 = await start_vault(ring(1), url)
    old = connect(v1)
    before = {n: await old.set(n, secret_for(ws)) for n, ws in zip(names, workspaces, strict=True)}
    assert {k.master_key_version for k in before.values()} == {1}
    await v1.stop(grace=0.5)

    # Generation 2: version 2 added and primary; version 1 still decrypts.
    v12 = await start_vault(ring(1, 2), url)
    mid = connect(v12)
    for n, ws in zip(names, workspaces, strict=True):
        revealed = await mid.reveal(n)
        assert revealed.plaintext_key == secret_for(ws)
        assert revealed.api_key.master_key_version == 1
    new_ws = workspace()
    new_name = key_name(new_ws)
    assert (await mid.set(new_name, secret_for(new_ws))).master_key_version == 2
    ciphertexts_before = await stored_versions(url)

    result = await mid.rewrap(batch_size=2)  # 7 old keys: four batches
    assert (result.primary_version, result.rewrapped_count, result.remaining_count) == (2, 7, 0)
    again = await mid.rewrap(batch_size=2)  # resumable: nothing left to do
    assert (again.rewrapped_count, again.remaining_count) == (0, 0)

    ciphertexts_after = await stored_versions(url)
    for n, ws in zip(names, workspaces, strict=True):
        row = f"{ws}/openai"
        assert ciphertexts_after[row][0] == 2
        assert ciphertexts_after[row][1] != ciphertexts_before[row][1]
        assert ciphertexts_after[row][1][1:5] == (2).to_bytes(4, "big")  # blob header
        meta = await mid.get(n)
        # Rewrap changes only the encryption, never what callers see of the key.
        assert meta.master_key_version == 2
        assert (meta.key_hint, meta.fingerprint, meta.create_time, meta.update_time) == (
            before[n].key_hint,
            before[n].fingerprint,
            before[n].create_time,
            before[n].update_time,  # the time the key was set, not the rewrap's
        )
    rewrapped_at = await rewrap_times(url)
    assert all(rewrapped_at[f"{ws}/openai"] is not None for ws in workspaces)
    assert rewrapped_at[f"{new_ws}/openai"] is None  # already under the primary: untouched
    assert ciphertexts_after[f"{new_ws}/openai"] == ciphertexts_before[f"{new_ws}/openai"]
    rewraps = [e for e in await audit_events(mid.admin) if e.action == res.AUDIT_ACTION_REWRAP]
    assert len(rewraps) == 2
    assert {(e.outcome, e.caller) for e in rewraps} == {
        (res.AUDIT_OUTCOME_ALLOWED, "spiffe://agents.internal/admin")
    }
    await v12.stop(grace=0.5)

    # Generation 3: version 1 retired.
    v2 = await start_vault(ring(2), url)
    new = connect(v2)
    for n, ws in [*zip(names, workspaces, strict=True), (new_name, new_ws)]:
        revealed = await new.reveal(n)
        assert revealed.plaintext_key == secret_for(ws)
        assert revealed.api_key.master_key_version == 2


async def test_start_refuses_a_ring_missing_a_stored_version(
    start_vault: StartVault, make_database: MakeDatabase, connect: Connect
) -> None:
    url = await make_database("kv")
    v1 = await start_vault(ring(1), url)
    clients = connect(v1)
    for _ in range(3):
        ws = workspace()
        await clients.set(key_name(ws), secret_for(ws))
    await v1.stop(grace=0.5)

    with pytest.raises(StartupError) as caught:
        await start_vault(ring(2), url)
    message = str(caught.value)
    assert "version 1 (3 keys)" in message
    assert "KEYVAULT_MASTER_KEYS" in message
    for key in MASTER.values():
        assert key.hex() not in message

    # With version 1 back in the ring the same database starts and serves.
    v12 = await start_vault(ring(1, 2), url)
    assert (await connect(v12).rewrap()).rewrapped_count == 3


async def test_rewrap_beside_concurrent_writes_loses_nothing(
    start_vault: StartVault, make_database: MakeDatabase, connect: Connect
) -> None:
    url = await make_database("kv")
    workspaces = [workspace() for _ in range(100)]
    names = {
        ws: key_name(ws, "anthropic" if i % 2 else "openai") for i, ws in enumerate(workspaces)
    }

    v1 = await start_vault(ring(1), url)
    first = connect(v1)
    await asyncio.gather(*(first.set(names[ws], secret_for(ws, 0)) for ws in workspaces))
    await v1.stop(grace=0.5)

    v12 = await start_vault(ring(1, 2), url)
    clients = connect(v12)

    async def writer(ws: str) -> None:
        # One write per key: a rewrap that overwrote it would leave the old value visible.
        key = await clients.set(names[ws], secret_for(ws, 1))
        assert key.master_key_version == 2

    async def rewrapper() -> None:
        result = await clients.rewrap(batch_size=25)
        assert result.primary_version == 2
        assert result.remaining_count >= 0

    # Half of the keys are rewritten while two rewraps run; the other half only rewrapped.
    writing = set(workspaces[::2])
    await asyncio.gather(rewrapper(), *(writer(ws) for ws in writing), rewrapper())
    final = await clients.rewrap(batch_size=25)
    assert final.remaining_count == 0

    expected = {ws: secret_for(ws, 1 if ws in writing else 0) for ws in workspaces}
    reveals = await asyncio.gather(*(clients.reveal(names[ws]) for ws in workspaces))
    lost = [
        ws for ws, r in zip(workspaces, reveals, strict=True) if r.plaintext_key != expected[ws]
    ]
    assert lost == []
    assert {r.api_key.master_key_version for r in reveals} == {2}
    stored = await stored_versions(url)
    assert len(stored) == len(workspaces)
    assert {v for v, _ in stored.values()} == {2}


# --- tampering at rest ---------------------------------------------------------------------

TAMPERING = {
    "flipped-ciphertext-byte": "UPDATE api_keys SET ciphertext = set_byte(ciphertext, 30, "
    "get_byte(ciphertext, 30) # 1) WHERE workspace = $1 AND provider = 'openai'",
    "flipped-tag-byte": "UPDATE api_keys SET ciphertext = set_byte(ciphertext, "
    "length(ciphertext) - 1, get_byte(ciphertext, length(ciphertext) - 1) # 128) "
    "WHERE workspace = $1 AND provider = 'openai'",
    "header-names-unknown-version": "UPDATE api_keys SET ciphertext = set_byte(ciphertext, 4, 9) "
    "WHERE workspace = $1 AND provider = 'openai'",
    "unknown-format-byte": "UPDATE api_keys SET ciphertext = set_byte(ciphertext, 0, 7) "
    "WHERE workspace = $1 AND provider = 'openai'",
    "truncated": "UPDATE api_keys SET ciphertext = substring(ciphertext from 1 for 20) "
    "WHERE workspace = $1 AND provider = 'openai'",
    "empty": "UPDATE api_keys SET ciphertext = ''::bytea "
    "WHERE workspace = $1 AND provider = 'openai'",
    # The anthropic key's ciphertext moved into the openai slot of the same workspace.
    "moved-to-another-provider": "UPDATE api_keys SET ciphertext = (SELECT ciphertext "
    "FROM api_keys WHERE workspace = $1 AND provider = 'anthropic') "
    "WHERE workspace = $1 AND provider = 'openai'",
}


async def _assert_opaque_failure(
    clients: Clients, name: str, secret: str, ciphertext: bytes
) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.reveal(name)
    err = caught.value
    assert err.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
    assert reason_of(err) == "STORED_KEY_UNDECRYPTABLE"
    everything = " ".join(
        [
            err.details() or "",
            err.debug_error_string() or "",
            repr(err.trailing_metadata()),
            repr(err.initial_metadata()),
        ]
    )
    forms = [secret, ciphertext.hex(), base64.b64encode(ciphertext).decode()]
    if len(ciphertext) >= 8:
        forms.append(ciphertext[-16:].decode("latin-1"))
    for form in forms:
        assert form not in everything
    return err.code()


async def test_tampered_or_moved_rows_fail_to_reveal_without_leaking(
    start_vault: StartVault, make_database: MakeDatabase, connect: Connect
) -> None:
    url = await make_database("kv")
    running = await start_vault(ring(1), url)
    clients = connect(running)
    secrets: dict[str, str] = {}
    for case in TAMPERING:
        ws = workspace()
        secrets[case] = secret_for(ws)
        await clients.set(key_name(ws, "openai"), secrets[case])
        await clients.set(key_name(ws, "anthropic"), secret_for(ws, 1))
        secrets[case + ":ws"] = ws
    intact_ws = workspace()
    await clients.set(key_name(intact_ws), secret_for(intact_ws))

    conn = await asyncpg.connect(url)
    try:
        stored_before = {
            case: bytes(
                await conn.fetchval(
                    "SELECT ciphertext FROM api_keys WHERE workspace = $1 AND provider = 'openai'",
                    secrets[case + ":ws"],
                )
            )
            for case in TAMPERING
        }
        for case, sql in TAMPERING.items():
            assert await conn.execute(sql, secrets[case + ":ws"]) == "UPDATE 1"
        # A whole row copied into another workspace.
        copied_ws = workspace()
        await conn.execute(
            """INSERT INTO api_keys (workspace, provider, ciphertext, key_version, key_hint,
                                     fingerprint, base_url)
               SELECT $2, provider, ciphertext, key_version, key_hint, fingerprint, base_url
               FROM api_keys WHERE workspace = $1 AND provider = 'openai'""",
            intact_ws,
            copied_ws,
        )
    finally:
        await conn.close()

    codes = set()
    for case in TAMPERING:
        name = key_name(secrets[case + ":ws"])
        codes.add(await _assert_opaque_failure(clients, name, secrets[case], stored_before[case]))
        assert (await clients.get(name)).name == name  # metadata stays readable
    codes.add(
        await _assert_opaque_failure(
            clients,
            key_name(copied_ws),
            secret_for(intact_ws),
            (await stored_versions(url))[f"{copied_ws}/openai"][1],
        )
    )
    assert len(codes) == 1, codes  # one error for every cause
    assert (await clients.reveal(key_name(intact_ws))).plaintext_key == secret_for(intact_ws)

    failed = [
        e
        for e in await audit_events(clients.admin)
        if e.action == res.AUDIT_ACTION_REVEAL and e.outcome == res.AUDIT_OUTCOME_FAILED
    ]
    assert len(failed) == len(TAMPERING) + 1
    assert {e.reason for e in failed} == {"STORED_KEY_UNDECRYPTABLE"}

    # Rewrap skips what it cannot decrypt and reports it as remaining.
    await running.stop(grace=0.5)
    rotated = connect(await start_vault(ring(1, 2), url))
    result = await rotated.rewrap(batch_size=3)
    intact = len(TAMPERING) + 1  # every anthropic key and the intact workspace's key
    assert (result.rewrapped_count, result.remaining_count) == (intact, len(TAMPERING) + 1)
