//! The built-in demo model: a deterministic tiny random-weight Qwen3 with the real Qwen3
//! tokenizer and chat template, so every feature runs on a fresh machine without downloads.
//!
//! Shape (see DESIGN.md "The demo model"): the real 151,936-token vocabulary, hidden 128,
//! 2 layers. Its weights are random, so it answers with noise until it is fine-tuned; full
//! fine-tuning on `identity.jsonl` teaches it to introduce itself.

use std::path::{Path, PathBuf};

use tuna_engine::DType;

use crate::config::{Architecture, QwenConfig};
use crate::error::{Error, Result};
use crate::qwen::QwenModel;

/// The name that stands for the demo model wherever a model is expected.
pub const DEMO_MODEL_NAME: &str = "demo";
/// Bumped whenever the demo's weights or files change, so stale copies are rebuilt.
const DEMO_VERSION: &str = "1";
const SEED: u64 = 20_241_125;

const TOKENIZER_JSON: &[u8] = include_bytes!("../../../assets/qwen3/tokenizer.json");
const TOKENIZER_CONFIG_JSON: &[u8] = include_bytes!("../../../assets/qwen3/tokenizer_config.json");
const QWEN_LICENSE: &[u8] = include_bytes!("../../../assets/LICENSE");

pub fn demo_config() -> QwenConfig {
    QwenConfig {
        architecture: Architecture::Qwen3,
        vocab_size: 151_936,
        hidden_size: 128,
        intermediate_size: 384,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        qk_norm: true,
    }
}

fn config_json(cfg: &QwenConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_layers,
        "model_type": "qwen3",
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": null,
        "rope_theta": cfg.rope_theta,
        "sliding_window": null,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": cfg.vocab_size,
        "tuna_demo_version": DEMO_VERSION,
    })
}

fn generation_config_json() -> serde_json::Value {
    // Qwen3's recommended non-thinking sampling settings.
    serde_json::json!({
        "bos_token_id": 151643,
        "do_sample": true,
        "eos_token_id": [151645, 151643],
        "pad_token_id": 151643,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    })
}

/// Writes the demo model directory into `root/demo-v<version>` unless it is already complete,
/// and returns its path. Safe to call from several processes at once (written aside, then renamed).
pub fn ensure_demo_model(root: &Path) -> Result<PathBuf> {
    let dir = root.join(format!("demo-v{DEMO_VERSION}"));
    if dir.join("model.safetensors").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let tmp = root.join(format!(".demo-v{DEMO_VERSION}-{}", std::process::id()));
    write_demo_model(&tmp)?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished first: use its copy.
        Err(_) if dir.join("model.safetensors").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::io(&dir, e)),
    }
}

/// Writes the complete demo model directory to `dir`.
pub fn write_demo_model(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = demo_config();
    let model = QwenModel::random(cfg.clone(), DType::F32, 0.02, SEED);
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).map_err(|e| Error::io(dir.join(name), e))
    };
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    write("config.json", &pretty(&config_json(&cfg)))?;
    write("generation_config.json", &pretty(&generation_config_json()))?;
    write("tokenizer.json", TOKENIZER_JSON)?;
    write("tokenizer_config.json", TOKENIZER_CONFIG_JSON)?;
    write("LICENSE", QWEN_LICENSE)?;
    write(
        "README.md",
        b"# Tuna demo model\n\nRandom weights (seeded), Qwen3 architecture, the real Qwen3 tokenizer and chat template\n(Apache-2.0, Alibaba Cloud / the Qwen team; see LICENSE). Made by `tuna` on first use.\n",
    )?;
    save_model_weights(&model, &dir.join("model.safetensors"))
}

/// Saves every tensor of `model` under its Hugging Face name.
pub fn save_model_weights(model: &QwenModel, path: &Path) -> Result<()> {
    let named = model.named_tensors();
    let refs: Vec<(String, &crate::tensor::Tensor)> =
        named.iter().map(|(n, t)| (n.clone(), t)).collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    crate::safetensors::save_tensors(path, &refs, Some(meta))
}
