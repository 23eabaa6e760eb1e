//! The store interface: users and keys, models, files, jobs (which are also the queue), events,
//! checkpoints, per-step metrics and the throughput table. [`crate::db::SqliteStore`] implements
//! it on SQLite; a PostgreSQL implementation fills the same trait (every type here is plain Rust
//! or sqlx's backend-neutral derives; all SQL lives in the implementation).
//!
//! A job's status changes only through [`Store::apply`] with a
//! [`crate::lifecycle::JobTransition`], which only `lifecycle.rs` can build: each transition and
//! its events commit in one transaction, conditionally on the status (and claim) the lifecycle
//! expects. Every write returns its result: a commit that fails (a full disk) is an error, never
//! a silent `None`.
//!
//! Every user-facing read takes the user id, so no query can return another user's object.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lifecycle::JobTransition;
use crate::openai::types::{Estimate, JobError, RanOn};
use crate::spec::{Compute, JobSpec};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk holding the database is full: nothing of the write was kept.
    #[error("the disk holding the database is full: {0}")]
    Full(String),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("`{0}` already exists")]
    Conflict(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// SQLite's `SQLITE_FULL` (13) and PostgreSQL's `disk_full` (SQLSTATE 53100).
const FULL_CODES: [&str; 2] = ["13", "53100"];

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let full = match &e {
            sqlx::Error::Database(db) => db.code().is_some_and(|c| FULL_CODES.contains(&&*c)),
            sqlx::Error::Io(io) => crate::disk::is_disk_full(io),
            _ => false,
        };
        if full {
            StoreError::Full(e.to_string())
        } else {
            StoreError::Db(e)
        }
    }
}

impl StoreError {
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full(_))
    }

    /// The database could not be reached: the connection was refused or dropped, or the server
    /// is shutting down or starting (SQLSTATE class 08, 57P01-57P03). Worth trying again: it says
    /// nothing about the write itself.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
            StoreError::Db(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
            _ => false,
        }
    }
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// An API key as the store keeps it (never the key itself).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct ApiKeyInfo {
    pub user_id: String,
    /// The key's first characters (`sk-tuna-AbCd`), to tell keys apart.
    pub key_prefix: String,
    pub created_at: i64,
}

/// A base model the server can fine-tune and serve.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct ModelRow {
    pub name: String,
    /// The Hugging Face directory.
    pub path: String,
    /// `demo`, `config` (models file) or `cli` (`tuna models add`).
    pub source: String,
    pub created_at: i64,
    /// Where its files are in the blob store (a [`crate::blob::manifest::Manifest`] as JSON);
    /// `None` for a model only recorded by `path`.
    pub blob_files: Option<String>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FileRow {
    pub id: String,
    pub user_id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: i64,
    /// `uploaded`, `processed` or `error` (OpenAI's file statuses).
    pub status: String,
    pub status_details: Option<String>,
    /// The dataset check report (JSON), kept with the file.
    pub check_report: Option<String>,
    /// Where the blob store keeps the content.
    pub blob_key: String,
}

