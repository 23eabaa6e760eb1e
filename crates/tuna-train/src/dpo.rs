//! Direct preference optimisation (DPO, Rafailov et al. 2023, <https://arxiv.org/abs/2305.18290>)
//! for [`crate::Trainer`]: the objective's half of a step, evaluation and the reference policy.
//! The loop itself (accumulation, clipping, AdamW, checkpoints, resume, samples) is the trainer's.
//!
//! Per pair, with `π` the summed log-probability of an answer's trained tokens (the tokens
//! [`tuna_data::tokenize::ChatTokenizer::encode_preference`] labels) under the trained model and
//! `π_ref` under the reference:
//!
//! ```text
//! z    = β · ((π(chosen) − π_ref(chosen)) − (π(rejected) − π_ref(rejected)))
//! loss = −log σ(z)                                  (TRL's loss_type "sigmoid")
//! ```
//!
//! A step's loss is the mean over its pairs (all micro-batches). Its gradient goes through the
//! model's per-token weighted pass: `∂loss/∂CE_t = +β·σ(−z)/P` on the preferred answer's tokens
//! and `−β·σ(−z)/P` on the other's (`P` pairs in the step), so a step costs one forward and one
//! backward per micro-batch, both sequences of a pair packed in the same micro-batch.
//!
//! The reference is the model as the run starts: the base model for a fresh LoRA adapter (its
//! `B = 0` makes the adapter a no-op, so the reference pass runs without it), the starting adapter
//! with `init_adapter` (DPO after SFT, as TRL's copied "ref" adapter), the starting weights for
//! full fine-tuning. Its log-probabilities are computed once per pair before the first update,
//! cached for every epoch and saved in each checkpoint (`reference_logps.safetensors`), so neither
//! a second copy of the weights nor a reference forward per step is needed, and a resumed run
//! (even a full one, whose starting weights are gone) continues bit for bit.
//!
//! Metrics follow TRL's names and definitions ([`PreferenceMetrics`]). As in TRL, dropout is off
//! (`disable_dropout=True`): the trainer zeroes the LoRA dropout of a DPO run.

use std::collections::HashMap;
use std::path::Path;

use tuna_model::Gradients;
use tuna_model::train::{BatchStats, TrainOptions};
use tuna_model::{LoraAdapter, QwenModel};

use crate::config::BatchSize;
use crate::data::{Dataset, MicroBatch, units_in_order};
use crate::error::{Error, Result};
use crate::metrics::PreferenceMetrics;

/// The reference log-probabilities in a checkpoint: f64 tensors `train` and `validation`, each
/// (pairs, 2) = (preferred, non-preferred).
pub const REFERENCE_FILE: &str = "reference_logps.safetensors";

/// Summed log-probabilities of a pair's two answers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairLogps {
    pub chosen: f64,
    pub rejected: f64,
}

/// The reference policy's log-probabilities of every training and validation pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferenceLogps {
    pub train: Vec<PairLogps>,
    pub validation: Vec<PairLogps>,
}

impl ReferenceLogps {
    /// Scores every pair of `data` with `model` (+ `adapter`), micro-batches grouped as `batch`.
    pub fn compute(
        model: &QwenModel,
        adapter: Option<&LoraAdapter>,
        data: &Dataset,
        batch: BatchSize,
    ) -> Result<Self> {
        let score = |examples| -> Result<Vec<PairLogps>> {
            let mut out = Vec::new();
            for (_, mb) in units_in_order(data, examples, batch) {
                let tl = model.token_losses(&mb.as_train_batch(), adapter)?;
                let logps = sequence_logps(&tl.positions, &tl.losses, &mb.packed.seq_lens);
                out.extend(logps.chunks_exact(2).map(|c| PairLogps {
                    chosen: c[0],
                    rejected: c[1],
                }));
            }
            Ok(out)
        };
        Ok(ReferenceLogps {
            train: score(&data.train)?,
            validation: score(&data.validation)?,
        })
    }

