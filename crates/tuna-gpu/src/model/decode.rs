//! Generation on a device: [`GpuDecoder`] is `tuna_model`'s [`Decoder`] over a [`GpuModel`], with
//! the key/value cache in device memory. The prompt is prefilled in one pass, then each step runs
//! one token; only the last row's logits are computed and read back, and the sampling stays on
//! the host (`tuna_model::generate_on`), so greedy and seeded sampling pick the CPU's tokens
//! from the same logits.
//!
//! A LoRA adapter runs as its own branch (`y += s·(x·Aᵀ)·Bᵀ`, the training kernel), not merged
//! into the weights: the base weights stay as uploaded and shared with nothing else to undo, and
//! the arithmetic is the CPU's `tuna chat --adapter` path, which also adds the branch.

use std::borrow::Borrow;

use tuna_engine::ops::rope::RopeTable;
use tuna_model::generate::Decoder;
use tuna_model::lora::{LoraAdapter, LoraTarget};
use tuna_model::{Error, QwenConfig, QwenModel};

use super::{AnyGpuModel, Buf, GpuModel, gpu_err, upload_to};
use crate::Runtime;
use crate::ops::attention_cached::{attention_cached, kv_append};
use crate::ops::elementwise::residual_forward;
use crate::ops::embedding::embedding_forward;
use crate::ops::lora::lora_forward;
use crate::ops::matmul::matmul_forward;
use crate::ops::rmsnorm::rmsnorm_forward;
use crate::ops::rope::{GpuRopeTable, rope_forward};
use crate::ops::swiglu::swiglu_forward;

/// A model on a device with a key/value cache there: one sequence at a time. The model is owned
/// (`tuna chat --device`) or borrowed from a training run (its checkpoint samples).
pub struct GpuDecoder<R: Runtime, M: Borrow<GpuModel<R>> = GpuModel<R>> {
    model: M,
    /// Per layer: keys and values, each (capacity, nkv, hd).
    cache: Vec<(Buf<R>, Buf<R>)>,
    rope: GpuRopeTable<R>,
    capacity: usize,
    len: usize,
}

impl<R: Runtime, M: Borrow<GpuModel<R>>> GpuDecoder<R, M> {
    /// Generation on `model` (weights and adapter already on the device).
    pub fn new(model: M) -> Self {
        let m = model.borrow();
        let rope = GpuRopeTable::upload(
            &m.gpu,
            &RopeTable::new(m.config.head_dim, m.config.rope_theta, 1),
        );
        GpuDecoder {
            model,
            cache: Vec::new(),
            rope,
            capacity: 0,
            len: 0,
        }
    }

    fn model(&self) -> &GpuModel<R> {
        self.model.borrow()
    }

    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// y (bt, out) = x · Wᵀ + b, plus the adapter's branch where it has one.
    fn linear(
        &self,
        layer: usize,
        target: LoraTarget,
        y: &Buf<R>,
        x: &Buf<R>,
        bt: usize,
    ) -> tuna_model::Result<()> {
        let m = self.model();
        let lin = m.base_linear_forward(layer, target, y, x, bt)?;
        if let Some(lora) = m.lora_of(layer, target) {
            let u = m.gpu.alloc(bt * lora.rank);
            let d = m.lora_dims(lin, lora, bt);
            lora_forward(&m.gpu, y, &u, x, None, &lora.a, &lora.b, d).map_err(gpu_err)?;
        }
        Ok(())
    }

    /// The final-norm hidden states (bt, hidden) of `tokens`, appending their keys and values.
    fn forward_hidden(&mut self, tokens: &[u32]) -> tuna_model::Result<Buf<R>> {
        let m = self.model.borrow();
        let cfg = &m.config;
        let gpu = &m.gpu;
        let (bt, past) = (tokens.len(), self.len);
        let (c, hd, nh, nkv, im, eps) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
            cfg.rms_norm_eps,
        );
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let ids = gpu.upload(tokens);
        let positions: Vec<u32> = (past..past + bt).map(|p| p as u32).collect();
        let positions = gpu.upload(&positions);

        let x: Buf<R> = gpu.alloc(bt * c);
        embedding_forward(gpu, &x, &ids, &m.embed_tokens, c);
        let h = gpu.alloc(bt * c);
        let rstd = gpu.alloc(bt);
        let q = gpu.alloc(bt * q_dim);
        let k = gpu.alloc(bt * kv_dim);
        let v = gpu.alloc(bt * kv_dim);
        let att = gpu.alloc(bt * q_dim);
        let o = gpu.alloc(bt * c);
        let gate = gpu.alloc(bt * im);
        let up = gpu.alloc(bt * im);
        let act = gpu.alloc(bt * im);
        // Qwen3's per-head norms write beside their input (an op never reads and writes one buffer).
        let qk_norm = cfg.qk_norm.then(|| {
            (
                gpu.alloc::<f32>(bt * q_dim),
                gpu.alloc::<f32>(bt * kv_dim),
                gpu.alloc::<f32>(bt * nh),
                gpu.alloc::<f32>(bt * nkv),
            )
        });

