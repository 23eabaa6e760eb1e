//! GEMV for few rows (decode, short prompts): streams the weight once, converting half floats on
//! the fly (AVX-512 when the CPU has it, portable otherwise), parallel over output rows. It is
//! memory bound, so reading 2-byte weights directly halves its time.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::scratch::with_scratch;
use crate::simd::{bf16_bits, has_avx512};
use crate::weight::WeightRef;

/// Output rows of the weight per inner block when the batch is split into groups: keeps the
/// block in L2 while each group re-reads it.
const GEMV_SUB_ROWS: usize = 64;
/// How far ahead (bytes) the GEMV kernels prefetch the weight stream; 4–12 KiB measured alike.
const GEMV_PREFETCH_BYTES: usize = 8192;
/// Below this many weight elements one thread does the whole GEMV (rayon costs a few µs).
const GEMV_PAR_MIN: usize = 1 << 16;

/// out (bt, oc) = inp (bt, c) · weight (oc, c)ᵀ for small `bt`, parallel over output rows.
pub(super) fn gemv(
    out: &mut [f32],
    inp: &[f32],
    weight: WeightRef,
    bt: usize,
    c: usize,
    oc: usize,
) {
    if bt == 0 || oc == 0 {
        return;
    }
    if bt == 1 {
        gemv_t(out, inp, weight, 1, c, oc);
        return;
    }
    // Compute the transpose (oc, bt) so each task owns contiguous output, then transpose back.
    with_scratch(oc * bt, |out_t| {
        gemv_t(out_t, inp, weight, bt, c, oc);
        for o in 0..oc {
            for b in 0..bt {
                out[b * oc + o] = out_t[o * bt + b];
            }
        }
    });
}

/// out_t (oc, bt) = weight (oc, c) · inp (bt, c)ᵀ.
fn gemv_t(out_t: &mut [f32], inp: &[f32], weight: WeightRef, bt: usize, c: usize, oc: usize) {
    // bf16 rows of even length take the pair kernel, which wants the inputs permuted once.
    let permuted;
    let x = if matches!(weight, WeightRef::BF16(_)) && c.is_multiple_of(2) && has_avx512() {
        permuted = permute_pairs(inp, bt, c);
        GemvInput::Bf16Pairs(&permuted)
    } else {
        GemvInput::Plain(inp)
    };
    let threads = rayon::current_num_threads();
    if threads <= 1 || oc * c < GEMV_PAR_MIN || oc < 8 {
        gemv_rows(out_t, x, weight, bt, c, 0, oc);
        return;
    }
    // A few tasks per thread for balance, rows a multiple of 4 (the kernel's row group).
    let rows = oc.div_ceil(threads * 4).next_multiple_of(4);
    out_t
        .par_chunks_mut(rows * bt)
        .enumerate()
        .for_each(|(i, o)| {
            let r0 = i * rows;
            gemv_rows(o, x, weight, bt, c, r0, r0 + o.len() / bt);
        });
}

