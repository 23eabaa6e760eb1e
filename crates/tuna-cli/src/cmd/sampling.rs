//! Generation flags shared by `chat` and `generate`; unset flags fall back to the model's
//! `generation_config.json`. Also the model loading both commands share.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tuna_model::{GenerationConfig, LoraAdapter, QwenModel, SamplingParams};
use tuna_train::PrecisionSetting;

use super::train::PrecisionArg;
use crate::device_arg::DeviceArg;

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 means greedy [default: the model's generation_config]
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to this
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only this many most likely tokens (0 = all)
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Penalize tokens already in the text (>1 discourages repeats; transformers' definition)
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Random seed for sampling
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most tokens to generate
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Always take the most likely token
    #[arg(long)]
    pub greedy: bool,
    /// Prompt (prefill) matrix products: bf16 where the CPU has bf16 units (auto), f32, or bf16.
    /// Decoding reads the weights as stored, in f32, either way.
    /// On a GPU the model runs in f32 and this flag has no effect.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// Where the model runs: cpu, gpu or gpu:N (`tuna devices` lists them). On a GPU the
    /// weights are uploaded once (f32), the key/value cache stays there and only the last
    /// token's logits come back; sampling is the CPU's, so greedy and seeded runs pick the same
    /// tokens on every device
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
}

/// The model directory of `model` (a path or `demo`), the model at `precision` and the adapter.
pub fn load_model(
    model: &str,
    adapter: Option<&Path>,
    precision: PrecisionArg,
) -> anyhow::Result<(PathBuf, QwenModel, Option<LoraAdapter>)> {
    let dir = crate::model_dir::resolve(model)?;
    let mut model =
        QwenModel::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    model.set_precision(PrecisionSetting::from(precision).resolve());
    let adapter = match adapter {
        Some(a) => Some(
            LoraAdapter::load(a, &model.config)
                .with_context(|| format!("loading adapter {}", a.display()))?,
        ),
        None => None,
    };
    Ok((dir, model, adapter))
}

impl SamplingArgs {
    pub fn params(&self, defaults: &GenerationConfig) -> SamplingParams {
        let mut p = SamplingParams::from_generation_config(defaults);
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(t) = self.top_p {
            p.top_p = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(r) = self.repetition_penalty {
            p.repetition_penalty = r;
        }
        p.seed = self.seed;
        p.max_new_tokens = self.max_new_tokens;
        p.greedy = p.greedy || self.greedy;
        p
    }
}
