//! Tuna's fine-tuning loop, supervised (SFT) or on preference pairs (DPO): configuration, data
//! plan, learning-rate schedule, gradient accumulation, clipping, AdamW, evaluation, checkpoints
//! (PEFT / Hugging Face) with exact resume, per-checkpoint samples and metrics as JSON lines;
//! plus merging an adapter into its base model.
//!
//! The recipe is [`sft::Trainer`]: `Trainer::new(config)?.run(&mut observer)?`; `objective` in
//! the config picks SFT or DPO ([`dpo`]). A [`TrainObserver`] sees every step, evaluation and
//! checkpoint and can stop the run.
//! Free of HTTP and database code: the server drives it through this API.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dpo;
pub mod error;
pub mod merge;
pub mod metrics;
pub mod optim;
pub mod sample;
pub mod schedule;
pub mod sft;

pub use config::{
    BatchSize, DpoSettings, LoraSettings, Method, Objective, PrecisionSetting, TrainConfig,
    default_learning_rate,
};
pub use data::{Dataset, SamplePrompt};
pub use error::{Error, Result};
pub use metrics::{
    CheckpointInfo, EvalMetrics, PreferenceMetrics, Sample, StepMetrics, TrainObserver,
};
pub use schedule::ScheduleKind;
pub use sft::{TrainSummary, Trainer};
