"""The fingerprint key: one random HMAC key per vault, stored encrypted like an API key.

A fingerprint must tell whether two stored keys are the same key, whenever each was stored.
A key derived from the primary master key would change at every rotation, so the vault
generates its own once, keeps it sealed under the keyring (rewrapped with the API keys), and
loads it at start-up.
"""

from __future__ import annotations

import logging
import os

from keyvault_service import repository as repo
from keyvault_service.crypto import DecryptionError, blob_key_version
from keyvault_service.keyring import Keyring
from service_kit.db import Executor
from service_kit.secret import Secret

log = logging.getLogger(__name__)

SECRET_NAME = "fingerprint-key"
_KEY_SIZE = 32
# The associated data a vault secret is bound to: "-" is no workspace id, so no API key row
# can be moved into its place or it into theirs.
_WORKSPACE = "-"
_ROW = f"the row '{SECRET_NAME}' of table vault_secrets"


class FingerprintKeyError(RuntimeError):
    """The stored fingerprint key is missing or cannot be opened. The vault must not serve:
    any other fingerprint key would change the fingerprint of every stored key. The message
    says how to recover."""


async def load_fingerprint_key(db: Executor, keyring: Keyring) -> bytes:
    """The vault's fingerprint key. Created on the first start of a vault that holds no keys;
    never re-created once keys exist."""
    stored = await repo.get_vault_secret(db, SECRET_NAME)
    if stored is None:
        stored = await _create_for_empty_vault(db, keyring)
    blob, _ = stored
    try:
        version = blob_key_version(blob)
    except DecryptionError:
        raise FingerprintKeyError(await _damaged(db, "its stored value is garbled")) from None
    if version not in keyring.keys:
        raise FingerprintKeyError(
            f"the vault's fingerprint key is encrypted under master key version {version}, "
            "which is not configured; add it to KEYVAULT_MASTER_KEYS"
        )
    try:
        key = bytes.fromhex(
            keyring.decrypt(blob, workspace=_WORKSPACE, provider=SECRET_NAME).reveal()
        )
    except (DecryptionError, ValueError):
        key = b""
    if len(key) != _KEY_SIZE:
        raise FingerprintKeyError(
            await _damaged(db, f"it fails to decrypt under master key version {version}")
        )
    return key


async def _create_for_empty_vault(db: Executor, keyring: Keyring) -> tuple[bytes, int]:
    fresh = Secret(os.urandom(_KEY_SIZE).hex())
    created = await repo.add_vault_secret_while_no_keys(
        db,
        SECRET_NAME,
        keyring.encrypt(fresh, workspace=_WORKSPACE, provider=SECRET_NAME),
        keyring.primary_version,
    )
    if created:
        log.info(
            "fingerprint key created for a vault with no keys",
            extra={"key_version": keyring.primary_version},
        )
    stored = await repo.get_vault_secret(db, SECRET_NAME)  # another replica may have won
    if stored is None:
        keys = await repo.count_keys(db)
        raise FingerprintKeyError(
            f"the vault holds stored API keys ({keys}) but its fingerprint key ({_ROW}) is "
            "missing. "
            "Restore that row from a backup of this database: a new fingerprint key would "
            "change the fingerprint of every stored key."
        )
    return stored


async def _damaged(db: Executor, what: str) -> str:
    message = (
        f"the vault's fingerprint key ({_ROW}) is damaged: {what}. Restore that row from a "
        "backup of this database"
    )
    if await repo.count_keys(db) == 0:
        message += "; as no API key is stored yet, deleting the row also works (a new one is "
        message += "created at start-up)"
    return message + "."


async def rewrap_fingerprint_key(db: Executor, keyring: Keyring) -> bool:
    """Re-encrypt the fingerprint key under the primary version; True when it changed."""
    stored = await repo.get_vault_secret(db, SECRET_NAME)
    if stored is None or stored[1] == keyring.primary_version:
        return False
    blob = keyring.rewrap(stored[0], workspace=_WORKSPACE, provider=SECRET_NAME)
    await repo.replace_vault_secret(db, SECRET_NAME, blob, keyring.primary_version)
    return True
