//! The vector helpers that several kernels share: CPU feature checks, the run-time choice between
//! an AVX-512 and a baseline build of the same loop ([`avx512_or_baseline!`]), the fast `exp`, the
//! row primitives of softmax (attention, LM head + cross-entropy), and the bit views of half floats.
//!
//! Row primitives are written over 16-lane arrays so LLVM vectorises them; each is compiled twice
//! (for AVX-512, picked at run time, and for the baseline target).

use half::{bf16, f16};

/// Whether the AVX-512 kernels may run: F, BW, VL and F16C (every AVX-512 CPU since Skylake-SP
/// and Zen 4 has all four). std caches the CPUID answers.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn $name(args) -> ret` that runs `$body(args)` compiled with AVX-512F enabled when the
/// CPU has it ([`has_avx512`]), else compiled for the baseline target. `$body` is an
/// `#[inline(always)]` function holding the loop, so each build vectorises it for its target.
macro_rules! avx512_or_baseline {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$meta])*
        #[inline]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::simd::has_avx512() {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use avx512_or_baseline;

/// `eˣ` to about 2 ulp for |x| ≤ 87, branch-free so loops over it vectorise (Cephes `expf`:
/// x = n·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial for eʳ, 2ⁿ built in the exponent bits).
/// Inputs are clamped to [-87, 88], so the result never overflows to inf and never underflows
/// below the smallest normal (σ, silu and softmax do not care about the difference).
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

// ---------------------------------------------------------------------------------------------
// Row primitives (softmax forward and backward)

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max_body(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for ch in &mut chunks {
        for l in 0..16 {
            acc[l] = if ch[l] > acc[l] { ch[l] } else { acc[l] };
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for a in acc {
        m = m.max(a);
    }
    m
}

#[inline(always)]
fn exp_affine_body(xs: &mut [f32], a: f32, b: f32, s: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = xs.chunks_exact_mut(16);
    for ch in &mut chunks {
        for l in 0..16 {
            let e = s * exp_fast(ch[l] * a - b);
            ch[l] = e;
            acc[l] += e;
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        let e = s * exp_fast(*x * a - b);
        *x = e;
        tail += e;
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn softmax_grad_body(ds: &mut [f32], p: &[f32], d: f32, s: f32) {
    for (x, &pv) in ds.iter_mut().zip(p) {
        *x = s * pv * (*x - d);
    }
}

avx512_or_baseline! {
    /// Σ a·b (a and b of equal length).
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 = dot_body;
}
avx512_or_baseline! {
    /// Largest element (−∞ for an empty slice; NaNs are skipped).
    pub(crate) fn row_max(xs: &[f32]) -> f32 = max_body;
}
avx512_or_baseline! {
    /// `x ← s·exp(a·x − b)` in place; returns the sum of the new values.
    pub(crate) fn exp_affine(xs: &mut [f32], a: f32, b: f32, s: f32) -> f32 = exp_affine_body;
}
avx512_or_baseline! {
    /// `ds ← s·p·(ds − d)` (softmax backward of one row, with the score scale folded in).
    pub(crate) fn softmax_grad(ds: &mut [f32], p: &[f32], d: f32, s: f32) = softmax_grad_body;
}

// ---------------------------------------------------------------------------------------------
// Half floats as bits

/// The raw bits of bf16 values.
pub(crate) fn bf16_bits(w: &[bf16]) -> &[u16] {
    // SAFETY: bf16 is a `repr(transparent)` wrapper of u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()) }
}

/// The raw bits of f16 values.
pub(crate) fn f16_bits(w: &[f16]) -> &[u16] {
    // SAFETY: f16 is a `repr(transparent)` wrapper of u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Both builds of each primitive against plain loops, on lengths around the 16-lane blocks.
    #[test]
    fn row_primitives_match_plain_loops() {
        for n in [0usize, 1, 15, 16, 17, 100] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 * 0.25).collect();
            let want_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(dot(&a, &b), want_dot, "n={n}");
            assert_eq!(dot_body(&a, &b), want_dot, "n={n}");
            let want_max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(row_max(&a), want_max);
            assert_eq!(max_body(&a), want_max);
            let mut e = b.clone();
            let sum = exp_affine(&mut e, 2.0, 1.0, 0.5);
            for (x, y) in e.iter().zip(&b) {
                let want = 0.5 * (2.0 * y - 1.0).exp();
                assert!((x - want).abs() <= 1e-6 * want, "{x} vs {want}");
            }
            assert!((sum - e.iter().sum::<f32>()).abs() <= 1e-5 * sum.abs().max(1.0));
            let mut ds = a.clone();
            softmax_grad(&mut ds, &b, 0.5, 2.0);
            for ((x, p), d0) in ds.iter().zip(&b).zip(&a) {
                assert_eq!(*x, 2.0 * p * (d0 - 0.5));
            }
        }
    }
}
