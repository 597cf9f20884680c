"""Who may call what, over real mTLS: the policy matrix, audit of denied calls, hostile
certificates, side services for every workload, and server certificate reload."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from clients.gen.keyvault.v1 import resources_pb2 as res
from keyvault_service.app import RunningKeyVault
from keyvault_service.servicer import audit_denied_call
from service_kit import devcerts
from service_kit.call_context import CallInfo
from service_kit.tls import TlsFiles
from tests.keyvault.conftest import StartVault, keyring_of, vault_settings
from tests.keyvault.support import (
    audit_events,
    channel,
    client_credentials,
    expect_error,
    key_name,
    reason_of,
    request_id,
    session_ca,
    with_request_id,
    workspace,
)

Stub = Callable[[str], kv_grpc.KeyVaultServiceStub]
SERVICE = "keyvault.v1.KeyVaultService"
API_KEY = "sk-proj-authz-0123456789abcdefQR77"
WORKLOADS = ("keyvault", "execution", "app", "admin")
METHODS = (
    "SetApiKey",
    "GetApiKey",
    "ListApiKeys",
    "DeleteApiKey",
    "RevealApiKey",
    "RewrapApiKeys",
    "ListAuditEvents",
)
ALLOWED = {
    "keyvault": set(),
    "execution": {"RevealApiKey"},
    "app": {"SetApiKey", "GetApiKey", "ListApiKeys", "DeleteApiKey"},
    "admin": {"RewrapApiKeys", "ListAuditEvents", "GetApiKey", "ListApiKeys"},
}
# Audited methods and what an allowed call on a missing key records (None: an allowed call
# is not recorded, a denied one is).
AUDITED: dict[str, tuple[int, tuple[int, str] | None]] = {
    "SetApiKey": (res.AUDIT_ACTION_SET, (res.AUDIT_OUTCOME_ALLOWED, "")),
    "DeleteApiKey": (res.AUDIT_ACTION_DELETE, (res.AUDIT_OUTCOME_FAILED, "API_KEY_NOT_FOUND")),
    "RevealApiKey": (res.AUDIT_ACTION_REVEAL, (res.AUDIT_OUTCOME_FAILED, "API_KEY_NOT_FOUND")),
    "RewrapApiKeys": (res.AUDIT_ACTION_REWRAP, (res.AUDIT_OUTCOME_ALLOWED, "")),
    "ListAuditEvents": (res.AUDIT_ACTION_LIST_AUDIT_EVENTS, None),
}
# Methods that name no key record no provider (the others name the workspace's OpenAI key).
AUDITED_PROVIDER = {
    "RewrapApiKeys": res.PROVIDER_UNSPECIFIED,
    "ListAuditEvents": res.PROVIDER_UNSPECIFIED,
}
# What an allowed call returns when the key does not exist (None: it succeeds).
ALLOWED_OUTCOME = {
    "SetApiKey": None,
    "GetApiKey": grpc.StatusCode.NOT_FOUND,
    "ListApiKeys": None,
    "DeleteApiKey": grpc.StatusCode.NOT_FOUND,
    "RevealApiKey": grpc.StatusCode.NOT_FOUND,
    "RewrapApiKeys": None,
    "ListAuditEvents": None,
}


def invoke(stub: kv_grpc.KeyVaultServiceStub, method: str, ws: str, rid: str) -> Any:
    """One call of `method` about workspace `ws`'s (missing) OpenAI key."""
    name = key_name(ws)
    request = {
        "SetApiKey": pb.SetApiKeyRequest(name=name, api_key=API_KEY),
        "GetApiKey": pb.GetApiKeyRequest(name=name),
        "ListApiKeys": pb.ListApiKeysRequest(parent=f"workspaces/{ws}"),
        "DeleteApiKey": pb.DeleteApiKeyRequest(name=name),
        "RevealApiKey": pb.RevealApiKeyRequest(name=name),
        "RewrapApiKeys": pb.RewrapApiKeysRequest(batch_size=10),
        "ListAuditEvents": pb.ListAuditEventsRequest(parent=f"workspaces/{ws}"),
    }[method]
    return getattr(stub, method)(request, metadata=with_request_id(rid), timeout=10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("workload", WORKLOADS)
async def test_authorization_matrix(vault_stub: Stub, workload: str, method: str) -> None:
    ws, rid = workspace(), request_id()
    allowed = method in ALLOWED[workload]
    call = invoke(vault_stub(workload), method, ws, rid)

    if allowed:
        expected = ALLOWED_OUTCOME[method]
        if expected is None:
            await call
        else:
            err = await expect_error(call, expected)
            assert reason_of(err) == "API_KEY_NOT_FOUND"
    else:
        # Permission comes before existence: the key is missing, yet the answer is a denial.
        err = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED)
        assert reason_of(err) == "PERMISSION_DENIED"
        assert f"/{SERVICE}/{method}" in (err.details() or "")

    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    action, allowed_record = AUDITED.get(method, (None, None))
    expected_record = allowed_record if allowed else (res.AUDIT_OUTCOME_DENIED, "PERMISSION_DENIED")
    if action is None or expected_record is None:
        assert events == []
        return
    assert len(events) == 1, events
    event = events[0]
    assert event.action == action
    assert event.caller == devcerts.spiffe_id(workload)
    assert event.workspace == ("" if method == "RewrapApiKeys" else ws)
    assert event.provider == AUDITED_PROVIDER.get(method, res.PROVIDER_OPENAI)
    assert (event.outcome, event.reason) == expected_record


