//! Training passes over [`QwenModel`]: forward + hand-written backward on packed batches, for LoRA
//! (gradients of A and B only; no weight gradients for frozen weights) or full fine-tuning.
//!
//! The loss is the cross-entropy of the labelled positions only (LM head computed on those rows
//! only, chunked over the vocabulary). Gradients are of `scale · Σ token losses`: the caller passes
//! `scale = 1 / trained tokens of the whole accumulated batch` (torchtune's normalisation).

use crate::error::Result;
use crate::lora::LoraAdapter;
use crate::qwen::QwenModel;

/// One packed micro-batch, as `tuna_data::pack::PackedBatch` lays it out.
#[derive(Debug, Clone, Copy)]
pub struct TrainBatch<'a> {
    pub input_ids: &'a [u32],
    /// Shifted labels: `targets[t]` is the token that position `t` must predict, or
    /// `IGNORE_INDEX` (-100) where nothing is trained.
    pub targets: &'a [i32],
    /// Restart at 0 for each packed example.
    pub position_ids: &'a [u32],
    /// Lengths of the packed examples (they sum to the batch length); attention never crosses them.
    pub seq_lens: &'a [usize],
}

/// Sums over one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Σ of token cross-entropies (nats) over trained positions.
    pub loss_sum: f64,
    /// Trained positions.
    pub tokens: usize,
    /// Trained positions whose argmax prediction equals the target.
    pub correct: usize,
}

impl BatchStats {
    pub fn add(&mut self, o: &BatchStats) {
        self.loss_sum += o.loss_sum;
        self.tokens += o.tokens;
        self.correct += o.correct;
    }
}

/// Choices that change memory and randomness, not the maths.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrainOptions {
    /// Keep only each layer's input and recompute the rest during backward (less memory, ~30% more compute).
    pub recompute_activations: bool,
    /// Seed of this micro-batch's LoRA dropout masks (used only when the adapter's dropout > 0).
    pub dropout_seed: u64,
}

use tuna_engine::IGNORE_INDEX;
use tuna_engine::ops::{attention, embedding, lm_head_ce, matmul, residual, rmsnorm, rope, swiglu};

use crate::error::Error;
use crate::lora::{LoraActs, LoraLinear, LoraTarget, dropout_keep};
use crate::params::{Gradients, Param, ParamLayout};

impl QwenModel {
    /// Forward and backward on one packed micro-batch (see the module docs). With `adapter`, only
    /// LoRA gradients are computed (in [`LoraAdapter::layout`] order); without, every
    /// parameter's (in [`full_layout`](Self::full_layout) order).
    pub fn forward_backward(
        &self,
        batch: &TrainBatch,
        adapter: Option<&LoraAdapter>,
        grads: &mut Gradients,
        scale: f32,
        opts: &TrainOptions,
    ) -> Result<BatchStats> {
        let layout = self.checked_layout(adapter, grads)?;
        let pass = Pass::new(self, batch, adapter, opts, true)?;
        pass.run(Some((grads, &layout, scale)), None)
    }

    /// Loss and accuracy of a batch without gradients (evaluation).
    pub fn evaluate(
        &self,
        batch: &TrainBatch,
        adapter: Option<&LoraAdapter>,
    ) -> Result<BatchStats> {
        let opts = TrainOptions {
            recompute_activations: true,
            dropout_seed: 0,
        };
        let pass = Pass::new(self, batch, adapter, &opts, false)?;
        pass.run(None, None)
    }
}

/// Receives the labelled rows of a batch after the forward, as `(positions, losses)`: each row's
/// position in the batch (ascending) and its cross-entropy in nats. In a weighted pass it returns
/// the factor of each row's loss in the gradient.
pub type PerTokenWeights<'w> = &'w mut dyn FnMut(&[usize], &[f32]) -> Vec<f32>;

/// The cross-entropy of every labelled position of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenLosses {
    /// Positions in the batch with a target, ascending.
    pub positions: Vec<usize>,
    /// Their cross-entropies (nats): minus the log-probability of the target.
    pub losses: Vec<f32>,
    pub stats: BatchStats,
}

