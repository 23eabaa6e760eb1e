//! `config.json` and `generation_config.json` of Hugging Face Qwen2 / Qwen3 checkpoints.
//!
//! Field names mirror the JSON exactly (candle's `Config`). Everything a model needs is
//! resolved into [`QwenConfig`] at load; unsupported settings are errors, never silently ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which of the two supported architectures a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Qwen2 / Qwen2.5: biases on q/k/v projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm on queries and keys (`q_norm`, `k_norm`), explicit `head_dim`.
    Qwen3,
}

/// `config.json` as Hugging Face writes it for `Qwen2ForCausalLM` / `Qwen3ForCausalLM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    /// Newer transformers nest `rope_theta` (and the scaling type) here.
    pub rope_parameters: Option<serde_json::Value>,
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub hidden_act: Option<String>,
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
}

/// The resolved architecture parameters every kernel call needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QwenConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (always for Qwen2, `attention_bias` for Qwen3).
    pub qkv_bias: bool,
    /// Bias on o_proj (Qwen3 with `attention_bias`).
    pub o_bias: bool,
    pub qk_norm: bool,
}

impl QwenConfig {
    /// Reads and resolves `dir/config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let hf: HfConfig = read_json(&path)?;
        Self::from_hf(&hf, &path)
    }

    pub fn from_hf(hf: &HfConfig, path: &Path) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        let invalid = |reason: String| Error::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        let architecture = match hf.model_type.as_str() {
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => {
                return Err(unsupported(format!(
                    "model_type `{other}` (architectures {:?}); Tuna supports qwen2 (Qwen2/Qwen2.5) and qwen3",
                    hf.architectures
                )));
            }
        };
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return Err(unsupported(format!(
                "hidden_act `{act}`; only `silu` is supported"
            )));
        }
        if hf.use_sliding_window {
            return Err(unsupported(
                "use_sliding_window=true (sliding-window attention)".into(),
            ));
        }
        let rope_theta = resolve_rope_theta(hf).map_err(&unsupported)?;
        let num_heads = hf.num_attention_heads;
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads={num_heads} must be a positive multiple of num_key_value_heads={num_kv_heads}"
            )));
        }
        let head_dim = match hf.head_dim {
            Some(d) => d,
            None if hf.hidden_size.is_multiple_of(num_heads) => hf.hidden_size / num_heads,
            None => {
                return Err(invalid(format!(
                    "hidden_size={} is not divisible by num_attention_heads={num_heads} and head_dim is not given",
                    hf.hidden_size
                )));
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "head_dim={head_dim} must be even for rotary embeddings"
            )));
        }
        for (name, v) in [
            ("vocab_size", hf.vocab_size),
            ("hidden_size", hf.hidden_size),
            ("intermediate_size", hf.intermediate_size),
            ("num_hidden_layers", hf.num_hidden_layers),
            ("max_position_embeddings", hf.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(invalid(format!("{name} must be positive")));
            }
        }
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias, qk_norm) = match architecture {
            Architecture::Qwen2 => (true, false, false),
            Architecture::Qwen3 => (attention_bias, attention_bias, true),
        };
        Ok(QwenConfig {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: hf.max_position_embeddings,
            rms_norm_eps: hf.rms_norm_eps as f32,
            rope_theta,
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias,
            o_bias,
            qk_norm,
        })
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let (c, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_heads * hd;
        let kv = self.num_kv_heads * hd;
        let mut layer = c * q + 2 * c * kv + q * c + 3 * c * i + 2 * c;
        if self.qkv_bias {
            layer += q + 2 * kv;
        }
        if self.o_bias {
            layer += c;
        }
        if self.qk_norm {
            layer += 2 * hd;
        }
        let embed = self.vocab_size * c;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + c + self.num_layers * layer
    }
}

