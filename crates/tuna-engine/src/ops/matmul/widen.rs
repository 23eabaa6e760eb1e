//! Widening half-float weights to f32 (vectorised, parallel for large blocks).

use half::f16;
use rayon::prelude::*;

use crate::simd::{bf16_bits, f16_bits, has_avx512};
use crate::weight::WeightRef;

/// Elements per rayon task when widening.
pub(super) const WIDEN_CHUNK: usize = 1 << 16;

/// `out = weight` widened to f32, in parallel for large blocks.
pub(super) fn widen_par(weight: WeightRef, out: &mut [f32]) {
    debug_assert_eq!(weight.len(), out.len());
    if out.len() <= WIDEN_CHUNK {
        widen(weight, out);
    } else {
        out.par_chunks_mut(WIDEN_CHUNK)
            .enumerate()
            .for_each(|(i, o)| {
                let s = i * WIDEN_CHUNK;
                widen(weight.slice(s..s + o.len()), o);
            });
    }
}

/// `out = weight` widened to f32, vectorised.
fn widen(weight: WeightRef, out: &mut [f32]) {
    match weight {
        WeightRef::F32(w) => out.copy_from_slice(w),
        WeightRef::BF16(w) => {
            let bits: &[u16] = bf16_bits(w);
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { widen_bf16_avx512(bits, out) };
            }
            widen_bf16_body(bits, out)
        }
        WeightRef::F16(w) => {
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                // SAFETY: the CPU supports AVX-512F/BW/VL and F16C (checked just above).
                return unsafe { widen_f16_avx512(f16_bits(w), out) };
            }
            for (o, x) in out.iter_mut().zip(w) {
                *o = x.to_f32();
            }
        }
    }
}

/// bf16 is the top half of an f32, so widening is a shift (exact, NaNs included).
#[inline(always)]
fn widen_bf16_body(bits: &[u16], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(bits) {
        *o = f32::from_bits((b as u32) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn widen_bf16_avx512(bits: &[u16], out: &mut [f32]) {
    widen_bf16_body(bits, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
fn widen_f16_avx512(bits: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(bits.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, so 16 u16 are readable at bits[i] and 16 f32 writable at out[i];
        // both intrinsics accept unaligned addresses.
        unsafe {
            let h = _mm256_loadu_si256(bits.as_ptr().add(i).cast());
            _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
        i += 16;
    }
    for j in i..n {
        out[j] = f16::from_bits(bits[j]).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use half::bf16;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn widen_matches_half_crate() {
        let mut rng = StdRng::seed_from_u64(13);
        // Includes a length that is not a multiple of 16 and one over WIDEN_CHUNK (parallel).
        for n in [5, 33, WIDEN_CHUNK + 21] {
            let mut w = Weights::new(&mut rng, n);
            w.bf16[0] = bf16::NAN;
            w.f16[1] = f16::INFINITY;
            for weight in w.refs() {
                let mut got = vec![0.0; n];
                widen_par(weight, &mut got);
                let want = weight.to_f32_vec();
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{:?} n={n}",
                    weight.dtype()
                );
            }
        }
    }
}
