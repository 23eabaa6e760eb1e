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

use crate::backend::{Backend, CpuBackend, Heads, LinearGrads, RowScale};
use crate::error::Error;
use crate::lora::{LoraTarget, dropout_keep};
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
        let backend = self.cpu_backend(adapter)?;
        let layout = checked_layout(self.layout_for(adapter), grads)?;
        let pass = Pass::new(&backend, batch, opts, true)?;
        pass.run(Some((&mut grads.tensors, &layout, scale)), None)
    }

    /// Loss and accuracy of a batch without gradients (evaluation).
    pub fn evaluate(
        &self,
        batch: &TrainBatch,
        adapter: Option<&LoraAdapter>,
    ) -> Result<BatchStats> {
        evaluate_on(&self.cpu_backend(adapter)?, batch)
    }

    /// The CPU engine over this model and `adapter`, checked to fit each other.
    pub fn cpu_backend<'a>(&'a self, adapter: Option<&'a LoraAdapter>) -> Result<CpuBackend<'a>> {
        if let Some(a) = adapter
            && a.layers.len() != self.layers.len()
        {
            return Err(Error::InvalidConfig {
                path: "batch".into(),
                reason: format!(
                    "adapter has {} layers, model {}",
                    a.layers.len(),
                    self.layers.len()
                ),
            });
        }
        Ok(CpuBackend {
            model: self,
            adapter,
        })
    }

    fn layout_for(&self, adapter: Option<&LoraAdapter>) -> ParamLayout {
        match adapter {
            Some(a) => a.layout(),
            None => self.full_layout(),
        }
    }
}

/// [`QwenModel::forward_backward`] on any backend: `grads` are the backend's buffers in
/// `layout` order (checked), accumulated into.
pub fn forward_backward_on<B: Backend>(
    backend: &B,
    batch: &TrainBatch,
    layout: &ParamLayout,
    grads: &mut [B::Buf],
    scale: f32,
    opts: &TrainOptions,
) -> Result<BatchStats> {
    if grads.len() != layout.len() {
        return Err(layout_mismatch(grads.len(), layout.len()));
    }
    let pass = Pass::new(backend, batch, opts, true)?;
    pass.run(Some((grads, layout, scale)), None)
}

/// [`QwenModel::evaluate`] on any backend.
pub fn evaluate_on<B: Backend>(backend: &B, batch: &TrainBatch) -> Result<BatchStats> {
    let opts = TrainOptions {
        recompute_activations: true,
        dropout_seed: 0,
    };
    let pass = Pass::new(backend, batch, &opts, false)?;
    pass.run(None, None)
}

fn layout_mismatch(buffers: usize, tensors: usize) -> Error {
    Error::InvalidConfig {
        path: "gradients".into(),
        reason: format!("{buffers} gradient buffers do not match the {tensors} trainable tensors"),
    }
}

/// The trainable tensors of a pass, checked against the gradient buffers it will fill.
fn checked_layout(layout: ParamLayout, grads: &Gradients) -> Result<ParamLayout> {
    let sizes: Vec<usize> = grads.tensors.iter().map(Vec::len).collect();
    if sizes != layout.sizes() {
        return Err(layout_mismatch(sizes.len(), layout.len()));
    }
    Ok(layout)
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
        let backend = self.cpu_backend(adapter)?;
        let layout = checked_layout(self.layout_for(adapter), grads)?;
        let pass = Pass::new(&backend, batch, opts, true)?;
        pass.run(Some((&mut grads.tensors, &layout, 1.0)), Some(weigh))
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
        let backend = self.cpu_backend(adapter)?;
        let pass = Pass::new(&backend, batch, &opts, false)?;
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
struct LayerActs<B: Backend> {
    h1: B::Buf,
    rstd1: B::Buf,
    /// Qwen3: q and k before q_norm/k_norm, and the norms' rstd.
    qk_norm: Option<QkNormActs<B>>,
    /// After norm and rotary embedding: what attention saw.
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    lse: B::Buf,
    x_mid: B::Buf,
    h2: B::Buf,
    rstd2: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    act: B::Buf,
    lora: [Option<B::LoraActs>; 7],
}

struct QkNormActs<B: Backend> {
    q_raw: B::Buf,
    k_raw: B::Buf,
    rstd_q: B::Buf,
    rstd_k: B::Buf,
}

/// Gradient buffers of a pass, their layout and the loss scale.
type Backward<'g, B> = (&'g mut [<B as Backend>::Buf], &'g ParamLayout, f32);

/// One forward (and optionally backward) over a batch.
struct Pass<'a, B: Backend> {
    backend: &'a B,
    batch: &'a TrainBatch<'a>,
    on_device: B::Batch,
    opts: TrainOptions,
    training: bool,
    bt: usize,
}

