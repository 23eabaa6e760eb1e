-- Issue 10: PostgreSQL pushes what idle nodes and running workers poll for (LISTEN/NOTIFY; see
-- src/signals.rs). A trigger, so that every path that changes a job (the API, the CLI, a reaper,
-- a worker) notifies, in the same transaction: a notification is delivered on commit only.
--
-- * `tuna_queued`: a job became claimable (queued), or a running job ended (its user's running
--   quota and a node's slot may allow another claim). No payload: nodes just look at the queue.
-- * `tuna_job` (payload: the job id): a running job's claim changed (cancelled, paused, taken
--   over, requeued) or a pause was asked for: its worker checks its claim at once.

CREATE FUNCTION tuna_notify_job() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status <> 'queued') THEN
        PERFORM pg_notify('tuna_queued', '');
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = 'running' THEN
        IF NEW.status <> 'running' THEN
            PERFORM pg_notify('tuna_queued', '');
        END IF;
        IF NEW.status <> 'running' OR NEW.attempt <> OLD.attempt
           OR NEW.control IS DISTINCT FROM OLD.control THEN
            PERFORM pg_notify('tuna_job', NEW.id);
        END IF;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF status, control, attempt ON jobs
    FOR EACH ROW EXECUTE FUNCTION tuna_notify_job();
