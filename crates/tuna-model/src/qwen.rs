//! Qwen2 / Qwen2.5 and Qwen3 decoder-only transformers (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`).
//!
//! One file for both: they differ only in q/k/v biases (Qwen2) versus per-head `q_norm`/`k_norm`
//! and an explicit `head_dim` (Qwen3), so a flag per difference is clearer than two copies.
//! Reference: transformers `models/qwen2/modeling_qwen2.py`, `models/qwen3/modeling_qwen3.py`.
//! Weights stay in their checkpoint dtype. Matrix products run at the model's [`Precision`]: f32
//! (the default), or bf16 operands with f32 sums (`set_precision`, mixed precision as PyTorch
//! autocast does it: norms, RoPE, attention's softmax, losses and LoRA stay f32). Generation uses
//! it for prefill only: a one-token decode step is a memory-bound GEMV that reads the weights as
//! stored, where bf16 operands would save nothing and cost accuracy. Not supported:
//! sliding-window attention, rope scaling, MoE variants.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use tuna_engine::ops::matmul::Precision;
use tuna_engine::ops::{attention, embedding, matmul, residual, rmsnorm, rope, swiglu};
use tuna_engine::{DType, WeightRef};

use crate::config::{Architecture, QwenConfig};
use crate::error::{Error, Result};
use crate::lora::{LoraAdapter, LoraTarget};
use crate::safetensors::{Prefix, WeightFiles};
use crate::tensor::Tensor;

/// A frozen (or fully trained) linear layer: `weight (out, in)` and an optional bias.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    fn load(
        w: &WeightFiles,
        p: &Prefix,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = w.get(&p.name("weight"), &[out_features, in_features])?;
        let bias = if bias {
            Some(w.get_f32(&p.name("bias"), &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            in_features,
            out_features,
        })
    }

    /// out (bt, out) = inp (bt, in) · Wᵀ + b, the product at `precision`.
    pub fn forward(&self, out: &mut [f32], inp: &[f32], bt: usize, precision: Precision) {
        matmul::matmul_forward(
            out,
            inp,
            self.weight.weight(),
            self.bias.as_deref(),
            bt,
            self.in_features,
            self.out_features,
            precision,
        );
    }
}

/// One decoder layer, fields named as the checkpoint names them.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: Vec<f32>,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attention_layernorm: Vec<f32>,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl DecoderLayer {
    pub fn linear(&self, target: LoraTarget) -> &Linear {
        match target {
            LoraTarget::QProj => &self.q_proj,
            LoraTarget::KProj => &self.k_proj,
            LoraTarget::VProj => &self.v_proj,
            LoraTarget::OProj => &self.o_proj,
            LoraTarget::GateProj => &self.gate_proj,
            LoraTarget::UpProj => &self.up_proj,
            LoraTarget::DownProj => &self.down_proj,
        }
    }

    pub fn linear_mut(&mut self, target: LoraTarget) -> &mut Linear {
        match target {
            LoraTarget::QProj => &mut self.q_proj,
            LoraTarget::KProj => &mut self.k_proj,
            LoraTarget::VProj => &mut self.v_proj,
            LoraTarget::OProj => &mut self.o_proj,
            LoraTarget::GateProj => &mut self.gate_proj,
            LoraTarget::UpProj => &mut self.up_proj,
            LoraTarget::DownProj => &mut self.down_proj,
        }
    }
}

/// The whole causal LM.
#[derive(Debug, Clone)]
pub struct QwenModel {
    pub config: QwenConfig,
    /// (vocab, hidden)
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Vec<f32>,
    /// (vocab, hidden); `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// How the matrix products multiply (prefill, training passes); f32 unless set.
    /// One-token passes always run at f32 (see the module docs and [`Self::pass_precision`]).
    pub precision: Precision,
}

