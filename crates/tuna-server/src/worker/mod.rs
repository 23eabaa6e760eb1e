//! The worker process: `tuna worker --data-dir D --job ID` trains one job. It runs apart from the
//! server so that a crash in training cannot take the server down; the server restarts it from
//! the last checkpoint (see `queue.rs`). `report.rs` writes what the run reports to the store.
//!
//! Training runs on its own thread; an observer forwards every step, evaluation and checkpoint
//! over a channel to the async side, which reports them. The run stops after the current step,
//! with a checkpoint, on a `pause` or `stop` line on stdin, on stdin closing (the server is gone),
//! on SIGINT or SIGTERM, and when the store cannot be written; the exit code says which.
//!
//! A full disk ends the job `failed` with `disk_full` (after removing the checkpoint it could not
//! finish, which frees the space to say so); if even that cannot be written, the exit code
//! ([`EXIT_DISK_FULL`]) tells the server to record it.
//!
//! A lock file in the job directory keeps two workers (say, an orphan of a crashed server and its
//! replacement) from training the same job at once: the second waits for the first to exit. The
//! claim (`attempt`) the worker was started for fences its writes: once the job was claimed again
//! or left `running`, nothing it reports lands, and the worker exits at once ([`EXIT_FENCED`])
//! without writing a checkpoint. Its heartbeats keep the claim's lease alive (from before the
//! lock wait on) and find out the same way when the claim is gone (cancelled on another node, or
//! taken over after this worker froze past its lease); they also carry a pause requested on
//! another node. A worker whose server went away records its own stop (the job is queued, no
//! retry used) after saving its checkpoint.

mod report;

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tokio::sync::mpsc;
use tuna_data::pack::LengthPolicy;
use tuna_model::LoraTarget;
use tuna_train::{
    BatchSize, CheckpointInfo, DpoSettings, EvalMetrics, LoraSettings, Method, Objective,
    StepMetrics, TrainConfig, TrainObserver, TrainSummary, Trainer,
};

use crate::artifacts;
use crate::blob::{BLOB_STORE_ENV, BlobStoreUrl};
use crate::db::{DATABASE_ENV, DatabaseUrl, open_store};
use crate::lifecycle::{self, StopReason};
use crate::openai::types::{JobError, RanOn};
use crate::queue::{
    EXIT_DISK_FULL, EXIT_FENCED, EXIT_ORPHANED, EXIT_PAUSED, EXIT_STOPPED, SUPERVISED_ENV,
};
use crate::spec::{JobSpec, MethodSpec, Tuning};
use crate::state::Settings;
use crate::store::{JobControl, JobStatus, Lease, Store, StoreError};
use report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("job `{0}` does not exist")]
    NoJob(String),
    #[error("the training thread panicked: {0}")]
    Panic(String),
    #[error("--database: {0}")]
    Database(String),
    #[error("--blob-store: {0}")]
    BlobStore(String),
}

/// Why the run was asked to stop (the first reason wins).
const STOP_NONE: u8 = 0;
const STOP_PAUSE: u8 = 1;
const STOP_ORPHANED: u8 = 2;
/// A `stop` line, SIGINT or SIGTERM.
const STOP_STOP: u8 = 3;
const STOP_DISK_FULL: u8 = 4;
const STOP_STORE_FAILED: u8 = 5;

fn request_stop(stop: &AtomicU8, why: u8) {
    let _ = stop.compare_exchange(STOP_NONE, why, Ordering::SeqCst, Ordering::SeqCst);
}

/// Set once training ended: the worker's last writes (the job's end) are guarded by its claim in
/// the store, and a lost claim no longer ends the process.
static FINISHING: AtomicBool = AtomicBool::new(false);

/// The claim is gone: another worker owns the job now (or nobody does: it was cancelled). Exit
/// at once, before the training thread can write another checkpoint into the job's directory.
pub(crate) fn claim_lost(job_id: &str, attempt: i64) {
    if FINISHING.load(Ordering::SeqCst) {
        return;
    }
    tracing::warn!(
        job = %job_id,
        attempt,
        "the job is no longer running under this worker's claim (cancelled, or taken over after the lease expired); exiting without writing anything more"
    );
    // Not eprintln!: it panics when stderr (the job's log) cannot be written, on a full disk.
    let _ = writeln!(
        std::io::stderr(),
        "job {job_id}: claim {attempt} is no longer valid; exiting (fenced)"
    );
    std::process::exit(EXIT_FENCED);
}