    /// Writes [`REFERENCE_FILE`].
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let flat = |v: &[PairLogps]| -> Vec<u8> {
            v.iter()
                .flat_map(|p| [p.chosen, p.rejected])
                .flat_map(f64::to_le_bytes)
                .collect()
        };
        let (train, validation) = (flat(&self.train), flat(&self.validation));
        let mut views = Vec::new();
        for (name, bytes, n) in [
            ("train", &train, self.train.len()),
            ("validation", &validation, self.validation.len()),
        ] {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![n, 2], bytes)
                    .map_err(|e| err(e.to_string()))?;
            views.push((name.to_string(), view));
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| err(e.to_string()))
    }

    /// Reads [`REFERENCE_FILE`], checking that it has one entry per pair of `data`.
    pub fn load(path: &Path, data: &Dataset) -> Result<Self> {
        let err = |reason: String| Error::Resume {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| {
            err(format!(
                "no reference log-probabilities ({e}): it is not a DPO checkpoint of this run"
            ))
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let read = |name: &str, pairs: usize| -> Result<Vec<PairLogps>> {
            let view = st
                .tensor(name)
                .map_err(|_| err(format!("{REFERENCE_FILE} has no tensor `{name}`")))?;
            if view.dtype() != safetensors::Dtype::F64 || view.shape() != [pairs, 2] {
                return Err(err(format!(
                    "{REFERENCE_FILE}: `{name}` is {:?} {:?}, expected F64 [{pairs}, 2] (the data changed since the checkpoint)",
                    view.dtype(),
                    view.shape()
                )));
            }
            let values: Vec<f64> = view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            Ok(values
                .chunks_exact(2)
                .map(|c| PairLogps {
                    chosen: c[0],
                    rejected: c[1],
                })
                .collect())
        };
        Ok(ReferenceLogps {
            train: read("train", data.train.len() / 2)?,
            validation: read("validation", data.validation.len() / 2)?,
        })
    }
}

/// The summed log-probability of each packed sequence's labelled tokens: `positions` (ascending)
/// and `losses` (cross-entropies) as a training pass reports them, `seq_lens` the packing.
pub fn sequence_logps(positions: &[usize], losses: &[f32], seq_lens: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; seq_lens.len()];
    for (s, &loss) in sequence_of(positions, seq_lens).into_iter().zip(losses) {
        out[s] -= f64::from(loss);
    }
    out
}

/// The packed sequence each of `positions` (ascending) falls in.
fn sequence_of(positions: &[usize], seq_lens: &[usize]) -> Vec<usize> {
    let mut s = 0;
    let mut end = seq_lens.first().copied().unwrap_or(0);
    positions
        .iter()
        .map(|&p| {
            while p >= end && s + 1 < seq_lens.len() {
                s += 1;
                end += seq_lens[s];
            }
            s
        })
        .collect()
}

/// `−log σ(z)` and `σ(−z)` (the loss's slope, up to sign), stable for any `z`.
fn sigmoid_loss(z: f64) -> (f64, f64) {
    // −log σ(z) = log(1 + e^(−z)) = max(−z, 0) + log1p(e^(−|z|)).
    let loss = (-z).max(0.0) + (-z.abs()).exp().ln_1p();
    let slope = if z >= 0.0 {
        let e = (-z).exp();
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + z.exp())
    };
    (loss, slope)
}

/// Sums over pairs (and their tokens) for the loss and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PreferenceSums {
    pub pairs: usize,
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub correct_pairs: usize,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    /// Cross-entropy statistics of the trained tokens of both answers.
    pub tokens: BatchStats,
    /// Cross-entropy sum and count of the preferred answers' tokens.
    pub chosen_loss_sum: f64,
    pub chosen_tokens: usize,
}

impl PreferenceSums {
    /// Adds one pair; returns its loss's slope `σ(−z)`.
    fn add_pair(&mut self, beta: f64, policy: PairLogps, reference: PairLogps) -> f64 {
        let reward_chosen = beta * (policy.chosen - reference.chosen);
        let reward_rejected = beta * (policy.rejected - reference.rejected);
        let (loss, slope) = sigmoid_loss(reward_chosen - reward_rejected);
        self.pairs += 1;
        self.loss += loss;
        self.rewards_chosen += reward_chosen;
        self.rewards_rejected += reward_rejected;
        self.correct_pairs += usize::from(reward_chosen > reward_rejected);
        self.logps_chosen += policy.chosen;
        self.logps_rejected += policy.rejected;
        slope
    }

