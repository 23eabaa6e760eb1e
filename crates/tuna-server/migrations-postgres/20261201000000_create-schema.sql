-- Tuna's store on PostgreSQL: the schema SQLite reaches after its migrations
-- (../migrations/), in PostgreSQL's types. Every user-owned row carries user_id; every read
-- filters on it. JSON documents are JSONB; the job lifecycle's enums are CHECK constraints, as on
-- SQLite (the Rust enums `JobStatus`, `JobControl`, `EventLevel`, `EventKind`, `MetricsKind`).

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- Only a SHA-256 of each key is kept; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_prefix  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE models (
    name        TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE files (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL REFERENCES users(id),
    filename        TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    bytes           BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    status          TEXT NOT NULL,
    status_details  TEXT,
    check_report    TEXT,
    blob_key        TEXT NOT NULL
);
CREATE INDEX files_by_user ON files(user_id, seq);

-- The jobs table is also the queue: workers claim queued rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE jobs (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    user_id           TEXT NOT NULL REFERENCES users(id),
    model             TEXT NOT NULL,
    training_file     TEXT NOT NULL,
    validation_file   TEXT,
    suffix            TEXT,
    seed              BIGINT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN
                          ('validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'paused')),
    control           TEXT CHECK (control IN ('pause')),
    spec              JSONB NOT NULL,
    model_id          TEXT NOT NULL,
    estimate          JSONB,
    metadata          JSONB,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    fine_tuned_model  TEXT,
    trained_tokens    BIGINT,
    error             JSONB,
    step              BIGINT NOT NULL DEFAULT 0,
    total_steps       BIGINT,
    epoch             DOUBLE PRECISION NOT NULL DEFAULT 0,
    latest_metrics    JSONB,
    retries           BIGINT NOT NULL DEFAULT 0 CHECK (retries >= 0),
    attempt           BIGINT NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    queue_order       BIGINT NOT NULL,
    claimed_at        DOUBLE PRECISION,
    device            TEXT,
    running_seconds   DOUBLE PRECISION NOT NULL DEFAULT 0,
    run_started_at    DOUBLE PRECISION,
    result_files      JSONB NOT NULL DEFAULT '[]',
    CHECK (control IS NULL OR status = 'running')
);
CREATE INDEX jobs_by_user ON jobs(user_id, seq);
CREATE INDEX jobs_by_status ON jobs(status, queue_order);
CREATE INDEX jobs_by_user_status ON jobs(user_id, status);
CREATE INDEX jobs_by_user_claim ON jobs(user_id, claimed_at);

CREATE TABLE job_events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    job_id      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    level       TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message     TEXT NOT NULL,
    type        TEXT NOT NULL CHECK (type IN ('message', 'metrics')),
    data        JSONB
);
CREATE INDEX job_events_by_job ON job_events(job_id, seq);

CREATE TABLE checkpoints (
    seq                          BIGSERIAL PRIMARY KEY,
    id                           TEXT NOT NULL UNIQUE,
    job_id                       TEXT NOT NULL,
    user_id                      TEXT NOT NULL,
    step                         BIGINT NOT NULL,
    created_at                   BIGINT NOT NULL,
    fine_tuned_model_checkpoint  TEXT NOT NULL UNIQUE,
    metrics                      TEXT NOT NULL,
    sample                       TEXT,
    path                         TEXT NOT NULL,
    kind                         TEXT NOT NULL CHECK (kind IN ('lora', 'full')),
    bytes                        BIGINT NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    UNIQUE (job_id, step)
);
CREATE INDEX checkpoints_by_user ON checkpoints(user_id);

-- The trainer's lines: `{"type": "train", "step", "loss", "lr", ...}` and `{"type": "eval", ...}`.
CREATE TABLE job_metrics (
    job_id  TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('train', 'eval')),
    step    BIGINT NOT NULL,
    data    JSONB NOT NULL,
    PRIMARY KEY (job_id, step, kind)
);

-- Training speed per model shape, method and device kind: seeded from the parameter count,
-- then replaced by what finished jobs measured.
CREATE TABLE throughput (
    shape              TEXT NOT NULL,
    device             TEXT NOT NULL,
    method             TEXT NOT NULL,
    tokens_per_second  DOUBLE PRECISION NOT NULL,
    samples            BIGINT NOT NULL,
    source             TEXT NOT NULL,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (shape, device, method)
);
