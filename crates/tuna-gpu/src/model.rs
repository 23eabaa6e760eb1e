//! The model on a device: `tuna_model`'s [`Backend`] on device buffers, so the one training pass
//! of `tuna_model::train` runs here, and [`TrainDevice`] for a trainer.
//!
//! Weights are uploaded once, in f32 (lavapipe has no bf16; a bf16 copy on CUDA is the next
//! step). After [`TrainDevice::keep_optimizer`] the training state stays here: the trainable
//! tensors (LoRA A/B, or every weight of a full fine-tune), their gradient accumulators and
//! AdamW's f32 moments; a step's gradient norm, clipping and AdamW run on the device and only the
//! norm is read back. The trainer downloads weights and moments only to save a checkpoint.

use tuna_engine::ops::adamw::AdamWConfig;
use tuna_engine::ops::rope::RopeTable;
use tuna_model::backend::{Backend, Heads, LinearGrads, RowScale, TrainDevice, backend_error};
use tuna_model::lora::{LoraAdapter, LoraTarget};
use tuna_model::train::{BatchStats, TrainBatch, TrainOptions, evaluate_on, forward_backward_on};
use tuna_model::{Gradients, Param, ParamLayout, QwenConfig, QwenModel};

use crate::devices::AnyGpu;
use crate::ops::adamw::{adamw_update, grad_norm};
use crate::ops::attention::{PackedSeqs, attention_backward, attention_forward};
use crate::ops::elementwise::{cast, fill, mul, residual_forward, scale_in_place, zeros};
use crate::ops::embedding::{embedding_backward, embedding_forward};
use crate::ops::lm_head_ce::{
    count_hits, lm_head_ce_backward, lm_head_ce_forward, lm_head_ce_forward_backward,
};
use crate::ops::lora::{LoraDims, lora_backward, lora_forward};
use crate::ops::matmul::{matmul_backward, matmul_forward};
use crate::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::ops::rope::{GpuRopeTable, rope_backward, rope_forward};
use crate::ops::swiglu::{swiglu_backward, swiglu_forward};
use crate::runtime::{Buffer, Gpu};
use crate::{CudaRuntime, Runtime, WgpuRuntime};

mod decode;
pub use decode::{GpuDecoder, gpu_decoder};

type Buf<R> = Buffer<R, f32>;

struct DeviceLinear<R: Runtime> {
    weight: Buf<R>,
    bias: Option<Buf<R>>,
    in_features: usize,
    out_features: usize,
}

struct DeviceLayer<R: Runtime> {
    input_layernorm: Buf<R>,
    post_attention_layernorm: Buf<R>,
    q_norm: Option<Buf<R>>,
    k_norm: Option<Buf<R>>,
    /// In [`LoraTarget::index`] order.
    linears: Vec<DeviceLinear<R>>,
}

struct DeviceLora<R: Runtime> {
    a: Buf<R>,
    b: Buf<R>,
    rank: usize,
    scale: f32,
}

/// A model (and adapter) on one device.
pub struct GpuModel<R: Runtime> {
    gpu: Gpu<R>,
    label: String,
    config: QwenConfig,
    embed_tokens: Buf<R>,
    layers: Vec<DeviceLayer<R>>,
    norm: Buf<R>,
    /// `None` when tied to the embedding.
    lm_head: Option<Buf<R>>,
    /// `lora[l][target.index()]`
    lora: Vec<Vec<Option<DeviceLora<R>>>>,
    lora_dropout: f32,
    /// Set by [`TrainDevice::keep_optimizer`].
    optimizer: Option<DeviceOptimizer<R>>,
}

/// The training state besides the weights, per trainable tensor in layout order.
struct DeviceOptimizer<R: Runtime> {
    params: Vec<Param>,
    grads: Vec<Buf<R>>,
    m: Vec<Buf<R>>,
    v: Vec<Buf<R>>,
}

/// A batch on the device.
pub struct GpuBatch<R: Runtime> {
    ids: Buffer<R, u32>,
    positions: Buffer<R, u32>,
    rope: GpuRopeTable<R>,
    seqs: PackedSeqs<R>,
}

/// What a LoRA branch keeps for its backward: its dropout mask and `u = x_in · Aᵀ`.
pub struct GpuLoraActs<R: Runtime> {
    keep: Option<Buf<R>>,
    u: Buf<R>,
}

