//! Wire types of the OpenAI-compatible API. Field names and nesting follow OpenAI's API reference
//! (objects `file`, `fine_tuning.job`, `fine_tuning.job.event`, `fine_tuning.job.checkpoint`,
//! `model`, `chat.completion`, `chat.completion.chunk`, `list`), so the official SDKs parse them.
//! Tuna's additions are confined to one extra key per object (`check` on files, `tuna` on jobs,
//! checkpoints and job requests), which the SDKs keep as extra fields.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::spec::Hyperparameters;
use crate::spec::{MethodSpec, TunaSettings};
use crate::store::{EventKind, EventLevel, JobStatus};

/// `{"object": "list", "data": [...], "has_more": ...}`; `first_id`/`last_id` as the files list has them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct List<T> {
    pub object: String,
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_id: Option<String>,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>, has_more: bool) -> Self {
        List {
            object: "list".into(),
            data,
            has_more,
            first_id: None,
            last_id: None,
        }
    }
}

/// Query of the cursor-paginated lists.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    /// Id of the last object of the previous page.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Files

/// The `file` object, plus Tuna's `check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: i64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    /// `processed` (the check passed) or `error` (it found errors; see `check`).
    pub status: String,
    pub status_details: Option<String>,
    pub expires_at: Option<i64>,
    /// Tuna: the dataset check's full report (`ok`, `errors` with line numbers, `warnings`, `stats`).
    pub check: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileDeleted {
    pub id: String,
    pub object: String,
    pub deleted: bool,
}

/// `GET /v1/files` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FileListQuery {
    pub after: Option<String>,
    pub limit: Option<i64>,
    /// `asc` or `desc` (default) by creation time.
    pub order: Option<String>,
    pub purpose: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Fine-tuning jobs

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

/// The `fine_tuning.job` object, plus Tuna's `tuna`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FineTuningJob {
    pub object: String,
    pub id: String,
    pub created_at: i64,
    pub error: Option<JobError>,
    pub fine_tuned_model: Option<String>,
    pub finished_at: Option<i64>,
    pub hyperparameters: Hyperparameters,
    pub model: String,
    pub organization_id: String,
    pub result_files: Vec<String>,
    pub seed: i64,
    pub status: JobStatus,
    pub trained_tokens: Option<i64>,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub estimated_finish: Option<i64>,
    pub integrations: Vec<Value>,
    pub metadata: Option<Value>,
    pub method: MethodSpec,
    pub user_provided_suffix: Option<String>,
    pub tuna: TunaJob,
}

/// Tuna's view of a job: its settings, where it stands in the queue, progress and estimates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunaJob {
    /// The job's Tuna settings after defaults (`name`, `method`, `lora`, `max_seq_len`, ...).
    #[serde(flatten)]
    pub settings: TunaSettings,
    /// 1-based place among all queued jobs of the server; null unless queued.
    pub queue_position: Option<i64>,
    /// Unix time the job is expected to start; null unless queued.
    pub estimated_start: Option<i64>,
    pub progress: Progress,
    /// Seconds spent running, over every run (pauses and restarts excluded).
    pub elapsed_seconds: f64,
    /// Seconds left, while running.
    pub eta_seconds: Option<f64>,
    /// The newest step's metrics row (the trainer's shape, see `GET .../metrics`).
    pub latest_metrics: Option<Value>,
    /// Made before the start: tokens, duration and cost.
    pub estimate: Option<Estimate>,
    /// Times a dead worker was replaced.
    pub retries: i64,
    /// The slot the job runs on (`cpu:0`, `gpu:0`); null once the run ended (see `ran_on`).
    pub device: Option<String>,
    /// The device the job's latest run trained on, as its worker opened it; kept after the end.
    pub ran_on: Option<RanOn>,
    /// A pause was asked for and the worker has not stopped yet.
    pub pause_requested: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: i64,
    pub total_steps: Option<i64>,
    /// Epochs done, fractional.
    pub epoch: f64,
    pub total_epochs: i64,
}

