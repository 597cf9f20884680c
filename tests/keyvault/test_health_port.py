"""The plaintext health-only port (`*_HEALTH_PORT`) that Kubernetes' gRPC probes use: it
answers grpc.health.v1 with the service's real status, and serves nothing else."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc

from clients.gen.keyvault.v1 import keyvault_service_pb2 as pb
from clients.gen.keyvault.v1 import keyvault_service_pb2_grpc as kv_grpc
from keyvault_service.servicer import SERVICE_NAME
from keyvault_service.settings import DEFAULT_POLICY
from service_kit.server import LIVENESS_SERVICE
from service_kit.settings import Env, ServerSettings
from service_kit.tls import TlsFiles
from tests.keyvault.conftest import StartVault, keyring_of, vault_settings
from tests.ops.conftest import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


def probe_settings(tls_for: Callable[[str], TlsFiles]) -> ServerSettings:
    return vault_settings(tls_for("keyvault"), keyring_of(1)).server


async def test_health_port_reports_the_status_and_serves_nothing_else(
    start_vault: StartVault, tls_for: Callable[[str], TlsFiles]
) -> None:
    port = free_port()
    probe = await start_vault(keyring_of(1))
    assert probe.server.health_server is None  # off unless configured
    await probe.stop(grace=0)

    server = dataclasses.replace(probe_settings(tls_for), health_port=port)
    vault = await start_vault(keyring_of(1), server=server)
    assert vault.server.health_port == port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for service in ("", SERVICE_NAME, LIVENESS_SERVICE):
            assert await status(channel, service) == SERVING

        # While the database is unreachable (or during a drain) readiness fails, liveness not.
        await vault.server.set_serving(False)
        try:
            assert await status(channel, "") == NOT_SERVING
            assert await status(channel, SERVICE_NAME) == NOT_SERVING
            assert await status(channel, LIVENESS_SERVICE) == SERVING
        finally:
            await vault.server.set_serving(True)
        assert await status(channel, "") == SERVING

        with pytest.raises(grpc.aio.AioRpcError) as business:
            await kv_grpc.KeyVaultServiceStub(channel).ListApiKeys(
                pb.ListApiKeysRequest(parent="workspaces/probe"), timeout=5
            )
        assert business.value.code() == grpc.StatusCode.UNIMPLEMENTED

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        # No request is sent: the server refuses the method from its headers, and a message
        # written meanwhile could race that refusal (the client then reports INTERNAL).
        listing = reflection.ServerReflectionInfo(timeout=5)
        assert await listing.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(("environ", "port"), [({}, 0), ({"KEYVAULT_HEALTH_PORT": "8081"}, 8081)])
def test_health_port_setting(environ: dict[str, str], port: int) -> None:
    settings = ServerSettings.from_env(
        Env(environ),
        prefix="KEYVAULT",
        workload="keyvault",
        default_address="127.0.0.1:50051",
        default_policy=DEFAULT_POLICY,
        default_metrics_port=0,
    )
    assert settings.health_port == port
