//! Rounding to bf16 and the two packed operand layouts the bf16 kernels read.
//!
//! - A (m, k) becomes bf16 rows: row i at `i·kp`, `kp = k` rounded up to [`KP_ALIGN`], zero-padded.
//!   Both kernels read a row's consecutive pairs (k, k+1) as one 32-bit word: the AVX512-BF16
//!   kernel broadcasts it, an AMX A tile is 16 rows × 32 bf16 of such rows.
//! - B (k, n) becomes panels of [`NR`] columns: panel `q` holds columns `q·NR ..`, and its
//!   32-bit word `(p, j)` (at `u16` offset `2·(p·NR + j)`) is the pair `(B[2p][j], B[2p+1][j])`.
//!   One 64-byte row of a panel is 16 such pairs: a zmm operand of `vdpbf16ps`, or one row of an
//!   AMX B tile (Intel's "VNNI" layout). Padding (columns ≥ n, rows ≥ k) is zero.
//!
//! Rounding is round-to-nearest-even, NaNs stay NaN (quieted), exactly `half::bf16::from_f32`,
//! on every path (no `vcvtne2ps2bf16`, which flushes denormals), so every kernel sees the same
//! operands as the oracle.

use half::f16;
use rayon::prelude::*;

use crate::weight::WeightRef;

/// Columns per B panel (two zmm registers of f32 accumulators; two AMX tiles of 16 columns).
pub(crate) const NR: usize = 32;
/// `k` is padded to a multiple of this (one AMX tile row is 32 bf16).
pub(crate) const KP_ALIGN: usize = 32;

/// `k` padded for the packed layouts.
pub(crate) fn padded_k(k: usize) -> usize {
    k.next_multiple_of(KP_ALIGN)
}

/// A matrix operand: element (i, j) of the logical (rows, cols) matrix is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    pub data: WeightRef<'a>,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// An f32 matrix stored row-major with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat {
            data: WeightRef::F32(data),
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of an f32 matrix stored row-major with `stored_cols` columns: element
    /// (i, j) is stored at `j·stored_cols + i`.
    pub fn transposed(data: &'a [f32], stored_cols: usize) -> Mat<'a> {
        Mat {
            data: WeightRef::F32(data),
            rs: 1,
            cs: stored_cols,
        }
    }
}

/// f32 → bf16 bits, round to nearest even; NaN → quiet NaN (as `half::bf16::from_f32`).
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) | 0x40) as u16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

/// The value an element takes once rounded to bf16, as f32 (what the kernels multiply).
#[inline(always)]
pub(crate) fn round_to_bf16_f32(x: f32) -> f32 {
    f32::from_bits((round_bf16(x) as u32) << 16)
}

/// Element `idx` of `data` as bf16 bits.
#[inline(always)]
fn bits_at(data: &WeightRef, idx: usize) -> u16 {
    match data {
        WeightRef::F32(w) => round_bf16(w[idx]),
        WeightRef::BF16(w) => w[idx].to_bits(),
        WeightRef::F16(w) => round_bf16(f16::to_f32(w[idx])),
    }
}

#[inline(always)]
fn round_body(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = round_bf16(s);
    }
}

crate::simd::avx512_or_baseline! {
    /// dst = src rounded to bf16 bits (equal lengths).
    fn round_slice(src: &[f32], dst: &mut [u16]) = round_body;
}

/// `dst[j] = a(i0 + j ...)`: one row `i` of A (`k` elements) as bf16 bits, zero-padded to `dst.len()`.
fn pack_a_row(dst: &mut [u16], a: &Mat, i: usize, k: usize) {
    let base = i * a.rs;
    match (a.data, a.cs) {
        (WeightRef::F32(w), 1) => round_slice(&w[base..base + k], &mut dst[..k]),
        (WeightRef::BF16(w), 1) => {
            for (d, s) in dst[..k].iter_mut().zip(&w[base..base + k]) {
                *d = s.to_bits();
            }
        }
        (data, cs) => {
            for (j, d) in dst[..k].iter_mut().enumerate() {
                *d = bits_at(&data, base + j * cs);
            }
        }
    }
    dst[k..].fill(0);
}