impl QwenModel {
    /// Loads `config.json` and the safetensors weights of a Hugging Face model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = QwenConfig::from_model_dir(dir)?;
        let weights = WeightFiles::open_model_dir(dir)?;
        Self::from_weights(config, &weights)
    }

    pub fn from_weights(config: QwenConfig, w: &WeightFiles) -> Result<Self> {
        let cfg = &config;
        let (c, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv, i) = (
            cfg.num_heads * hd,
            cfg.num_kv_heads * hd,
            cfg.intermediate_size,
        );
        let model = Prefix::root().pp("model");
        let embed_tokens = w.get(
            &model.pp("embed_tokens").name("weight"),
            &[cfg.vocab_size, c],
        )?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = model.pp("layers").pp(l);
            let attn = p.pp("self_attn");
            let mlp = p.pp("mlp");
            let qk_norm = |name: &str| -> Result<Option<Vec<f32>>> {
                if cfg.qk_norm {
                    Ok(Some(w.get_f32(&attn.pp(name).name("weight"), &[hd])?))
                } else {
                    Ok(None)
                }
            };
            layers.push(DecoderLayer {
                input_layernorm: w.get_f32(&p.pp("input_layernorm").name("weight"), &[c])?,
                q_proj: Linear::load(w, &attn.pp("q_proj"), c, q, cfg.qkv_bias)?,
                k_proj: Linear::load(w, &attn.pp("k_proj"), c, kv, cfg.qkv_bias)?,
                v_proj: Linear::load(w, &attn.pp("v_proj"), c, kv, cfg.qkv_bias)?,
                o_proj: Linear::load(w, &attn.pp("o_proj"), q, c, cfg.o_bias)?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                post_attention_layernorm: w
                    .get_f32(&p.pp("post_attention_layernorm").name("weight"), &[c])?,
                gate_proj: Linear::load(w, &mlp.pp("gate_proj"), c, i, false)?,
                up_proj: Linear::load(w, &mlp.pp("up_proj"), c, i, false)?,
                down_proj: Linear::load(w, &mlp.pp("down_proj"), i, c, false)?,
            });
        }
        let norm = w.get_f32(&model.pp("norm").name("weight"), &[c])?;
        // Tied checkpoints may still carry a copy of `lm_head.weight`; the config decides.
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(w.get("lm_head.weight", &[cfg.vocab_size, c])?)
        };
        Ok(QwenModel {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            precision: Precision::F32,
        })
    }

    /// A model of `config` with seeded random weights stored as `dtype` (benchmarks, the demo model).
    /// Weights ~ N(0, std) (approximated by a uniform of equal variance), norms 1, biases 0.
    pub fn random(config: QwenConfig, dtype: DType, std: f32, seed: u64) -> Self {
        let cfg = &config;
        let (c, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv, i) = (
            cfg.num_heads * hd,
            cfg.num_kv_heads * hd,
            cfg.intermediate_size,
        );
        let mut seeds = StdRng::seed_from_u64(seed);
        let mut next_seed = move || seeds.random::<u64>();
        let tensor =
            |rows: usize, cols: usize, seed: u64| random_tensor(rows, cols, dtype, std, seed);
        let linear = |i: usize, o: usize, bias: bool, seed: u64| Linear {
            weight: tensor(o, i, seed),
            bias: bias.then(|| vec![0.0; o]),
            in_features: i,
            out_features: o,
        };
        let embed_tokens = tensor(cfg.vocab_size, c, next_seed());
        let layers = (0..cfg.num_layers)
            .map(|_| DecoderLayer {
                input_layernorm: vec![1.0; c],
                q_proj: linear(c, q, cfg.qkv_bias, next_seed()),
                k_proj: linear(c, kv, cfg.qkv_bias, next_seed()),
                v_proj: linear(c, kv, cfg.qkv_bias, next_seed()),
                o_proj: linear(q, c, cfg.o_bias, next_seed()),
                q_norm: cfg.qk_norm.then(|| vec![1.0; hd]),
                k_norm: cfg.qk_norm.then(|| vec![1.0; hd]),
                post_attention_layernorm: vec![1.0; c],
                gate_proj: linear(c, i, false, next_seed()),
                up_proj: linear(c, i, false, next_seed()),
                down_proj: linear(i, c, false, next_seed()),
            })
            .collect();
        let lm_head = (!cfg.tie_word_embeddings).then(|| tensor(cfg.vocab_size, c, next_seed()));
        QwenModel {
            config,
            embed_tokens,
            layers,
            norm: vec![1.0; c],
            lm_head,
            precision: Precision::F32,
        }
    }

    /// Sets how the matrix products multiply from now on (see the module docs).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The precision of an inference pass over `rows` rows: the model's, except for one row (a
    /// decode step, or the last position's logits), which reads the weights as stored in f32.
    pub fn pass_precision(&self, rows: usize) -> Precision {
        if rows == 1 {
            Precision::F32
        } else {
            self.precision
        }
    }

    /// The LM head matrix (vocab, hidden): `lm_head` or the tied embedding.
    pub fn lm_head_weight(&self) -> WeightRef<'_> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens).weight()
    }

    /// Every tensor under its Hugging Face name, for saving a full checkpoint.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let model = Prefix::root().pp("model");
        let vec_t = |v: &Vec<f32>| Tensor::from_f32(vec![v.len()], v.clone());
        out.push((
            model.pp("embed_tokens").name("weight"),
            self.embed_tokens.clone(),
        ));
        for (l, layer) in self.layers.iter().enumerate() {
            let p = model.pp("layers").pp(l);
            out.push((
                p.pp("input_layernorm").name("weight"),
                vec_t(&layer.input_layernorm),
            ));
            out.push((
                p.pp("post_attention_layernorm").name("weight"),
                vec_t(&layer.post_attention_layernorm),
            ));
            if let Some(n) = &layer.q_norm {
                out.push((p.pp("self_attn").pp("q_norm").name("weight"), vec_t(n)));
            }
            if let Some(n) = &layer.k_norm {
                out.push((p.pp("self_attn").pp("k_norm").name("weight"), vec_t(n)));
            }
            for target in LoraTarget::ALL {
                let lin = layer.linear(target);
                let lp = p.name(target.module_path());
                out.push((format!("{lp}.weight"), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{lp}.bias"), vec_t(b)));
                }
            }
        }
        out.push((model.pp("norm").name("weight"), vec_t(&self.norm)));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h.clone()));
        }
        out
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            Some(&id) => Err(Error::TokenOutOfRange {
                id,
                vocab_size: self.config.vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Runs `tokens` (the next tokens after what `cache` holds) through the model, appends their keys
    /// and values to the cache, and returns the logits (vocab) of the last token.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<f32>> {
        let hidden = self.forward_hidden(tokens, cache, adapter)?;
        let c = self.config.hidden_size;
        let last = &hidden[hidden.len() - c..];
        let mut logits = vec![0.0; self.config.vocab_size];
        matmul::matmul_forward(
            &mut logits,
            last,
            self.lm_head_weight(),
            None,
            1,
            c,
            self.config.vocab_size,
            self.pass_precision(1),
        );
        Ok(logits)
    }

    /// Logits (t, vocab) of every position of `tokens`, from an empty cache (parity tests, evaluation).
    pub fn forward_all_logits(
        &self,
        tokens: &[u32],
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<f32>> {
        let mut cache = KvCache::new(&self.config, tokens.len());
        let hidden = self.forward_hidden(tokens, &mut cache, adapter)?;
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        let mut logits = vec![0.0; tokens.len() * v];
        matmul::matmul_forward(
            &mut logits,
            &hidden,
            self.lm_head_weight(),
            None,
            tokens.len(),
            c,
            v,
            self.pass_precision(tokens.len()),
        );
        Ok(logits)
    }

    /// Final-norm hidden states (t, hidden) of `tokens`, appending to `cache`.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        self.check_ids(tokens)?;
        let bt = tokens.len();
        let past = cache.len;
        if past + bt > cache.capacity {
            cache.grow(past + bt, cfg.max_position_embeddings)?;
        }
        let (c, hd, nh, nkv, im) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let positions: Vec<u32> = (past..past + bt).map(|p| p as u32).collect();
        cache.rope.ensure(past + bt);

        let mut x = vec![0.0; bt * c];
        embedding::embedding_forward(&mut x, tokens, self.embed_tokens.weight(), c);
        let mut h = vec![0.0; bt * c];
        let mut rstd = vec![0.0; bt * nh.max(1)];
        let mut q = vec![0.0; bt * q_dim];
        let mut q_normed = vec![0.0; bt * q_dim];
        let mut k = vec![0.0; bt * kv_dim];
        let mut v = vec![0.0; bt * kv_dim];
        let mut att = vec![0.0; bt * q_dim];
        let mut o = vec![0.0; bt * c];
        let mut gate = vec![0.0; bt * im];
        let mut up = vec![0.0; bt * im];
        let mut act = vec![0.0; bt * im];

        let precision = self.pass_precision(bt);
        let linear = |l: usize, target: LoraTarget, out: &mut [f32], inp: &[f32]| {
            let layer = &self.layers[l];
            layer.linear(target).forward(out, inp, bt, precision);
            if let Some(lora) = adapter.and_then(|a| a.get(l, target)) {
                lora.forward(out, inp, None, bt);
            }
        };

        for (l, layer) in self.layers.iter().enumerate() {
            rmsnorm::rmsnorm_forward(
                &mut h,
                &mut rstd[..bt],
                &x,
                &layer.input_layernorm,
                bt,
                c,
                cfg.rms_norm_eps,
            );
            linear(l, LoraTarget::QProj, &mut q, &h);
            linear(l, LoraTarget::KProj, &mut k, &h);
            linear(l, LoraTarget::VProj, &mut v, &h);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                rmsnorm::rmsnorm_forward(
                    &mut q_normed,
                    &mut rstd[..bt * nh],
                    &q,
                    qn,
                    bt * nh,
                    hd,
                    cfg.rms_norm_eps,
                );
                std::mem::swap(&mut q, &mut q_normed);
                let mut k_normed = vec![0.0; bt * kv_dim];
                rmsnorm::rmsnorm_forward(
                    &mut k_normed,
                    &mut rstd[..bt * nkv],
                    &k,
                    kn,
                    bt * nkv,
                    hd,
                    cfg.rms_norm_eps,
                );
                k = k_normed;
            }
            rope::rope_forward(&mut q, &positions, &cache.rope, nh, hd);
            rope::rope_forward(&mut k, &positions, &cache.rope, nkv, hd);
            let (k_cache, v_cache) = cache.layer_mut(l);
            k_cache[past * kv_dim..(past + bt) * kv_dim].copy_from_slice(&k);
            v_cache[past * kv_dim..(past + bt) * kv_dim].copy_from_slice(&v);
            let total = past + bt;
            let (k_cache, v_cache) = cache.layer(l);
            attention::attention_cached(
                &mut att,
                &q,
                &k_cache[..total * kv_dim],
                &v_cache[..total * kv_dim],
                bt,
                total,
                nh,
                nkv,
                hd,
            );
            linear(l, LoraTarget::OProj, &mut o, &att);
            residual::residual_forward(&mut x, &o);

            rmsnorm::rmsnorm_forward(
                &mut h,
                &mut rstd[..bt],
                &x,
                &layer.post_attention_layernorm,
                bt,
                c,
                cfg.rms_norm_eps,
            );
            linear(l, LoraTarget::GateProj, &mut gate, &h);
            linear(l, LoraTarget::UpProj, &mut up, &h);
            swiglu::swiglu_forward(&mut act, &gate, &up);
            linear(l, LoraTarget::DownProj, &mut o, &act);
            residual::residual_forward(&mut x, &o);
        }
        cache.len = past + bt;
        rmsnorm::rmsnorm_forward(
            &mut h,
            &mut rstd[..bt],
            &x,
            &self.norm,
            bt,
            c,
            cfg.rms_norm_eps,
        );
        Ok(h)
    }

    pub fn architecture(&self) -> Architecture {
        self.config.architecture
    }
}

