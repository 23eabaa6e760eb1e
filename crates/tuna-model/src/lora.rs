//! LoRA adapters (Hu et al., 2021, <https://arxiv.org/abs/2106.09685>) in PEFT's layout.
//!
//! A frozen linear `y = x·Wᵀ` gains `scale · (x·Aᵀ)·Bᵀ` with `A (r, in)`, `B (out, r)` and
//! `scale = alpha / r` (`alpha / sqrt(r)` with rsLoRA). A starts Kaiming-uniform and B at zero,
//! so step 0 equals the base model. Files are PEFT's: `adapter_config.json` +
//! `adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight`.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use tuna_engine::ops::matmul::{skinny_a_bt, skinny_at_b, skinny_update};

use crate::config::QwenConfig;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The seven linear layers of a Qwen decoder layer, in PEFT's `target_modules` spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::QProj,
        LoraTarget::KProj,
        LoraTarget::VProj,
        LoraTarget::OProj,
        LoraTarget::GateProj,
        LoraTarget::UpProj,
        LoraTarget::DownProj,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::QProj => "q_proj",
            LoraTarget::KProj => "k_proj",
            LoraTarget::VProj => "v_proj",
            LoraTarget::OProj => "o_proj",
            LoraTarget::GateProj => "gate_proj",
            LoraTarget::UpProj => "up_proj",
            LoraTarget::DownProj => "down_proj",
        }
    }

    /// The module path inside a decoder layer (`self_attn.q_proj`, `mlp.gate_proj`).
    pub fn module_path(self) -> &'static str {
        match self {
            LoraTarget::QProj => "self_attn.q_proj",
            LoraTarget::KProj => "self_attn.k_proj",
            LoraTarget::VProj => "self_attn.v_proj",
            LoraTarget::OProj => "self_attn.o_proj",
            LoraTarget::GateProj => "mlp.gate_proj",
            LoraTarget::UpProj => "mlp.up_proj",
            LoraTarget::DownProj => "mlp.down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<LoraTarget> {
        LoraTarget::ALL.into_iter().find(|t| t.name() == name)
    }

    /// (in_features, out_features) of this linear layer.
    pub fn dims(self, cfg: &QwenConfig) -> (usize, usize) {
        let q = cfg.num_heads * cfg.head_dim;
        let kv = cfg.num_kv_heads * cfg.head_dim;
        match self {
            LoraTarget::QProj => (cfg.hidden_size, q),
            LoraTarget::KProj | LoraTarget::VProj => (cfg.hidden_size, kv),
            LoraTarget::OProj => (q, cfg.hidden_size),
            LoraTarget::GateProj | LoraTarget::UpProj => (cfg.hidden_size, cfg.intermediate_size),
            LoraTarget::DownProj => (cfg.intermediate_size, cfg.hidden_size),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the checkpoint has a bias for this linear layer (Qwen2's q/k/v; `attention_bias`).
    pub fn has_bias(self, cfg: &QwenConfig) -> bool {
        match self {
            LoraTarget::QProj | LoraTarget::KProj | LoraTarget::VProj => cfg.qkv_bias,
            LoraTarget::OProj => cfg.o_bias,
            LoraTarget::GateProj | LoraTarget::UpProj | LoraTarget::DownProj => false,
        }
    }
}

/// Hyperparameters of an adapter, as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    pub target_modules: Vec<LoraTarget>,
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: LoraTarget::ALL.to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f32).sqrt()
        } else {
            self.lora_alpha / self.r as f32
        }
    }
}

/// One adapted linear layer: `a (r, in)`, `b (out, r)`, in f32 always.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraLinear {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f32,
}

/// What one LoRA branch keeps for its backward.
#[derive(Debug, Clone, Default)]
pub struct LoraActs {
    /// Dropout multipliers (0 or 1/(1−p)) the branch input was multiplied by, when dropout is on.
    keep: Option<Vec<f32>>,
    /// `dropout(x) · Aᵀ` (bt, r), unscaled.
    u: Vec<f32>,
}