/// Packs rows `i0 .. i0 + rows` of A (m, k) into `dst` (rows × kp, row-major, zero padding; rows
/// beyond `m` are all zero).
pub(crate) fn pack_a(dst: &mut [u16], a: &Mat, i0: usize, rows: usize, m: usize, k: usize) {
    let kp = padded_k(k);
    debug_assert_eq!(dst.len(), rows * kp);
    // A transposed in memory (rs = 1) is read a block of columns at a time, so each cache line
    // of the source serves several rows.
    if a.rs == 1 && a.cs != 1 {
        dst.fill(0);
        let live = rows.min(m.saturating_sub(i0));
        const BLOCK: usize = 16;
        for j0 in (0..k).step_by(BLOCK) {
            for j in j0..(j0 + BLOCK).min(k) {
                let col = j * a.cs + i0;
                for r in 0..live {
                    dst[r * kp + j] = bits_at(&a.data, col + r);
                }
            }
        }
        return;
    }
    for (r, row) in dst.chunks_exact_mut(kp).enumerate() {
        if i0 + r < m {
            pack_a_row(row, a, i0 + r, k);
        } else {
            row.fill(0);
        }
    }
}

/// Packs B (k, n) column panel `q` (columns `q·NR ..`) into `dst` (kp/2 rows of NR pairs).
pub(crate) fn pack_b_panel(dst: &mut [u16], b: &Mat, q: usize, k: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() && !matches!(b.data, WeightRef::F16(_)) {
        // SAFETY: AVX-512F/BW/VL checked just above; the caller checked B's extent.
        unsafe {
            if b.cs == 1 {
                let base = dst.as_mut_ptr().wrapping_sub(q * padded_k(k) * NR);
                return super::pack_avx512::pack_b_rows(
                    base,
                    b,
                    q..q + 1,
                    0..padded_k(k) / 2,
                    k,
                    n,
                );
            }
            if b.rs == 1 {
                return super::pack_avx512::pack_b_cols(dst, b, q, k, n);
            }
        }
    }
    pack_b_panel_portable(dst, b, q, k, n)
}

/// Every panel of B into `dst` (panel q at `q·kp·NR`), in parallel. B with contiguous rows is
/// packed a band of rows at a time across all panels, so the operand (usually a weight) is read
/// from memory in order, once.
pub(crate) fn pack_b_all(dst: &mut [u16], b: &Mat, k: usize, n: usize) {
    let kp = padded_k(k);
    let panels = n.div_ceil(NR);
    debug_assert_eq!(dst.len(), panels * kp * NR);
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() && b.cs == 1 && !matches!(b.data, WeightRef::F16(_)) {
        /// Pair rows per task.
        const BAND: usize = 16;
        #[derive(Clone, Copy)]
        struct Shared(*mut u16);
        // SAFETY: tasks write disjoint pair rows (see below).
        unsafe impl Send for Shared {}
        // SAFETY: as above.
        unsafe impl Sync for Shared {}
        impl Shared {
            /// Through a method, so closures capture the whole (Send) wrapper, not the pointer.
            fn ptr(self) -> *mut u16 {
                self.0
            }
        }
        let out = Shared(dst.as_mut_ptr());
        (0..(kp / 2).div_ceil(BAND)).into_par_iter().for_each(|t| {
            let pairs = t * BAND..((t + 1) * BAND).min(kp / 2);
            // SAFETY: AVX-512 checked above; `dst` holds every panel; each task writes only its
            // own band of pair rows; the caller checked B's extent.
            unsafe { super::pack_avx512::pack_b_rows(out.ptr(), b, 0..panels, pairs, k, n) };
        });
        return;
    }
    dst.par_chunks_mut(kp * NR)
        .enumerate()
        .for_each(|(q, d)| pack_b_panel(d, b, q, k, n));
}

