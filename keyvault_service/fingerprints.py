"""The fingerprint key: one random HMAC key per vault, stored encrypted like an API key.

A fingerprint must tell whether two stored keys are the same key, whenever each was stored.
A key derived from the primary master key would change at every rotation, so the vault
generates its own once, keeps it sealed under the keyring (rewrapped with the API keys), and
loads it at start-up.
"""

from __future__ import annotations

import os

from keyvault_service import repository as repo
from keyvault_service.crypto import DecryptionError
from keyvault_service.keyring import Keyring
from service_kit.db import Executor
from service_kit.secret import Secret

SECRET_NAME = "fingerprint-key"
# The associated data a vault secret is bound to: "-" is no workspace id, so no API key row
# can be moved into its place or it into theirs.
_WORKSPACE = "-"


class FingerprintKeyUnreadable(RuntimeError):
    """The stored fingerprint key is sealed under a master key version that is missing."""


async def load_fingerprint_key(db: Executor, keyring: Keyring) -> bytes:
    """The vault's fingerprint key, created on first start."""
    stored = await repo.get_vault_secret(db, SECRET_NAME)
    if stored is None:
        fresh = Secret(os.urandom(32).hex())
        await repo.add_vault_secret(
            db,
            SECRET_NAME,
            keyring.encrypt(fresh, workspace=_WORKSPACE, provider=SECRET_NAME),
            keyring.primary_version,
        )
        stored = await repo.get_vault_secret(db, SECRET_NAME)  # another replica may have won
        assert stored is not None
    blob, version = stored
    try:
        return bytes.fromhex(
            keyring.decrypt(blob, workspace=_WORKSPACE, provider=SECRET_NAME).reveal()
        )
    except DecryptionError:
        raise FingerprintKeyUnreadable(
            f"the vault's fingerprint key is encrypted under master key version {version}, "
            "which is not configured (or is not the key it was written with); add it to "
            "KEYVAULT_MASTER_KEYS"
        ) from None


async def rewrap_fingerprint_key(db: Executor, keyring: Keyring) -> bool:
    """Re-encrypt the fingerprint key under the primary version; True when it changed."""
    stored = await repo.get_vault_secret(db, SECRET_NAME)
    if stored is None or stored[1] == keyring.primary_version:
        return False
    blob = keyring.rewrap(stored[0], workspace=_WORKSPACE, provider=SECRET_NAME)
    await repo.replace_vault_secret(db, SECRET_NAME, blob, keyring.primary_version)
    return True
