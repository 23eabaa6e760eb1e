//! The job lifecycle: the only code that changes a job's status. Every change is a
//! [`JobTransition`] (which only this module can build) that the store applies in one
//! transaction together with the events that say what happened, and only if the job is still in
//! a status the transition starts from (and, for a worker's run, still under that run's claim).
//!
//! ```text
//!  create ──► queued ──claim──► running ──► succeeded | failed
//!               ▲  │              │ │ │
//!               │  └─► paused ◄───┘ │ └─ crash or lease expired (retry) / stop (shutdown, signal,
//!               │                   │    server gone) / start failed ─► queued
//!               └──── resume ───────┘
//!  any unfinished ──cancel──► cancelled
//! ```
//!
//! A claim is a lease (see `queue.rs`): its worker's heartbeats extend it, and [`reap_expired`]
//! (run by every node's scheduler; the transition is guarded by the claim and by the expiry, so
//! several nodes reaping at once change a job once) puts a job whose lease ran out back in the
//! queue, counting a retry, or fails it past the retry limit.
//!
//! `validating_files` only exists in databases written before creation became one transaction;
//! [`recover`] moves such jobs to `queued`.

use crate::ids;
use crate::openai::types::{Estimate, JobError};
use crate::store::{
    ClaimRequest, EventLevel, JobControl, JobPatch, JobRow, JobStatus, NewEvent, NewJob, Store,
    StoreError, StoreResult,
};

/// A change of one job: status (or only columns, when `to` is `None`), guarded by the statuses it
/// starts from and optionally by the claim (`attempt`) it belongs to, with its events.
#[derive(Debug, Clone)]
pub struct JobTransition {
    pub job_id: String,
    pub from: Vec<JobStatus>,
    /// Applies only while the job's `attempt` is this one (the run of one worker).
    pub attempt: Option<i64>,
    /// Applies only while the job's lease ended before this time (the reaper).
    pub lease_expired_before: Option<f64>,
    pub to: Option<JobStatus>,
    pub patch: JobPatch,
    pub events: Vec<NewEvent>,
    /// Keeps every other module from building transitions.
    _sealed: Sealed,
}

#[derive(Debug, Clone)]
struct Sealed;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job `{id}` is {status}; it cannot be {action}")]
    WrongState {
        id: String,
        status: JobStatus,
        action: &'static str,
    },
}

fn wrong(job: &JobRow, action: &'static str) -> LifecycleError {
    LifecycleError::WrongState {
        id: job.id.clone(),
        status: job.status,
        action,
    }
}

fn transition(
    job: &JobRow,
    from: &[JobStatus],
    to: Option<JobStatus>,
    patch: JobPatch,
    events: Vec<NewEvent>,
) -> JobTransition {
    JobTransition {
        job_id: job.id.clone(),
        from: from.to_vec(),
        attempt: None,
        lease_expired_before: None,
        to,
        patch,
        events,
        _sealed: Sealed,
    }
}

/// Applies `t`; when it no longer applies, reads the job again so the caller can say why.
async fn apply_or_reread(
    store: &dyn Store,
    t: JobTransition,
    action: &'static str,
) -> Result<JobRow, LifecycleError> {
    if let Some(row) = store.apply(&t).await? {
        return Ok(row);
    }
    match store.get_job_unscoped(&t.job_id).await? {
        Some(now) => Err(wrong(&now, action)),
        None => Err(LifecycleError::Store(StoreError::Corrupt(format!(
            "job {} vanished",
            t.job_id
        )))),
    }
}

/// Creates a job, `queued` at the back of the queue, with the events of its validation and its
/// estimate: one transaction, so a client that goes away leaves either nothing or a queued job.
pub async fn create(store: &dyn Store, job: &NewJob) -> StoreResult<JobRow> {
    let event = |message: String| NewEvent {
        job_id: job.id.clone(),
        user_id: job.user_id.clone(),
        level: EventLevel::Info,
        message,
        kind: crate::store::EventKind::Message,
        data: None,
    };
    let mut files = format!("Validating training file: {}", job.training_file);
    if let Some(val) = &job.validation_file {
        files.push_str(&format!(" and validation file: {val}"));
    }
    let mut events = vec![event(files)];
    if let Some(e) = &job.estimate {
        let mut ev = event(estimate_message(e));
        ev.data = serde_json::to_value(e).ok();
        events.push(ev);
    }
    events.push(event("Files validated, moving job to queued state".into()));
    store.create_job(job, &events).await
}

