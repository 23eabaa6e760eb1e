//! The AVX512-BF16 microkernel: `vdpbf16ps` (16 lanes × 2 bf16 products per instruction, f32
//! accumulators), a tile of [`MR`] rows × [`NR`] columns held in 28 zmm registers.
//!
//! Per k pair it loads the B panel's 64-byte row twice (columns 0–15 and 16–31) and broadcasts each
//! of the MR rows' pair from the packed A micro-panel, so every B vector serves MR rows and every
//! broadcast two vectors. A is packed as micro-panels: pair `p` of row `r` is the 32-bit word
//! `p·MR + r`, so the kernel walks one pointer (GotoBLAS's packed A).

use super::TileKernel;
use super::pack::{Mat, NR, pack_a, padded_k};
use crate::weight::WeightRef;

/// Rows per tile: 14 × 2 accumulators + 2 B vectors = 30 of the 32 zmm registers.
pub(super) const MR: usize = 14;

pub(super) struct Avx512;

impl TileKernel for Avx512 {
    const MR: usize = MR;
    type Unit = ();

    fn begin() {}

    fn end(_: ()) {}

    fn a_block_len(rows: usize, kp: usize) -> usize {
        rows * kp
    }

    fn pack_a(dst: &mut [u16], a: &Mat, i0: usize, rows: usize, m: usize, k: usize) {
        #[cfg(target_arch = "x86_64")]
        if !matches!(a.data, WeightRef::F16(_)) && (a.cs == 1 || a.rs == 1) {
            // SAFETY: this kernel only runs on CPUs with AVX-512F/BW/VL (and BF16); the driver
            // checked A's extent.
            return unsafe { pack_a_simd(dst, a, i0, rows, m, k) };
        }
        pack_a_portable(dst, a, i0, rows, m, k)
    }

    unsafe fn tile(
        _: &mut (),
        tile: &mut [f32],
        a_block: &[u16],
        s: usize,
        b_panel: &[u16],
        kp: usize,
    ) {
        let a = &a_block[s * MR * kp..(s + 1) * MR * kp];
        assert!(tile.len() >= MR * NR && b_panel.len() >= kp * NR && kp.is_multiple_of(2));
        // SAFETY: the caller guarantees AVX512-BF16 (this kernel is only dispatched when
        // `Bf16Kernel::Avx512` was detected); lengths are asserted above.
        unsafe { tile_avx512(tile.as_mut_ptr(), a.as_ptr(), b_panel.as_ptr(), kp / 2) }
    }
}

/// Micro-panels through the row-major packing (the reference for [`pack_a_simd`]).
pub(super) fn pack_a_portable(
    dst: &mut [u16],
    a: &Mat,
    i0: usize,
    rows: usize,
    m: usize,
    k: usize,
) {
    crate::scratch::with_scratch_u16(dst.len(), |rowmajor| {
        pack_a(rowmajor, a, i0, rows, m, k);
        to_micro_panels(dst, rowmajor, rows, rowmajor.len() / rows.max(1));
    });
}

