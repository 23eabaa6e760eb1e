//! Fused LM head + cross-entropy over the labeled rows only.
//!
//! The vocabulary is processed in chunks of `VOCAB_CHUNK` rows of the LM head: each chunk's
//! logits come from one matrix product and are folded into a running (online) log-sum-exp, so the full
//! `(n, v)` logits (151,936 columns for Qwen) never exist at once. Chunks run in parallel. The
//! backward recomputes each chunk's logits from the saved `lse` (as Liger-Kernel's fused linear
//! cross-entropy does) instead of storing them.
//!
//! Positions without a label (`IGNORE_INDEX`) are dropped by the caller before this op: `hidden`
//! holds only labeled rows. Not supported: label smoothing, z-loss, logit soft-capping.
//!
//! The products run at the caller's [`Precision`]: at bf16 the head is read as stored (no widened
//! chunk) and hidden states, probabilities and the head are rounded to bf16 as they enter a
//! product; logits, the log-sum-exp and the softmax stay f32 (as PyTorch autocast runs
//! `cross_entropy` in f32).

use rayon::prelude::*;

use super::matmul::{Mat, Precision, gemm, round_to_bf16_f32};
use crate::scratch::with_scratch;
use crate::simd::{exp_affine, row_max};
use crate::weight::WeightRef;

/// Vocabulary rows per chunk: 4096 × 896 f32 = 14.7 MB of widened weights per task.
const VOCAB_CHUNK: usize = 4096;
/// Hidden rows per logits tile, bounding a tile at `ROW_TILE × VOCAB_CHUNK` floats (8 MB).
const ROW_TILE: usize = 512;

/// Whether a chunk's weight rows must be widened to f32 first (f32 products of half weights).
fn widens(weight: &WeightRef, precision: Precision) -> bool {
    precision == Precision::F32 && !matches!(weight, WeightRef::F32(_))
}

/// Scratch elements a chunk needs: widened weights (when [`widens`]) and a logits tile.
fn scratch_len(weight: &WeightRef, precision: Precision, n: usize, c: usize) -> usize {
    let widened = if widens(weight, precision) {
        VOCAB_CHUNK * c
    } else {
        0
    };
    widened + ROW_TILE.min(n) * VOCAB_CHUNK
}

/// Splits `buf` into the chunk's weight rows (vc, c) — as stored, or widened into `buf` when
/// [`widens`] — and the rest of `buf`.
fn chunk_weight<'a>(
    buf: &'a mut [f32],
    weight: &WeightRef<'a>,
    precision: Precision,
    v0: usize,
    v1: usize,
    c: usize,
) -> (WeightRef<'a>, &'a mut [f32]) {
    if !widens(weight, precision) {
        return (weight.slice(v0 * c..v1 * c), buf);
    }
    let (wbuf, rest) = buf.split_at_mut(VOCAB_CHUNK * c);
    let wbuf = &mut wbuf[..(v1 - v0) * c];
    weight.slice(v0 * c..v1 * c).widen_into(wbuf);
    (WeightRef::F32(wbuf), rest)
}

/// logits (rows, vc) = hidden (rows, c) · wcᵀ.
fn chunk_logits(
    precision: Precision,
    logits: &mut [f32],
    hidden: &[f32],
    wc: WeightRef,
    rows: usize,
    c: usize,
    vc: usize,
) {
    // As logitsᵀ (vc, rows) = wc (vc, c) · hiddenᵀ, so the head is the row-major operand.
    let wc = Mat {
        data: wc,
        rs: c,
        cs: 1,
    };
    let h = Mat {
        data: WeightRef::F32(hidden),
        rs: 1,
        cs: c,
    };
    gemm(precision, logits, (1, vc), wc, h, vc, c, rows, false);
}

/// g (rows, c) += p (rows, vc) · wc (vc, c).
fn chunk_grad_hidden(
    precision: Precision,
    g: &mut [f32],
    p: &[f32],
    wc: WeightRef,
    rows: usize,
    vc: usize,
    c: usize,
) {
    let p = Mat {
        data: WeightRef::F32(p),
        rs: vc,
        cs: 1,
    };
    let wc = Mat {
        data: wc,
        rs: c,
        cs: 1,
    };
    gemm(precision, g, (c, 1), p, wc, rows, vc, c, true);
}

