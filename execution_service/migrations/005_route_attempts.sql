-- Fallback routes: which of the plan's routes produced the answer (0 = the first), and every
-- attempt made on the way as a JSON list of {route, provider, model, http_status, reason,
-- start_time, latency_ms, input_tokens, output_tokens, cost_nanos}. NULL on rows recorded
-- before routes could fall back.
ALTER TABLE executions
    ADD COLUMN route_index    integer NOT NULL DEFAULT 0,
    ADD COLUMN route_attempts jsonb;

-- When an agent moves on to its next route: the FallbackTrigger names (RATE_LIMITED, ...);
-- NULL uses the defaults, an empty array never falls back.
ALTER TABLE agents ADD COLUMN fallback_triggers text[];