/// The buffer of slot `i`, when trained.
fn slot_mut<T>(v: &mut [T], slot: Option<usize>) -> Option<&mut T> {
    slot.map(|i| &mut v[i])
}

/// Two distinct optional buffers borrowed mutably at once.
fn two_slots_mut<T>(
    v: &mut [T],
    a: Option<usize>,
    b: Option<usize>,
) -> (Option<&mut T>, Option<&mut T>) {
    match (a, b) {
        (Some(i), Some(j)) => {
            assert_ne!(i, j, "one gradient buffer used twice");
            if i < j {
                let (lo, hi) = v.split_at_mut(j);
                (Some(&mut lo[i]), Some(&mut hi[0]))
            } else {
                let (lo, hi) = v.split_at_mut(i);
                (Some(&mut hi[0]), Some(&mut lo[j]))
            }
        }
        (Some(i), None) => (Some(&mut v[i]), None),
        (None, Some(j)) => (None, Some(&mut v[j])),
        (None, None) => (None, None),
    }
}

impl<'a, B: Backend> Pass<'a, B> {
    fn new(
        backend: &'a B,
        batch: &'a TrainBatch<'a>,
        opts: &TrainOptions,
        training: bool,
    ) -> Result<Self> {
        let bt = batch.input_ids.len();
        let cfg = backend.config();
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
        Ok(Pass {
            backend,
            batch,
            on_device: backend.batch(batch, max_pos)?,
            opts: *opts,
            training,
            bt,
        })
    }

    /// y (bt, out) = x·Wᵀ + b [+ scale·(dropout(x)·Aᵀ)·Bᵀ]; returns the LoRA branch's activations.
    fn linear_forward(
        &self,
        l: usize,
        target: LoraTarget,
        y: &mut B::Buf,
        x: &B::Buf,
        in_features: usize,
    ) -> Result<Option<B::LoraActs>> {
        let p = self.backend.lora_dropout();
        let keep = (self.training && p > 0.0 && self.backend.adapted(l, target))
            .then(|| dropout_keep(p, self.opts.dropout_seed, l, target, self.bt * in_features));
        self.backend.linear_forward(l, target, y, x, keep, self.bt)
    }