/// dw (vc, c) += pᵀ (vc, rows) · hidden (rows, c).
#[allow(clippy::too_many_arguments)]
fn chunk_grad_weight(
    precision: Precision,
    dw: &mut [f32],
    p: &[f32],
    hidden: &[f32],
    vc: usize,
    rows: usize,
    c: usize,
) {
    let pt = Mat {
        data: WeightRef::F32(p),
        rs: 1,
        cs: vc,
    };
    let h = Mat {
        data: WeightRef::F32(hidden),
        rs: c,
        cs: 1,
    };
    gemm(precision, dw, (c, 1), pt, h, vc, rows, c, true);
}

fn check(hidden: &[f32], weight: &WeightRef, targets: &[u32], n: usize, c: usize, v: usize) {
    assert_eq!(
        hidden.len(),
        n * c,
        "lm_head_ce: hidden has {} elements, want {n}x{c}",
        hidden.len()
    );
    assert_eq!(
        weight.len(),
        v * c,
        "lm_head_ce: weight has {} elements, want {v}x{c}",
        weight.len()
    );
    assert_eq!(
        targets.len(),
        n,
        "lm_head_ce: {} targets for {n} rows",
        targets.len()
    );
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        panic!("lm_head_ce: target {t} outside vocabulary of {v}");
    }
}

/// Running per-row statistics over a contiguous range of vocabulary chunks (an online
/// log-sum-exp: merging two ranges rescales each side's sums to the larger maximum).
struct Running {
    /// max (n): largest logit so far; the reference point of `sum` and `grad`
    max: Vec<f32>,
    /// sum (n): Σ exp(logit − max)
    sum: Vec<f32>,
    /// argmax (n): lowest vocabulary index holding `max`
    argmax: Vec<u32>,
    /// target_logit (n): the target's logit, NaN until its chunk is seen
    target_logit: Vec<f32>,
    /// grad (n, c), fused pass only: Σ exp(logit_j − max) · weight_j
    grad: Option<Vec<f32>>,
}

impl Running {
    fn new(n: usize, c: usize, with_grad: bool) -> Running {
        Running {
            max: vec![f32::NEG_INFINITY; n],
            sum: vec![0.0; n],
            argmax: vec![0; n],
            target_logit: vec![f32::NAN; n],
            grad: with_grad.then(|| vec![0.0; n * c]),
        }
    }

    /// Folds in vocabulary chunk `v0..v1` (wc (vc, c) its weight rows); `logits` is scratch.
    #[allow(clippy::too_many_arguments)]
    fn add_chunk(
        &mut self,
        precision: Precision,
        logits: &mut [f32],
        hidden: &[f32],
        wc: WeightRef,
        targets: &[u32],
        v0: usize,
        v1: usize,
        n: usize,
        c: usize,
    ) {
        let vc = v1 - v0;
        for r0 in (0..n).step_by(ROW_TILE) {
            let rows = ROW_TILE.min(n - r0);
            let lg = &mut logits[..rows * vc];
            let hid = &hidden[r0 * c..(r0 + rows) * c];
            chunk_logits(precision, lg, hid, wc, rows, c, vc);
            for (i, row) in lg.chunks_exact_mut(vc).enumerate() {
                let r = r0 + i;
                let t = targets[r] as usize;
                if (v0..v1).contains(&t) {
                    self.target_logit[r] = row[t - v0];
                }
                let mc = row_max(row);
                let old = self.max[r];
                if mc > old {
                    // Strictly larger only: on ties the earlier (lower) index stays, as in
                    // torch.argmax. First index holding the chunk's maximum:
                    self.argmax[r] = (v0 + row.iter().position(|&x| x == mc).unwrap_or(0)) as u32;
                    self.max[r] = mc;
                    // exp(−∞) = 0 on the first chunk.
                    let f = (old - mc).exp();
                    self.sum[r] *= f;
                    if let Some(g) = self.grad.as_mut() {
                        for x in &mut g[r * c..(r + 1) * c] {
                            *x *= f;
                        }
                    }
                }
                self.sum[r] += exp_affine(row, 1.0, self.max[r], 1.0);
            }
            if let Some(g) = self.grad.as_mut() {
                // grad (rows, c) += exp(logits − max) (rows, vc) · wc (vc, c)
                let g = &mut g[r0 * c..(r0 + rows) * c];
                chunk_grad_hidden(precision, g, lg, wc, rows, vc, c);
            }
        }
    }

