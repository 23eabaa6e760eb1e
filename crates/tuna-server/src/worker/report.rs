//! What a worker writes to the store: progress and the trainer's metrics rows (stored as the
//! trainer emits them: `{"type": "train", "step", "loss", "lr", ...}`, one schema for the
//! database, the API and the console), OpenAI's metrics events, checkpoints with their samples,
//! retention and the optimizer state only the newest checkpoint keeps, and the job's end.
//! Every write carries the worker's claim and its result is checked.
//!
//! Checkpoints go to the blob store before their row is written ([`crate::checkpoints`]); only
//! rows count: before training resumes, [`Reporter::prepare_resume`] fetches the newest recorded
//! checkpoint (on any machine) and removes the job folder's unrecorded ones (a worker killed
//! between writing a checkpoint and recording it, or a fenced one), whose steps are redone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tuna_model::QwenConfig;
use tuna_train::{CheckpointInfo, EvalMetrics, PreferenceMetrics, StepMetrics, TrainSummary};

use super::Msg;
use crate::artifacts;
use crate::blob::BlobStore;
use crate::checkpoints;
use crate::estimate;
use crate::ids;
use crate::lifecycle;
use crate::models::model_shape;
use crate::openai::types::{CheckpointMetrics, JobError, RanOn};
use crate::store::{
    CheckpointRow, EventLevel, FileRow, JobProgress, JobRow, MetricsKind, MetricsRow, NewEvent,
    StepReport, Store, StoreError, StoreResult,
};

pub struct Reporter {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    /// This node's copies of blobs (`<data-dir>/cache`).
    cache_root: PathBuf,
    job: JobRow,
    attempt: i64,
    job_dir: PathBuf,
    last_step: Option<StepMetrics>,
    last_eval: Option<EvalMetrics>,
    /// The device this run trains on, once training started.
    ran_on: Option<RanOn>,
}

/// A trainer line as a metrics row: exactly what `metrics.jsonl` holds.
fn row<T: serde::Serialize>(kind: MetricsKind, step: usize, line: &T) -> MetricsRow {
    let mut data = serde_json::to_value(line).unwrap_or_default();
    if let Value::Object(map) = &mut data {
        let tag = match kind {
            MetricsKind::Train => "train",
            MetricsKind::Eval => "eval",
        };
        map.insert("type".into(), json!(tag));
    }
    MetricsRow {
        kind,
        step: step as i64,
        data,
    }
}

/// A metrics event's data with a DPO run's preference metrics added under TRL's names
/// (`rewards/accuracies`, ...; validation ones prefixed `valid_`).
fn with_preference(mut data: Value, prefix: &str, preference: Option<&PreferenceMetrics>) -> Value {
    if let (Some(p), Value::Object(map)) = (preference, &mut data)
        && let Ok(Value::Object(metrics)) = serde_json::to_value(p)
    {
        for (k, v) in metrics {
            map.insert(format!("{prefix}{k}"), v);
        }
    }
    data
}

/// DPO's metrics in the results file: column name and the key of the trainer's line.
const PREFERENCE_COLUMNS: &[(&str, &str)] = &[
    ("train_rewards_chosen", "rewards/chosen"),
    ("train_rewards_rejected", "rewards/rejected"),
    ("train_rewards_accuracies", "rewards/accuracies"),
    ("train_rewards_margins", "rewards/margins"),
    ("train_logps_chosen", "logps/chosen"),
    ("train_logps_rejected", "logps/rejected"),
];