/// OpenAI's job statuses plus Tuna's `paused` (a CHECK constraint keeps the column to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum JobStatus {
    /// Only in databases written before job creation became one transaction; recovery moves
    /// such jobs on.
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Paused,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Paused => "paused",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Statuses from which a job can still run (and so still needs its files).
    pub const ACTIVE: [JobStatus; 4] = [
        JobStatus::ValidatingFiles,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Paused,
    ];
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pending request to a running job's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum JobControl {
    /// Stop after the current step with a resumable checkpoint, then `paused`.
    Pause,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub user_id: String,
    /// Base model name.
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: i64,
    pub status: JobStatus,
    pub control: Option<JobControl>,
    #[sqlx(json)]
    pub spec: JobSpec,
    /// The fine-tuned model's name (`ft:<base>:<user>:<suffix>:<job>`), set at creation;
    /// checkpoints append `:ckpt-step-N`.
    pub model_id: String,
    /// The estimate made at creation.
    #[sqlx(json(nullable))]
    pub estimate: Option<Estimate>,
    #[sqlx(json(nullable))]
    pub metadata: Option<Value>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Set on success; cleared when the model is deleted.
    pub fine_tuned_model: Option<String>,
    pub trained_tokens: Option<i64>,
    #[sqlx(json(nullable))]
    pub error: Option<JobError>,
    pub step: i64,
    pub total_steps: Option<i64>,
    pub epoch: f64,
    /// The newest `train` metrics row (the trainer's shape).
    #[sqlx(json(nullable))]
    pub latest_metrics: Option<Value>,
    /// How many times a dead worker was replaced.
    pub retries: i64,
    /// Claims so far: the fencing token of the current (or last) worker.
    pub attempt: i64,
    /// Order among queued jobs of the same user (and the tie-break between users).
    pub queue_order: i64,
    /// Unix time (fractional) the job was last claimed.
    pub claimed_at: Option<f64>,
    /// The slot the job runs on (`cpu:0`).
    pub device: Option<String>,
    /// Seconds spent running in earlier runs (before a pause, crash or restart).
    pub running_seconds: f64,
    /// Unix time (seconds, fractional) the current run started.
    pub run_started_at: Option<f64>,
    /// File ids of results (a metrics CSV).
    #[sqlx(json)]
    pub result_files: Vec<String>,
    /// Unix time (fractional) the current claim's lease ends unless a heartbeat extends it.
    pub lease_expires_at: Option<f64>,
    /// The worker holding (or that last held) the claim.
    pub worker: Option<String>,
    /// Planned peak memory of the run: only a worker with this much left claims the job.
    pub memory_bytes: Option<i64>,
    /// The kind of slot the job asks for (its spec's `tuna.compute`).
    pub compute: Compute,
    /// The device the latest run trained on, as its worker reported it.
    #[sqlx(json(nullable))]
    pub ran_on: Option<RanOn>,
}

/// A new job, as the API creates it (always `queued`).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub user_id: String,
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: i64,
    pub spec: JobSpec,
    pub model_id: String,
    pub estimate: Option<Estimate>,
    pub metadata: Option<Value>,
    pub created_at: i64,
    /// Planned peak memory (the estimate's footprint), for capacity-aware claims.
    pub memory_bytes: Option<i64>,
    /// The kind of slot that may claim it (`spec.tuna.compute`).
    pub compute: Compute,
}

/// Columns a transition may set besides the status. `None` leaves a column alone.
#[derive(Debug, Clone, Default)]
pub struct JobPatch {
    /// Set only if not set yet.
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<Option<JobError>>,
    pub fine_tuned_model: Option<Option<String>>,
    pub trained_tokens: Option<i64>,
    /// Adds one to `retries`.
    pub add_retry: bool,
    pub control: Option<Option<JobControl>>,
    /// Puts the job at the back of the queue.
    pub requeue: bool,
    pub device: Option<Option<String>>,
    /// Ends the current run's clock: `running_seconds += now - run_started_at`, then no run.
    pub close_run_at: Option<f64>,
    pub result_files: Option<Vec<String>>,
}

/// Progress the worker reports after each step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobProgress {
    pub step: i64,
    pub total_steps: i64,
    pub epoch: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum EventLevel {
    Info,
    Warn,
    Error,
}

/// OpenAI's event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum EventKind {
    Message,
    Metrics,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub id: String,
    pub job_id: String,
    pub created_at: i64,
    pub level: EventLevel,
    pub message: String,
    pub r#type: EventKind,
    #[sqlx(json(nullable))]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub job_id: String,
    pub user_id: String,
    pub level: EventLevel,
    pub message: String,
    pub kind: EventKind,
    pub data: Option<Value>,
}

impl NewEvent {
    pub fn info(job: &JobRow, message: impl Into<String>) -> Self {
        NewEvent {
            job_id: job.id.clone(),
            user_id: job.user_id.clone(),
            level: EventLevel::Info,
            message: message.into(),
            kind: EventKind::Message,
            data: None,
        }
    }

    pub fn level(mut self, level: EventLevel) -> Self {
        self.level = level;
        self
    }