    /// Merges `later` (the chunks right after ours) into `self`.
    fn merge(mut self, later: Running, c: usize) -> Running {
        for r in 0..self.max.len() {
            let m = self.max[r].max(later.max[r]);
            let (fa, fb) = if m == f32::NEG_INFINITY {
                (0.0, 0.0)
            } else {
                ((self.max[r] - m).exp(), (later.max[r] - m).exp())
            };
            self.sum[r] = self.sum[r] * fa + later.sum[r] * fb;
            if later.max[r] > self.max[r] {
                self.argmax[r] = later.argmax[r];
            }
            self.max[r] = m;
            if !later.target_logit[r].is_nan() {
                self.target_logit[r] = later.target_logit[r];
            }
            if let (Some(ga), Some(gb)) = (self.grad.as_mut(), later.grad.as_ref()) {
                for (x, y) in ga[r * c..(r + 1) * c]
                    .iter_mut()
                    .zip(&gb[r * c..(r + 1) * c])
                {
                    *x = *x * fa + y * fb;
                }
            }
        }
        self
    }
}

/// One pass over the vocabulary: the merged statistics of every chunk.
#[allow(clippy::too_many_arguments)]
fn run_chunks(
    precision: Precision,
    hidden: &[f32],
    weight: &WeightRef,
    targets: &[u32],
    n: usize,
    c: usize,
    v: usize,
    with_grad: bool,
) -> Running {
    let nchunks = v.div_ceil(VOCAB_CHUNK);
    let parts: Vec<Running> = chunk_groups(nchunks)
        .into_par_iter()
        .map(|group| {
            let mut st = Running::new(n, c, with_grad);
            for ci in group {
                let (v0, v1) = (ci * VOCAB_CHUNK, ((ci + 1) * VOCAB_CHUNK).min(v));
                with_scratch(scratch_len(weight, precision, n, c), |buf| {
                    let (wc, logits) = chunk_weight(buf, weight, precision, v0, v1, c);
                    st.add_chunk(precision, logits, hidden, wc, targets, v0, v1, n, c);
                });
            }
            st
        })
        .collect();
    // Merged in vocabulary order, so the result does not depend on thread scheduling.
    parts
        .into_iter()
        .reduce(|a, b| a.merge(b, c))
        .unwrap_or_else(|| Running::new(n, c, with_grad))
}

/// A vocabulary chunk's index and, with full fine-tuning, its rows of the head's gradient.
type ChunkGrad<'a> = (usize, Option<&'a mut [f32]>);

/// Work groups over the vocabulary chunks: a fixed split (independent of the thread count and of
/// work stealing), so sums are always added in the same order and runs are bit-reproducible.
fn chunk_groups(nchunks: usize) -> Vec<std::ops::Range<usize>> {
    const GROUPS: usize = 8;
    let per = nchunks.div_ceil(GROUPS).max(1);
    (0..nchunks)
        .step_by(per)
        .map(|g| g..(g + per).min(nchunks))
        .collect()
}

fn check_losses(losses: &[f32], lse: &[f32], n: usize) {
    assert_eq!(
        losses.len(),
        n,
        "lm_head_ce: losses has {} elements",
        losses.len()
    );
    assert_eq!(lse.len(), n, "lm_head_ce: lse has {} elements", lse.len());
}

/// Writes losses and lse from the merged statistics; returns the number of correct argmaxes.
fn finish(st: &Running, losses: &mut [f32], lse: &mut [f32], targets: &[u32]) -> usize {
    let mut correct = 0;
    for r in 0..targets.len() {
        lse[r] = st.max[r] + st.sum[r].ln();
        losses[r] = lse[r] - st.target_logit[r];
        if st.argmax[r] == targets[r] {
            correct += 1;
        }
    }
    correct
}

