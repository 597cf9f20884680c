-- Admission on fewer statements: it runs on every execution's way to its first token, and
-- each statement costs more than its work here.
-- 1. A budget's token buckets move to the row of its current period, which every admission
--    writes anyway (a new period's row goes on from the previous one's buckets).
-- 2. What an execution holds of its budgets rides on its own row (`budget_holds`, written by
--    the statement that admits it and records it RUNNING) instead of a row per budget in
--    budget_reservations: no reservation can exist without its execution, so there are no
--    orphans to sweep, and the finish's trigger settles from the row it already has.
-- 3. Settlements are folded in batches (`budget_fold`, by an admission that finds many
--    pending) instead of by every admission; admission adds the pending ones, as readers do.

ALTER TABLE budget_periods ADD COLUMN request_tokens float8,  -- NULL: full
                           ADD COLUMN token_tokens float8,    -- NULL: full; see budget_admit
                           ADD COLUMN bucket_time timestamptz;
INSERT INTO budget_periods AS p (workspace, budget_id, period, period_start, request_tokens,
                                 token_tokens, bucket_time)
SELECT b.workspace, b.budget_id, b.period, budget_period_start(b.period, now()),
       b.request_tokens, b.token_tokens, b.bucket_time
FROM budgets b WHERE b.bucket_time IS NOT NULL
ON CONFLICT (workspace, budget_id, period, period_start) DO UPDATE
SET request_tokens = EXCLUDED.request_tokens, token_tokens = EXCLUDED.token_tokens,
    bucket_time = EXCLUDED.bucket_time;
ALTER TABLE budgets DROP COLUMN request_tokens, DROP COLUMN token_tokens,
                    DROP COLUMN bucket_time;

-- One budget an execution holds a reservation of: the period it was admitted in, the tokens
-- it took from the tokens-per-minute bucket, and the budget's create_time (a budget deleted
-- and created again under the same id is another budget).
CREATE TYPE budget_hold AS (
    budget_id      text,
    period         text,
    period_start   timestamptz,
    tokens         bigint,
    budget_created timestamptz
);
ALTER TABLE executions ADD COLUMN reserved_nanos bigint,  -- the amount held of each budget
                       ADD COLUMN budget_holds budget_hold[];

-- Reservations held today move to their executions; one without an execution is released.
UPDATE executions e SET reserved_nanos = h.amount, budget_holds = h.holds
FROM (SELECT r.execution_id, r.execution_time, max(r.amount_nanos) AS amount,
             array_agg(ROW(r.budget_id, r.period, r.period_start, r.tokens,
                           b.create_time)::budget_hold) AS holds
      FROM budget_reservations r
      JOIN budgets b ON b.workspace = r.workspace AND b.budget_id = r.budget_id
      WHERE NOT r.settled GROUP BY r.execution_id, r.execution_time) h
WHERE e.id = h.execution_id AND e.create_time = h.execution_time AND e.state = 'RUNNING';
UPDATE budget_periods p SET reserved_nanos = p.reserved_nanos - r.amount
FROM (SELECT r.workspace, r.budget_id, r.period, r.period_start,
             sum(r.amount_nanos) AS amount
      FROM budget_reservations r
      WHERE NOT r.settled AND NOT EXISTS (
          SELECT 1 FROM executions e
          WHERE e.id = r.execution_id AND e.create_time = r.execution_time
            AND e.state = 'RUNNING')
      GROUP BY 1, 2, 3, 4) r
WHERE p.workspace = r.workspace AND p.budget_id = r.budget_id AND p.period = r.period
  AND p.period_start = r.period_start;
DROP FUNCTION budget_release_orphans(float8);
DROP TABLE budget_reservations;

