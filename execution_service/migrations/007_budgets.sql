-- Budgets: limits on a workspace, or on one agent of it. A budget holds a spend limit per
-- period (a UTC day or calendar month) in nano-dollars and/or request and token rates per
-- minute. Every budget whose scope matches an execution applies to it.
CREATE TABLE budgets (
    workspace             text        NOT NULL,
    budget_id             text        NOT NULL,
    agent_id              text,       -- NULL: every execution of the workspace
    display_name          text        NOT NULL DEFAULT '',
    limit_nanos           bigint      CHECK (limit_nanos >= 0),  -- NULL: no spend limit
    period                text        NOT NULL CHECK (period IN ('DAY', 'MONTH')),
    mode                  text        NOT NULL CHECK (mode IN ('ENFORCE', 'ALERT_ONLY')),
    allow_unpriced_models boolean     NOT NULL DEFAULT false,
    requests_per_minute   bigint      CHECK (requests_per_minute > 0),  -- NULL: no limit
    tokens_per_minute     bigint      CHECK (tokens_per_minute > 0),    -- NULL: no limit
    labels                jsonb       NOT NULL DEFAULT '{}',
    create_time           timestamptz NOT NULL,
    update_time           timestamptz NOT NULL,
    etag                  text        NOT NULL,
    -- The two token buckets (what is left, as of bucket_time; NULL: full). They live on the
    -- budget row because admission locks that row anyway.
    request_tokens        float8,
    token_tokens          float8,
    bucket_time           timestamptz,
    PRIMARY KEY (workspace, budget_id)
);

-- Spend per budget and period. `reserved_nanos` is the worst-case cost of the executions
-- admitted in the period and not yet finished; an execution is charged to the period it was
-- admitted in.
CREATE TABLE budget_periods (
    workspace      text        NOT NULL,
    budget_id      text        NOT NULL,
    period         text        NOT NULL,
    period_start   timestamptz NOT NULL,
    spent_nanos    bigint      NOT NULL DEFAULT 0,
    reserved_nanos bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, budget_id, period, period_start),
    FOREIGN KEY (workspace, budget_id) REFERENCES budgets ON DELETE CASCADE
);

-- What each admitted execution holds of each budget until it finishes: the reserved amount
-- and the tokens taken from the tokens-per-minute bucket. Settled rows are kept a day so
-- that a late terminal record replacing the sweeper's can correct the charge.
CREATE TABLE budget_reservations (
    execution_id   uuid        NOT NULL,
    workspace      text        NOT NULL,
    budget_id      text        NOT NULL,
    period         text        NOT NULL,
    period_start   timestamptz NOT NULL,
    amount_nanos   bigint      NOT NULL,
    tokens         bigint      NOT NULL,
    execution_time timestamptz NOT NULL,  -- the execution's create_time
    reserve_time   timestamptz NOT NULL DEFAULT now(),
    settled        boolean     NOT NULL DEFAULT false,
    charged_nanos  bigint      NOT NULL DEFAULT 0,
    -- No foreign key: its check would cost every admission a lookup. Deleting a budget
    -- deletes its reservations in the same statement (budget_repository.delete).
    PRIMARY KEY (execution_id, workspace, budget_id)
);
CREATE INDEX budget_reservations_held ON budget_reservations (reserve_time) WHERE NOT settled;
CREATE INDEX budget_reservations_settled ON budget_reservations (reserve_time) WHERE settled;

-- What finished executions gave back and spent, not yet folded into budget_periods and the
-- token bucket. A finish appends here instead of updating the budget's rows: its terminal
-- write commits durably (waits for the disk), and holding the budget's lock across that wait
-- would make every admission of the workspace queue behind every finish. The next admission,
-- which holds the budget's lock anyway, folds these rows in; readers add the rest.
CREATE TABLE budget_settlements (
    workspace      text        NOT NULL,
    budget_id      text        NOT NULL,
    period         text        NOT NULL,
    period_start   timestamptz NOT NULL,
    reserved_delta bigint      NOT NULL,  -- minus the released reservation
    spent_delta    bigint      NOT NULL,  -- the actual cost (or its correction)
    token_refund   bigint      NOT NULL   -- tokens taken beyond the actual usage
);
CREATE INDEX budget_settlements_budget ON budget_settlements (workspace, budget_id);

