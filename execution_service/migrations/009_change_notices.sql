-- Every replica hears at once of the changes that make what it keeps in memory stale: a new
-- budget (a replica calls the provider of a workspace it knows to have no budget while that
-- execution's row is written, which a new budget must stop before the row's admission would
-- have to refuse after the call), and an agent updated or deleted (its cached copy).
-- The payload is JSON: ["budget", workspace] or ["agent", workspace, agent id].
CREATE FUNCTION notify_execution_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'budgets' THEN
        PERFORM pg_notify('execution_changes', json_build_array('budget', NEW.workspace)::text);
    ELSE
        PERFORM pg_notify('execution_changes',
                          json_build_array('agent', OLD.workspace, OLD.agent_id)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER budgets_notify_created AFTER INSERT ON budgets
    FOR EACH ROW EXECUTE FUNCTION notify_execution_change();
CREATE TRIGGER agents_notify_changed AFTER UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION notify_execution_change();
