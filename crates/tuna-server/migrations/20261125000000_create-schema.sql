-- Tuna's store. Every user-owned row carries user_id; every read filters on it.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- Only a SHA-256 of each key is kept; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_prefix  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE models (
    name        TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE files (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL REFERENCES users(id),
    filename        TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    bytes           INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    status          TEXT NOT NULL,
    status_details  TEXT,
    check_report    TEXT,
    blob_key        TEXT NOT NULL
);
CREATE INDEX files_by_user ON files(user_id, seq);

-- The jobs table is also the queue: queued rows in queue_order are claimed with one UPDATE ... RETURNING.
CREATE TABLE jobs (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    user_id           TEXT NOT NULL REFERENCES users(id),
    model             TEXT NOT NULL,
    training_file     TEXT NOT NULL,
    validation_file   TEXT,
    suffix            TEXT,
    seed              INTEGER NOT NULL,
    status            TEXT NOT NULL,
    hyperparameters   TEXT NOT NULL,
    tuna              TEXT NOT NULL,
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
    retries           INTEGER NOT NULL DEFAULT 0,
    control           TEXT,
    queue_order       INTEGER NOT NULL DEFAULT 0,
    device            TEXT,
    running_seconds   REAL NOT NULL DEFAULT 0,
    run_started_at    REAL,
    result_files      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX jobs_by_user ON jobs(user_id, seq);
CREATE INDEX jobs_by_status ON jobs(status, queue_order);

CREATE TABLE job_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    job_id      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL,
    type        TEXT NOT NULL,
    data        TEXT
);
CREATE INDEX job_events_by_job ON job_events(job_id, seq);

CREATE TABLE checkpoints (
    seq                          INTEGER PRIMARY KEY AUTOINCREMENT,
    id                           TEXT NOT NULL UNIQUE,
    job_id                       TEXT NOT NULL,
    user_id                      TEXT NOT NULL,
    step                         INTEGER NOT NULL,
    created_at                   INTEGER NOT NULL,
    fine_tuned_model_checkpoint  TEXT NOT NULL UNIQUE,
    metrics                      TEXT NOT NULL,
    sample                       TEXT,
    path                         TEXT NOT NULL,
    kind                         TEXT NOT NULL,
    UNIQUE (job_id, step)
);
CREATE INDEX checkpoints_by_user ON checkpoints(user_id);

-- One row per optimizer step (for charts); a resumed run rewrites the steps it repeats.
CREATE TABLE job_metrics (
    job_id  TEXT NOT NULL,
    step    INTEGER NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
);

-- Training speed per model shape, method and device kind: seeded from the parameter count,
-- then replaced by what finished jobs measured.
CREATE TABLE throughput (
    shape              TEXT NOT NULL,
    device             TEXT NOT NULL,
    method             TEXT NOT NULL,
    tokens_per_second  REAL NOT NULL,
    samples            INTEGER NOT NULL,
    source             TEXT NOT NULL,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (shape, device, method)
);