/// The GEMV's input rows (bt, c): as given, or permuted for `gemv_block_bf16_pairs_avx512`.
#[derive(Clone, Copy)]
enum GemvInput<'a> {
    Plain(&'a [f32]),
    Bf16Pairs(&'a [f32]),
}

/// Permutes each input row (c even) to match how `gemv_block_bf16_pairs_avx512` reads a bf16
/// weight row: per 32 columns, the 16 even columns then the 16 odd ones; the last c mod 32
/// columns likewise (their p even columns, then their p odd ones).
fn permute_pairs(inp: &[f32], bt: usize, c: usize) -> Vec<f32> {
    debug_assert!(c.is_multiple_of(2) && inp.len() == bt * c);
    let mut out = vec![0.0f32; bt * c];
    let full = c / 32 * 32;
    let p = (c - full) / 2;
    for (o, x) in out.chunks_exact_mut(c).zip(inp.chunks_exact(c)) {
        for k in (0..full).step_by(32) {
            for j in 0..16 {
                o[k + j] = x[k + 2 * j];
                o[k + 16 + j] = x[k + 2 * j + 1];
            }
        }
        for j in 0..p {
            o[full + j] = x[full + 2 * j];
            o[full + p + j] = x[full + 2 * j + 1];
        }
    }
    out
}

/// out_t (r1 - r0, bt) = weight rows r0..r1 · inp (bt, c)ᵀ, on one thread.
fn gemv_rows(
    out_t: &mut [f32],
    inp: GemvInput,
    weight: WeightRef,
    bt: usize,
    c: usize,
    r0: usize,
    r1: usize,
) {
    let sub = if bt <= 4 { r1 - r0 } else { GEMV_SUB_ROWS };
    let mut s0 = r0;
    while s0 < r1 {
        let s1 = (s0 + sub).min(r1);
        let o = &mut out_t[(s0 - r0) * bt..(s1 - r0) * bt];
        let w = weight.slice(s0 * c..s1 * c);
        let mut b0 = 0;
        while b0 < bt {
            let nb = (bt - b0).min(4);
            match (w, inp) {
                #[cfg(target_arch = "x86_64")]
                (WeightRef::BF16(w), GemvInput::Bf16Pairs(x)) => {
                    let x = &x[b0 * c..(b0 + nb) * c];
                    let w = bf16_bits(w);
                    // SAFETY: `Bf16Pairs` is only built when the CPU has AVX-512F/BW/VL and
                    // c is even (see `gemv_t`); lengths are asserted inside.
                    unsafe {
                        match nb {
                            1 => gemv_block_bf16_pairs_avx512::<1>(o, w, x, bt, b0, c),
                            2 => gemv_block_bf16_pairs_avx512::<2>(o, w, x, bt, b0, c),
                            3 => gemv_block_bf16_pairs_avx512::<3>(o, w, x, bt, b0, c),
                            _ => gemv_block_bf16_pairs_avx512::<4>(o, w, x, bt, b0, c),
                        }
                    }
                }
                (w, GemvInput::Plain(x) | GemvInput::Bf16Pairs(x)) => {
                    let x = &x[b0 * c..(b0 + nb) * c];
                    match w {
                        WeightRef::F32(w) => gemv_block::<f32>(o, w, x, bt, b0, nb, c),
                        WeightRef::BF16(w) => {
                            gemv_block::<Bf16Bits>(o, Bf16Bits::cast(w), x, bt, b0, nb, c)
                        }
                        WeightRef::F16(w) => {
                            gemv_block::<F16Bits>(o, F16Bits::cast(w), x, bt, b0, nb, c)
                        }
                    }
                }
            }
            b0 += nb;
        }
        s0 = s1;
    }
}

/// A weight element the GEMV kernels can read: f32, or the raw bits of a bf16/f16.
trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    /// 16 elements at `p`, widened.
    ///
    /// # Safety
    /// 16 elements must be readable at `p`; the CPU must have AVX-512F/BW/VL and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// The first `mask.count_ones()` of 16 elements at `p` (the rest read as zero), widened.
    ///
    /// # Safety
    /// Elements selected by the (low-bits) mask must be readable at `p`; as for `load16`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_masked(p: *const Self, mask: u16) -> std::arch::x86_64::__m512;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: forwarded from the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_masked(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        // SAFETY: forwarded from the caller's contract; masked-off lanes are not accessed.
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p) }
    }
}

/// Bits of a bf16 (the top 16 bits of an f32).
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Bf16Bits(u16);

impl Bf16Bits {
    fn cast(w: &[bf16]) -> &[Bf16Bits] {
        // SAFETY: bf16 and Bf16Bits are both `repr(transparent)` over u16.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len()) }
    }
}