/// [`pack_b_panel`] in portable code (the reference for the AVX-512 versions).
pub(crate) fn pack_b_panel_portable(dst: &mut [u16], b: &Mat, q: usize, k: usize, n: usize) {
    let kp = padded_k(k);
    debug_assert_eq!(dst.len(), kp * NR);
    let j0 = q * NR;
    let cols = NR.min(n - j0);
    // Padding: columns past n, the odd row's partner, and the rows past k.
    if cols < NR || k % 2 == 1 {
        dst.fill(0);
    } else {
        dst[k * NR..].fill(0);
    }
    match (b.data, b.rs, b.cs) {
        // Columns contiguous (a weight (k, n), or activations used as B): interleave row pairs.
        (WeightRef::F32(w), rs, 1) => {
            let mut lo = [0u16; NR];
            let mut hi = [0u16; NR];
            for p in 0..k / 2 {
                let r0 = 2 * p * rs + j0;
                round_slice(&w[r0..r0 + cols], &mut lo[..cols]);
                round_slice(&w[r0 + rs..r0 + rs + cols], &mut hi[..cols]);
                interleave(
                    &mut dst[p * 2 * NR..(p + 1) * 2 * NR],
                    &lo[..cols],
                    &hi[..cols],
                );
            }
            if k % 2 == 1 {
                let r0 = (k - 1) * rs + j0;
                round_slice(&w[r0..r0 + cols], &mut lo[..cols]);
                interleave(
                    &mut dst[(k / 2) * 2 * NR..(k / 2 + 1) * 2 * NR],
                    &lo[..cols],
                    &[0; NR][..cols],
                );
            }
        }
        (WeightRef::BF16(w), rs, 1) => {
            let bits = crate::simd::bf16_bits(w);
            for p in 0..k.div_ceil(2) {
                let r0 = 2 * p * rs + j0;
                let hi: &[u16] = if 2 * p + 1 < k {
                    &bits[r0 + rs..r0 + rs + cols]
                } else {
                    &[0; NR][..cols]
                };
                interleave(
                    &mut dst[p * 2 * NR..(p + 1) * 2 * NR],
                    &bits[r0..r0 + cols],
                    hi,
                );
            }
        }
        // Rows contiguous (activations xᵀ used as B): each column's pairs are adjacent in memory.
        (WeightRef::F32(w), 1, cs) => {
            for j in 0..cols {
                let col = &w[(j0 + j) * cs..(j0 + j) * cs + k];
                for (p, pair) in col.chunks(2).enumerate() {
                    dst[2 * (p * NR + j)] = round_bf16(pair[0]);
                    if let Some(&x) = pair.get(1) {
                        dst[2 * (p * NR + j) + 1] = round_bf16(x);
                    }
                }
            }
        }
        (data, rs, cs) => {
            for kk in 0..k {
                for j in 0..cols {
                    dst[2 * ((kk / 2) * NR + j) + kk % 2] = bits_at(&data, kk * rs + (j0 + j) * cs);
                }
            }
        }
    }
}