/// Heartbeats of claim `attempt` every third of the lease, and at once when the database says the
/// job's claim or control changed (PostgreSQL `NOTIFY`, see [`crate::signals`]): each pushes the
/// lease's end forward; a pending pause stops the run after its step; a lost claim (cancelled,
/// taken over) ends the process.
fn keep_lease(store: Arc<dyn Store>, job_id: String, attempt: i64, stop: Arc<AtomicU8>) {
    let lease = crate::queue::lease_duration();
    tokio::spawn(async move {
        let mut signals = store.signals();
        let mut tick = tokio::time::interval(lease / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                signal = signals.next() => {
                    if !signal.concerns(&job_id) {
                        continue;
                    }
                }
            }
            match check_claim(&*store, &job_id, attempt, lease).await {
                Ok(Lease::Held(Some(JobControl::Pause))) => request_stop(&stop, STOP_PAUSE),
                Ok(Lease::Held(None)) => {}
                Ok(Lease::Lost) => claim_lost(&job_id, attempt),
                Err(e) => {
                    tracing::warn!(job = %job_id, error = %e, "heartbeat failed; trying again")
                }
            }
        }
    });
}

/// One heartbeat: the lease runs `lease` from now while claim `attempt` holds.
async fn check_claim(
    store: &dyn Store,
    job_id: &str,
    attempt: i64,
    lease: std::time::Duration,
) -> Result<Lease, StoreError> {
    let until = crate::ids::now_f64() + lease.as_secs_f64();
    store.heartbeat(job_id, attempt, until).await
}

/// Runs the worker for `job_id` under claim `attempt` (the job's current claim when `None`) and
/// returns the process exit code (see `queue.rs`).
/// The database is `TUNA_DATABASE` when set (as `tuna serve` sets it), else the data
/// directory's SQLite file; the blob store likewise `TUNA_BLOB_STORE`, else the data directory's.
pub fn run(data_dir: &Path, job_id: &str, attempt: Option<i64>) -> Result<i32, WorkerError> {
    let database = match std::env::var(DATABASE_ENV) {
        Ok(url) => Some(DatabaseUrl::parse(&url).map_err(WorkerError::Database)?),
        Err(_) => None,
    };
    let blob_store = match std::env::var(BLOB_STORE_ENV) {
        Ok(url) => Some(BlobStoreUrl::parse(&url).map_err(WorkerError::BlobStore)?),
        Err(_) => None,
    };
    run_with_database(data_dir, database, blob_store, job_id, attempt)
}

/// [`run`] against `database` and `blob_store` (`None`: the data directory's SQLite file and
/// blob folder).
pub fn run_with_database(
    data_dir: &Path,
    database: Option<DatabaseUrl>,
    blob_store: Option<BlobStoreUrl>,
    job_id: &str,
    attempt: Option<i64>,
) -> Result<i32, WorkerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run_async(data_dir, database, blob_store, job_id, attempt))
}

