"""Versioned master keys: the primary encrypts, every configured version decrypts.

Modelled on cryptography's MultiFernet. Rotation: add a new version, make it primary,
rewrap every stored blob (`needs_rewrap` / `rewrap`), then drop the old version.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from service_kit.secret import Secret

from . import crypto
from .crypto import DecryptionError

__all__ = ["Keyring", "KeyringError", "generate_master_key"]

MASTER_KEYS_ENV: Final = "KEYVAULT_MASTER_KEYS"
PRIMARY_VERSION_ENV: Final = "KEYVAULT_PRIMARY_KEY_VERSION"
LEGACY_KEY_ENV: Final = "ENCRYPTION_KEY"  # the older single-key setting; becomes version 1

_HEX_LENGTH: Final = crypto.KEY_SIZE * 2
_VERSION_RE: Final = re.compile(r"[0-9]{1,10}")  # ASCII digits only; int() accepts more
_KEYGEN_HINT: Final = "generate one with `python -m keyvault_service.keygen --version N`"


class KeyringError(Exception):
    """The master key configuration is unusable. Messages never contain key material."""


def generate_master_key() -> str:
    """A new 256-bit master key as 64 lowercase hex characters."""
    return os.urandom(crypto.KEY_SIZE).hex()


@dataclass(frozen=True)
class Keyring:
    """Master keys by version (each 32 bytes) and the version that encrypts."""

    # hash=False: the mapping is unhashable; equal rings still hash equal by primary.
    keys: Mapping[int, bytes] = field(repr=False, hash=False)
    primary_version: int

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("keyring has no master keys")
        for version, key in self.keys.items():
            if not 1 <= version <= crypto.MAX_KEY_VERSION:
                raise KeyringError(f"master key version {version} is out of range")
            if len(key) != crypto.KEY_SIZE:
                raise KeyringError(f"master key version {version} must be {crypto.KEY_SIZE} bytes")
        if self.primary_version not in self.keys:
            raise KeyringError(
                f"primary version {self.primary_version} is not among the configured "
                f"versions {self.versions}"
            )
        # A private read-only copy: mutating the caller's dict cannot change the ring.
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def __repr__(self) -> str:
        return f"Keyring(versions={self.versions}, primary_version={self.primary_version})"

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self.keys))

    def check_value(self, version: int) -> str:
        """A key check value: tells whether a configured version is the same key that
        encrypted stored data, without revealing the key (HMAC of a fixed label)."""
        digest = hmac.new(self.keys[version], b"keyvault.v1.key-check", hashlib.sha256)
        return digest.hexdigest()[:32]

    def encrypt(
        self,
        plaintext: Secret,
        *,
        workspace: str,
        provider: str,
        nonce: bytes | None = None,
    ) -> bytes:
        """Seal under the primary version; `nonce` is for deterministic tests only."""
        return crypto.seal(
            self.keys[self.primary_version],
            self.primary_version,
            os.urandom(crypto.NONCE_SIZE) if nonce is None else nonce,
            plaintext.reveal().encode("utf-8"),
            workspace=workspace,
            provider=provider,
        )

    def decrypt(self, blob: bytes, *, workspace: str, provider: str) -> Secret:
        """Open a blob sealed under any configured version; DecryptionError otherwise."""
        data = crypto.open_sealed(self.keys, blob, workspace=workspace, provider=provider)
        try:
            return Secret(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise DecryptionError from None

    def rewrap(self, blob: bytes, *, workspace: str, provider: str) -> bytes:
        """Re-encrypt a blob under the primary version (with a fresh nonce)."""
        plaintext = self.decrypt(blob, workspace=workspace, provider=provider)
        return self.encrypt(plaintext, workspace=workspace, provider=provider)

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether the blob was sealed under a version other than the primary.

        Reads the header only; raises DecryptionError for a blob too garbled to have one.
        """
        return crypto.blob_key_version(blob) != self.primary_version

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Keyring:
        """Build from KEYVAULT_MASTER_KEYS ("1:<hex>,2:<hex>") or the legacy ENCRYPTION_KEY.

        KEYVAULT_PRIMARY_KEY_VERSION picks the primary (default: the highest version).
        Empty variables count as unset.
        """
        master_keys = environ.get(MASTER_KEYS_ENV, "").strip()
        legacy_key = environ.get(LEGACY_KEY_ENV, "").strip()
        if master_keys and legacy_key:
            raise KeyringError(
                f"both {MASTER_KEYS_ENV} and {LEGACY_KEY_ENV} are set: use one "
                f"(move the {LEGACY_KEY_ENV} value into {MASTER_KEYS_ENV} as version 1)"
            )
        if master_keys:
            keys = _parse_master_keys(master_keys)
        elif legacy_key:
            keys = {1: _parse_hex_key(legacy_key, LEGACY_KEY_ENV)}
        else:
            raise KeyringError(
                f"no master key configured: set {MASTER_KEYS_ENV} (e.g. '1:<64 hex chars>') "
                f"or {LEGACY_KEY_ENV}; {_KEYGEN_HINT}"
            )
        primary_text = environ.get(PRIMARY_VERSION_ENV, "").strip()
        if not primary_text:
            primary = max(keys)
        elif _VERSION_RE.fullmatch(primary_text):
            primary = int(primary_text)
        else:
            raise KeyringError(f"{PRIMARY_VERSION_ENV} must be a positive integer")
        if primary not in keys:
            raise KeyringError(
                f"{PRIMARY_VERSION_ENV}={primary} is not among the configured versions "
                f"{tuple(sorted(keys))}"
            )
        return cls(keys=keys, primary_version=primary)


def _parse_master_keys(value: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    entries = [entry.strip() for entry in value.split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        # Never echo an entry: a malformed one may be a bare key.
        version_text, colon, key_text = entry.partition(":")
        version_text = version_text.strip()
        if not colon:
            raise KeyringError(
                f"{MASTER_KEYS_ENV} entry {position} must look like '<version>:<64 hex chars>'"
            )
        if not _VERSION_RE.fullmatch(version_text):
            raise KeyringError(
                f"{MASTER_KEYS_ENV} entry {position} has a version that is not a positive integer"
            )
        version = int(version_text)
        if not 1 <= version <= crypto.MAX_KEY_VERSION:
            raise KeyringError(
                f"{MASTER_KEYS_ENV} version {version} is out of range "
                f"(1 to {crypto.MAX_KEY_VERSION})"
            )
        if version in keys:
            raise KeyringError(f"{MASTER_KEYS_ENV} lists version {version} more than once")
        keys[version] = _parse_hex_key(key_text.strip(), f"{MASTER_KEYS_ENV} version {version}")
    if not keys:
        raise KeyringError(f"{MASTER_KEYS_ENV} is set but lists no keys; {_KEYGEN_HINT}")
    return keys


def _parse_hex_key(text: str, where: str) -> bytes:
    if len(text) != _HEX_LENGTH:
        raise KeyringError(
            f"{where}: key must be {_HEX_LENGTH} hex characters ({crypto.KEY_SIZE} bytes), "
            f"got {len(text)} characters"
        )
    # bytes.fromhex tolerates spaces; require exactly 64 hex digits.
    if not all(char in string.hexdigits for char in text):
        raise KeyringError(f"{where}: key is not valid hex")
    return bytes.fromhex(text)