/// dst (2·NR) ← pairs (lo[j], hi[j]) for j < lo.len(); the rest of `dst` is left as it is.
#[inline(always)]
fn interleave(dst: &mut [u16], lo: &[u16], hi: &[u16]) {
    for (j, (&l, &h)) in lo.iter().zip(hi).enumerate() {
        dst[2 * j] = l;
        dst[2 * j + 1] = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn rounding_matches_half_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(1);
        let specials = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN whose rounding would carry into inf
            f32::from_bits(0xff80_0001),
            f32::from_bits(0x0000_8000), // denormal halfway: ties to even
            f32::from_bits(0x0001_8000),
            f32::from_bits(0x3f80_8000), // 1 + half an ulp of bf16: ties to even (down)
            f32::from_bits(0x3f81_8000), // ties to even (up)
            f32::MAX,                    // rounds up to inf, as half does
            f32::MIN_POSITIVE,
        ];
        let randoms = (0..100_000).map(|_| f32::from_bits(rng.random::<u32>()));
        let all: Vec<f32> = specials.into_iter().chain(randoms).collect();
        let mut fast = vec![0u16; all.len()];
        round_slice(&all, &mut fast);
        for (&x, &f) in all.iter().zip(&fast) {
            let want = bf16::from_f32(x).to_bits();
            assert_eq!(round_bf16(x), want, "{:#010x}", x.to_bits());
            assert_eq!(f, want, "vector path, {:#010x}", x.to_bits());
        }
    }

    /// Every source layout and dtype packs to the documented positions, with zero padding.
    #[test]
    fn packed_layouts_follow_their_index_formulas() {
        let mut rng = StdRng::seed_from_u64(2);
        for (rows, cols) in [(5, 7), (33, 64), (3, 70), (40, 1), (70, 45)] {
            let vals: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let vals_t: Vec<f32> = (0..cols * rows)
                .map(|idx| vals[(idx % rows) * cols + idx / rows])
                .collect();
            let vb: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            let vh: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            let want = |i: usize, j: usize| -> [u16; 3] {
                let x = vals[i * cols + j];
                [
                    bf16::from_f32(x).to_bits(),
                    bf16::from_f32(x).to_bits(),
                    bf16::from_f32(f16::from_f32(x).to_f32()).to_bits(),
                ]
            };
            let mats = [
                (
                    0,
                    Mat {
                        data: WeightRef::F32(&vals),
                        rs: cols,
                        cs: 1,
                    },
                ),
                (
                    0,
                    Mat {
                        data: WeightRef::F32(&vals_t),
                        rs: 1,
                        cs: rows,
                    },
                ),
                (
                    1,
                    Mat {
                        data: WeightRef::BF16(&vb),
                        rs: cols,
                        cs: 1,
                    },
                ),
                (
                    2,
                    Mat {
                        data: WeightRef::F16(&vh),
                        rs: cols,
                        cs: 1,
                    },
                ),
            ];
            for (which, mat) in mats {
                // As A (rows, cols): two row blocks, the second running past the end.
                let kp = padded_k(cols);
                for (i0, nrows) in [(0, 2), (rows - 1, 3)] {
                    let mut dst = vec![0xffff; nrows * kp];
                    pack_a(&mut dst, &mat, i0, nrows, rows, cols);
                    for r in 0..nrows {
                        for j in 0..kp {
                            let w = if i0 + r < rows && j < cols {
                                want(i0 + r, j)[which]
                            } else {
                                0
                            };
                            assert_eq!(dst[r * kp + j], w, "A {which} r={r} j={j}");
                        }
                    }
                }
                // As B (k = rows, n = cols): every panel, both implementations, one by one and
                // all at once.
                let kp = padded_k(rows);
                let mut all = vec![0xffff; cols.div_ceil(NR) * kp * NR];
                pack_b_all(&mut all, &mat, rows, cols);
                for (q, panel) in all.chunks_exact(kp * NR).enumerate() {
                    let mut want = vec![0xeeee; kp * NR];
                    pack_b_panel_portable(&mut want, &mat, q, rows, cols);
                    assert_eq!(panel, &want[..], "B {which}: panel {q} of pack_b_all");
                }
                for (q, portable) in (0..cols.div_ceil(NR)).flat_map(|q| [(q, false), (q, true)]) {
                    let mut dst = vec![0xffff; kp * NR];
                    if portable {
                        pack_b_panel_portable(&mut dst, &mat, q, rows, cols);
                    } else {
                        pack_b_panel(&mut dst, &mat, q, rows, cols);
                    }
                    for p in 0..kp / 2 {
                        for j in 0..NR {
                            for h in 0..2 {
                                let (kk, jj) = (2 * p + h, q * NR + j);
                                let w = if kk < rows && jj < cols {
                                    want(kk, jj)[which]
                                } else {
                                    0
                                };
                                assert_eq!(dst[2 * (p * NR + j) + h], w, "B {which} k={kk} j={jj}");
                            }
                        }
                    }
                }
            }
        }
    }
}
