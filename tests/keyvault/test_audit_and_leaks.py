"""Audit completeness and fail-closed reveals, a leak canary through the whole stack, and a
database outage seen through calls and health."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pythonjsonlogger.json import JsonFormatter

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res
from keyvault_service.keyring import Keyring
from service_kit.logs import _CallFields
from service_kit.secret import Secret
from tests.keyvault.conftest import StartVault, Stubs, keyring_of
from tests.keyvault.support import (
    audit_events,
    block_audit,
    expect_error,
    key_name,
    reason_of,
    request_id,
    unblock_audit,
    with_request_id,
    workspace,
)

Stub = Callable[[str], kv_grpc.KeyVaultServiceStub]
MakeDatabase = Callable[[str], Awaitable[str]]
API_KEY = "sk-proj-audit-0123456789abcdefAU01"
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
APP = "spiffe://agents.internal/app"
EXECUTION = "spiffe://agents.internal/execution"
ADMIN = "spiffe://agents.internal/admin"


# --- audit completeness --------------------------------------------------------------------


async def test_every_reveal_is_audited_once_with_its_request_id(vault_stub: Stub) -> None:
    ws = workspace()
    present, missing = key_name(ws, "openai"), key_name(ws, "anthropic")
    await vault_stub("app").SetApiKey(pb.SetApiKeyRequest(name=present, api_key=API_KEY))
    execution = vault_stub("execution")

    supplied: dict[str, str] = {}  # request id -> name revealed
    for i in range(8):
        rid, name = request_id(), (present if i % 2 == 0 else missing)
        supplied[rid] = name
        call = execution.RevealApiKey(
            pb.RevealApiKeyRequest(name=name), metadata=with_request_id(rid)
        )
        if name == present:
            assert (await call).plaintext_key == API_KEY
        else:
            await expect_error(call, grpc.StatusCode.NOT_FOUND)
    # No request id, or one not fit for logs and audit: the server generates one.
    unusable = ["has spaces in it", "x" * 129, 'quote"and;semicolon']
    for metadata in [(), (), *(with_request_id(bad) for bad in unusable)]:
        reply = await execution.RevealApiKey(
            pb.RevealApiKeyRequest(name=present), metadata=metadata
        )
        assert reply.plaintext_key == API_KEY

    reveals = [
        e
        for e in await audit_events(vault_stub("admin"), f"workspaces/{ws}")
        if e.action == res.AUDIT_ACTION_REVEAL
    ]
    assert len(reveals) == len(supplied) + 2 + len(unusable)
    by_id: dict[str, list[res.AuditEvent]] = {}
    for event in reveals:
        by_id.setdefault(event.request_id, []).append(event)
        assert event.caller == EXECUTION
        assert event.workspace == ws
    for rid, name in supplied.items():
        assert len(by_id[rid]) == 1, rid
        event = by_id[rid][0]
        if name == present:
            assert (event.outcome, event.reason) == (res.AUDIT_OUTCOME_ALLOWED, "")
            assert event.provider == res.PROVIDER_OPENAI
        else:
            assert (event.outcome, event.reason) == (res.AUDIT_OUTCOME_FAILED, "API_KEY_NOT_FOUND")
            assert event.provider == res.PROVIDER_ANTHROPIC
    generated = [rid for rid in by_id if rid not in supplied]
    assert len(generated) == 2 + len(unusable)  # every one distinct
    assert all(GENERATED_ID.match(rid) for rid in generated), generated


async def test_set_and_delete_are_audited(vault_stub: Stub) -> None:
    app, ws = vault_stub("app"), workspace()
    name = key_name(ws)
    ids = {step: request_id() for step in ("set", "replace", "bad-set", "delete", "delete-again")}
    await app.SetApiKey(
        pb.SetApiKeyRequest(name=name, api_key=API_KEY), metadata=with_request_id(ids["set"])
    )
    await app.SetApiKey(
        pb.SetApiKeyRequest(name=name, api_key=API_KEY + "2"),
        metadata=with_request_id(ids["replace"]),
    )
    await expect_error(
        app.SetApiKey(
            pb.SetApiKeyRequest(name=name, api_key="not a key"),
            metadata=with_request_id(ids["bad-set"]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await app.DeleteApiKey(
        pb.DeleteApiKeyRequest(name=name), metadata=with_request_id(ids["delete"])
    )
    await expect_error(
        app.DeleteApiKey(
            pb.DeleteApiKeyRequest(name=name), metadata=with_request_id(ids["delete-again"])
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    events = await audit_events(vault_stub("admin"), f"workspaces/{ws}")
    seen = {e.request_id: e for e in events}
    assert len(events) == len(seen) == len(ids)
    expected = {
        "set": (res.AUDIT_ACTION_SET, res.AUDIT_OUTCOME_ALLOWED, ""),
        "replace": (res.AUDIT_ACTION_SET, res.AUDIT_OUTCOME_ALLOWED, ""),
        "bad-set": (res.AUDIT_ACTION_SET, res.AUDIT_OUTCOME_FAILED, "INVALID_ARGUMENT"),
        "delete": (res.AUDIT_ACTION_DELETE, res.AUDIT_OUTCOME_ALLOWED, ""),
        "delete-again": (res.AUDIT_ACTION_DELETE, res.AUDIT_OUTCOME_FAILED, "API_KEY_NOT_FOUND"),
    }
    for step, rid in ids.items():
        event = seen[rid]
        assert (event.action, event.outcome, event.reason) == expected[step], step
        assert (event.caller, event.workspace, event.provider) == (APP, ws, res.PROVIDER_OPENAI)
    # Newest first, in the order the calls were made.
    assert [e.request_id for e in events] == list(reversed(ids.values()))


async def test_a_set_refused_by_the_database_is_audited(vault_stub: Stub) -> None:
    # PostgreSQL refuses a NUL in text. Whether validation or the database catches it, the
    # attempt leaves one FAILED record and no key.
    app, ws, rid = vault_stub("app"), workspace(), request_id()
    name = key_name(ws)
    request = pb.SetApiKeyRequest(name=name, api_key=API_KEY, base_url="https://a.example/\x00")
    with pytest.raises(grpc.aio.AioRpcError):
        await app.SetApiKey(request, metadata=with_request_id(rid))
    await expect_error(app.GetApiKey(pb.GetApiKeyRequest(name=name)), grpc.StatusCode.NOT_FOUND)
    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    assert [(e.action, e.outcome, e.workspace) for e in events] == [
        (res.AUDIT_ACTION_SET, res.AUDIT_OUTCOME_FAILED, ws)
    ]
    assert events[0].reason


async def test_a_rewrap_refused_as_invalid_is_audited(vault_stub: Stub) -> None:
    rid = request_id()
    await expect_error(
        vault_stub("admin").RewrapApiKeys(
            pb.RewrapApiKeysRequest(batch_size=-1), metadata=with_request_id(rid)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    assert [(e.action, e.outcome, e.reason, e.caller) for e in events] == [
        (res.AUDIT_ACTION_REWRAP, res.AUDIT_OUTCOME_FAILED, "INVALID_ARGUMENT", ADMIN)
    ]


async def test_reveal_fails_closed_when_audit_cannot_be_written(
    start_vault: StartVault, make_database: MakeDatabase, stubs_for: Callable[..., Stubs]
) -> None:
    url = await make_database("kv")
    stubs = stubs_for(await start_vault(keyring_of(1), url))
    ws = workspace()
    name = key_name(ws)
    await stubs.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY))

    await block_audit(url)
    try:
        for target in (name, key_name(ws, "anthropic")):  # present and missing alike
            err = await expect_error(
                stubs.execution.RevealApiKey(pb.RevealApiKeyRequest(name=target)),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert reason_of(err) == "AUDIT_UNAVAILABLE"
            assert API_KEY not in f"{err.details()} {err.trailing_metadata()}"
        # A denial stays a denial when it cannot be recorded.
        err = await expect_error(
            stubs.app.RevealApiKey(pb.RevealApiKeyRequest(name=name)),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert reason_of(err) == "PERMISSION_DENIED"
        # A bad request is still told what is wrong with it: nothing was to be changed.
        await expect_error(
            stubs.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key="not a key")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        # A write cannot happen unrecorded either: the key is left as it was. A rewrap
        # (which changes no key) says it was not recorded.
        for change in (
            stubs.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY + "new")),
            stubs.app.DeleteApiKey(pb.DeleteApiKeyRequest(name=name)),
            stubs.admin.RewrapApiKeys(pb.RewrapApiKeysRequest()),
        ):
            err = await expect_error(change, grpc.StatusCode.UNAVAILABLE)
            assert reason_of(err) == "AUDIT_UNAVAILABLE"
    finally:
        await unblock_audit(url)

    revealed = await stubs.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name))
    assert revealed.plaintext_key == API_KEY
    reveals = [e for e in await audit_events(stubs.admin) if e.action == res.AUDIT_ACTION_REVEAL]
    assert [(e.outcome, e.workspace) for e in reveals] == [(res.AUDIT_OUTCOME_ALLOWED, ws)]


async def test_undecryptable_reveal_leaves_one_failed_record(
    start_vault: StartVault, make_database: MakeDatabase, stubs_for: Callable[..., Stubs]
) -> None:
    url = await make_database("kv")
    stubs = stubs_for(await start_vault(keyring_of(1), url))
    ws, rid = workspace(), request_id()
    name = key_name(ws)
    await stubs.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY))
    await _admin_execute(
        url,
        "UPDATE api_keys SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1)"
        f" WHERE workspace = '{ws}'",
    )

    err = await expect_error(
        stubs.execution.RevealApiKey(
            pb.RevealApiKeyRequest(name=name), metadata=with_request_id(rid)
        ),
        grpc.StatusCode.INTERNAL,
    )
    assert reason_of(err) == "STORED_KEY_UNDECRYPTABLE"
    events = [e for e in await audit_events(stubs.admin) if e.request_id == rid]
    assert [(e.action, e.outcome, e.reason, e.caller) for e in events] == [
        (res.AUDIT_ACTION_REVEAL, res.AUDIT_OUTCOME_FAILED, "STORED_KEY_UNDECRYPTABLE", EXECUTION)
    ]


_BLOCK_KEY_WRITES = """
    CREATE FUNCTION refuse_key_writes() RETURNS trigger LANGUAGE plpgsql
        AS $$ BEGIN RAISE EXCEPTION 'api_keys refuses writes'; END $$;
    CREATE TRIGGER refuse_key_writes BEFORE INSERT OR UPDATE OR DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION refuse_key_writes()"""


async def test_changes_that_fail_after_validation_are_audited(
    start_vault: StartVault, make_database: MakeDatabase, stubs_for: Callable[..., Stubs]
) -> None:
    url = await make_database("kv")
    first = keyring_of(1)
    ws = workspace()
    name = key_name(ws)
    await stubs_for(await start_vault(first, url)).app.SetApiKey(
        pb.SetApiKeyRequest(name=name, api_key=API_KEY)
    )
    rotated = Keyring(keys={**first.keys, **keyring_of(2).keys}, primary_version=2)
    stubs = stubs_for(await start_vault(rotated, url))  # the key is now due for a rewrap

    await _admin_execute(url, _BLOCK_KEY_WRITES)
    ids = {step: request_id() for step in ("set", "delete", "rewrap")}
    try:
        for step, call, request in [
            ("set", stubs.app.SetApiKey, pb.SetApiKeyRequest(name=name, api_key=API_KEY + "new")),
            ("delete", stubs.app.DeleteApiKey, pb.DeleteApiKeyRequest(name=name)),
            ("rewrap", stubs.admin.RewrapApiKeys, pb.RewrapApiKeysRequest()),
        ]:
            err = await expect_error(
                call(request, metadata=with_request_id(ids[step])), grpc.StatusCode.INTERNAL
            )
            assert reason_of(err) == "INTERNAL", step
    finally:
        await _admin_execute(url, "DROP TRIGGER refuse_key_writes ON api_keys")

    revealed = await stubs.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name))
    assert revealed.plaintext_key == API_KEY  # nothing changed
    events = [e for e in await audit_events(stubs.admin) if e.request_id in ids.values()]
    assert len(events) == len(ids)  # one record per call
    by_id = {e.request_id: e for e in events}
    expected = {
        "set": (res.AUDIT_ACTION_SET, APP, ws, res.PROVIDER_OPENAI),
        "delete": (res.AUDIT_ACTION_DELETE, APP, ws, res.PROVIDER_OPENAI),
        "rewrap": (res.AUDIT_ACTION_REWRAP, ADMIN, "", res.PROVIDER_UNSPECIFIED),
    }
    for step, rid in ids.items():
        event = by_id[rid]
        assert (event.action, event.caller, event.workspace, event.provider) == expected[step]
        assert (event.outcome, event.reason) == (res.AUDIT_OUTCOME_FAILED, "INTERNAL"), step


# --- leak canary ---------------------------------------------------------------------------

CANARY = "sk-proj-CANARY-7f3d9a1c5e8b2046d1f0a9c8e7b6LEAK"


class _Capture:
    """Every log record of the process at DEBUG, formatted as the service formats them
    (JSON with `extra` fields and the call's request id and caller)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setLevel(logging.DEBUG)
        self.handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.handler.addFilter(_CallFields())

    def __enter__(self) -> _Capture:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self.handler)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self._level)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def _error_text(err: grpc.aio.AioRpcError) -> str:
    """Everything a caller sees of a failed call, rich status details decoded as latin-1."""
    parts = [str(err.code()), err.details() or "", err.debug_error_string() or ""]
    for key, value in (*(err.trailing_metadata() or ()), *(err.initial_metadata() or ())):
        parts.append(key)
        parts.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return "\n".join(parts)


