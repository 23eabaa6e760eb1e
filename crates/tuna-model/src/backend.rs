//! The backend seam: the training pass ([`crate::train`]) is written once over [`Backend`], whose
//! ops have the CPU engine's signatures on the backend's own buffers. [`CpuBackend`] runs them on
//! the CPU engine over the model in memory; `tuna-gpu` implements the trait on device buffers.
//!
//! Dispatch is static and per op (the pass is generic over the backend), so the CPU path costs
//! what it cost before the seam. Weights are named by [`Param`] and linear layers by
//! `(layer, target)`: each backend holds its own copy (the CPU one borrows the model), so a device
//! uploads them once. [`TrainDevice`] is the object-safe face a trainer holds: one whole pass per
//! call, gradients accumulated on the device, and the optimizer step (global norm, clipping,
//! AdamW) run there too; the trainer copies the weights and moments back only to save them.

use tuna_engine::ops::adamw::AdamWConfig;
use tuna_engine::ops::{attention, embedding, lm_head_ce, matmul, residual, rmsnorm, rope, swiglu};

use crate::config::QwenConfig;
use crate::error::{Error, Result};
use crate::lora::{LoraActs, LoraAdapter, LoraTarget};
use crate::params::{Gradients, Param, ParamLayout};
use crate::qwen::QwenModel;
use crate::train::{BatchStats, TrainBatch, TrainOptions};

/// How the rows of the LM head's backward are weighted.
#[derive(Debug, Clone, Copy)]
pub enum RowScale<'w> {
    /// One factor for every row.
    Uniform(f32),
    /// A factor per labelled row (DPO).
    PerRow(&'w [f32]),
}

/// The ops of a training pass on one backend. Outputs come first (`&mut`), then what the
/// backward needs, inputs, then dims, as in `tuna_engine::ops`; backward ops accumulate into
/// their `d*` outputs (the LM head's `dhidden` excepted, which it overwrites).
pub trait Backend {
    /// An f32 buffer: activations and gradients.
    type Buf;
    /// Token ids or row indices.
    type Ids;
    /// A batch's per-pass data: ids, positions, rotary table and sequence bounds.
    type Batch;
    /// What a LoRA branch keeps for its backward.
    type LoraActs;

    fn config(&self) -> &QwenConfig;
    /// Whether `(layer, target)` has a LoRA branch.
    fn adapted(&self, layer: usize, target: LoraTarget) -> bool;
    /// The adapter's dropout probability (0 without an adapter).
    fn lora_dropout(&self) -> f32;
    /// Whether the LM head is tied to the embedding.
    fn tied_head(&self) -> bool;

    /// `max_pos`: one past the largest position id (the rotary table's length).
    fn batch(&self, batch: &TrainBatch, max_pos: usize) -> Result<Self::Batch>;
    fn zeros(&self, len: usize) -> Self::Buf;
    fn copy(&self, x: &Self::Buf) -> Self::Buf;
    fn ids(&self, ids: &[u32]) -> Self::Ids;
    /// Copies every gradient buffer into `out` (added), in order.
    fn add_to_host(&self, out: &mut Gradients, grads: &[Self::Buf]) -> Result<()>;

