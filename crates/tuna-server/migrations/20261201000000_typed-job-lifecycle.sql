-- Issue 9: the job lifecycle typed in SQL.
--
-- * `jobs.status` and `jobs.control` may only hold the values of the Rust enums `JobStatus` and
--   `JobControl` (CHECK constraints); a pause request only exists on a running job.
-- * A job's settings are one JSON document, `spec` (the Rust `JobSpec`: OpenAI's `method` object
--   and Tuna's settings), instead of the `hyperparameters` / `tuna` pair; the fine-tuned model's
--   name gets its own column.
-- * `attempt` counts the claims of a job: the fencing token a worker carries, so that a worker of
--   an earlier claim can no longer change the job. `claimed_at` is when the job last started:
--   the scheduler gives the next slot to the user whose jobs started least recently (fair share).
-- * Metrics rows are the trainer's own lines (`metrics.jsonl`), one per step and kind.
-- * Checkpoints record their size on disk (quotas), events their level and type as enums.
--
-- SQLite cannot add a CHECK constraint to a table, so each table is rebuilt and its rows copied.

CREATE TABLE jobs_v2 (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    user_id           TEXT NOT NULL REFERENCES users(id),
    model             TEXT NOT NULL,
    training_file     TEXT NOT NULL,
    validation_file   TEXT,
    suffix            TEXT,
    seed              INTEGER NOT NULL,
    status            TEXT NOT NULL CHECK (status IN
                          ('validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'paused')),
    control           TEXT CHECK (control IN ('pause')),
    spec              TEXT NOT NULL CHECK (json_valid(spec)),
    model_id          TEXT NOT NULL,
    estimate          TEXT,
    metadata          TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    fine_tuned_model  TEXT,
    trained_tokens    INTEGER,
    error             TEXT,
    step              INTEGER NOT NULL DEFAULT 0,
    total_steps       INTEGER,
    epoch             REAL NOT NULL DEFAULT 0,
    latest_metrics    TEXT,
    retries           INTEGER NOT NULL DEFAULT 0 CHECK (retries >= 0),
    attempt           INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    queue_order       INTEGER NOT NULL,
    claimed_at        REAL,
    device            TEXT,
    running_seconds   REAL NOT NULL DEFAULT 0,
    run_started_at    REAL,
    result_files      TEXT NOT NULL DEFAULT '[]',
    CHECK (control IS NULL OR status = 'running')
);

INSERT INTO jobs_v2 (seq, id, user_id, model, training_file, validation_file, suffix, seed, status, control,
    spec, model_id, estimate, metadata, created_at, started_at, finished_at, fine_tuned_model, trained_tokens,
    error, step, total_steps, epoch, latest_metrics, retries, attempt, queue_order, claimed_at, device,
    running_seconds, run_started_at, result_files)
SELECT seq, id, user_id, model, training_file, validation_file, suffix, seed, status,
    CASE WHEN status = 'running' AND control = 'pause' THEN 'pause' END,
    json_object(
        'method', json_object('type', 'supervised',
                              'supervised', json_object('hyperparameters', json(hyperparameters))),
        'tuna', json_remove(json(tuna), '$.model_id')),
    COALESCE(json_extract(tuna, '$.model_id'), ''),
    estimate, metadata, created_at, started_at, finished_at, fine_tuned_model, trained_tokens,
    error, step, total_steps, epoch, NULL, retries, retries, queue_order, COALESCE(run_started_at, started_at), device,
    running_seconds, run_started_at, result_files
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_by_user ON jobs(user_id, seq);
CREATE INDEX jobs_by_status ON jobs(status, queue_order);
CREATE INDEX jobs_by_user_status ON jobs(user_id, status);
CREATE INDEX jobs_by_user_claim ON jobs(user_id, claimed_at);

CREATE TABLE job_events_v2 (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    job_id      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    level       TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message     TEXT NOT NULL,
    type        TEXT NOT NULL CHECK (type IN ('message', 'metrics')),
    data        TEXT CHECK (data IS NULL OR json_valid(data))
);
INSERT INTO job_events_v2 SELECT seq, id, job_id, user_id, created_at, level, message, type, data FROM job_events;
DROP TABLE job_events;
ALTER TABLE job_events_v2 RENAME TO job_events;
CREATE INDEX job_events_by_job ON job_events(job_id, seq);

CREATE TABLE checkpoints_v2 (
    seq                          INTEGER PRIMARY KEY AUTOINCREMENT,
    id                           TEXT NOT NULL UNIQUE,
    job_id                       TEXT NOT NULL,
    user_id                      TEXT NOT NULL,
    step                         INTEGER NOT NULL,
    created_at                   INTEGER NOT NULL,
    fine_tuned_model_checkpoint  TEXT NOT NULL UNIQUE,
    metrics                      TEXT NOT NULL CHECK (json_valid(metrics)),
    sample                       TEXT,
    path                         TEXT NOT NULL,
    kind                         TEXT NOT NULL CHECK (kind IN ('lora', 'full')),
    bytes                        INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    UNIQUE (job_id, step)
);
INSERT INTO checkpoints_v2 (seq, id, job_id, user_id, step, created_at, fine_tuned_model_checkpoint, metrics, sample, path, kind)
    SELECT seq, id, job_id, user_id, step, created_at, fine_tuned_model_checkpoint, metrics, sample, path, kind FROM checkpoints;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_v2 RENAME TO checkpoints;
CREATE INDEX checkpoints_by_user ON checkpoints(user_id);

-- The trainer's lines: `{"type": "train", "step", "loss", "lr", ...}` and `{"type": "eval", ...}`.
CREATE TABLE job_metrics_v2 (
    job_id  TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('train', 'eval')),
    step    INTEGER NOT NULL,
    data    TEXT NOT NULL CHECK (json_valid(data)),
    PRIMARY KEY (job_id, step, kind)
);
-- Rows of the old API shape become the trainer's shape.
INSERT INTO job_metrics_v2 (job_id, kind, step, data)
    SELECT job_id, 'train', step, json_object(
        'type', 'train', 'step', step,
        'total_steps', json_extract(data, '$.total_steps'), 'epoch', json_extract(data, '$.epoch'),
        'loss', json_extract(data, '$.train_loss'), 'token_accuracy', json_extract(data, '$.train_mean_token_accuracy'),
        'lr', json_extract(data, '$.learning_rate'), 'grad_norm', json_extract(data, '$.grad_norm'),
        'tokens_per_sec', json_extract(data, '$.tokens_per_second'), 'tokens', json_extract(data, '$.tokens'),
        'trained_tokens', json_extract(data, '$.trained_tokens'), 'elapsed_s', json_extract(data, '$.elapsed_seconds'),
        'eta_s', json_extract(data, '$.eta_seconds'))
    FROM job_metrics;
INSERT INTO job_metrics_v2 (job_id, kind, step, data)
    SELECT job_id, 'eval', step, json_object(
        'type', 'eval', 'step', step, 'epoch', json_extract(data, '$.epoch'),
        'loss', json_extract(data, '$.valid_loss'), 'token_accuracy', json_extract(data, '$.valid_mean_token_accuracy'))
    FROM job_metrics WHERE json_extract(data, '$.valid_loss') IS NOT NULL;
DROP TABLE job_metrics;
ALTER TABLE job_metrics_v2 RENAME TO job_metrics;

UPDATE jobs SET latest_metrics = (
    SELECT data FROM job_metrics WHERE job_metrics.job_id = jobs.id AND kind = 'train' ORDER BY step DESC LIMIT 1);