/// The results file (OpenAI's `result_files`): per-step metrics as CSV; a DPO run's rows add
/// the preference metrics.
pub fn results_csv(rows: &[MetricsRow]) -> String {
    let mut out = String::from(
        "step,train_loss,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate,tokens",
    );
    let preference = rows
        .iter()
        .any(|r| r.data.get(PREFERENCE_COLUMNS[0].1).is_some());
    if preference {
        for (column, _) in PREFERENCE_COLUMNS {
            out.push(',');
            out.push_str(column);
        }
    }
    out.push('\n');
    let cell = |r: Option<&MetricsRow>, key: &str| {
        r.and_then(|r| r.data.get(key))
            .filter(|v| !v.is_null())
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    for train in rows.iter().filter(|r| r.kind == MetricsKind::Train) {
        let eval = rows
            .iter()
            .find(|r| r.kind == MetricsKind::Eval && r.step == train.step);
        let t = Some(train);
        out.push_str(&format!(
            "{},{},{},{},{},{},{}",
            train.step,
            cell(t, "loss"),
            cell(t, "token_accuracy"),
            cell(eval, "loss"),
            cell(eval, "token_accuracy"),
            cell(t, "lr"),
            cell(t, "tokens"),
        ));
        if preference {
            for (_, key) in PREFERENCE_COLUMNS {
                out.push(',');
                out.push_str(&cell(t, key));
            }
        }
        out.push('\n');
    }
    out
}

impl Reporter {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        cache_root: PathBuf,
        job: JobRow,
        attempt: i64,
        job_dir: PathBuf,
    ) -> Self {
        Reporter {
            store,
            blobs,
            cache_root,
            job,
            attempt,
            job_dir,
            last_step: None,
            last_eval: None,
            ran_on: None,
        }
    }

    fn report(&self, progress: Option<JobProgress>) -> StepReport {
        StepReport {
            job_id: self.job.id.clone(),
            attempt: self.attempt,
            progress,
            metrics: Vec::new(),
            events: Vec::new(),
            ran_on: None,
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job.id
    }

    /// A warning in the job's events (best effort: a failure is logged).
    pub async fn warn(&self, message: String) {
        let mut r = self.report(None);
        r.events
            .push(NewEvent::info(&self.job, message).level(EventLevel::Warn));
        if let Err(e) = self.send(r).await {
            tracing::warn!(job = %self.job.id, error = %e, "cannot record a warning");
        }
    }

    async fn send(&self, r: StepReport) -> StoreResult<()> {
        if !until_reachable(&self.job.id, || self.store.report(&r)).await? {
            tracing::warn!(job = %self.job.id, "the job left this worker's claim; the report was dropped");
            super::claim_lost(&self.job.id, self.attempt);
        }
        Ok(())
    }

    pub(super) async fn handle(&mut self, msg: Msg) -> StoreResult<()> {
        let job = &self.job;
        match msg {
            Msg::Ready {
                precision,
                ran_on,
                total_steps,
                steps_done,
                resumed,
                train_examples,
                validation_examples,
            } => {
                let device = ran_on.describe();
                let message = if resumed {
                    // The device is in the event's `ran_on` (and on the job); the text stays
                    // what clients match on.
                    format!("Training resumed at step {steps_done} of {total_steps}")
                } else {
                    format!(
                        "Training started on {device}: {train_examples} training and {validation_examples} validation examples, {total_steps} steps; matrix products: {precision}"
                    )
                };
                let mut r = self.report(Some(JobProgress {
                    step: steps_done as i64,
                    total_steps: total_steps as i64,
                    epoch: job.epoch,
                }));
                r.events
                    .push(NewEvent::info(job, message).data(json!({ "ran_on": &ran_on })));
                r.ran_on = Some(ran_on.clone());
                self.ran_on = Some(ran_on);
                self.send(r).await?;
            }
            Msg::Step(m) => {
                let mut r = self.report(Some(JobProgress {
                    step: m.step as i64,
                    total_steps: m.total_steps as i64,
                    epoch: m.epoch as f64,
                }));
                r.metrics.push(row(MetricsKind::Train, m.step, &m));
                // OpenAI's metrics event.
                r.events.push(
                    NewEvent::info(
                        job,
                        format!(
                            "Step {}/{}: training loss={:.4}",
                            m.step, m.total_steps, m.loss
                        ),
                    )
                    .metrics()
                    .data(with_preference(
                        json!({
                            "step": m.step,
                            "train_loss": m.loss,
                            "train_mean_token_accuracy": m.token_accuracy,
                            "total_steps": m.total_steps,
                        }),
                        "",
                        m.preference.as_ref(),
                    )),
                );
                self.send(r).await?;
                self.last_step = Some(m);
            }
            Msg::Eval(e) => {
                let mut r = self.report(None);
                r.metrics.push(row(MetricsKind::Eval, e.step, &e));
                r.events.push(
                    NewEvent::info(
                        job,
                        format!(
                            "Step {}: validation loss={:.4} over {} examples",
                            e.step, e.loss, e.examples
                        ),
                    )
                    .metrics()
                    .data(with_preference(
                        json!({
                            "step": e.step,
                            "valid_loss": e.loss,
                            "valid_mean_token_accuracy": e.token_accuracy,
                            "full_valid_loss": e.loss,
                            "full_valid_mean_token_accuracy": e.token_accuracy,
                        }),
                        "valid_",
                        e.preference.as_ref(),
                    )),
                );
                self.send(r).await?;
                self.last_eval = Some(e);
            }
            Msg::Checkpoint(info) => self.checkpoint(&info).await?,
        }
        Ok(())
    }

    /// Where this run resumes from: a local copy of the job's newest recorded checkpoint (its own
    /// directory on the node that wrote it, else fetched from the blob store and verified), or
    /// `None` to start at step 0. Only rows count: checkpoint directories in the job's folder that
    /// no row recorded (a killed worker's last one, or a fenced worker's) are removed, and their
    /// steps are trained again (training is deterministic).
    pub async fn prepare_resume(&mut self) -> Result<Option<PathBuf>, std::io::Error> {
        let rows = self
            .store
            .job_checkpoints(&self.job.id)
            .await
            .map_err(std::io::Error::other)?;
        let train_dir = artifacts::train_dir(&self.job_dir);
        let recorded: Vec<(PathBuf, Option<String>)> = rows
            .iter()
            .map(|r| {
                let prefix = checkpoints::manifest_of(r).ok().flatten().map(|m| m.prefix);
                (PathBuf::from(&r.path), prefix)
            })
            .collect();
        tokio::task::spawn_blocking(move || artifacts::remove_unrecorded(&train_dir, &recorded))
            .await
            .map_err(std::io::Error::other)?;
        let Some(newest) = rows.first() else {
            return Ok(None);
        };
        checkpoints::local_dir(&*self.blobs, &self.cache_root, newest, true)
            .await
            .map(Some)
    }

    /// Uploads a checkpoint the trainer wrote to the blob store, then records it (fenced by the
    /// claim), then marks its directory as recorded.
    async fn checkpoint(&mut self, info: &CheckpointInfo) -> StoreResult<()> {
        let job = &self.job;
        let step = info.step as i64;
        let at_step = self.last_step.as_ref().filter(|m| m.step == info.step);
        let eval = self.last_eval.as_ref().filter(|e| e.step == info.step);
        let metrics = CheckpointMetrics {
            step: Some(step as f64),
            train_loss: info.train_loss.or(at_step.map(|m| m.loss)),
            train_mean_token_accuracy: at_step.map(|m| m.token_accuracy),
            valid_loss: eval.map(|e| e.loss).or(info.eval_loss),
            valid_mean_token_accuracy: eval.map(|e| e.token_accuracy),
            full_valid_loss: eval.map(|e| e.loss).or(info.eval_loss),
            full_valid_mean_token_accuracy: eval.map(|e| e.token_accuracy),
        };
        let model_id = format!("{}:ckpt-step-{step}", job.model_id);
        let path = info.path.clone();
        // Older checkpoints keep only their weights: a resume needs the newest one's optimizer.
        let (train_dir, this) = (artifacts::train_dir(&self.job_dir), path.clone());
        let bytes = tokio::task::spawn_blocking(move || {
            artifacts::drop_optimizer_state_except(&train_dir, Some(&this));
            artifacts::checkpoint_bytes(&this)
        })
        .await
        .unwrap_or(0);
        let prefix = checkpoints::blob_prefix(&job.id, self.attempt, step);
        let manifest = match checkpoints::upload(&*self.blobs, &prefix, &path).await {
            Ok(m) => m,
            Err(e) => {
                // No row without every file: the run stops and the job is retried from its
                // last recorded checkpoint.
                self.warn(format!(
                    "Checkpoint at step {step} could not be stored ({e}); the job will be retried from its last stored checkpoint"
                ))
                .await;
                return Err(if crate::disk::is_disk_full(&e) {
                    StoreError::Full(e.to_string())
                } else {
                    StoreError::Corrupt(e.to_string())
                });
            }
        };
        let row = CheckpointRow {
            id: ids::new_id(ids::CHECKPOINT),
            job_id: job.id.clone(),
            user_id: job.user_id.clone(),
            step,
            created_at: ids::now(),
            fine_tuned_model_checkpoint: model_id.clone(),
            metrics: serde_json::to_string(&metrics).unwrap_or_default(),
            sample: Some(json!({ "epoch": info.epoch, "samples": info.samples }).to_string()),
            path: path.to_string_lossy().into_owned(),
            kind: job.spec.tuna.method.as_str().into(),
            bytes: bytes as i64,
            blob_files: Some(manifest.to_json()),
        };
        let event = NewEvent::info(job, format!("Checkpoint created at step {step}"))
            .data(json!({ "step": step, "fine_tuned_model_checkpoint": model_id }));
        let recorded = until_reachable(&job.id, || {
            self.store.insert_checkpoint(&row, self.attempt, &event)
        })
        .await?;
        if !recorded {
            super::claim_lost(&self.job.id, self.attempt);
            return Ok(());
        }
        if let Err(e) = checkpoints::mark_recorded(&path, &prefix) {
            tracing::warn!(job = %job.id, error = %e, "cannot mark the checkpoint recorded (other nodes fetch it from the blob store)");
        }
        let older: Vec<CheckpointRow> = self
            .store
            .job_checkpoints(&job.id)
            .await?
            .into_iter()
            .filter(|c| c.step < step)
            .collect();
        checkpoints::drop_resume_blobs(&*self.blobs, &older).await;
        self.apply_retention().await
    }

    /// `tuna.keep_checkpoints`: the newest N checkpoints stay; older rows go, then their files.
    async fn apply_retention(&self) -> StoreResult<()> {
        let Some(keep) = self.job.spec.tuna.keep_checkpoints else {
            return Ok(());
        };
        let all = self.store.job_checkpoints(&self.job.id).await?;
        let old: Vec<&CheckpointRow> = all.iter().skip(keep.max(1) as usize).collect();
        if old.is_empty() {
            return Ok(());
        }
        let steps: Vec<String> = old.iter().map(|c| c.step.to_string()).collect();
        let event = NewEvent::info(
            &self.job,
            format!(
                "Checkpoints at steps {} deleted (the job keeps its newest {keep})",
                steps.join(", ")
            ),
        );
        let ids: Vec<String> = old.iter().map(|c| c.id.clone()).collect();
        let gone = self
            .store
            .delete_checkpoints(&self.job.id, &ids, Some(&event))
            .await?;
        checkpoints::remove(&*self.blobs, &self.cache_root, &gone).await;
        Ok(())
    }

    /// A final job needs no resume state, here or in the blob store.
    async fn drop_resume_state(&self) {
        let train_dir = artifacts::train_dir(&self.job_dir);
        let _ = tokio::task::spawn_blocking(move || {
            artifacts::drop_optimizer_state_except(&train_dir, None)
        })
        .await;
        if let Ok(rows) = self.store.job_checkpoints(&self.job.id).await {
            checkpoints::drop_resume_blobs(&*self.blobs, &rows).await;
            if let Err(e) = checkpoints::remove_orphans(&*self.blobs, &self.job.id, &rows).await {
                tracing::warn!(job = %self.job.id, error = %e, "cannot remove checkpoint blobs no row names");
            }
        }
    }

    /// Fails the job; the exit code: 0 when recorded, [`crate::queue::EXIT_DISK_FULL`] when the
    /// disk is too full to say so, 1 (a crash, retried) when the store failed otherwise.
    pub async fn fail(&mut self, err: JobError) -> i32 {
        match lifecycle::fail(&*self.store, &self.job, Some(self.attempt), err).await {
            Ok(_) => {
                self.drop_resume_state().await;
                0
            }
            Err(e) => {
                tracing::error!(job = %self.job.id, error = %e, "cannot record the job's failure");
                if e.is_full() {
                    crate::queue::EXIT_DISK_FULL
                } else {
                    1
                }
            }
        }
    }

    /// The run finished: results file, success, measured throughput.
    pub async fn succeed(
        &mut self,
        blobs: &dyn BlobStore,
        model_dir: &Path,
        summary: &TrainSummary,
    ) -> StoreResult<()> {
        let job = &self.job;
        let mut rows = Vec::new();
        let mut after = 0;
        loop {
            let (page, more) = self.store.list_metrics(&job.id, after, 10_000).await?;
            after = page.last().map_or(after, |r| r.step);
            rows.extend(page);
            if !more {
                break;
            }
        }
        // Every step of every run (a resumed job's earlier steps included).
        let trained_tokens: i64 = rows
            .iter()
            .filter(|r| r.kind == MetricsKind::Train)
            .filter_map(|r| r.data.get("tokens").and_then(Value::as_i64))
            .sum();

        let file_id = ids::new_id(ids::FILE);
        let key = format!("files/{file_id}");
        let csv = results_csv(&rows);
        let write = async {
            let mut w = blobs.writer(&key).await?;
            w.write(csv.as_bytes()).await?;
            w.finish().await
        };
        let bytes = write.await.map_err(|e| {
            if crate::disk::is_disk_full(&e) {
                StoreError::Full(e.to_string())
            } else {
                StoreError::Corrupt(format!("writing the results file: {e}"))
            }
        })? as i64;
        self.store
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
        let done = lifecycle::succeed(
            &*self.store,
            job,
            self.attempt,
            trained_tokens,
            vec![file_id],
        )
        .await?;
        if done.is_none() {
            return Ok(()); // cancelled at the last moment
        }
        self.drop_resume_state().await;

        // Measured speed of this shape on this device, for later estimates. The trainer's clock
        // starts after loading, and includes evaluation, checkpoints and samples, as a job's time does.
        if summary.tokens > 0 && summary.elapsed_s > 0.0 {
            let measured = summary.tokens as f64 / summary.elapsed_s;
            if let Ok(cfg) = QwenConfig::from_model_dir(model_dir) {
                let shape = model_shape(&cfg);
                // Keyed by the device kind (`cpu`, `gpu/NVIDIA H200`): GPUs differ too much
                // to share a row.
                let device = self
                    .ran_on
                    .as_ref()
                    .map_or_else(|| "cpu".to_string(), RanOn::throughput_device);
                let method = job.spec.throughput_method();
                let old = self.store.get_throughput(&shape, &device, &method).await?;
                let row = estimate::fold_measurement(
                    old.as_ref(),
                    &shape,
                    &device,
                    &method,
                    measured,
                    ids::now(),
                );
                self.store.put_throughput(&row).await?;
            }
        }
        Ok(())
    }
}

/// How long a worker keeps retrying a write while the database cannot be reached (restarted,
/// failed over, a network cut) before it stops the run. Training goes on meanwhile; if the
/// outage outlasts the lease, the claim is reaped when the database is back and the retried write
/// finds it gone (the worker then exits fenced).
const UNREACHABLE_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs `write` until it succeeds, fails otherwise than by an unreachable database, or the
/// database stayed unreachable for [`UNREACHABLE_FOR`]. A report is idempotent (metrics rows are
/// keyed by step), so a write whose commit's answer was lost can be sent again.
async fn until_reachable<T, F, Fut>(job_id: &str, mut write: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match write().await {
            Err(e) if e.is_unreachable() && start.elapsed() < UNREACHABLE_FOR => {
                tracing::warn!(job = %job_id, error = %e, "the database cannot be reached; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_rows_are_the_trainer_lines_and_the_csv_maps_them() {
        let step = StepMetrics {
            step: 2,
            total_steps: 4,
            epoch: 0.5,
            loss: 2.5,
            token_accuracy: 0.25,
            lr: 0.001,
            grad_norm: 1.0,
            tokens_per_sec: 100.0,
            tokens: 10,
            trained_tokens: 5,
            elapsed_s: 1.0,
            eta_s: 2.0,
            preference: None,
        };
        let r = row(MetricsKind::Train, 2, &step);
        assert_eq!(r.data["type"], "train");
        assert_eq!(r.data["loss"], 2.5);
        assert_eq!(r.data["tokens_per_sec"], 100.0);
        let eval = MetricsRow {
            kind: MetricsKind::Eval,
            step: 2,
            data: json!({"type": "eval", "step": 2, "loss": 2.2, "token_accuracy": 0.5}),
        };
        let first = MetricsRow {
            kind: MetricsKind::Train,
            step: 1,
            data: json!({"type": "train", "step": 1, "loss": 3.0, "tokens": 12}),
        };
        let csv = results_csv(&[first, r, eval]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "step,train_loss,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate,tokens"
        );
        assert_eq!(lines[1], "1,3.0,,,,,12");
        assert_eq!(lines[2], "2,2.5,0.25,2.2,0.5,0.0010000000474974513,10");

        // A DPO run's lines carry TRL's names; the CSV and the metrics event add them.
        let dpo = StepMetrics {
            preference: Some(PreferenceMetrics {
                rewards_chosen: 0.5,
                rewards_rejected: -0.25,
                rewards_accuracies: 1.0,
                rewards_margins: 0.75,
                logps_chosen: -3.0,
                logps_rejected: -9.0,
                pairs: 2,
            }),
            ..step
        };
        let r = row(MetricsKind::Train, 2, &dpo);
        assert_eq!(r.data["rewards/accuracies"], 1.0);
        assert_eq!(r.data["pairs"], 2);
        let csv = results_csv(&[r]);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].ends_with(
            ",tokens,train_rewards_chosen,train_rewards_rejected,train_rewards_accuracies,train_rewards_margins,train_logps_chosen,train_logps_rejected"
        ));
        assert!(
            lines[1].ends_with(",10,0.5,-0.25,1.0,0.75,-3.0,-9.0"),
            "{}",
            lines[1]
        );
        let event = with_preference(
            json!({"train_loss": 1.0}),
            "valid_",
            dpo.preference.as_ref(),
        );
        assert_eq!(event["valid_rewards/margins"], 0.75);
        assert_eq!(event["train_loss"], 1.0);
        assert_eq!(with_preference(json!({"a": 1}), "", None), json!({"a": 1}));
    }
}
