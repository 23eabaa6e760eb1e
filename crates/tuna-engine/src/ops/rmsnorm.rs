//! RMSNorm as in Hugging Face `Qwen2RMSNorm` (also Qwen3's per-head `q_norm`/`k_norm`):
//! `y = (x * rsqrt(mean(x²) + eps)) * weight`, all in `f32`.
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen2/modeling_qwen2.py>

use rayon::prelude::*;

/// Below this many elements (n·c) the rayon fork/join costs more than the work.
const PAR_MIN: usize = 1 << 15;

/// Rows per rayon task for a row length `c`: about 32k elements, at least one row.
fn rows_per_task(c: usize) -> usize {
    (PAR_MIN / c.max(1)).max(1)
}

/// out (n, c), rstd (n) saved for backward, inp (n, c), weight (c). Overwrites `out` and `rstd`.
pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) {
    debug_assert_eq!(out.len(), n * c);
    debug_assert_eq!(rstd.len(), n);
    debug_assert_eq!(inp.len(), n * c);
    debug_assert_eq!(weight.len(), c);
    if c == 0 {
        rstd.fill(0.0);
        return;
    }
    let rows = |out: &mut [f32], rstd: &mut [f32], inp: &[f32]| {
        for ((o, r), x) in out
            .chunks_exact_mut(c)
            .zip(rstd.iter_mut())
            .zip(inp.chunks_exact(c))
        {
            *r = rmsnorm_row(o, x, weight, eps);
        }
    };
    if n * c < PAR_MIN {
        rows(out, rstd, inp);
    } else {
        let k = rows_per_task(c);
        out.par_chunks_mut(k * c)
            .zip(rstd.par_chunks_mut(k))
            .zip(inp.par_chunks(k * c))
            .for_each(|((o, r), x)| rows(o, r, x));
    }
}

/// One row; returns its rstd.
fn rmsnorm_row(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) -> f32 {
    let ss = sum_of_squares(x);
    let rstd = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &xi), &w) in out.iter_mut().zip(x).zip(weight) {
        // Same association as HF: normalise first, then scale by the weight.
        *o = (xi * rstd) * w;
    }
    rstd
}

/// Σ x², with 16 independent partial sums so the loop vectorises (and is more accurate than one
/// running sum).
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    acc.iter().sum::<f32>() + tail
}

/// Straightforward oracle for the fast forward.
pub fn rmsnorm_forward_naive(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) {
    for i in 0..n {
        let x = &inp[i * c..(i + 1) * c];
        let ms = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c as f64;
        let r = (1.0 / (ms + eps as f64).sqrt()) as f32;
        rstd[i] = r;
        for j in 0..c {
            out[i * c + j] = x[j] * r * weight[j];
        }
    }
}

/// Accumulates dinp (n, c) and, if given, dweight (c). dout (n, c), inp (n, c), weight (c),
/// rstd (n) from the forward.
///
/// With `r = rstd` and `g = dout ⊙ weight`: `dx = r·g − x · r³/c · Σ(g ⊙ x)`, `dw += Σ_rows dout ⊙ x·r`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    debug_assert_eq!(dinp.len(), n * c);
    debug_assert_eq!(dout.len(), n * c);
    debug_assert_eq!(inp.len(), n * c);
    debug_assert_eq!(weight.len(), c);
    debug_assert_eq!(rstd.len(), n);
    if c == 0 || n == 0 {
        return;
    }
    // Rows of one task; `dw` is that task's own dweight partial sum (or None).
    let rows =
        |dinp: &mut [f32], mut dw: Option<&mut [f32]>, dout: &[f32], inp: &[f32], rstd: &[f32]| {
            for (((dx, g), x), &r) in dinp
                .chunks_exact_mut(c)
                .zip(dout.chunks_exact(c))
                .zip(inp.chunks_exact(c))
                .zip(rstd)
            {
                rmsnorm_backward_row(dx, dw.as_deref_mut(), g, x, weight, r);
            }
        };
    if n * c < PAR_MIN {
        rows(dinp, dweight, dout, inp, rstd);
        return;
    }
    let k = rows_per_task(c);
    match dweight {
        None => dinp
            .par_chunks_mut(k * c)
            .zip(dout.par_chunks(k * c))
            .zip(inp.par_chunks(k * c))
            .zip(rstd.par_chunks(k))
            .for_each(|(((dx, g), x), r)| rows(dx, None, g, x, r)),
        Some(dweight) => {
            // Each chunk of rows sums its dweight privately; the partials are added in row order,
            // so the result does not depend on work stealing.
            let partials: Vec<Vec<f32>> = dinp
                .par_chunks_mut(k * c)
                .zip(dout.par_chunks(k * c))
                .zip(inp.par_chunks(k * c))
                .zip(rstd.par_chunks(k))
                .map(|(((dx, g), x), r)| {
                    let mut dw = vec![0.0f32; c];
                    rows(dx, Some(&mut dw), g, x, r);
                    dw
                })
                .collect();
            let mut partial = vec![0.0f32; c];
            for p in &partials {
                for (x, y) in partial.iter_mut().zip(p) {
                    *x += *y;
                }
            }
            for (d, p) in dweight.iter_mut().zip(&partial) {
                *d += *p;
            }
        }
    }
}

