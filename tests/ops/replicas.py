"""Two vault processes and two execution processes (real processes, real mTLS) on their own
ports, sharing their databases, as replicas behind a load balancer run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from clients import ExecutionClient, KeyVaultClient
from keyvault_service.keyring import generate_master_key
from tests.ops.conftest import free_port
from tests.ops.test_processes import Spawn, until_serving

ClientT = TypeVar("ClientT", ExecutionClient, KeyVaultClient)


@dataclass
class Replicas:
    pki: Path
    vault_ports: list[int]
    exec_ports: list[int]
    vaults: list[asyncio.subprocess.Process]
    executions: list[asyncio.subprocess.Process]

    def client(self, kind: type[ClientT], ports: list[int], workload: str = "app") -> ClientT:
        """A typed client (with its retry service config) on one channel to every port
        given, spreading calls over them (round robin)."""
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
        return kind.connect(
            target,
            ca=self.pki / "ca.pem",
            cert=self.pki / f"{workload}.pem",
            key=self.pki / f"{workload}-key.pem",
            # A list of addresses has no one host name to check the certificate against.
            options=[
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.default_authority", "localhost"),
            ],
        )

    def vault(self, index: int | None = None, workload: str = "app") -> KeyVaultClient:
        """Vault `index`, or both (None)."""
        ports = self.vault_ports if index is None else [self.vault_ports[index]]
        return self.client(KeyVaultClient, ports, workload)

    def execution(self, index: int | None = None) -> ExecutionClient:
        """Execution process `index`, or both (None)."""
        ports = self.exec_ports if index is None else [self.exec_ports[index]]
        return self.client(ExecutionClient, ports)


async def start_replicas(
    spawn: Spawn,
    pki: Path,
    make_database: Callable[[str], Awaitable[str]],
    env: dict[str, str] | None = None,
) -> Replicas:
    """Both vaults, then both execution processes, each using its own vault."""
    common = {
        "CERTS_DIR": str(pki),
        "KEYVAULT_MASTER_KEYS": f"1:{generate_master_key()}",
        "KEYVAULT_DATABASE_URL": await make_database("kv"),
        "EXECUTION_DATABASE_URL": await make_database("ex"),
        "KEYVAULT_METRICS_PORT": "0",
        "EXECUTION_METRICS_PORT": "0",
        **(env or {}),
    }
    vault_ports = [free_port(), free_port()]
    exec_ports = [free_port(), free_port()]
    vaults, executions = [], []
    for port in vault_ports:
        vault_env = {**common, "KEYVAULT_LISTEN_ADDRESS": f"127.0.0.1:{port}"}
        process = await spawn("keyvault_service", vault_env)
        await until_serving(port, pki, process)
        vaults.append(process)
    for port, vault_port in zip(exec_ports, vault_ports, strict=True):
        exec_env = {
            **common,
            "EXECUTION_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "KEYVAULT_ADDRESS": f"localhost:{vault_port}",
        }
        process = await spawn("execution_service", exec_env)
        await until_serving(port, pki, process)
        executions.append(process)
    return Replicas(pki, vault_ports, exec_ports, vaults, executions)