    fn add(&mut self, o: &PreferenceSums) {
        self.pairs += o.pairs;
        self.loss += o.loss;
        self.rewards_chosen += o.rewards_chosen;
        self.rewards_rejected += o.rewards_rejected;
        self.correct_pairs += o.correct_pairs;
        self.logps_chosen += o.logps_chosen;
        self.logps_rejected += o.logps_rejected;
        self.tokens.add(&o.tokens);
        self.chosen_loss_sum += o.chosen_loss_sum;
        self.chosen_tokens += o.chosen_tokens;
    }

    /// Mean DPO loss per pair.
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.pairs.max(1) as f64
    }

    pub fn token_accuracy(&self) -> f64 {
        self.tokens.correct as f64 / self.tokens.tokens.max(1) as f64
    }

    /// Means over the pairs, as TRL logs them.
    pub fn metrics(&self) -> PreferenceMetrics {
        let n = self.pairs.max(1) as f64;
        PreferenceMetrics {
            rewards_chosen: self.rewards_chosen / n,
            rewards_rejected: self.rewards_rejected / n,
            rewards_accuracies: self.correct_pairs as f64 / n,
            rewards_margins: (self.rewards_chosen - self.rewards_rejected) / n,
            logps_chosen: self.logps_chosen / n,
            logps_rejected: self.logps_rejected / n,
            pairs: self.pairs,
        }
    }
}

/// Scores the pairs of one micro-batch from a pass's labelled rows; with `slopes`, also returns
/// each row's factor in the gradient of the step's mean loss over `step_pairs` pairs.
fn score_batch(
    sums: &mut PreferenceSums,
    positions: &[usize],
    losses: &[f32],
    mb: &MicroBatch,
    reference: &[PairLogps],
    beta: f64,
    step_pairs: usize,
) -> Vec<f32> {
    let seqs = sequence_of(positions, &mb.packed.seq_lens);
    let logps = sequence_logps(positions, losses, &mb.packed.seq_lens);
    let coef: Vec<f64> = logps
        .chunks_exact(2)
        .zip(reference)
        .map(|(lp, &r)| {
            let policy = PairLogps {
                chosen: lp[0],
                rejected: lp[1],
            };
            beta * sums.add_pair(beta, policy, r) / step_pairs as f64
        })
        .collect();
    for (&s, &l) in seqs.iter().zip(losses) {
        if s % 2 == 0 {
            sums.chosen_loss_sum += f64::from(l);
            sums.chosen_tokens += 1;
        }
    }
    // Lower cross-entropy on the preferred answer, higher on the other.
    seqs.iter()
        .map(|&s| {
            let c = coef[s / 2];
            (if s % 2 == 0 { c } else { -c }) as f32
        })
        .collect()
}

/// Forward and backward over one step's micro-batches (`units[i]`: the pair indices of
/// `batches[i]`), accumulating the gradient of the step's mean DPO loss into `grads`.
/// `opts(i)` gives micro-batch `i`'s pass options.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_step(
    model: &QwenModel,
    adapter: Option<&LoraAdapter>,
    grads: &mut Gradients,
    units: &[Vec<usize>],
    batches: &[MicroBatch],
    reference: &[PairLogps],
    beta: f64,
    opts: impl Fn(usize) -> TrainOptions,
) -> Result<PreferenceSums> {
    let step_pairs: usize = units.iter().map(Vec::len).sum();
    let mut total = PreferenceSums::default();
    for (i, (idx, mb)) in units.iter().zip(batches).enumerate() {
        let refs: Vec<PairLogps> = idx.iter().map(|&p| reference[p]).collect();
        let mut sums = PreferenceSums::default();
        let stats = model.forward_backward_weighted(
            &mb.as_train_batch(),
            adapter,
            grads,
            &opts(i),
            &mut |positions, losses| {
                score_batch(&mut sums, positions, losses, mb, &refs, beta, step_pairs)
            },
        )?;
        sums.tokens = stats;
        total.add(&sums);
    }
    Ok(total)
}

