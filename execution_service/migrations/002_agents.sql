-- Agents: defined once per workspace, run by name.
CREATE TABLE agents (
    workspace      text        NOT NULL,
    agent_id       text        COLLATE "C" NOT NULL,  -- byte order: pages by id everywhere alike
    display_name   text        NOT NULL DEFAULT '',
    description    text        NOT NULL DEFAULT '',
    instructions   text        NOT NULL DEFAULT '',
    routes         jsonb       NOT NULL,         -- [{provider, model, generation_config}]
    input_schema   jsonb,                        -- NULL: any JSON object
    output_schema  jsonb,                        -- NULL: free text
    labels         jsonb       NOT NULL DEFAULT '{}',
    create_time    timestamptz NOT NULL,
    update_time    timestamptz NOT NULL,
    etag           text        NOT NULL,         -- changes with every update
    -- ListAgents pages by agent id within a workspace, so the key is also the listing index.
    PRIMARY KEY (workspace, agent_id)
);

-- What an execution of an agent records: which agent and which version of it ran, the
-- parsed structured output, whether it matched the output schema, and where it did not.
ALTER TABLE executions
    ADD COLUMN agent            text,
    ADD COLUMN agent_etag       text,
    ADD COLUMN output           jsonb,
    ADD COLUMN output_valid     boolean,
    ADD COLUMN error_violations jsonb;
