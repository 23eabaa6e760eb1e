//! Qwen2 / Qwen3 models over `tuna-engine`: Hugging Face config and safetensors loading, LoRA
//! adapters in PEFT's layout, forward with a KV cache, sampling and generation, the demo model.
//!
//! Free of I/O beyond reading and writing model files; no HTTP, no database.

pub mod backend;
pub mod config;
pub mod demo;
pub mod error;
pub mod generate;
pub mod lora;
pub mod params;
pub mod qwen;
pub mod safetensors;
pub mod tensor;
pub mod train;

pub use backend::{Backend, CpuBackend, TrainDevice};
pub use config::{Architecture, GenerationConfig, QwenConfig, TrainingDefaults};
pub use error::{Error, Result};
pub use generate::{
    CpuDecoder, Decoder, FinishReason, Generation, SamplingParams, generate, generate_on,
};
pub use lora::{LoraAdapter, LoraConfig, LoraTarget};
pub use params::{Gradients, Param, ParamLayout};
pub use qwen::{KvCache, QwenModel};
pub use tensor::Tensor;
pub use train::{BatchStats, TrainBatch, TrainOptions};
pub use tuna_engine::ops::matmul::Precision;