-- Settlements pending for one budget, folded into budget_periods in one go: spent and
-- reserved per period, and the tokens given back to that period's tokens-per-minute bucket.
-- Takes the budget's lock (admission already holds it).
CREATE FUNCTION budget_fold(p_workspace text, p_budget text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM budgets WHERE workspace = p_workspace AND budget_id = p_budget FOR UPDATE;
    WITH folded AS (
        DELETE FROM budget_settlements s
        WHERE s.workspace = p_workspace AND s.budget_id = p_budget
        RETURNING s.period, s.period_start, s.reserved_delta, s.spent_delta, s.token_refund
    ), per_period AS (
        SELECT f.period, f.period_start, sum(f.reserved_delta) AS reserved,
               sum(f.spent_delta) AS spent, sum(f.token_refund) AS refund
        FROM folded f GROUP BY f.period, f.period_start
    )
    UPDATE budget_periods p
    SET reserved_nanos = p.reserved_nanos + pp.reserved,
        spent_nanos = p.spent_nanos + pp.spent,
        token_tokens = CASE WHEN p.token_tokens IS NULL THEN NULL
                            ELSE p.token_tokens + pp.refund END
    FROM per_period pp
    WHERE p.workspace = p_workspace AND p.budget_id = p_budget
      AND p.period = pp.period AND p.period_start = pp.period_start;
END $$;

DROP FUNCTION budget_admit(boolean, text, text, uuid, timestamptz, bigint, boolean, bigint);
-- See migration 007 for the semantics, unchanged. `holds`: what the execution now holds
-- (empty when refused or when no budget applies), for its row.
CREATE FUNCTION budget_admit(
    p_go boolean, p_workspace text, p_agent_id text, p_time timestamptz,
    p_amount bigint, p_unpriced boolean, p_tokens bigint,
    OUT ok boolean, OUT reason text, OUT budget text, OUT limit_nanos bigint,
    OUT spent_nanos bigint, OUT period_end timestamptz, OUT retry_after float8,
    OUT alerts text[], OUT enforced boolean, OUT holds budget_hold[])
LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
    v_now timestamptz := clock_timestamp();  -- buckets use the database's clock, shared by all
    v_start timestamptz;
    v_spent bigint;
    v_reserved bigint;
    v_req float8;          -- the request bucket's tokens now (NULL: no such limit)
    v_tok float8;          -- the token bucket's tokens now, pending refunds included
    v_refund bigint;       -- tokens given back by settlements not yet folded
    v_pending bigint;      -- settlements not yet folded
    v_stored boolean;      -- the period has a row
    v_bucket_req float8; v_bucket_tok float8; v_bucket_time timestamptz;
    v_elapsed float8;
    v_take bigint;
    v_wait float8;
    v_found text;
    v_rank int := 0;  -- precedence of the refusal found so far
    -- What the second pass writes, one entry per budget, in lock order.
    w_id text[] := '{}'; w_period text[] := '{}'; w_start timestamptz[] := '{}';
    w_req float8[] := '{}'; w_tok float8[] := '{}'; w_take bigint[] := '{}';
    w_stored boolean[] := '{}'; w_fold boolean[] := '{}'; w_created timestamptz[] := '{}';
    i int;
BEGIN
    ok := true; reason := ''; budget := ''; retry_after := 0; alerts := '{}'; enforced := false;
    holds := '{}';
    IF NOT p_go THEN
        RETURN;
    END IF;
    FOR b IN SELECT * FROM budgets
             WHERE workspace = p_workspace AND (agent_id IS NULL OR agent_id = p_agent_id)
             ORDER BY budget_id FOR UPDATE
    LOOP
        v_start := budget_period_start(b.period, p_time);
        -- Read under the lock (a new snapshot): the period's row plus what is pending.
        SELECT coalesce(p.spent_nanos, 0) + coalesce(s.spent, 0),
               coalesce(p.reserved_nanos, 0) + coalesce(s.reserved, 0),
               p.request_tokens, p.token_tokens, p.bucket_time, coalesce(s.refund, 0), s.n,
               p.period_start IS NOT NULL
        INTO v_spent, v_reserved, v_bucket_req, v_bucket_tok, v_bucket_time, v_refund,
             v_pending, v_stored
        FROM (SELECT sum(x.spent_delta) AS spent, sum(x.reserved_delta) AS reserved,
                     sum(x.token_refund) AS refund, count(*) AS n
              FROM budget_settlements x
              WHERE x.workspace = b.workspace AND x.budget_id = b.budget_id
                AND x.period = b.period AND x.period_start = v_start) s
        LEFT JOIN budget_periods p
          ON p.workspace = b.workspace AND p.budget_id = b.budget_id AND p.period = b.period
         AND p.period_start = v_start;
        IF NOT v_stored AND (b.requests_per_minute IS NOT NULL
                             OR b.tokens_per_minute IS NOT NULL) THEN
            -- A new period: its buckets go on from the previous period's.
            SELECT p.request_tokens, p.token_tokens, p.bucket_time
            INTO v_bucket_req, v_bucket_tok, v_bucket_time
            FROM budget_periods p
            WHERE p.workspace = b.workspace AND p.budget_id = b.budget_id
            ORDER BY p.period_start DESC LIMIT 1;
        END IF;
        v_elapsed := greatest(extract(epoch FROM v_now - coalesce(v_bucket_time, v_now)), 0);
        v_req := NULL; v_tok := NULL; v_take := 0; v_wait := 0; v_found := NULL;
        IF b.requests_per_minute IS NOT NULL THEN
            v_req := least(b.requests_per_minute, coalesce(v_bucket_req, b.requests_per_minute)
                           + v_elapsed * b.requests_per_minute / 60.0);
            IF v_req < 1 THEN
                v_wait := (1 - v_req) * 60.0 / b.requests_per_minute;
            END IF;
        END IF;
        IF b.tokens_per_minute IS NOT NULL THEN
            v_take := least(p_tokens, b.tokens_per_minute);
            v_tok := least(b.tokens_per_minute,
                           coalesce(v_bucket_tok, b.tokens_per_minute) + v_refund
                           + v_elapsed * b.tokens_per_minute / 60.0);
            IF v_tok < v_take THEN
                v_wait := greatest(v_wait, (v_take - v_tok) * 60.0 / b.tokens_per_minute);
            END IF;
        END IF;
        IF b.limit_nanos IS NOT NULL AND p_unpriced AND NOT b.allow_unpriced_models THEN
            v_found := 'PRICE_UNKNOWN';
        ELSIF b.limit_nanos IS NOT NULL AND v_spent + v_reserved + p_amount > b.limit_nanos THEN
            v_found := 'BUDGET_EXCEEDED';
        ELSIF v_wait > 0 THEN
            v_found := 'RATE_LIMITED';
        END IF;
        IF b.mode = 'ENFORCE' AND b.limit_nanos IS NOT NULL THEN
            enforced := true;
        END IF;
        -- The buckets after taking (stored without the pending refunds, which the fold adds).
        w_id := w_id || b.budget_id; w_period := w_period || b.period;
        w_start := w_start || v_start; w_take := w_take || v_take; w_stored := w_stored || v_stored;
        w_created := w_created || b.create_time;
        w_req := w_req || CASE WHEN v_req IS NULL THEN NULL ELSE greatest(v_req - 1, 0) END;
        w_tok := w_tok || CASE WHEN v_tok IS NULL THEN NULL
                               ELSE greatest(v_tok - v_take, 0) - v_refund END;
        w_fold := w_fold || (v_pending >= 32);
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
    FOR i IN 1 .. coalesce(array_length(w_id, 1), 0)
    LOOP
        IF w_stored[i] THEN
            UPDATE budget_periods p
            SET reserved_nanos = p.reserved_nanos + p_amount, request_tokens = w_req[i],
                token_tokens = w_tok[i], bucket_time = v_now
            WHERE p.workspace = p_workspace AND p.budget_id = w_id[i]
              AND p.period = w_period[i] AND p.period_start = w_start[i];
        ELSE
            INSERT INTO budget_periods (workspace, budget_id, period, period_start,
                                        reserved_nanos, request_tokens, token_tokens,
                                        bucket_time)
            VALUES (p_workspace, w_id[i], w_period[i], w_start[i], p_amount, w_req[i],
                    w_tok[i], v_now);
        END IF;
        holds := holds || ROW(w_id[i], w_period[i], w_start[i], w_take[i],
                              w_created[i])::budget_hold;
        IF w_fold[i] THEN
            PERFORM budget_fold(p_workspace, w_id[i]);
        END IF;
    END LOOP;
END $$;

-- Finish: when an execution first turns terminal, what it holds is released, its actual
-- cost spent in the period it was admitted in, and the tokens it took beyond its actual
-- usage given back; a later terminal record (a real one replacing the sweeper's INTERRUPTED)
-- only corrects the charge. Appended to budget_settlements (see there): a finish never waits
-- for a budget's lock.
CREATE OR REPLACE FUNCTION budget_settle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_cost bigint := coalesce(NEW.cost_nanos, 0);
    v_used bigint := NEW.input_tokens + NEW.output_tokens + NEW.cache_read_tokens
                     + NEW.cache_write_tokens;
    v_first boolean := true;  -- the first terminal record: the reservation is released
    v_charged bigint := 0;    -- what an earlier terminal record charged
BEGIN
    IF NEW.budget_holds IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF OLD.state <> 'RUNNING' THEN
            v_first := false;
            v_charged := coalesce(OLD.cost_nanos, 0);
        END IF;
    END IF;
    IF NOT v_first AND v_charged = v_cost THEN
        RETURN NULL;
    END IF;
    INSERT INTO budget_settlements (workspace, budget_id, period, period_start, reserved_delta,
                                    spent_delta, token_refund)
    SELECT NEW.workspace, h.budget_id, h.period, h.period_start,
           CASE WHEN v_first THEN -NEW.reserved_nanos ELSE 0 END, v_cost - v_charged,
           CASE WHEN v_first AND h.tokens > v_used THEN h.tokens - v_used ELSE 0 END
    FROM unnest(NEW.budget_holds) h
    JOIN budgets b ON b.workspace = NEW.workspace AND b.budget_id = h.budget_id
                  AND b.create_time = h.budget_created;
    RETURN NULL;
END $$;
