//! AVX-512 versions of the packing in `pack.rs` (same layouts, same rounding, bit for bit).
//!
//! Two moves cover every hot case. A 32-bit *word* is a bf16 pair `(x[2p], x[2p+1])`.
//! - Interleave: words from two rows, `(lo[j], hi[j])` for 16 consecutive columns j. Packs B
//!   panels from row-major B (a weight or activations as the right operand) and A micro-panels
//!   from a transposed A (the dweight product, A = doutᵀ).
//! - Transpose: 16 rows × 16 words → 16 words × 16 rows (four shuffle stages). Packs A
//!   micro-panels from row-major A (weights, activations) and B panels from a transposed B
//!   (B = inpᵀ in the forward product), where a row's pairs are adjacent in memory.

use std::arch::x86_64::*;

use super::pack::{Mat, NR, padded_k};
use crate::weight::WeightRef;

/// bf16 bits (round to nearest even, NaN quieted) of 16 f32, in the low half of each lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round_lanes(v: __m512) -> __m512i {
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        b,
        _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb),
    ));
    let abs = _mm512_and_si512(b, _mm512_set1_epi32(0x7fff_ffff));
    let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
    let nan = _mm512_and_si512(
        _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40)),
        _mm512_set1_epi32(0xffff),
    );
    _mm512_mask_blend_epi32(is_nan, rounded, nan)
}

/// Mask of the first `n` (≤ 16) lanes.
#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Words `(lo[j], hi[j])`, j < n ≤ 16 (missing lanes, and `hi` when absent, are zero), of f32 rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn interleave_f32(lo: *const f32, hi: Option<*const f32>, n: usize) -> __m512i {
    let m = mask16(n);
    // SAFETY: the caller guarantees n readable elements at `lo` (and `hi`); masked lanes are not read.
    unsafe {
        let l = round_lanes(_mm512_maskz_loadu_ps(m, lo));
        let h = match hi {
            Some(p) => round_lanes(_mm512_maskz_loadu_ps(m, p)),
            None => _mm512_setzero_si512(),
        };
        _mm512_or_si512(l, _mm512_slli_epi32::<16>(h))
    }
}

/// As [`interleave_f32`] for rows of bf16 bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn interleave_bf16(lo: *const u16, hi: Option<*const u16>, n: usize) -> __m512i {
    let m = mask16(n);
    // SAFETY: as in `interleave_f32`.
    unsafe {
        let l = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo.cast()));
        let h = match hi {
            Some(p) => _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p.cast())),
            None => _mm512_setzero_si512(),
        };
        _mm512_or_si512(l, _mm512_slli_epi32::<16>(h))
    }
}

/// The 16 words (32 elements, pairs adjacent) at `p` of an f32 row, rounded; only the first `n`
/// elements (≤ 32) are read, the rest are zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn words_f32(p: *const f32, n: usize) -> __m512i {
    // SAFETY: the caller guarantees n readable elements; masked lanes are not read.
    unsafe {
        let a = round_lanes(_mm512_maskz_loadu_ps(mask16(n), p));
        let b = round_lanes(_mm512_maskz_loadu_ps(
            mask16(n.saturating_sub(16)),
            p.add(16),
        ));
        let lo = _mm512_cvtepi32_epi16(a);
        let hi = _mm512_cvtepi32_epi16(b);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// As [`words_f32`] for a row of bf16 bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn words_bf16(p: *const u16, n: usize) -> __m512i {
    let m: __mmask32 = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
    // SAFETY: as in `words_f32`.
    unsafe { _mm512_maskz_loadu_epi16(m, p.cast()) }
}

