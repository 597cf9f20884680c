-- CancelExecution, through any replica: the replica that takes the request records who asked
-- and when (and notifies `execution_cancels`); the replica running the execution closes its
-- provider request and records it CANCELLED. The columns stay set on the terminal row, so
-- the record says who cancelled it.
ALTER TABLE executions ADD COLUMN cancel_requested_by text;
ALTER TABLE executions ADD COLUMN cancel_requested_at timestamptz;
