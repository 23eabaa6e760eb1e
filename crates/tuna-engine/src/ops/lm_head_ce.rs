//! Fused LM head + cross-entropy over the labeled rows only.
//!
//! The vocabulary is processed in chunks of `VOCAB_CHUNK` rows of the LM head: each chunk's
//! logits come from one `sgemm` and are folded into a running (online) log-sum-exp, so the full
//! `(n, v)` logits (151,936 columns for Qwen) never exist at once. Chunks run in parallel. The
//! backward recomputes each chunk's logits from the saved `lse` (as Liger-Kernel's fused linear
//! cross-entropy does) instead of storing them.
//!
//! Positions without a label (`IGNORE_INDEX`) are dropped by the caller before this op: `hidden`
//! holds only labeled rows. Not supported: label smoothing, z-loss, logit soft-capping.

use rayon::prelude::*;

use super::matmul::{Layout, sgemm};
use crate::weight::WeightRef;

/// Vocabulary rows per chunk: 4096 × 896 f32 = 14.7 MB of widened weights per task.
const VOCAB_CHUNK: usize = 4096;
/// Hidden rows per logits tile, bounding a tile at `ROW_TILE × VOCAB_CHUNK` floats (8 MB).
const ROW_TILE: usize = 512;

/// The chunk's weight rows (vc, c) as f32: borrowed when stored as f32, else widened into `buf`.
fn chunk_weight<'a>(
    buf: &'a mut Vec<f32>,
    weight: &WeightRef<'a>,
    v0: usize,
    v1: usize,
    c: usize,
) -> &'a [f32] {
    match weight {
        WeightRef::F32(w) => &w[v0 * c..v1 * c],
        other => {
            buf.resize((v1 - v0) * c, 0.0);
            other.slice(v0 * c..v1 * c).widen_into(buf);
            buf
        }
    }
}

