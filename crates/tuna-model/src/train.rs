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

/// Gradient buffers, one per trainable parameter tensor, in the order of
/// [`LoraAdapter::parameters_mut`] or [`QwenModel::full_parameters_mut`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    pub tensors: Vec<Vec<f32>>,
}

impl Gradients {
    pub fn zero(&mut self) {
        self.tensors.iter_mut().for_each(|t| t.fill(0.0));
    }

    pub fn as_slices(&self) -> Vec<&[f32]> {
        self.tensors.iter().map(Vec::as_slice).collect()
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

use rand::{Rng, SeedableRng, rngs::StdRng};
use tuna_engine::IGNORE_INDEX;
use tuna_engine::ops::matmul::{Layout, sgemm};
use tuna_engine::ops::{attention, embedding, lm_head_ce, matmul, residual, rmsnorm, rope, swiglu};

use crate::error::Error;
use crate::lora::{LoraLinear, LoraTarget};

/// Where each trainable tensor's gradient lives in [`Gradients::tensors`].
#[derive(Debug, Clone)]
struct GradIndex {
    embed: Option<usize>,
    layers: Vec<LayerGradIndex>,
    norm: Option<usize>,
    lm_head: Option<usize>,
}

#[derive(Debug, Clone, Default)]
struct LayerGradIndex {
    input_layernorm: Option<usize>,
    post_attention_layernorm: Option<usize>,
    q_norm: Option<usize>,
    k_norm: Option<usize>,
    /// Full fine-tuning: weight and bias of each linear layer.
    weight: [Option<usize>; 7],
    bias: [Option<usize>; 7],
    /// LoRA: index of A (B follows at A + 1).
    lora_a: [Option<usize>; 7],
}

impl GradIndex {
    fn full(model: &QwenModel) -> Self {
        let mut next = 0;
        let mut take = || {
            next += 1;
            Some(next - 1)
        };
        let embed = take();
        let layers = model
            .layers
            .iter()
            .map(|layer| {
                let mut idx = LayerGradIndex {
                    input_layernorm: take(),
                    post_attention_layernorm: take(),
                    ..Default::default()
                };
                if layer.q_norm.is_some() {
                    idx.q_norm = take();
                }
                if layer.k_norm.is_some() {
                    idx.k_norm = take();
                }
                for target in LoraTarget::ALL {
                    idx.weight[target.index()] = take();
                    if layer.linear(target).bias.is_some() {
                        idx.bias[target.index()] = take();
                    }
                }
                idx
            })
            .collect();
        let norm = take();
        let lm_head = if model.lm_head.is_some() {
            take()
        } else {
            None
        };
        GradIndex {
            embed,
            layers,
            norm,
            lm_head,
        }
    }

    fn lora(adapter: &LoraAdapter) -> Self {
        let mut next = 0;
        let layers = adapter
            .layers
            .iter()
            .map(|slots| {
                let mut idx = LayerGradIndex::default();
                for target in LoraTarget::ALL {
                    if slots[target.index()].is_some() {
                        idx.lora_a[target.index()] = Some(next);
                        next += 2;
                    }
                }
                idx
            })
            .collect();
        GradIndex {
            embed: None,
            layers,
            norm: None,
            lm_head: None,
        }
    }
}

impl QwenModel {
    /// Every parameter as mutable f32 (weights are widened to owned f32 on first call), in the
    /// order of [`full_parameter_names`](Self::full_parameter_names).
    pub fn full_parameters_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        out.push(self.embed_tokens.f32_mut());
        for layer in &mut self.layers {
            let super::qwen::DecoderLayer {
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
            out.push(input_layernorm);
            out.push(post_attention_layernorm);
            if let Some(n) = q_norm {
                out.push(n);
            }
            if let Some(n) = k_norm {
                out.push(n);
            }
            // LoraTarget::ALL order.
            for lin in [
                q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj,
            ] {
                out.push(lin.weight.f32_mut());
                if let Some(b) = &mut lin.bias {
                    out.push(b);
                }
            }
        }
        out.push(&mut self.norm);
        if let Some(h) = &mut self.lm_head {
            out.push(h.f32_mut());
        }
        out
    }

    /// Hugging Face names of [`full_parameters_mut`](Self::full_parameters_mut), same order.
    pub fn full_parameter_names(&self) -> Vec<String> {
        let mut names = vec!["model.embed_tokens.weight".to_string()];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            names.push(format!("{p}.input_layernorm.weight"));
            names.push(format!("{p}.post_attention_layernorm.weight"));
            if layer.q_norm.is_some() {
                names.push(format!("{p}.self_attn.q_norm.weight"));
            }
            if layer.k_norm.is_some() {
                names.push(format!("{p}.self_attn.k_norm.weight"));
            }
            for target in LoraTarget::ALL {
                names.push(format!("{p}.{}.weight", target.module_path()));
                if layer.linear(target).bias.is_some() {
                    names.push(format!("{p}.{}.bias", target.module_path()));
                }
            }
        }
        names.push("model.norm.weight".into());
        if self.lm_head.is_some() {
            names.push("lm_head.weight".into());
        }
        names
    }

    /// Zeroed gradients for full fine-tuning, matching [`full_parameters_mut`](Self::full_parameters_mut).
    pub fn full_gradients(&self) -> Gradients {
        let c = self.config.hidden_size;
        let mut sizes = vec![self.embed_tokens.len()];
        for layer in &self.layers {
            sizes.push(c);
            sizes.push(c);
            if let Some(n) = &layer.q_norm {
                sizes.push(n.len());
            }
            if let Some(n) = &layer.k_norm {
                sizes.push(n.len());
            }
            for target in LoraTarget::ALL {
                let lin = layer.linear(target);
                sizes.push(lin.weight.len());
                if let Some(b) = &lin.bias {
                    sizes.push(b.len());
                }
            }
        }
        sizes.push(c);
        if let Some(h) = &self.lm_head {
            sizes.push(h.len());
        }
        Gradients {
            tensors: sizes.into_iter().map(|n| vec![0.0; n]).collect(),
        }
    }

    /// Forward and backward on one packed micro-batch (see the module docs). With `adapter`, only
    /// LoRA gradients are computed (in [`LoraAdapter::parameters_mut`] order); without, every
    /// parameter's (in [`full_parameters_mut`](Self::full_parameters_mut) order).
    pub fn forward_backward(
        &self,
        batch: &TrainBatch,
        adapter: Option<&LoraAdapter>,
        grads: &mut Gradients,
        scale: f32,
        opts: &TrainOptions,
    ) -> Result<BatchStats> {
        let index = match adapter {
            Some(a) => GradIndex::lora(a),
            None => GradIndex::full(self),
        };
        let pass = Pass::new(self, batch, adapter, opts, true)?;
        pass.run(Some((grads, &index, scale)), None)
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
        let index = match adapter {
            Some(a) => GradIndex::lora(a),
            None => GradIndex::full(self),
        };
        let pass = Pass::new(self, batch, adapter, opts, true)?;
        pass.run(Some((grads, &index, 1.0)), Some(weigh))
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

impl LoraAdapter {
    /// A and B of every adapted layer: layer by layer, targets in `LoraTarget::ALL` order, A then B.
    pub fn parameters_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        for slots in &mut self.layers {
            for lin in slots.iter_mut().flatten() {
                out.push(&mut lin.a);
                out.push(&mut lin.b);
            }
        }
        out
    }

    /// PEFT names of [`parameters_mut`](Self::parameters_mut), same order.
    pub fn parameter_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (l, slots) in self.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if slots[target.index()].is_some() {
                    names.push(crate::lora::peft_tensor_name(l, target, "lora_A"));
                    names.push(crate::lora::peft_tensor_name(l, target, "lora_B"));
                }
            }
        }
        names
    }

    /// Zeroed gradients matching [`parameters_mut`](Self::parameters_mut).
    pub fn gradients(&self) -> Gradients {
        let mut tensors = Vec::new();
        for lin in self.layers.iter().flatten().flatten() {
            tensors.push(vec![0.0; lin.a.len()]);
            tensors.push(vec![0.0; lin.b.len()]);
        }
        Gradients { tensors }
    }
}

