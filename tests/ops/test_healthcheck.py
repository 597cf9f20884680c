"""`python -m service_kit.healthcheck`, the compose health check, against a real vault; the
server certificates' host names; health Watch through the service interceptor."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_kit import devcerts, healthcheck
from service_kit.settings import PROJECT_ROOT
from tests.conftest import secure_channel
from tests.ops.conftest import MeteredPair, free_port


async def check(*argv: str) -> int:
    """The command's exit status, run off the event loop the servers use."""
    return await asyncio.to_thread(healthcheck.main, list(argv))


async def test_exit_status_follows_the_serving_status(
    metered_pair: MeteredPair, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"localhost:{metered_pair.vault.port}"
    assert await check(address, "--certs-dir", str(pki)) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    # Each workload's own certificate will do (compose checks a service with its own).
    for workload in ("keyvault", "execution", "admin"):
        assert await check(address, "--certs-dir", str(pki), "--workload", workload) == 0
    capsys.readouterr()

    await metered_pair.vault.server.set_serving(False)  # as while the database is unreachable
    try:
        assert await check(address, "--certs-dir", str(pki)) == 1
        assert capsys.readouterr().out.strip() == "NOT_SERVING"
    finally:
        await metered_pair.vault.server.set_serving(True)

    assert await check(address, "--certs-dir", str(pki), "--service", "no.such.Service") == 1
    assert "NOT_FOUND" in capsys.readouterr().err


async def test_unreachable_or_without_certificates_is_unhealthy(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"localhost:{free_port()}"
    assert await check(closed, "--certs-dir", str(pki), "--timeout", "2") == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert await check(closed, "--certs-dir", str(tmp_path)) == 1
    assert "No such file" in capsys.readouterr().err


def test_runs_as_a_module_with_certs_dir_from_the_environment(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service_kit.healthcheck", "localhost:1"],
        cwd=PROJECT_ROOT,
        env={"CERTS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert str(tmp_path) in done.stderr  # the missing file is named, from CERTS_DIR


def test_server_certificates_name_their_compose_host() -> None:
    ca = devcerts.make_ca()
    for workload in ("keyvault", "execution"):
        cert = x509.load_pem_x509_certificate(devcerts.issue(ca, workload).cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", workload}
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [devcerts.spiffe_id(workload)]
    client = x509.load_pem_x509_certificate(devcerts.issue(ca, "app").cert_pem)
    client_sans = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert client_sans.get_values_for_type(x509.DNSName) == []


async def test_a_client_reaches_the_vault_by_its_service_name(metered_pair: MeteredPair) -> None:
    """What the execution container does in compose: dial "keyvault:50051", verify the name."""
    files = metered_pair.tls_for("execution")
    cert, key, ca = files.read()
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    # No DNS entry for the names here: dial the address, verify the certificate for the name.
    for name, ok in (("keyvault", True), ("execution", False)):
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{metered_pair.vault.port}",
            credentials,
            options=[("grpc.ssl_target_name_override", name)],
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            if ok:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            else:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_watch_streams_through_the_interceptor(metered_pair: MeteredPair) -> None:
    channel = secure_channel(metered_pair.execution.port, metered_pair.tls_for("app"))
    try:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await call.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
    finally:
        await channel.close()
