-- Every replica hears of a new budget at once. A replica calls the provider of a workspace
-- it knows to have no budget while that execution's row is written; a new budget must stop
-- that before the admission in the row's statement would have to refuse after the call.
CREATE FUNCTION budgets_notify_created() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('execution_budgets', NEW.workspace);
    RETURN NULL;
END $$;

CREATE TRIGGER budgets_notify_created AFTER INSERT ON budgets
    FOR EACH ROW EXECUTE FUNCTION budgets_notify_created();
