//! [`TrainConfig`]: every setting of a supervised fine-tuning run, with the defaults a user of
//! transformers / torchtune / LLaMA-Factory expects. Serialisable (JSON), so the server stores it
//! with the job and the CLI can read it from a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tuna_data::pack::LengthPolicy;
use tuna_engine::ops::matmul::{Bf16Kernel, Precision};
use tuna_model::{LoraConfig, LoraTarget, TrainingDefaults};

use crate::error::{Error, Result};
use crate::schedule::ScheduleKind;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A LoRA adapter over the frozen base model; checkpoints are PEFT adapters.
    #[default]
    Lora,
    /// Every weight of the model; checkpoints are complete Hugging Face model directories.
    Full,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Full => "full",
        }
    }
}

/// What the run optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Supervised fine-tuning: cross-entropy of the assistant answers of chat data.
    #[default]
    Sft,
    /// Direct preference optimisation (Rafailov et al., 2023) on preference pairs: raise the
    /// preferred answer's likelihood over the non-preferred one's, relative to a frozen
    /// reference (the model as the run starts).
    Dpo,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Sft => "sft",
            Objective::Dpo => "dpo",
        }
    }
}

/// DPO hyper-parameters (TRL's `DPOConfig` names). As TRL's default `disable_dropout`, a DPO
/// run trains without dropout (LoRA dropout is set to 0); `batch_size` counts pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoSettings {
    /// How far the policy may move from the reference: the loss is
    /// `−log σ(β · (Δ log-ratio))`. Default 0.1 (OpenAI's and TRL's default).
    pub beta: f32,
}

impl Default for DpoSettings {
    fn default() -> Self {
        DpoSettings { beta: 0.1 }
    }
}

/// LoRA hyper-parameters (PEFT's `LoraConfig` names in the JSON of the adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank r of A (r, in) and B (out, r). Default 16.
    pub rank: usize,
    /// Scale numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA). Default 32.
    pub alpha: f32,
    /// Dropout on the LoRA path's input during training. Default 0.05.
    pub dropout: f32,
    /// Adapted projections. Default: all seven linear layers (q, k, v, o, gate, up, down).
    pub target_modules: Vec<LoraTarget>,
    /// Rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, 2023). Default false.
    pub use_rslora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: LoraTarget::ALL.to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraSettings {
    pub fn to_lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.rank,
            lora_alpha: self.alpha,
            lora_dropout: self.dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: self.use_rslora,
        }
    }
}

/// How the matrix products of training multiply (mixed precision as PyTorch's bf16 autocast:
/// norms, RoPE, softmax, losses, LoRA A/B, master weights and AdamW state stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    /// bf16 where the CPU has bf16 units (AMX-BF16, AVX512-BF16), else f32.
    #[default]
    Auto,
    /// f32 operands and sums everywhere.
    F32,
    /// bf16 operands, f32 sums; on a CPU without bf16 units the rounded operands are multiplied
    /// in f32 (the same numbers, at f32 speed).
    Bf16,
}

impl PrecisionSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            PrecisionSetting::Auto => "auto",
            PrecisionSetting::F32 => "f32",
            PrecisionSetting::Bf16 => "bf16",
        }
    }

    /// The precision this setting means on this machine (its bf16 kernel is chosen once per
    /// process: [`Bf16Kernel::detect`]).
    pub fn resolve(self) -> Precision {
        let kernel = Bf16Kernel::detect();
        match self {
            PrecisionSetting::Auto if kernel.is_native() => Precision::Bf16(kernel),
            PrecisionSetting::Auto | PrecisionSetting::F32 => Precision::F32,
            PrecisionSetting::Bf16 => Precision::Bf16(kernel),
        }
    }
}

/// How examples are grouped into micro-batches (one forward + backward each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// This many examples per micro-batch, packed into one sequence without padding.
    Examples(usize),
    /// As many whole examples as fit in this many tokens (at least one).
    Tokens(usize),
}

