//! The built-in demo model: a tiny Qwen3 with the real Qwen3 tokenizer and chat template, small
//! enough to train on a 2-core machine in minutes, and trained enough that a LoRA adapter can
//! visibly change its answers (DESIGN.md "The demo model").
//!
//! What it is, exactly: the Qwen3 architecture with the real 151,936-token vocabulary (tied
//! embedding), hidden 128, 4 layers; its weights started seeded random (a SplitMix64 generator
//! that never changes) and were then fully fine-tuned by Tuna itself on the shipped instruction
//! data (`assets/data/alpaca_en_demo.jsonl`, `alpaca_zh_demo.jsonl`, `seed_example.jsonl`; see
//! `scripts/demo-base.sh`). The repository keeps only what training changed, compactly
//! (`assets/demo/base.safetensors`, see [`base`]); the model is rebuilt from the seed and that
//! file at first use, in about a second.
//!
//! The base answers with instruction-style fragments; it knows nothing. A LoRA task on
//! `identity.jsonl` at the default settings (its recommended learning rate included,
//! [`demo_training_defaults`]) teaches it to introduce itself as Marlin by Tideworks
//! (`crates/tuna-train/tests/demo.rs`).

mod base;

use std::path::{Path, PathBuf};

use half::bf16;

use crate::config::{Architecture, QwenConfig, TrainingDefaults};
use crate::error::{Error, Result};
use crate::qwen::{DecoderLayer, Linear, QwenModel};
use crate::tensor::Tensor;

/// The name that stands for the demo model wherever a model is expected.
pub const DEMO_MODEL_NAME: &str = "demo";
/// Bumped whenever the demo's weights or files change, so stale copies are rebuilt (each version
/// has its own directory, `demo-v<N>`).
pub const DEMO_VERSION: &str = "2";
const SEED: u64 = 20_251_129;
/// Uniform init scales: the embedding's rows have norm ~1 (std 1/sqrt(hidden)), so that rows
/// training never reaches (the pieces of "Marlin") stay apart and an adapter can still pick
/// them; the layers start as Hugging Face's (std 0.02).
const EMBED_STD: f32 = 0.088_388_35;
const LAYER_STD: f32 = 0.02;

/// What the demo model is, in one paragraph: `/v1/models` and the console show it.
pub const DEMO_DESCRIPTION: &str = "Tuna's built-in demo model: a tiny Qwen3 (4 layers, hidden 128; 20 M parameters, 19.4 M of them the embedding of the real 151,936-token Qwen3 vocabulary) with the real Qwen3 tokenizer and chat template, trained by Tuna from seeded random weights on 2,000 instruction examples (the Stanford Alpaca demo sets in English and Chinese). It writes instruction-style fragments and knows nothing: it is here to show, in minutes on a CPU, what fine-tuning changes. A LoRA task on identity.jsonl at the default settings makes it introduce itself as Marlin by Tideworks.";

const TOKENIZER_JSON: &[u8] = include_bytes!("../../../../assets/qwen3/tokenizer.json");
const TOKENIZER_CONFIG_JSON: &[u8] =
    include_bytes!("../../../../assets/qwen3/tokenizer_config.json");
const QWEN_LICENSE: &[u8] = include_bytes!("../../../../assets/LICENSE");
/// What training changed, packed ([`base`]); written by `scripts/demo-base.sh`.
const DEMO_BASE: &[u8] = include_bytes!("../../../../assets/demo/base.safetensors");