/// The trainer's settings for one job's run. `init_adapter`: the LoRA adapter the job's `model`
/// (a LoRA fine-tuned model) ends with, which the run trains on from.
#[allow(clippy::too_many_arguments)]
pub fn train_config(
    spec: &JobSpec,
    seed: i64,
    model_dir: PathBuf,
    init_adapter: Option<PathBuf>,
    train_file: PathBuf,
    validation_file: Option<PathBuf>,
    out_dir: PathBuf,
) -> TrainConfig {
    let hp = *spec.hyperparameters();
    let t = &spec.tuna;
    let batch = hp.batch_size.max(1) as usize;
    // Examples packed into one forward pass: the largest divisor of the batch up to 4, the rest
    // accumulated, so that the optimizer sees exactly `batch_size` examples per step.
    let micro = (1..=batch.min(4))
        .rev()
        .find(|m| batch.is_multiple_of(*m))
        .unwrap_or(1);
    let lora = match &t.lora {
        Some(l) => LoraSettings {
            rank: l.rank as usize,
            alpha: l.alpha as f32,
            dropout: l.dropout as f32,
            target_modules: l
                .target_modules
                .iter()
                .filter_map(|t| LoraTarget::parse(t))
                .collect(),
            use_rslora: false,
        },
        None => LoraSettings::default(),
    };
    TrainConfig {
        model_dir,
        train_file,
        validation_file,
        validation_fraction: t.validation_fraction.map(|f| f as f32),
        out_dir,
        method: match t.method {
            Tuning::Full => Method::Full,
            Tuning::Lora => Method::Lora,
        },
        objective: match spec.method {
            MethodSpec::Supervised { .. } => Objective::Sft,
            MethodSpec::Dpo { .. } => Objective::Dpo,
        },
        dpo: DpoSettings {
            beta: spec
                .method
                .dpo_beta()
                .unwrap_or(crate::validate::settings::DEFAULT_BETA) as f32,
        },
        lora,
        init_adapter,
        epochs: hp.n_epochs.max(1) as usize,
        max_steps: t.max_steps.map(|s| s as usize),
        learning_rate: Some(t.learning_rate as f32),
        warmup_ratio: t.warmup_ratio as f32,
        batch_size: BatchSize::Examples(micro),
        gradient_accumulation_steps: batch / micro,
        max_seq_len: t.max_seq_len as usize,
        length_policy: LengthPolicy::Truncate,
        seed: seed as u64,
        eval_every: t.eval_interval.map(|s| s as usize),
        save_every: t.checkpoint_interval.map(|s| s as usize),
        // Retention is the reporter's: the store's rows and the directories go together.
        save_total_limit: None,
        sample_prompts: t.sample_prompts as usize,
        sample_max_tokens: t.sample_max_tokens as usize,
        precision: t.precision,
        // A first run finds no checkpoint and starts at step 0; a restarted one continues.
        resume: true,
        ..TrainConfig::default()
    }
}

/// What a slot's device was opened as (see [`DeviceOpener`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedDevice {
    /// `cpu`, `cuda` or `vulkan`.
    pub backend: String,
    /// The CPU model or the GPU adapter's name.
    pub name: String,
    /// A software GPU (a Vulkan driver on the CPU).
    pub software: bool,
}

/// Moves a trainer's passes to the device of a slot (`cpu:0`, `gpu:1`) and says what it opened.
/// The server does not link the GPU code (CubeCL): the `tuna` binary, which does, installs its
/// opener with [`set_device_opener`] before it runs a worker. Without one, CPU slots train on
/// the CPU engine and GPU slots fail the job with `device_unavailable`.
pub type DeviceOpener = fn(slot: &str, trainer: &mut Trainer) -> Result<OpenedDevice, String>;

static DEVICE_OPENER: std::sync::OnceLock<DeviceOpener> = std::sync::OnceLock::new();

/// Installs the opener workers of this process use (the first call wins).
pub fn set_device_opener(opener: DeviceOpener) {
    let _ = DEVICE_OPENER.set(opener);
}

fn open_slot(slot: &str, trainer: &mut Trainer) -> Result<OpenedDevice, String> {
    if let Some(open) = DEVICE_OPENER.get() {
        return open(slot, trainer);
    }
    match crate::spec::Compute::of_slot(slot) {
        Some(crate::spec::Compute::Cpu) => Ok(OpenedDevice {
            backend: "cpu".into(),
            name: "CPU".into(),
            software: false,
        }),
        _ => Err(format!(
            "slot `{slot}`: this worker has no GPU support (it runs without the `tuna` binary's device opener)"
        )),
    }
}

/// Why the training thread ended without a summary.
enum RunError {
    Train(tuna_train::Error),
    /// The slot's device could not be opened.
    Device(String),
}

impl From<tuna_train::Error> for RunError {
    fn from(e: tuna_train::Error) -> Self {
        RunError::Train(e)
    }
}

enum Msg {
    Ready {
        /// How the matrix products run (`bf16 (avx512-bf16)`, `f32`).
        precision: String,
        /// The device the passes run on.
        ran_on: RanOn,
        total_steps: usize,
        steps_done: usize,
        resumed: bool,
        train_examples: usize,
        validation_examples: usize,
    },
    Step(StepMetrics),
    Eval(EvalMetrics),
    Checkpoint(Box<CheckpointInfo>),
}

struct Forward {
    tx: mpsc::UnboundedSender<Msg>,
    stop: Arc<AtomicU8>,
}