fn estimate_message(e: &Estimate) -> String {
    let time = match (e.duration_seconds, e.tokens_per_second) {
        (Some(d), Some(tps)) => format!(
            "about {d:.0} s at {tps:.0} tokens/s ({}) on {}",
            e.throughput_source, e.device
        ),
        _ => format!("no duration: no speed measured on {} yet", e.device),
    };
    format!(
        "Estimate: {} examples, {} tokens per epoch × {} epochs = {} tokens in {} steps; {time}; cost {:.4} {}",
        e.examples,
        e.tokens_per_epoch,
        e.n_epochs,
        e.total_tokens,
        e.total_steps,
        e.cost,
        e.currency
    )
}

/// Claims the next queued job that fits (fair share, see [`Store::claim_next_queued`]).
pub async fn claim(store: &dyn Store, claim: &ClaimRequest<'_>) -> StoreResult<Option<JobRow>> {
    store
        .claim_next_queued(claim, &|job: &JobRow| {
            let retry = if job.retries > 0 {
                format!(" (retry {})", job.retries)
            } else {
                String::new()
            };
            NewEvent::info(
                job,
                format!(
                    "Fine-tuning job started on {} of worker {}{retry}",
                    job.device.as_deref().unwrap_or("cpu"),
                    job.worker.as_deref().unwrap_or("?")
                ),
            )
        })
        .await
}

/// The patch that ends a run: its clock closes, its lease ends and the slot is given back.
fn end_run() -> JobPatch {
    JobPatch {
        close_run_at: Some(ids::now_f64()),
        device: Some(None),
        control: Some(None),
        ..JobPatch::default()
    }
}

/// The worker of a claim could not be started (a missing executable, a full disk, too many
/// processes): the job goes back to its place in the queue, without using a retry.
pub async fn start_failed(
    store: &dyn Store,
    job: &JobRow,
    why: &str,
    retry_in_seconds: u64,
) -> StoreResult<Option<JobRow>> {
    let mut t = transition(
        job,
        &[JobStatus::Running],
        Some(JobStatus::Queued),
        end_run(),
        vec![
            NewEvent::info(
                job,
                format!(
                    "Could not start a worker process ({why}); the job stays queued and the server tries again in {retry_in_seconds} s"
                ),
            )
            .level(EventLevel::Warn),
        ],
    );
    t.attempt = Some(job.attempt);
    store.apply(&t).await
}

/// `POST .../pause`: a waiting job is paused at once; a running one gets a pause request that its
/// worker honours after the current step (the caller tells the worker when the answer has it).
pub async fn request_pause(store: &dyn Store, job: &JobRow) -> Result<JobRow, LifecycleError> {
    let mut job = job.clone();
    // A worker may claim the job between the caller's read and this write: the guarded
    // transition then changes nothing, and the request is decided again on the state it has now
    // (a queued job that started running gets a pause request instead of an error).
    for _ in 0..3 {
        let t = match job.status {
            JobStatus::Paused => return Ok(job),
            JobStatus::Queued | JobStatus::ValidatingFiles => transition(
                &job,
                &[JobStatus::Queued, JobStatus::ValidatingFiles],
                Some(JobStatus::Paused),
                JobPatch::default(),
                vec![NewEvent::info(&job, "Job paused")],
            ),
            JobStatus::Running => {
                let patch = JobPatch {
                    control: Some(Some(JobControl::Pause)),
                    ..JobPatch::default()
                };
                transition(
                    &job,
                    &[JobStatus::Running],
                    None,
                    patch,
                    vec![NewEvent::info(
                        &job,
                        "Pause requested; the job stops after its current step",
                    )],
                )
            }
            _ => return Err(wrong(&job, "paused")),
        };
        if let Some(row) = store.apply(&t).await? {
            return Ok(row);
        }
        job = store.get_job_unscoped(&t.job_id).await?.ok_or_else(|| {
            LifecycleError::Store(StoreError::Corrupt(format!("job {} vanished", t.job_id)))
        })?;
    }
    Err(wrong(&job, "paused"))
}

/// `POST .../resume`: a paused job goes to the back of the queue.
pub async fn resume(store: &dyn Store, job: &JobRow) -> Result<JobRow, LifecycleError> {
    if job.status != JobStatus::Paused {
        return Err(wrong(job, "resumed"));
    }
    let patch = JobPatch {
        requeue: true,
        ..JobPatch::default()
    };
    let t = transition(
        job,
        &[JobStatus::Paused],
        Some(JobStatus::Queued),
        patch,
        vec![NewEvent::info(job, "Job resumed")],
    );
    apply_or_reread(store, t, "resumed").await
}

