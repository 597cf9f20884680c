-- A request id answers only the request it was first used for: the SHA-256 (hex) of that
-- request's canonical form (without its request id), to refuse the id for another request.
-- Rows recorded before this column existed have NULL, which matches any request.
ALTER TABLE executions ADD COLUMN request_hash text;