/// Micro-panels straight from f32 or bf16 A: row-major A (cs = 1) through 16 × 16 word
/// transposes, transposed A (rs = 1) by interleaving its rows.
///
/// # Safety
/// The CPU must have AVX-512F/BW/VL; A's extent must have been checked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_a_simd(dst: &mut [u16], a: &Mat, i0: usize, rows: usize, m: usize, k: usize) {
    use super::pack_avx512::{interleave_bf16, interleave_f32, transpose16, words_bf16, words_f32};
    use std::arch::x86_64::*;
    let kp = padded_k(k);
    assert!(rows.is_multiple_of(MR) && dst.len() >= rows * kp);
    // Stores the first MR words of `v` at word `w` of `dst`.
    let store = |dst: &mut [u16], w: usize, v: __m512i| {
        debug_assert!(2 * (w + MR) <= dst.len());
        // SAFETY: words w .. w + MR are inside `dst` (the panel holds kp/2 · MR words per group).
        unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(2 * w).cast(), (1 << MR) - 1, v) }
    };
    for g in 0..rows / MR {
        let r0 = i0 + g * MR;
        let live = MR.min(m.saturating_sub(r0));
        let base_w = g * MR * kp / 2;
        if a.cs == 1 {
            for p0 in (0..kp / 2).step_by(16) {
                let e = k.saturating_sub(2 * p0).min(32);
                let mut r = [_mm512_setzero_si512(); 16];
                if e > 0 {
                    for (i, v) in r.iter_mut().enumerate().take(live) {
                        let at = (r0 + i) * a.rs + 2 * p0;
                        // SAFETY: row r0 + i < m holds elements 2·p0 .. 2·p0 + e < k.
                        *v = unsafe {
                            match a.data {
                                WeightRef::F32(w) => words_f32(w.as_ptr().add(at), e),
                                WeightRef::BF16(w) => {
                                    words_bf16(w.as_ptr().cast::<u16>().add(at), e)
                                }
                                WeightRef::F16(_) => unreachable!("f16 takes the portable packing"),
                            }
                        };
                    }
                }
                transpose16(&mut r);
                for (c, v) in r.iter().enumerate() {
                    store(dst, base_w + (p0 + c) * MR, *v);
                }
            }
        } else {
            // rs = 1: element (i, kk) at kk·cs + i, so word (p, r) pairs rows 2p and 2p + 1.
            for p in 0..kp / 2 {
                let (k0, k1) = (2 * p, 2 * p + 1);
                let v = if k0 >= k || live == 0 {
                    _mm512_setzero_si512()
                } else {
                    // SAFETY: rows k0 (< k) and k1 (when < k) of the transposed storage hold
                    // elements r0 .. r0 + live < m; masked lanes are not read.
                    unsafe {
                        match a.data {
                            WeightRef::F32(w) => interleave_f32(
                                w.as_ptr().add(k0 * a.cs + r0),
                                (k1 < k).then(|| w.as_ptr().add(k1 * a.cs + r0)),
                                live,
                            ),
                            WeightRef::BF16(w) => interleave_bf16(
                                w.as_ptr().cast::<u16>().add(k0 * a.cs + r0),
                                (k1 < k).then(|| w.as_ptr().cast::<u16>().add(k1 * a.cs + r0)),
                                live,
                            ),
                            WeightRef::F16(_) => unreachable!("f16 takes the portable packing"),
                        }
                    }
                };
                store(dst, base_w + p * MR, v);
            }
        }
    }
}

/// Re-lays `rows` (a multiple of MR) row-major bf16 rows of `kp` into micro-panels of MR rows:
/// word (pair) `p` of row `g·MR + r` goes to word `g·MR·kp/2 + p·MR + r`.
pub(super) fn to_micro_panels(dst: &mut [u16], rowmajor: &[u16], rows: usize, kp: usize) {
    debug_assert!(rows.is_multiple_of(MR) && dst.len() == rows * kp);
    for (panel, block) in dst
        .chunks_exact_mut(MR * kp)
        .zip(rowmajor.chunks_exact(MR * kp))
    {
        for (r, row) in block.chunks_exact(kp).enumerate() {
            for (p, pair) in row.chunks_exact(2).enumerate() {
                panel[2 * (p * MR + r)] = pair[0];
                panel[2 * (p * MR + r) + 1] = pair[1];
            }
        }
    }
}

/// tile (MR, NR) row-major ← Σ over `pairs` k pairs of A micro-panel × B panel.
///
/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16; `a` must hold `pairs·MR` words, `b` `pairs·NR`
/// words and `tile` MR·NR floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::needless_range_loop)] // register-tile indices read clearer in SIMD kernels
unsafe fn tile_avx512(tile: *mut f32, a: *const u16, b: *const u16, pairs: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (a.cast::<i32>(), b.cast::<i32>());
    for _ in 0..pairs {
        // SAFETY: `pairs` rows of the panels are readable (the function's contract); each step
        // reads one row: NR words of B and MR words of A.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
            for i in 0..MR {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(ap.add(i).read_unaligned()));
                acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
                acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    for i in 0..MR {
        // SAFETY: tile holds MR·NR floats (the function's contract).
        unsafe {
            _mm512_storeu_ps(tile.add(i * NR), acc[i][0]);
            _mm512_storeu_ps(tile.add(i * NR + 16), acc[i][1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512(_: *mut f32, _: *const u16, _: *const u16, _: usize) {
    unreachable!("the AVX512-BF16 kernel is only dispatched on x86_64")
}