/// `POST .../cancel`: any unfinished job ends `cancelled`. The answer is the stored row, so a
/// cancel that could not be written is an error, never a "cancelled" that did not happen.
pub async fn cancel(store: &dyn Store, job: &JobRow) -> Result<JobRow, LifecycleError> {
    if job.status.is_terminal() {
        return Err(wrong(job, "cancelled"));
    }
    let patch = JobPatch {
        finished_at: Some(ids::now()),
        ..end_run()
    };
    let t = transition(
        job,
        &JobStatus::ACTIVE,
        Some(JobStatus::Cancelled),
        patch,
        vec![NewEvent::info(job, "Fine-tuning job cancelled")],
    );
    apply_or_reread(store, t, "cancelled").await
}

/// The worker stopped after a pause request, with a resumable checkpoint.
pub async fn worker_paused(store: &dyn Store, job: &JobRow) -> StoreResult<Option<JobRow>> {
    let mut t = transition(
        job,
        &[JobStatus::Running],
        Some(JobStatus::Paused),
        end_run(),
        vec![NewEvent::info(
            job,
            format!("Job paused at step {}", job.step),
        )],
    );
    t.attempt = Some(job.attempt);
    store.apply(&t).await
}

/// Why a worker stopped with a checkpoint without being asked to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The server is shutting down (SIGINT, SIGTERM).
    Shutdown,
    /// The worker itself got SIGINT or SIGTERM.
    Signal,
    /// The server that started the worker went away (its stdin closed).
    Orphaned,
}

/// The worker stopped at a step with a checkpoint: the job keeps its place in the queue and
/// resumes from that checkpoint, without using a retry.
pub async fn worker_stopped(
    store: &dyn Store,
    job: &JobRow,
    reason: StopReason,
) -> StoreResult<Option<JobRow>> {
    let message = match reason {
        StopReason::Shutdown => format!(
            "The server is shutting down; the job stopped at step {} and stays queued",
            job.step
        ),
        StopReason::Signal => format!(
            "The worker was stopped by a signal at step {}; the job stays queued and resumes from its checkpoint",
            job.step
        ),
        StopReason::Orphaned => format!(
            "The server that ran the worker went away; the job stopped at step {} and is queued to resume from its last checkpoint",
            job.step
        ),
    };
    let mut t = transition(
        job,
        &[JobStatus::Running],
        Some(JobStatus::Queued),
        end_run(),
        vec![NewEvent::info(job, message)],
    );
    t.attempt = Some(job.attempt);
    store.apply(&t).await
}

/// The worker died (crash, out of memory, killed): resume from the last checkpoint while retries
/// are left, then fail with the end of its output.
pub async fn worker_crashed(
    store: &dyn Store,
    job: &JobRow,
    described: &str,
    log_tail: &str,
    max_retries: i64,
) -> StoreResult<Option<JobRow>> {
    if job.retries < max_retries {
        let patch = JobPatch {
            add_retry: true,
            ..end_run()
        };
        let message = format!(
            "The worker exited unexpectedly ({described}); the job resumes from its last checkpoint (retry {} of {max_retries})",
            job.retries + 1
        );
        let mut t = transition(
            job,
            &[JobStatus::Running],
            Some(JobStatus::Queued),
            patch,
            vec![NewEvent::info(job, message).level(EventLevel::Warn)],
        );
        t.attempt = Some(job.attempt);
        return store.apply(&t).await;
    }
    let message = format!(
        "the worker exited unexpectedly ({described}) {} times; last output: {}",
        job.retries + 1,
        if log_tail.is_empty() {
            "(none)"
        } else {
            log_tail
        }
    );
    fail(
        store,
        job,
        Some(job.attempt),
        JobError {
            code: "worker_crashed".into(),
            message,
            param: None,
        },
    )
    .await
}

/// A running job fails (training error, disk full, crashes past the retry limit).
pub async fn fail(
    store: &dyn Store,
    job: &JobRow,
    attempt: Option<i64>,
    err: JobError,
) -> StoreResult<Option<JobRow>> {
    let event = NewEvent::info(job, format!("Fine-tuning job failed: {}", err.message))
        .level(EventLevel::Error);
    let patch = JobPatch {
        finished_at: Some(ids::now()),
        error: Some(Some(err)),
        ..end_run()
    };
    let mut t = transition(
        job,
        &[JobStatus::Running],
        Some(JobStatus::Failed),
        patch,
        vec![event],
    );
    t.attempt = attempt;
    store.apply(&t).await
}

