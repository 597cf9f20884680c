-- Every execution, from the moment it is accepted until it is terminal.
CREATE TABLE executions (
    id                 uuid        PRIMARY KEY,
    workspace          text        NOT NULL,
    agent_id           text        NOT NULL,
    provider           text        NOT NULL,
    model              text        NOT NULL,
    state              text        NOT NULL
                       CHECK (state IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    request_id         text,
    labels             jsonb       NOT NULL DEFAULT '{}',
    input_tokens       bigint      NOT NULL DEFAULT 0,
    output_tokens      bigint      NOT NULL DEFAULT 0,
    cache_read_tokens  bigint      NOT NULL DEFAULT 0,
    cache_write_tokens bigint      NOT NULL DEFAULT 0,
    usage_estimated    boolean     NOT NULL DEFAULT false,
    cost_nanos         bigint,     -- NULL: the model's price is unknown (never recorded as 0)
    attempts           integer     NOT NULL DEFAULT 0,
    error_reason       text        NOT NULL DEFAULT '',
    error_message      text        NOT NULL DEFAULT '',
    provider_status    integer     NOT NULL DEFAULT 0,
    finish_reason      text        NOT NULL DEFAULT '',
    output_text        text,
    create_time        timestamptz NOT NULL,
    first_token_time   timestamptz,
    end_time           timestamptz,
    -- A running execution's owner renews the lease; the sweeper fails expired ones.
    lease_owner        text,
    lease_expires_at   timestamptz
);

-- Idempotent Execute: one execution per (workspace, request id).
CREATE UNIQUE INDEX executions_request_id ON executions (workspace, request_id)
    WHERE request_id IS NOT NULL;
-- History, newest first, keyset-paginated on (create_time, id).
CREATE INDEX executions_history ON executions (workspace, create_time DESC, id DESC);
CREATE INDEX executions_agent_history ON executions (workspace, agent_id, create_time DESC, id DESC);
-- The sweeper's scan.
CREATE INDEX executions_running_leases ON executions (lease_expires_at) WHERE state = 'RUNNING';