impl TrainObserver for Forward {
    fn on_step(&mut self, m: &StepMetrics) -> ControlFlow<()> {
        let _ = self.tx.send(Msg::Step(m.clone()));
        if self.stop.load(Ordering::SeqCst) == STOP_NONE {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    fn on_eval(&mut self, m: &EvalMetrics) {
        let _ = self.tx.send(Msg::Eval(m.clone()));
    }

    fn on_checkpoint(&mut self, info: &CheckpointInfo) {
        let _ = self.tx.send(Msg::Checkpoint(Box::new(info.clone())));
    }
}

fn job_error(code: &str, message: String, param: Option<&str>) -> JobError {
    JobError {
        code: code.into(),
        message,
        param: param.map(str::to_string),
    }
}

async fn run_async(
    data_dir: &Path,
    database: Option<DatabaseUrl>,
    blob_store: Option<BlobStoreUrl>,
    job_id: &str,
    attempt: Option<i64>,
) -> Result<i32, WorkerError> {
    let mut settings = Settings::new(data_dir);
    settings.database = database;
    settings.blob_store = blob_store;
    let store = open_store(&settings.database_url()).await?;
    let dir = settings.job_dir(job_id);
    std::fs::create_dir_all(&dir)?;
    let stop = Arc::new(AtomicU8::new(STOP_NONE));

    let claimed = store
        .get_job_unscoped(job_id)
        .await?
        .ok_or_else(|| WorkerError::NoJob(job_id.into()))?;
    let attempt = attempt.unwrap_or(claimed.attempt);
    if claimed.status != JobStatus::Running || claimed.attempt != attempt {
        tracing::info!(job = %job_id, status = %claimed.status, "the job is not running under this claim; nothing to do");
        return Ok(0);
    }
    // From here on the lease is kept, also while an earlier worker of the job still holds the lock.
    keep_lease(store.clone(), job_id.to_string(), attempt, stop.clone());
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("worker.lock"))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| WorkerError::Panic(e.to_string()))??;
    let job = store
        .get_job_unscoped(job_id)
        .await?
        .ok_or_else(|| WorkerError::NoJob(job_id.into()))?;
    if job.status != JobStatus::Running || job.attempt != attempt {
        tracing::info!(job = %job_id, status = %job.status, "the job left this claim while waiting for the job's lock; nothing to do");
        return Ok(0);
    }
    let blobs = settings.open_blob_store()?;
    let cache_root = settings.cache_root();
    let mut reporter = Reporter::new(
        store.clone(),
        blobs.clone(),
        cache_root.clone(),
        job.clone(),
        attempt,
        dir.clone(),
    );
    let store_url = settings.blob_store_url().url();

    let Some(weights) = crate::models::resolve_weights(&*store, &job.user_id, &job.model).await?
    else {
        let err = job_error(
            "model_not_found",
            format!(
                "model `{}` (or the model it was fine-tuned from) no longer exists",
                job.model
            ),
            Some("model"),
        );
        return Ok(reporter.fail(err).await);
    };
    let weights = match weights
        .localize(&*blobs, &cache_root, &settings.demo_model_root, true)
        .await
    {
        Ok(w) => w,
        Err(e) => {
            let what = format!("the model `{}`", job.model);
            return Ok(fetch_failed(&reporter, &what, &store_url, e).await);
        }
    };
    let mut paths = Vec::new();
    for (param, id) in [
        ("training_file", Some(&job.training_file)),
        ("validation_file", job.validation_file.as_ref()),
    ] {
        let Some(id) = id else {
            paths.push(None);
            continue;
        };
        match store.get_file(&job.user_id, id).await? {
            Some(f) => match blobs.local_path(&f.blob_key).await {
                Ok(p) => paths.push(Some(p)),
                Err(e) => {
                    let what = format!("{param} `{id}` (key `{}`)", f.blob_key);
                    return Ok(fetch_failed(&reporter, &what, &store_url, e).await);
                }
            },
            None => {
                let err = job_error(
                    "file_not_found",
                    format!("file `{id}` was deleted"),
                    Some(param),
                );
                return Ok(reporter.fail(err).await);
            }
        }
    }
    let train_dir = artifacts::train_dir(&dir);
    let mut cfg = train_config(
        &job.spec,
        job.seed,
        weights.model_dir.clone(),
        weights.adapter_dir.clone(),
        paths[0].clone().unwrap_or_default(),
        paths[1].clone(),
        train_dir.clone(),
    );
    // Only recorded checkpoints count, wherever they were written.
    cfg.resume = false;
    cfg.resume_from = match reporter.prepare_resume().await {
        Ok(from) => from,
        Err(e) => {
            let what = "the job's last checkpoint".to_string();
            return Ok(fetch_failed(&reporter, &what, &store_url, e).await);
        }
    };