impl LoraLinear {
    /// The LoRA branch of a linear layer, for generation and training alike:
    /// `out (bt, out) += scale · (dropout(x) · Aᵀ) · Bᵀ` with x (bt, in), where dropout multiplies
    /// x by `keep` (see [`dropout_keep`]; None at inference). Returns what [`Self::backward`] needs.
    ///
    /// Its products are f32 at every precision, through the engine's rank-r kernels (`skinny_*`):
    /// they are a small share of the work, and a bf16 kernel would spend more on packing the wide
    /// operand than it saves.
    pub fn forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        keep: Option<Vec<f32>>,
        bt: usize,
    ) -> LoraActs {
        let (r, i, o) = (self.rank, self.in_features, self.out_features);
        let dropped: Vec<f32>;
        let x_in = match &keep {
            Some(k) => {
                dropped = x.iter().zip(k).map(|(a, b)| a * b).collect();
                &dropped[..]
            }
            None => x,
        };
        // u (bt, r) = dropout(x) (bt, i) · Aᵀ
        let mut u = vec![0.0; bt * r];
        skinny_a_bt(&mut u, x_in, &self.a, bt, i, r);
        // out (bt, o) += (scale · u) (bt, r) · Bᵀ (r, o)
        let us: Vec<f32> = u.iter().map(|v| v * self.scale).collect();
        skinny_update(out, &us, &self.b_transposed(), bt, r, o);
        LoraActs { keep, u }
    }

    /// Backward of [`Self::forward`] given dy (bt, out) and the branch input x (bt, in).
    /// Accumulates dx (bt, in), da (r, in) and db (out, r).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dx: &mut [f32],
        da: &mut [f32],
        db: &mut [f32],
        dy: &[f32],
        x: &[f32],
        acts: &LoraActs,
        bt: usize,
    ) {
        let (r, i, o, s) = (self.rank, self.in_features, self.out_features, self.scale);
        // dBᵀ (r, o) += (s · u)ᵀ (r, bt) · dy (bt, o); dB is stored (o, r)
        let us: Vec<f32> = acts.u.iter().map(|v| v * s).collect();
        skinny_at_b(db, (1, r), &us, dy, bt, r, o);
        // du (bt, r) = s · dy (bt, o) · B (o, r)
        let mut du = vec![0.0; bt * r];
        skinny_a_bt(&mut du, dy, &self.b_transposed(), bt, o, r);
        du.iter_mut().for_each(|v| *v *= s);
        // dA (r, i) += duᵀ (r, bt) · dropout(x) (bt, i); dx += (du · A) ⊙ keep
        match &acts.keep {
            None => {
                skinny_at_b(da, (i, 1), &du, x, bt, r, i);
                skinny_update(dx, &du, &self.a, bt, r, i);
            }
            Some(keep) => {
                let dropped: Vec<f32> = x.iter().zip(keep).map(|(a, b)| a * b).collect();
                skinny_at_b(da, (i, 1), &du, &dropped, bt, r, i);
                let mut dxd = vec![0.0; bt * i];
                skinny_update(&mut dxd, &du, &self.a, bt, r, i);
                dx.iter_mut()
                    .zip(dxd.iter().zip(keep))
                    .for_each(|(d, (g, k))| *d += g * k);
            }
        }
    }

    /// Bᵀ (r, out), row-major.
    fn b_transposed(&self) -> Vec<f32> {
        let (r, o) = (self.rank, self.out_features);
        let mut bt = vec![0.0; r * o];
        for (row, b) in self.b.chunks_exact(r).enumerate() {
            for (j, &v) in b.iter().enumerate() {
                bt[j * o + row] = v;
            }
        }
        bt
    }
}

/// LoRA dropout multipliers for the `n` inputs of `target` in `layer`: 0 with probability `p`, else
/// `1/(1−p)` (inverted dropout, as `torch.nn.Dropout`), from a stream seeded by `seed` and the
/// layer, so every branch draws its own mask and a replayed step draws the same ones.
pub fn dropout_keep(p: f32, seed: u64, layer: usize, target: LoraTarget, n: usize) -> Vec<f32> {
    let seed =
        seed ^ ((layer as u64) << 8 | target.index() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = StdRng::seed_from_u64(seed);
    let kept = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { kept })
        .collect()
}

/// An adapter over every layer of a model: `layers[l][target.index()]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    pub layers: Vec<[Option<LoraLinear>; 7]>,
}

/// `adapter_config.json` fields Tuna reads and writes (PEFT writes many more; they are kept on read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfigFile {
    pub r: usize,
    pub lora_alpha: f32,
    #[serde(default)]
    pub lora_dropout: f32,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub peft_type: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: Option<bool>,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(flatten)]
    pub rest: HashMap<String, serde_json::Value>,
}

/// PEFT's tensor name for one LoRA matrix (`which` is "lora_A" or "lora_B").
pub fn peft_tensor_name(layer: usize, target: LoraTarget, which: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{which}.weight",
        target.module_path()
    )
}

impl LoraAdapter {
    /// A fresh adapter: A Kaiming-uniform (PEFT's `kaiming_uniform_(a=sqrt(5))`, i.e. bound 1/sqrt(in)), B zero.
    pub fn new_random(cfg: &QwenConfig, lora: &LoraConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let scale = lora.scale();
        let layers = (0..cfg.num_layers)
            .map(|_| {
                std::array::from_fn(|t| {
                    let target = LoraTarget::ALL[t];
                    if !lora.target_modules.contains(&target) {
                        return None;
                    }
                    let (i, o) = target.dims(cfg);
                    let bound = 1.0 / (i as f32).sqrt();
                    let a = (0..lora.r * i)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect();
                    Some(LoraLinear {
                        a,
                        b: vec![0.0; o * lora.r],
                        rank: lora.r,
                        in_features: i,
                        out_features: o,
                        scale,
                    })
                })
            })
            .collect();
        LoraAdapter {
            config: lora.clone(),
            layers,
        }
    }