    fn embedding_forward(&self, out: &mut Self::Buf, batch: &Self::Batch) -> Result<()>;
    fn embedding_backward(
        &self,
        dtable: &mut Self::Buf,
        dout: &Self::Buf,
        batch: &Self::Batch,
    ) -> Result<()>;
    /// out (rows, c) = rows of `src` (_, c) at `rows`.
    fn gather_rows(
        &self,
        out: &mut Self::Buf,
        src: &Self::Buf,
        rows: &Self::Ids,
        c: usize,
    ) -> Result<()>;
    /// dst rows `rows` += src (rows, c) rows.
    fn scatter_add_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: &Self::Ids,
        c: usize,
    ) -> Result<()>;

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        weight: Param,
        rows: usize,
        c: usize,
        eps: f32,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dweight: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        x: &Self::Buf,
        weight: Param,
        rstd: &Self::Buf,
        rows: usize,
        c: usize,
    ) -> Result<()>;

    /// y (bt, out) = x·Wᵀ + b [+ the LoRA branch, on `x ⊙ keep` when dropout is on].
    fn linear_forward(
        &self,
        layer: usize,
        target: LoraTarget,
        y: &mut Self::Buf,
        x: &Self::Buf,
        keep: Option<Vec<f32>>,
        bt: usize,
    ) -> Result<Option<Self::LoraActs>>;
    /// Accumulates dx and the gradients asked for: weight, bias, LoRA (A, B).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        layer: usize,
        target: LoraTarget,
        dx: &mut Self::Buf,
        grads: LinearGrads<'_, Self::Buf>,
        dy: &Self::Buf,
        x: &Self::Buf,
        lora: Option<&Self::LoraActs>,
        bt: usize,
    ) -> Result<()>;

    fn rope_forward(
        &self,
        x: &mut Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        hd: usize,
    ) -> Result<()>;
    fn rope_backward(
        &self,
        dx: &mut Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        hd: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        batch: &Self::Batch,
        heads: Heads,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        batch: &Self::Batch,
        heads: Heads,
    ) -> Result<()>;
    /// acc += x
    fn residual(&self, acc: &mut Self::Buf, x: &Self::Buf) -> Result<()>;
    fn swiglu_forward(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) -> Result<()>;
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) -> Result<()>;
    /// Multiplies each row (of `c`) of `x` by its factor.
    fn scale_rows(&self, x: &mut Self::Buf, factors: &[f32], c: usize) -> Result<()>;

    /// Losses (nats, on the host) and the number of correct argmax predictions; fills `lse`.
    fn lm_head_ce_forward(
        &self,
        lse: &mut Self::Buf,
        hidden: &Self::Buf,
        targets: &Self::Ids,
        n: usize,
    ) -> Result<(Vec<f32>, usize)>;
    /// The forward and `dhidden` (of `scale · Σ losses`, overwritten) in one pass over the
    /// vocabulary, the head frozen.
    fn lm_head_ce_forward_backward(
        &self,
        lse: &mut Self::Buf,
        dhidden: &mut Self::Buf,
        hidden: &Self::Buf,
        targets: &Self::Ids,
        scale: f32,
        n: usize,
    ) -> Result<(Vec<f32>, usize)>;
    /// Overwrites `dhidden`, accumulates `dhead`.
    #[allow(clippy::too_many_arguments)]
    fn lm_head_ce_backward(
        &self,
        dhidden: &mut Self::Buf,
        dhead: Option<&mut Self::Buf>,
        hidden: &Self::Buf,
        targets: &Self::Ids,
        lse: &Self::Buf,
        scale: RowScale<'_>,
        n: usize,
    ) -> Result<()>;
}

/// Attention's head counts.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// The gradient buffers a linear layer's backward fills (each when trained).
pub struct LinearGrads<'g, B> {
    pub weight: Option<&'g mut B>,
    pub bias: Option<&'g mut B>,
    pub lora: Option<(&'g mut B, &'g mut B)>,
}