fn random_tensor(rows: usize, cols: usize, dtype: DType, std: f32, seed: u64) -> Tensor {
    // Uniform(-a, a) has std a/sqrt(3).
    let a = std * 3f32.sqrt();
    let chunk = 1 << 16;
    // Each chunk draws its f32 values from its own stream and stores them in `dtype` directly, so
    // a half-precision model never holds an f32 copy (peak memory of the benchmarks).
    fn fill<T: Send>(
        data: &mut [T],
        chunk: usize,
        seed: u64,
        a: f32,
        cast: impl Fn(f32) -> T + Sync,
    ) {
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, part)| {
                let mut rng =
                    StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                part.iter_mut()
                    .for_each(|x| *x = cast(rng.random_range(-a..a)));
            });
    }
    let shape = vec![rows, cols];
    match dtype {
        DType::F32 => {
            let mut data = vec![0.0f32; rows * cols];
            fill(&mut data, chunk, seed, a, |x| x);
            Tensor::from_f32(shape, data)
        }
        DType::BF16 => {
            let mut data = vec![half::bf16::ZERO; rows * cols];
            fill(&mut data, chunk, seed, a, half::bf16::from_f32);
            Tensor::from_bf16(shape, data)
        }
        DType::F16 => {
            let mut data = vec![0.0f32; rows * cols];
            fill(&mut data, chunk, seed, a, |x| x);
            Tensor::from_f32(shape, data).to_dtype(dtype)
        }
    }
}

