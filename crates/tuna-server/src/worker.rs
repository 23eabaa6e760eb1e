//! The worker process: `tuna worker --data-dir D --job ID` trains one job and reports through the
//! store (progress, per-step metrics, events, checkpoints with their samples) and the run's
//! `metrics.jsonl`. It runs apart from the server so that a crash in training cannot take the
//! server down; the server restarts it from the last checkpoint (see `queue.rs`).
//!
//! Training runs on its own thread; an observer forwards every step, evaluation and checkpoint
//! over a channel to the async side, which writes them to the store. A `pause` line on stdin (or
//! stdin closing, when supervised) makes the observer stop the run after the current step; the
//! trainer then writes a resumable checkpoint.
//!
//! A lock file in the job directory keeps two workers (say, an orphan of a crashed server and its
//! replacement) from training the same job at once: the second waits for the first to exit.

use std::io::BufRead;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::mpsc;
use tuna_data::pack::LengthPolicy;
use tuna_model::{LoraTarget, QwenConfig};
use tuna_train::{
    BatchSize, CheckpointInfo, EvalMetrics, LoraSettings, Method, StepMetrics, TrainConfig,
    TrainObserver, TrainSummary, Trainer,
};

use crate::blob::{BlobStore, LocalBlobStore};
use crate::db::SqliteStore;
use crate::estimate;
use crate::ids;
use crate::models::model_shape;
use crate::openai::types::{CheckpointMetrics, Hyperparameters, JobError};
use crate::queue::{EXIT_ORPHANED, EXIT_PAUSED, SUPERVISED_ENV};
use crate::state::Settings;
use crate::store::{
    CheckpointRow, FileRow, JobPatch, JobProgress, JobRow, JobStatus, NewEvent, Store,
};
use crate::validate::JobSpec;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("job `{0}` does not exist")]
    NoJob(String),
    #[error("job `{id}` has a corrupt `{column}` column: {reason}")]
    Corrupt {
        id: String,
        column: &'static str,
        reason: String,
    },
    #[error("the training thread panicked: {0}")]
    Panic(String),
}

const STOP_NONE: u8 = 0;
const STOP_PAUSE: u8 = 1;
const STOP_ORPHANED: u8 = 2;

/// Runs the worker for `job_id` and returns the process exit code (see `queue.rs`).
pub fn run(data_dir: &Path, job_id: &str) -> Result<i32, WorkerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run_async(data_dir, job_id))
}

/// The settings for one job's run, from what the job recorded.
pub fn train_config(
    spec: &JobSpec,
    hp: &Hyperparameters,
    seed: i64,
    model_dir: PathBuf,
    train_file: PathBuf,
    validation_file: Option<PathBuf>,
    out_dir: PathBuf,
) -> TrainConfig {
    let batch = hp.batch_size.max(1) as usize;
    // Examples packed into one forward pass: the largest divisor of the batch up to 4, the rest
    // accumulated, so that the optimizer sees exactly `batch_size` examples per step.
    let micro = (1..=batch.min(4))
        .rev()
        .find(|m| batch.is_multiple_of(*m))
        .unwrap_or(1);
    let lora = match &spec.lora {
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
        validation_fraction: spec.validation_fraction.map(|f| f as f32),
        out_dir,
        method: if spec.method == "full" {
            Method::Full
        } else {
            Method::Lora
        },
        lora,
        epochs: hp.n_epochs.max(1) as usize,
        max_steps: spec.max_steps.map(|s| s as usize),
        learning_rate: Some(spec.learning_rate as f32),
        warmup_ratio: spec.warmup_ratio as f32,
        batch_size: BatchSize::Examples(micro),
        gradient_accumulation_steps: batch / micro,
        max_seq_len: spec.max_seq_len as usize,
        length_policy: LengthPolicy::Truncate,
        seed: seed as u64,
        eval_every: spec.eval_interval.map(|s| s as usize),
        save_every: spec.checkpoint_interval.map(|s| s as usize),
        // Every checkpoint is a model the API serves: keep them all.
        save_total_limit: None,
        sample_prompts: spec.sample_prompts as usize,
        sample_max_tokens: spec.sample_max_tokens as usize,
        // A first run finds no checkpoint and starts at step 0; a restarted one continues.
        resume: true,
        ..TrainConfig::default()
    }
}