/// Where a trainer's passes run, as an object: a device holding its own copy of the weights and,
/// once [`Self::keep_optimizer`] is called, the training state too (trainable tensors, their
/// gradient accumulators, AdamW's f32 moments), so nothing but scalars crosses to the host per
/// step. The trainer's host copies (weights, `AdamW`) are refreshed by [`Self::download_state`]
/// when it saves; the arithmetic is the host optimizer's (`torch.optim.AdamW`, `clip_grad_norm_`).
pub trait TrainDevice: Send {
    /// What it is, for logs and events (e.g. `gpu:0 (llvmpipe …, Vulkan)`).
    fn describe(&self) -> String;
    /// How its matrix products run (`f32`, …).
    fn precision(&self) -> String;
    /// Copies the trainable tensors (the adapter's, or every weight) from the host.
    fn load_trainable(&mut self, model: &QwenModel, adapter: Option<&LoraAdapter>) -> Result<()>;
    /// [`QwenModel::forward_backward`] on this device; gradients are added into `grads` (or, after
    /// [`Self::keep_optimizer`], into the device's accumulators).
    fn forward_backward(
        &mut self,
        batch: &TrainBatch,
        layout: &ParamLayout,
        grads: &mut Gradients,
        scale: f32,
        opts: &TrainOptions,
    ) -> Result<BatchStats>;
    /// [`QwenModel::evaluate`] on this device.
    fn evaluate(&self, batch: &TrainBatch) -> Result<BatchStats>;
    /// From now on [`Self::forward_backward`] adds into gradient accumulators on the device (its
    /// `grads` argument is left alone) and [`Self::optimizer_step`] updates the weights there.
    /// `m` and `v` are AdamW's moments per tensor of `layout` (zeros, or a checkpoint's).
    fn keep_optimizer(
        &mut self,
        layout: &ParamLayout,
        m: &[Vec<f32>],
        v: &[Vec<f32>],
    ) -> Result<()>;
    /// One optimizer step over the accumulated gradients, which it then zeroes: their global L2
    /// norm; when that is finite, clipping to `max_grad_norm` (`clip_grad_norm_`) and AdamW with
    /// `cfgs[i]` for tensor `i` at step `step` (from 1). Returns the norm before clipping; a
    /// non-finite norm leaves weights and moments untouched.
    fn optimizer_step(
        &mut self,
        cfgs: &[AdamWConfig],
        step: u64,
        max_grad_norm: Option<f32>,
    ) -> Result<f32>;
    /// A decoder over the weights on this device as they are now (trained so far, whatever the
    /// host copy holds), so a checkpoint's samples are generated where the training runs.
    fn decoder(&self) -> Box<dyn crate::generate::Decoder + '_>;
    /// Copies the trainable tensors (in the kept layout's order) and the moments to the host.
    fn download_state(
        &self,
        params: Vec<&mut [f32]>,
        m: &mut [Vec<f32>],
        v: &mut [Vec<f32>],
    ) -> Result<()>;
}

/// The CPU engine over a model in memory and an optional adapter.
#[derive(Debug, Clone, Copy)]
pub struct CpuBackend<'a> {
    pub model: &'a QwenModel,
    pub adapter: Option<&'a LoraAdapter>,
}

/// A batch on the CPU.
pub struct CpuBatch {
    ids: Vec<u32>,
    positions: Vec<u32>,
    seq_lens: Vec<usize>,
    rope: rope::RopeTable,
}

impl<'a> CpuBackend<'a> {
    fn norm(&self, p: Param) -> &'a [f32] {
        let m = self.model;
        let missing = || panic!("{p:?} is not a norm of this model");
        match p {
            Param::InputLayernorm(l) => &m.layers[l].input_layernorm,
            Param::PostAttentionLayernorm(l) => &m.layers[l].post_attention_layernorm,
            Param::QNorm(l) => m.layers[l].q_norm.as_deref().unwrap_or_else(missing),
            Param::KNorm(l) => m.layers[l].k_norm.as_deref().unwrap_or_else(missing),
            Param::Norm => &m.norm,
            _ => missing(),
        }
    }
}

