-- Statistics and history at scale.
--
-- 1. `executions` becomes a table partitioned by week of create_time (UTC, Monday 00:00).
--    The existing table is kept as it is and attached as the partition `executions_legacy`
--    for everything up to the end of the current week; the service creates the weekly
--    partitions after it ahead of time (execution_service/maintenance.py), and
--    `executions_default` takes any row no partition covers, so an insert never fails.
-- 2. A unique index on a partitioned table must contain the partition key, so the one
--    execution per (workspace, request id) rule, and finding an execution's partition from
--    its id alone, move to the small non-partitioned `execution_keys`, written by a BEFORE
--    INSERT trigger in the same statement as the execution's row.
-- 3. Per-minute rollups of terminal executions, kept exact by a trigger on every path that
--    ends an execution (the owner's record, the sweeper, a late record replacing the
--    sweeper's verdict). The trigger adds into `execution_rollup_pending`, sharded by the
--    execution id so that one agent's concurrent finishes do not queue on one row; the
--    service folds pending rows into `execution_rollups` (minute, hour and day rows) in the
--    background, and GetAgentStats reads both.

-- Histogram bucket of a duration in milliseconds: log buckets of ratio 1.04 above 0.1 ms,
-- so a bucket's midpoint (2 * 0.1 * 1.04^i / 2.04) is within 1.96 % of every value in it.
-- The same arithmetic as execution_service/histogram.py (tested against it).
CREATE FUNCTION rollup_bucket(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms IS NULL THEN NULL
                WHEN ms <= 0.1::float8 THEN 0
                ELSE least(ceil(ln(ms / 0.1::float8) / ln(1.04::float8)), 1023)::integer END
$$;

-- Histograms are integer arrays indexed by bucket; an array spans only the buckets seen
-- (PostgreSQL arrays may start at any subscript), NULL elements count as 0.
CREATE FUNCTION rollup_hist_inc(h integer[], i integer, n integer) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF i IS NULL THEN
        RETURN h;
    END IF;
    h[i] := coalesce(h[i], 0) + n;
    RETURN h;
END $$;

CREATE FUNCTION rollup_hist_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF b IS NULL THEN
        RETURN a;
    END IF;
    FOR i IN array_lower(b, 1) .. array_upper(b, 1) LOOP
        IF b[i] IS NOT NULL AND b[i] <> 0 THEN
            a[i] := coalesce(a[i], 0) + b[i];
        END IF;
    END LOOP;
    RETURN a;
END $$;

CREATE AGGREGATE rollup_hist_sum(integer[]) (SFUNC = rollup_hist_add, STYPE = integer[]);

-- Built from (bucket, count) pairs.
CREATE FUNCTION rollup_hist_of(buckets integer[], counts bigint[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    h integer[];
BEGIN
    FOR k IN 1 .. coalesce(cardinality(buckets), 0) LOOP
        IF buckets[k] IS NOT NULL THEN
            h[buckets[k]] := coalesce(h[buckets[k]], 0) + counts[k];
        END IF;
    END LOOP;
    RETURN h;
END $$;

-- ---------------------------------------------------------------------------------------
-- Partitioning

ALTER TABLE executions RENAME TO executions_legacy;
ALTER INDEX executions_history RENAME TO executions_legacy_history;
ALTER INDEX executions_agent_history RENAME TO executions_legacy_agent_history;
ALTER INDEX executions_running_leases RENAME TO executions_legacy_running_leases;
DROP INDEX executions_request_id;  -- now execution_keys_request_id
ALTER TABLE executions_legacy DROP CONSTRAINT executions_pkey;
ALTER TABLE executions_legacy ALTER COLUMN id SET NOT NULL;

CREATE TABLE executions (LIKE executions_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (create_time);
ALTER TABLE executions ADD PRIMARY KEY (id, create_time);
-- History, newest first, keyset-paginated on (create_time, id).
CREATE INDEX executions_history ON executions (workspace, create_time DESC, id DESC);
CREATE INDEX executions_agent_history
    ON executions (workspace, agent_id, create_time DESC, id DESC);
-- The sweeper's scan.
CREATE INDEX executions_running_leases ON executions (lease_expires_at) WHERE state = 'RUNNING';
-- GetAgentStats' running count (rollups hold terminal executions only).
CREATE INDEX executions_running_agent
    ON executions (workspace, agent_id, create_time) WHERE state = 'RUNNING';

-- The old rows stay where they are: the table is attached as one partition up to the end of
-- the current week (the attach checks its rows; the existing indexes are reused).
DO $$
DECLARE
    upper_bound timestamptz;
BEGIN
    SELECT date_trunc('week', greatest(max(create_time), now()), 'UTC') + interval '7 days'
      INTO upper_bound FROM executions_legacy;
    EXECUTE format(
        'ALTER TABLE executions ATTACH PARTITION executions_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
        upper_bound);
END $$;
CREATE TABLE executions_default PARTITION OF executions DEFAULT;

-- ---------------------------------------------------------------------------------------
-- Execution keys: request-id idempotency and id -> create_time, across partitions.

CREATE TABLE execution_keys (
    id          uuid        PRIMARY KEY,
    create_time timestamptz NOT NULL,
    workspace   text        NOT NULL,
    request_id  text
);
CREATE UNIQUE INDEX execution_keys_request_id ON execution_keys (workspace, request_id)
    WHERE request_id IS NOT NULL;
INSERT INTO execution_keys (id, create_time, workspace, request_id)
    SELECT id, create_time, workspace, request_id FROM executions_legacy;

-- Every row proposed for insertion claims its key first. A row whose request id another
-- execution holds is skipped (the INSERT then returns nothing, as ON CONFLICT DO NOTHING
-- did); a row whose key it already holds (an upsert of its own terminal record) goes on.
CREATE FUNCTION executions_claim_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO execution_keys (id, create_time, workspace, request_id)
        VALUES (NEW.id, NEW.create_time, NEW.workspace, NEW.request_id)
        ON CONFLICT DO NOTHING;
    IF FOUND OR EXISTS (SELECT 1 FROM execution_keys WHERE id = NEW.id) THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER executions_claim_key BEFORE INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_claim_key();

-- ---------------------------------------------------------------------------------------
-- Rollups

-- What the trigger adds: one row per (workspace, agent, minute of create_time, shard).
-- Counts may be negative here (a replaced terminal record subtracts its old contribution).
CREATE TABLE execution_rollup_pending (
    workspace          text        NOT NULL,
    agent_id           text        NOT NULL,
    minute             timestamptz NOT NULL,
    shard              smallint    NOT NULL,
    succeeded          bigint      NOT NULL DEFAULT 0,
    failed             bigint      NOT NULL DEFAULT 0,
    cancelled          bigint      NOT NULL DEFAULT 0,
    input_tokens       bigint      NOT NULL DEFAULT 0,
    output_tokens      bigint      NOT NULL DEFAULT 0,
    cache_read_tokens  bigint      NOT NULL DEFAULT 0,
    cache_write_tokens bigint      NOT NULL DEFAULT 0,
    cost_nanos         bigint      NOT NULL DEFAULT 0,
    unknown_cost       bigint      NOT NULL DEFAULT 0,
    output_invalid     bigint      NOT NULL DEFAULT 0,
    fallback           bigint      NOT NULL DEFAULT 0,
    latency_hist       integer[],
    ttft_hist          integer[],
    PRIMARY KEY (workspace, agent_id, minute, shard)
);

-- Folded rollups: grain 60 (minute), 3600 (hour) or 86400 (day, UTC), unsharded; written
-- only by the background fold, so readers see few rows for any window.
CREATE TABLE execution_rollups (
    workspace          text        NOT NULL,
    agent_id           text        NOT NULL,
    grain              integer     NOT NULL CHECK (grain IN (60, 3600, 86400)),
    bucket_start       timestamptz NOT NULL,
    succeeded          bigint      NOT NULL DEFAULT 0,
    failed             bigint      NOT NULL DEFAULT 0,
    cancelled          bigint      NOT NULL DEFAULT 0,
    input_tokens       bigint      NOT NULL DEFAULT 0,
    output_tokens      bigint      NOT NULL DEFAULT 0,
    cache_read_tokens  bigint      NOT NULL DEFAULT 0,
    cache_write_tokens bigint      NOT NULL DEFAULT 0,
    cost_nanos         bigint      NOT NULL DEFAULT 0,
    unknown_cost       bigint      NOT NULL DEFAULT 0,
    output_invalid     bigint      NOT NULL DEFAULT 0,
    fallback           bigint      NOT NULL DEFAULT 0,
    latency_hist       integer[],
    ttft_hist          integer[],
    PRIMARY KEY (workspace, agent_id, grain, bucket_start)
);

-- One terminal execution's contribution (sign +1) or its removal (sign -1).
CREATE FUNCTION execution_rollup_add(
    p_id uuid, p_workspace text, p_agent_id text, p_create_time timestamptz, p_state text,
    p_input bigint, p_output bigint, p_cache_read bigint, p_cache_write bigint,
    p_cost bigint, p_error_reason text, p_route_index integer,
    p_end_time timestamptz, p_first_token_time timestamptz, sign integer
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    lat integer := rollup_bucket(extract(epoch FROM p_end_time - p_create_time)::float8 * 1000);
    ttft integer := rollup_bucket(
        extract(epoch FROM p_first_token_time - p_create_time)::float8 * 1000);
BEGIN
    INSERT INTO execution_rollup_pending AS p (workspace, agent_id, minute, shard, succeeded,
        failed, cancelled, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
        cost_nanos, unknown_cost, output_invalid, fallback, latency_hist, ttft_hist)
    VALUES (p_workspace, p_agent_id, date_trunc('minute', p_create_time, 'UTC'),
        get_byte(uuid_send(p_id), 15) % 8,
        CASE WHEN p_state = 'SUCCEEDED' THEN sign ELSE 0 END,
        CASE WHEN p_state = 'FAILED' THEN sign ELSE 0 END,
        CASE WHEN p_state = 'CANCELLED' THEN sign ELSE 0 END,
        sign * p_input, sign * p_output, sign * p_cache_read, sign * p_cache_write,
        sign * coalesce(p_cost, 0),
        CASE WHEN p_cost IS NULL THEN sign ELSE 0 END,
        CASE WHEN p_state = 'FAILED'
                  AND p_error_reason IN ('OUTPUT_SCHEMA_VIOLATION', 'OUTPUT_REFUSED')
             THEN sign ELSE 0 END,
        CASE WHEN p_route_index > 0 THEN sign ELSE 0 END,
        rollup_hist_inc(NULL, lat, sign), rollup_hist_inc(NULL, ttft, sign))
    ON CONFLICT (workspace, agent_id, minute, shard) DO UPDATE SET
        succeeded = p.succeeded + EXCLUDED.succeeded,
        failed = p.failed + EXCLUDED.failed,
        cancelled = p.cancelled + EXCLUDED.cancelled,
        input_tokens = p.input_tokens + EXCLUDED.input_tokens,
        output_tokens = p.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = p.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_write_tokens = p.cache_write_tokens + EXCLUDED.cache_write_tokens,
        cost_nanos = p.cost_nanos + EXCLUDED.cost_nanos,
        unknown_cost = p.unknown_cost + EXCLUDED.unknown_cost,
        output_invalid = p.output_invalid + EXCLUDED.output_invalid,
        fallback = p.fallback + EXCLUDED.fallback,
        latency_hist = rollup_hist_inc(p.latency_hist, lat, sign),
        ttft_hist = rollup_hist_inc(p.ttft_hist, ttft, sign);
END $$;

CREATE FUNCTION executions_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.state <> 'RUNNING' THEN
        PERFORM execution_rollup_add(OLD.id, OLD.workspace, OLD.agent_id, OLD.create_time,
            OLD.state, OLD.input_tokens, OLD.output_tokens, OLD.cache_read_tokens,
            OLD.cache_write_tokens, OLD.cost_nanos, OLD.error_reason, OLD.route_index,
            OLD.end_time, OLD.first_token_time, -1);
    END IF;
    IF NEW.state <> 'RUNNING' THEN
        PERFORM execution_rollup_add(NEW.id, NEW.workspace, NEW.agent_id, NEW.create_time,
            NEW.state, NEW.input_tokens, NEW.output_tokens, NEW.cache_read_tokens,
            NEW.cache_write_tokens, NEW.cost_nanos, NEW.error_reason, NEW.route_index,
            NEW.end_time, NEW.first_token_time, 1);
    END IF;
    RETURN NULL;
END $$;
-- Only rows that are or were terminal: lease renewals and cancel requests cost nothing.
CREATE TRIGGER executions_rollup_insert AFTER INSERT ON executions
    FOR EACH ROW WHEN (NEW.state <> 'RUNNING') EXECUTE FUNCTION executions_rollup();
CREATE TRIGGER executions_rollup_update AFTER UPDATE ON executions
    FOR EACH ROW WHEN (NEW.state <> 'RUNNING' OR OLD.state <> 'RUNNING')
    EXECUTE FUNCTION executions_rollup();

-- Rollups of the rows in [lo, hi), added in bulk (the existing rows below; bulk loads).
CREATE FUNCTION execution_rollup_backfill(lo timestamptz, hi timestamptz) RETURNS bigint
LANGUAGE sql AS $$
    WITH rows AS (
        SELECT workspace, agent_id, date_trunc('minute', create_time, 'UTC') AS minute, state,
               input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos,
               error_reason, route_index,
               rollup_bucket(extract(epoch FROM end_time - create_time)::float8 * 1000) AS lat,
               rollup_bucket(extract(epoch FROM first_token_time - create_time)::float8 * 1000)
                   AS ttft
        FROM executions
        WHERE state <> 'RUNNING' AND create_time >= lo AND create_time < hi
    ), totals AS (
        SELECT workspace, agent_id, minute,
               count(*) FILTER (WHERE state = 'SUCCEEDED') AS succeeded,
               count(*) FILTER (WHERE state = 'FAILED') AS failed,
               count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cache_read_tokens) AS cache_read_tokens,
               sum(cache_write_tokens) AS cache_write_tokens,
               coalesce(sum(cost_nanos), 0) AS cost_nanos,
               count(*) FILTER (WHERE cost_nanos IS NULL) AS unknown_cost,
               count(*) FILTER (WHERE state = 'FAILED' AND error_reason IN
                   ('OUTPUT_SCHEMA_VIOLATION', 'OUTPUT_REFUSED')) AS output_invalid,
               count(*) FILTER (WHERE route_index > 0) AS fallback
        FROM rows GROUP BY 1, 2, 3
    ), lat AS (
        SELECT workspace, agent_id, minute, rollup_hist_of(array_agg(b), array_agg(n)) AS h
        FROM (SELECT workspace, agent_id, minute, lat AS b, count(*) AS n
              FROM rows WHERE lat IS NOT NULL GROUP BY 1, 2, 3, 4) x
        GROUP BY 1, 2, 3
    ), ttft AS (
        SELECT workspace, agent_id, minute, rollup_hist_of(array_agg(b), array_agg(n)) AS h
        FROM (SELECT workspace, agent_id, minute, ttft AS b, count(*) AS n
              FROM rows WHERE ttft IS NOT NULL GROUP BY 1, 2, 3, 4) x
        GROUP BY 1, 2, 3
    ), added AS (
        INSERT INTO execution_rollup_pending AS p (workspace, agent_id, minute, shard,
            succeeded, failed, cancelled, input_tokens, output_tokens, cache_read_tokens,
            cache_write_tokens, cost_nanos, unknown_cost, output_invalid, fallback,
            latency_hist, ttft_hist)
        SELECT t.workspace, t.agent_id, t.minute, 0, t.succeeded, t.failed, t.cancelled,
               t.input_tokens, t.output_tokens, t.cache_read_tokens, t.cache_write_tokens,
               t.cost_nanos, t.unknown_cost, t.output_invalid, t.fallback, lat.h, ttft.h
        FROM totals t
        LEFT JOIN lat USING (workspace, agent_id, minute)
        LEFT JOIN ttft USING (workspace, agent_id, minute)
        ON CONFLICT (workspace, agent_id, minute, shard) DO UPDATE SET
            succeeded = p.succeeded + EXCLUDED.succeeded,
            failed = p.failed + EXCLUDED.failed,
            cancelled = p.cancelled + EXCLUDED.cancelled,
            input_tokens = p.input_tokens + EXCLUDED.input_tokens,
            output_tokens = p.output_tokens + EXCLUDED.output_tokens,
            cache_read_tokens = p.cache_read_tokens + EXCLUDED.cache_read_tokens,
            cache_write_tokens = p.cache_write_tokens + EXCLUDED.cache_write_tokens,
            cost_nanos = p.cost_nanos + EXCLUDED.cost_nanos,
            unknown_cost = p.unknown_cost + EXCLUDED.unknown_cost,
            output_invalid = p.output_invalid + EXCLUDED.output_invalid,
            fallback = p.fallback + EXCLUDED.fallback,
            latency_hist = rollup_hist_add(p.latency_hist, EXCLUDED.latency_hist),
            ttft_hist = rollup_hist_add(p.ttft_hist, EXCLUDED.ttft_hist)
        RETURNING 1
    )
    SELECT count(*) FROM added
$$;

SELECT execution_rollup_backfill('-infinity', 'infinity');
