-- When a rewrap last re-encrypted a key under another master key version (NULL: never).
-- A rewrap changes nothing a reader sees, so it leaves update_time, the time the key was
-- last set, alone.
ALTER TABLE api_keys ADD COLUMN rewrap_time timestamptz;