/// An estimate before the start: trained tokens × epochs from the dataset check, duration from
/// the measured throughput of this model shape on this device, cost from the configured price.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Examples the training file contributes per epoch.
    pub examples: i64,
    /// Tokens the model reads per epoch (prompts and answers; what is billed).
    pub tokens_per_epoch: i64,
    /// Tokens that carry a label per epoch (assistant answers).
    pub trained_tokens_per_epoch: i64,
    pub n_epochs: i64,
    pub batch_size: i64,
    /// Optimizer steps of the run.
    pub total_steps: i64,
    /// Tokens processed over the whole run (`tokens_per_epoch` × epochs, or fewer with `max_steps`).
    pub total_tokens: i64,
    /// Training speed assumed, tokens per second; null when nothing was measured on the device
    /// (GPUs get no first guess: `throughput_source` is `none`).
    pub tokens_per_second: Option<f64>,
    /// `seed` (from the parameter count, CPUs only), `measured` (from earlier jobs of this shape
    /// on this device kind) or `none` (no measurement on this device kind yet).
    pub throughput_source: String,
    /// Null when there is no speed to estimate from.
    pub duration_seconds: Option<f64>,
    /// `price_per_million_tokens` × `total_tokens` / 1e6.
    pub cost: f64,
    pub price_per_million_tokens: f64,
    pub currency: String,
    pub device: String,
}

/// The device a run trained on (`tuna.ran_on` of a job; also in its "Training started" event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RanOn {
    /// The worker's slot (`cpu:0`, `gpu:0`).
    pub device: String,
    /// `cpu`, `cuda` or `vulkan`.
    pub backend: String,
    /// The CPU model or the GPU adapter's name (`NVIDIA H200`, `llvmpipe (LLVM 19.1.7, 256 bits)`).
    pub name: String,
    /// A software GPU (a Vulkan driver running on the CPU, such as Mesa's lavapipe).
    #[serde(default)]
    pub software: bool,
    /// The worker node that ran it.
    pub worker: String,
}

impl RanOn {
    /// The device kind speeds are measured and looked up by: `cpu`, or `gpu/<adapter name>`
    /// (an H200 and lavapipe must not share a row).
    pub fn throughput_device(&self) -> String {
        if self.backend == "cpu" {
            "cpu".into()
        } else {
            format!("gpu/{}", self.name)
        }
    }

    /// `gpu:0 (NVIDIA H200, cuda)`.
    pub fn describe(&self) -> String {
        let software = if self.software { ", software" } else { "" };
        format!(
            "{} ({}, {}{software})",
            self.device, self.name, self.backend
        )
    }
}

/// One compute choice of `POST /v1/tuna/estimates`: the slots of that kind the cluster's live
/// workers offer, where the job would stand in their queue, and what it would take there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeChoice {
    /// `cpu` or `gpu` (the value of `tuna.compute`).
    pub compute: String,
    /// Slots of this kind over every live worker, and those free now.
    pub slots_total: i64,
    pub slots_free: i64,
    /// What the slots are (`cpu:0 on box-a`, `gpu:0 on box-b: NVIDIA H200, 139.0 GiB`).
    pub devices: Vec<String>,
    /// Jobs of this kind queued or running before this one would start.
    pub jobs_ahead: i64,
    /// Where the job would stand among queued jobs of this kind (1: next).
    pub queue_position: i64,
    /// Unix time the job would start; null when a job ahead has no estimate to wait on.
    pub estimated_start: Option<i64>,
    /// The job's estimate on this kind (`duration_seconds` null: no measurement yet).
    pub estimate: Estimate,
    /// Why the choice cannot take this job (no worker offers it, DPO on a GPU); null when it can.
    pub unavailable: Option<String>,
}