async def _dump_database(url: str) -> str:
    """Every row of every table in the public schema as text, plus bytea columns as latin-1."""
    conn = await asyncpg.connect(url)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        assert {"api_keys", "audit_events", "schema_migrations"} <= set(tables)
        parts = []
        for table in tables:
            parts += [r[0] for r in await conn.fetch(f'SELECT t::text FROM "{table}" t')]
            bytea_columns = await conn.fetch(
                """SELECT column_name FROM information_schema.columns
                   WHERE table_schema = 'public' AND table_name = $1 AND data_type = 'bytea'""",
                table,
            )
            for column in bytea_columns:
                name = column["column_name"]
                for row in await conn.fetch(f'SELECT "{name}" FROM "{table}"'):
                    if row[0] is not None:
                        parts.append(bytes(row[0]).decode("latin-1"))
        return "\n".join(parts)
    finally:
        await conn.close()


def _traceback_with_locals(secret: Secret) -> str:
    """A traceback rendered with its frames' locals (as error trackers do) while a Secret
    is a local and an exception argument."""

    def fail(key: Secret) -> None:
        raise ValueError("boom", key)

    try:
        fail(secret)
    except ValueError as exc:
        tb = traceback.TracebackException.from_exception(exc, capture_locals=True)
        return "".join(tb.format())
    raise AssertionError("unreachable")