/// What one LoRA branch keeps for backward.
#[derive(Debug, Default)]
struct LoraActs {
    /// Dropout multipliers (0 or 1/(1-p)) applied to the branch input, when dropout is on.
    keep: Option<Vec<f32>>,
    /// `dropout(x) · Aᵀ` (bt, r), unscaled.
    u: Vec<f32>,
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
        self.model.layers[l].linear(target).forward(y, x, bt);
        let Some(lora) = self.lora(l, target) else {
            return;
        };
        let p = self.adapter.map(|a| a.config.lora_dropout).unwrap_or(0.0);
        let keep = (self.training && p > 0.0).then(|| {
            let seed = self.opts.dropout_seed
                ^ ((l as u64) << 8 | target.index() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut rng = StdRng::seed_from_u64(seed);
            let kept = 1.0 / (1.0 - p);
            (0..x.len())
                .map(|_| if rng.random::<f32>() < p { 0.0 } else { kept })
                .collect::<Vec<f32>>()
        });
        let dropped: Vec<f32>;
        let x_in = match &keep {
            Some(k) => {
                dropped = x.iter().zip(k).map(|(a, b)| a * b).collect();
                &dropped[..]
            }
            None => x,
        };
        let mut u = vec![0.0; bt * lora.rank];
        sgemm(
            &mut u,
            x_in,
            Layout::Normal,
            &lora.a,
            Layout::Transposed,
            bt,
            lora.in_features,
            lora.rank,
            false,
        );
        let us: Vec<f32> = u.iter().map(|v| v * lora.scale).collect();
        sgemm(
            y,
            &us,
            Layout::Normal,
            &lora.b,
            Layout::Transposed,
            bt,
            lora.rank,
            lora.out_features,
            true,
        );
        acts.lora[target.index()] = Some(LoraActs { keep, u });
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
        index: &LayerGradIndex,
    ) {
        let bt = self.bt;
        let lin = self.model.layers[l].linear(target);
        let t = target.index();
        let (dw, db) = split_two(&mut grads.tensors, index.weight[t], index.bias[t]);
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
        );
        let (Some(lora), Some(a_idx), Some(la)) =
            (self.lora(l, target), index.lora_a[t], acts.lora[t].as_ref())
        else {
            return;
        };
        let (r, i, o, s) = (lora.rank, lora.in_features, lora.out_features, lora.scale);
        let (da, db) = grads.tensors[a_idx..a_idx + 2].split_at_mut(1);
        // dB (o, r) += s · dyᵀ · u
        let us: Vec<f32> = la.u.iter().map(|v| v * s).collect();
        sgemm(
            &mut db[0],
            dy,
            Layout::Transposed,
            &us,
            Layout::Normal,
            o,
            bt,
            r,
            true,
        );
        // du (bt, r) = s · dy · B
        let mut du = vec![0.0; bt * r];
        sgemm(
            &mut du,
            dy,
            Layout::Normal,
            &lora.b,
            Layout::Normal,
            bt,
            o,
            r,
            false,
        );
        du.iter_mut().for_each(|v| *v *= s);
        // dA (r, i) += duᵀ · dropout(x); dx += (du · A) ⊙ keep
        match &la.keep {
            None => {
                sgemm(
                    &mut da[0],
                    &du,
                    Layout::Transposed,
                    x,
                    Layout::Normal,
                    r,
                    bt,
                    i,
                    true,
                );
                sgemm(
                    dx,
                    &du,
                    Layout::Normal,
                    &lora.a,
                    Layout::Normal,
                    bt,
                    r,
                    i,
                    true,
                );
            }
            Some(keep) => {
                let dropped: Vec<f32> = x.iter().zip(keep).map(|(a, b)| a * b).collect();
                sgemm(
                    &mut da[0],
                    &du,
                    Layout::Transposed,
                    &dropped,
                    Layout::Normal,
                    r,
                    bt,
                    i,
                    true,
                );
                let mut dxd = vec![0.0; bt * i];
                sgemm(
                    &mut dxd,
                    &du,
                    Layout::Normal,
                    &lora.a,
                    Layout::Normal,
                    bt,
                    r,
                    i,
                    false,
                );
                dx.iter_mut()
                    .zip(dxd.iter().zip(keep))
                    .for_each(|(d, (g, k))| *d += g * k);
            }
        }
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
        index: &GradIndex,
    ) {
        let cfg = &self.model.config;
        let layer = &self.model.layers[l];
        let idx = &index.layers[l];
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
            idx,
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
            idx,
        );
        self.linear_backward(
            l,
            LoraTarget::UpProj,
            &mut d_h2,
            &d_up,
            &acts.h2,
            acts,
            grads,
            idx,
        );
        drop((d_gate, d_up));
        let dw = idx
            .post_attention_layernorm
            .map(|i| grads.tensors[i].as_mut_slice());
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
            idx,
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
            let dw = idx.q_norm.map(|i| grads.tensors[i].as_mut_slice());
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
            let dw = idx.k_norm.map(|i| grads.tensors[i].as_mut_slice());
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
            idx,
        );
        self.linear_backward(
            l,
            LoraTarget::KProj,
            &mut d_h1,
            &dk,
            &acts.h1,
            acts,
            grads,
            idx,
        );
        self.linear_backward(
            l,
            LoraTarget::VProj,
            &mut d_h1,
            &dv,
            &acts.h1,
            acts,
            grads,
            idx,
        );
        let dw = idx.input_layernorm.map(|i| grads.tensors[i].as_mut_slice());
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
        backward: Option<(&mut Gradients, &GradIndex, f32)>,
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
        let head_grad_idx = backward.as_ref().and_then(|(_, index, _)| {
            if self.model.lm_head.is_some() {
                index.lm_head
            } else {
                index.embed
            }
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
            ),
        };
        let stats = BatchStats {
            loss_sum: losses.iter().map(|&l| l as f64).sum(),
            tokens: n,
            correct,
        };
        let row_scale = per_token.map(|weigh| weigh(&rows, &losses));
        let Some((grads, index, scale)) = backward else {
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
                let dhead = head_grad_idx.map(|i| grads.tensors[i].as_mut_slice());
                lm_head_ce::lm_head_ce_backward_weighted(
                    &mut dhsel, dhead, &hsel, head, &targets, &lse, w, n, c, v,
                );
            }
            (None, true) => {}
            (None, false) => {
                let dhead = head_grad_idx.map(|i| grads.tensors[i].as_mut_slice());
                lm_head_ce::lm_head_ce_backward(
                    &mut dhsel, dhead, &hsel, head, &targets, &lse, scale, n, c, v,
                );
            }
        }
        drop(hsel);
        let mut dhf = vec![0.0; bt * c];
        for (j, &t) in rows.iter().enumerate() {
            dhf[t * c..(t + 1) * c].copy_from_slice(&dhsel[j * c..(j + 1) * c]);
        }
        let mut dx = vec![0.0; bt * c];
        let dw = index.norm.map(|i| grads.tensors[i].as_mut_slice());
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
            self.layer_backward(l, x_in, &acts, &mut dx, grads, index);
        }
        if let Some(i) = index.embed {
            embedding::embedding_backward(&mut grads.tensors[i], &dx, self.batch.input_ids, c);
        }
        Ok(stats)
    }
}

/// Two distinct optional elements of `v` borrowed mutably at once.
fn split_two(
    v: &mut [Vec<f32>],
    a: Option<usize>,
    b: Option<usize>,
) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
    match (a, b) {
        (Some(i), Some(j)) => {
            assert_ne!(i, j, "one gradient buffer used twice");
            if i < j {
                let (lo, hi) = v.split_at_mut(j);
                (Some(lo[i].as_mut_slice()), Some(hi[0].as_mut_slice()))
            } else {
                let (lo, hi) = v.split_at_mut(i);
                (Some(hi[0].as_mut_slice()), Some(lo[j].as_mut_slice()))
            }
        }
        (Some(i), None) => (Some(v[i].as_mut_slice()), None),
        (None, Some(j)) => (None, Some(v[j].as_mut_slice())),
        (None, None) => (None, None),
    }
}
