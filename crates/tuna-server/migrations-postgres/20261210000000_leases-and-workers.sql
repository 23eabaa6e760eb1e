-- Issue 10: a queue that survives machines.
--
-- * A claim is a lease: `lease_expires_at` (Unix seconds, fractional) is pushed forward by the
--   worker's heartbeats; a job still `running` after it passed is put back in the queue by any
--   node's reaper. `attempt` stays the fencing token every write of the worker carries.
-- * `worker` names the worker that holds (or last held) the claim.
-- * `memory_bytes` is the job's planned peak memory: a worker only claims jobs that fit in what
--   it has left.
-- * `workers` lists the workers that joined, with their capacity and last heartbeat.

ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION;
ALTER TABLE jobs ADD COLUMN worker TEXT;
ALTER TABLE jobs ADD COLUMN memory_bytes BIGINT;

CREATE TABLE workers (
    name            TEXT PRIMARY KEY,
    devices         TEXT NOT NULL,
    memory_bytes    BIGINT,
    started_at      BIGINT NOT NULL,
    last_heartbeat  DOUBLE PRECISION NOT NULL
);

-- A claim finds each user's first waiting job with one index look-up.
CREATE INDEX jobs_by_user_queue ON jobs(user_id, status, queue_order);