/// `POST /v1/tuna/estimates` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EstimateResponse {
    pub object: String,
    pub model: String,
    pub training_file: String,
    pub hyperparameters: Hyperparameters,
    pub tuna: TunaJob,
    pub estimate: Estimate,
    /// Queue position and start time the job would get if created now.
    pub queue_position: i64,
    pub estimated_start: i64,
    /// Every compute choice (`tuna.compute`) with its slots, queue and estimate; the job's own
    /// choice is the one of `tuna.compute`.
    pub compute_choices: Vec<ComputeChoice>,
}

/// The `fine_tuning.job.event` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEvent {
    pub object: String,
    pub id: String,
    pub created_at: i64,
    pub level: EventLevel,
    pub message: String,
    pub r#type: EventKind,
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventsQuery {
    pub after: Option<String>,
    pub limit: Option<i64>,
    /// `true`: a live Server-Sent Events stream instead of a page.
    pub stream: Option<bool>,
}

/// `GET .../metrics` query: `after` is a step number (the previous page's `last_id`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetricsQuery {
    pub after: Option<String>,
    pub limit: Option<i64>,
}

/// OpenAI's checkpoint metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetrics {
    pub step: Option<f64>,
    pub train_loss: Option<f64>,
    pub train_mean_token_accuracy: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_mean_token_accuracy: Option<f64>,
    pub full_valid_loss: Option<f64>,
    pub full_valid_mean_token_accuracy: Option<f64>,
}

/// The `fine_tuning.job.checkpoint` object, plus Tuna's `tuna`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobCheckpoint {
    pub object: String,
    pub id: String,
    pub created_at: i64,
    pub fine_tuned_model_checkpoint: String,
    pub fine_tuning_job_id: String,
    pub metrics: CheckpointMetrics,
    pub step_number: i64,
    pub tuna: CheckpointTuna,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointTuna {
    /// `lora` (a PEFT adapter) or `full` (a whole model).
    pub kind: String,
    pub epoch: Option<f64>,
    /// The samples generated at this checkpoint: prompt messages, reference and generated answers.
    pub samples: Vec<Value>,
    /// Size of the checkpoint's files (without the optimizer state a resume needs).
    pub bytes: i64,
    /// `GET` this for a tar archive of the checkpoint's files.
    pub download_url: String,
}

// ---------------------------------------------------------------------------------------------
// Models

/// The `model` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
    /// Tuna: `base`, `checkpoint` or `fine_tuned`; the job and step for the last two.
    pub tuna: ModelTuna,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelTuna {
    pub kind: String,
    pub base_model: String,
    pub job_id: Option<String>,
    pub step: Option<i64>,
    /// The sampling defaults chat completions use for this model (its base model's
    /// `generation_config.json`); only on `GET /v1/models/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationDefaults>,
    /// What a base model is, in a sentence or two (the built-in demo model says how it was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `DELETE /v1/models/{id}` answer (OpenAI's shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelDeleted {
    pub id: String,
    pub object: String,
    pub deleted: bool,
}

/// Sampling defaults of a model, as the effect-test dialog shows them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

// ---------------------------------------------------------------------------------------------
// Chat completions

/// A message content: a string or a list of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged, expecting = "expected a string or a list of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    /// `system`, `developer` (treated as system), `user` or `assistant`.
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// `chat_template_kwargs` (vLLM's extension): `enable_thinking` for Qwen3 templates.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ChatTemplateKwargs {
    pub enable_thinking: Option<bool>,
}

/// `POST /v1/chat/completions` body. Unset sampling fields take the model's `generation_config.json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatRequest {
    /// A base model name or a checkpoint / fine-tuned model id.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; either is honoured.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Only 1 is supported.
    #[serde(default)]
    pub n: Option<i64>,
    /// Tuna: top-k sampling (0 = off); default from the model.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub chat_template_kwargs: Option<ChatTemplateKwargs>,
    /// Accepted and ignored (OpenAI fields without a meaning here).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    pub index: i64,
    pub message: AssistantMessage,
    pub logprobs: Option<Value>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// The `chat.completion` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: i64,
    pub delta: Delta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<String>,
}

/// The `chat.completion.chunk` object (one per SSE `data:` line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    pub system_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}