    /// Backward of [`linear_forward`]: accumulates dx (bt, in) and the trainable gradients.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        l: usize,
        target: LoraTarget,
        dx: &mut B::Buf,
        dy: &B::Buf,
        x: &B::Buf,
        acts: &LayerActs<B>,
        grads: &mut [B::Buf],
        layout: &ParamLayout,
    ) -> Result<()> {
        let (w, b) = (
            layout.slot(Param::Weight(l, target)),
            layout.slot(Param::Bias(l, target)),
        );
        let (a_slot, b_slot) = (
            layout.slot(Param::LoraA(l, target)),
            layout.slot(Param::LoraB(l, target)),
        );
        // A run trains either the base weights or the adapter, never both.
        let linear_grads = if a_slot.is_some() {
            let (da, db) = two_slots_mut(grads, a_slot, b_slot);
            LinearGrads {
                weight: None,
                bias: None,
                lora: da.zip(db),
            }
        } else {
            let (dw, db) = two_slots_mut(grads, w, b);
            LinearGrads {
                weight: dw,
                bias: db,
                lora: None,
            }
        };
        let lora = acts.lora[target.index()].as_ref();
        self.backend
            .linear_backward(l, target, dx, linear_grads, dy, x, lora, self.bt)
    }

    /// One decoder layer forward: x_in (bt, c) → returns x_out (bt, c) and its activations.
    fn layer_forward(&self, l: usize, x_in: &B::Buf) -> Result<(B::Buf, LayerActs<B>)> {
        let be = self.backend;
        let cfg = be.config();
        let (bt, c, hd, nh, nkv, im) = (
            self.bt,
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps;
        let mut lora: [Option<B::LoraActs>; 7] = Default::default();

        let mut h1 = be.zeros(bt * c);
        let mut rstd1 = be.zeros(bt);
        be.rmsnorm_forward(
            &mut h1,
            &mut rstd1,
            x_in,
            Param::InputLayernorm(l),
            bt,
            c,
            eps,
        )?;
        let mut q = be.zeros(bt * nh * hd);
        let mut k = be.zeros(bt * nkv * hd);
        let mut v = be.zeros(bt * nkv * hd);
        lora[LoraTarget::QProj.index()] =
            self.linear_forward(l, LoraTarget::QProj, &mut q, &h1, c)?;
        lora[LoraTarget::KProj.index()] =
            self.linear_forward(l, LoraTarget::KProj, &mut k, &h1, c)?;
        lora[LoraTarget::VProj.index()] =
            self.linear_forward(l, LoraTarget::VProj, &mut v, &h1, c)?;
        let qk_norm = if cfg.qk_norm {
            let mut qo = be.zeros(bt * nh * hd);
            let mut ko = be.zeros(bt * nkv * hd);
            let mut rstd_q = be.zeros(bt * nh);
            let mut rstd_k = be.zeros(bt * nkv);
            be.rmsnorm_forward(&mut qo, &mut rstd_q, &q, Param::QNorm(l), bt * nh, hd, eps)?;
            be.rmsnorm_forward(&mut ko, &mut rstd_k, &k, Param::KNorm(l), bt * nkv, hd, eps)?;
            Some(QkNormActs {
                q_raw: std::mem::replace(&mut q, qo),
                k_raw: std::mem::replace(&mut k, ko),
                rstd_q,
                rstd_k,
            })
        } else {
            None
        };
        be.rope_forward(&mut q, &self.on_device, nh, hd)?;
        be.rope_forward(&mut k, &self.on_device, nkv, hd)?;
        let mut att = be.zeros(bt * nh * hd);
        let mut lse = be.zeros(bt * nh);
        let heads = Heads {
            q: nh,
            kv: nkv,
            dim: hd,
        };
        be.attention_forward(&mut att, &mut lse, &q, &k, &v, &self.on_device, heads)?;

        let mut x = be.copy(x_in);
        let mut o = be.zeros(bt * c);
        lora[LoraTarget::OProj.index()] =
            self.linear_forward(l, LoraTarget::OProj, &mut o, &att, nh * hd)?;
        be.residual(&mut x, &o)?;
        let x_mid = be.copy(&x);

        let mut h2 = be.zeros(bt * c);
        let mut rstd2 = be.zeros(bt);
        be.rmsnorm_forward(
            &mut h2,
            &mut rstd2,
            &x,
            Param::PostAttentionLayernorm(l),
            bt,
            c,
            eps,
        )?;
        let mut gate = be.zeros(bt * im);
        let mut up = be.zeros(bt * im);
        lora[LoraTarget::GateProj.index()] =
            self.linear_forward(l, LoraTarget::GateProj, &mut gate, &h2, c)?;
        lora[LoraTarget::UpProj.index()] =
            self.linear_forward(l, LoraTarget::UpProj, &mut up, &h2, c)?;
        let mut act = be.zeros(bt * im);
        be.swiglu_forward(&mut act, &gate, &up)?;
        lora[LoraTarget::DownProj.index()] =
            self.linear_forward(l, LoraTarget::DownProj, &mut o, &act, im)?;
        be.residual(&mut x, &o)?;
        let acts = LayerActs {
            h1,
            rstd1,
            qk_norm,
            q,
            k,
            v,
            att,
            lse,
            x_mid,
            h2,
            rstd2,
            gate,
            up,
            act,
            lora,
        };
        Ok((x, acts))
    }

    /// Backward of one decoder layer: `dx` holds d(x_out) on entry and d(x_in) on return.
    fn layer_backward(
        &self,
        l: usize,
        x_in: &B::Buf,
        acts: &LayerActs<B>,
        dx: &mut B::Buf,
        grads: &mut [B::Buf],
        layout: &ParamLayout,
    ) -> Result<()> {
        let be = self.backend;
        let cfg = be.config();
        let (bt, c, hd, nh, nkv, im) = (
            self.bt,
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let lin = |t, dx: &mut B::Buf, dy: &B::Buf, x: &B::Buf, g: &mut [B::Buf]| {
            self.linear_backward(l, t, dx, dy, x, acts, g, layout)
        };

        // MLP: x_out = x_mid + down(swiglu(gate(h2), up(h2))), h2 = norm(x_mid)
        let mut d_act = be.zeros(bt * im);
        lin(LoraTarget::DownProj, &mut d_act, dx, &acts.act, grads)?;
        let mut d_gate = be.zeros(bt * im);
        let mut d_up = be.zeros(bt * im);
        be.swiglu_backward(&mut d_gate, &mut d_up, &d_act, &acts.gate, &acts.up)?;
        drop(d_act);
        let mut d_h2 = be.zeros(bt * c);
        lin(LoraTarget::GateProj, &mut d_h2, &d_gate, &acts.h2, grads)?;
        lin(LoraTarget::UpProj, &mut d_h2, &d_up, &acts.h2, grads)?;
        drop((d_gate, d_up));
        let dw = slot_mut(grads, layout.slot(Param::PostAttentionLayernorm(l)));
        be.rmsnorm_backward(
            dx,
            dw,
            &d_h2,
            &acts.x_mid,
            Param::PostAttentionLayernorm(l),
            &acts.rstd2,
            bt,
            c,
        )?;

        // Attention: x_mid = x_in + o_proj(attention(rope(norm(q(h1))), rope(norm(k(h1))), v(h1)))
        let mut d_att = be.zeros(bt * nh * hd);
        lin(LoraTarget::OProj, &mut d_att, dx, &acts.att, grads)?;
        let mut dq = be.zeros(bt * nh * hd);
        let mut dk = be.zeros(bt * nkv * hd);
        let mut dv = be.zeros(bt * nkv * hd);
        let heads = Heads {
            q: nh,
            kv: nkv,
            dim: hd,
        };
        be.attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &d_att,
            &acts.att,
            &acts.lse,
            &acts.q,
            &acts.k,
            &acts.v,
            &self.on_device,
            heads,
        )?;
        drop(d_att);
        be.rope_backward(&mut dq, &self.on_device, nh, hd)?;
        be.rope_backward(&mut dk, &self.on_device, nkv, hd)?;
        if let Some(n) = &acts.qk_norm {
            let mut dq_raw = be.zeros(bt * nh * hd);
            let mut dk_raw = be.zeros(bt * nkv * hd);
            let dw = slot_mut(grads, layout.slot(Param::QNorm(l)));
            be.rmsnorm_backward(
                &mut dq_raw,
                dw,
                &dq,
                &n.q_raw,
                Param::QNorm(l),
                &n.rstd_q,
                bt * nh,
                hd,
            )?;
            let dw = slot_mut(grads, layout.slot(Param::KNorm(l)));
            be.rmsnorm_backward(
                &mut dk_raw,
                dw,
                &dk,
                &n.k_raw,
                Param::KNorm(l),
                &n.rstd_k,
                bt * nkv,
                hd,
            )?;
            (dq, dk) = (dq_raw, dk_raw);
        }
        let mut d_h1 = be.zeros(bt * c);
        lin(LoraTarget::QProj, &mut d_h1, &dq, &acts.h1, grads)?;
        lin(LoraTarget::KProj, &mut d_h1, &dk, &acts.h1, grads)?;
        lin(LoraTarget::VProj, &mut d_h1, &dv, &acts.h1, grads)?;
        let dw = slot_mut(grads, layout.slot(Param::InputLayernorm(l)));
        be.rmsnorm_backward(
            dx,
            dw,
            &d_h1,
            x_in,
            Param::InputLayernorm(l),
            &acts.rstd1,
            bt,
            c,
        )
    }

    /// With `per_token`, the labelled rows' positions and losses are handed to it after the
    /// forward, and the gradient is of `Σ_r w[r] · loss[r]` with the factors `w` it returns; the
    /// scale in `backward` must then be 1.
    fn run(
        &self,
        backward: Option<Backward<'_, B>>,
        per_token: Option<PerTokenWeights<'_>>,
    ) -> Result<BatchStats> {
        let be = self.backend;
        let cfg = be.config();
        let (bt, c) = (self.bt, cfg.hidden_size);
        let n_layers = cfg.num_layers;
        let keep_acts = backward.is_some() && !self.opts.recompute_activations;

        // Forward: layer inputs always, full activations unless recomputing.
        let mut inputs: Vec<B::Buf> = Vec::with_capacity(n_layers + 1);
        let mut x = be.zeros(bt * c);
        be.embedding_forward(&mut x, &self.on_device)?;
        let mut saved: Vec<LayerActs<B>> = Vec::new();
        for l in 0..n_layers {
            let (next, acts) = self.layer_forward(l, &x)?;
            inputs.push(std::mem::replace(&mut x, next));
            if keep_acts {
                saved.push(acts);
            }
        }
        let mut hf = be.zeros(bt * c);
        let mut rstdf = be.zeros(bt);
        be.rmsnorm_forward(
            &mut hf,
            &mut rstdf,
            &x,
            Param::Norm,
            bt,
            c,
            cfg.rms_norm_eps,
        )?;

        // Loss on labelled rows only.
        let rows: Vec<usize> = (0..bt)
            .filter(|&t| self.batch.targets[t] != IGNORE_INDEX)
            .collect();
        let n = rows.len();
        let row_ids = be.ids(&rows.iter().map(|&t| t as u32).collect::<Vec<_>>());
        let targets = be.ids(
            &rows
                .iter()
                .map(|&t| self.batch.targets[t] as u32)
                .collect::<Vec<_>>(),
        );
        let mut hsel = be.zeros(n * c);
        be.gather_rows(&mut hsel, &hf, &row_ids, c)?;
        drop(hf);
        let mut lse = be.zeros(n);
        // With a frozen head (LoRA), loss and d(hidden) come from one fused pass over the vocabulary.
        let head_grad_idx = backward.as_ref().and_then(|(_, layout, _)| {
            layout.slot(if be.tied_head() {
                Param::EmbedTokens
            } else {
                Param::LmHead
            })
        });
        let mut dhsel = be.zeros(if backward.is_some() { n * c } else { 0 });
        let fused = backward.is_some() && head_grad_idx.is_none() && n > 0;
        let (losses, correct) = match (&backward, n) {
            (_, 0) => (Vec::new(), 0),
            (Some((_, _, scale)), _) if fused => {
                be.lm_head_ce_forward_backward(&mut lse, &mut dhsel, &hsel, &targets, *scale, n)?
            }
            _ => be.lm_head_ce_forward(&mut lse, &hsel, &targets, n)?,
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
            (Some(w), true) => be.scale_rows(&mut dhsel, w, c)?,
            (Some(w), false) => {
                let dhead = slot_mut(grads, head_grad_idx);
                be.lm_head_ce_backward(
                    &mut dhsel,
                    dhead,
                    &hsel,
                    &targets,
                    &lse,
                    RowScale::PerRow(w),
                    n,
                )?;
            }
            (None, true) => {}
            (None, false) => {
                let dhead = slot_mut(grads, head_grad_idx);
                be.lm_head_ce_backward(
                    &mut dhsel,
                    dhead,
                    &hsel,
                    &targets,
                    &lse,
                    RowScale::Uniform(scale),
                    n,
                )?;
            }
        }
        drop(hsel);
        let mut dhf = be.zeros(bt * c);
        be.scatter_add_rows(&mut dhf, &dhsel, &row_ids, c)?;
        let mut dx = be.zeros(bt * c);
        let dw = slot_mut(grads, layout.slot(Param::Norm));
        be.rmsnorm_backward(&mut dx, dw, &dhf, &x, Param::Norm, &rstdf, bt, c)?;
        drop(dhf);
        for l in (0..n_layers).rev() {
            let x_in = &inputs[l];
            let acts = match saved.pop() {
                Some(a) => a,
                None => self.layer_forward(l, x_in)?.1,
            };
            self.layer_backward(l, x_in, &acts, &mut dx, grads, layout)?;
        }
        if let Some(dembed) = slot_mut(grads, layout.slot(Param::EmbedTokens)) {
            be.embedding_backward(dembed, &dx, &self.on_device)?;
        }
        Ok(stats)
    }
}