-- The start of the period containing `at` (UTC day or calendar month).
CREATE FUNCTION budget_period_start(period text, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc(CASE period WHEN 'DAY' THEN 'day' ELSE 'month' END,
                      at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

CREATE FUNCTION budget_period_end(period text, start timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT ((start AT TIME ZONE 'UTC')
            + CASE period WHEN 'DAY' THEN interval '1 day' ELSE interval '1 month' END)
           AT TIME ZONE 'UTC'
$$;

-- Admission: every budget of the execution's scope, locked in budget id order, is checked
-- first; only if all of them admit it (or only ALERT_ONLY ones object) is the worst-case
-- cost reserved and the rate-limit tokens taken. One call, one round trip, all or nothing.
--   p_amount: worst-case cost in nano-dollars over the priced routes (0 when none is);
--   p_unpriced: some route that may run has no known price;
--   p_tokens: worst-case tokens (input + max_tokens) for the tokens-per-minute buckets.
-- The row answers ok, or the refusal (PRICE_UNKNOWN, BUDGET_EXCEEDED, RATE_LIMITED, in that
-- order of precedence) with the refusing budget's figures; `alerts` lists what ALERT_ONLY
-- budgets would have refused; `enforced` says an ENFORCE spend limit applied.
CREATE FUNCTION budget_admit(
    p_go boolean, p_workspace text, p_agent_id text, p_execution uuid, p_time timestamptz,
    p_amount bigint, p_unpriced boolean, p_tokens bigint,
    OUT ok boolean, OUT reason text, OUT budget text, OUT limit_nanos bigint,
    OUT spent_nanos bigint, OUT period_end timestamptz, OUT retry_after float8,
    OUT alerts text[], OUT enforced boolean)
LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
    v_now timestamptz := clock_timestamp();  -- buckets use the database's clock, shared by all
    v_start timestamptz;
    v_spent bigint;
    v_reserved bigint;
    v_elapsed float8;
    v_req float8;
    v_tok float8;
    v_take bigint;
    v_wait float8;
    v_found text;
    v_rank int := 0;  -- precedence of the refusal found so far
    v_locked budgets[] := '{}';
    v_refund bigint;
BEGIN
    ok := true; reason := ''; budget := ''; retry_after := 0; alerts := '{}'; enforced := false;
    IF NOT p_go THEN
        RETURN;
    END IF;
    FOR b IN SELECT * FROM budgets
             WHERE workspace = p_workspace AND (agent_id IS NULL OR agent_id = p_agent_id)
             ORDER BY budget_id FOR UPDATE
    LOOP
        -- Fold in what finished executions settled since the last admission (under the
        -- budget's lock, which orders every fold).
        WITH folded AS (
            DELETE FROM budget_settlements s
            WHERE s.workspace = b.workspace AND s.budget_id = b.budget_id
            RETURNING s.period, s.period_start, s.reserved_delta, s.spent_delta, s.token_refund
        ), per_period AS (
            SELECT f.period, f.period_start, sum(f.reserved_delta) AS reserved,
                   sum(f.spent_delta) AS spent
            FROM folded f GROUP BY f.period, f.period_start
        ), applied AS (
            UPDATE budget_periods p SET reserved_nanos = p.reserved_nanos + pp.reserved,
                                        spent_nanos = p.spent_nanos + pp.spent
            FROM per_period pp
            WHERE p.workspace = b.workspace AND p.budget_id = b.budget_id
              AND p.period = pp.period AND p.period_start = pp.period_start
        )
        SELECT coalesce(sum(f.token_refund), 0) INTO v_refund FROM folded f;
        IF v_refund > 0 AND b.tokens_per_minute IS NOT NULL THEN
            b.token_tokens := least(b.tokens_per_minute,
                                    coalesce(b.token_tokens, b.tokens_per_minute) + v_refund);
            UPDATE budgets SET token_tokens = b.token_tokens
            WHERE workspace = b.workspace AND budget_id = b.budget_id;
        END IF;
        v_locked := v_locked || b;
        v_start := budget_period_start(b.period, p_time);
        SELECT p.spent_nanos, p.reserved_nanos INTO v_spent, v_reserved FROM budget_periods p
        WHERE p.workspace = b.workspace AND p.budget_id = b.budget_id AND p.period = b.period
          AND p.period_start = v_start;
        v_spent := coalesce(v_spent, 0);
        v_reserved := coalesce(v_reserved, 0);
        v_found := NULL;
        v_wait := 0;
        IF b.limit_nanos IS NOT NULL AND p_unpriced AND NOT b.allow_unpriced_models THEN
            v_found := 'PRICE_UNKNOWN';
        ELSIF b.limit_nanos IS NOT NULL AND v_spent + v_reserved + p_amount > b.limit_nanos THEN
            v_found := 'BUDGET_EXCEEDED';
        ELSE
            v_elapsed := greatest(extract(epoch FROM v_now - coalesce(b.bucket_time, v_now)), 0);
            IF b.requests_per_minute IS NOT NULL THEN
                v_req := least(b.requests_per_minute,
                               coalesce(b.request_tokens, b.requests_per_minute)
                               + v_elapsed * b.requests_per_minute / 60.0);
                IF v_req < 1 THEN
                    v_wait := (1 - v_req) * 60.0 / b.requests_per_minute;
                END IF;
            END IF;
            IF b.tokens_per_minute IS NOT NULL THEN
                v_take := least(p_tokens, b.tokens_per_minute);
                v_tok := least(b.tokens_per_minute,
                               coalesce(b.token_tokens, b.tokens_per_minute)
                               + v_elapsed * b.tokens_per_minute / 60.0);
                IF v_tok < v_take THEN
                    v_wait := greatest(v_wait, (v_take - v_tok) * 60.0 / b.tokens_per_minute);
                END IF;
            END IF;
            IF v_wait > 0 THEN
                v_found := 'RATE_LIMITED';
            END IF;
        END IF;
        IF b.mode = 'ENFORCE' AND b.limit_nanos IS NOT NULL THEN
            enforced := true;
        END IF;
        IF v_found IS NULL THEN
            CONTINUE;
        ELSIF b.mode = 'ALERT_ONLY' THEN
            alerts := alerts || v_found;
        ELSIF (CASE v_found WHEN 'PRICE_UNKNOWN' THEN 3 WHEN 'BUDGET_EXCEEDED' THEN 2 ELSE 1 END)
              > v_rank THEN
            v_rank := CASE v_found WHEN 'PRICE_UNKNOWN' THEN 3 WHEN 'BUDGET_EXCEEDED' THEN 2
                      ELSE 1 END;
            ok := false; reason := v_found;
            budget := 'workspaces/' || b.workspace || '/budgets/' || b.budget_id;
            limit_nanos := b.limit_nanos; spent_nanos := v_spent;
            period_end := budget_period_end(b.period, v_start);
            retry_after := v_wait;
        ELSIF v_found = 'RATE_LIMITED' THEN
            retry_after := greatest(retry_after, v_wait);
        END IF;
    END LOOP;
    IF NOT ok THEN
        RETURN;
    END IF;
    -- Everything fits (or only ALERT_ONLY budgets object): reserve and take, in the same
    -- order, under the locks already held.
    FOREACH b IN ARRAY v_locked
    LOOP
        v_start := budget_period_start(b.period, p_time);
        INSERT INTO budget_periods AS p (workspace, budget_id, period, period_start,
                                         reserved_nanos)
        VALUES (b.workspace, b.budget_id, b.period, v_start, p_amount)
        ON CONFLICT (workspace, budget_id, period, period_start)
        DO UPDATE SET reserved_nanos = p.reserved_nanos + EXCLUDED.reserved_nanos;
        v_take := CASE WHEN b.tokens_per_minute IS NULL THEN 0
                       ELSE least(p_tokens, b.tokens_per_minute) END;
        INSERT INTO budget_reservations (execution_id, workspace, budget_id, period,
                                         period_start, amount_nanos, tokens, execution_time)
        VALUES (p_execution, b.workspace, b.budget_id, b.period, v_start, p_amount, v_take,
                p_time);
        IF b.requests_per_minute IS NOT NULL OR b.tokens_per_minute IS NOT NULL THEN
            v_elapsed := greatest(extract(epoch FROM v_now - coalesce(b.bucket_time, v_now)), 0);
            UPDATE budgets SET
                request_tokens = CASE WHEN b.requests_per_minute IS NULL THEN NULL ELSE
                    greatest(least(b.requests_per_minute,
                                   coalesce(b.request_tokens, b.requests_per_minute)
                                   + v_elapsed * b.requests_per_minute / 60.0) - 1, 0) END,
                token_tokens = CASE WHEN b.tokens_per_minute IS NULL THEN NULL ELSE
                    greatest(least(b.tokens_per_minute,
                                   coalesce(b.token_tokens, b.tokens_per_minute)
                                   + v_elapsed * b.tokens_per_minute / 60.0) - v_take, 0) END,
                bucket_time = greatest(v_now, coalesce(b.bucket_time, v_now))
            WHERE workspace = b.workspace AND budget_id = b.budget_id;
        END IF;
    END LOOP;
END $$;

-- Finish: when an execution becomes terminal, each of its reservations is settled: released,
-- its actual cost spent in the period it was admitted in, and the tokens taken beyond its
-- actual usage given back to the tokens-per-minute bucket. It is appended to
-- budget_settlements (see there) and never waits for a budget's lock. A later terminal record
-- replacing the sweeper's INTERRUPTED one only corrects the charge (settled rows remember
-- what was charged).
CREATE FUNCTION budget_settle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r budget_reservations%ROWTYPE;
    v_cost bigint := coalesce(NEW.cost_nanos, 0);
    v_used bigint := NEW.input_tokens + NEW.output_tokens + NEW.cache_read_tokens
                     + NEW.cache_write_tokens;
BEGIN
    FOR r IN SELECT * FROM budget_reservations WHERE execution_id = NEW.id
    LOOP
        IF r.settled AND r.charged_nanos = v_cost THEN
            CONTINUE;
        END IF;
        INSERT INTO budget_settlements (workspace, budget_id, period, period_start,
                                        reserved_delta, spent_delta, token_refund)
        VALUES (r.workspace, r.budget_id, r.period, r.period_start,
                CASE WHEN r.settled THEN 0 ELSE -r.amount_nanos END,
                v_cost - r.charged_nanos,
                CASE WHEN r.settled OR r.tokens <= v_used THEN 0 ELSE r.tokens - v_used END);
        UPDATE budget_reservations SET settled = true, charged_nanos = v_cost
        WHERE execution_id = r.execution_id AND workspace = r.workspace
          AND budget_id = r.budget_id;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER executions_budget_settle
    AFTER INSERT OR UPDATE OF state, cost_nanos ON executions
    FOR EACH ROW WHEN (NEW.state <> 'RUNNING')
    EXECUTE FUNCTION budget_settle();

-- The sweeper's part: reservations held longer than `bound` seconds for an execution that was
-- never recorded (its process stopped between admission and the RUNNING row) are released;
-- settled reservations older than a day are forgotten. Returns the number released.
CREATE FUNCTION budget_release_orphans(bound float8) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r budget_reservations%ROWTYPE;
    n integer := 0;
BEGIN
    FOR r IN SELECT * FROM budget_reservations h
             WHERE NOT h.settled AND h.reserve_time < now() - make_interval(secs => bound)
               AND NOT EXISTS (SELECT 1 FROM executions e
                               WHERE e.id = h.execution_id AND e.create_time = h.execution_time)
             ORDER BY workspace, budget_id
    LOOP
        PERFORM 1 FROM budgets WHERE workspace = r.workspace AND budget_id = r.budget_id
        FOR UPDATE;
        UPDATE budget_reservations SET settled = true
        WHERE execution_id = r.execution_id AND workspace = r.workspace
          AND budget_id = r.budget_id AND NOT settled;
        IF FOUND THEN
            UPDATE budget_periods SET reserved_nanos = reserved_nanos - r.amount_nanos
            WHERE workspace = r.workspace AND budget_id = r.budget_id AND period = r.period
              AND period_start = r.period_start;
            n := n + 1;
        END IF;
    END LOOP;
    DELETE FROM budget_reservations WHERE settled AND reserve_time < now() - interval '1 day';
    RETURN n;
END $$;
