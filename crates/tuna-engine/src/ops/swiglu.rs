//! SwiGLU, the Qwen MLP's activation: `out = silu(gate) ⊙ up`, `silu(g) = g·σ(g)`.
//!
//! Element-wise and memory bound, except for `exp`: libm's `expf` does not vectorise, so
//! `exp_fast` below is a Cephes-style polynomial written so LLVM vectorises it. Loops are
//! compiled twice (AVX-512 and baseline) and picked at run time.

use rayon::prelude::*;

/// Below this many elements the rayon fork/join costs more than the work.
const PAR_MIN: usize = 1 << 15;
/// Elements per rayon task.
const CHUNK: usize = 1 << 13;

/// out (n) = silu(gate (n)) ⊙ up (n). Overwrites `out`.
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert_eq!(
        out.len(),
        gate.len(),
        "swiglu_forward: out/gate lengths differ"
    );
    assert_eq!(out.len(), up.len(), "swiglu_forward: out/up lengths differ");
    if out.len() < PAR_MIN {
        forward_chunk(out, gate, up);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK))
            .zip(up.par_chunks(CHUNK))
            .for_each(|((o, g), u)| forward_chunk(o, g, u));
    }
}

/// Accumulates dgate (n) += dout ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))) and dup (n) += dout ⊙ silu(g).
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let n = dout.len();
    assert!(
        dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n,
        "swiglu_backward: all five slices must have {n} elements"
    );
    if n < PAR_MIN {
        backward_chunk(dgate, dup, dout, gate, up);
    } else {
        dgate
            .par_chunks_mut(CHUNK)
            .zip(dup.par_chunks_mut(CHUNK))
            .zip(dout.par_chunks(CHUNK))
            .zip(gate.par_chunks(CHUNK))
            .zip(up.par_chunks(CHUNK))
            .for_each(|((((dg, du), d), g), u)| backward_chunk(dg, du, d, g, u));
    }
}

/// Straightforward oracle (libm `exp`).
pub fn swiglu_forward_naive(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[inline(always)]
fn forward_body(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let s = 1.0 / (1.0 + exp_fast(-g));
        *o = g * s * u;
    }
}

#[inline(always)]
fn backward_body(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    for ((((dg, du), &d), &g), &u) in dgate
        .iter_mut()
        .zip(dup.iter_mut())
        .zip(dout)
        .zip(gate)
        .zip(up)
    {
        let s = 1.0 / (1.0 + exp_fast(-g));
        *dg += d * u * s * (1.0 + g * (1.0 - s));
        *du += d * g * s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn forward_avx512(out: &mut [f32], gate: &[f32], up: &[f32]) {
    forward_body(out, gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn backward_avx512(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    backward_body(dgate, dup, dout, gate, up)
}

fn forward_chunk(out: &mut [f32], gate: &[f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { forward_avx512(out, gate, up) };
    }
    forward_body(out, gate, up)
}

fn backward_chunk(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { backward_avx512(dgate, dup, dout, gate, up) };
    }
    backward_body(dgate, dup, dout, gate, up)
}

/// `eˣ` to about 2 ulp for |x| ≤ 87, branch-free so loops over it vectorise (Cephes `expf`:
/// x = n·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial for eʳ, 2ⁿ built in the exponent bits).
/// Inputs are clamped to [-87, 88], so the result never overflows to inf and never underflows
/// below the smallest normal (σ and silu do not care about the difference).
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in few bits and a correction, so n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer using only float adds (no `round` call).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes 5.0000001201e-1 rounds to 0.5 in f32
    let er = p * r * r + r + 1.0;
    // The low mantissa bits of `t` hold n (two's complement); shift it into the exponent.
    let bits = (t.to_bits() as i32)
        .wrapping_sub(MAGIC.to_bits() as i32)
        .wrapping_add(127)
        << 23;
    er * f32::from_bits(bits as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn exp_fast_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp_fast(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        // tolerance: 3e-7 relative (~2.5 f32 ulp)
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(-1000.0) >= 0.0 && exp_fast(1000.0).is_finite());
    }

    #[test]
    fn hand_computed() {
        // silu(0) = 0, silu(2) = 2/(1+e^-2) = 1.7615941559557649
        let mut out = [0.0; 2];
        swiglu_forward(&mut out, &[0.0, 2.0], &[5.0, 3.0]);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 3.0 * 1.761_594_2).abs() < 1e-6, "{out:?}");
        // d/dg silu(g) at 0 is 1/2; dup = silu(g).
        let (mut dg, mut du) = ([0.0; 2], [0.0; 2]);
        swiglu_backward(&mut dg, &mut du, &[1.0, 1.0], &[0.0, 2.0], &[5.0, 3.0]);
        assert!((dg[0] - 2.5).abs() < 1e-6 && du[0] == 0.0, "{dg:?} {du:?}");
        assert!((du[1] - 1.761_594_2).abs() < 1e-6);
    }

    #[test]
    fn fast_matches_naive() {
        let mut rng = StdRng::seed_from_u64(3);
        for n in [1, 15, 17, 1000, PAR_MIN * 2 + 5] {
            let g: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0..12.0)).collect();
            let u: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            swiglu_forward(&mut a, &g, &u);
            swiglu_forward_naive(&mut b, &g, &u);
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            // tolerance: |out| ≤ 24, a few ulps
            assert!(d < 1e-5, "n={n}: max diff {d}");
        }
    }
}