    if std::env::var_os(SUPERVISED_ENV).is_some() {
        let stop = stop.clone();
        std::thread::spawn(move || watch_stdin(&stop));
    }
    watch_signals(stop.clone());

    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = Forward {
        tx: tx.clone(),
        stop: stop.clone(),
    };
    // A job claimed before slots had kinds has no slot recorded: the CPU.
    let slot = job.device.clone().unwrap_or_else(|| "cpu:0".into());
    let worker_name = job.worker.clone().unwrap_or_default();
    let training = std::thread::Builder::new()
        .name(format!("train-{job_id}"))
        .spawn(move || -> Result<TrainSummary, RunError> {
            let mut trainer = Trainer::new(cfg)?;
            let opened = open_slot(&slot, &mut trainer).map_err(RunError::Device)?;
            let _ = tx.send(Msg::Ready {
                precision: trainer.precision_name(),
                ran_on: RanOn {
                    device: slot,
                    backend: opened.backend,
                    name: opened.name,
                    software: opened.software,
                    worker: worker_name,
                },
                total_steps: trainer.total_steps(),
                steps_done: trainer.steps_done(),
                resumed: trainer.resumed_from().is_some(),
                train_examples: trainer.data().stats.train_examples,
                validation_examples: trainer.data().stats.validation_examples,
            });
            let mut forward = forward;
            Ok(trainer.run(&mut forward)?)
        })?;

    while let Some(msg) = rx.recv().await {
        if let Err(e) = reporter.handle(msg).await {
            // A worker that froze past its lease finds its session ended by the database (see
            // `db::PG_IDLE_IN_TRANSACTION`) when it wakes: if its claim is gone, it must exit
            // fenced, not stop "cleanly" with a checkpoint of its own.
            let lease = crate::queue::lease_duration();
            if let Ok(Lease::Lost) = check_claim(&*store, job_id, attempt, lease).await {
                claim_lost(job_id, attempt);
            }
            tracing::error!(job = %job_id, error = %e, "reporting progress failed; stopping the run");
            request_stop(
                &stop,
                if e.is_full() {
                    STOP_DISK_FULL
                } else {
                    STOP_STORE_FAILED
                },
            );
        }
    }
    let outcome = tokio::task::spawn_blocking(move || training.join())
        .await
        .map_err(|e| WorkerError::Panic(e.to_string()))?
        .map_err(|p| {
            WorkerError::Panic(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
            )
        })?;
    FINISHING.store(true, Ordering::SeqCst);
    let outcome = match outcome {
        Ok(summary) => Ok(summary),
        Err(RunError::Train(e)) => Err(e),
        Err(RunError::Device(message)) => {
            let err = job_error("device_unavailable", message, Some("tuna.compute"));
            let code = reporter.fail(err).await;
            drop(lock);
            return Ok(code);
        }
    };
    let code = match (outcome, stop.load(Ordering::SeqCst)) {
        (_, STOP_DISK_FULL) => disk_full(&mut reporter, &train_dir, "reporting progress").await,
        (Err(e), _) if crate::disk::chain_is_disk_full(&e) => {
            disk_full(&mut reporter, &train_dir, &e.to_string()).await
        }
        (_, STOP_STORE_FAILED) => 1,
        (Ok(summary), why) if summary.stopped => match why {
            STOP_PAUSE => EXIT_PAUSED,
            STOP_ORPHANED => {
                // Nobody supervises this worker any more: it puts the job back itself.
                if let Some(now) = store.get_job_unscoped(job_id).await?
                    && now.attempt == attempt
                {
                    lifecycle::worker_stopped(&*store, &now, StopReason::Orphaned).await?;
                }
                EXIT_ORPHANED
            }
            _ => EXIT_STOPPED,
        },
        (Ok(summary), _) => match reporter
            .succeed(&*blobs, &weights.model_dir, &summary)
            .await
        {
            Ok(()) => 0,
            Err(e) if e.is_full() => {
                disk_full(&mut reporter, &train_dir, "recording the results").await
            }
            Err(e) => return Err(e.into()),
        },
        (Err(e), _) => {
            let (code, param) = match &e {
                tuna_train::Error::Dataset { .. } | tuna_train::Error::Data(_) => {
                    ("invalid_training_file", Some("training_file"))
                }
                tuna_train::Error::Config(_) => ("invalid_config", None),
                tuna_train::Error::NonFinite { .. } => ("training_diverged", None),
                _ => ("training_error", None),
            };
            reporter.fail(job_error(code, e.to_string(), param)).await
        }
    };
    drop(lock);
    Ok(code)
}

