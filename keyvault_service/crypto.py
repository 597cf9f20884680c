"""Stored API key format: AES-256-GCM bound to its workspace and provider.

This is the only module that touches the cipher (the "hazmat" layer). Everything above it
goes through `Keyring`. The core (`seal`, `open_sealed`) takes the nonce and keys as
arguments, so it is deterministic and tested without randomness or I/O.

Blob layout (bytes)::

    format (1) | master key version (4, big-endian) | nonce (12) | ciphertext + tag (16)

Associated data = label | format | version | len32(workspace) | workspace
| len32(provider) | provider, so a row copied to another workspace or provider, or with
its header edited, fails authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service_kit.secret import Secret

__all__ = [
    "FORMAT_VERSION",
    "KEY_SIZE",
    "NONCE_SIZE",
    "DecryptionError",
    "blob_key_version",
    "fingerprint",
    "mask_key",
    "open_sealed",
    "seal",
]

FORMAT_VERSION: Final = 1
KEY_SIZE: Final = 32  # AES-256
NONCE_SIZE: Final = 12  # 96-bit, the size GCM is designed for
TAG_SIZE: Final = 16
MAX_KEY_VERSION: Final = 0xFFFF_FFFF  # stored as uint32

_HEADER = struct.Struct(">BI")  # format byte, master key version
_AAD_LABEL: Final = b"keyvault.v1.apikey"
_MIN_BLOB_SIZE: Final = _HEADER.size + NONCE_SIZE + TAG_SIZE
_DECRYPTION_FAILED: Final = "stored key could not be decrypted"

# Masking: keys shorter than this show no characters at all.
_MASK_MIN_LENGTH: Final = 12
_MASK_TAIL: Final = 4
_MASK_MAX_PREFIX: Final = 6


class DecryptionError(Exception):
    """A stored key could not be decrypted.

    One opaque error for every cause (tampering, wrong binding, unknown master key version,
    garbled blob), so that neither messages nor callers can learn which check failed.
    """

    def __init__(self, message: str = _DECRYPTION_FAILED) -> None:
        super().__init__(message)


def _len_prefixed(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def _associated_data(header: bytes, workspace: str, provider: str) -> bytes:
    # Length prefixes keep ("ab", "c") and ("a", "bc") distinct.
    return _AAD_LABEL + header + _len_prefixed(workspace) + _len_prefixed(provider)


def _check_key(master_key: bytes) -> None:
    if len(master_key) != KEY_SIZE:
        raise ValueError(f"master key must be {KEY_SIZE} bytes")


def seal(
    master_key: bytes,
    key_version: int,
    nonce: bytes,
    plaintext: bytes,
    *,
    workspace: str,
    provider: str,
) -> bytes:
    """Encrypt `plaintext` under `master_key`, recording `key_version` in the blob.

    The caller supplies the nonce; it must be fresh for every call with the same key
    (`Keyring.encrypt` uses os.urandom). Reusing a nonce under one key breaks GCM.
    """
    _check_key(master_key)
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if not 1 <= key_version <= MAX_KEY_VERSION:
        raise ValueError(f"key version must be between 1 and {MAX_KEY_VERSION}")
    header = _HEADER.pack(FORMAT_VERSION, key_version)
    aad = _associated_data(header, workspace, provider)
    return header + nonce + AESGCM(master_key).encrypt(nonce, plaintext, aad)


def blob_key_version(blob: bytes) -> int:
    """The master key version a blob was sealed under (read from its unauthenticated header).

    Good for routing (which key to use, whether to rewrap); authenticity is only known
    after `open_sealed` succeeds.
    """
    if len(blob) < _MIN_BLOB_SIZE:
        raise DecryptionError
    format_version, key_version = _HEADER.unpack_from(blob)
    if format_version != FORMAT_VERSION:
        raise DecryptionError
    return int(key_version)


def open_sealed(
    master_keys: Mapping[int, bytes],
    blob: bytes,
    *,
    workspace: str,
    provider: str,
) -> bytes:
    """Decrypt a blob made by `seal`; any failure raises `DecryptionError`."""
    key_version = blob_key_version(blob)
    master_key = master_keys.get(key_version)
    if master_key is None:
        raise DecryptionError
    _check_key(master_key)  # a misconfigured ring is a bug, not a decryption failure
    header = blob[: _HEADER.size]
    nonce = blob[_HEADER.size : _HEADER.size + NONCE_SIZE]
    ciphertext = blob[_HEADER.size + NONCE_SIZE :]
    aad = _associated_data(header, workspace, provider)
    try:
        return AESGCM(master_key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise DecryptionError from None


def mask_key(plaintext: Secret) -> str:
    """A display hint such as ``sk-...Ab12``: a short vendor prefix and the last 4 chars.

    The prefix is the text before the first '-' (1 to 6 chars) plus the '-'. Keys shorter
    than 12 chars show only ``...``, since their tail would be a large share of the key.
    """
    text = plaintext.reveal()
    if len(text) < _MASK_MIN_LENGTH:
        return "..."
    head, dash, _ = text.partition("-")
    prefix = head + dash if dash and 1 <= len(head) <= _MASK_MAX_PREFIX else ""
    return f"{prefix}...{text[-_MASK_TAIL:]}"


def fingerprint(plaintext: Secret, fingerprint_key: bytes) -> str:
    """``fp_`` + 16 hex chars of HMAC-SHA256: tells keys apart without revealing them.

    Keyed (not a bare hash) so a fingerprint cannot be checked against guessed keys
    without the vault's master key.
    """
    if not fingerprint_key:
        raise ValueError("fingerprint key must not be empty")
    mac = hmac.new(fingerprint_key, plaintext.reveal().encode("utf-8"), hashlib.sha256)
    return "fp_" + mac.hexdigest()[:16]