/// Transposes 16 rows of 16 words in place: afterwards `r[c]` holds word c of rows 0..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn transpose16(r: &mut [__m512i; 16]) {
    // Within each 128-bit lane: 4 × 4 blocks of words (unpack 32, then 64 bits).
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c], lane L = column 4L + c of rows 4g..4g+4.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    // Gather the four row groups of each column across 128-bit lanes.
    for c in 0..4 {
        let v = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]); // g0L0 g0L2 g1L0 g1L2
        let w = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]); // g0L1 g0L3 g1L1 g1L3
        let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        let w2 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
        r[c] = _mm512_shuffle_i32x4::<0x88>(v, v2);
        r[8 + c] = _mm512_shuffle_i32x4::<0xdd>(v, v2);
        r[4 + c] = _mm512_shuffle_i32x4::<0x88>(w, w2);
        r[12 + c] = _mm512_shuffle_i32x4::<0xdd>(w, w2);
    }
}

/// `pack_b_panel` for B with contiguous columns (rs, 1): interleaved row pairs, for panels
/// `panels` and pair rows `pairs` of the whole packed B at `dst` (panel q at `q·kp·NR`). Walks
/// pair row by pair row across the panels, so each row of B is read as one contiguous stretch.
///
/// # Safety
/// The CPU must have AVX-512F/BW/VL; `dst` must hold `n.div_ceil(NR)·kp·NR` elements, of which
/// this call writes rows `pairs` of panels `panels` (nothing else); B's extent is checked by the
/// caller.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack_b_rows(
    dst: *mut u16,
    b: &Mat,
    panels: std::ops::Range<usize>,
    pairs: std::ops::Range<usize>,
    k: usize,
    n: usize,
) {
    let kp = padded_k(k);
    for p in pairs {
        let (r0, r1) = (2 * p, 2 * p + 1);
        for q in panels.clone() {
            let j0 = q * NR;
            let cols = NR.min(n - j0);
            // Panel q's pair row p: words p·NR .. (p + 1)·NR of the panel at q·kp·NR (the caller
            // may pass a base pointer outside its buffer, so the offset is computed wrapping).
            let out = dst.wrapping_add(q * kp * NR + p * 2 * NR).cast::<__m512i>();
            for h in 0..NR / 16 {
                let nh = cols.saturating_sub(16 * h).min(16);
                // SAFETY: rows r0 (< k) and r1 (when < k) hold columns j0 + 16h .. + nh inside B;
                // masked lanes are not read; the store is inside this pair row.
                unsafe {
                    let v = if r0 >= k || nh == 0 {
                        _mm512_setzero_si512()
                    } else {
                        let at = |r: usize| r * b.rs + j0 + 16 * h;
                        match b.data {
                            WeightRef::F32(w) => interleave_f32(
                                w.as_ptr().add(at(r0)),
                                (r1 < k).then(|| w.as_ptr().add(at(r1))),
                                nh,
                            ),
                            WeightRef::BF16(w) => interleave_bf16(
                                w.as_ptr().cast::<u16>().add(at(r0)),
                                (r1 < k).then(|| w.as_ptr().cast::<u16>().add(at(r1))),
                                nh,
                            ),
                            WeightRef::F16(_) => {
                                unreachable!("f16 operands take the portable packing")
                            }
                        }
                    };
                    _mm512_storeu_si512(out.wrapping_add(h).cast(), v);
                }
            }
        }
    }
}

/// `pack_b_panel` for B with contiguous rows (1, cs): each column's pairs are adjacent in memory,
/// so 16 columns × 16 pairs are loaded and transposed.
///
/// # Safety
/// As for [`pack_b_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack_b_cols(dst: &mut [u16], b: &Mat, q: usize, k: usize, n: usize) {
    let kp = padded_k(k);
    assert!(dst.len() >= kp * NR);
    let j0 = q * NR;
    let cols = NR.min(n - j0);
    let out = dst.as_mut_ptr().cast::<__m512i>();
    for h in 0..NR / 16 {
        let live = cols.saturating_sub(16 * h).min(16);
        for p0 in (0..kp / 2).step_by(16) {
            let e = k.saturating_sub(2 * p0).min(32);
            let mut r = [_mm512_setzero_si512(); 16];
            if e > 0 {
                for (i, v) in r.iter_mut().enumerate().take(live) {
                    let at = (j0 + 16 * h + i) * b.cs + 2 * p0;
                    // SAFETY: column j0 + 16h + i < n holds elements 2·p0 .. 2·p0 + e < k.
                    *v = unsafe {
                        match b.data {
                            WeightRef::F32(w) => words_f32(w.as_ptr().add(at), e),
                            WeightRef::BF16(w) => words_bf16(w.as_ptr().cast::<u16>().add(at), e),
                            WeightRef::F16(_) => {
                                unreachable!("f16 operands take the portable packing")
                            }
                        }
                    };
                }
            }
            transpose16(&mut r);
            for (c, v) in r.iter().enumerate() {
                // SAFETY: word (p0 + c)·NR + 16h < kp/2 · NR (p0 + c < kp/2: kp/2 is a multiple of 16).
                unsafe { _mm512_storeu_si512(out.add((p0 + c) * NR / 16 + h).cast(), *v) };
            }
        }
    }
}