    pub fn data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn metrics(mut self) -> Self {
        self.kind = EventKind::Metrics;
        self
    }
}

/// The kind of a metrics row: the trainer's line types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum MetricsKind {
    Train,
    Eval,
}

/// One line of the trainer's `metrics.jsonl` (`{"type": "train", "step": 3, "loss": ...}`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MetricsRow {
    pub kind: MetricsKind,
    pub step: i64,
    #[sqlx(json)]
    pub data: Value,
}

/// What a worker writes after a step or an evaluation, in one transaction, while its claim holds.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub job_id: String,
    /// The worker's claim: nothing is written once the job was claimed again or left `running`.
    pub attempt: i64,
    /// Progress and the latest `train` row, when this report is a step.
    pub progress: Option<JobProgress>,
    pub metrics: Vec<MetricsRow>,
    pub events: Vec<NewEvent>,
    /// The device the run trains on (sent once, when training starts).
    pub ran_on: Option<RanOn>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CheckpointRow {
    pub id: String,
    pub job_id: String,
    pub user_id: String,
    pub step: i64,
    pub created_at: i64,
    /// The model id to chat with (`ft:...:ckpt-step-N`).
    pub fine_tuned_model_checkpoint: String,
    /// OpenAI's checkpoint metrics (JSON).
    pub metrics: String,
    /// The sample generated at this checkpoint (JSON), when any.
    pub sample: Option<String>,
    /// Adapter directory (`lora`) or full model directory (`full`).
    pub path: String,
    pub kind: String,
    /// Size of the directory when it was recorded.
    pub bytes: i64,
    /// Where its files are in the blob store (a [`crate::blob::manifest::Manifest`] as JSON); `None`
    /// for checkpoints recorded before checkpoints went to the blob store (only `path` has them).
    pub blob_files: Option<String>,
}

/// One job in the queue snapshot used for positions and start estimates.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct QueueEntry {
    pub id: String,
    pub user_id: String,
    pub status: JobStatus,
    pub queue_order: i64,
    #[sqlx(json(nullable))]
    pub estimate: Option<Estimate>,
    pub step: i64,
    pub total_steps: Option<i64>,
    pub running_seconds: f64,
    pub run_started_at: Option<f64>,
    pub claimed_at: Option<f64>,
    pub compute: Compute,
}

/// What one user holds: files, checkpoints and jobs (per-user quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub files: i64,
    pub file_bytes: i64,
    pub checkpoint_bytes: i64,
    pub queued_jobs: i64,
    pub running_jobs: i64,
}

/// Measured (or seeded) training speed of one model shape with one method on one device kind.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct ThroughputRow {
    pub shape: String,
    pub device: String,
    pub method: String,
    pub tokens_per_second: f64,
    pub samples: i64,
    /// `seed` (from the parameter count) or `measured` (from finished jobs).
    pub source: String,
    pub updated_at: i64,
}

/// A page request: rows strictly after the object `after` in the listing's order.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: i64,
}

/// Builds the event recorded with a claim, from the claimed row.
pub type ClaimEvent = dyn Fn(&JobRow) -> NewEvent + Send + Sync;

/// Who claims, for what, and for how long.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The slot the job will run on (`cpu:0`); only jobs of its kind are taken.
    pub device: &'a str,
    /// The slot's kind.
    pub compute: Compute,
    /// The worker's name (`workers.name`).
    pub worker: &'a str,
    /// Memory the worker has left: jobs planned to need more are not taken (`None`: no limit).
    pub memory_bytes: Option<i64>,
    pub now: f64,
    /// The lease's end; heartbeats push it forward.
    pub lease_until: f64,
    pub max_running_per_user: Option<i64>,
}

/// What a heartbeat found: the claim still holds (with any pending request), or it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Held(Option<JobControl>),
    /// The job was claimed again (its lease had expired), or left `running` (cancelled).
    Lost,
}

