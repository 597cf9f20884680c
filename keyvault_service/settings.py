"""The key vault's configuration, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from keyvault_service.keyring import Keyring
from service_kit.egress import NO_ALLOWLIST, EgressPolicy
from service_kit.settings import Env, ServerSettings

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_POLICY = Path(__file__).with_name("authz_policy.json")


@dataclass(frozen=True)
class KeyVaultSettings:
    server: ServerSettings
    database_url: str | None  # None: the launcher provides the embedded database
    keyring: Keyring
    egress: EgressPolicy = NO_ALLOWLIST  # which base URLs SetApiKey accepts

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KeyVaultSettings:
        env = Env(environ)
        return cls(
            server=ServerSettings.from_env(
                env,
                prefix="KEYVAULT",
                workload="keyvault",
                default_address=DEFAULT_ADDRESS,
                default_policy=DEFAULT_POLICY,
                default_metrics_port=9451,
            ),
            database_url=env.optional("KEYVAULT_DATABASE_URL"),
            keyring=Keyring.from_env(environ),
            egress=env.egress_policy(),
        )
