//! Limits on what one user may hold and what one job may ask of the machine.
//!
//! - Per-user quotas (server settings, off unless set): stored bytes (uploaded files and
//!   checkpoints), files, queued jobs, running jobs. A request past one is answered 429
//!   `insufficient_quota` with a message that names the limit and its value; the running-jobs
//!   quota is applied by the claim (the user's other jobs wait).
//! - Admission control: a job whose estimated memory does not fit the machine, or whose
//!   checkpoints do not fit the free disk of the data directory, is refused at creation (400
//!   `exceeds_machine`), instead of failing hours later.

use crate::disk::{free_bytes, human_bytes, total_memory_bytes};
use crate::error::{ApiError, ApiResult};
use crate::estimate::Footprint;
use crate::state::Settings;
use crate::store::{Store, User};

/// Per-user limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quotas {
    /// Bytes of uploaded files and checkpoints.
    pub stored_bytes: Option<u64>,
    pub files: Option<i64>,
    /// Jobs waiting in the queue.
    pub queued_jobs: Option<i64>,
    /// Jobs training at once (the claim skips a user at this limit).
    pub running_jobs: Option<i64>,
}

fn over(limit: &str, value: impl std::fmt::Display, what: String, hint: &str) -> ApiError {
    ApiError::QuotaExceeded(format!("quota `{limit}` ({value}) reached: {what}; {hint}"))
}

/// Before an upload of `incoming` bytes (0 before the size is known) is kept.
pub async fn check_upload(
    store: &dyn Store,
    quotas: &Quotas,
    user: &User,
    incoming: u64,
) -> ApiResult<()> {
    if quotas.files.is_none() && quotas.stored_bytes.is_none() {
        return Ok(());
    }
    let usage = store.usage(&user.id).await?;
    if let Some(max) = quotas.files
        && usage.files >= max
    {
        return Err(over(
            "files",
            max,
            format!("you have {} files", usage.files),
            "delete files you no longer need (`DELETE /v1/files/{id}`)",
        ));
    }
    if let Some(max) = quotas.stored_bytes {
        let stored = (usage.file_bytes + usage.checkpoint_bytes).max(0) as u64;
        if stored.saturating_add(incoming) > max {
            return Err(over(
                "stored_bytes",
                human_bytes(max),
                format!(
                    "you store {} and this upload adds {}",
                    human_bytes(stored),
                    human_bytes(incoming)
                ),
                "delete files or checkpoints you no longer need",
            ));
        }
    }
    Ok(())
}

/// Before a job that needs `disk_bytes` of checkpoints is queued.
pub async fn check_new_job(
    store: &dyn Store,
    quotas: &Quotas,
    user: &User,
    disk_bytes: u64,
) -> ApiResult<()> {
    if quotas.queued_jobs.is_none() && quotas.stored_bytes.is_none() {
        return Ok(());
    }
    let usage = store.usage(&user.id).await?;
    if let Some(max) = quotas.queued_jobs
        && usage.queued_jobs >= max
    {
        return Err(over(
            "queued_jobs",
            max,
            format!("you have {} jobs waiting", usage.queued_jobs),
            "wait until one starts, or cancel one",
        ));
    }
    if let Some(max) = quotas.stored_bytes {
        let stored = (usage.file_bytes + usage.checkpoint_bytes).max(0) as u64;
        if stored.saturating_add(disk_bytes) > max {
            return Err(over(
                "stored_bytes",
                human_bytes(max),
                format!(
                    "you store {} and this job's checkpoints need about {}",
                    human_bytes(stored),
                    human_bytes(disk_bytes)
                ),
                "delete old checkpoints (`DELETE /v1/fine_tuning/jobs/{id}/checkpoints`) or set `tuna.keep_checkpoints`",
            ));
        }
    }
    Ok(())
}

/// Admission control: whether the machine can train the job at all.
pub fn check_machine(settings: &Settings, f: &Footprint) -> ApiResult<()> {
    let memory = settings.memory_limit_bytes.or_else(total_memory_bytes);
    if let Some(mem) = memory
        && f.memory_bytes > mem
    {
        return Err(ApiError::invalid_coded(
            format!(
                "this job needs about {} of memory to train (weights, gradients and optimizer state of what trains, and the activations of a batch), but the machine has {}; use `tuna.method` `lora`, a shorter `tuna.max_seq_len` or a smaller `batch_size`",
                human_bytes(f.memory_bytes),
                human_bytes(mem)
            ),
            Some("tuna.method"),
            "exceeds_machine",
        ));
    }
    // A data directory that cannot be measured is not a reason to refuse.
    let Ok(free) = free_bytes(&settings.data_dir) else {
        return Ok(());
    };
    let usable = free.saturating_sub(settings.disk_reserve_bytes);
    if f.disk_bytes > usable {
        return Err(ApiError::invalid_coded(
            format!(
                "this job's checkpoints need about {} of disk ({} each, plus the optimizer state a resume needs), but the server's data disk has {} free{}; set `tuna.keep_checkpoints`, a larger `tuna.checkpoint_interval`, or use `tuna.method` `lora`",
                human_bytes(f.disk_bytes),
                human_bytes(f.checkpoint_bytes),
                human_bytes(usable),
                if settings.disk_reserve_bytes > 0 {
                    format!(
                        " beyond the {} it keeps in reserve",
                        human_bytes(settings.disk_reserve_bytes)
                    )
                } else {
                    String::new()
                }
            ),
            Some("tuna.keep_checkpoints"),
            "exceeds_machine",
        ));
    }
    Ok(())
}