enum Msg {
    Ready {
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

fn corrupt(job: &JobRow, column: &'static str, e: serde_json::Error) -> WorkerError {
    WorkerError::Corrupt {
        id: job.id.clone(),
        column,
        reason: e.to_string(),
    }
}

async fn run_async(data_dir: &Path, job_id: &str) -> Result<i32, WorkerError> {
    let settings = Settings::new(data_dir);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.db_path()).await?);
    let dir = settings.job_dir(job_id);
    std::fs::create_dir_all(&dir)?;
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
    if job.status() != JobStatus::Running {
        tracing::info!(job = %job_id, status = %job.status, "the job is not running; nothing to do");
        return Ok(0);
    }
    let spec: JobSpec = serde_json::from_str(&job.tuna).map_err(|e| corrupt(&job, "tuna", e))?;
    let hp: Hyperparameters = serde_json::from_str(&job.hyperparameters)
        .map_err(|e| corrupt(&job, "hyperparameters", e))?;
    let fail = |code: &str, message: String, param: Option<&str>| JobError {
        code: code.into(),
        message,
        param: param.map(str::to_string),
    };

    let Some(model) = store.get_model(&job.model).await? else {
        finish_failed(
            &*store,
            &job,
            fail(
                "model_not_found",
                format!("base model `{}` is no longer registered", job.model),
                Some("model"),
            ),
        )
        .await?;
        return Ok(0);
    };
    let blobs = LocalBlobStore::new(settings.blob_root());
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
            Some(f) => paths.push(Some(blobs.local_path(&f.blob_key).await?)),
            None => {
                finish_failed(
                    &*store,
                    &job,
                    fail(
                        "file_not_found",
                        format!("file `{id}` was deleted"),
                        Some(param),
                    ),
                )
                .await?;
                return Ok(0);
            }
        }
    }
    let train_path = paths[0].clone().unwrap_or_default();
    let mut cfg = train_config(
        &spec,
        &hp,
        job.seed,
        PathBuf::from(&model.path),
        train_path,
        paths[1].clone(),
        dir.join("train"),
    );
    // Resume exactly when an earlier run of this job left a checkpoint.
    cfg.resume = tuna_train::checkpoint::latest_checkpoint(&cfg.out_dir)
        .ok()
        .flatten()
        .is_some();

    let stop = Arc::new(AtomicU8::new(STOP_NONE));
    if std::env::var_os(SUPERVISED_ENV).is_some() {
        let stop = stop.clone();
        std::thread::spawn(move || watch_stdin(&stop));
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = Forward {
        tx: tx.clone(),
        stop: stop.clone(),
    };
    let training = std::thread::Builder::new()
        .name(format!("train-{job_id}"))
        .spawn(move || -> tuna_train::Result<TrainSummary> {
            let mut trainer = Trainer::new(cfg)?;
            let _ = tx.send(Msg::Ready {
                total_steps: trainer.total_steps(),
                steps_done: trainer.steps_done(),
                resumed: trainer.resumed_from().is_some(),
                train_examples: trainer.data().stats.train_examples,
                validation_examples: trainer.data().stats.validation_examples,
            });
            let mut forward = forward;
            trainer.run(&mut forward)
        })?;

    let mut reporter = Reporter {
        store: store.clone(),
        job: job.clone(),
        spec: spec.clone(),
        last_step: None,
        last_eval: None,
    };
    while let Some(msg) = rx.recv().await {
        if let Err(e) = reporter.handle(msg).await {
            tracing::error!(job = %job_id, error = %e, "reporting progress failed");
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
    let code = match outcome {
        Ok(summary) if summary.stopped => match stop.load(Ordering::SeqCst) {
            STOP_ORPHANED => EXIT_ORPHANED,
            _ => EXIT_PAUSED,
        },
        Ok(summary) => {
            finish_succeeded(&*store, &blobs, &job, &spec, &model.path, &summary).await?;
            0
        }
        Err(e) => {
            let (code, param) = match &e {
                tuna_train::Error::Dataset { .. } | tuna_train::Error::Data(_) => {
                    ("invalid_training_file", Some("training_file"))
                }
                tuna_train::Error::Config(_) => ("invalid_config", None),
                tuna_train::Error::NonFinite { .. } => ("training_diverged", None),
                _ => ("training_error", None),
            };
            finish_failed(&*store, &job, fail(code, e.to_string(), param)).await?;
            0
        }
    };
    drop(lock);
    Ok(code)
}

/// Turns stdin into stop requests: a `pause` line, or end-of-file (the server is gone).
fn watch_stdin(stop: &AtomicU8) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line {
            Ok(l) if l.trim() == "pause" => {
                let _ = stop.compare_exchange(
                    STOP_NONE,
                    STOP_PAUSE,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = stop.compare_exchange(STOP_NONE, STOP_ORPHANED, Ordering::SeqCst, Ordering::SeqCst);
}

struct Reporter {
    store: Arc<dyn Store>,
    job: JobRow,
    spec: JobSpec,
    last_step: Option<StepMetrics>,
    last_eval: Option<EvalMetrics>,
}

/// One row of `GET .../metrics` (and of the results CSV).
fn metrics_row(m: &StepMetrics, eval: Option<&EvalMetrics>) -> serde_json::Value {
    let mut row = serde_json::json!({
        "step": m.step,
        "total_steps": m.total_steps,
        "epoch": m.epoch,
        "train_loss": m.loss,
        "train_mean_token_accuracy": m.token_accuracy,
        "learning_rate": m.lr,
        "grad_norm": m.grad_norm,
        "tokens_per_second": m.tokens_per_sec,
        "tokens": m.tokens,
        "trained_tokens": m.trained_tokens,
        "elapsed_seconds": m.elapsed_s,
        "eta_seconds": m.eta_s,
        "created_at": ids::now(),
    });
    if let Some(e) = eval.filter(|e| e.step == m.step) {
        row["valid_loss"] = e.loss.into();
        row["valid_mean_token_accuracy"] = e.token_accuracy.into();
    }
    row
}

/// Stores a step's metrics row (with its evaluation, when there is one for that step) as the
/// job's latest progress and as its row in the per-step metrics.
async fn record_metrics(
    store: &dyn Store,
    job_id: &str,
    m: &StepMetrics,
    eval: Option<&EvalMetrics>,
) -> Result<(), WorkerError> {
    let row = metrics_row(m, eval).to_string();
    let progress = JobProgress {
        step: m.step as i64,
        total_steps: m.total_steps as i64,
        epoch: m.epoch as f64,
        latest_metrics: row.clone(),
    };
    store.update_progress(job_id, &progress).await?;
    store.upsert_metrics(job_id, m.step as i64, &row).await?;
    Ok(())
}

impl Reporter {
    async fn handle(&mut self, msg: Msg) -> Result<(), WorkerError> {
        let job = &self.job;
        match msg {
            Msg::Ready {
                total_steps,
                steps_done,
                resumed,
                train_examples,
                validation_examples,
            } => {
                let progress = JobProgress {
                    step: steps_done as i64,
                    total_steps: total_steps as i64,
                    epoch: 0.0,
                    latest_metrics: String::new(),
                };
                if steps_done == 0 {
                    self.store.update_progress(&job.id, &progress).await?;
                }
                let msg = if resumed {
                    format!("Training resumed at step {steps_done} of {total_steps}")
                } else {
                    format!(
                        "Training started: {train_examples} training and {validation_examples} validation examples, {total_steps} steps"
                    )
                };
                self.store.add_event(&NewEvent::info(job, msg)).await?;
            }
            Msg::Step(m) => {
                record_metrics(&*self.store, &job.id, &m, None).await?;
                let data = serde_json::json!({
                    "step": m.step,
                    "train_loss": m.loss,
                    "train_mean_token_accuracy": m.token_accuracy,
                    "total_steps": m.total_steps,
                });
                let event = NewEvent {
                    job_id: &job.id,
                    user_id: &job.user_id,
                    level: "info",
                    message: format!(
                        "Step {}/{}: training loss={:.4}",
                        m.step, m.total_steps, m.loss
                    ),
                    r#type: "metrics",
                    data: Some(data.to_string()),
                };
                self.store.add_event(&event).await?;
                self.last_step = Some(m);
            }
            Msg::Eval(e) => {
                if let Some(m) = self.last_step.as_ref().filter(|m| m.step == e.step) {
                    record_metrics(&*self.store, &job.id, m, Some(&e)).await?;
                }
                let data = serde_json::json!({
                    "step": e.step,
                    "valid_loss": e.loss,
                    "valid_mean_token_accuracy": e.token_accuracy,
                    "full_valid_loss": e.loss,
                    "full_valid_mean_token_accuracy": e.token_accuracy,
                });
                let event = NewEvent {
                    job_id: &job.id,
                    user_id: &job.user_id,
                    level: "info",
                    message: format!(
                        "Step {}: validation loss={:.4} over {} examples",
                        e.step, e.loss, e.examples
                    ),
                    r#type: "metrics",
                    data: Some(data.to_string()),
                };
                self.store.add_event(&event).await?;
                self.last_eval = Some(e);
            }
            Msg::Checkpoint(info) => {
                let step = info.step as i64;
                let at_step = |m: &&StepMetrics| m.step == info.step;
                let eval = self.last_eval.as_ref().filter(|e| e.step == info.step);
                let metrics = CheckpointMetrics {
                    step: Some(step as f64),
                    train_loss: info.train_loss.or(self
                        .last_step
                        .as_ref()
                        .filter(at_step)
                        .map(|m| m.loss)),
                    train_mean_token_accuracy: self
                        .last_step
                        .as_ref()
                        .filter(at_step)
                        .map(|m| m.token_accuracy),
                    valid_loss: eval.map(|e| e.loss).or(info.eval_loss),
                    valid_mean_token_accuracy: eval.map(|e| e.token_accuracy),
                    full_valid_loss: eval.map(|e| e.loss).or(info.eval_loss),
                    full_valid_mean_token_accuracy: eval.map(|e| e.token_accuracy),
                };
                let model_id = format!("{}:ckpt-step-{step}", self.spec.model_id);
                let sample = serde_json::json!({ "epoch": info.epoch, "samples": info.samples });
                let row = CheckpointRow {
                    id: ids::new_id(ids::CHECKPOINT),
                    job_id: job.id.clone(),
                    user_id: job.user_id.clone(),
                    step,
                    created_at: ids::now(),
                    fine_tuned_model_checkpoint: model_id.clone(),
                    metrics: serde_json::to_string(&metrics).unwrap_or_default(),
                    sample: Some(sample.to_string()),
                    path: info.path.to_string_lossy().into_owned(),
                    kind: self.spec.method.clone(),
                };
                self.store.insert_checkpoint(&row).await?;
                let event = NewEvent {
                    job_id: &job.id,
                    user_id: &job.user_id,
                    level: "info",
                    message: format!("Checkpoint created at step {step}"),
                    r#type: "message",
                    data: Some(serde_json::json!({ "step": step, "fine_tuned_model_checkpoint": model_id }).to_string()),
                };
                self.store.add_event(&event).await?;
            }
        }
        Ok(())
    }
}

async fn finish_failed(store: &dyn Store, job: &JobRow, err: JobError) -> Result<(), WorkerError> {
    let patch = JobPatch {
        finished_at: Some(ids::now()),
        error: Some(Some(serde_json::to_string(&err).unwrap_or_default())),
        ..JobPatch::default()
    };
    if let Some(j) = store
        .transition_job(&job.id, &[JobStatus::Running], JobStatus::Failed, &patch)
        .await?
    {
        store
            .add_event(
                &NewEvent::info(&j, format!("Fine-tuning job failed: {}", err.message))
                    .level("error"),
            )
            .await?;
    }
    Ok(())
}

/// The results file (OpenAI's `result_files`): per-step metrics as CSV.
fn results_csv(rows: &[serde_json::Value]) -> String {
    let cols = [
        "step",
        "train_loss",
        "train_mean_token_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
        "learning_rate",
        "tokens",
    ];
    let mut out = cols.join(",");
    out.push('\n');
    for r in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| {
                r.get(*c)
                    .filter(|v| !v.is_null())
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

async fn finish_succeeded(
    store: &dyn Store,
    blobs: &LocalBlobStore,
    job: &JobRow,
    spec: &JobSpec,
    model_dir: &str,
    summary: &TrainSummary,
) -> Result<(), WorkerError> {
    let rows: Vec<serde_json::Value> = store
        .list_metrics(&job.id)
        .await?
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    // Every step of every run (a resumed job's earlier steps included).
    let trained_tokens: i64 = rows
        .iter()
        .filter_map(|r| r.get("tokens").and_then(|t| t.as_i64()))
        .sum();

    let file_id = ids::new_id(ids::FILE);
    let key = format!("files/{file_id}");
    let csv = results_csv(&rows);
    let mut w = blobs.writer(&key).await?;
    w.write(csv.as_bytes()).await?;
    let bytes = w.finish().await? as i64;
    store
        .insert_file(&FileRow {
            id: file_id.clone(),
            user_id: job.user_id.clone(),
            filename: "step_metrics.csv".into(),
            purpose: "fine-tune-results".into(),
            bytes,
            created_at: ids::now(),
            status: "processed".into(),
            status_details: None,
            check_report: None,
            blob_key: key,
        })
        .await?;

    let patch = JobPatch {
        finished_at: Some(ids::now()),
        fine_tuned_model: Some(spec.model_id.clone()),
        trained_tokens: Some(trained_tokens),
        result_files: Some(serde_json::json!([file_id]).to_string()),
        ..JobPatch::default()
    };
    let Some(j) = store
        .transition_job(&job.id, &[JobStatus::Running], JobStatus::Succeeded, &patch)
        .await?
    else {
        return Ok(()); // cancelled at the last moment
    };
    store
        .add_event(&NewEvent::info(
            &j,
            format!("New fine-tuned model created: {}", spec.model_id),
        ))
        .await?;
    store
        .add_event(&NewEvent::info(&j, "The job has successfully completed"))
        .await?;

    // Measured speed of this shape on this device, for later estimates. The trainer's clock
    // starts after loading, and includes evaluation, checkpoints and samples, as a job's time does.
    if summary.tokens > 0 && summary.elapsed_s > 0.0 {
        let measured = summary.tokens as f64 / summary.elapsed_s;
        if let Ok(cfg) = QwenConfig::from_model_dir(Path::new(model_dir)) {
            let shape = model_shape(&cfg);
            let device = estimate::device_kind(job.device.as_deref().unwrap_or("cpu")).to_string();
            let old = store.get_throughput(&shape, &device, &spec.method).await?;
            let row = estimate::fold_measurement(
                old.as_ref(),
                &shape,
                &device,
                &spec.method,
                measured,
                ids::now(),
            );
            store.put_throughput(&row).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::types::LoraOut;

    fn spec() -> JobSpec {
        JobSpec {
            name: None,
            method: "lora".into(),
            lora: Some(LoraOut {
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
            model_id: "ft:demo:u::x".into(),
        }
    }

    #[test]
    fn batch_size_splits_into_packed_examples_and_accumulation() {
        for (batch, micro, accum) in [(1, 1, 1), (4, 4, 1), (6, 3, 2), (8, 4, 2), (7, 1, 7)] {
            let hp = Hyperparameters {
                n_epochs: 2,
                batch_size: batch,
                learning_rate_multiplier: 1.0,
            };
            let c = train_config(&spec(), &hp, 5, "m".into(), "t".into(), None, "o".into());
            assert_eq!(
                (c.batch_size, c.gradient_accumulation_steps),
                (BatchSize::Examples(micro), accum),
                "batch {batch}"
            );
        }
        let hp = Hyperparameters {
            n_epochs: 2,
            batch_size: 1,
            learning_rate_multiplier: 1.0,
        };
        let c = train_config(&spec(), &hp, 5, "m".into(), "t".into(), None, "o".into());
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

    #[test]
    fn results_csv_has_a_header_and_blank_missing_cells() {
        let rows = [
            serde_json::json!({"step": 1, "train_loss": 2.5, "tokens": 10}),
            serde_json::json!({"step": 2, "train_loss": 2.0, "valid_loss": 2.2, "tokens": 12}),
        ];
        let csv = results_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "step,train_loss,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate,tokens"
        );
        assert_eq!(lines[1], "1,2.5,,,,,10");
        assert_eq!(lines[2], "2,2.0,,2.2,,,12");
    }
}