/// DPO loss and metrics over `batches` (with their pair indices into `reference`), no gradients.
pub fn evaluate(
    model: &QwenModel,
    adapter: Option<&LoraAdapter>,
    batches: &[(Vec<usize>, MicroBatch)],
    reference: &[PairLogps],
    beta: f64,
) -> Result<PreferenceSums> {
    let mut total = PreferenceSums::default();
    for (idx, mb) in batches {
        let refs: Vec<PairLogps> = idx.iter().map(|&p| reference[p]).collect();
        let tl = model.token_losses(&mb.as_train_batch(), adapter)?;
        let mut sums = PreferenceSums::default();
        score_batch(
            &mut sums,
            &tl.positions,
            &tl.losses,
            mb,
            &refs,
            beta,
            idx.len(),
        );
        sums.tokens = tl.stats;
        total.add(&sums);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_loss_is_stable_and_matches_the_formula() {
        for z in [-800.0, -30.0, -1.5, 0.0, 0.3, 2.0, 40.0, 800.0] {
            let (loss, slope) = sigmoid_loss(z);
            assert!(loss.is_finite() && slope.is_finite(), "{z}");
            if z.abs() < 30.0 {
                let sig = 1.0 / (1.0 + (-z).exp());
                assert!((loss - (-sig.ln())).abs() < 1e-12, "{z}");
                assert!((slope - (1.0 - sig)).abs() < 1e-12, "{z}");
            }
        }
        assert_eq!(sigmoid_loss(0.0), (2f64.ln(), 0.5));
        assert!((sigmoid_loss(-800.0).0 - 800.0).abs() < 1e-9);
        // The slope is the derivative of the loss in −z: finite differences.
        for z in [-3.0, -0.2, 0.7, 4.0] {
            let h = 1e-6;
            let num = (sigmoid_loss(z - h).0 - sigmoid_loss(z + h).0) / (2.0 * h);
            assert!((num - sigmoid_loss(z).1).abs() < 1e-8, "{z}");
        }
    }

    #[test]
    fn tokens_are_summed_per_packed_sequence() {
        // Sequences of 3, 4 and 2 tokens; labelled positions 1, 2 | 4, 5, 6 | 8.
        let seq_lens = [3, 4, 2];
        let positions = [1, 2, 4, 5, 6, 8];
        assert_eq!(sequence_of(&positions, &seq_lens), [0, 0, 1, 1, 1, 2]);
        let losses = [0.5, 0.25, 1.0, 1.0, 2.0, 0.125];
        assert_eq!(
            sequence_logps(&positions, &losses, &seq_lens),
            [-0.75, -4.0, -0.125]
        );
        // A sequence without a labelled token sums to zero.
        assert_eq!(sequence_logps(&[5], &[1.0], &seq_lens), [0.0, -1.0, 0.0]);
    }

    #[test]
    fn metrics_are_trl_means_over_pairs() {
        let mut s = PreferenceSums::default();
        let beta = 0.1;
        let reference = PairLogps {
            chosen: -10.0,
            rejected: -12.0,
        };
        // Pair 1: chosen up by 2, rejected down by 1 → rewards 0.2, −0.1. Pair 2: a tie.
        let slope = s.add_pair(
            beta,
            PairLogps {
                chosen: -8.0,
                rejected: -13.0,
            },
            reference,
        );
        let z: f64 = 0.2 - -0.1;
        assert!((slope - 1.0 / (1.0 + z.exp())).abs() < 1e-12);
        s.add_pair(beta, reference, reference);
        let m = s.metrics();
        assert!((m.rewards_chosen - 0.1).abs() < 1e-12);
        assert!((m.rewards_rejected + 0.05).abs() < 1e-12);
        assert!((m.rewards_margins - 0.15).abs() < 1e-12);
        assert_eq!(m.rewards_accuracies, 0.5, "a tie is not counted as right");
        assert_eq!(
            (m.logps_chosen, m.logps_rejected, m.pairs),
            (-9.0, -12.5, 2)
        );
        let want = ((1.0 + (-z).exp()).ln() + 2f64.ln()) / 2.0;
        assert!((s.mean_loss() - want).abs() < 1e-12);
    }
}