fn rmsnorm_backward_row(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    weight: &[f32],
    rstd: f32,
) {
    let c = x.len();
    // Σ_j dout_j w_j x_j, in 16 lanes so it vectorises.
    let mut acc = [0.0f32; 16];
    let mut tail = 0.0f32;
    let mut i = 0;
    while i + 16 <= c {
        for l in 0..16 {
            acc[l] += dout[i + l] * weight[i + l] * x[i + l];
        }
        i += 16;
    }
    while i < c {
        tail += dout[i] * weight[i] * x[i];
        i += 1;
    }
    let dot = acc.iter().sum::<f32>() + tail;
    let coef = rstd * rstd * rstd * dot / c as f32;
    for j in 0..c {
        dx[j] += rstd * weight[j] * dout[j] - coef * x[j];
    }
    if let Some(dw) = dw {
        for j in 0..c {
            dw[j] += dout[j] * x[j] * rstd;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn hand_computed_row() {
        // x = [3, 4]: mean(x²) = 12.5, eps = 0 -> rstd = 1/sqrt(12.5).
        let mut out = [0.0; 2];
        let mut rstd = [0.0; 1];
        rmsnorm_forward(&mut out, &mut rstd, &[3.0, 4.0], &[1.0, 2.0], 1, 2, 0.0);
        let r = 1.0 / 12.5f32.sqrt();
        assert!((rstd[0] - r).abs() < 1e-7);
        assert!(
            (out[0] - 3.0 * r).abs() < 1e-6 && (out[1] - 8.0 * r).abs() < 1e-6,
            "{out:?}"
        );
    }

    #[test]
    fn fast_matches_naive_small_and_parallel() {
        let mut rng = StdRng::seed_from_u64(7);
        for (n, c) in [(3, 5), (7, 33), (300, 896), (1024, 64)] {
            let inp: Vec<f32> = (0..n * c).map(|_| rng.random_range(-3.0..3.0)).collect();
            let w: Vec<f32> = (0..c).map(|_| rng.random_range(0.5..1.5)).collect();
            let (mut o1, mut o2) = (vec![0.0; n * c], vec![0.0; n * c]);
            let (mut r1, mut r2) = (vec![0.0; n], vec![0.0; n]);
            rmsnorm_forward(&mut o1, &mut r1, &inp, &w, n, c, 1e-6);
            rmsnorm_forward_naive(&mut o2, &mut r2, &inp, &w, n, c, 1e-6);
            let d = o1
                .iter()
                .zip(&o2)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let dr = r1
                .iter()
                .zip(&r2)
                .map(|(a, b)| ((a - b) / b).abs())
                .fold(0.0, f32::max);
            // tolerance: a few f32 ulps of values of magnitude ~5
            assert!(
                d < 1e-5 && dr < 1e-6,
                "n={n} c={c}: out diff {d}, rstd rel diff {dr}"
            );
        }
    }

    #[test]
    fn parallel_backward_matches_serial() {
        let mut rng = StdRng::seed_from_u64(8);
        let (n, c) = (200, 896);
        let inp: Vec<f32> = (0..n * c).map(|_| rng.random_range(-2.0..2.0)).collect();
        let dout: Vec<f32> = (0..n * c).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..c).map(|_| rng.random_range(0.5..1.5)).collect();
        let mut out = vec![0.0; n * c];
        let mut rstd = vec![0.0; n];
        rmsnorm_forward(&mut out, &mut rstd, &inp, &w, n, c, 1e-6);
        let (mut dx1, mut dw1) = (vec![0.0; n * c], vec![0.0; c]);
        rmsnorm_backward(&mut dx1, Some(&mut dw1), &dout, &inp, &w, &rstd, n, c);
        let (mut dx2, mut dw2) = (vec![0.0; n * c], vec![0.0; c]);
        for (i, &r) in rstd.iter().enumerate() {
            let s = i * c..(i + 1) * c;
            rmsnorm_backward_row(
                &mut dx2[s.clone()],
                Some(&mut dw2),
                &dout[s.clone()],
                &inp[s],
                &w,
                r,
            );
        }
        let d = dx1
            .iter()
            .zip(&dx2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let dw = dw1
            .iter()
            .zip(&dw2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // dinp is per row (identical); dweight is summed in a different order.
        assert!(d == 0.0 && dw < 1e-3, "dinp diff {d}, dweight diff {dw}");
    }
}