impl QwenModel {
    /// Forward and backward where each labelled position's loss has its own factor, decided
    /// after the forward: `weigh(positions, losses)` returns the factors and the gradients
    /// accumulated are those of `Σ_r w[r] · loss[r]`. One forward and one backward, as
    /// [`forward_backward`](Self::forward_backward) (which is the case of equal factors). DPO
    /// uses it: the factor of a token is a coefficient of its sequence's summed log-probability.
    pub fn forward_backward_weighted(
        &self,
        batch: &TrainBatch,
        adapter: Option<&LoraAdapter>,
        grads: &mut Gradients,
        opts: &TrainOptions,
        weigh: PerTokenWeights<'_>,
    ) -> Result<BatchStats> {
        let layout = self.checked_layout(adapter, grads)?;
        let pass = Pass::new(self, batch, adapter, opts, true)?;
        pass.run(Some((grads, &layout, 1.0)), Some(weigh))
    }

    /// The trainable tensors of a pass (the adapter's, or every parameter), checked against the
    /// gradient buffers it will fill.
    fn checked_layout(
        &self,
        adapter: Option<&LoraAdapter>,
        grads: &Gradients,
    ) -> Result<ParamLayout> {
        let layout = match adapter {
            Some(a) => a.layout(),
            None => self.full_layout(),
        };
        let sizes: Vec<usize> = grads.tensors.iter().map(Vec::len).collect();
        if sizes != layout.sizes() {
            return Err(Error::InvalidConfig {
                path: "gradients".into(),
                reason: format!(
                    "{} gradient buffers do not match the {} trainable tensors",
                    sizes.len(),
                    layout.len()
                ),
            });
        }
        Ok(layout)
    }

    /// The loss of every labelled position, without gradients (no dropout). With `adapter: None`
    /// the base model answers: how DPO scores the reference policy of a LoRA run.
    pub fn token_losses(
        &self,
        batch: &TrainBatch,
        adapter: Option<&LoraAdapter>,
    ) -> Result<TokenLosses> {
        let opts = TrainOptions {
            recompute_activations: true,
            dropout_seed: 0,
        };
        let pass = Pass::new(self, batch, adapter, &opts, false)?;
        let (mut positions, mut losses) = (Vec::new(), Vec::new());
        let mut keep = |p: &[usize], l: &[f32]| {
            positions = p.to_vec();
            losses = l.to_vec();
            Vec::new()
        };
        let stats = pass.run(None, Some(&mut keep))?;
        Ok(TokenLosses {
            positions,
            losses,
            stats,
        })
    }
}

/// Activations of one decoder layer kept for its backward.
#[derive(Debug, Default)]
struct LayerActs {
    h1: Vec<f32>,
    rstd1: Vec<f32>,
    /// Before q_norm/k_norm (Qwen3 only).
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
    /// After norm and rotary embedding: what attention saw.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    lora: [Option<LoraActs>; 7],
}

/// One forward (and optionally backward) over a batch.
struct Pass<'a> {
    model: &'a QwenModel,
    batch: &'a TrainBatch<'a>,
    adapter: Option<&'a LoraAdapter>,
    opts: TrainOptions,
    training: bool,
    rope: rope::RopeTable,
    bt: usize,
}