def _forms(secret: str) -> list[str]:
    """The canary and encodings a careless log line or column might use."""
    data = secret.encode()
    return [secret, data.hex(), secret[8:], repr(data)[2:-1]]


async def test_canary_key_never_leaks(
    start_vault: StartVault,
    make_database: MakeDatabase,
    stubs_for: Callable[..., Stubs],
) -> None:
    url = await make_database("kv")
    master = {1: bytes(range(32)), 2: bytes(range(32, 64))}
    errors: list[grpc.aio.AioRpcError] = []
    seen_objects: list[Any] = []
    ws, other_ws = workspace(), workspace()
    name, other = key_name(ws), key_name(other_ws)
    denied_rid = request_id()

    async def failing(call: Any) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        errors.append(caught.value)

    with _Capture() as logs:
        running = await start_vault(Keyring(keys={1: master[1]}, primary_version=1), url)
        s = stubs_for(running)
        await s.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=CANARY))
        await s.app.SetApiKey(pb.SetApiKeyRequest(name=other, api_key=CANARY))
        await s.app.GetApiKey(pb.GetApiKeyRequest(name=name))
        await s.app.ListApiKeys(pb.ListApiKeysRequest(parent=f"workspaces/{ws}"))
        assert (await s.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name))).plaintext_key
        # Failing calls that carry the canary.
        for bad in (
            pb.SetApiKeyRequest(name="workspaces/w/apiKeys/gemini", api_key=CANARY),
            pb.SetApiKeyRequest(name="bogus", api_key=CANARY + " with a space"),
            pb.SetApiKeyRequest(name=name, api_key=CANARY, base_url="ftp://h/" + CANARY),
            pb.SetApiKeyRequest(name=name, api_key=CANARY + "\u00e9"),
            pb.SetApiKeyRequest(name=name, api_key=CANARY * 200),
        ):
            await failing(s.app.SetApiKey(bad))
        await failing(
            s.execution.SetApiKey(
                pb.SetApiKeyRequest(name=name, api_key=CANARY), metadata=with_request_id(denied_rid)
            )
        )
        await failing(s.app.RevealApiKey(pb.RevealApiKeyRequest(name=name)))
        # Fail-closed reveal, then a tampered row.
        await block_audit(url)
        try:
            await failing(s.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name)))
            await failing(s.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=CANARY)))
        finally:
            await unblock_audit(url)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "UPDATE api_keys SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20)"
                " # 1) WHERE workspace = $1",
                other_ws,
            )
        finally:
            await conn.close()
        await failing(s.execution.RevealApiKey(pb.RevealApiKeyRequest(name=other)))
        await s.app.SetApiKey(pb.SetApiKeyRequest(name=other, api_key=CANARY))
        seen_objects += [running, running.vault, vars(running.vault), running.server]
        await running.stop(grace=0.5)

        # Rotation: restart on a two-key ring, rewrap, reveal, delete one copy.
        rotated = await start_vault(Keyring(keys=master, primary_version=2), url)
        s = stubs_for(rotated)
        rewrap = await s.admin.RewrapApiKeys(pb.RewrapApiKeysRequest(batch_size=1))
        assert rewrap.rewrapped_count == 2
        revealed = await s.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name))
        assert revealed.plaintext_key == CANARY
        await s.app.DeleteApiKey(pb.DeleteApiKeyRequest(name=other))
        seen_objects += [rotated, rotated.vault, vars(rotated.vault), rotated.pool]
        await asyncio.sleep(0)

    assert len(errors) == 10
    log_text = logs.text
    # The capture really saw the scenario, extra fields and call fields included.
    assert '"message": "call denied"' in log_text
    assert denied_rid in log_text
    assert "stored key failed to decrypt" in log_text
    assert "reveal refused: audit record not written" in log_text
    assert '"error": "CheckViolationError"' in log_text  # `extra` fields are in the output

    secret = Secret(CANARY)
    traceback_text = _traceback_with_locals(secret)
    object_text = "\n".join(
        [
            *(repr(o) for o in seen_objects),
            *(str(o) for o in seen_objects),
            repr(secret),
            str(secret),
            f"{secret} {secret!r} {secret:>80}",
            "%s %r" % (secret, secret),  # noqa: UP031 - the %-formatting path on purpose
            traceback_text,
        ]
    )
    assert "**********" in object_text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)

    database_text = await _dump_database(url)
    assert ws in database_text  # the dump really holds the vault's rows

    for where, text in [
        ("logs", log_text),
        ("errors", "\n".join(_error_text(e) for e in errors)),
        ("objects", object_text),
        ("database", database_text),
    ]:
        for form in _forms(CANARY):
            assert form not in text, f"canary ({form[:12]}...) leaked into {where}"


