//! Tuna's supervised fine-tuning loop: configuration, data plan, learning-rate schedule, gradient
//! accumulation, clipping, AdamW, evaluation, checkpoints (PEFT / Hugging Face) with exact resume,
//! per-checkpoint samples and metrics as JSON lines; plus merging an adapter into its base model.
//!
//! The recipe is [`sft::Trainer`]: `Trainer::new(config)?.run(&mut observer)?`. A
//! [`TrainObserver`] sees every step, evaluation and checkpoint and can stop the run.
//! Free of HTTP and database code: the server drives it through this API.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod merge;
pub mod metrics;
pub mod optim;
pub mod sample;
pub mod schedule;
pub mod sft;

pub use config::{BatchSize, LoraSettings, Method, TrainConfig};
pub use data::{Dataset, SamplePrompt};
pub use error::{Error, Result};
pub use metrics::{CheckpointInfo, EvalMetrics, Sample, StepMetrics, TrainObserver};
pub use schedule::ScheduleKind;
pub use sft::{TrainSummary, Trainer};