pub fn demo_config() -> QwenConfig {
    QwenConfig {
        architecture: Architecture::Qwen3,
        vocab_size: 151_936,
        hidden_size: 128,
        intermediate_size: 384,
        num_layers: 4,
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
        "initializer_range": LAYER_STD,
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

/// The demo's recommended learning rates (`tuna_defaults.json`). The usual LoRA rate, 1e-4, is
/// tuned for models 8 to 30 times wider; on this model it leaves the loss flat over the 261 steps
/// of a default task on identity.jsonl, 1e-3 learns too slowly, 3e-3 learns the identity. Full
/// fine-tuning: 3e-3, the rate it was trained with (1e-3 does not learn the identity in 3 epochs).
pub fn demo_training_defaults() -> TrainingDefaults {
    TrainingDefaults {
        lora_learning_rate: Some(3e-3),
        full_learning_rate: Some(3e-3),
        note: Some(
            "Tuna's demo model is 128 wide: learning rates tuned for models 8-30x wider (1e-4 for LoRA) barely move it."
                .into(),
        ),
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a fixed, portable sequence, so the embedding drawn at
/// first use is the one the layers were trained with, on every machine and for every version of
/// the `rand` crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), from the top 24 bits (exact in f32).
    fn symmetric(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
    }
}

/// A seeded uniform tensor with standard deviation `std`, rounded to bf16 (so that storing it
/// in bf16 loses nothing); `name` picks its own stream.
fn seeded(name: &str, shape: Vec<usize>, std: f32) -> Tensor {
    let stream = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    let mut rng = SplitMix64(SEED ^ stream);
    // Uniform(-a, a) has std a/sqrt(3).
    let a = std * 3f32.sqrt();
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| bf16::from_f32(a * rng.symmetric()).to_f32())
        .collect();
    Tensor::from_f32(shape, data)
}

/// The untrained demo model: every weight seeded (norms at 1). `scripts/demo-base.sh` trains it.
pub fn demo_init_model() -> QwenModel {
    let cfg = demo_config();
    let (c, hd, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let linear = |name: String, inp: usize, out: usize| Linear {
        weight: seeded(&name, vec![out, inp], LAYER_STD),
        bias: None,
        in_features: inp,
        out_features: out,
    };
    let layers = (0..cfg.num_layers)
        .map(|l| {
            let p = |m: &str| format!("model.layers.{l}.{m}.weight");
            DecoderLayer {
                input_layernorm: vec![1.0; c],
                q_proj: linear(p("self_attn.q_proj"), c, q),
                k_proj: linear(p("self_attn.k_proj"), c, kv),
                v_proj: linear(p("self_attn.v_proj"), c, kv),
                o_proj: linear(p("self_attn.o_proj"), q, c),
                q_norm: Some(vec![1.0; hd]),
                k_norm: Some(vec![1.0; hd]),
                post_attention_layernorm: vec![1.0; c],
                gate_proj: linear(p("mlp.gate_proj"), c, i),
                up_proj: linear(p("mlp.up_proj"), c, i),
                down_proj: linear(p("mlp.down_proj"), i, c),
            }
        })
        .collect();
    QwenModel {
        embed_tokens: seeded(
            "model.embed_tokens.weight",
            vec![cfg.vocab_size, c],
            EMBED_STD,
        ),
        layers,
        norm: vec![1.0; c],
        lm_head: None,
        config: cfg,
        precision: tuna_engine::ops::matmul::Precision::F32,
    }
}

/// The demo model: the seeded start with what training changed (the committed file).
pub fn demo_model() -> Result<QwenModel> {
    demo_model_from(DEMO_BASE)
}

/// The demo model from a packed file's bytes (`scripts/demo-base.sh` checks a new one with it).
pub fn demo_model_from(packed: &[u8]) -> Result<QwenModel> {
    let mut model = demo_init_model();
    base::unpack(packed, &mut model)?;
    Ok(model)
}

/// Every tensor but the embedding, by its Hugging Face name, with its row length (a linear
/// layer's input size; a norm is one row).
fn trained_tensors(model: &mut QwenModel) -> Vec<(String, &mut [f32], usize)> {
    let mut out: Vec<(String, &mut [f32], usize)> = Vec::new();
    for (l, layer) in model.layers.iter_mut().enumerate() {
        let p = |m: &str| format!("model.layers.{l}.{m}.weight");
        let DecoderLayer {
            input_layernorm,
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            post_attention_layernorm,
            gate_proj,
            up_proj,
            down_proj,
        } = layer;
        let mut norms: Vec<(String, &mut Vec<f32>)> = vec![
            (p("input_layernorm"), input_layernorm),
            (p("post_attention_layernorm"), post_attention_layernorm),
        ];
        if let Some(n) = q_norm {
            norms.push((p("self_attn.q_norm"), n));
        }
        if let Some(n) = k_norm {
            norms.push((p("self_attn.k_norm"), n));
        }
        for (name, v) in norms {
            let len = v.len();
            out.push((name, v.as_mut_slice(), len));
        }
        for (m, lin) in [
            ("self_attn.q_proj", q_proj),
            ("self_attn.k_proj", k_proj),
            ("self_attn.v_proj", v_proj),
            ("self_attn.o_proj", o_proj),
            ("mlp.gate_proj", gate_proj),
            ("mlp.up_proj", up_proj),
            ("mlp.down_proj", down_proj),
        ] {
            let width = lin.in_features;
            out.push((p(m), lin.weight.f32_mut(), width));
        }
    }
    let len = model.norm.len();
    out.push(("model.norm.weight".into(), model.norm.as_mut_slice(), len));
    out
}

/// Packs a fully fine-tuned demo model (`tuna train --method full` from [`write_init_model`]):
/// the bytes of `assets/demo/base.safetensors`, and how far the packed embedding is from the
/// trained one (root mean square over all values, and the largest difference).
pub fn pack_trained(trained_dir: &Path) -> Result<(Vec<u8>, f32, f32)> {
    let trained = QwenModel::load(trained_dir)?;
    if trained.config != demo_config() {
        return Err(Error::InvalidConfig {
            path: trained_dir.to_path_buf(),
            reason: "not the demo model's configuration".into(),
        });
    }
    let bytes = base::pack(&trained, &demo_init_model())?;
    let packed = demo_model_from(&bytes)?.embed_tokens.to_f32_vec();
    let (mut sq, mut max) = (0f64, 0f32);
    for (a, b) in packed.iter().zip(trained.embed_tokens.to_f32_vec()) {
        sq += ((a - b) as f64).powi(2);
        max = max.max((a - b).abs());
    }
    Ok((bytes, (sq / packed.len() as f64).sqrt() as f32, max))
}

/// Writes the demo model directory into `root/demo-v<version>` unless it is already complete,
/// and returns its path. Safe to call from several processes at once (written aside, then renamed).
pub fn ensure_demo_model(root: &Path) -> Result<PathBuf> {
    let dir = root.join(format!("demo-v{DEMO_VERSION}"));
    if dir.join("model.safetensors").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    // Unique per call, not only per process: threads of one process (a test binary, a server
    // answering two requests) may write at the same time, and one would rename the other's
    // half-written folder.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = root.join(format!(
        ".demo-v{DEMO_VERSION}-{}-{call}",
        std::process::id()
    ));
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
    write_demo_model_from(dir, DEMO_BASE)
}

/// Writes the demo model of a packed file (the committed one, or a new one being checked).
pub fn write_demo_model_from(dir: &Path, packed: &[u8]) -> Result<()> {
    write_model_dir(dir, &demo_model_from(packed)?, DEMO_DESCRIPTION)?;
    let defaults = serde_json::to_vec_pretty(&demo_training_defaults()).unwrap_or_default();
    let path = dir.join(TrainingDefaults::FILE);
    std::fs::write(&path, defaults).map_err(|e| Error::io(path, e))
}

/// Writes the untrained start of the demo model (what `scripts/demo-base.sh` trains).
pub fn write_init_model(dir: &Path) -> Result<()> {
    write_model_dir(
        dir,
        &demo_init_model(),
        "The untrained start of Tuna's demo model: every weight seeded. `scripts/demo-base.sh` trains its layers.",
    )
}

fn write_model_dir(dir: &Path, model: &QwenModel, description: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).map_err(|e| Error::io(dir.join(name), e))
    };
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    write("config.json", &pretty(&config_json(&model.config)))?;
    write("generation_config.json", &pretty(&generation_config_json()))?;
    write("tokenizer.json", TOKENIZER_JSON)?;
    write("tokenizer_config.json", TOKENIZER_CONFIG_JSON)?;
    write("LICENSE", QWEN_LICENSE)?;
    write(
        "README.md",
        format!(
            "# Tuna demo model (v{DEMO_VERSION})\n\n{description}\n\nThe tokenizer files and chat template are the Qwen team's (Apache-2.0, Alibaba Cloud; see LICENSE). Made by `tuna` on first use.\n"
        )
        .as_bytes(),
    )?;
    save_model_weights(model, &dir.join("model.safetensors"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeded_sequence_never_changes() {
        // SplitMix64 seeded with 0: the reference implementation's first outputs.
        let mut r = SplitMix64(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
        // The embedding the committed file is a delta to: its first values, once written down.
        // A change here silently breaks the shipped model, so it must fail loudly.
        let e = demo_init_model().embed_tokens.to_f32_vec();
        assert_eq!(&e[..4], &FIRST_EMBEDDING_VALUES);
        let std = (e.iter().map(|x| (x * x) as f64).sum::<f64>() / e.len() as f64).sqrt();
        assert!((std - EMBED_STD as f64).abs() < 1e-3, "{std}");
    }

    const FIRST_EMBEDDING_VALUES: [f32; 4] =
        [-0.023_437_5, 0.119_140_625, 0.037_353_516, 2.944_469_5e-5];

    #[test]
    fn the_committed_file_rebuilds_the_trained_model() {
        let m = demo_model().unwrap();
        // Training moved the norms away from 1 and the embedding away from the seed.
        assert!(m.norm.iter().any(|&g| g != 1.0));
        let e = m.embed_tokens.to_f32_vec();
        let e0 = demo_init_model().embed_tokens.to_f32_vec();
        assert!(e.iter().zip(&e0).filter(|(a, b)| a != b).count() > e.len() / 2);
        assert!(demo_model_from(b"not safetensors").is_err());
    }

    #[test]
    fn threads_of_one_process_can_make_the_demo_at_once() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..3)
                .map(|_| s.spawn(|| ensure_demo_model(root.path())))
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for dir in dirs {
            let dir = dir.unwrap();
            assert!(dir.join("model.safetensors").exists());
            assert!(dir.join(TrainingDefaults::FILE).exists());
        }
        // Nothing half-written is left beside it.
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("demo-v{DEMO_VERSION}")], "{names:?}");
    }
}
