-- Encrypted API keys: one per workspace and provider. Only ciphertext is stored; the hint
-- and fingerprint are computed once at SetApiKey and never allow recovering the key.
CREATE TABLE api_keys (
    workspace    text        NOT NULL,
    provider     text        NOT NULL CHECK (provider IN ('openai', 'anthropic')),
    ciphertext   bytea       NOT NULL,
    key_version  integer     NOT NULL,
    key_hint     text        NOT NULL,
    fingerprint  text        NOT NULL,
    base_url     text        NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, provider)
);

-- Rotation looks for keys under a non-primary version.
CREATE INDEX api_keys_key_version ON api_keys (key_version);

CREATE TABLE audit_events (
    id           bigserial   PRIMARY KEY,
    action       text        NOT NULL,
    outcome      text        NOT NULL,
    caller       text        NOT NULL DEFAULT '',
    workspace    text        NOT NULL DEFAULT '',
    provider     text        NOT NULL DEFAULT '',
    request_id   text        NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_events_workspace_id ON audit_events (workspace, id DESC);