@pytest.mark.parametrize("workload", ["keyvault", "execution", "admin"])
async def test_denied_set_and_delete_change_nothing(vault_stub: Stub, workload: str) -> None:
    app = vault_stub("app")
    ws = workspace()
    name = key_name(ws)
    await app.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY))
    before = (await app.GetApiKey(pb.GetApiKeyRequest(name=name))).api_key

    stub = vault_stub(workload)
    await expect_error(
        stub.SetApiKey(pb.SetApiKeyRequest(name=name, api_key=API_KEY + "-evil")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        stub.DeleteApiKey(pb.DeleteApiKeyRequest(name=name)), grpc.StatusCode.PERMISSION_DENIED
    )
    after = (await app.GetApiKey(pb.GetApiKeyRequest(name=name))).api_key
    assert after == before
    revealed = await vault_stub("execution").RevealApiKey(pb.RevealApiKeyRequest(name=name))
    assert revealed.plaintext_key == API_KEY


@pytest.mark.parametrize("workload", WORKLOADS)
async def test_health_and_reflection_for_every_workload(
    shared_vault: RunningKeyVault, tls_for: Callable[[str], TlsFiles], workload: str
) -> None:
    files = tls_for(workload)
    ca = files.ca.read_bytes()
    issued = devcerts.Issued(files.cert.read_bytes(), files.key.read_bytes())
    async with channel(shared_vault.port, client_credentials(ca, issued)) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        replies = [r async for r in reflection.ServerReflectionInfo(iter(requests), timeout=10)]
        services = {s.name for s in replies[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= services
        assert replies[1].file_descriptor_response.file_descriptor_proto


# --- hostile certificates ------------------------------------------------------------------


def mint(
    ca: devcerts.Issued,
    sans: list[x509.GeneralName],
    *,
    common_name: str = "hostile",
) -> devcerts.Issued:
    """A client certificate signed by `ca` with exactly the given SANs (devcerts.issue always
    adds one SPIFFE ID, so the unusual shapes are built here)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return devcerts.Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _expired(ca: devcerts.Issued) -> devcerts.Issued:
    now = dt.datetime.now(dt.UTC)
    return devcerts.issue(
        ca, "admin", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )


def _not_yet_valid(ca: devcerts.Issued) -> devcerts.Issued:
    now = dt.datetime.now(dt.UTC)
    return devcerts.issue(
        ca, "admin", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30)
    )


HANDSHAKE_FAILURES: dict[str, Callable[[devcerts.Issued], devcerts.Issued | None]] = {
    "no-client-certificate": lambda ca: None,
    "another-ca": lambda ca: devcerts.issue(devcerts.make_ca("rogue CA"), "admin"),
    "expired": _expired,
    "not-yet-valid": _not_yet_valid,
}


@pytest.mark.parametrize("case", sorted(HANDSHAKE_FAILURES))
async def test_handshake_refuses_bad_client_certificates(
    shared_vault: RunningKeyVault, pki: Path, case: str
) -> None:
    ca = session_ca(pki)
    issued = HANDSHAKE_FAILURES[case](ca)
    async with channel(shared_vault.port, client_credentials(ca.cert_pem, issued)) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        await expect_error(
            health.Check(health_pb2.HealthCheckRequest(), timeout=10), grpc.StatusCode.UNAVAILABLE
        )
        stub = kv_grpc.KeyVaultServiceStub(ch)
        await expect_error(
            stub.RewrapApiKeys(pb.RewrapApiKeysRequest(), timeout=10),
            grpc.StatusCode.UNAVAILABLE,
        )


def _spiffe(workload: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(devcerts.spiffe_id(workload))


NO_IDENTITY_SANS: dict[str, list[x509.GeneralName]] = {
    "no-san-at-all": [],
    "dns-and-ip-only": [
        x509.DNSName("admin"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ],
    "non-spiffe-uri": [x509.UniformResourceIdentifier("https://agents.internal/admin")],
    # SPIFFE allows exactly one URI SAN; with two, neither is the caller's identity.
    "two-spiffe-ids": [_spiffe("app"), _spiffe("admin")],
}


@pytest.mark.parametrize("case", sorted(NO_IDENTITY_SANS))
async def test_trusted_certificate_without_one_spiffe_id_is_unauthenticated(
    shared_vault: RunningKeyVault, vault_stub: Stub, pki: Path, case: str
) -> None:
    ca = session_ca(pki)
    issued = mint(ca, NO_IDENTITY_SANS[case], common_name="admin")
    ws, rid = workspace(), request_id()
    async with channel(shared_vault.port, client_credentials(ca.cert_pem, issued)) as ch:
        # The handshake succeeds (right CA) but there is no identity to authorize.
        health = health_pb2_grpc.HealthStub(ch)
        err = await expect_error(
            health.Check(health_pb2.HealthCheckRequest(), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert reason_of(err) == "UNAUTHENTICATED"
        stub = kv_grpc.KeyVaultServiceStub(ch)
        for method in METHODS:
            err = await expect_error(invoke(stub, method, ws, rid), grpc.StatusCode.UNAUTHENTICATED)
            assert reason_of(err) == "UNAUTHENTICATED"

    # The audited methods still leave a DENIED record, with an empty caller and the answer
    # the caller was given.
    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    assert sorted(e.action for e in events) == sorted(a for a, _ in AUDITED.values())
    assert {(e.outcome, e.caller, e.reason) for e in events} == {
        (res.AUDIT_OUTCOME_DENIED, "", "UNAUTHENTICATED")
    }


async def test_a_denied_call_is_audited_even_when_its_request_did_not_parse(
    shared_vault: RunningKeyVault, vault_stub: Stub
) -> None:
    # The interceptor authorizes before it parses, and hands the hook None for a message
    # that does not parse: the denial is recorded all the same, naming no key.
    rid = request_id()
    for method, caller in [("RevealApiKey", None), ("ListAuditEvents", devcerts.spiffe_id("app"))]:
        call = CallInfo(f"/{SERVICE}/{method}", caller, rid)
        await audit_denied_call(shared_vault.vault, call, None)

    events = [e for e in await audit_events(vault_stub("admin")) if e.request_id == rid]
    assert sorted((e.action, e.caller, e.reason) for e in events) == [
        (res.AUDIT_ACTION_REVEAL, "", "UNAUTHENTICATED"),
        (res.AUDIT_ACTION_LIST_AUDIT_EVENTS, devcerts.spiffe_id("app"), "PERMISSION_DENIED"),
    ]
    assert {(e.outcome, e.workspace, e.provider) for e in events} == {
        (res.AUDIT_OUTCOME_DENIED, "", res.PROVIDER_UNSPECIFIED)
    }


async def test_same_workload_name_in_another_trust_domain_is_denied(
    shared_vault: RunningKeyVault, pki: Path
) -> None:
    ca = session_ca(pki)
    issued = devcerts.issue(ca, "admin", trust_domain="evil.example")
    async with channel(shared_vault.port, client_credentials(ca.cert_pem, issued)) as ch:
        stub = kv_grpc.KeyVaultServiceStub(ch)
        err = await expect_error(
            stub.RewrapApiKeys(pb.RewrapApiKeysRequest(), timeout=10),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert "spiffe://evil.example/admin" in (err.details() or "")
        # '*' in the health rule means "any authenticated caller", foreign ones included.
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- certificate reload ----------------------------------------------------------------------


def _replace(path: Path, data: bytes) -> None:
    """Atomic replace, as a certificate manager would do, with a visibly new mtime."""
    staging = path.with_suffix(".new")
    staging.write_bytes(data)
    previous = path.stat().st_mtime_ns
    os.utime(staging, ns=(previous + 1_000_000_000, previous + 1_000_000_000))
    os.replace(staging, path)


async def _serving(port: int, root: bytes, issued: devcerts.Issued) -> bool:
    """Whether a NEW connection trusting only `root` gets an answer (False: handshake failed)."""
    async with channel(port, client_credentials(root, issued)) as ch:
        try:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            return False
        return True


async def test_server_certificate_is_reloaded_without_restart(
    start_vault: StartVault,
    tls_for: Callable[[str], TlsFiles],
    tmp_path: Path,
) -> None:
    shipped = tls_for("keyvault")
    files = TlsFiles(tmp_path / "server.pem", tmp_path / "server-key.pem", tmp_path / "ca.pem")
    for source, target in zip(shipped.read(), (files.cert, files.key, files.ca), strict=True):
        target.write_bytes(source)
    settings = vault_settings(files, keyring_of(1))
    running = await start_vault(keyring_of(1), server=settings.server)
    port = running.port

    old_root = shipped.ca.read_bytes()
    app_files = tls_for("app")
    app = devcerts.Issued(app_files.cert.read_bytes(), app_files.key.read_bytes())
    new_ca = devcerts.make_ca("rotated server CA")
    new_server = devcerts.issue(new_ca, "keyvault")

    assert await _serving(port, old_root, app)
    assert not await _serving(port, new_ca.cert_pem, app)

    # A connection opened before the swap keeps working afterwards.
    async with channel(port, client_credentials(old_root, app)) as established:
        health = health_pb2_grpc.HealthStub(established)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)

        # A half-written certificate is not taken: the server keeps its current one.
        _replace(files.cert, new_server.cert_pem[: len(new_server.cert_pem) // 2])
        assert await _serving(port, old_root, app)

        _replace(files.key, new_server.key_pem)
        _replace(files.cert, new_server.cert_pem)
        assert await _serving(port, new_ca.cert_pem, app)
        assert not await _serving(port, old_root, app)

        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
