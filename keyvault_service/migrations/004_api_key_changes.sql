-- Every committed change a reader of a key would see (created, replaced by another key or
-- base URL, deleted) is announced on the channel `api_key_changes`, so that every vault
-- replica hears every change, whichever replica made it, and tells its WatchApiKeyChanges
-- subscribers. Re-encryption under another master key version (rewrap) changes nothing a
-- reader sees and is not announced. PostgreSQL delivers a notification only once its
-- transaction has committed.
CREATE SEQUENCE api_key_change_seq;

CREATE FUNCTION announce_api_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed api_keys%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    -- Announcing changes hold this lock until they commit, so that their numbers increase in
    -- commit order, the order in which listeners hear them.
    PERFORM pg_advisory_xact_lock(hashtext('api_key_changes'));
    PERFORM pg_notify('api_key_changes', json_build_object(
        'sequence', nextval('api_key_change_seq'),
        'workspace', changed.workspace,
        'provider', changed.provider)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_announce_insert_delete AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION announce_api_key_change();

CREATE TRIGGER api_keys_announce_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.fingerprint, OLD.base_url, OLD.key_hint)
          IS DISTINCT FROM (NEW.fingerprint, NEW.base_url, NEW.key_hint))
    EXECUTE FUNCTION announce_api_key_change();

-- The execution processes subscribed to key changes, through any replica, and the last
-- change each has acknowledged applying: SetApiKey and DeleteApiKey answer once every live
-- subscriber has acknowledged theirs. Unlogged: it describes live connections only, and a
-- database crash, which empties it, ends those connections too.
CREATE UNLOGGED TABLE key_change_watchers (
    id               uuid        PRIMARY KEY,
    replica          uuid        NOT NULL,  -- the vault process serving its stream
    acked_sequence   bigint      NOT NULL,
    expires_at       timestamptz NOT NULL
);
