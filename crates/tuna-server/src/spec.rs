//! [`JobSpec`]: the one description of what a fine-tuning job was asked to do, after defaults and
//! `"auto"` were resolved. It is stored as the job's `spec` column, shown on the job object (its
//! `method` as OpenAI's `method`, its Tuna settings flattened into `tuna`), returned by estimates,
//! and turned into the trainer's config by the worker.
//!
//! A new setting is a field here plus its entry in `validate::settings::SETTINGS` (its limits,
//! default, `auto` rule and description); validation, the stored JSON, the wire objects and
//! `GET /v1/tuna/job_settings` all follow from those two.

use serde::{Deserialize, Serialize};
pub use tuna_train::PrecisionSetting;

/// Resolved hyperparameters of a supervised run, as recorded on the job (OpenAI's names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub n_epochs: i64,
    /// Examples per optimizer step.
    pub batch_size: i64,
    pub learning_rate_multiplier: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SupervisedSpec {
    pub hyperparameters: Hyperparameters,
}

/// Resolved hyperparameters of a preference (DPO) run: the supervised ones plus `beta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoHyperparameters {
    /// How far the trained policy may move from the reference (OpenAI's default 0.1).
    pub beta: f64,
    #[serde(flatten)]
    pub common: Hyperparameters,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoSpec {
    pub hyperparameters: DpoHyperparameters,
}

/// OpenAI's `method` object: `{"type": "supervised", "supervised": {"hyperparameters": {...}}}`
/// or `{"type": "dpo", "dpo": {"hyperparameters": {"beta", ...}}}`; each method has its own
/// object under its name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MethodSpec {
    Supervised { supervised: SupervisedSpec },
    Dpo { dpo: DpoSpec },
}

impl MethodSpec {
    /// `method.type` as the API spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            MethodSpec::Supervised { .. } => "supervised",
            MethodSpec::Dpo { .. } => "dpo",
        }
    }

    /// The DPO `beta`, for a preference run.
    pub fn dpo_beta(&self) -> Option<f64> {
        match self {
            MethodSpec::Supervised { .. } => None,
            MethodSpec::Dpo { dpo } => Some(dpo.hyperparameters.beta),
        }
    }
}

/// Which weights train: a LoRA adapter or every weight (`tuna.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tuning {
    Lora,
    Full,
}

impl Tuning {
    pub fn as_str(self) -> &'static str {
        match self {
            Tuning::Lora => "lora",
            Tuning::Full => "full",
        }
    }

    /// The learning rate a multiplier of 1 stands for (tuna-train's defaults).
    pub fn base_learning_rate(self) -> f64 {
        match self {
            Tuning::Lora => 1e-4,
            Tuning::Full => 1e-5,
        }
    }
}

/// `tuna.lora`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// Projection names (`q_proj`, ...), never `all-linear` (resolved to the list).
    pub target_modules: Vec<String>,
}

/// Tuna's settings of a job (the `tuna` object of the request, after defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunaSettings {
    /// A display name for the task.
    pub name: Option<String>,
    pub method: Tuning,
    /// Set exactly when `method` is `lora`.
    pub lora: Option<LoraSpec>,
    /// Longest example in tokens (longer ones are truncated); at most the model's context.
    pub max_seq_len: i64,
    /// A checkpoint every this many optimizer steps (`None`: at the end of every epoch).
    pub checkpoint_interval: Option<i64>,
    /// Validation every this many steps (`None`: at every checkpoint).
    pub eval_interval: Option<i64>,
    pub max_steps: Option<i64>,
    /// The peak learning rate the run uses.
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    /// `None`: the trainer's rule (5% once there are 50 examples).
    pub validation_fraction: Option<f64>,
    pub sample_prompts: i64,
    pub sample_max_tokens: i64,
    /// Keep only the newest this many checkpoints (`None`: all of them).
    #[serde(default)]
    pub keep_checkpoints: Option<i64>,
    /// How the matrix products multiply (`auto`: bf16 where the CPU has bf16 units).
    #[serde(default)]
    pub precision: PrecisionSetting,
    /// What kind of slot trains the job (`tuna.compute`).
    #[serde(default)]
    pub compute: Compute,
}

/// The kind of slot a job asks for (`tuna.compute`): a worker's CPU slot (`cpu:N`) or one of its
/// GPUs (`gpu:N`, one job per GPU). Stored beside the spec as the `jobs.compute` column, which
/// the claim matches against the slot's kind.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum Compute {
    #[default]
    Cpu,
    Gpu,
}

