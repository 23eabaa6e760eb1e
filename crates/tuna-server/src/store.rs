//! The store interface: users and keys, models, files, jobs (which are also the queue), events,
//! checkpoints, per-step metrics and the throughput table. [`crate::db::SqliteStore`] implements
//! it on SQLite; a PostgreSQL implementation can fill the same trait later.
//!
//! Rows carry JSON columns as text (`hyperparameters`, `tuna`, `estimate`, ...): the store keeps
//! them opaque and the API layer (`jobs.rs`) gives them types.
//!
//! Every user-facing read takes the user id, so no query can return another user's object.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("`{0}` already exists")]
    Conflict(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
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

/// OpenAI's job statuses plus Tuna's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
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

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "validating_files" => JobStatus::ValidatingFiles,
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "paused" => JobStatus::Paused,
            _ => return None,
        })
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
    pub status: String,
    /// Resolved OpenAI hyperparameters (JSON).
    pub hyperparameters: String,
    /// Resolved Tuna parameters (JSON).
    pub tuna: String,
    /// The estimate made at creation (JSON).
    pub estimate: Option<String>,
    pub metadata: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub fine_tuned_model: Option<String>,
    pub trained_tokens: Option<i64>,
    /// `{code, message, param}` (JSON) once failed.
    pub error: Option<String>,
    pub step: i64,
    pub total_steps: Option<i64>,
    pub epoch: f64,
    /// The latest step's metrics (JSON).
    pub latest_metrics: Option<String>,
    /// How many times a dead worker was replaced.
    pub retries: i64,
    /// A pending request to the worker (`pause`).
    pub control: Option<String>,
    /// FIFO order among queued jobs.
    pub queue_order: i64,
    /// The slot the job runs on (`cpu:0`).
    pub device: Option<String>,
    /// Seconds spent running in earlier runs (before a pause, crash or restart).
    pub running_seconds: f64,
    /// Unix time (seconds, fractional) the current run started.
    pub run_started_at: Option<f64>,
    /// File ids of results (a metrics CSV), JSON array.
    pub result_files: String,
}

impl JobRow {
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }
}

/// A new job, as the API creates it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub user_id: String,
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: i64,
    pub status: JobStatus,
    pub hyperparameters: String,
    pub tuna: String,
    pub estimate: Option<String>,
    pub metadata: Option<String>,
    pub created_at: i64,
}

/// Columns a status transition may set besides the status. `None` leaves a column alone.
#[derive(Debug, Clone, Default)]
pub struct JobPatch {
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<Option<String>>,
    pub fine_tuned_model: Option<String>,
    pub trained_tokens: Option<i64>,
    pub retries: Option<i64>,
    pub control: Option<Option<String>>,
    /// Put the job at the back of the queue.
    pub requeue: bool,
    pub device: Option<Option<String>>,
    pub run_started_at: Option<Option<f64>>,
    /// Added to `running_seconds`.
    pub add_running_seconds: Option<f64>,
    pub result_files: Option<String>,
}

/// Progress the worker reports after each step.
#[derive(Debug, Clone, Default)]
pub struct JobProgress {
    pub step: i64,
    pub total_steps: i64,
    pub epoch: f64,
    pub latest_metrics: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub id: String,
    pub job_id: String,
    pub created_at: i64,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// `message` or `metrics`.
    pub r#type: String,
    pub data: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub job_id: &'a str,
    pub user_id: &'a str,
    pub level: &'a str,
    pub message: String,
    pub r#type: &'a str,
    pub data: Option<String>,
}

impl<'a> NewEvent<'a> {
    pub fn info(job: &'a JobRow, message: impl Into<String>) -> Self {
        NewEvent {
            job_id: &job.id,
            user_id: &job.user_id,
            level: "info",
            message: message.into(),
            r#type: "message",
            data: None,
        }
    }

    pub fn level(mut self, level: &'a str) -> Self {
        self.level = level;
        self
    }
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
}

/// One job in the queue snapshot used for positions and start estimates.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct QueueEntry {
    pub id: String,
    pub status: String,
    pub queue_order: i64,
    pub estimate: Option<String>,
    pub step: i64,
    pub total_steps: Option<i64>,
    pub running_seconds: f64,
    pub run_started_at: Option<f64>,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Users and keys.
    async fn create_user(&self, user: &User, key_hash: &str, key_prefix: &str) -> StoreResult<()>;
    async fn add_api_key(&self, user_id: &str, key_hash: &str, key_prefix: &str)
    -> StoreResult<()>;
    async fn user_by_key_hash(&self, key_hash: &str) -> StoreResult<Option<User>>;
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>>;

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
    async fn insert_job(&self, job: &NewJob) -> StoreResult<JobRow>;
    async fn get_job(&self, user_id: &str, id: &str) -> StoreResult<Option<JobRow>>;
    /// Any user's job: for the scheduler and workers only.
    async fn get_job_unscoped(&self, id: &str) -> StoreResult<Option<JobRow>>;
    /// Newest first. `Ok(None)` when `page.after` is not one of the user's jobs.
    async fn list_jobs(
        &self,
        user_id: &str,
        page: &Page,
    ) -> StoreResult<Option<(Vec<JobRow>, bool)>>;
    /// Moves the job to `to` if its status is one of `from`, applying `patch`; the new row, or `None`.
    async fn transition_job(
        &self,
        id: &str,
        from: &[JobStatus],
        to: JobStatus,
        patch: &JobPatch,
    ) -> StoreResult<Option<JobRow>>;
    /// Sets columns without a status change (only while the status is one of `when`).
    async fn patch_job(
        &self,
        id: &str,
        when: &[JobStatus],
        patch: &JobPatch,
    ) -> StoreResult<Option<JobRow>>;
    /// Claims the first queued job for `device` in one atomic update.
    async fn claim_next_queued(&self, device: &str, now: f64) -> StoreResult<Option<JobRow>>;
    async fn update_progress(&self, id: &str, progress: &JobProgress) -> StoreResult<()>;
    /// Queued and running jobs of all users, queue order first.
    async fn queue_snapshot(&self) -> StoreResult<Vec<QueueEntry>>;
    async fn jobs_with_status(&self, status: JobStatus) -> StoreResult<Vec<JobRow>>;

    // Events.
    async fn add_event(&self, event: &NewEvent<'_>) -> StoreResult<EventRow>;
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
    async fn insert_checkpoint(&self, ckpt: &CheckpointRow) -> StoreResult<()>;
    /// Newest step first. `Ok(None)` when `page.after` is not a checkpoint of this job.
    async fn list_checkpoints(
        &self,
        job_id: &str,
        page: &Page,
    ) -> StoreResult<Option<(Vec<CheckpointRow>, bool)>>;
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
    /// Succeeded jobs of the user that produced a model, oldest first.
    async fn fine_tuned_jobs(&self, user_id: &str) -> StoreResult<Vec<JobRow>>;
    async fn job_by_fine_tuned_model(
        &self,
        user_id: &str,
        model_id: &str,
    ) -> StoreResult<Option<JobRow>>;
    async fn upsert_metrics(&self, job_id: &str, step: i64, data: &str) -> StoreResult<()>;
    async fn list_metrics(&self, job_id: &str) -> StoreResult<Vec<String>>;

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