fn gpu_err(e: crate::Error) -> tuna_model::Error {
    backend_error("gpu", e)
}

impl<R: Runtime> GpuModel<R> {
    /// Uploads `model`'s weights (as f32) and `adapter`'s A/B. `label` names the device in logs.
    pub fn upload(
        gpu: Gpu<R>,
        label: String,
        model: &QwenModel,
        adapter: Option<&LoraAdapter>,
    ) -> tuna_model::Result<Self> {
        let up = |v: &[f32]| gpu.upload(v);
        let layers = model
            .layers
            .iter()
            .map(|layer| DeviceLayer {
                input_layernorm: up(&layer.input_layernorm),
                post_attention_layernorm: up(&layer.post_attention_layernorm),
                q_norm: layer.q_norm.as_deref().map(up),
                k_norm: layer.k_norm.as_deref().map(up),
                linears: LoraTarget::ALL
                    .iter()
                    .map(|&t| {
                        let lin = layer.linear(t);
                        DeviceLinear {
                            weight: up(&lin.weight.to_f32_vec()),
                            bias: lin.bias.as_deref().map(up),
                            in_features: lin.in_features,
                            out_features: lin.out_features,
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut gm = GpuModel {
            label,
            config: model.config.clone(),
            embed_tokens: up(&model.embed_tokens.to_f32_vec()),
            layers,
            norm: up(&model.norm),
            lm_head: model.lm_head.as_ref().map(|h| up(&h.to_f32_vec())),
            lora: Vec::new(),
            lora_dropout: 0.0,
            optimizer: None,
            gpu,
        };
        gm.load_adapter(adapter)?;
        Ok(gm)
    }

    fn load_adapter(&mut self, adapter: Option<&LoraAdapter>) -> tuna_model::Result<()> {
        let Some(a) = adapter else {
            self.lora.clear();
            self.lora_dropout = 0.0;
            return Ok(());
        };
        if a.layers.len() != self.layers.len() {
            return Err(backend_error(
                &self.label,
                format!(
                    "adapter has {} layers, model {}",
                    a.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        self.lora_dropout = a.config.lora_dropout;
        self.lora = (0..a.layers.len())
            .map(|l| {
                LoraTarget::ALL
                    .iter()
                    .map(|&t| {
                        a.get(l, t).map(|lin| DeviceLora {
                            a: self.gpu.upload(&lin.a),
                            b: self.gpu.upload(&lin.b),
                            rank: lin.rank,
                            scale: lin.scale,
                        })
                    })
                    .collect()
            })
            .collect();
        Ok(())
    }

    pub fn gpu(&self) -> &Gpu<R> {
        &self.gpu
    }

    fn head(&self) -> &Buf<R> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    fn lora_of(&self, layer: usize, target: LoraTarget) -> Option<&DeviceLora<R>> {
        self.lora
            .get(layer)
            .and_then(|l| l[target.index()].as_ref())
    }

    /// The device buffer of a trainable tensor.
    fn param(&self, p: Param) -> tuna_model::Result<&Buf<R>> {
        let missing = || backend_error(&self.label, format!("{p:?} is not on this device"));
        let layer = |l: usize| self.layers.get(l).ok_or_else(missing);
        let lora = |l: usize, t: LoraTarget| self.lora_of(l, t).ok_or_else(missing);
        Ok(match p {
            Param::EmbedTokens => &self.embed_tokens,
            Param::InputLayernorm(l) => &layer(l)?.input_layernorm,
            Param::PostAttentionLayernorm(l) => &layer(l)?.post_attention_layernorm,
            Param::QNorm(l) => layer(l)?.q_norm.as_ref().ok_or_else(missing)?,
            Param::KNorm(l) => layer(l)?.k_norm.as_ref().ok_or_else(missing)?,
            Param::Weight(l, t) => &layer(l)?.linears[t.index()].weight,
            Param::Bias(l, t) => layer(l)?.linears[t.index()]
                .bias
                .as_ref()
                .ok_or_else(missing)?,
            Param::Norm => &self.norm,
            Param::LmHead => self.lm_head.as_ref().ok_or_else(missing)?,
            Param::LoraA(l, t) => &lora(l, t)?.a,
            Param::LoraB(l, t) => &lora(l, t)?.b,
        })
    }

    fn norm_weight(&self, p: Param) -> &Buf<R> {
        let missing = || panic!("{p:?} is not a norm of this model");
        match p {
            Param::InputLayernorm(l) => &self.layers[l].input_layernorm,
            Param::PostAttentionLayernorm(l) => &self.layers[l].post_attention_layernorm,
            Param::QNorm(l) => self.layers[l].q_norm.as_ref().unwrap_or_else(missing),
            Param::KNorm(l) => self.layers[l].k_norm.as_ref().unwrap_or_else(missing),
            Param::Norm => &self.norm,
            _ => missing(),
        }
    }

    /// y = x·Wᵀ (+ bias) through the frozen projection `target` of `layer`, without its LoRA
    /// branch; returns the projection.
    fn base_linear_forward(
        &self,
        layer: usize,
        target: LoraTarget,
        y: &Buf<R>,
        x: &Buf<R>,
        bt: usize,
    ) -> tuna_model::Result<&DeviceLinear<R>> {
        let lin = &self.layers[layer].linears[target.index()];
        matmul_forward(
            &self.gpu,
            y,
            x,
            &lin.weight,
            lin.bias.as_ref(),
            bt,
            lin.in_features,
            lin.out_features,
        )
        .map_err(gpu_err)?;
        Ok(lin)
    }

    fn lora_dims(&self, lin: &DeviceLinear<R>, lora: &DeviceLora<R>, bt: usize) -> LoraDims {
        LoraDims {
            bt,
            in_features: lin.in_features,
            rank: lora.rank,
            out_features: lin.out_features,
            scale: lora.scale,
        }
    }

    /// Losses downloaded and hits counted (this waits for the device).
    fn losses_and_hits(
        &self,
        losses: &Buf<R>,
        hits: &Buffer<R, u32>,
    ) -> tuna_model::Result<(Vec<f32>, usize)> {
        let l = self.gpu.download(losses).map_err(gpu_err)?;
        let h = count_hits(&self.gpu, hits).map_err(gpu_err)?;
        Ok((l, h))
    }
}

impl<R: Runtime> Backend for GpuModel<R> {
    type Buf = Buf<R>;
    type Ids = Buffer<R, u32>;
    type Batch = GpuBatch<R>;
    type LoraActs = GpuLoraActs<R>;

    fn config(&self) -> &QwenConfig {
        &self.config
    }

    fn adapted(&self, layer: usize, target: LoraTarget) -> bool {
        self.lora_of(layer, target).is_some()
    }

    fn lora_dropout(&self) -> f32 {
        self.lora_dropout
    }

    fn tied_head(&self) -> bool {
        self.lm_head.is_none()
    }

    fn batch(&self, batch: &TrainBatch, max_pos: usize) -> tuna_model::Result<GpuBatch<R>> {
        let cfg = &self.config;
        let table = RopeTable::new(cfg.head_dim, cfg.rope_theta, max_pos);
        Ok(GpuBatch {
            ids: self.gpu.upload(batch.input_ids),
            positions: self.gpu.upload(batch.position_ids),
            rope: GpuRopeTable::upload(&self.gpu, &table),
            seqs: PackedSeqs::new(&self.gpu, batch.seq_lens),
        })
    }

    fn zeros(&self, len: usize) -> Buf<R> {
        zeros(&self.gpu, len)
    }

    fn copy(&self, x: &Buf<R>) -> Buf<R> {
        let out = self.gpu.alloc(x.len());
        cast(&self.gpu, &out, x);
        out
    }

    fn ids(&self, ids: &[u32]) -> Buffer<R, u32> {
        self.gpu.upload(ids)
    }

    fn add_to_host(&self, out: &mut Gradients, grads: &[Buf<R>]) -> tuna_model::Result<()> {
        for (o, g) in out.tensors.iter_mut().zip(grads) {
            let g = self.gpu.download(g).map_err(gpu_err)?;
            o.iter_mut().zip(&g).for_each(|(o, g)| *o += g);
        }
        Ok(())
    }

    fn embedding_forward(&self, out: &mut Buf<R>, b: &GpuBatch<R>) -> tuna_model::Result<()> {
        embedding_forward(
            &self.gpu,
            out,
            &b.ids,
            &self.embed_tokens,
            self.config.hidden_size,
        );
        Ok(())
    }

    fn embedding_backward(
        &self,
        dtable: &mut Buf<R>,
        dout: &Buf<R>,
        b: &GpuBatch<R>,
    ) -> tuna_model::Result<()> {
        embedding_backward(&self.gpu, dtable, dout, &b.ids, self.config.hidden_size);
        Ok(())
    }

    fn gather_rows(
        &self,
        out: &mut Buf<R>,
        src: &Buf<R>,
        rows: &Buffer<R, u32>,
        c: usize,
    ) -> tuna_model::Result<()> {
        embedding_forward(&self.gpu, out, rows, src, c);
        Ok(())
    }

    fn scatter_add_rows(
        &self,
        dst: &mut Buf<R>,
        src: &Buf<R>,
        rows: &Buffer<R, u32>,
        c: usize,
    ) -> tuna_model::Result<()> {
        embedding_backward(&self.gpu, dst, src, rows, c);
        Ok(())
    }

    fn rmsnorm_forward(
        &self,
        out: &mut Buf<R>,
        rstd: &mut Buf<R>,
        x: &Buf<R>,
        weight: Param,
        rows: usize,
        c: usize,
        eps: f32,
    ) -> tuna_model::Result<()> {
        rmsnorm_forward(
            &self.gpu,
            out,
            rstd,
            x,
            self.norm_weight(weight),
            rows,
            c,
            eps,
        );
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut Buf<R>,
        dweight: Option<&mut Buf<R>>,
        dout: &Buf<R>,
        x: &Buf<R>,
        weight: Param,
        rstd: &Buf<R>,
        rows: usize,
        c: usize,
    ) -> tuna_model::Result<()> {
        rmsnorm_backward(
            &self.gpu,
            dx,
            dweight.map(|d| &*d),
            dout,
            x,
            self.norm_weight(weight),
            rstd,
            rows,
            c,
        );
        Ok(())
    }

    fn linear_forward(
        &self,
        layer: usize,
        target: LoraTarget,
        y: &mut Buf<R>,
        x: &Buf<R>,
        keep: Option<Vec<f32>>,
        bt: usize,
    ) -> tuna_model::Result<Option<GpuLoraActs<R>>> {
        let lin = self.base_linear_forward(layer, target, y, x, bt)?;
        let Some(lora) = self.lora_of(layer, target) else {
            return Ok(None);
        };
        let keep = keep.map(|k| self.gpu.upload(&k));
        let u = self.gpu.alloc(bt * lora.rank);
        let d = self.lora_dims(lin, lora, bt);
        lora_forward(&self.gpu, y, &u, x, keep.as_ref(), &lora.a, &lora.b, d).map_err(gpu_err)?;
        Ok(Some(GpuLoraActs { keep, u }))
    }

    fn linear_backward(
        &self,
        layer: usize,
        target: LoraTarget,
        dx: &mut Buf<R>,
        grads: LinearGrads<'_, Buf<R>>,
        dy: &Buf<R>,
        x: &Buf<R>,
        acts: Option<&GpuLoraActs<R>>,
        bt: usize,
    ) -> tuna_model::Result<()> {
        let lin = &self.layers[layer].linears[target.index()];
        matmul_backward(
            &self.gpu,
            Some(dx),
            grads.weight.map(|d| &*d),
            grads.bias.map(|d| &*d),
            dy,
            x,
            &lin.weight,
            bt,
            lin.in_features,
            lin.out_features,
        )
        .map_err(gpu_err)?;
        if let (Some(lora), Some(acts), Some((da, db))) =
            (self.lora_of(layer, target), acts, grads.lora)
        {
            let d = self.lora_dims(lin, lora, bt);
            lora_backward(
                &self.gpu,
                dx,
                da,
                db,
                dy,
                x,
                acts.keep.as_ref(),
                &acts.u,
                &lora.a,
                &lora.b,
                d,
            )
            .map_err(gpu_err)?;
        }
        Ok(())
    }

    fn rope_forward(
        &self,
        x: &mut Buf<R>,
        b: &GpuBatch<R>,
        heads: usize,
        hd: usize,
    ) -> tuna_model::Result<()> {
        rope_forward(&self.gpu, x, &b.positions, &b.rope, heads, hd);
        Ok(())
    }

    fn rope_backward(
        &self,
        dx: &mut Buf<R>,
        b: &GpuBatch<R>,
        heads: usize,
        hd: usize,
    ) -> tuna_model::Result<()> {
        rope_backward(&self.gpu, dx, &b.positions, &b.rope, heads, hd);
        Ok(())
    }

    fn attention_forward(
        &self,
        out: &mut Buf<R>,
        lse: &mut Buf<R>,
        q: &Buf<R>,
        k: &Buf<R>,
        v: &Buf<R>,
        b: &GpuBatch<R>,
        h: Heads,
    ) -> tuna_model::Result<()> {
        attention_forward(&self.gpu, out, lse, q, k, v, &b.seqs, h.q, h.kv, h.dim);
        Ok(())
    }

    fn attention_backward(
        &self,
        dq: &mut Buf<R>,
        dk: &mut Buf<R>,
        dv: &mut Buf<R>,
        dout: &Buf<R>,
        out: &Buf<R>,
        lse: &Buf<R>,
        q: &Buf<R>,
        k: &Buf<R>,
        v: &Buf<R>,
        b: &GpuBatch<R>,
        h: Heads,
    ) -> tuna_model::Result<()> {
        attention_backward(
            &self.gpu, dq, dk, dv, dout, out, lse, q, k, v, &b.seqs, h.q, h.kv, h.dim,
        );
        Ok(())
    }

    fn residual(&self, acc: &mut Buf<R>, x: &Buf<R>) -> tuna_model::Result<()> {
        residual_forward(&self.gpu, acc, x);
        Ok(())
    }

    fn swiglu_forward(
        &self,
        out: &mut Buf<R>,
        gate: &Buf<R>,
        up: &Buf<R>,
    ) -> tuna_model::Result<()> {
        swiglu_forward(&self.gpu, out, gate, up);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate: &mut Buf<R>,
        dup: &mut Buf<R>,
        dout: &Buf<R>,
        gate: &Buf<R>,
        up: &Buf<R>,
    ) -> tuna_model::Result<()> {
        swiglu_backward(&self.gpu, dgate, dup, dout, gate, up);
        Ok(())
    }

    fn scale_rows(&self, x: &mut Buf<R>, factors: &[f32], c: usize) -> tuna_model::Result<()> {
        let wide: Vec<f32> = factors
            .iter()
            .flat_map(|&w| std::iter::repeat_n(w, c))
            .collect();
        let w = self.gpu.upload(&wide);
        // A separate output: a buffer bound twice in one dispatch is not allowed everywhere.
        let out = self.gpu.alloc(x.len());
        mul(&self.gpu, &out, x, &w);
        *x = out;
        Ok(())
    }

    fn lm_head_ce_forward(
        &self,
        lse: &mut Buf<R>,
        hidden: &Buf<R>,
        targets: &Buffer<R, u32>,
        n: usize,
    ) -> tuna_model::Result<(Vec<f32>, usize)> {
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        let losses = self.gpu.alloc(n);
        let hits = self.gpu.alloc(n);
        lm_head_ce_forward(
            &self.gpu,
            &losses,
            lse,
            &hits,
            hidden,
            self.head(),
            targets,
            n,
            c,
            v,
        )
        .map_err(gpu_err)?;
        self.losses_and_hits(&losses, &hits)
    }

    fn lm_head_ce_forward_backward(
        &self,
        lse: &mut Buf<R>,
        dhidden: &mut Buf<R>,
        hidden: &Buf<R>,
        targets: &Buffer<R, u32>,
        scale: f32,
        n: usize,
    ) -> tuna_model::Result<(Vec<f32>, usize)> {
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        let losses = self.gpu.alloc(n);
        let hits = self.gpu.alloc(n);
        lm_head_ce_forward_backward(
            &self.gpu,
            &losses,
            lse,
            &hits,
            dhidden,
            hidden,
            self.head(),
            targets,
            scale,
            n,
            c,
            v,
        )
        .map_err(gpu_err)?;
        self.losses_and_hits(&losses, &hits)
    }

    fn lm_head_ce_backward(
        &self,
        dhidden: &mut Buf<R>,
        dhead: Option<&mut Buf<R>>,
        hidden: &Buf<R>,
        targets: &Buffer<R, u32>,
        lse: &Buf<R>,
        scale: RowScale<'_>,
        n: usize,
    ) -> tuna_model::Result<()> {
        let RowScale::Uniform(scale) = scale else {
            return Err(backend_error(
                &self.label,
                "per-token loss weights with a trained LM head (DPO full fine-tuning) are not supported on GPUs yet",
            ));
        };
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        lm_head_ce_backward(
            &self.gpu,
            dhidden,
            dhead.map(|d| &*d),
            hidden,
            self.head(),
            targets,
            lse,
            scale,
            n,
            c,
            v,
        )
        .map_err(gpu_err)
    }
}

impl<R: Runtime> TrainDevice for GpuModel<R>
where
    GpuModel<R>: Send,
{
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn precision(&self) -> String {
        "f32".into()
    }

    fn load_trainable(
        &mut self,
        model: &QwenModel,
        adapter: Option<&LoraAdapter>,
    ) -> tuna_model::Result<()> {
        match adapter {
            Some(_) => self.load_adapter(adapter),
            None => {
                let optimizer = self.optimizer.take();
                *self = GpuModel::upload(self.gpu.clone(), self.label.clone(), model, None)?;
                self.optimizer = optimizer;
                Ok(())
            }
        }
    }

    fn forward_backward(
        &mut self,
        batch: &TrainBatch,
        layout: &ParamLayout,
        grads: &mut Gradients,
        scale: f32,
        opts: &TrainOptions,
    ) -> tuna_model::Result<BatchStats> {
        if let Some(mut opt) = self.optimizer.take() {
            let stats = forward_backward_on(self, batch, layout, &mut opt.grads, scale, opts);
            self.optimizer = Some(opt);
            return stats;
        }
        let mut on_device: Vec<Buf<R>> = layout
            .sizes()
            .into_iter()
            .map(|n| zeros(&self.gpu, n))
            .collect();
        let stats = forward_backward_on(self, batch, layout, &mut on_device, scale, opts)?;
        self.add_to_host(grads, &on_device)?;
        Ok(stats)
    }

    fn evaluate(&self, batch: &TrainBatch) -> tuna_model::Result<BatchStats> {
        evaluate_on(self, batch)
    }

    fn keep_optimizer(
        &mut self,
        layout: &ParamLayout,
        m: &[Vec<f32>],
        v: &[Vec<f32>],
    ) -> tuna_model::Result<()> {
        let specs = layout.specs();
        if m.len() != specs.len() || v.len() != specs.len() {
            return Err(backend_error(
                &self.label,
                format!(
                    "{} trainable tensors but {} and {} moments",
                    specs.len(),
                    m.len(),
                    v.len()
                ),
            ));
        }
        let mut opt = DeviceOptimizer {
            params: Vec::with_capacity(specs.len()),
            grads: Vec::with_capacity(specs.len()),
            m: Vec::with_capacity(specs.len()),
            v: Vec::with_capacity(specs.len()),
        };
        for ((spec, m), v) in specs.iter().zip(m).zip(v) {
            let n = self.param(spec.param)?.len();
            if spec.len() != n || m.len() != n || v.len() != n {
                return Err(backend_error(
                    &self.label,
                    format!(
                        "{:?}: {n} elements on the device, {} in the layout, moments {} and {}",
                        spec.param,
                        spec.len(),
                        m.len(),
                        v.len()
                    ),
                ));
            }
            opt.params.push(spec.param);
            opt.grads.push(zeros(&self.gpu, n));
            opt.m.push(self.gpu.upload(m));
            opt.v.push(self.gpu.upload(v));
        }
        self.optimizer = Some(opt);
        Ok(())
    }

    fn optimizer_step(
        &mut self,
        cfgs: &[AdamWConfig],
        step: u64,
        max_grad_norm: Option<f32>,
    ) -> tuna_model::Result<f32> {
        let opt = self
            .optimizer
            .as_ref()
            .ok_or_else(|| backend_error(&self.label, "optimizer_step before keep_optimizer"))?;
        if cfgs.len() != opt.params.len() {
            return Err(backend_error(
                &self.label,
                format!(
                    "{} AdamW settings for {} tensors",
                    cfgs.len(),
                    opt.params.len()
                ),
            ));
        }
        let norm = grad_norm(&self.gpu, &opt.grads.iter().collect::<Vec<_>>()).map_err(gpu_err)?;
        if norm.is_finite() {
            // clip_grad_norm_'s coefficient, in f64 as the host's clip_grad_norm.
            if let Some(max) = max_grad_norm {
                let coef = max as f64 / (norm as f64 + 1e-6);
                if coef < 1.0 {
                    for g in &opt.grads {
                        scale_in_place(&self.gpu, g, coef as f32);
                    }
                }
            }
            for (i, &p) in opt.params.iter().enumerate() {
                let cfg = &cfgs[i];
                adamw_update(
                    &self.gpu,
                    self.param(p)?,
                    &opt.grads[i],
                    &opt.m[i],
                    &opt.v[i],
                    cfg,
                    step,
                );
            }
        }
        for g in &opt.grads {
            fill(&self.gpu, g, 0.0);
        }
        Ok(norm)
    }

    fn decoder(&self) -> Box<dyn tuna_model::generate::Decoder + '_> {
        Box::new(decode::GpuDecoder::new(self))
    }

    fn download_state(
        &self,
        params: Vec<&mut [f32]>,
        m: &mut [Vec<f32>],
        v: &mut [Vec<f32>],
    ) -> tuna_model::Result<()> {
        let opt = self
            .optimizer
            .as_ref()
            .ok_or_else(|| backend_error(&self.label, "download_state before keep_optimizer"))?;
        if params.len() != opt.params.len() || m.len() != opt.m.len() || v.len() != opt.v.len() {
            return Err(backend_error(
                &self.label,
                format!(
                    "{} tensors on the device, {} on the host",
                    opt.params.len(),
                    params.len()
                ),
            ));
        }
        let copy = |dst: &mut [f32], src: &Buf<R>| -> tuna_model::Result<()> {
            let host = self.gpu.download(src).map_err(gpu_err)?;
            if host.len() != dst.len() {
                return Err(backend_error(
                    &self.label,
                    format!(
                        "{} elements on the device, {} on the host",
                        host.len(),
                        dst.len()
                    ),
                ));
            }
            dst.copy_from_slice(&host);
            Ok(())
        };
        for (i, dst) in params.into_iter().enumerate() {
            copy(dst, self.param(opt.params[i])?)?;
            copy(&mut m[i], &opt.m[i])?;
            copy(&mut v[i], &opt.v[i])?;
        }
        Ok(())
    }
}

/// Opens `gpu:index` and uploads the model and adapter to it: the trainer's device.
pub fn train_device(
    index: usize,
    model: &QwenModel,
    adapter: Option<&LoraAdapter>,
) -> tuna_model::Result<Box<dyn TrainDevice>> {
    Ok(match upload_to(index, model, adapter)? {
        AnyGpuModel::Cuda(m) => Box::new(m),
        AnyGpuModel::Vulkan(m) => Box::new(m),
    })
}

/// A model uploaded to a device, on whichever runtime the device has.
pub(crate) enum AnyGpuModel {
    Cuda(GpuModel<CudaRuntime>),
    Vulkan(GpuModel<WgpuRuntime>),
}

/// Opens `gpu:index` and uploads `model` (and `adapter`) to it, labelled for logs and events
/// (e.g. `gpu:0 (llvmpipe …, Vulkan)`).
pub(crate) fn upload_to(
    index: usize,
    model: &QwenModel,
    adapter: Option<&LoraAdapter>,
) -> tuna_model::Result<AnyGpuModel> {
    let gpu = crate::devices::open(index).map_err(gpu_err)?;
    Ok(match gpu {
        AnyGpu::Cuda(g) => {
            let label = format!("gpu:{index} ({}, CUDA)", g.name());
            AnyGpuModel::Cuda(GpuModel::upload(g, label, model, adapter)?)
        }
        AnyGpu::Vulkan(g) => {
            let label = format!("gpu:{index} ({}, Vulkan)", g.name());
            AnyGpuModel::Vulkan(GpuModel::upload(g, label, model, adapter)?)
        }
    })
}