impl Compute {
    pub const ALL: [Compute; 2] = [Compute::Cpu, Compute::Gpu];

    pub fn as_str(self) -> &'static str {
        match self {
            Compute::Cpu => "cpu",
            Compute::Gpu => "gpu",
        }
    }

    /// The kind of a slot name (`gpu:0` → GPU); `None` for a name of no known kind.
    pub fn of_slot(slot: &str) -> Option<Compute> {
        match slot.split(':').next() {
            Some("cpu") => Some(Compute::Cpu),
            Some("gpu") => Some(Compute::Gpu),
            _ => None,
        }
    }
}

/// Everything a job was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub method: MethodSpec,
    pub tuna: TunaSettings,
}

impl JobSpec {
    /// The throughput-table row this job's speed is estimated from and measured into: `lora` or
    /// `full` for supervised runs, `lora+dpo` or `full+dpo` for preference runs, whose tokens
    /// cost more (both answers of a pair, and a reference pass) and must not skew SFT estimates.
    pub fn throughput_method(&self) -> String {
        match self.method {
            MethodSpec::Supervised { .. } => self.tuna.method.as_str().to_string(),
            MethodSpec::Dpo { .. } => format!("{}+dpo", self.tuna.method.as_str()),
        }
    }

    pub fn hyperparameters(&self) -> &Hyperparameters {
        match &self.method {
            MethodSpec::Supervised { supervised } => &supervised.hyperparameters,
            MethodSpec::Dpo { dpo } => &dpo.hyperparameters.common,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_json_keeps_openai_method_shape() {
        let spec = JobSpec {
            method: MethodSpec::Supervised {
                supervised: SupervisedSpec {
                    hyperparameters: Hyperparameters {
                        n_epochs: 2,
                        batch_size: 1,
                        learning_rate_multiplier: 1.0,
                    },
                },
            },
            tuna: TunaSettings {
                name: None,
                method: Tuning::Full,
                lora: None,
                max_seq_len: 64,
                checkpoint_interval: None,
                eval_interval: None,
                max_steps: Some(2),
                learning_rate: 1e-5,
                warmup_ratio: 0.0,
                validation_fraction: None,
                sample_prompts: 1,
                sample_max_tokens: 8,
                keep_checkpoints: None,
                precision: PrecisionSetting::Auto,
                compute: Compute::Cpu,
            },
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["method"]["type"], "supervised");
        assert_eq!(v["method"]["supervised"]["hyperparameters"]["n_epochs"], 2);
        assert_eq!(v["tuna"]["method"], "full");
        assert_eq!(serde_json::from_value::<JobSpec>(v).unwrap(), spec);
        // Rows written before `keep_checkpoints` existed still read.
        let mut old = serde_json::to_value(&spec).unwrap();
        old["tuna"]
            .as_object_mut()
            .unwrap()
            .remove("keep_checkpoints");
        old["tuna"].as_object_mut().unwrap().remove("precision");
        old["tuna"].as_object_mut().unwrap().remove("compute");
        let old = serde_json::from_value::<JobSpec>(old).unwrap();
        assert_eq!(old.tuna.precision, PrecisionSetting::Auto);
        assert_eq!(old.tuna.compute, Compute::Cpu);
        assert_eq!(Compute::of_slot("gpu:3"), Some(Compute::Gpu));
        assert_eq!(Compute::of_slot("cpu:0"), Some(Compute::Cpu));
        assert_eq!(Compute::of_slot("tpu:0"), None);

        // DPO keeps OpenAI's shape: the hyperparameters flat, `beta` among them.
        let hp = *spec.hyperparameters();
        let dpo = JobSpec {
            method: MethodSpec::Dpo {
                dpo: DpoSpec {
                    hyperparameters: DpoHyperparameters {
                        beta: 0.25,
                        common: hp,
                    },
                },
            },
            ..spec
        };
        let v = serde_json::to_value(&dpo).unwrap();
        assert_eq!(v["method"]["type"], "dpo");
        assert_eq!(v["method"]["dpo"]["hyperparameters"]["beta"], 0.25);
        assert_eq!(v["method"]["dpo"]["hyperparameters"]["n_epochs"], 2);
        assert_eq!(serde_json::from_value::<JobSpec>(v).unwrap(), dpo);
        assert_eq!(dpo.hyperparameters().n_epochs, 2);
        assert_eq!(
            (dpo.method.type_name(), dpo.method.dpo_beta()),
            ("dpo", Some(0.25))
        );
    }
}