/// Per-row statistics of one vocabulary chunk.
struct ChunkStats {
    /// max (n): largest logit of the row within the chunk
    max: Vec<f32>,
    /// sum (n): Σ exp(logit − max) over the chunk
    sum: Vec<f32>,
    /// argmax (n): global vocabulary index of the first maximal logit
    argmax: Vec<u32>,
    /// (row, logit) for rows whose target falls in this chunk
    target_logits: Vec<(usize, f32)>,
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

/// hidden (n, c) are the final-norm outputs of the n labeled positions; weight (v, c) the LM head
/// (may be BF16/F16; widened chunk by chunk into a reused buffer, then sgemm); targets (n) < v.
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
) -> usize {
    check(hidden, &weight, targets, n, c, v);
    assert_eq!(
        losses.len(),
        n,
        "lm_head_ce: losses has {} elements",
        losses.len()
    );
    assert_eq!(lse.len(), n, "lm_head_ce: lse has {} elements", lse.len());
    if n == 0 {
        return 0;
    }
    assert!(v > 0, "lm_head_ce: empty vocabulary");
    let nchunks = v.div_ceil(VOCAB_CHUNK);
    let stats: Vec<ChunkStats> = (0..nchunks)
        .into_par_iter()
        .map(|ci| {
            let (v0, v1) = (ci * VOCAB_CHUNK, ((ci + 1) * VOCAB_CHUNK).min(v));
            let vc = v1 - v0;
            let mut buf = Vec::new();
            let wc = chunk_weight(&mut buf, &weight, v0, v1, c);
            let mut st = ChunkStats {
                max: vec![f32::NEG_INFINITY; n],
                sum: vec![0.0; n],
                argmax: vec![v0 as u32; n],
                target_logits: Vec::new(),
            };
            let mut logits = vec![0.0; ROW_TILE.min(n) * vc];
            for r0 in (0..n).step_by(ROW_TILE) {
                let rows = ROW_TILE.min(n - r0);
                let lg = &mut logits[..rows * vc];
                // logits (rows, vc) = hidden (rows, c) · wcᵀ
                sgemm(
                    lg,
                    &hidden[r0 * c..(r0 + rows) * c],
                    Layout::Normal,
                    wc,
                    Layout::Transposed,
                    rows,
                    c,
                    vc,
                    false,
                );
                for (i, row) in lg.chunks_exact(vc).enumerate() {
                    let r = r0 + i;
                    let mut best = f32::NEG_INFINITY;
                    let mut best_at = 0;
                    for (j, &x) in row.iter().enumerate() {
                        if x > best {
                            best = x;
                            best_at = j;
                        }
                    }
                    st.max[r] = best;
                    st.argmax[r] = (v0 + best_at) as u32;
                    st.sum[r] = row.iter().map(|&x| (x - best).exp()).sum();
                    let t = targets[r] as usize;
                    if (v0..v1).contains(&t) {
                        st.target_logits.push((r, row[t - v0]));
                    }
                }
            }
            st
        })
        .collect();
    // Merge chunks in vocabulary order: a later chunk takes the argmax only when strictly larger,
    // so ties resolve to the lowest index.
    let mut correct = 0;
    let mut target_logit = vec![0.0f32; n];
    for st in &stats {
        for &(r, x) in &st.target_logits {
            target_logit[r] = x;
        }
    }
    for r in 0..n {
        let mut m = f32::NEG_INFINITY;
        let mut best_at = 0u32;
        for st in &stats {
            if st.max[r] > m {
                m = st.max[r];
                best_at = st.argmax[r];
            }
        }
        let sum: f32 = stats
            .iter()
            .map(|st| st.sum[r] * (st.max[r] - m).exp())
            .sum();
        lse[r] = m + sum.ln();
        losses[r] = lse[r] - target_logit[r];
        if best_at == targets[r] {
            correct += 1;
        }
    }
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
    // dhidden gathers from every chunk: each rayon split owns a private (n, c) sum.
    let partial = dw_chunks
        .into_par_iter()
        .enumerate()
        .fold(
            || vec![0.0f32; n * c],
            |mut acc, (ci, dw)| {
                let (v0, v1) = (ci * VOCAB_CHUNK, ((ci + 1) * VOCAB_CHUNK).min(v));
                let vc = v1 - v0;
                let mut buf = Vec::new();
                let wc = chunk_weight(&mut buf, &weight, v0, v1, c);
                let mut dl = vec![0.0; ROW_TILE.min(n) * vc];
                let mut dw = dw;
                for r0 in (0..n).step_by(ROW_TILE) {
                    let rows = ROW_TILE.min(n - r0);
                    let hid = &hidden[r0 * c..(r0 + rows) * c];
                    let dlt = &mut dl[..rows * vc];
                    sgemm(
                        dlt,
                        hid,
                        Layout::Normal,
                        wc,
                        Layout::Transposed,
                        rows,
                        c,
                        vc,
                        false,
                    );
                    // dlogits = scale · (softmax − onehot(target))
                    for (i, row) in dlt.chunks_exact_mut(vc).enumerate() {
                        let l = lse[r0 + i];
                        for x in row.iter_mut() {
                            *x = scale * (*x - l).exp();
                        }
                        let t = targets[r0 + i] as usize;
                        if (v0..v1).contains(&t) {
                            row[t - v0] -= scale;
                        }
                    }
                    // dhidden (rows, c) += dlogits (rows, vc) · wc (vc, c)
                    let acc_rows = &mut acc[r0 * c..(r0 + rows) * c];
                    sgemm(
                        acc_rows,
                        dlt,
                        Layout::Normal,
                        wc,
                        Layout::Normal,
                        rows,
                        vc,
                        c,
                        true,
                    );
                    // dweight (vc, c) += dlogitsᵀ (vc, rows) · hidden (rows, c)
                    if let Some(dw) = dw.as_deref_mut() {
                        sgemm(
                            dw,
                            dlt,
                            Layout::Transposed,
                            hid,
                            Layout::Normal,
                            vc,
                            rows,
                            c,
                            true,
                        );
                    }
                }
                acc
            },
        )
        .reduce_with(|mut a, b| {
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
        let hidden = rand_vec(&mut rng, n * c, 1.0);
        let w32 = rand_vec(&mut rng, v * c, 0.5);
        let wbf: Vec<bf16> = w32.iter().map(|&x| bf16::from_f32(x)).collect();
        let mut targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
        // Make a few rows predict their own target so accuracy counting is exercised.
        for r in 0..n / 4 {
            targets[r] = 0;
        }
        for weight in [WeightRef::F32(&w32), WeightRef::BF16(&wbf)] {
            let (mut loss, mut lse) = (vec![0.0; n], vec![0.0; n]);
            let acc = lm_head_ce_forward(&mut loss, &mut lse, &hidden, weight, &targets, n, c, v);
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
            let mut dh2 = dh0;
            lm_head_ce_backward(
                &mut dh2, None, &hidden, weight, &targets, &lse, scale, n, c, v,
            );
            assert!(max_diff(&dh2, &dh) < 1e-6);
        }
    }
}