/// Keys and values of every layer for the tokens seen so far, plus the rotary table.
pub struct KvCache {
    /// Per layer: keys and values, each (capacity, nkv, hd).
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
    rope: rope::RopeTable,
}

impl KvCache {
    pub fn new(cfg: &QwenConfig, capacity: usize) -> Self {
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let capacity = capacity.max(1);
        KvCache {
            layers: (0..cfg.num_layers)
                .map(|_| (vec![0.0; capacity * kv_dim], vec![0.0; capacity * kv_dim]))
                .collect(),
            len: 0,
            capacity,
            kv_dim,
            rope: rope::RopeTable::new(cfg.head_dim, cfg.rope_theta, capacity),
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token (the buffers are kept for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops the tokens after the first `len` (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn grow(&mut self, needed: usize, max: usize) -> Result<()> {
        if needed > max {
            return Err(Error::ContextOverflow { len: needed, max });
        }
        let capacity = (needed.max(self.capacity * 2)).min(max);
        for (k, v) in &mut self.layers {
            k.resize(capacity * self.kv_dim, 0.0);
            v.resize(capacity * self.kv_dim, 0.0);
        }
        self.capacity = capacity;
        Ok(())
    }

    fn layer_mut(&mut self, l: usize) -> (&mut [f32], &mut [f32]) {
        let (k, v) = &mut self.layers[l];
        (k, v)
    }

    fn layer(&self, l: usize) -> (&[f32], &[f32]) {
        let (k, v) = &self.layers[l];
        (k, v)
    }
}