        for (l, layer) in m.layers.iter().enumerate() {
            rmsnorm_forward(gpu, &h, &rstd, &x, &layer.input_layernorm, bt, c, eps);
            self.linear(l, LoraTarget::QProj, &q, &h, bt)?;
            self.linear(l, LoraTarget::KProj, &k, &h, bt)?;
            self.linear(l, LoraTarget::VProj, &v, &h, bt)?;
            let (q, k) = match (&qk_norm, &layer.q_norm, &layer.k_norm) {
                (Some((qn_out, kn_out, q_rstd, k_rstd)), Some(qn), Some(kn)) => {
                    rmsnorm_forward(gpu, qn_out, q_rstd, &q, qn, bt * nh, hd, eps);
                    rmsnorm_forward(gpu, kn_out, k_rstd, &k, kn, bt * nkv, hd, eps);
                    (qn_out, kn_out)
                }
                _ => (&q, &k),
            };
            rope_forward(gpu, q, &positions, &self.rope, nh, hd);
            rope_forward(gpu, k, &positions, &self.rope, nkv, hd);
            let (k_cache, v_cache) = &self.cache[l];
            kv_append(gpu, k_cache, k, past, kv_dim);
            kv_append(gpu, v_cache, &v, past, kv_dim);
            attention_cached(gpu, &att, q, k_cache, v_cache, past, bt, nh, nkv, hd);
            self.linear(l, LoraTarget::OProj, &o, &att, bt)?;
            residual_forward(gpu, &x, &o);

            rmsnorm_forward(
                gpu,
                &h,
                &rstd,
                &x,
                &layer.post_attention_layernorm,
                bt,
                c,
                eps,
            );
            self.linear(l, LoraTarget::GateProj, &gate, &h, bt)?;
            self.linear(l, LoraTarget::UpProj, &up, &h, bt)?;
            swiglu_forward(gpu, &act, &gate, &up);
            self.linear(l, LoraTarget::DownProj, &o, &act, bt)?;
            residual_forward(gpu, &x, &o);
        }
        rmsnorm_forward(gpu, &h, &rstd, &x, &m.norm, bt, c, eps);
        self.len = past + bt;
        Ok(h)
    }
}

impl<R: Runtime, M: Borrow<GpuModel<R>>> Decoder for GpuDecoder<R, M> {
    fn config(&self) -> &QwenConfig {
        &self.model().config
    }

    fn start(&mut self, capacity: usize) -> tuna_model::Result<()> {
        let cfg = &self.model.borrow().config;
        let max = cfg.max_position_embeddings;
        if capacity > max {
            return Err(Error::ContextOverflow { len: capacity, max });
        }
        let capacity = capacity.max(1);
        if capacity > self.capacity {
            let gpu = &self.model.borrow().gpu;
            let rows = capacity * cfg.num_kv_heads * cfg.head_dim;
            // The old cache is dropped first, so its memory is reused.
            self.cache.clear();
            self.cache = (0..cfg.num_layers)
                .map(|_| (gpu.alloc(rows), gpu.alloc(rows)))
                .collect();
            self.rope =
                GpuRopeTable::upload(gpu, &RopeTable::new(cfg.head_dim, cfg.rope_theta, capacity));
            self.capacity = capacity;
        }
        self.len = 0;
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> tuna_model::Result<Vec<f32>> {
        let (c, vocab) = (
            self.model().config.hidden_size,
            self.model().config.vocab_size,
        );
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: vocab,
            });
        }
        if tokens.is_empty() {
            return Err(Error::InvalidSampling("no tokens to run".into()));
        }
        let needed = self.len + tokens.len();
        if needed > self.capacity {
            return Err(Error::ContextOverflow {
                len: needed,
                max: self.capacity,
            });
        }
        let hidden = self.forward_hidden(tokens)?;
        let gpu = &self.model().gpu;
        // The last row only: the LM head is the largest product of a step.
        let last_row = gpu.upload(&[(tokens.len() - 1) as u32]);
        let last: Buf<R> = gpu.alloc(c);
        embedding_forward(gpu, &last, &last_row, &hidden, c);
        let logits = gpu.alloc(vocab);
        matmul_forward(gpu, &logits, &last, self.model().head(), None, 1, c, vocab)
            .map_err(gpu_err)?;
        gpu.download(&logits).map_err(gpu_err)
    }
}

/// Opens `gpu:index` and uploads `model` (and `adapter`) to it for generation.
pub fn gpu_decoder(
    index: usize,
    model: &QwenModel,
    adapter: Option<&LoraAdapter>,
) -> tuna_model::Result<(Box<dyn Decoder>, String)> {
    let (label, decoder): (String, Box<dyn Decoder>) = match upload_to(index, model, adapter)? {
        AnyGpuModel::Cuda(m) => (m.label.clone(), Box::new(GpuDecoder::new(m))),
        AnyGpuModel::Vulkan(m) => (m.label.clone(), Box::new(GpuDecoder::new(m))),
    };
    Ok((decoder, label))
}