/// What the run needs could not be fetched from the blob store (or verified): say which, from
/// where and why in the job's events, then exit as a crash, so the job is retried (counting a
/// retry), on this node or another.
async fn fetch_failed(reporter: &Reporter, what: &str, store_url: &str, e: std::io::Error) -> i32 {
    let message = format!(
        "Cannot fetch {what} from the blob store {store_url}: {e}; the job will be retried"
    );
    tracing::error!(job = %reporter.job_id(), "{message}");
    let _ = writeln!(std::io::stderr(), "{message}");
    reporter.warn(message).await;
    1
}

/// The disk is full: free what the unfinished checkpoint took, then fail the job saying so.
async fn disk_full(reporter: &mut Reporter, train_dir: &Path, doing: &str) -> i32 {
    let dir = train_dir.to_path_buf();
    let freed = tokio::task::spawn_blocking(move || artifacts::remove_partial_checkpoints(&dir))
        .await
        .unwrap_or(0);
    tracing::error!(freed, "disk full while {doing}");
    let err = job_error(
        "disk_full",
        format!(
            "disk full: the server's data disk has no space left ({doing}); the job's checkpoints so far are kept. Free space (for example `DELETE /v1/fine_tuning/jobs/{{id}}/checkpoints` of old jobs) and create the job again"
        ),
        None,
    );
    match reporter.fail(err).await {
        0 => 0,
        _ => EXIT_DISK_FULL,
    }
}

/// Turns stdin into stop requests: a `pause` or `stop` line, or end-of-file (the server is gone).
fn watch_stdin(stop: &AtomicU8) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("pause") => request_stop(stop, STOP_PAUSE),
            Ok("stop") => request_stop(stop, STOP_STOP),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    request_stop(stop, STOP_ORPHANED);
}

/// SIGINT and SIGTERM stop the run after the current step, with a checkpoint (whoever sent them:
/// an operator, `systemctl stop`, a terminal), instead of losing the work since the last one.
fn watch_signals(stop: Arc<AtomicU8>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot watch SIGINT / SIGTERM");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        request_stop(&stop, STOP_STOP);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Hyperparameters, LoraSpec, SupervisedSpec, TunaSettings};

    fn spec(batch: i64) -> JobSpec {
        JobSpec {
            method: MethodSpec::Supervised {
                supervised: SupervisedSpec {
                    hyperparameters: Hyperparameters {
                        n_epochs: 2,
                        batch_size: batch,
                        learning_rate_multiplier: 1.0,
                    },
                },
            },
            tuna: TunaSettings {
                name: None,
                method: Tuning::Lora,
                lora: Some(LoraSpec {
                    rank: 4,
                    alpha: 8.0,
                    dropout: 0.0,
                    target_modules: vec!["q_proj".into(), "v_proj".into()],
                }),
                max_seq_len: 64,
                checkpoint_interval: Some(2),
                eval_interval: None,
                max_steps: Some(4),
                learning_rate: 1e-3,
                warmup_ratio: 0.0,
                validation_fraction: None,
                sample_prompts: 1,
                sample_max_tokens: 8,
                keep_checkpoints: None,
                precision: Default::default(),
                compute: Default::default(),
            },
        }
    }

    #[test]
    fn batch_size_splits_into_packed_examples_and_accumulation() {
        for (batch, micro, accum) in [(1, 1, 1), (4, 4, 1), (6, 3, 2), (8, 4, 2), (7, 1, 7)] {
            let c = train_config(
                &spec(batch),
                5,
                "m".into(),
                None,
                "t".into(),
                None,
                "o".into(),
            );
            assert_eq!(
                (c.batch_size, c.gradient_accumulation_steps),
                (BatchSize::Examples(micro), accum),
                "batch {batch}"
            );
        }
        let c = train_config(&spec(1), 5, "m".into(), None, "t".into(), None, "o".into());
        c.validate().unwrap();
        assert_eq!(
            (c.epochs, c.max_steps, c.save_every, c.seed, c.max_seq_len),
            (2, Some(4), Some(2), 5, 64)
        );
        assert_eq!(
            c.lora.target_modules,
            [LoraTarget::QProj, LoraTarget::VProj]
        );
        assert!(c.resume);
    }
}