impl Elem for Bf16Bits {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: forwarded from the caller's contract (32 readable bytes, AVX-512F).
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_masked(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: forwarded from the caller's contract (AVX-512BW/VL); masked-off lanes are not
        // accessed.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(mask, p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

/// Bits of an IEEE f16.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct F16Bits(u16);

impl F16Bits {
    fn cast(w: &[f16]) -> &[F16Bits] {
        // SAFETY: f16 and F16Bits are both `repr(transparent)` over u16.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len()) }
    }
}

impl Elem for F16Bits {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::from_bits(self.0).to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: forwarded from the caller's contract (32 readable bytes, AVX-512F).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_masked(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: forwarded from the caller's contract (AVX-512BW/VL); masked-off lanes are not
        // accessed.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast())) }
    }
}

/// out_t[r·bt + b0 + j] = w row r · x row j, for every row r of `w` (rows × c) and j < nb ≤ 4.
fn gemv_block<W: Elem>(
    out_t: &mut [f32],
    w: &[W],
    x: &[f32],
    bt: usize,
    b0: usize,
    nb: usize,
    c: usize,
) {
    let rows = w.len() / c.max(1);
    debug_assert!(
        out_t.len() == rows * bt && x.len() == nb * c && (1..=4).contains(&nb) && b0 + nb <= bt
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU features were checked just above; lengths are checked inside.
        unsafe {
            match nb {
                1 => gemv_block_avx512::<W, 1>(out_t, w, x, bt, b0, c),
                2 => gemv_block_avx512::<W, 2>(out_t, w, x, bt, b0, c),
                3 => gemv_block_avx512::<W, 3>(out_t, w, x, bt, b0, c),
                _ => gemv_block_avx512::<W, 4>(out_t, w, x, bt, b0, c),
            }
        }
        return;
    }
    gemv_block_portable(out_t, w, x, bt, b0, nb, c);
}

/// Portable fallback: one row at a time, 8 partial sums so LLVM can vectorise the dot.
#[allow(clippy::needless_range_loop)] // lane/row indices read clearer in SIMD kernels
fn gemv_block_portable<W: Elem>(
    out_t: &mut [f32],
    w: &[W],
    x: &[f32],
    bt: usize,
    b0: usize,
    nb: usize,
    c: usize,
) {
    for (r, wr) in w.chunks_exact(c).enumerate() {
        for j in 0..nb {
            let xr = &x[j * c..(j + 1) * c];
            let mut acc = [0.0f32; 8];
            let mut wc = wr.chunks_exact(8);
            let mut xc = xr.chunks_exact(8);
            for (a, b) in (&mut wc).zip(&mut xc) {
                for l in 0..8 {
                    acc[l] += a[l].to_f32() * b[l];
                }
            }
            let tail: f32 = wc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .map(|(a, b)| a.to_f32() * b)
                .sum();
            out_t[r * bt + b0 + j] = acc.iter().sum::<f32>() + tail;
        }
    }
}

/// AVX-512 kernel: 4 weight rows × NB inputs per pass, 16 columns per step, so each weight
/// vector is loaded (and widened) once and used NB times, with 4·NB independent FMA chains.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and F16C.
#[allow(clippy::needless_range_loop)] // lane/row indices read clearer in SIMD kernels
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn gemv_block_avx512<W: Elem, const NB: usize>(
    out_t: &mut [f32],
    w: &[W],
    x: &[f32],
    bt: usize,
    b0: usize,
    c: usize,
) {
    use std::arch::x86_64::*;
    let rows = w.len() / c;
    assert!(out_t.len() >= rows * bt && x.len() >= NB * c && b0 + NB <= bt && w.len() == rows * c);
    let full = c / 16 * 16;
    let tail_mask: u16 = ((1u32 << (c - full)) - 1) as u16;
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    // Bytes of the 4-row region consumed per step (16 columns of 4 rows).
    let step_bytes = 64 * std::mem::size_of::<W>();
    let mut r = 0;
    while r + 4 <= rows {
        let mut acc = [[_mm512_setzero_ps(); NB]; 4];
        let mut k = 0;
        // Linear prefetch of the 4-row region, as in `gemv_block_bf16_pairs_avx512`.
        let mut pfp = wp
            .wrapping_add(r * c)
            .cast::<i8>()
            .wrapping_add(GEMV_PREFETCH_BYTES);
        while k < full {
            for line in (0..step_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(pfp.wrapping_add(line));
            }
            pfp = pfp.wrapping_add(step_bytes);
            // SAFETY: rows r..r+4 and columns k..k+16 lie inside `w` (r + 4 <= rows, k + 16 <=
            // c); columns k..k+16 of the NB input rows lie inside `x` (asserted above).
            unsafe {
                let wv = [
                    W::load16(wp.add(r * c + k)),
                    W::load16(wp.add((r + 1) * c + k)),
                    W::load16(wp.add((r + 2) * c + k)),
                    W::load16(wp.add((r + 3) * c + k)),
                ];
                for j in 0..NB {
                    let xv = _mm512_loadu_ps(xp.add(j * c + k));
                    for i in 0..4 {
                        acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
                    }
                }
            }
            k += 16;
        }
        if tail_mask != 0 {
            // SAFETY: as above, with only the c - full valid columns selected by the mask.
            unsafe {
                let wv = [
                    W::load16_masked(wp.add(r * c + k), tail_mask),
                    W::load16_masked(wp.add((r + 1) * c + k), tail_mask),
                    W::load16_masked(wp.add((r + 2) * c + k), tail_mask),
                    W::load16_masked(wp.add((r + 3) * c + k), tail_mask),
                ];
                for j in 0..NB {
                    let xv = _mm512_maskz_loadu_ps(tail_mask, xp.add(j * c + k));
                    for i in 0..4 {
                        acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
                    }
                }
            }
        }
        for i in 0..4 {
            for j in 0..NB {
                out_t[(r + i) * bt + b0 + j] = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
        r += 4;
    }
    while r < rows {
        let mut acc = [_mm512_setzero_ps(); NB];
        let mut k = 0;
        while k < full {
            // SAFETY: row r < rows, columns k..k+16 <= c, inside `w` and `x` (asserted above).
            unsafe {
                let wv = W::load16(wp.add(r * c + k));
                for j in 0..NB {
                    acc[j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp.add(j * c + k)), acc[j]);
                }
            }
            k += 16;
        }
        if tail_mask != 0 {
            // SAFETY: as above, with only the valid columns selected by the mask.
            unsafe {
                let wv = W::load16_masked(wp.add(r * c + k), tail_mask);
                for j in 0..NB {
                    acc[j] = _mm512_fmadd_ps(
                        wv,
                        _mm512_maskz_loadu_ps(tail_mask, xp.add(j * c + k)),
                        acc[j],
                    );
                }
            }
        }
        for j in 0..NB {
            out_t[r * bt + b0 + j] = _mm512_reduce_add_ps(acc[j]);
        }
        r += 1;
    }
}

/// bf16 GEMV kernel for even c: a 64-byte load holds 32 bf16 = 16 (even, odd) pairs, i.e. 16
/// u32 lanes. `lane << 16` is the even element as f32 and `lane & 0xffff0000` the odd one, so
/// widening costs one shift and one AND per 32 weights (no cross-lane conversion). The inputs
/// are permuted to match (`permute_pairs`): per 32 columns, 16 even then 16 odd.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL; `c` must be even.
#[allow(clippy::needless_range_loop)] // lane/row indices read clearer in SIMD kernels
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn gemv_block_bf16_pairs_avx512<const NB: usize>(
    out_t: &mut [f32],
    w: &[u16],
    x: &[f32],
    bt: usize,
    b0: usize,
    c: usize,
) {
    use std::arch::x86_64::*;
    let rows = w.len() / c;
    assert!(
        c.is_multiple_of(2)
            && w.len() == rows * c
            && out_t.len() >= rows * bt
            && x.len() >= NB * c
            && b0 + NB <= bt
    );
    let full = c / 32 * 32;
    let p = (c - full) / 2;
    let tail_mask: u16 = ((1u32 << p) - 1) as u16;
    let hi = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    // Even and odd elements of 32 bf16 at `q`, as two f32 vectors.
    let split = |v: __m512i| {
        (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)),
            _mm512_castsi512_ps(_mm512_and_si512(v, hi)),
        )
    };
    let mut r = 0;
    while r + 4 <= rows {
        let mut acc = [[_mm512_setzero_ps(); NB]; 4];
        let mut k = 0;
        // The 4 rows are one contiguous region read at 4 cache lines per step: prefetch the
        // region linearly, GEMV_PREFETCH_BYTES ahead (hardware prefetch alone left DRAM
        // bandwidth unused: 2 cores streamed ~15 GB/s without, ~25 GB/s with).
        let mut pfp = wp
            .wrapping_add(r * c)
            .cast::<i8>()
            .wrapping_add(GEMV_PREFETCH_BYTES);
        while k < full {
            _mm_prefetch::<_MM_HINT_T0>(pfp);
            _mm_prefetch::<_MM_HINT_T0>(pfp.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(pfp.wrapping_add(128));
            _mm_prefetch::<_MM_HINT_T0>(pfp.wrapping_add(192));
            pfp = pfp.wrapping_add(256);
            // SAFETY: rows r..r+4 < rows and columns k..k+32 <= c lie inside `w`; the NB input
            // rows' columns k..k+32 lie inside `x` (asserted above).
            unsafe {
                let wv = [
                    split(_mm512_loadu_si512(wp.add(r * c + k).cast())),
                    split(_mm512_loadu_si512(wp.add((r + 1) * c + k).cast())),
                    split(_mm512_loadu_si512(wp.add((r + 2) * c + k).cast())),
                    split(_mm512_loadu_si512(wp.add((r + 3) * c + k).cast())),
                ];
                for j in 0..NB {
                    let xe = _mm512_loadu_ps(xp.add(j * c + k));
                    let xo = _mm512_loadu_ps(xp.add(j * c + k + 16));
                    for i in 0..4 {
                        acc[i][j] = _mm512_fmadd_ps(wv[i].0, xe, acc[i][j]);
                        acc[i][j] = _mm512_fmadd_ps(wv[i].1, xo, acc[i][j]);
                    }
                }
            }
            k += 32;
        }
        if p != 0 {
            // SAFETY: as above; the mask selects the p remaining pairs (2p = c - full columns).
            unsafe {
                let wv = [
                    split(_mm512_maskz_loadu_epi32(
                        tail_mask,
                        wp.add(r * c + k).cast(),
                    )),
                    split(_mm512_maskz_loadu_epi32(
                        tail_mask,
                        wp.add((r + 1) * c + k).cast(),
                    )),
                    split(_mm512_maskz_loadu_epi32(
                        tail_mask,
                        wp.add((r + 2) * c + k).cast(),
                    )),
                    split(_mm512_maskz_loadu_epi32(
                        tail_mask,
                        wp.add((r + 3) * c + k).cast(),
                    )),
                ];
                for j in 0..NB {
                    let xe = _mm512_maskz_loadu_ps(tail_mask, xp.add(j * c + k));
                    let xo = _mm512_maskz_loadu_ps(tail_mask, xp.add(j * c + k + p));
                    for i in 0..4 {
                        acc[i][j] = _mm512_fmadd_ps(wv[i].0, xe, acc[i][j]);
                        acc[i][j] = _mm512_fmadd_ps(wv[i].1, xo, acc[i][j]);
                    }
                }
            }
        }
        for i in 0..4 {
            for j in 0..NB {
                out_t[(r + i) * bt + b0 + j] = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
        r += 4;
    }
    while r < rows {
        let mut acc = [_mm512_setzero_ps(); NB];
        let mut k = 0;
        while k < full {
            // SAFETY: row r < rows, columns k..k+32 <= c, inside `w` and `x` (asserted above).
            unsafe {
                let (we, wo) = split(_mm512_loadu_si512(wp.add(r * c + k).cast()));
                for j in 0..NB {
                    acc[j] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xp.add(j * c + k)), acc[j]);
                    acc[j] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xp.add(j * c + k + 16)), acc[j]);
                }
            }
            k += 32;
        }
        if p != 0 {
            // SAFETY: as above, with the mask selecting the p remaining pairs.
            unsafe {
                let (we, wo) = split(_mm512_maskz_loadu_epi32(
                    tail_mask,
                    wp.add(r * c + k).cast(),
                ));
                for j in 0..NB {
                    acc[j] = _mm512_fmadd_ps(
                        we,
                        _mm512_maskz_loadu_ps(tail_mask, xp.add(j * c + k)),
                        acc[j],
                    );
                    acc[j] = _mm512_fmadd_ps(
                        wo,
                        _mm512_maskz_loadu_ps(tail_mask, xp.add(j * c + k + p)),
                        acc[j],
                    );
                }
            }
        }
        for j in 0..NB {
            out_t[r * bt + b0 + j] = _mm512_reduce_add_ps(acc[j]);
        }
        r += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::matmul_forward_naive;
    use super::super::test_util::*;
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn portable_gemv_matches_naive() {
        let mut rng = StdRng::seed_from_u64(12);
        let (bt, c, oc) = (3, 37, 11);
        let inp = rand_vec(&mut rng, bt * c);
        let w = Weights::new(&mut rng, oc * c);
        let mut want = vec![0.0; bt * oc];
        for weight in w.refs() {
            matmul_forward_naive(&mut want, &inp, weight, None, bt, c, oc);
            let mut out_t = vec![f32::NAN; oc * bt];
            match weight {
                WeightRef::F32(w) => gemv_block_portable(&mut out_t, w, &inp, bt, 0, bt, c),
                WeightRef::BF16(w) => {
                    gemv_block_portable(&mut out_t, Bf16Bits::cast(w), &inp, bt, 0, bt, c)
                }
                WeightRef::F16(w) => {
                    gemv_block_portable(&mut out_t, F16Bits::cast(w), &inp, bt, 0, bt, c)
                }
            }
            for b in 0..bt {
                for o in 0..oc {
                    let d = (out_t[o * bt + b] - want[b * oc + o]).abs();
                    assert!(d < 1e-5, "{:?} b={b} o={o}: {d}", weight.dtype());
                }
            }
        }
    }
}