# --- database outage -----------------------------------------------------------------------


async def _admin_execute(server_uri: str, *statements: str) -> None:
    conn = await asyncpg.connect(server_uri)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _wait_for_health(health: health_pb2_grpc.HealthStub, wanted: int) -> None:
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="keyvault.v1.KeyVaultService"), timeout=5
        )
        status = reply.status
        if status == wanted:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"health stayed {status}, wanted {wanted}")


async def test_database_outage_is_unavailable_and_reported_by_health(
    start_vault: StartVault,
    make_database: MakeDatabase,
    stubs_for: Callable[..., Stubs],
    pg_server_uri: str,
) -> None:
    url = await make_database("kv")
    database = urlsplit(url).path.lstrip("/")
    s = stubs_for(await start_vault(keyring_of(1), url))
    ws = workspace()
    name = key_name(ws)
    await s.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY))
    await _wait_for_health(s.health, health_pb2.HealthCheckResponse.SERVING)

    await _admin_execute(
        pg_server_uri,
        f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false',
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()",
    )
    try:
        calls = [
            s.app.GetApiKey(pb.GetApiKeyRequest(name=name), timeout=15),
            s.app.ListApiKeys(pb.ListApiKeysRequest(parent=f"workspaces/{ws}"), timeout=15),
            s.app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY), timeout=15),
            s.app.DeleteApiKey(pb.DeleteApiKeyRequest(name=name), timeout=15),
            s.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name), timeout=15),
            s.admin.RewrapApiKeys(pb.RewrapApiKeysRequest(), timeout=15),
            s.admin.ListAuditEvents(pb.ListAuditEventsRequest(parent="workspaces/-"), timeout=15),
        ]
        for call in calls:
            err = await expect_error(call, grpc.StatusCode.UNAVAILABLE)
            assert reason_of(err) == "DATABASE_UNAVAILABLE", err.details()
            assert API_KEY not in _error_text(err)
        # Permission is still checked first: a denied caller is told so, outage or not.
        await expect_error(
            s.app.RevealApiKey(pb.RevealApiKeyRequest(name=name), timeout=15),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await _wait_for_health(s.health, health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        await _admin_execute(pg_server_uri, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

    await _wait_for_health(s.health, health_pb2.HealthCheckResponse.SERVING)
    revealed = await s.execution.RevealApiKey(pb.RevealApiKeyRequest(name=name), timeout=15)
    assert revealed.plaintext_key == API_KEY
    await s.app.GetApiKey(pb.GetApiKeyRequest(name=name), timeout=15)
