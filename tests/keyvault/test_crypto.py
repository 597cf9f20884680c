"""Pure tests of the key vault's cryptography layer: blob format, keyring, masking, keygen."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import TypedDict

import pytest

from keyvault_service import crypto, keygen
from keyvault_service.crypto import DecryptionError
from keyvault_service.keyring import Keyring, KeyringError, generate_master_key
from service_kit.secret import Secret

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
KEY3 = bytes(range(200, 232))
NONCE = bytes(range(12))
PLAINTEXT = "sk-proj-CANARYcanary0123456789xyzAb12"
WORKSPACE = "ws-canary-acme"
PROVIDER = "openai"
BLOB_OVERHEAD = 1 + 4 + 12 + 16


class Binding(TypedDict):
    workspace: str
    provider: str


def ring(*versions: int, primary: int | None = None) -> Keyring:
    table = {1: KEY1, 2: KEY2, 3: KEY3}
    keys = {version: table[version] for version in versions}
    return Keyring(keys=keys, primary_version=max(versions) if primary is None else primary)


def seal(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "master_key": KEY1,
        "key_version": 1,
        "nonce": NONCE,
        "plaintext": PLAINTEXT.encode(),
        "workspace": WORKSPACE,
        "provider": PROVIDER,
    }
    args.update(overrides)
    return crypto.seal(**args)  # type: ignore[arg-type]


def assert_opaque(error: DecryptionError) -> None:
    message = str(error)
    assert message == "stored key could not be decrypted"
    for secret_ish in (PLAINTEXT, WORKSPACE, KEY1.hex(), KEY2.hex()):
        assert secret_ish not in message
        assert secret_ish not in "".join(traceback.format_exception(error))
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


# --- deterministic core -------------------------------------------------------------------


def test_seal_layout_and_round_trip() -> None:
    blob = seal()
    assert blob[0] == crypto.FORMAT_VERSION
    assert blob[1:5] == (1).to_bytes(4, "big")
    assert blob[5:17] == NONCE
    assert len(blob) == BLOB_OVERHEAD + len(PLAINTEXT)
    assert PLAINTEXT.encode() not in blob
    opened = crypto.open_sealed({1: KEY1}, blob, workspace=WORKSPACE, provider=PROVIDER)
    assert opened == PLAINTEXT.encode()
    assert crypto.blob_key_version(blob) == 1


def test_seal_is_deterministic_given_the_nonce() -> None:
    assert seal() == seal()
    assert seal() != seal(nonce=bytes(12))


def test_seal_records_large_key_versions() -> None:
    blob = seal(key_version=0xFFFF_FFFF)
    assert crypto.blob_key_version(blob) == 0xFFFF_FFFF
    opened = crypto.open_sealed({0xFFFF_FFFF: KEY1}, blob, workspace=WORKSPACE, provider=PROVIDER)
    assert opened == PLAINTEXT.encode()


@pytest.mark.parametrize(
    "overrides",
    [
        {"master_key": KEY1[:31]},
        {"master_key": KEY1 + b"\0"},
        {"nonce": NONCE[:11]},
        {"nonce": NONCE + b"\0"},
        {"key_version": 0},
        {"key_version": 2**32},
    ],
)
def test_seal_rejects_bad_lengths_and_versions(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        seal(**overrides)


def test_every_flipped_bit_fails() -> None:
    blob = seal()
    # Version 3 holds the same key as version 1, so flipping the version bits 1 -> 3 finds
    # a usable key: only the header in the associated data catches that edit.
    keys = {1: KEY1, 3: KEY1}
    for position in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            with pytest.raises(DecryptionError) as caught:
                crypto.open_sealed(keys, bytes(tampered), workspace=WORKSPACE, provider=PROVIDER)
            assert_opaque(caught.value)


def test_header_is_authenticated_even_when_the_key_matches() -> None:
    blob = bytearray(seal())
    blob[4] = 3  # version 1 -> 3; same key under both versions
    with pytest.raises(DecryptionError):
        crypto.open_sealed({1: KEY1, 3: KEY1}, bytes(blob), workspace=WORKSPACE, provider=PROVIDER)


@pytest.mark.parametrize(
    ("workspace", "provider"),
    [
        ("ws-other", PROVIDER),
        (WORKSPACE, "anthropic"),
        (WORKSPACE + "x", PROVIDER),
        ("", PROVIDER),
        # Length prefixes keep the boundary between workspace and provider in the binding.
        (WORKSPACE + "o", PROVIDER[1:]),
    ],
)
def test_wrong_binding_fails(workspace: str, provider: str) -> None:
    with pytest.raises(DecryptionError) as caught:
        crypto.open_sealed({1: KEY1}, seal(), workspace=workspace, provider=provider)
    assert_opaque(caught.value)


def test_unknown_master_key_version_fails() -> None:
    blob = seal(key_version=2, master_key=KEY2)
    with pytest.raises(DecryptionError) as caught:
        crypto.open_sealed({1: KEY1}, blob, workspace=WORKSPACE, provider=PROVIDER)
    assert_opaque(caught.value)


def test_wrong_key_under_the_right_version_fails() -> None:
    with pytest.raises(DecryptionError):
        crypto.open_sealed({1: KEY2}, seal(), workspace=WORKSPACE, provider=PROVIDER)


def test_truncated_blobs_fail() -> None:
    blob = seal()
    for length in range(len(blob)):
        with pytest.raises(DecryptionError) as caught:
            crypto.open_sealed({1: KEY1}, blob[:length], workspace=WORKSPACE, provider=PROVIDER)
        assert_opaque(caught.value)


def test_extended_blob_fails() -> None:
    with pytest.raises(DecryptionError):
        crypto.open_sealed({1: KEY1}, seal() + b"\0", workspace=WORKSPACE, provider=PROVIDER)


@pytest.mark.parametrize("blob", [b"", b"\x01\x00\x00", b"\x02" + bytes(40), bytes(40)])
def test_blob_key_version_rejects_garbage(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        crypto.blob_key_version(blob)


def test_empty_plaintext_round_trips() -> None:
    blob = seal(plaintext=b"")
    assert crypto.open_sealed({1: KEY1}, blob, workspace=WORKSPACE, provider=PROVIDER) == b""


def test_only_crypto_module_imports_the_cipher() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = [
        path.relative_to(root).as_posix()
        for package in ("keyvault_service", "execution_service", "service_kit", "clients")
        for path in (root / package).rglob("*.py")
        if "AESGCM" in path.read_text(encoding="utf-8")
    ]
    assert offenders == ["keyvault_service/crypto.py"]


# --- keyring ------------------------------------------------------------------------------


def test_keyring_round_trip_returns_a_secret() -> None:
    keyring = ring(1)
    blob = keyring.encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER)
    secret = keyring.decrypt(blob, workspace=WORKSPACE, provider=PROVIDER)
    assert isinstance(secret, Secret)
    assert secret.reveal() == PLAINTEXT


def test_unicode_plaintext_round_trips() -> None:
    keyring = ring(1)
    blob = keyring.encrypt(Secret("clé-ü-🔑"), workspace="wörk", provider=PROVIDER)
    assert keyring.decrypt(blob, workspace="wörk", provider=PROVIDER).reveal() == "clé-ü-🔑"


def test_two_encryptions_of_one_key_differ() -> None:
    keyring = ring(1)
    first = keyring.encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER)
    second = keyring.encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER)
    assert first[5:17] != second[5:17]  # fresh nonce
    assert first != second
    for blob in (first, second):
        assert keyring.decrypt(blob, workspace=WORKSPACE, provider=PROVIDER).reveal() == PLAINTEXT


def test_keyring_encrypt_with_fixed_nonce_matches_seal() -> None:
    blob = ring(1).encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER, nonce=NONCE)
    assert blob == seal()


def test_keyring_decrypt_wrong_binding_fails_opaquely() -> None:
    keyring = ring(1)
    blob = keyring.encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER)
    with pytest.raises(DecryptionError) as caught:
        keyring.decrypt(blob, workspace="ws-other", provider=PROVIDER)
    assert_opaque(caught.value)


def test_keyring_decrypt_rejects_non_utf8_plaintext() -> None:
    blob = seal(plaintext=b"\xff\xfe")
    with pytest.raises(DecryptionError) as caught:
        ring(1).decrypt(blob, workspace=WORKSPACE, provider=PROVIDER)
    assert_opaque(caught.value)


def test_rotation_in_phases() -> None:
    secret = Secret(PLAINTEXT)
    bind = Binding(workspace=WORKSPACE, provider=PROVIDER)

    # (1) one key: blobs are version 1.
    phase1 = ring(1)
    old = phase1.encrypt(secret, **bind)
    assert crypto.blob_key_version(old) == 1
    assert not phase1.needs_rewrap(old)

    # (2) add version 2 as primary: old blobs still decrypt, new ones are version 2.
    phase2 = ring(1, 2)
    assert phase2.primary_version == 2
    assert phase2.decrypt(old, **bind) == secret
    new = phase2.encrypt(secret, **bind)
    assert crypto.blob_key_version(new) == 2
    assert phase2.needs_rewrap(old)
    assert not phase2.needs_rewrap(new)

    # (3) rewrap the old blob under version 2.
    rewrapped = phase2.rewrap(old, **bind)
    assert rewrapped[5:17] != old[5:17]
    assert crypto.blob_key_version(rewrapped) == 2
    assert not phase2.needs_rewrap(rewrapped)
    assert phase2.decrypt(rewrapped, **bind) == secret

    # (4) retire version 1: rewrapped blobs decrypt, a forgotten old blob does not.
    phase4 = ring(2)
    assert phase4.decrypt(rewrapped, **bind) == secret
    assert phase4.decrypt(new, **bind) == secret
    with pytest.raises(DecryptionError):
        phase4.decrypt(old, **bind)


def test_rewrap_keeps_the_binding() -> None:
    keyring = ring(1, 2)
    old = ring(1).encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER)
    rewrapped = keyring.rewrap(old, workspace=WORKSPACE, provider=PROVIDER)
    with pytest.raises(DecryptionError):
        keyring.decrypt(rewrapped, workspace=WORKSPACE, provider="anthropic")


def test_rewrap_of_a_tampered_blob_fails() -> None:
    blob = bytearray(ring(1).encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER))
    blob[-1] ^= 1
    with pytest.raises(DecryptionError):
        ring(1, 2).rewrap(bytes(blob), workspace=WORKSPACE, provider=PROVIDER)


def test_keyring_versions_and_explicit_primary() -> None:
    keyring = ring(3, 1, 2, primary=1)
    assert keyring.versions == (1, 2, 3)
    blob = keyring.encrypt(Secret(PLAINTEXT), workspace=WORKSPACE, provider=PROVIDER)
    assert crypto.blob_key_version(blob) == 1


def test_keyring_copies_its_keys() -> None:
    keys = {1: KEY1}
    keyring = Keyring(keys=keys, primary_version=1)
    keys[2] = KEY2
    assert keyring.versions == (1,)
    with pytest.raises(TypeError):
        keyring.keys[2] = KEY2  # type: ignore[index]


@pytest.mark.parametrize(
    ("keys", "primary"),
    [
        ({}, 1),
        ({1: KEY1}, 2),
        ({0: KEY1}, 0),
        ({1: KEY1[:16]}, 1),
        ({2**32: KEY1}, 2**32),
    ],
)
def test_keyring_rejects_bad_construction(keys: dict[int, bytes], primary: int) -> None:
    with pytest.raises(KeyringError) as caught:
        Keyring(keys=keys, primary_version=primary)
    assert KEY1.hex() not in str(caught.value)
    assert repr(KEY1[:16]) not in str(caught.value)


def test_keyring_repr_hides_keys() -> None:
    keyring = ring(1, 2, 3, primary=2)
    text = repr(keyring) + str(keyring)
    assert text == 2 * "Keyring(versions=(1, 2, 3), primary_version=2)"
    for key in (KEY1, KEY2, KEY3):
        assert key.hex() not in text
        assert repr(key) not in text


def test_keyring_is_hashable_and_compares_by_content() -> None:
    assert ring(1, 2) == ring(1, 2)
    assert ring(1, 2) != ring(1, 2, primary=1)
    assert Keyring(keys={1: KEY1}, primary_version=1) != Keyring(keys={1: KEY2}, primary_version=1)
    assert hash(ring(1, 2)) == hash(ring(1, 2))


def test_needs_rewrap_rejects_garbage() -> None:
    with pytest.raises(DecryptionError):
        ring(1).needs_rewrap(b"\x01\x00")


def test_generate_master_key() -> None:
    first, second = generate_master_key(), generate_master_key()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert first != second
    assert Keyring.from_env({"ENCRYPTION_KEY": first}).versions == (1,)


# --- from_env -----------------------------------------------------------------------------


def test_from_env_master_keys_default_primary_is_highest() -> None:
    keyring = Keyring.from_env({"KEYVAULT_MASTER_KEYS": f"2:{KEY2.hex()}, 1:{KEY1.hex()}"})
    assert keyring.versions == (1, 2)
    assert keyring.primary_version == 2
    assert keyring.keys == {1: KEY1, 2: KEY2}


def test_from_env_explicit_primary() -> None:
    keyring = Keyring.from_env(
        {
            "KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()},2:{KEY2.hex()},3:{KEY3.hex().upper()}",
            "KEYVAULT_PRIMARY_KEY_VERSION": " 2 ",
        }
    )
    assert keyring.primary_version == 2
    assert keyring.keys[3] == KEY3


def test_from_env_tolerates_a_trailing_comma() -> None:
    keyring = Keyring.from_env({"KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()},"})
    assert keyring.versions == (1,)


def test_from_env_legacy_encryption_key_is_version_1() -> None:
    keyring = Keyring.from_env({"ENCRYPTION_KEY": KEY1.hex(), "KEYVAULT_MASTER_KEYS": ""})
    assert keyring.versions == (1,)
    assert keyring.primary_version == 1
    assert keyring.keys[1] == KEY1
    # A blob sealed by hand under version 1 of this key opens through the keyring.
    assert keyring.decrypt(seal(), workspace=WORKSPACE, provider=PROVIDER).reveal() == PLAINTEXT


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "no master key configured"),
        ({"KEYVAULT_MASTER_KEYS": "  "}, "no master key configured"),
        (
            {"KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()}", "ENCRYPTION_KEY": KEY2.hex()},
            "both KEYVAULT_MASTER_KEYS and ENCRYPTION_KEY",
        ),
        ({"KEYVAULT_MASTER_KEYS": ","}, "lists no keys"),
        ({"KEYVAULT_MASTER_KEYS": KEY1.hex()}, "KEYVAULT_MASTER_KEYS entry 1 must look like"),
        ({"KEYVAULT_MASTER_KEYS": f"x:{KEY1.hex()}"}, "entry 1 has a version that is not"),
        ({"KEYVAULT_MASTER_KEYS": f"-1:{KEY1.hex()}"}, "entry 1 has a version that is not"),
        ({"KEYVAULT_MASTER_KEYS": f"0:{KEY1.hex()}"}, "KEYVAULT_MASTER_KEYS version 0 is out"),
        (
            {"KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()},{KEY2.hex()}:2"},
            "entry 2 has a version that is not",
        ),
        (
            {"KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()},1:{KEY2.hex()}"},
            "lists version 1 more than once",
        ),
        (
            {"KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()},2:{KEY2.hex()[:-2]}"},
            "KEYVAULT_MASTER_KEYS version 2: key must be 64 hex characters (32 bytes), got 62",
        ),
        (
            {"KEYVAULT_MASTER_KEYS": f"2:{KEY2.hex()}00"},
            "KEYVAULT_MASTER_KEYS version 2: key must be 64 hex characters",
        ),
        (
            {"KEYVAULT_MASTER_KEYS": f"2:{KEY2.hex()[:-1]}g"},
            "KEYVAULT_MASTER_KEYS version 2: key is not valid hex",
        ),
        (
            {"KEYVAULT_MASTER_KEYS": f"2:{KEY2.hex()[:30]}  {KEY2.hex()[32:]}"},
            "KEYVAULT_MASTER_KEYS version 2: key is not valid hex",
        ),
        ({"ENCRYPTION_KEY": KEY1.hex()[:-2]}, "ENCRYPTION_KEY: key must be 64 hex characters"),
        ({"ENCRYPTION_KEY": "z" * 64}, "ENCRYPTION_KEY: key is not valid hex"),
        (
            {"KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()}", "KEYVAULT_PRIMARY_KEY_VERSION": "2"},
            "KEYVAULT_PRIMARY_KEY_VERSION=2 is not among the configured versions (1,)",
        ),
        (
            {"ENCRYPTION_KEY": KEY1.hex(), "KEYVAULT_PRIMARY_KEY_VERSION": "2"},
            "KEYVAULT_PRIMARY_KEY_VERSION=2 is not among",
        ),
        (
            {"KEYVAULT_MASTER_KEYS": f"1:{KEY1.hex()}", "KEYVAULT_PRIMARY_KEY_VERSION": "one"},
            "KEYVAULT_PRIMARY_KEY_VERSION must be a positive integer",
        ),
    ],
)
def test_from_env_errors_are_clear_and_hide_keys(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(KeyringError) as caught:
        Keyring.from_env(environ)
    message = str(caught.value)
    assert expected in message
    for key in (KEY1, KEY2):
        hex_key = key.hex()
        # Neither the key nor any sizeable piece of it (a truncated or garbled key).
        for start in range(0, len(hex_key) - 16 + 1):
            assert hex_key[start : start + 16].lower() not in message.lower()
    assert caught.value.__cause__ is None


# --- mask_key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("sk-proj-abcdefghijklmnopAb12", "sk-...Ab12"),
        ("sk-ant-api03-abcdefghijklmnopWxYz", "sk-...WxYz"),
        ("sk-abcdefghijklmnop1234", "sk-...1234"),
        ("abcdef-ghijklmnop1234", "abcdef-...1234"),  # 6-char prefix kept
        ("abcdefg-hijklmnop1234", "...1234"),  # 7-char prefix dropped
        ("-abcdefghijklmnop1234", "...1234"),  # empty prefix dropped
        ("abcdefghijklmnop1234", "...1234"),  # no dash
        ("sk-abcdefgh", "..."),  # 11 chars: too short to show anything
        ("sk-abcdefghi", "sk-...fghi"),  # 12 chars
        ("abc", "..."),
        ("", "..."),
    ],
)
def test_mask_key(key: str, expected: str) -> None:
    assert crypto.mask_key(Secret(key)) == expected


def test_mask_key_never_shows_more_than_prefix_and_four_chars() -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    for length in range(40):
        for dash_at in (None, 0, 1, 2, 5, 6, 7, 10):
            chars = list((alphabet * 2)[:length])
            if dash_at is not None and dash_at < length:
                chars[dash_at] = "-"
            key = "".join(chars)
            masked = crypto.mask_key(Secret(key))
            prefix, dots, tail = masked.partition("...")
            assert dots == "..."
            assert len(tail) <= 4
            assert key.endswith(tail)
            assert prefix == "" or (prefix.endswith("-") and len(prefix) <= 7)
            assert key.startswith(prefix)
            if length < 12:
                assert masked == "..."


# --- fingerprint --------------------------------------------------------------------------


def test_fingerprint() -> None:
    fp_key = b"f" * 32
    first = crypto.fingerprint(Secret(PLAINTEXT), fp_key)
    assert re.fullmatch(r"fp_[0-9a-f]{16}", first)
    assert crypto.fingerprint(Secret(PLAINTEXT), fp_key) == first
    assert crypto.fingerprint(Secret(PLAINTEXT + "x"), fp_key) != first
    assert crypto.fingerprint(Secret(PLAINTEXT), b"g" * 32) != first
    assert PLAINTEXT not in first
    assert PLAINTEXT[-4:] not in first


def test_fingerprint_is_keyed_hmac_sha256() -> None:
    import hashlib
    import hmac

    fp_key = b"k" * 32
    expected = hmac.new(fp_key, b"sk-test", hashlib.sha256).hexdigest()[:16]
    assert crypto.fingerprint(Secret("sk-test"), fp_key) == "fp_" + expected
    assert hashlib.sha256(b"sk-test").hexdigest()[:16] != expected


def test_fingerprint_rejects_an_empty_key() -> None:
    with pytest.raises(ValueError):
        crypto.fingerprint(Secret(PLAINTEXT), b"")


# --- keygen -------------------------------------------------------------------------------


def test_keygen_prints_a_hex_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert keygen.main([]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"[0-9a-f]{64}\n", out)
    assert Keyring.from_env({"ENCRYPTION_KEY": out.strip()}).versions == (1,)


def test_keygen_prints_a_versioned_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert keygen.main(["--version", "7"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"7:[0-9a-f]{64}\n", out)
    assert Keyring.from_env({"KEYVAULT_MASTER_KEYS": out.strip()}).versions == (7,)


@pytest.mark.parametrize("version", ["0", "-1", "x", str(2**32)])
def test_keygen_rejects_bad_versions(version: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        keygen.main(["--version", version])
    assert caught.value.code == 2
    assert capsys.readouterr().out == ""