fn resolve_rope_theta(hf: &HfConfig) -> std::result::Result<f64, String> {
    for scaling in [&hf.rope_scaling, &hf.rope_parameters]
        .into_iter()
        .flatten()
    {
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|t| t.as_str());
        if let Some(kind) = kind
            && kind != "default"
        {
            return Err(format!(
                "rope scaling type `{kind}` (only the default rotary embedding is supported)"
            ));
        }
    }
    if let Some(theta) = hf.rope_theta {
        return Ok(theta);
    }
    if let Some(theta) = hf
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("rope_theta"))
        .and_then(|t| t.as_f64())
    {
        return Ok(theta);
    }
    Err("no rope_theta at the top level or in rope_parameters".into())
}

/// `generation_config.json`: the model's sampling defaults and end-of-sequence ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`; a missing file means "no defaults".
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        read_json(&path)
    }
}

/// `tuna_defaults.json`: training settings a model directory recommends for itself, used where a
/// run leaves them unset. Generic defaults suit the usual model sizes; a model far from them
/// (Tuna's tiny demo model) says what suits it, as `generation_config.json` does for sampling.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingDefaults {
    /// Peak learning rate for LoRA.
    #[serde(default)]
    pub lora_learning_rate: Option<f32>,
    /// Peak learning rate for full fine-tuning.
    #[serde(default)]
    pub full_learning_rate: Option<f32>,
    /// Why, for people reading the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl TrainingDefaults {
    pub const FILE: &str = "tuna_defaults.json";

    /// Reads `dir/tuna_defaults.json`; a missing file recommends nothing.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(Self::default());
        }
        let d: Self = read_json(&path)?;
        for (name, v) in [
            ("lora_learning_rate", d.lora_learning_rate),
            ("full_learning_rate", d.full_learning_rate),
        ] {
            if let Some(lr) = v
                && !(lr.is_finite() && lr > 0.0 && lr <= 1.0)
            {
                return Err(Error::InvalidConfig {
                    path: path.clone(),
                    reason: format!("`{name}` must be in (0, 1], got {lr}"),
                });
            }
        }
        Ok(d)
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.parent().unwrap_or(path).to_path_buf(),
                file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(json: serde_json::Value) -> HfConfig {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "model_type": "qwen3", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": true, "head_dim": 32
        })
    }

    #[test]
    fn resolves_rope_theta_from_rope_parameters() {
        let mut j = base();
        j.as_object_mut().unwrap().remove("rope_theta");
        j["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 5e5});
        let c = QwenConfig::from_hf(&hf(j), Path::new("config.json")).unwrap();
        assert_eq!(c.rope_theta, 5e5);
        assert_eq!(c.head_dim, 32);
    }

    #[test]
    fn derives_head_dim_and_rejects_unsupported_settings() {
        let mut j = base();
        j.as_object_mut().unwrap().remove("head_dim");
        j["model_type"] = "qwen2".into();
        let c = QwenConfig::from_hf(&hf(j.clone()), Path::new("c")).unwrap();
        assert_eq!((c.head_dim, c.qkv_bias, c.qk_norm), (16, true, false));

        j["use_sliding_window"] = true.into();
        let err = QwenConfig::from_hf(&hf(j.clone()), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sliding"), "{err}");

        j["use_sliding_window"] = false.into();
        j["model_type"] = "llama".into();
        let err = QwenConfig::from_hf(&hf(j.clone()), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("llama"), "{err}");

        j["model_type"] = "qwen2".into();
        j["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        let err = QwenConfig::from_hf(&hf(j), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn counts_parameters_of_real_qwen_shapes() {
        // Qwen2.5-0.5B: 494,032,768 parameters (tied), as the model card states.
        let j = serde_json::json!({
            "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
            "tie_word_embeddings": true
        });
        let c = QwenConfig::from_hf(&hf(j), Path::new("c")).unwrap();
        assert_eq!(c.num_parameters(), 494_032_768);
    }

    #[test]
    fn generation_config_accepts_one_or_many_eos() {
        let g: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": 5}"#).unwrap();
        assert_eq!(g.eos_token_id, vec![5]);
        let g: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": [5, 7], "top_k": 20}"#).unwrap();
        assert_eq!((g.eos_token_id, g.top_k), (vec![5, 7], Some(20)));
    }
}