/// `store_tile` of the driver for tiles of at most 16 rows: dst(r0 + i, c0 + j) (+)= tile[i][j],
/// row by row when dst rows are contiguous (cs = 1), column by column through [`transpose16`]
/// when its columns are (rs = 1).
///
/// # Safety
/// The CPU must have AVX-512F/BW/VL; `tile` holds `rows` (≤ 16) rows of NR floats; every
/// addressed element of `dst` is in bounds and written by no one else meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn store_tile(
    dst: *mut f32,
    (rs, cs): (usize, usize),
    tile: &[f32],
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    accumulate: bool,
) {
    assert!(rows <= 16 && cols <= NR && tile.len() >= rows * NR);
    let add = |p: *mut f32, m: __mmask16, v: __m512| {
        // SAFETY: the lanes of `m` address elements the caller vouches for.
        unsafe {
            let v = if accumulate {
                _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, p))
            } else {
                v
            };
            _mm512_mask_storeu_ps(p, m, v);
        }
    };
    if cs == 1 {
        for i in 0..rows {
            for h in 0..NR / 16 {
                let n = cols.saturating_sub(16 * h).min(16);
                if n > 0 {
                    // SAFETY: row i of the tile holds NR floats; dst row r0 + i holds columns
                    // c0 + 16h .. + n (the caller's contract).
                    unsafe {
                        let v = _mm512_loadu_ps(tile.as_ptr().add(i * NR + 16 * h));
                        add(dst.add((r0 + i) * rs + c0 + 16 * h), mask16(n), v);
                    }
                }
            }
        }
        return;
    }
    // rs = 1: column j of the tile goes to dst[(c0 + j)·cs + r0 ..], `rows` contiguous floats.
    for h in 0..NR / 16 {
        let n = cols.saturating_sub(16 * h).min(16);
        if n == 0 {
            break;
        }
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, v) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: row i < rows of the tile holds NR floats.
            *v = unsafe { _mm512_loadu_si512(tile.as_ptr().add(i * NR + 16 * h).cast()) };
        }
        transpose16(&mut r);
        for (j, v) in r.iter().enumerate().take(n) {
            // SAFETY: column c0 + 16h + j < c0 + cols of dst holds rows r0 .. r0 + rows.
            unsafe {
                add(
                    dst.add((c0 + 16 * h + j) * cs + r0),
                    mask16(rows),
                    _mm512_castsi512_ps(*v),
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !crate::simd::has_avx512() {
            return;
        }
        let words: Vec<i32> = (0..256).collect();
        // SAFETY: AVX-512 checked above; every load/store is of 16 in-bounds i32.
        unsafe {
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(words[i * 16..].as_ptr().cast());
            }
            transpose16(&mut r);
            let mut out = vec![0i32; 256];
            for (c, v) in r.iter().enumerate() {
                _mm512_storeu_si512(out[c * 16..].as_mut_ptr().cast(), *v);
            }
            for c in 0..16 {
                for i in 0..16 {
                    assert_eq!(out[c * 16 + i], words[i * 16 + c], "c={c} i={i}");
                }
            }
        }
    }
}