/// hidden (n, c) are the final-norm outputs of the n labeled positions; weight (v, c) the LM head
/// (may be BF16/F16; at f32 widened chunk by chunk into a reused buffer); targets (n) < v.
/// Writes losses (n) = lse − logit[target], lse (n) saved; returns the number of rows whose
/// argmax == target (token accuracy; ties → lowest index, like torch.argmax).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward(
    losses: &mut [f32],
    lse: &mut [f32],
    hidden: &[f32],
    weight: WeightRef,
    targets: &[u32],
    n: usize,
    c: usize,
    v: usize,
    precision: Precision,
) -> usize {
    check(hidden, &weight, targets, n, c, v);
    check_losses(losses, lse, n);
    if n == 0 {
        return 0;
    }
    assert!(v > 0, "lm_head_ce: empty vocabulary");
    let st = run_chunks(precision, hidden, &weight, targets, n, c, v, false);
    finish(&st, losses, lse, targets)
}

/// Forward and the `dhidden` half of the backward in one pass over the LM head (for LoRA, where
/// the head is frozen): equal to [`lm_head_ce_forward`] followed by [`lm_head_ce_backward`] with
/// `dweight = None`, but computes two products per chunk instead of three.
///
/// The gradient's softmax needs the final log-sum-exp, which is unknown until every chunk is
/// seen; as in flash attention, `Σ_j exp(logit_j − m)·weight_j` is accumulated against a running
/// maximum `m` and rescaled whenever `m` grows, then divided by the final sum.
/// Writes losses (n) and lse (n); accumulates dhidden (n, c) += scale·(softmax − onehot)·weight;
/// returns the number of rows whose argmax == target.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward_backward(
    losses: &mut [f32],
    lse: &mut [f32],
    dhidden: &mut [f32],
    hidden: &[f32],
    weight: WeightRef,
    targets: &[u32],
    scale: f32,
    n: usize,
    c: usize,
    v: usize,
    precision: Precision,
) -> usize {
    check(hidden, &weight, targets, n, c, v);
    check_losses(losses, lse, n);
    assert_eq!(
        dhidden.len(),
        n * c,
        "lm_head_ce: dhidden has {} elements",
        dhidden.len()
    );
    if n == 0 {
        return 0;
    }
    assert!(v > 0, "lm_head_ce: empty vocabulary");
    let st = run_chunks(precision, hidden, &weight, targets, n, c, v, true);
    let correct = finish(&st, losses, lse, targets);
    let grad = st.grad.as_deref().unwrap_or(&[]);
    dhidden.par_chunks_mut(c).enumerate().for_each(|(r, d)| {
        let t = targets[r] as usize;
        let mut wt = vec![0.0; c];
        weight.slice(t * c..(t + 1) * c).widen_into(&mut wt);
        if precision != Precision::F32 {
            // The target's row as the products saw it.
            wt.iter_mut().for_each(|x| *x = round_to_bf16_f32(*x));
        }
        let inv = scale / st.sum[r];
        for ((x, &gv), &w) in d.iter_mut().zip(&grad[r * c..(r + 1) * c]).zip(&wt) {
            *x += gv * inv - scale * w;
        }
    });
    correct
}

/// Gradient of `scale · Σ losses` (caller passes scale = 1/normalizer, the unmasked token count of
/// the whole accumulated batch). Accumulates dhidden (n, c) += scale·(softmax − onehot)·weight and,
/// if given, dweight (v, c) += scale·(softmax − onehot)ᵀ·hidden (full fine-tuning; weight must then
/// be F32 or is read widened). `lse` (n) is the forward's saved log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_backward(
    dhidden: &mut [f32],
    dweight: Option<&mut [f32]>,
    hidden: &[f32],
    weight: WeightRef,
    targets: &[u32],
    lse: &[f32],
    scale: f32,
    n: usize,
    c: usize,
    v: usize,
    precision: Precision,
) {
    backward(
        dhidden,
        dweight,
        hidden,
        weight,
        targets,
        lse,
        RowScale::Uniform(scale),
        n,
        c,
        v,
        precision,
    );
}

/// [`lm_head_ce_backward`] with a factor per row: the gradient of `Σ_r row_scale[r] · losses[r]`
/// (DPO weighs each token's loss by a coefficient of its sequence; the factors may be negative).
/// Accumulates likewise.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_backward_weighted(
    dhidden: &mut [f32],
    dweight: Option<&mut [f32]>,
    hidden: &[f32],
    weight: WeightRef,
    targets: &[u32],
    lse: &[f32],
    row_scale: &[f32],
    n: usize,
    c: usize,
    v: usize,
    precision: Precision,
) {
    assert_eq!(
        row_scale.len(),
        n,
        "lm_head_ce_backward: row_scale has {} elements",
        row_scale.len()
    );
    backward(
        dhidden,
        dweight,
        hidden,
        weight,
        targets,
        lse,
        RowScale::PerRow(row_scale),
        n,
        c,
        v,
        precision,
    );
}

