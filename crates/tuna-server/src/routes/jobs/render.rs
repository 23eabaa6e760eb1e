//! Stored rows as the API's objects: `fine_tuning.job` (with Tuna's `tuna` view),
//! `fine_tuning.job.event` and `fine_tuning.job.checkpoint`.

use crate::estimate::{self, QueueSlot};
use crate::openai::types::{
    CheckpointTuna, Estimate, FineTuningJob, JobCheckpoint, JobEvent, Progress, RanOn, TunaJob,
};
use crate::spec::JobSpec;
use crate::store::{CheckpointRow, EventRow, JobControl, JobRow, JobStatus};

fn parse<T: serde::de::DeserializeOwned>(s: Option<&str>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(s).ok())
}

/// What a job has done so far (nothing, for a job that does not exist yet: an estimate).
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub queue: Option<QueueSlot>,
    pub progress: Progress,
    pub elapsed_seconds: f64,
    pub eta_seconds: Option<f64>,
    pub latest_metrics: Option<serde_json::Value>,
    pub retries: i64,
    pub device: Option<String>,
    pub ran_on: Option<RanOn>,
    pub pause_requested: bool,
}

/// The `tuna` object: the job's settings with where it stands.
pub fn tuna_view(spec: &JobSpec, estimate: Option<&Estimate>, live: Live) -> TunaJob {
    let mut progress = live.progress;
    if progress.total_steps.is_none() {
        progress.total_steps = estimate.map(|e| e.total_steps);
    }
    progress.total_epochs = spec.hyperparameters().n_epochs;
    TunaJob {
        settings: spec.tuna.clone(),
        queue_position: live.queue.map(|q| q.position),
        estimated_start: live.queue.map(|q| q.estimated_start as i64),
        progress,
        elapsed_seconds: live.elapsed_seconds,
        eta_seconds: live.eta_seconds,
        latest_metrics: live.latest_metrics,
        estimate: estimate.cloned(),
        retries: live.retries,
        device: live.device,
        ran_on: live.ran_on,
        pause_requested: live.pause_requested,
    }
}

/// The `fine_tuning.job` object of a row; `queue` is its slot when queued.
pub fn render_job(row: &JobRow, queue: Option<&QueueSlot>, now: f64) -> FineTuningJob {
    let running = row.status == JobStatus::Running;
    let elapsed = row.running_seconds
        + if running {
            row.run_started_at
                .map(|t| (now - t).max(0.0))
                .unwrap_or(0.0)
        } else {
            0.0
        };
    let eta = running.then(|| estimate::remaining_seconds(&estimate::RunState::of(row), now));
    let live = Live {
        queue: queue.copied().filter(|_| row.status == JobStatus::Queued),
        progress: Progress {
            step: row.step,
            total_steps: row.total_steps,
            epoch: row.epoch,
            total_epochs: 0,
        },
        elapsed_seconds: elapsed,
        eta_seconds: eta,
        latest_metrics: row.latest_metrics.clone(),
        retries: row.retries,
        device: row.device.clone(),
        ran_on: row.ran_on.clone(),
        pause_requested: running && row.control == Some(JobControl::Pause),
    };
    let hp = *row.spec.hyperparameters();
    FineTuningJob {
        object: "fine_tuning.job".into(),
        id: row.id.clone(),
        created_at: row.created_at,
        error: row.error.clone(),
        fine_tuned_model: row.fine_tuned_model.clone(),
        finished_at: row.finished_at,
        hyperparameters: hp,
        model: row.model.clone(),
        organization_id: row.user_id.clone(),
        result_files: row.result_files.clone(),
        seed: row.seed,
        status: row.status,
        trained_tokens: row.trained_tokens,
        training_file: row.training_file.clone(),
        validation_file: row.validation_file.clone(),
        estimated_finish: eta.map(|e| (now + e) as i64),
        integrations: Vec::new(),
        metadata: row.metadata.clone(),
        method: row.spec.method,
        user_provided_suffix: row.suffix.clone(),
        tuna: tuna_view(&row.spec, row.estimate.as_ref(), live),
    }
}

pub fn render_event(e: &EventRow) -> JobEvent {
    JobEvent {
        object: "fine_tuning.job.event".into(),
        id: e.id.clone(),
        created_at: e.created_at,
        level: e.level,
        message: e.message.clone(),
        r#type: e.r#type,
        data: e.data.clone(),
    }
}

pub fn render_checkpoint(c: &CheckpointRow) -> JobCheckpoint {
    let sample: Option<serde_json::Value> = parse(c.sample.as_deref());
    let samples = sample
        .as_ref()
        .and_then(|s| s.get("samples"))
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    JobCheckpoint {
        object: "fine_tuning.job.checkpoint".into(),
        id: c.id.clone(),
        created_at: c.created_at,
        fine_tuned_model_checkpoint: c.fine_tuned_model_checkpoint.clone(),
        fine_tuning_job_id: c.job_id.clone(),
        metrics: parse(Some(&c.metrics)).unwrap_or_default(),
        step_number: c.step,
        tuna: CheckpointTuna {
            kind: c.kind.clone(),
            epoch: sample
                .as_ref()
                .and_then(|s| s.get("epoch"))
                .and_then(|e| e.as_f64()),
            samples,
            bytes: c.bytes,
            download_url: format!(
                "/v1/fine_tuning/jobs/{}/checkpoints/{}/adapter",
                c.job_id, c.id
            ),
        },
    }
}