    pub fn get(&self, layer: usize, target: LoraTarget) -> Option<&LoraLinear> {
        self.layers
            .get(layer)
            .and_then(|l| l[target.index()].as_ref())
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|l| l.a.len() + l.b.len())
            .sum()
    }

    /// Loads a PEFT adapter directory for a model of config `cfg`.
    pub fn load(dir: &Path, cfg: &QwenConfig) -> Result<Self> {
        let err = |reason: String| Error::Adapter {
            path: dir.to_path_buf(),
            reason,
        };
        let file: PeftConfigFile = crate::config::read_json(&dir.join("adapter_config.json"))?;
        if let Some(t) = &file.peft_type
            && t != "LORA"
        {
            return Err(err(format!("peft_type `{t}` is not LORA")));
        }
        if file.fan_in_fan_out == Some(true) {
            return Err(err("fan_in_fan_out=true is not supported".into()));
        }
        let target_modules = parse_targets(&file.target_modules).map_err(&err)?;
        let config = LoraConfig {
            r: file.r,
            lora_alpha: file.lora_alpha,
            lora_dropout: file.lora_dropout,
            target_modules,
            use_rslora: file.use_rslora,
        };
        let weights = crate::safetensors::WeightFiles::open_files(
            dir,
            &[dir.join("adapter_model.safetensors")],
        )?;
        let scale = config.scale();
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for layer in 0..cfg.num_layers {
            let mut slots: [Option<LoraLinear>; 7] = Default::default();
            for target in &config.target_modules {
                let (i, o) = target.dims(cfg);
                let a_name = peft_tensor_name(layer, *target, "lora_A");
                let b_name = peft_tensor_name(layer, *target, "lora_B");
                if !weights.contains(&a_name) && !weights.contains(&b_name) {
                    continue; // layers_to_transform may skip layers
                }
                let a = weights.get_f32(&a_name, &[config.r, i])?;
                let b = weights.get_f32(&b_name, &[o, config.r])?;
                slots[target.index()] = Some(LoraLinear {
                    a,
                    b,
                    rank: config.r,
                    in_features: i,
                    out_features: o,
                    scale,
                });
            }
            layers.push(slots);
        }
        let adapter = LoraAdapter { config, layers };
        if adapter.num_parameters() == 0 {
            return Err(err(
                "no LoRA tensors for this model's layers were found".into()
            ));
        }
        Ok(adapter)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` exactly as PEFT lays them out.
    pub fn save(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut targets: Vec<&str> = self
            .config
            .target_modules
            .iter()
            .map(|t| t.name())
            .collect();
        targets.sort();
        let config = serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": json_number(self.config.lora_alpha),
            "lora_dropout": self.config.lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.config.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.config.use_rslora,
        });
        let path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        let mut tensors = Vec::new();
        for (l, slots) in self.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Some(lin) = &slots[target.index()] {
                    tensors.push((
                        peft_tensor_name(l, target, "lora_A"),
                        Tensor::from_f32(vec![lin.rank, lin.in_features], lin.a.clone()),
                    ));
                    tensors.push((
                        peft_tensor_name(l, target, "lora_B"),
                        Tensor::from_f32(vec![lin.out_features, lin.rank], lin.b.clone()),
                    ));
                }
            }
        }
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        crate::safetensors::save_tensors(&dir.join("adapter_model.safetensors"), &refs, Some(meta))
    }
}

/// PEFT writes integral hyperparameters as JSON integers (`8`, not `8.0`); match it exactly.
fn json_number(x: f32) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 1e9 {
        serde_json::json!(x as i64)
    } else {
        serde_json::json!(x)
    }
}

fn parse_targets(value: &serde_json::Value) -> std::result::Result<Vec<LoraTarget>, String> {
    let names: Vec<String> = match value {
        serde_json::Value::String(s) if s == "all-linear" => {
            return Ok(LoraTarget::ALL.to_vec());
        }
        serde_json::Value::String(s) => {
            return Err(format!(
                "target_modules regex `{s}` is not supported; list module names"
            ));
        }
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        other => {
            return Err(format!(
                "target_modules must be a list of names, got {other}"
            ));
        }
    };
    let mut targets = Vec::new();
    for n in names {
        let t = LoraTarget::parse(&n)
            .ok_or_else(|| format!("target module `{n}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"))?;
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    targets.sort_by_key(|t| t.index());
    Ok(targets)
}