/// The factor each row's loss enters the gradient with.
#[derive(Clone, Copy)]
enum RowScale<'a> {
    Uniform(f32),
    PerRow(&'a [f32]),
}

impl RowScale<'_> {
    fn at(self, r: usize) -> f32 {
        match self {
            RowScale::Uniform(s) => s,
            RowScale::PerRow(s) => s[r],
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backward(
    dhidden: &mut [f32],
    dweight: Option<&mut [f32]>,
    hidden: &[f32],
    weight: WeightRef,
    targets: &[u32],
    lse: &[f32],
    scale: RowScale,
    n: usize,
    c: usize,
    v: usize,
    precision: Precision,
) {
    check(hidden, &weight, targets, n, c, v);
    assert_eq!(
        dhidden.len(),
        n * c,
        "lm_head_ce_backward: dhidden has {} elements",
        dhidden.len()
    );
    assert_eq!(
        lse.len(),
        n,
        "lm_head_ce_backward: lse has {} elements",
        lse.len()
    );
    if n == 0 || v == 0 {
        return;
    }
    let nchunks = v.div_ceil(VOCAB_CHUNK);
    let dw_chunks: Vec<Option<&mut [f32]>> = match dweight {
        Some(dw) => {
            assert_eq!(
                dw.len(),
                v * c,
                "lm_head_ce_backward: dweight has {} elements",
                dw.len()
            );
            dw.chunks_mut(VOCAB_CHUNK * c).map(Some).collect()
        }
        None => (0..nchunks).map(|_| None).collect(),
    };
    // dhidden gathers from every chunk: each fixed group of chunks owns a private (n, c) sum,
    // and the sums are added in group order (bit-reproducible whatever the scheduling).
    let mut dw_iter = dw_chunks.into_iter();
    let groups: Vec<Vec<ChunkGrad<'_>>> = chunk_groups(nchunks)
        .into_iter()
        .map(|g| g.map(|ci| (ci, dw_iter.next().flatten())).collect())
        .collect();
    let partials: Vec<Vec<f32>> = groups
        .into_par_iter()
        .map(|group| {
            let mut acc = vec![0.0f32; n * c];
            for (ci, dw) in group {
                let (v0, v1) = (ci * VOCAB_CHUNK, ((ci + 1) * VOCAB_CHUNK).min(v));
                let vc = v1 - v0;
                let mut dw = dw;
                with_scratch(scratch_len(&weight, precision, n, c), |buf| {
                    let (wc, dl) = chunk_weight(buf, &weight, precision, v0, v1, c);
                    for r0 in (0..n).step_by(ROW_TILE) {
                        let rows = ROW_TILE.min(n - r0);
                        let hid = &hidden[r0 * c..(r0 + rows) * c];
                        let dlt = &mut dl[..rows * vc];
                        chunk_logits(precision, dlt, hid, wc, rows, c, vc);
                        // dlogits = scale · (softmax − onehot(target))
                        for (i, row) in dlt.chunks_exact_mut(vc).enumerate() {
                            let s = scale.at(r0 + i);
                            exp_affine(row, 1.0, lse[r0 + i], s);
                            let t = targets[r0 + i] as usize;
                            if (v0..v1).contains(&t) {
                                row[t - v0] -= s;
                            }
                        }
                        // dhidden (rows, c) += dlogits (rows, vc) · wc (vc, c)
                        let acc_rows = &mut acc[r0 * c..(r0 + rows) * c];
                        chunk_grad_hidden(precision, acc_rows, dlt, wc, rows, vc, c);
                        // dweight (vc, c) += dlogitsᵀ (vc, rows) · hidden (rows, c)
                        if let Some(dw) = dw.as_deref_mut() {
                            chunk_grad_weight(precision, dw, dlt, hid, vc, rows, c);
                        }
                    }
                });
            }
            acc
        })
        .collect();
    let partial = partials.into_iter().reduce(|mut a, b| {
        for (x, y) in a.iter_mut().zip(&b) {
            *x += y;
        }
        a
    });
    if let Some(p) = partial {
        dhidden
            .par_chunks_mut(c)
            .zip(p.par_chunks(c))
            .for_each(|(d, s)| {
                for (x, y) in d.iter_mut().zip(s) {
                    *x += y;
                }
            });
    }
}

/// Oracle for [`lm_head_ce_forward`]: materialises all `(n, v)` logits, one row at a time.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward_naive(
    losses: &mut [f32],
    lse: &mut [f32],
    hidden: &[f32],
    weight: WeightRef,
    targets: &[u32],
    n: usize,
    c: usize,
    v: usize,
) -> usize {
    check(hidden, &weight, targets, n, c, v);
    let w = weight.to_f32_vec();
    let mut correct = 0;
    for r in 0..n {
        let h = &hidden[r * c..(r + 1) * c];
        let logits: Vec<f32> = (0..v)
            .map(|j| {
                h.iter()
                    .zip(&w[j * c..(j + 1) * c])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let mut best = 0;
        for j in 1..v {
            if logits[j] > logits[best] {
                best = j;
            }
        }
        let m = logits[best];
        let sum: f32 = logits.iter().map(|x| (x - m).exp()).sum();
        lse[r] = m + sum.ln();
        losses[r] = lse[r] - logits[targets[r] as usize];
        if best == targets[r] as usize {
            correct += 1;
        }
    }
    correct
}

/// Oracle for [`lm_head_ce_backward`] (accumulates likewise), from full logits rows.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_backward_naive(
    dhidden: &mut [f32],
    mut dweight: Option<&mut [f32]>,
    hidden: &[f32],
    weight: WeightRef,
    targets: &[u32],
    scale: f32,
    n: usize,
    c: usize,
    v: usize,
) {
    check(hidden, &weight, targets, n, c, v);
    let w = weight.to_f32_vec();
    for r in 0..n {
        let h = &hidden[r * c..(r + 1) * c];
        let logits: Vec<f32> = (0..v)
            .map(|j| {
                h.iter()
                    .zip(&w[j * c..(j + 1) * c])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = logits.iter().map(|x| (x - m).exp()).sum();
        for j in 0..v {
            let onehot = if j == targets[r] as usize { 1.0 } else { 0.0 };
            let g = scale * ((logits[j] - m).exp() / sum - onehot);
            for k in 0..c {
                dhidden[r * c + k] += g * w[j * c + k];
            }
            if let Some(dw) = dweight.as_deref_mut() {
                for k in 0..c {
                    dw[j * c + k] += g * h[k];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::Precision;
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-amp..amp)).collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn hand_computed_loss() {
        // c 1, v 3, weight [1, 2, 3], hidden [1]: logits [1, 2, 3], target 0.
        let (mut loss, mut lse) = (vec![0.0], vec![0.0]);
        let w = [1.0, 2.0, 3.0];
        let correct = lm_head_ce_forward(
            &mut loss,
            &mut lse,
            &[1.0],
            WeightRef::F32(&w),
            &[0],
            1,
            1,
            3,
            Precision::F32,
        );
        let want_lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((lse[0] as f64 - want_lse).abs() < 1e-6);
        assert!((loss[0] as f64 - (want_lse - 1.0)).abs() < 1e-6);
        assert_eq!(correct, 0);
        let correct = lm_head_ce_forward(
            &mut loss,
            &mut lse,
            &[1.0],
            WeightRef::F32(&w),
            &[2],
            1,
            1,
            3,
            Precision::F32,
        );
        assert_eq!(correct, 1);
    }

    #[test]
    fn argmax_ties_pick_lowest_index_across_chunks() {
        // All-zero weights: every logit ties, so argmax is 0 (torch.argmax takes the first).
        let v = 2 * VOCAB_CHUNK + 5;
        let w = vec![0.0f32; v * 2];
        let (mut loss, mut lse) = (vec![0.0; 3], vec![0.0; 3]);
        let correct = lm_head_ce_forward(
            &mut loss,
            &mut lse,
            &[1.0; 6],
            WeightRef::F32(&w),
            &[0, 1, v as u32 - 1],
            3,
            2,
            v,
            Precision::F32,
        );
        assert_eq!(correct, 1);
        for &l in &loss {
            assert!((l as f64 - (v as f64).ln()).abs() < 1e-5);
        }
    }

    #[test]
    fn fast_matches_naive_f32_and_bf16() {
        let mut rng = StdRng::seed_from_u64(11);
        // v spans several chunks and ends in a partial one; n spans two row tiles.
        let (n, c, v) = (ROW_TILE + 37, 48, 2 * VOCAB_CHUNK + 1234);
        let mut hidden = rand_vec(&mut rng, n * c, 1.0);
        let w32 = rand_vec(&mut rng, v * c, 0.5);
        let wbf: Vec<bf16> = w32.iter().map(|&x| bf16::from_f32(x)).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
        // A quarter of the rows point straight at their target's weight row, so that the
        // target is (almost surely) the argmax and the accuracy count is exercised.
        for (r, t) in targets.iter().enumerate().take(n / 4) {
            let j = *t as usize;
            for k in 0..c {
                hidden[r * c + k] = 4.0 * w32[j * c + k];
            }
        }
        for weight in [WeightRef::F32(&w32), WeightRef::BF16(&wbf)] {
            let (mut loss, mut lse) = (vec![0.0; n], vec![0.0; n]);
            let acc = lm_head_ce_forward(
                &mut loss,
                &mut lse,
                &hidden,
                weight,
                &targets,
                n,
                c,
                v,
                Precision::F32,
            );
            let (mut loss_n, mut lse_n) = (vec![0.0; n], vec![0.0; n]);
            let acc_n = lm_head_ce_forward_naive(
                &mut loss_n,
                &mut lse_n,
                &hidden,
                weight,
                &targets,
                n,
                c,
                v,
            );
            assert_eq!(acc, acc_n, "{:?}", weight.dtype());
            assert!(
                acc >= n / 5,
                "{:?}: only {acc} rows correct",
                weight.dtype()
            );
            let (dl, dlse) = (max_diff(&loss, &loss_n), max_diff(&lse, &lse_n));
            assert!(
                dl < 2e-4 && dlse < 2e-4,
                "{:?}: loss diff {dl}, lse diff {dlse}",
                weight.dtype()
            );

            let scale = 1.0 / 300.0;
            let dh0 = rand_vec(&mut rng, n * c, 0.1);
            let dw0 = rand_vec(&mut rng, v * c, 0.1);
            let (mut dh, mut dw) = (dh0.clone(), dw0.clone());
            lm_head_ce_backward(
                &mut dh,
                Some(&mut dw),
                &hidden,
                weight,
                &targets,
                &lse,
                scale,
                n,
                c,
                v,
                Precision::F32,
            );
            let (mut dhn, mut dwn) = (dh0.clone(), dw0);
            lm_head_ce_backward_naive(
                &mut dhn,
                Some(&mut dwn),
                &hidden,
                weight,
                &targets,
                scale,
                n,
                c,
                v,
            );
            let (ddh, ddw) = (max_diff(&dh, &dhn), max_diff(&dw, &dwn));
            assert!(
                ddh < 1e-5 && ddw < 1e-5,
                "{:?}: dhidden diff {ddh}, dweight diff {ddw}",
                weight.dtype()
            );
            // Without dweight the dhidden result is the same.
            let mut dh2 = dh0.clone();
            lm_head_ce_backward(
                &mut dh2,
                None,
                &hidden,
                weight,
                &targets,
                &lse,
                scale,
                n,
                c,
                v,
                Precision::F32,
            );
            assert!(max_diff(&dh2, &dh) < 1e-6);
            // The fused single pass gives the same losses, lse, accuracy and dhidden.
            let (mut loss_f, mut lse_f, mut dh_f) = (vec![0.0; n], vec![0.0; n], dh0.clone());
            let acc_f = lm_head_ce_forward_backward(
                &mut loss_f,
                &mut lse_f,
                &mut dh_f,
                &hidden,
                weight,
                &targets,
                scale,
                n,
                c,
                v,
                Precision::F32,
            );
            assert_eq!(acc_f, acc);
            let (dl, dlse, ddh) = (
                max_diff(&loss_f, &loss),
                max_diff(&lse_f, &lse),
                max_diff(&dh_f, &dh),
            );
            assert!(
                dl < 1e-5 && dlse < 1e-5,
                "fused: loss diff {dl}, lse diff {dlse}"
            );
            assert!(ddh < 1e-6, "fused: dhidden diff {ddh}");
        }
    }

    /// At bf16, on every kernel this machine has (and the f32 fallback), against the f32 oracle
    /// over bf16-rounded hidden states and head. Tolerances: the losses as at f32 (only the
    /// summation order differs); the gradients also see the probabilities rounded to bf16 at
    /// the products' input (relative 2⁻⁸ of each term): for dhidden at most
    /// 2⁻⁸·max|w|·Σ|g| = 2⁻⁸·0.5·2·scale ≈ 1.3e-5, for dweight ≈ 2⁻⁸·max|h|·(a few rows)·2·scale.
    #[test]
    fn bf16_matches_naive_over_rounded_inputs_on_every_kernel() {
        use crate::ops::matmul::{Bf16Kernel, round_to_bf16_f32};
        let mut rng = StdRng::seed_from_u64(12);
        let (n, c, v) = (70, 48, VOCAB_CHUNK + 777);
        let mut hidden = rand_vec(&mut rng, n * c, 1.0);
        let w32 = rand_vec(&mut rng, v * c, 0.5);
        let wbf: Vec<bf16> = w32.iter().map(|&x| bf16::from_f32(x)).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
        for (r, t) in targets.iter().enumerate().take(n / 4) {
            for k in 0..c {
                hidden[r * c + k] = 4.0 * w32[*t as usize * c + k];
            }
        }
        let round = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| round_to_bf16_f32(v)).collect() };
        let (hidden_r, w_r) = (round(&hidden), round(&w32));
        let scale = 1.0 / 300.0;
        let (mut loss_n, mut lse_n) = (vec![0.0; n], vec![0.0; n]);
        let acc_n = lm_head_ce_forward_naive(
            &mut loss_n,
            &mut lse_n,
            &hidden_r,
            WeightRef::F32(&w_r),
            &targets,
            n,
            c,
            v,
        );
        let (mut dhn, mut dwn) = (vec![0.0; n * c], vec![0.0; v * c]);
        lm_head_ce_backward_naive(
            &mut dhn,
            Some(&mut dwn),
            &hidden_r,
            WeightRef::F32(&w_r),
            &targets,
            scale,
            n,
            c,
            v,
        );
        for kernel in Bf16Kernel::available() {
            let precision = Precision::Bf16(kernel);
            for weight in [WeightRef::F32(&w32), WeightRef::BF16(&wbf)] {
                let label = format!("{} {:?}", kernel.name(), weight.dtype());
                let (mut loss, mut lse) = (vec![0.0; n], vec![0.0; n]);
                let acc = lm_head_ce_forward(
                    &mut loss, &mut lse, &hidden, weight, &targets, n, c, v, precision,
                );
                assert_eq!(acc, acc_n, "{label}");
                let (dl, dlse) = (max_diff(&loss, &loss_n), max_diff(&lse, &lse_n));
                assert!(
                    dl < 2e-4 && dlse < 2e-4,
                    "{label}: loss diff {dl}, lse diff {dlse}"
                );
                let (mut dh, mut dw) = (vec![0.0; n * c], vec![0.0; v * c]);
                lm_head_ce_backward(
                    &mut dh,
                    Some(&mut dw),
                    &hidden,
                    weight,
                    &targets,
                    &lse,
                    scale,
                    n,
                    c,
                    v,
                    precision,
                );
                let (ddh, ddw) = (max_diff(&dh, &dhn), max_diff(&dw, &dwn));
                assert!(
                    ddh < 2e-5 && ddw < 2e-4,
                    "{label}: dhidden diff {ddh}, dweight diff {ddw}"
                );
                let (mut loss_f, mut lse_f, mut dh_f) =
                    (vec![0.0; n], vec![0.0; n], vec![0.0; n * c]);
                let acc_f = lm_head_ce_forward_backward(
                    &mut loss_f,
                    &mut lse_f,
                    &mut dh_f,
                    &hidden,
                    weight,
                    &targets,
                    scale,
                    n,
                    c,
                    v,
                    precision,
                );
                assert_eq!(acc_f, acc_n, "{label} fused");
                assert!(max_diff(&loss_f, &loss_n) < 2e-4, "{label} fused loss");
                let ddh = max_diff(&dh_f, &dhn);
                assert!(ddh < 2e-5, "{label} fused: dhidden diff {ddh}");
            }
        }
    }
}