impl<'a> Pass<'a> {
    fn new(
        model: &'a QwenModel,
        batch: &'a TrainBatch<'a>,
        adapter: Option<&'a LoraAdapter>,
        opts: &TrainOptions,
        training: bool,
    ) -> Result<Self> {
        let bt = batch.input_ids.len();
        let cfg = &model.config;
        let bad = |m: String| Error::InvalidConfig {
            path: "batch".into(),
            reason: m,
        };
        if batch.targets.len() != bt || batch.position_ids.len() != bt {
            return Err(bad(format!(
                "batch has {bt} ids, {} targets and {} positions",
                batch.targets.len(),
                batch.position_ids.len()
            )));
        }
        if batch.seq_lens.iter().sum::<usize>() != bt {
            return Err(bad(format!(
                "seq_lens {:?} do not sum to the batch length {bt}",
                batch.seq_lens
            )));
        }
        if let Some(&id) = batch
            .input_ids
            .iter()
            .find(|&&id| id as usize >= cfg.vocab_size)
        {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: cfg.vocab_size,
            });
        }
        if let Some(&t) = batch
            .targets
            .iter()
            .find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= cfg.vocab_size))
        {
            return Err(bad(format!(
                "target {t} is neither -100 nor a token id below {}",
                cfg.vocab_size
            )));
        }
        let max_pos = batch.position_ids.iter().copied().max().unwrap_or(0) as usize + 1;
        if max_pos > cfg.max_position_embeddings {
            return Err(Error::ContextOverflow {
                len: max_pos,
                max: cfg.max_position_embeddings,
            });
        }
        if let Some(a) = adapter
            && a.layers.len() != model.layers.len()
        {
            return Err(bad(format!(
                "adapter has {} layers, model {}",
                a.layers.len(),
                model.layers.len()
            )));
        }
        Ok(Pass {
            model,
            batch,
            adapter,
            opts: *opts,
            training,
            rope: rope::RopeTable::new(cfg.head_dim, cfg.rope_theta, max_pos),
            bt,
        })
    }

    fn lora(&self, l: usize, target: LoraTarget) -> Option<&'a LoraLinear> {
        self.adapter.and_then(|a| a.get(l, target))
    }

    /// y (bt, out) = x·Wᵀ + b [+ scale·(dropout(x)·Aᵀ)·Bᵀ], saving the LoRA branch's activations.
    fn linear_forward(
        &self,
        l: usize,
        target: LoraTarget,
        y: &mut [f32],
        x: &[f32],
        acts: &mut LayerActs,
    ) {
        let bt = self.bt;
        self.model.layers[l]
            .linear(target)
            .forward(y, x, bt, self.model.precision);
        let Some(lora) = self.lora(l, target) else {
            return;
        };
        let p = self.adapter.map(|a| a.config.lora_dropout).unwrap_or(0.0);
        let keep = (self.training && p > 0.0)
            .then(|| dropout_keep(p, self.opts.dropout_seed, l, target, x.len()));
        acts.lora[target.index()] = Some(lora.forward(y, x, keep, bt));
    }

    /// Backward of [`linear_forward`]: accumulates dx (bt, in) and the trainable gradients.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        l: usize,
        target: LoraTarget,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        acts: &LayerActs,
        grads: &mut Gradients,
        layout: &ParamLayout,
    ) {
        let bt = self.bt;
        let lin = self.model.layers[l].linear(target);
        let (dw, db) = grads.get_two_mut(
            layout.slot(Param::Weight(l, target)),
            layout.slot(Param::Bias(l, target)),
        );
        matmul::matmul_backward(
            Some(dx),
            dw,
            db,
            dy,
            x,
            lin.weight.weight(),
            bt,
            lin.in_features,
            lin.out_features,
            self.model.precision,
        );
        let (Some(lora), Some(la)) = (self.lora(l, target), acts.lora[target.index()].as_ref())
        else {
            return;
        };
        let (Some(da), Some(db)) = grads.get_two_mut(
            layout.slot(Param::LoraA(l, target)),
            layout.slot(Param::LoraB(l, target)),
        ) else {
            return;
        };
        lora.backward(dx, da, db, dy, x, la, bt);
    }

    /// One decoder layer forward: x_in (bt, c) → returns x_out (bt, c), filling `acts`.
    fn layer_forward(&self, l: usize, x_in: &[f32], acts: &mut LayerActs) -> Vec<f32> {
        let cfg = &self.model.config;
        let layer = &self.model.layers[l];
        let (bt, c, hd, nh, nkv, im) = (
            self.bt,
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps;
        let positions = self.batch.position_ids;

        acts.h1 = vec![0.0; bt * c];
        acts.rstd1 = vec![0.0; bt];
        rmsnorm::rmsnorm_forward(
            &mut acts.h1,
            &mut acts.rstd1,
            x_in,
            &layer.input_layernorm,
            bt,
            c,
            eps,
        );
        let h1 = std::mem::take(&mut acts.h1);
        let mut q = vec![0.0; bt * nh * hd];
        let mut k = vec![0.0; bt * nkv * hd];
        let mut v = vec![0.0; bt * nkv * hd];
        self.linear_forward(l, LoraTarget::QProj, &mut q, &h1, acts);
        self.linear_forward(l, LoraTarget::KProj, &mut k, &h1, acts);
        self.linear_forward(l, LoraTarget::VProj, &mut v, &h1, acts);
        acts.h1 = h1;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            let mut qo = vec![0.0; q.len()];
            let mut ko = vec![0.0; k.len()];
            acts.rstd_q = vec![0.0; bt * nh];
            acts.rstd_k = vec![0.0; bt * nkv];
            rmsnorm::rmsnorm_forward(&mut qo, &mut acts.rstd_q, &q, qn, bt * nh, hd, eps);
            rmsnorm::rmsnorm_forward(&mut ko, &mut acts.rstd_k, &k, kn, bt * nkv, hd, eps);
            acts.q_raw = std::mem::replace(&mut q, qo);
            acts.k_raw = std::mem::replace(&mut k, ko);
        }
        rope::rope_forward(&mut q, positions, &self.rope, nh, hd);
        rope::rope_forward(&mut k, positions, &self.rope, nkv, hd);
        acts.att = vec![0.0; bt * nh * hd];
        acts.lse = vec![0.0; bt * nh];
        attention::attention_forward(
            &mut acts.att,
            &mut acts.lse,
            &q,
            &k,
            &v,
            self.batch.seq_lens,
            nh,
            nkv,
            hd,
        );
        (acts.q, acts.k, acts.v) = (q, k, v);

        let mut x = x_in.to_vec();
        let mut o = vec![0.0; bt * c];
        let att = std::mem::take(&mut acts.att);
        self.linear_forward(l, LoraTarget::OProj, &mut o, &att, acts);
        acts.att = att;
        residual::residual_forward(&mut x, &o);
        acts.x_mid = x.clone();

        acts.h2 = vec![0.0; bt * c];
        acts.rstd2 = vec![0.0; bt];
        rmsnorm::rmsnorm_forward(
            &mut acts.h2,
            &mut acts.rstd2,
            &x,
            &layer.post_attention_layernorm,
            bt,
            c,
            eps,
        );
        let h2 = std::mem::take(&mut acts.h2);
        acts.gate = vec![0.0; bt * im];
        acts.up = vec![0.0; bt * im];
        let (mut gate, mut up) = (std::mem::take(&mut acts.gate), std::mem::take(&mut acts.up));
        self.linear_forward(l, LoraTarget::GateProj, &mut gate, &h2, acts);
        self.linear_forward(l, LoraTarget::UpProj, &mut up, &h2, acts);
        acts.h2 = h2;
        let mut act = vec![0.0; bt * im];
        swiglu::swiglu_forward(&mut act, &gate, &up);
        (acts.gate, acts.up) = (gate, up);
        self.linear_forward(l, LoraTarget::DownProj, &mut o, &act, acts);
        acts.act = act;
        residual::residual_forward(&mut x, &o);
        x
    }

    /// Backward of one decoder layer: `dx` holds d(x_out) on entry and d(x_in) on return.
    fn layer_backward(
        &self,
        l: usize,
        x_in: &[f32],
        acts: &LayerActs,
        dx: &mut [f32],
        grads: &mut Gradients,
        layout: &ParamLayout,
    ) {
        let cfg = &self.model.config;
        let layer = &self.model.layers[l];
        let (bt, c, hd, nh, nkv, im) = (
            self.bt,
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let positions = self.batch.position_ids;

        // MLP: x_out = x_mid + down(swiglu(gate(h2), up(h2))), h2 = norm(x_mid)
        let mut d_act = vec![0.0; bt * im];
        self.linear_backward(
            l,
            LoraTarget::DownProj,
            &mut d_act,
            dx,
            &acts.act,
            acts,
            grads,
            layout,
        );
        let mut d_gate = vec![0.0; bt * im];
        let mut d_up = vec![0.0; bt * im];
        swiglu::swiglu_backward(&mut d_gate, &mut d_up, &d_act, &acts.gate, &acts.up);
        drop(d_act);
        let mut d_h2 = vec![0.0; bt * c];
        self.linear_backward(
            l,
            LoraTarget::GateProj,
            &mut d_h2,
            &d_gate,
            &acts.h2,
            acts,
            grads,
            layout,
        );
        self.linear_backward(
            l,
            LoraTarget::UpProj,
            &mut d_h2,
            &d_up,
            &acts.h2,
            acts,
            grads,
            layout,
        );
        drop((d_gate, d_up));
        let dw = grads.get_mut(layout.slot(Param::PostAttentionLayernorm(l)));
        rmsnorm::rmsnorm_backward(
            dx,
            dw,
            &d_h2,
            &acts.x_mid,
            &layer.post_attention_layernorm,
            &acts.rstd2,
            bt,
            c,
        );

        // Attention: x_mid = x_in + o_proj(attention(rope(norm(q(h1))), rope(norm(k(h1))), v(h1)))
        let mut d_att = vec![0.0; bt * nh * hd];
        self.linear_backward(
            l,
            LoraTarget::OProj,
            &mut d_att,
            dx,
            &acts.att,
            acts,
            grads,
            layout,
        );
        let mut dq = vec![0.0; bt * nh * hd];
        let mut dk = vec![0.0; bt * nkv * hd];
        let mut dv = vec![0.0; bt * nkv * hd];
        attention::attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &d_att,
            &acts.att,
            &acts.lse,
            &acts.q,
            &acts.k,
            &acts.v,
            self.batch.seq_lens,
            nh,
            nkv,
            hd,
        );
        drop(d_att);
        rope::rope_backward(&mut dq, positions, &self.rope, nh, hd);
        rope::rope_backward(&mut dk, positions, &self.rope, nkv, hd);
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            let mut dq_raw = vec![0.0; dq.len()];
            let mut dk_raw = vec![0.0; dk.len()];
            let dw = grads.get_mut(layout.slot(Param::QNorm(l)));
            rmsnorm::rmsnorm_backward(
                &mut dq_raw,
                dw,
                &dq,
                &acts.q_raw,
                qn,
                &acts.rstd_q,
                bt * nh,
                hd,
            );
            let dw = grads.get_mut(layout.slot(Param::KNorm(l)));
            rmsnorm::rmsnorm_backward(
                &mut dk_raw,
                dw,
                &dk,
                &acts.k_raw,
                kn,
                &acts.rstd_k,
                bt * nkv,
                hd,
            );
            (dq, dk) = (dq_raw, dk_raw);
        }
        let mut d_h1 = vec![0.0; bt * c];
        self.linear_backward(
            l,
            LoraTarget::QProj,
            &mut d_h1,
            &dq,
            &acts.h1,
            acts,
            grads,
            layout,
        );
        self.linear_backward(
            l,
            LoraTarget::KProj,
            &mut d_h1,
            &dk,
            &acts.h1,
            acts,
            grads,
            layout,
        );
        self.linear_backward(
            l,
            LoraTarget::VProj,
            &mut d_h1,
            &dv,
            &acts.h1,
            acts,
            grads,
            layout,
        );
        let dw = grads.get_mut(layout.slot(Param::InputLayernorm(l)));
        rmsnorm::rmsnorm_backward(
            dx,
            dw,
            &d_h1,
            x_in,
            &layer.input_layernorm,
            &acts.rstd1,
            bt,
            c,
        );
    }

    /// With `per_token`, the labelled rows' positions and losses are handed to it after the
    /// forward, and the gradient is of `Σ_r w[r] · loss[r]` with the factors `w` it returns; the
    /// scale in `backward` must then be 1.
    fn run(
        &self,
        backward: Option<(&mut Gradients, &ParamLayout, f32)>,
        per_token: Option<PerTokenWeights<'_>>,
    ) -> Result<BatchStats> {
        let cfg = &self.model.config;
        let (bt, c, v) = (self.bt, cfg.hidden_size, cfg.vocab_size);
        let n_layers = self.model.layers.len();
        let keep_acts = backward.is_some() && !self.opts.recompute_activations;

        // Forward: layer inputs always, full activations unless recomputing.
        let mut inputs: Vec<Vec<f32>> = Vec::with_capacity(n_layers + 1);
        let mut x = vec![0.0; bt * c];
        embedding::embedding_forward(
            &mut x,
            self.batch.input_ids,
            self.model.embed_tokens.weight(),
            c,
        );
        let mut saved: Vec<LayerActs> = Vec::new();
        for l in 0..n_layers {
            let mut acts = LayerActs::default();
            let next = self.layer_forward(l, &x, &mut acts);
            inputs.push(std::mem::replace(&mut x, next));
            if keep_acts {
                saved.push(acts);
            }
        }
        let mut hf = vec![0.0; bt * c];
        let mut rstdf = vec![0.0; bt];
        rmsnorm::rmsnorm_forward(
            &mut hf,
            &mut rstdf,
            &x,
            &self.model.norm,
            bt,
            c,
            cfg.rms_norm_eps,
        );

        // Loss on labelled rows only.
        let rows: Vec<usize> = (0..bt)
            .filter(|&t| self.batch.targets[t] != IGNORE_INDEX)
            .collect();
        let n = rows.len();
        let targets: Vec<u32> = rows.iter().map(|&t| self.batch.targets[t] as u32).collect();
        let mut hsel = vec![0.0; n * c];
        for (j, &t) in rows.iter().enumerate() {
            hsel[j * c..(j + 1) * c].copy_from_slice(&hf[t * c..(t + 1) * c]);
        }
        let mut losses = vec![0.0; n];
        let mut lse = vec![0.0; n];
        let head = self.model.lm_head_weight();
        // With a frozen head (LoRA), loss and d(hidden) come from one fused pass over the vocabulary.
        let head_grad_idx = backward.as_ref().and_then(|(_, layout, _)| {
            layout.slot(if self.model.lm_head.is_some() {
                Param::LmHead
            } else {
                Param::EmbedTokens
            })
        });
        let mut dhsel = vec![0.0; if backward.is_some() { n * c } else { 0 }];
        let fused = backward.is_some() && head_grad_idx.is_none() && n > 0;
        let correct = match (&backward, n) {
            (_, 0) => 0,
            (Some((_, _, scale)), _) if fused => lm_head_ce::lm_head_ce_forward_backward(
                &mut losses,
                &mut lse,
                &mut dhsel,
                &hsel,
                head,
                &targets,
                *scale,
                n,
                c,
                v,
                self.model.precision,
            ),
            _ => lm_head_ce::lm_head_ce_forward(
                &mut losses,
                &mut lse,
                &hsel,
                head,
                &targets,
                n,
                c,
                v,
                self.model.precision,
            ),
        };
        let stats = BatchStats {
            loss_sum: losses.iter().map(|&l| l as f64).sum(),
            tokens: n,
            correct,
        };
        let row_scale = per_token.map(|weigh| weigh(&rows, &losses));
        let Some((grads, layout, scale)) = backward else {
            return Ok(stats);
        };
        if let Some(w) = &row_scale
            && w.len() != n
        {
            return Err(Error::InvalidConfig {
                path: "batch".into(),
                reason: format!("{} token weights for {n} labelled positions", w.len()),
            });
        }
        if n == 0 {
            return Ok(stats);
        }

        // Backward.
        match (&row_scale, fused) {
            // The fused pass ran with scale 1: each row's gradient is linear in its factor.
            (Some(w), true) => {
                for (d, &wr) in dhsel.chunks_exact_mut(c).zip(w) {
                    d.iter_mut().for_each(|x| *x *= wr);
                }
            }
            (Some(w), false) => {
                let dhead = grads.get_mut(head_grad_idx);
                lm_head_ce::lm_head_ce_backward_weighted(
                    &mut dhsel,
                    dhead,
                    &hsel,
                    head,
                    &targets,
                    &lse,
                    w,
                    n,
                    c,
                    v,
                    self.model.precision,
                );
            }
            (None, true) => {}
            (None, false) => {
                let dhead = grads.get_mut(head_grad_idx);
                lm_head_ce::lm_head_ce_backward(
                    &mut dhsel,
                    dhead,
                    &hsel,
                    head,
                    &targets,
                    &lse,
                    scale,
                    n,
                    c,
                    v,
                    self.model.precision,
                );
            }
        }
        drop(hsel);
        let mut dhf = vec![0.0; bt * c];
        for (j, &t) in rows.iter().enumerate() {
            dhf[t * c..(t + 1) * c].copy_from_slice(&dhsel[j * c..(j + 1) * c]);
        }
        let mut dx = vec![0.0; bt * c];
        let dw = grads.get_mut(layout.slot(Param::Norm));
        rmsnorm::rmsnorm_backward(&mut dx, dw, &dhf, &x, &self.model.norm, &rstdf, bt, c);
        drop(dhf);
        for l in (0..n_layers).rev() {
            let x_in = &inputs[l];
            let acts = match saved.pop() {
                Some(a) => a,
                None => {
                    let mut a = LayerActs::default();
                    self.layer_forward(l, x_in, &mut a);
                    a
                }
            };
            self.layer_backward(l, x_in, &acts, &mut dx, grads, layout);
        }
        if let Some(dembed) = grads.get_mut(layout.slot(Param::EmbedTokens)) {
            embedding::embedding_backward(dembed, &dx, self.batch.input_ids, c);
        }
        Ok(stats)
    }
}
