//! AdamW exactly as `torch.optim.AdamW` (foreach=False, amsgrad=False, maximize=False):
//! <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>
//!
//! ```text
//! p ← p·(1 − lr·wd)
//! m ← lerp(m, g, 1 − β1)          (= β1·m + (1 − β1)·g)
//! v ← β2·v + (1 − β2)·g²
//! p ← p − lr/bc1 · m / (√v / √bc2 + eps),   bc_i = 1 − β_iᵗ, t = step ≥ 1
//! ```
//! Scalars (`1 − lr·wd`, `lr/bc1`, `√bc2`) are computed in f64 and rounded to f32 once, as
//! PyTorch does with its Python-float hyper-parameters; the per-element math is f32.
//! Also here: the global gradient norm and in-place scaling used for clipping.

use rayon::prelude::*;

use crate::simd::avx512_or_baseline;

/// Below this many elements the rayon fork/join costs more than the work.
const PAR_MIN: usize = 1 << 15;
/// Elements per rayon task.
const CHUNK: usize = 1 << 13;

/// AdamW hyper-parameters (PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// Per-step scalars shared by every element.
#[derive(Clone, Copy)]
struct StepScalars {
    decay: f32,
    w1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

/// One AdamW step (`step` counts from 1) over params, grads, m, v (all n). Updates params, m, v.
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    cfg: &AdamWConfig,
    step: u64,
) {
    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n,
        "adamw_update: params, grads, m and v must all have {n} elements"
    );
    assert!(step >= 1, "adamw_update: step counts from 1");
    let (lr, b1, b2) = (cfg.lr as f64, cfg.beta1 as f64, cfg.beta2 as f64);
    let t = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let s = StepScalars {
        decay: (1.0 - lr * cfg.weight_decay as f64) as f32,
        w1: (1.0 - b1) as f32,
        beta2: cfg.beta2,
        one_minus_beta2: (1.0 - b2) as f32,
        step_size: (lr / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        eps: cfg.eps,
    };
    if n < PAR_MIN {
        update_chunk(params, grads, m, v, s);
    } else {
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| update_chunk(p, g, m, v, s));
    }
}

avx512_or_baseline! {
    /// Compiled twice (AVX-512 and baseline), picked at run time: sqrt and divide dominate.
    fn update_chunk(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], s: StepScalars) = update_body;
}

#[inline(always)]
fn update_body(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], s: StepScalars) {
    for (((p, &g), m), v) in params
        .iter_mut()
        .zip(grads)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        *p *= s.decay;
        // torch.lerp with weight < 0.5 computes start + weight·(end − start).
        *m += s.w1 * (g - *m);
        *v = *v * s.beta2 + s.one_minus_beta2 * (g * g);
        let denom = v.sqrt() / s.bc2_sqrt + s.eps;
        *p += -s.step_size * (*m / denom);
    }
}

/// `sqrt(Σ g²)` over all given slices, accumulated in f64.
pub fn grad_norm(grads: &[&[f32]]) -> f32 {
    let sumsq: f64 = grads
        .iter()
        .map(|g| {
            if g.len() < PAR_MIN {
                sumsq_f64(g)
            } else {
                // Collected, then summed in order: bit-reproducible whatever the scheduling.
                let parts: Vec<f64> = g.par_chunks(CHUNK).map(sumsq_f64).collect();
                parts.iter().sum()
            }
        })
        .sum();
    sumsq.sqrt() as f32
}

fn sumsq_f64(x: &[f32]) -> f64 {
    // 8 partial sums so the f64 adds pipeline (and vectorise).
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += (v as f64) * (v as f64);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// Multiply every element of `x` by `scale` (gradient clipping, loss normalisation).
pub fn scale_in_place(x: &mut [f32], scale: f32) {
    if x.len() < PAR_MIN {
        x.iter_mut().for_each(|v| *v *= scale);
    } else {
        x.par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v *= scale));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_norm_and_scale() {
        let a = [3.0f32, 0.0];
        let b = vec![4.0f32; 1];
        assert_eq!(grad_norm(&[&a, &b]), 5.0);
        let big = vec![0.5f32; PAR_MIN * 2 + 3];
        let want = (0.25f64 * big.len() as f64).sqrt() as f32;
        assert!((grad_norm(&[&big]) - want).abs() < 1e-4 * want);
        let mut x = big.clone();
        scale_in_place(&mut x, 4.0);
        assert!(x.iter().all(|&v| v == 2.0));
        assert_eq!(grad_norm(&[]), 0.0);
    }

    #[test]
    fn zero_grad_only_decays() {
        let cfg = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let mut p = [2.0f32];
        let (mut m, mut v) = ([0.0f32], [0.0f32]);
        adamw_update(&mut p, &[0.0], &mut m, &mut v, &cfg, 1);
        // p·(1 − 0.05) and m = v = 0 → no Adam step.
        assert!((p[0] - 1.9).abs() < 1e-6, "{p:?}");
    }
}
