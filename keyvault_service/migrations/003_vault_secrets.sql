-- The vault's own secrets, encrypted like API keys. `fingerprint-key`: the HMAC key of API
-- key fingerprints, generated once so that one key has one fingerprint across rotations.
CREATE TABLE vault_secrets (
    name         text        PRIMARY KEY,
    ciphertext   bytea       NOT NULL,
    key_version  integer     NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);