/// The run finished: the job succeeds with its model and results file.
pub async fn succeed(
    store: &dyn Store,
    job: &JobRow,
    attempt: i64,
    trained_tokens: i64,
    result_files: Vec<String>,
) -> StoreResult<Option<JobRow>> {
    let patch = JobPatch {
        finished_at: Some(ids::now()),
        fine_tuned_model: Some(Some(job.model_id.clone())),
        trained_tokens: Some(trained_tokens),
        result_files: Some(result_files),
        ..end_run()
    };
    let mut t = transition(
        job,
        &[JobStatus::Running],
        Some(JobStatus::Succeeded),
        patch,
        vec![
            NewEvent::info(
                job,
                format!("New fine-tuned model created: {}", job.model_id),
            ),
            NewEvent::info(job, "The job has successfully completed"),
        ],
    );
    t.attempt = Some(attempt);
    store.apply(&t).await
}

/// `DELETE /v1/models/{fine-tuned model}`: the job keeps its record, its model is gone.
pub async fn model_deleted(store: &dyn Store, job: &JobRow) -> Result<JobRow, LifecycleError> {
    let patch = JobPatch {
        fine_tuned_model: Some(None),
        ..JobPatch::default()
    };
    let t = transition(
        job,
        &[JobStatus::Succeeded],
        None,
        patch,
        vec![NewEvent::info(
            job,
            format!("Fine-tuned model {} deleted", job.model_id),
        )],
    );
    apply_or_reread(store, t, "changed").await
}

/// Puts every running job whose lease ended before `now` back in the queue to resume from its
/// last checkpoint (a retry), or to `paused` when a pause was pending; past `max_retries` the job
/// fails with `lease_expired`. Returns the jobs changed. Safe on several nodes at once: each
/// transition holds only for the claim and the expiry it read.
pub async fn reap_expired(
    store: &dyn Store,
    now: f64,
    max_retries: i64,
) -> StoreResult<Vec<JobRow>> {
    let mut changed = Vec::new();
    for job in store.expired_leases(now).await? {
        let worker = job.worker.as_deref().unwrap_or("(unknown)");
        let since = job
            .lease_expires_at
            .map(|t| format!("{:.0} s ago", (now - t).max(0.0)))
            .unwrap_or_else(|| "before this version".into());
        let mut t = if job.control == Some(JobControl::Pause) {
            transition(
                &job,
                &[JobStatus::Running],
                Some(JobStatus::Paused),
                end_run(),
                vec![NewEvent::info(
                    &job,
                    format!(
                        "Worker {worker} stopped answering (its lease expired {since}); the job is paused at its last checkpoint"
                    ),
                )],
            )
        } else if job.retries < max_retries {
            let patch = JobPatch {
                add_retry: true,
                ..end_run()
            };
            transition(
                &job,
                &[JobStatus::Running],
                Some(JobStatus::Queued),
                patch,
                vec![NewEvent::info(
                    &job,
                    format!(
                        "Worker {worker} stopped answering (its lease expired {since}); the job resumes from its last checkpoint on another worker (retry {} of {max_retries})",
                        job.retries + 1
                    ),
                )
                .level(EventLevel::Warn)],
            )
        } else {
            let err = JobError {
                code: "lease_expired".into(),
                message: format!(
                    "worker {worker} stopped answering (its lease expired {since}) and the job had used its {max_retries} retries"
                ),
                param: None,
            };
            let event = NewEvent::info(&job, format!("Fine-tuning job failed: {}", err.message))
                .level(EventLevel::Error);
            let patch = JobPatch {
                finished_at: Some(ids::now()),
                error: Some(Some(err)),
                ..end_run()
            };
            transition(
                &job,
                &[JobStatus::Running],
                Some(JobStatus::Failed),
                patch,
                vec![event],
            )
        };
        t.attempt = Some(job.attempt);
        t.lease_expired_before = Some(now);
        if let Some(row) = store.apply(&t).await? {
            changed.push(row);
        }
    }
    Ok(changed)
}

/// At start-up: `validating_files` jobs (left by a client that went away, before creation was
/// one transaction) had been planned in full and join the queue. Running jobs are not this
/// node's to judge (another node's workers may run them): their leases decide ([`reap_expired`]).
pub async fn recover(store: &dyn Store) -> StoreResult<()> {
    for job in store
        .jobs_with_status(&[JobStatus::ValidatingFiles])
        .await?
    {
        let t = transition(
            &job,
            &[job.status],
            Some(JobStatus::Queued),
            end_run(),
            vec![NewEvent::info(
                &job,
                "The server restarted; the job's files had been validated, moving job to queued state",
            )],
        );
        store.apply(&t).await?;
    }
    Ok(())
}

impl From<LifecycleError> for crate::error::ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Store(s) => s.into(),
            wrong @ LifecycleError::WrongState { .. } => {
                crate::error::ApiError::invalid_coded(wrong.to_string(), None, "invalid_job_state")
            }
        }
    }
}