/// Every setting of a run. `Default` gives the documented defaults; only `model_dir`,
/// `train_file` and `out_dir` have no meaningful default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Hugging Face model directory (config.json, safetensors, tokenizer files).
    pub model_dir: PathBuf,
    /// Training data: OpenAI chat JSONL (`{"messages": [...]}` per line), or for `objective`
    /// `dpo` OpenAI's preference JSONL (`{"input": ..., "preferred_output": ...,
    /// "non_preferred_output": ...}` per line).
    pub train_file: PathBuf,
    /// Validation data in the same format. When absent, see `validation_fraction`.
    pub validation_file: Option<PathBuf>,
    /// Share of the training examples held out for validation when there is no `validation_file`.
    /// Default (None): hold out 5% (at least 2, at most 256) when there are at least 50 examples,
    /// nothing otherwise. `Some(0.0)` trains on everything.
    pub validation_fraction: Option<f32>,
    /// Checkpoints, `metrics.jsonl` and `train_config.json` are written here.
    pub out_dir: PathBuf,
    /// `sft` (default) or `dpo`.
    pub objective: Objective,
    /// Used when `objective` is `dpo`.
    pub dpo: DpoSettings,
    /// `lora` (default) or `full`.
    pub method: Method,
    /// Used when `method` is `lora`.
    pub lora: LoraSettings,
    /// LoRA: start from this PEFT adapter directory instead of a fresh adapter (its own rank,
    /// alpha, dropout and target modules then replace `lora`). With DPO it is also the reference
    /// (DPO after an SFT adapter).
    pub init_adapter: Option<PathBuf>,
    /// Passes over the training data. Default 3.
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs`; the data repeats as needed).
    pub max_steps: Option<usize>,
    /// Peak learning rate. Default (None): SFT the model's recommendation, else 1e-4 for LoRA and
    /// 1e-5 for full fine-tuning; DPO 5e-6 for LoRA (LLaMA-Factory's LoRA DPO example), 1e-6 for
    /// full (TRL's `DPOConfig`). See [`default_learning_rate`].
    pub learning_rate: Option<f32>,
    /// `linear`, `cosine` (default) or `constant`, each after the warmup (transformers' schedules).
    pub lr_schedule: ScheduleKind,
    /// Warmup as a share of all steps. Default 0.03. Ignored when `warmup_steps` is set.
    pub warmup_ratio: f32,
    /// Warmup length in steps.
    pub warmup_steps: Option<usize>,
    /// AdamW decoupled weight decay. Default 0.01. Never applied to norms and biases.
    pub weight_decay: f32,
    /// AdamW β1, β2, ε. Default 0.9, 0.999, 1e-8 (PyTorch).
    pub adam_beta1: f32,
    pub adam_beta2: f32,
    pub adam_eps: f32,
    /// Clip the global gradient norm to this value. Default 1.0; None disables clipping.
    pub max_grad_norm: Option<f32>,
    /// Micro-batch size. Default: 1 example.
    pub batch_size: BatchSize,
    /// Micro-batches per optimizer step. Default 8, i.e. an effective batch of 8 examples.
    pub gradient_accumulation_steps: usize,
    /// Longest example, in tokens. Default 2048.
    pub max_seq_len: usize,
    /// What happens to longer examples: `drop` (default, as `tuna data check` reports) or `truncate`
    /// (the server's jobs truncate, as OpenAI does).
    pub length_policy: LengthPolicy,
    /// Seeds the split, the shuffle of every epoch, LoRA initialisation and dropout. Default 42.
    pub seed: u64,
    /// Evaluate on the validation set every this many steps. Default (None): at every checkpoint.
    pub eval_every: Option<usize>,
    /// Write a checkpoint every this many steps. Default (None): at the end of every epoch.
    /// A checkpoint is always written at the end of training.
    pub save_every: Option<usize>,
    /// Keep only the newest this many checkpoints (older `checkpoint-*` directories are deleted).
    pub save_total_limit: Option<usize>,
    /// Recompute activations in backward instead of keeping them (less memory, ~30% slower).
    pub recompute_activations: bool,
    /// `auto` (default: bf16 matrix products where the CPU has bf16 units, else f32), `f32` or
    /// `bf16`. Full fine-tuning keeps f32 master weights either way.
    pub precision: PrecisionSetting,
    /// Held-out conversations answered (greedy) at every checkpoint, to see the effect. Default 1.
    pub sample_prompts: usize,
    /// Longest sample answer in tokens. Default 64.
    pub sample_max_tokens: usize,
    /// Continue from the newest checkpoint in `out_dir` (or `resume_from`), with its optimizer state.
    pub resume: bool,
    /// Continue from this checkpoint directory.
    pub resume_from: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model_dir: PathBuf::new(),
            train_file: PathBuf::new(),
            validation_file: None,
            validation_fraction: None,
            out_dir: PathBuf::new(),
            objective: Objective::Sft,
            dpo: DpoSettings::default(),
            method: Method::Lora,
            lora: LoraSettings::default(),
            init_adapter: None,
            epochs: 3,
            max_steps: None,
            learning_rate: None,
            lr_schedule: ScheduleKind::Cosine,
            warmup_ratio: 0.03,
            warmup_steps: None,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: Some(1.0),
            batch_size: BatchSize::Examples(1),
            gradient_accumulation_steps: 8,
            max_seq_len: 2048,
            length_policy: LengthPolicy::Drop,
            seed: 42,
            eval_every: None,
            save_every: None,
            save_total_limit: None,
            recompute_activations: false,
            precision: PrecisionSetting::Auto,
            sample_prompts: 1,
            sample_max_tokens: 64,
            resume: false,
            resume_from: None,
        }
    }
}

/// The learning rate of a run that sets none. SFT: the model directory's recommendation for the
/// method (`tuna_defaults.json`, see [`TrainingDefaults`]), else [`generic_learning_rate`]. DPO
/// always takes the generic value: a model's recommendation is for supervised fine-tuning.
pub fn default_learning_rate(
    model_dir: &Path,
    method: Method,
    objective: Objective,
) -> Result<f32> {
    let generic = generic_learning_rate(objective, method);
    if objective != Objective::Sft {
        return Ok(generic);
    }
    let d = TrainingDefaults::from_model_dir(model_dir)?;
    Ok(match method {
        Method::Lora => d.lora_learning_rate,
        Method::Full => d.full_learning_rate,
    }
    .unwrap_or(generic))
}

/// The usual learning rates for models of 0.5B parameters and up: SFT 1e-4 (LoRA) and 1e-5 (full),
/// as transformers / LLaMA-Factory use; DPO 5e-6 (LoRA) and 1e-6 (full).
pub fn generic_learning_rate(objective: Objective, method: Method) -> f32 {
    match (objective, method) {
        (Objective::Sft, Method::Lora) => 1e-4,
        (Objective::Sft, Method::Full) => 1e-5,
        (Objective::Dpo, Method::Lora) => 5e-6,
        (Objective::Dpo, Method::Full) => 1e-6,
    }
}

/// Examples held out by default: 5% of the data, at least 2 and at most 256, once there are 50.
pub fn default_validation_count(n: usize) -> usize {
    if n < 50 { 0 } else { (n / 20).clamp(2, 256) }
}

impl TrainConfig {
    /// The learning rate after the generic defaults ([`crate::Trainer`] first fills in the
    /// model's recommendation, [`default_learning_rate`]).
    pub fn lr(&self) -> f32 {
        self.learning_rate
            .unwrap_or_else(|| generic_learning_rate(self.objective, self.method))
    }

    /// Rejects settings that have no meaning, quoting the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.model_dir.as_os_str().is_empty() {
            return bad("`model_dir` is required".into());
        }
        if self.train_file.as_os_str().is_empty() {
            return bad("`train_file` is required".into());
        }
        if self.out_dir.as_os_str().is_empty() {
            return bad("`out_dir` is required".into());
        }
        if self.method == Method::Lora {
            let l = &self.lora;
            if l.rank == 0 {
                return bad("`lora.rank` must be at least 1".into());
            }
            if !(l.alpha.is_finite() && l.alpha > 0.0) {
                return bad(format!("`lora.alpha` must be > 0, got {}", l.alpha));
            }
            if !(0.0..1.0).contains(&l.dropout) {
                return bad(format!(
                    "`lora.dropout` must be in [0, 1), got {}",
                    l.dropout
                ));
            }
            if l.target_modules.is_empty() {
                return bad("`lora.target_modules` must name at least one projection".into());
            }
        }
        if self.objective == Objective::Dpo && !(self.dpo.beta.is_finite() && self.dpo.beta > 0.0) {
            return bad(format!("`dpo.beta` must be > 0, got {}", self.dpo.beta));
        }
        if self.method == Method::Full && self.init_adapter.is_some() {
            return bad("`init_adapter` needs `method` lora".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("`epochs` must be at least 1 (or set `max_steps`)".into());
        }
        if self.max_steps == Some(0) {
            return bad("`max_steps` must be at least 1".into());
        }
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!("`learning_rate` must be > 0, got {lr}"));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "`warmup_ratio` must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "`weight_decay` must be >= 0, got {}",
                self.weight_decay
            ));
        }
        for (name, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("`{name}` must be in [0, 1), got {b}"));
            }
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return bad(format!("`adam_eps` must be > 0, got {}", self.adam_eps));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return bad(format!(
                "`max_grad_norm` must be > 0 (or null to disable clipping), got {n}"
            ));
        }
        match self.batch_size {
            BatchSize::Examples(0) => return bad("`batch_size.examples` must be at least 1".into()),
            BatchSize::Tokens(t) if t < self.max_seq_len => {
                return bad(format!(
                    "`batch_size.tokens` ({t}) must be at least `max_seq_len` ({}) so that every example fits",
                    self.max_seq_len
                ));
            }
            _ => {}
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("`gradient_accumulation_steps` must be at least 1".into());
        }
        if self.max_seq_len < 2 {
            return bad("`max_seq_len` must be at least 2".into());
        }
        if let Some(f) = self.validation_fraction
            && !(0.0..1.0).contains(&f)
        {
            return bad(format!("`validation_fraction` must be in [0, 1), got {f}"));
        }
        for (name, v) in [
            ("eval_every", self.eval_every),
            ("save_every", self.save_every),
            ("save_total_limit", self.save_total_limit),
        ] {
            if v == Some(0) {
                return bad(format!("`{name}` must be at least 1 (or null)"));
            }
        }
        if self.sample_prompts > 0 && self.sample_max_tokens == 0 {
            return bad("`sample_max_tokens` must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> TrainConfig {
        TrainConfig {
            model_dir: "m".into(),
            train_file: "t.jsonl".into(),
            out_dir: "o".into(),
            ..TrainConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid_and_round_trip_through_json() {
        let c = minimal();
        c.validate().unwrap();
        assert_eq!(c.lr(), 1e-4);
        assert_eq!(
            TrainConfig {
                method: Method::Full,
                ..minimal()
            }
            .lr(),
            1e-5
        );
        let json = serde_json::to_string(&c).unwrap();
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // A file that names only what it changes gets the defaults for the rest.
        let partial: TrainConfig =
            serde_json::from_str(r#"{"model_dir": "m", "train_file": "t", "out_dir": "o", "batch_size": {"tokens": 4096}}"#)
                .unwrap();
        assert_eq!(partial.batch_size, BatchSize::Tokens(4096));
        assert_eq!(partial.precision, PrecisionSetting::Auto);
        let bf16: TrainConfig = serde_json::from_str(
            r#"{"model_dir": "m", "train_file": "t", "out_dir": "o", "precision": "bf16"}"#,
        )
        .unwrap();
        assert_eq!(bf16.precision, PrecisionSetting::Bf16);
        assert!(serde_json::from_str::<TrainConfig>(r#"{"precision": "fp8"}"#).is_err());
        assert_eq!(partial.lora.target_modules.len(), 7);
        assert!(serde_json::from_str::<TrainConfig>(r#"{"learning_rat": 1}"#).is_err());
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let cases = [
            TrainConfig {
                gradient_accumulation_steps: 0,
                ..minimal()
            },
            TrainConfig {
                batch_size: BatchSize::Tokens(16),
                ..minimal()
            },
            TrainConfig {
                learning_rate: Some(-1.0),
                ..minimal()
            },
            TrainConfig {
                max_grad_norm: Some(0.0),
                ..minimal()
            },
            TrainConfig {
                lora: LoraSettings {
                    rank: 0,
                    ..LoraSettings::default()
                },
                ..minimal()
            },
            TrainConfig {
                validation_fraction: Some(1.5),
                ..minimal()
            },
        ];
        let fields = [
            "gradient_accumulation_steps",
            "batch_size.tokens",
            "learning_rate",
            "max_grad_norm",
            "lora.rank",
            "validation_fraction",
        ];
        for (c, field) in cases.iter().zip(fields) {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn a_model_directory_can_recommend_its_learning_rates() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            default_learning_rate(dir.path(), Method::Lora, Objective::Sft).unwrap(),
            1e-4
        );
        assert_eq!(
            default_learning_rate(dir.path(), Method::Full, Objective::Sft).unwrap(),
            1e-5
        );
        let file = dir.path().join(TrainingDefaults::FILE);
        std::fs::write(&file, r#"{"lora_learning_rate": 0.003}"#).unwrap();
        assert_eq!(
            default_learning_rate(dir.path(), Method::Lora, Objective::Sft).unwrap(),
            3e-3
        );
        assert_eq!(
            default_learning_rate(dir.path(), Method::Full, Objective::Sft).unwrap(),
            1e-5
        );
        for bad in [
            r#"{"lora_learning_rate": 0}"#,
            r#"{"lora_learnin_rate": 1e-3}"#,
            "{",
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = default_learning_rate(dir.path(), Method::Lora, Objective::Sft)
                .unwrap_err()
                .to_string();
            assert!(e.contains("tuna_defaults.json"), "{e}");
        }
    }

    #[test]
    fn precision_settings_resolve_on_this_machine() {
        let kernel = Bf16Kernel::detect();
        assert_eq!(PrecisionSetting::F32.resolve(), Precision::F32);
        assert_eq!(PrecisionSetting::Bf16.resolve(), Precision::Bf16(kernel));
        let auto = PrecisionSetting::Auto.resolve();
        if kernel.is_native() {
            assert_eq!(auto, Precision::Bf16(kernel));
        } else {
            assert_eq!(auto, Precision::F32);
        }
    }

    #[test]
    fn default_validation_holds_out_a_few_examples() {
        assert_eq!(default_validation_count(10), 0);
        assert_eq!(default_validation_count(91), 4);
        assert_eq!(default_validation_count(50), 2);
        assert_eq!(default_validation_count(1_000_000), 256);
    }
}
