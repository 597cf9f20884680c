"""Assemble and run the key vault: database, keyring check, gRPC server."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import asyncpg

from keyvault_service import repository as repo
from keyvault_service.errors import DOMAIN
from keyvault_service.fingerprints import FingerprintKeyError, load_fingerprint_key
from keyvault_service.key_changes import KeyChangeFeed
from keyvault_service.keyring import Keyring, KeyringError
from keyvault_service.servicer import (
    SERVICE_NAME,
    KeyVaultServicer,
    audit_denied_call,
    audit_malformed_call,
    register,
)
from keyvault_service.settings import KeyVaultSettings
from keyvault_service.vault import KeyVault
from service_kit import db
from service_kit.authz import Policy, PolicyError
from service_kit.interceptor import ServiceInterceptor
from service_kit.runtime import run, serve
from service_kit.server import GrpcServer
from service_kit.settings import SettingsError
from service_kit.tracing import Tracing

log = logging.getLogger(__name__)

# The process's name in logs and traces.
SERVICE = "keyvault"


class StartupError(RuntimeError):
    """The vault must not serve in this state; the message says how to fix it."""


async def check_master_key_versions(pool: asyncpg.Pool, keyring: Keyring) -> None:
    in_use = await repo.key_versions_in_use(pool)
    missing = {v: n for v, n in sorted(in_use.items()) if v not in keyring.keys}
    if missing:
        detail = ", ".join(f"version {v} ({n} keys)" for v, n in missing.items())
        raise StartupError(
            f"stored keys use master key versions that are not configured: {detail}. "
            "Add them to KEYVAULT_MASTER_KEYS (or restore the ENCRYPTION_KEY they were "
            "written with)."
        )
    known = await repo.master_key_checks(pool)
    for version in keyring.versions:
        check = keyring.check_value(version)
        if version not in known:
            await repo.record_master_key_check(pool, version, check)
        elif known[version] != check:
            raise StartupError(
                f"master key version {version} is not the key this database's keys were "
                f"written with (key check value mismatch); configure the original key for "
                f"version {version}, or give the new key a new version number"
            )


@dataclass
class RunningKeyVault:
    server: GrpcServer
    pool: asyncpg.Pool
    vault: KeyVault
    key_changes: KeyChangeFeed

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.key_changes.stop()  # first: watch streams end cleanly, not cut at the grace
        await self.server.stop(grace)
        await self.pool.close()


async def start_keyvault(
    settings: KeyVaultSettings, database_url: str, *, tracing: Tracing | None = None
) -> RunningKeyVault:
    tracing = tracing or Tracing.propagate_only(SERVICE)
    policy = Policy.from_file(settings.server.policy_file)
    pool = await db.create_pool(
        database_url, min_size=settings.server.db_pool_min, max_size=settings.server.db_pool_max
    )
    key_changes = KeyChangeFeed(database_url, pool)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn, "keyvault_service")
        await check_master_key_versions(pool, settings.keyring)
        try:
            fingerprint_key = await load_fingerprint_key(pool, settings.keyring)
        except FingerprintKeyError as exc:
            raise StartupError(str(exc)) from None
        vault = KeyVault(pool, settings.keyring, fingerprint_key)
        interceptor = ServiceInterceptor(
            policy=policy,
            domain=DOMAIN,
            on_denied=functools.partial(audit_denied_call, vault),
            on_malformed=functools.partial(audit_malformed_call, vault),
        )
        server = GrpcServer(
            service_names=[SERVICE_NAME],
            register=register(KeyVaultServicer(vault, key_changes, settings.egress)),
            interceptors=[interceptor],
            tls=settings.server.tls,
            address=settings.server.listen_address,
            metrics_port=settings.server.metrics_port,
            health_port=settings.server.health_port,
            reuse_port=settings.server.reuse_port,
            tracing=tracing,
        )
        key_changes.start()
        await key_changes.wait_live(timeout=5.0)  # serve with the feed up when the database is
        await server.start(pool)
    except BaseException:
        await key_changes.stop()
        await pool.close()
        raise
    return RunningKeyVault(server, pool, vault, key_changes)


async def main() -> None:
    await serve(
        service=SERVICE,
        module="keyvault_service",
        database="keyvault",
        database_env="KEYVAULT_DATABASE_URL",
        load_settings=KeyVaultSettings.from_env,
        start=start_keyvault,
        startup_errors=(SettingsError, KeyringError, PolicyError, StartupError),
    )


def entry_point() -> None:
    run(main)