/// A worker that joined: its capacity and when it was last heard of.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct WorkerRow {
    pub name: String,
    /// Its slots, comma-separated (`cpu:0,cpu:1`).
    pub devices: String,
    pub memory_bytes: Option<i64>,
    pub started_at: i64,
    pub last_heartbeat: f64,
    /// What its GPU slots are, by slot name.
    #[sqlx(json(nullable))]
    pub device_info: Option<BTreeMap<String, GpuSlot>>,
}

/// A GPU a worker offers as a slot (`gpu:N` as `tuna devices` numbers them on that machine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSlot {
    /// The adapter's name (`NVIDIA H200`).
    pub name: String,
    /// `cuda` or `vulkan`.
    pub backend: String,
    pub memory_bytes: Option<u64>,
    /// A Vulkan driver that runs on the CPU (Mesa's lavapipe): offered only when asked for.
    pub software: bool,
}

/// A worker with the jobs it runs now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub worker: WorkerRow,
    /// `(job id, user id)` of the jobs it holds a claim on.
    pub jobs: Vec<(String, String)>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Wake-ups the database pushes (PostgreSQL `NOTIFY`); one that never fires where it has
    /// none (SQLite). Subscribers still poll: see [`crate::signals`].
    fn signals(&self) -> crate::signals::Subscription;

    // Users and keys.
    async fn create_user(&self, user: &User, key_hash: &str, key_prefix: &str) -> StoreResult<()>;
    async fn add_api_key(&self, user_id: &str, key_hash: &str, key_prefix: &str)
    -> StoreResult<()>;
    async fn user_by_key_hash(&self, key_hash: &str) -> StoreResult<Option<User>>;
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyInfo>>;
    /// Deletes the user's keys (only those starting with `prefix`, when given); how many went.
    async fn revoke_api_keys(&self, user_id: &str, prefix: Option<&str>) -> StoreResult<u64>;
    async fn usage(&self, user_id: &str) -> StoreResult<Usage>;

    // Models.
    async fn upsert_model(&self, model: &ModelRow) -> StoreResult<()>;
    async fn list_models(&self) -> StoreResult<Vec<ModelRow>>;
    async fn get_model(&self, name: &str) -> StoreResult<Option<ModelRow>>;

    // Files.
    async fn insert_file(&self, file: &FileRow) -> StoreResult<()>;
    async fn get_file(&self, user_id: &str, id: &str) -> StoreResult<Option<FileRow>>;
    /// `Ok(None)` when `page.after` is not one of the user's files.
    async fn list_files(
        &self,
        user_id: &str,
        purpose: Option<&str>,
        ascending: bool,
        page: &Page,
    ) -> StoreResult<Option<(Vec<FileRow>, bool)>>;
    async fn delete_file(&self, user_id: &str, id: &str) -> StoreResult<Option<FileRow>>;
    /// The id of an unfinished job that reads the file.
    async fn active_job_using_file(
        &self,
        user_id: &str,
        file_id: &str,
    ) -> StoreResult<Option<String>>;

    // Jobs and the queue.
    /// Inserts a `queued` job at the back of the queue with its first events, in one transaction.
    async fn create_job(&self, job: &NewJob, events: &[NewEvent]) -> StoreResult<JobRow>;
    async fn get_job(&self, user_id: &str, id: &str) -> StoreResult<Option<JobRow>>;
    /// Any user's job: for the scheduler and workers only.
    async fn get_job_unscoped(&self, id: &str) -> StoreResult<Option<JobRow>>;
    /// Newest first. `Ok(None)` when `page.after` is not one of the user's jobs.
    async fn list_jobs(
        &self,
        user_id: &str,
        page: &Page,
    ) -> StoreResult<Option<(Vec<JobRow>, bool)>>;
    /// Applies a lifecycle transition and its events in one transaction: the new row, or
    /// `None` when the job was not in a status (or claim) the transition starts from.
    async fn apply(&self, transition: &JobTransition) -> StoreResult<Option<JobRow>>;
    /// Claims the next queued job that fits `claim.memory_bytes` in one statement (fair share:
    /// among users below `max_running_per_user`, the one with the fewest running jobs, then the
    /// one whose jobs started least recently, then queue order), recording `started(row)` in the
    /// same transaction. The claim bumps `attempt` (the fencing token) and takes a lease.
    async fn claim_next_queued(
        &self,
        claim: &ClaimRequest<'_>,
        started: &ClaimEvent,
    ) -> StoreResult<Option<JobRow>>;
    /// Extends the lease of claim `attempt` to `lease_until` while the job is running under it.
    async fn heartbeat(&self, job_id: &str, attempt: i64, lease_until: f64) -> StoreResult<Lease>;
    /// Running jobs whose lease ended before `now` (or that never had one).
    async fn expired_leases(&self, now: f64) -> StoreResult<Vec<JobRow>>;
    /// Records a worker (again) with its capacity.
    async fn upsert_worker(&self, worker: &WorkerRow) -> StoreResult<()>;
    /// Every worker that joined, with the jobs it runs now, by name.
    async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>>;
    /// Writes a worker's report while its claim holds; false when it no longer does.
    async fn report(&self, report: &StepReport) -> StoreResult<bool>;
    /// Queued and running jobs of all users, queue order first.
    async fn queue_snapshot(&self) -> StoreResult<Vec<QueueEntry>>;
    async fn jobs_with_status(&self, statuses: &[JobStatus]) -> StoreResult<Vec<JobRow>>;

    // Events.
    async fn add_event(&self, event: &NewEvent) -> StoreResult<EventRow>;
    /// Newest first. `Ok(None)` when `page.after` is not an event of this job.
    async fn list_events(
        &self,
        job_id: &str,
        page: &Page,
    ) -> StoreResult<Option<(Vec<EventRow>, bool)>>;
    /// Oldest first, `seq > after_seq`.
    async fn events_since(
        &self,
        job_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>>;

    // Checkpoints and metrics.
    /// Records a checkpoint (replacing one of the same step) with its event, while the claim holds.
    async fn insert_checkpoint(
        &self,
        ckpt: &CheckpointRow,
        attempt: i64,
        event: &NewEvent,
    ) -> StoreResult<bool>;
    /// Newest step first. `Ok(None)` when `page.after` is not a checkpoint of this job.
    async fn list_checkpoints(
        &self,
        job_id: &str,
        page: &Page,
    ) -> StoreResult<Option<(Vec<CheckpointRow>, bool)>>;
    /// Every checkpoint of a job, newest step first.
    async fn job_checkpoints(&self, job_id: &str) -> StoreResult<Vec<CheckpointRow>>;
    async fn checkpoint_by_model_id(
        &self,
        user_id: &str,
        model_id: &str,
    ) -> StoreResult<Option<CheckpointRow>>;
    async fn get_checkpoint(
        &self,
        user_id: &str,
        job_id: &str,
        id_or_step: &str,
    ) -> StoreResult<Option<CheckpointRow>>;
    async fn user_checkpoints(&self, user_id: &str) -> StoreResult<Vec<CheckpointRow>>;
    /// Deletes checkpoint rows by id, with an event, in one transaction; the rows deleted.
    async fn delete_checkpoints(
        &self,
        job_id: &str,
        ids: &[String],
        event: Option<&NewEvent>,
    ) -> StoreResult<Vec<CheckpointRow>>;
    /// Succeeded jobs of the user that produced a model, oldest first.
    async fn fine_tuned_jobs(&self, user_id: &str) -> StoreResult<Vec<JobRow>>;
    async fn job_by_fine_tuned_model(
        &self,
        user_id: &str,
        model_id: &str,
    ) -> StoreResult<Option<JobRow>>;
    /// The job's metrics rows (both kinds), oldest step first, steps strictly after
    /// `after_step`; and whether more follow.
    async fn list_metrics(
        &self,
        job_id: &str,
        after_step: i64,
        limit: i64,
    ) -> StoreResult<(Vec<MetricsRow>, bool)>;

    // Throughput table.
    async fn get_throughput(
        &self,
        shape: &str,
        device: &str,
        method: &str,
    ) -> StoreResult<Option<ThroughputRow>>;
    async fn put_throughput(&self, row: &ThroughputRow) -> StoreResult<()>;
    async fn list_throughput(&self) -> StoreResult<Vec<ThroughputRow>>;
}