impl Backend for CpuBackend<'_> {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;
    type Batch = CpuBatch;
    type LoraActs = LoraActs;

    fn config(&self) -> &QwenConfig {
        &self.model.config
    }

    fn adapted(&self, layer: usize, target: LoraTarget) -> bool {
        self.adapter.and_then(|a| a.get(layer, target)).is_some()
    }

    fn lora_dropout(&self) -> f32 {
        self.adapter.map(|a| a.config.lora_dropout).unwrap_or(0.0)
    }

    fn tied_head(&self) -> bool {
        self.model.lm_head.is_none()
    }

    fn batch(&self, batch: &TrainBatch, max_pos: usize) -> Result<CpuBatch> {
        let cfg = &self.model.config;
        Ok(CpuBatch {
            ids: batch.input_ids.to_vec(),
            positions: batch.position_ids.to_vec(),
            seq_lens: batch.seq_lens.to_vec(),
            rope: rope::RopeTable::new(cfg.head_dim, cfg.rope_theta, max_pos),
        })
    }

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn copy(&self, x: &Vec<f32>) -> Vec<f32> {
        x.clone()
    }

    fn ids(&self, ids: &[u32]) -> Vec<u32> {
        ids.to_vec()
    }

    fn add_to_host(&self, out: &mut Gradients, grads: &[Vec<f32>]) -> Result<()> {
        for (o, g) in out.tensors.iter_mut().zip(grads) {
            o.iter_mut().zip(g).for_each(|(o, g)| *o += g);
        }
        Ok(())
    }

    fn embedding_forward(&self, out: &mut Vec<f32>, batch: &CpuBatch) -> Result<()> {
        let c = self.model.config.hidden_size;
        embedding::embedding_forward(out, &batch.ids, self.model.embed_tokens.weight(), c);
        Ok(())
    }

    fn embedding_backward(
        &self,
        dtable: &mut Vec<f32>,
        dout: &Vec<f32>,
        batch: &CpuBatch,
    ) -> Result<()> {
        let c = self.model.config.hidden_size;
        embedding::embedding_backward(dtable, dout, &batch.ids, c);
        Ok(())
    }

    fn gather_rows(
        &self,
        out: &mut Vec<f32>,
        src: &Vec<f32>,
        rows: &Vec<u32>,
        c: usize,
    ) -> Result<()> {
        for (o, &t) in out.chunks_exact_mut(c).zip(rows) {
            let t = t as usize;
            o.copy_from_slice(&src[t * c..(t + 1) * c]);
        }
        Ok(())
    }

    fn scatter_add_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        rows: &Vec<u32>,
        c: usize,
    ) -> Result<()> {
        embedding::embedding_backward(dst, src, rows, c);
        Ok(())
    }

    fn rmsnorm_forward(
        &self,
        out: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        weight: Param,
        rows: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        rmsnorm::rmsnorm_forward(out, rstd, x, self.norm(weight), rows, c, eps);
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<f32>,
        dweight: Option<&mut Vec<f32>>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        weight: Param,
        rstd: &Vec<f32>,
        rows: usize,
        c: usize,
    ) -> Result<()> {
        let dw = dweight.map(|d| d.as_mut_slice());
        rmsnorm::rmsnorm_backward(dx, dw, dout, x, self.norm(weight), rstd, rows, c);
        Ok(())
    }

    fn linear_forward(
        &self,
        layer: usize,
        target: LoraTarget,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        keep: Option<Vec<f32>>,
        bt: usize,
    ) -> Result<Option<LoraActs>> {
        self.model.layers[layer]
            .linear(target)
            .forward(y, x, bt, self.model.precision);
        Ok(self
            .adapter
            .and_then(|a| a.get(layer, target))
            .map(|lora| lora.forward(y, x, keep, bt)))
    }

    fn linear_backward(
        &self,
        layer: usize,
        target: LoraTarget,
        dx: &mut Vec<f32>,
        grads: LinearGrads<'_, Vec<f32>>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        lora_acts: Option<&LoraActs>,
        bt: usize,
    ) -> Result<()> {
        let lin = self.model.layers[layer].linear(target);
        matmul::matmul_backward(
            Some(dx),
            grads.weight.map(|d| d.as_mut_slice()),
            grads.bias.map(|d| d.as_mut_slice()),
            dy,
            x,
            lin.weight.weight(),
            bt,
            lin.in_features,
            lin.out_features,
            self.model.precision,
        );
        let lora = self.adapter.and_then(|a| a.get(layer, target));
        if let (Some(lora), Some(acts), Some((da, db))) = (lora, lora_acts, grads.lora) {
            lora.backward(dx, da, db, dy, x, acts, bt);
        }
        Ok(())
    }

    fn rope_forward(&self, x: &mut Vec<f32>, b: &CpuBatch, heads: usize, hd: usize) -> Result<()> {
        rope::rope_forward(x, &b.positions, &b.rope, heads, hd);
        Ok(())
    }

    fn rope_backward(
        &self,
        dx: &mut Vec<f32>,
        b: &CpuBatch,
        heads: usize,
        hd: usize,
    ) -> Result<()> {
        rope::rope_backward(dx, &b.positions, &b.rope, heads, hd);
        Ok(())
    }

    fn attention_forward(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        b: &CpuBatch,
        h: Heads,
    ) -> Result<()> {
        attention::attention_forward(out, lse, q, k, v, &b.seq_lens, h.q, h.kv, h.dim);
        Ok(())
    }

    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        b: &CpuBatch,
        h: Heads,
    ) -> Result<()> {
        attention::attention_backward(
            dq,
            dk,
            dv,
            dout,
            out,
            lse,
            q,
            k,
            v,
            &b.seq_lens,
            h.q,
            h.kv,
            h.dim,
        );
        Ok(())
    }

    fn residual(&self, acc: &mut Vec<f32>, x: &Vec<f32>) -> Result<()> {
        residual::residual_forward(acc, x);
        Ok(())
    }

    fn swiglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        swiglu::swiglu_forward(out, gate, up);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        swiglu::swiglu_backward(dgate, dup, dout, gate, up);
        Ok(())
    }

    fn scale_rows(&self, x: &mut Vec<f32>, factors: &[f32], c: usize) -> Result<()> {
        for (row, &w) in x.chunks_exact_mut(c).zip(factors) {
            row.iter_mut().for_each(|v| *v *= w);
        }
        Ok(())
    }

    fn lm_head_ce_forward(
        &self,
        lse: &mut Vec<f32>,
        hidden: &Vec<f32>,
        targets: &Vec<u32>,
        n: usize,
    ) -> Result<(Vec<f32>, usize)> {
        let cfg = &self.model.config;
        let mut losses = vec![0.0; n];
        let correct = lm_head_ce::lm_head_ce_forward(
            &mut losses,
            lse,
            hidden,
            self.model.lm_head_weight(),
            targets,
            n,
            cfg.hidden_size,
            cfg.vocab_size,
            self.model.precision,
        );
        Ok((losses, correct))
    }

    fn lm_head_ce_forward_backward(
        &self,
        lse: &mut Vec<f32>,
        dhidden: &mut Vec<f32>,
        hidden: &Vec<f32>,
        targets: &Vec<u32>,
        scale: f32,
        n: usize,
    ) -> Result<(Vec<f32>, usize)> {
        let cfg = &self.model.config;
        let mut losses = vec![0.0; n];
        let correct = lm_head_ce::lm_head_ce_forward_backward(
            &mut losses,
            lse,
            dhidden,
            hidden,
            self.model.lm_head_weight(),
            targets,
            scale,
            n,
            cfg.hidden_size,
            cfg.vocab_size,
            self.model.precision,
        );
        Ok((losses, correct))
    }

    fn lm_head_ce_backward(
        &self,
        dhidden: &mut Vec<f32>,
        dhead: Option<&mut Vec<f32>>,
        hidden: &Vec<f32>,
        targets: &Vec<u32>,
        lse: &Vec<f32>,
        scale: RowScale<'_>,
        n: usize,
    ) -> Result<()> {
        let cfg = &self.model.config;
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let head = self.model.lm_head_weight();
        let dhead = dhead.map(|d| d.as_mut_slice());
        let p = self.model.precision;
        match scale {
            RowScale::Uniform(s) => lm_head_ce::lm_head_ce_backward(
                dhidden, dhead, hidden, head, targets, lse, s, n, c, v, p,
            ),
            RowScale::PerRow(w) => lm_head_ce::lm_head_ce_backward_weighted(
                dhidden, dhead, hidden, head, targets, lse, w, n, c, v, p,
            ),
        }
        Ok(())
    }
}

/// A backend's error, named.
pub fn backend_error(backend: &str, reason: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: backend.to_string(),
        reason: reason.to_string(),
    }
}
