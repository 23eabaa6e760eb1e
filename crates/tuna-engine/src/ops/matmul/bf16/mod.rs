//! bf16 matrix products with f32 accumulation: `dst [+]= A·B` with both operands rounded to bf16
//! (round to nearest even) as they are packed, every product exact in f32 and summed in f32, as
//! PyTorch's `autocast(dtype=torch.bfloat16)` matmuls are.
//!
//! Three kernels, one chosen per process ([`Bf16Kernel::detect`]), best first:
//! - [`Bf16Kernel::Amx`]: AMX-BF16 tiles (`amx.rs`), Intel Sapphire Rapids and later;
//! - [`Bf16Kernel::Avx512`]: AVX512-BF16 `vdpbf16ps` (`avx512.rs`), AMD Zen 4 and later, Intel
//!   Cooper Lake and later;
//! - [`Bf16Kernel::F32`]: no bf16 unit: the rounded operands are widened back to f32 and multiplied
//!   by the f32 `sgemm` (the same numbers up to summation order, at f32 speed).
//!
//! The driver (GotoBLAS's loop nest): B is packed once into column panels (`pack.rs`), in
//! parallel; then tasks of (a block of A rows, a group of B panels) run in parallel, each packing
//! its A block (sized to stay in L2) and walking panel by panel, tile by tile. Every output element
//! is computed by one task, with one fixed summation order, so results do not depend on the
//! number of threads (bit-reproducible runs).

mod amx;
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(super) use amx::peak_block as amx_peak_block;
pub(crate) mod pack;
#[cfg(target_arch = "x86_64")]
mod pack_avx512;

use std::sync::OnceLock;

use rayon::prelude::*;

use pack::{Mat, NR, pack_b_all, pack_b_panel, padded_k, round_bf16};

use super::gemm::{extent, sgemm_strided};
use crate::scratch::{with_scratch, with_scratch_u16};
use crate::weight::WeightRef;

/// What multiplies bf16 operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// AMX-BF16 tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`).
    Avx512,
    /// No bf16 unit: bf16-rounded operands multiplied by the f32 `sgemm`.
    F32,
}

impl Bf16Kernel {
    /// Best first.
    pub const ALL: [Bf16Kernel; 3] = [Bf16Kernel::Amx, Bf16Kernel::Avx512, Bf16Kernel::F32];

    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx-bf16",
            Bf16Kernel::Avx512 => "avx512-bf16",
            Bf16Kernel::F32 => "f32",
        }
    }

    pub fn parse(name: &str) -> Option<Bf16Kernel> {
        Bf16Kernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the CPU has a bf16 unit for this kernel (false for the f32 fallback).
    pub fn is_native(self) -> bool {
        self != Bf16Kernel::F32
    }

    /// Whether this machine can run the kernel: the CPU features, and for AMX the OS's
    /// permission for the tile state (requested on the first call).
    pub fn is_available(self) -> bool {
        match self {
            Bf16Kernel::Amx => {
                static AMX: OnceLock<bool> = OnceLock::new();
                *AMX.get_or_init(|| amx::cpu_has_amx() && amx::request_permission())
            }
            Bf16Kernel::Avx512 => has_avx512_bf16(),
            Bf16Kernel::F32 => true,
        }
    }

    /// Every kernel this machine can run, best first (the f32 fallback always).
    pub fn available() -> Vec<Bf16Kernel> {
        Bf16Kernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// The kernel of this process, decided on the first call: the one `TUNA_BF16_KERNEL` names
    /// (`amx-bf16`, `avx512-bf16` or `f32`) when this machine can run it, else the best available.
    pub fn detect() -> Bf16Kernel {
        static CHOSEN: OnceLock<Bf16Kernel> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let requested = std::env::var("TUNA_BF16_KERNEL")
                .ok()
                .and_then(|v| Bf16Kernel::parse(v.trim()))
                .filter(|k| k.is_available());
            requested.unwrap_or_else(|| Bf16Kernel::available()[0])
        })
    }
}

fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::has_avx512() && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A microkernel and the A layout it reads (B panels are common to all).
trait TileKernel {
    /// Rows of a tile; a tile is MR × NR.
    const MR: usize;
    /// Per-task state (AMX: the loaded tile configuration).
    type Unit;
    fn begin() -> Self::Unit;
    fn end(unit: Self::Unit);
    /// Elements of a packed A block of `rows` (a multiple of MR) rows.
    fn a_block_len(rows: usize, kp: usize) -> usize;
    /// Packs rows `i0 .. i0 + rows` of A (m, k) into the kernel's layout (rows past m are zero).
    fn pack_a(dst: &mut [u16], a: &Mat, i0: usize, rows: usize, m: usize, k: usize);
    /// tile (MR × NR, row-major) ← rows `s·MR ..` of the packed A block · the B panel.
    ///
    /// # Safety
    /// The CPU must run this kernel (its [`Bf16Kernel`] is available).
    unsafe fn tile(
        unit: &mut Self::Unit,
        tile: &mut [f32],
        a_block: &[u16],
        s: usize,
        b_panel: &[u16],
        kp: usize,
    );
}

/// Largest MR of the kernels (the stack tile holds MR × NR floats).
const MAX_MR: usize = 32;
/// Bytes of a task's packed piece of the larger operand: small enough to stay in L2 while the
/// other operand streams past.
const BLOCK_BYTES: usize = 256 << 10;
/// k per block (a multiple of 32): bounds the packed pieces, so they stay in cache.
const KC: usize = 1024;
/// Tasks per thread, for balance.
const TASKS_PER_THREAD: usize = 4;

/// `dst (m, n) [+]= round(a) (m, k) · round(b) (k, n)`, f32 accumulation, on `kernel`.
/// `dst` element (i, j) is at `i·dst_st.0 + j·dst_st.1`; one of the two strides must be 1 and
/// the other at least the extent of that dimension (no two elements alias).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16(
    kernel: Bf16Kernel,
    dst: &mut [f32],
    dst_st: (usize, usize),
    a: Mat,
    b: Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let (rs, cs) = dst_st;
    assert!(
        (cs == 1 && (m <= 1 || rs >= n)) || (rs == 1 && (n <= 1 || cs >= m)),
        "gemm_bf16: dst strides ({rs}, {cs}) would alias for {m}x{n}"
    );
    assert!(
        extent(m, n, dst_st) <= dst.len(),
        "gemm_bf16: dst too short for {m}x{n}"
    );
    assert!(
        extent(m, k, (a.rs, a.cs)) <= a.data.len(),
        "gemm_bf16: a too short for {m}x{k}"
    );
    assert!(
        extent(k, n, (b.rs, b.cs)) <= b.data.len(),
        "gemm_bf16: b too short for {k}x{n}"
    );
    assert!(
        kernel.is_available(),
        "gemm_bf16: {} cannot run here",
        kernel.name()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * rs + j * cs] = 0.0;
                }
            }
        }
        return;
    }
    match kernel {
        Bf16Kernel::Amx => run::<amx::Amx<amx::Hardware>>(dst, dst_st, &a, &b, m, k, n, accumulate),
        Bf16Kernel::Avx512 => run::<avx512::Avx512>(dst, dst_st, &a, &b, m, k, n, accumulate),
        Bf16Kernel::F32 => gemm_widened(dst, dst_st, &a, &b, m, k, n, accumulate),
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements only (see `run`).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// Columns `k0 .. k0 + kc` of A (m, k), as an operand of its own.
fn a_columns<'a>(a: &Mat<'a>, k0: usize) -> Mat<'a> {
    Mat {
        data: a.data.slice(k0 * a.cs..a.data.len()),
        ..*a
    }
}

/// Rows `k0 .. k0 + kc` of B (k, n), as an operand of its own.
fn b_rows<'a>(b: &Mat<'a>, k0: usize) -> Mat<'a> {
    Mat {
        data: b.data.slice(k0 * b.rs..b.data.len()),
        ..*b
    }
}

/// The driver over one microkernel (see the module docs): k in blocks of [`KC`], each block's
/// partial products added into dst. Per block, the smaller operand is packed whole first
/// (in parallel); then tasks each pack an L2-sized piece of the larger one and multiply it by all
/// of the smaller, so the large operand (a weight, usually) is read from memory once and used
/// from L2 while it is hot.
#[allow(clippy::too_many_arguments)]
fn run<K: TileKernel>(
    dst: &mut [f32],
    dst_st: (usize, usize),
    a: &Mat,
    b: &Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let out = SharedOut(dst.as_mut_ptr());
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let (a, b) = (a_columns(a, k0), b_rows(b, k0));
        let accumulate = accumulate || k0 > 0;
        if m * kc >= kc * n {
            run_row_tasks::<K>(out, dst_st, &a, &b, m, kc, n, accumulate);
        } else {
            run_col_tasks::<K>(out, dst_st, &a, &b, m, kc, n, accumulate);
        }
    }
}

/// Tasks own blocks of A rows (A is the larger operand): B packed whole, each task packs its A
/// block and walks every panel.
#[allow(clippy::too_many_arguments)]
fn run_row_tasks<K: TileKernel>(
    out: SharedOut,
    dst_st: (usize, usize),
    a: &Mat,
    b: &Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let (mr, kp, panels) = (K::MR, padded_k(k), n.div_ceil(NR));
    let tasks_wanted = TASKS_PER_THREAD * rayon::current_num_threads();
    let cache_rows = (BLOCK_BYTES / (2 * kp)) / mr * mr;
    let mb = cache_rows
        .min(m.div_ceil(tasks_wanted).next_multiple_of(mr))
        .max(mr);
    with_scratch_u16(panels * kp * NR, |bpack| {
        pack_b_all(bpack, b, k, n);
        let bpack = &*bpack;
        (0..m.div_ceil(mb)).into_par_iter().for_each(|rb| {
            let i0 = rb * mb;
            let rows = mb.min(m - i0).next_multiple_of(mr);
            with_scratch_u16(K::a_block_len(rows, kp), |ablock| {
                K::pack_a(ablock, a, i0, rows, m, k);
                let mut unit = K::begin();
                for q in 0..panels {
                    let panel = &bpack[q * kp * NR..(q + 1) * kp * NR];
                    for s in 0..rows / mr {
                        // SAFETY: this task alone owns rows i0 .. i0 + mb of dst.
                        unsafe {
                            tile_into::<K>(
                                &mut unit, out, dst_st, ablock, s, i0, m, panel, q, n, kp,
                                accumulate,
                            )
                        };
                    }
                }
                K::end(unit);
            });
        });
    });
}

/// Tasks own groups of B panels (B is the larger operand): A packed whole, each task packs its
/// panels and multiplies all of A by them.
#[allow(clippy::too_many_arguments)]
fn run_col_tasks<K: TileKernel>(
    out: SharedOut,
    dst_st: (usize, usize),
    a: &Mat,
    b: &Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let (mr, kp, panels) = (K::MR, padded_k(k), n.div_ceil(NR));
    let m_pad = m.next_multiple_of(mr);
    let tasks_wanted = TASKS_PER_THREAD * rayon::current_num_threads();
    let cache_panels = (BLOCK_BYTES / (2 * kp * NR)).max(1);
    let per_task = cache_panels.min(panels.div_ceil(tasks_wanted)).max(1);
    // A is packed in chunks of whole tiles, in parallel.
    let chunk_rows = (4 * mr).min(m_pad);
    with_scratch_u16(K::a_block_len(m_pad, kp), |apack| {
        let chunk_len = K::a_block_len(chunk_rows, kp);
        apack
            .par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(c, d)| {
                K::pack_a(d, a, c * chunk_rows, d.len() / kp, m, k);
            });
        let apack = &*apack;
        // B with contiguous rows (a weight in a backward product) is packed whole, reading it
        // in order (a K block of it fits in L3); otherwise each task packs its own panels.
        let whole = b.cs == 1;
        with_scratch_u16(if whole { panels * kp * NR } else { 0 }, |ball| {
            if whole {
                pack_b_all(ball, b, k, n);
            }
            let ball = &*ball;
            (0..panels.div_ceil(per_task))
                .into_par_iter()
                .for_each(|g| {
                    let (q0, q1) = (g * per_task, ((g + 1) * per_task).min(panels));
                    with_scratch_u16(if whole { 0 } else { (q1 - q0) * kp * NR }, |bown| {
                        let bpack: &[u16] = if whole {
                            &ball[q0 * kp * NR..q1 * kp * NR]
                        } else {
                            for (q, d) in (q0..q1).zip(bown.chunks_exact_mut(kp * NR)) {
                                pack_b_panel(d, b, q, k, n);
                            }
                            bown
                        };
                        let mut unit = K::begin();
                        // Panel by panel, so each stays in L1 while all of A streams from L2.
                        for (q, panel) in (q0..q1).zip(bpack.chunks_exact(kp * NR)) {
                            for s in 0..m_pad / mr {
                                // SAFETY: this task alone owns the columns of panels q0 .. q1.
                                unsafe {
                                    tile_into::<K>(
                                        &mut unit, out, dst_st, apack, s, 0, m, panel, q, n, kp,
                                        accumulate,
                                    )
                                };
                            }
                        }
                        K::end(unit);
                    });
                });
        });
    });
}

/// One tile: rows `i0 + s·MR ..` (tile `s` of the packed A block starting at row i0) × panel q.
///
/// # Safety
/// The kernel must be available; the caller must own the tile's elements of dst.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_into<K: TileKernel>(
    unit: &mut K::Unit,
    out: SharedOut,
    dst_st: (usize, usize),
    ablock: &[u16],
    s: usize,
    i0: usize,
    m: usize,
    panel: &[u16],
    q: usize,
    n: usize,
    kp: usize,
    accumulate: bool,
) {
    let r0 = i0 + s * K::MR;
    if r0 >= m {
        return;
    }
    let mut tile = [0.0f32; MAX_MR * NR];
    // SAFETY: the caller guarantees the kernel is available.
    unsafe { K::tile(unit, &mut tile, ablock, s, panel, kp) };
    // SAFETY: the caller owns these elements; the strides map distinct (i, j) to distinct
    // in-bounds elements (asserted in `gemm_bf16`).
    unsafe {
        store_tile(
            out,
            dst_st,
            &tile[..K::MR * NR],
            r0,
            K::MR.min(m - r0),
            q * NR,
            NR.min(n - q * NR),
            accumulate,
        )
    };
}

/// dst(r0 + i, c0 + j) (+)= tile[i][j] for i < rows, j < cols (tile rows are NR wide).
///
/// # Safety
/// Every addressed element must be in bounds and written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile(
    out: SharedOut,
    (rs, cs): (usize, usize),
    tile: &[f32],
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() && (cs == 1 || rs == 1) {
        for i0 in (0..rows).step_by(16) {
            // SAFETY: AVX-512 checked just above; the rest is the caller's contract.
            unsafe {
                pack_avx512::store_tile(
                    out.0,
                    (rs, cs),
                    &tile[i0 * NR..],
                    r0 + i0,
                    (rows - i0).min(16),
                    c0,
                    cols,
                    accumulate,
                )
            };
        }
        return;
    }
    for i in 0..rows {
        let src = &tile[i * NR..i * NR + cols];
        for (j, &v) in src.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe {
                let p = out.0.add((r0 + i) * rs + (c0 + j) * cs);
                *p = if accumulate { *p + v } else { v };
            }
        }
    }
}

/// The f32 fallback: rounded copies of both operands, then the f32 `sgemm`.
#[allow(clippy::too_many_arguments)]
fn gemm_widened(
    dst: &mut [f32],
    dst_st: (usize, usize),
    a: &Mat,
    b: &Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    with_scratch(m * k + k * n, |buf| {
        let (ra, rb) = buf.split_at_mut(m * k);
        round_rows(ra, a, k);
        round_rows(rb, b, n);
        sgemm_strided(dst, dst_st, ra, (k, 1), rb, (n, 1), m, k, n, accumulate);
    });
}

/// out (rows, cols) row-major ← the operand's elements rounded to bf16, as f32.
fn round_rows(out: &mut [f32], x: &Mat, cols: usize) {
    out.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        for (j, o) in row.iter_mut().enumerate() {
            let idx = i * x.rs + j * x.cs;
            let bits = match x.data {
                WeightRef::F32(w) => round_bf16(w[idx]),
                WeightRef::BF16(w) => w[idx].to_bits(),
                WeightRef::F16(w) => round_bf16(w[idx].to_f32()),
            };
            *o = f32::from_bits((bits as u32) << 16);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use pack::round_to_bf16_f32;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// `dst, dst strides, a, b, m, k, n, accumulate`, as [`gemm_bf16`] takes them.
    type GemmFn = dyn Fn(&mut [f32], (usize, usize), Mat, Mat, usize, usize, usize, bool);

    /// f64 oracle over bf16-rounded operands: (value, Σ|products|) per element.
    fn oracle(a: &Mat, b: &Mat, m: usize, k: usize, n: usize) -> Vec<(f64, f64)> {
        let at = |x: &Mat, idx: usize| -> f64 {
            match x.data {
                WeightRef::F32(w) => round_to_bf16_f32(w[idx]) as f64,
                WeightRef::BF16(w) => w[idx].to_f32() as f64,
                WeightRef::F16(w) => round_to_bf16_f32(w[idx].to_f32()) as f64,
            }
        };
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut abs) = (0.0, 0.0);
                for p in 0..k {
                    let v = at(a, i * a.rs + p * a.cs) * at(b, p * b.rs + j * b.cs);
                    s += v;
                    abs += v.abs();
                }
                out.push((s, abs));
            }
        }
        out
    }

    /// Runs the whole driver with kernel `K` (or the public entry for `kernel`) on every operand
    /// layout and dtype, both destination layouts, tails in m, n and k, and accumulation,
    /// against the oracle. Tolerance: f32 summation of k exact products, `k·2⁻²³·Σ|a·b|`
    /// (twice the worst-case bound of recursive summation; an unrounded or wrongly rounded
    /// operand is off by ~2⁻⁹ relative, orders of magnitude more).
    fn check_driver(label: &str, gemm: &GemmFn) {
        let mut rng = StdRng::seed_from_u64(21);
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 2),
            (14, 32, 32),
            (33, 70, 45),
            (61, 96, 130),
            (29, 33, 7),
            // k past one K block (KC = 1024), A taller than B and B wider than A.
            (40, 1100, 9),
            (7, 2100, 50),
        ] {
            let af: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bf: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let ab: Vec<bf16> = af.iter().map(|&x| bf16::from_f32(x * 3.0)).collect();
            let bt: Vec<f32> = (0..n * k).map(|idx| bf[(idx % k) * n + idx / k]).collect();
            let at: Vec<f32> = (0..k * m).map(|idx| af[(idx % m) * k + idx / m]).collect();
            let bbt: Vec<bf16> = bt.iter().map(|&x| bf16::from_f32(x * 0.5)).collect();
            let a_mats = [
                Mat {
                    data: WeightRef::F32(&af),
                    rs: k,
                    cs: 1,
                },
                Mat {
                    data: WeightRef::F32(&at),
                    rs: 1,
                    cs: m,
                },
                Mat {
                    data: WeightRef::BF16(&ab),
                    rs: k,
                    cs: 1,
                },
            ];
            let b_mats = [
                Mat {
                    data: WeightRef::F32(&bf),
                    rs: n,
                    cs: 1,
                },
                Mat {
                    data: WeightRef::F32(&bt),
                    rs: 1,
                    cs: k,
                },
                // A bf16 weight (out, in) as the transposed B of a forward product.
                Mat {
                    data: WeightRef::BF16(&bbt),
                    rs: 1,
                    cs: k,
                },
            ];
            for a in &a_mats {
                for b in &b_mats {
                    let want = oracle(a, b, m, k, n);
                    for (dst_st, transposed) in [((n, 1), false), ((1, m), true)] {
                        let init: Vec<f32> =
                            (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                        for accumulate in [false, true] {
                            let mut dst = if accumulate {
                                init.clone()
                            } else {
                                vec![f32::NAN; m * n]
                            };
                            gemm(&mut dst, dst_st, *a, *b, m, k, n, accumulate);
                            for i in 0..m {
                                for j in 0..n {
                                    let got = dst[i * dst_st.0 + j * dst_st.1] as f64;
                                    let base = if accumulate {
                                        init[i * dst_st.0 + j * dst_st.1] as f64
                                    } else {
                                        0.0
                                    };
                                    let (w, abs) = want[i * n + j];
                                    let tol = k as f64 * f32::EPSILON as f64 * abs
                                        + 2.0 * f32::EPSILON as f64 * (base.abs() + w.abs())
                                        + 1e-30;
                                    assert!(
                                        (got - base - w).abs() <= tol,
                                        "{label} m={m} k={k} n={n} a={:?}/{} b={:?}/{} dst transposed={transposed} acc={accumulate} ({i},{j}): {got} vs {}",
                                        a.data.dtype(),
                                        a.cs,
                                        b.data.dtype(),
                                        b.cs,
                                        base + w
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every kernel this machine has, plus the f32 fallback, through the public entry.
    #[test]
    fn every_available_kernel_matches_the_f64_oracle() {
        let kernels = Bf16Kernel::available();
        assert!(kernels.contains(&Bf16Kernel::F32));
        eprintln!(
            "bf16 kernels available here: {:?}",
            kernels.iter().map(|k| k.name()).collect::<Vec<_>>()
        );
        for kernel in kernels {
            check_driver(kernel.name(), &move |d, st, a, b, m, k, n, acc| {
                gemm_bf16(kernel, d, st, a, b, m, k, n, acc)
            });
        }
    }

    /// The AMX driver, packing and tile addressing, on the scalar tile emulator (real AMX runs
    /// the same code with the instructions instead).
    #[test]
    fn amx_kernel_on_the_tile_emulator_matches_the_oracle() {
        check_driver("amx (emulated)", &|d, st, a, b, m, k, n, acc| {
            run::<amx::Amx<amx::Emulated>>(d, st, &a, &b, m, k, n, acc)
        });
    }

    /// The micro-panel layout of the AVX512-BF16 kernel: pair p of row r at word p·MR + r.
    #[test]
    fn avx512_micro_panels_follow_their_index_formula() {
        let (rows, kp) = (2 * avx512::MR, 64);
        let rowmajor: Vec<u16> = (0..rows * kp).map(|i| i as u16).collect();
        let mut panels = vec![0u16; rows * kp];
        avx512::to_micro_panels(&mut panels, &rowmajor, rows, kp);
        for g in 0..2 {
            for r in 0..avx512::MR {
                for p in 0..kp / 2 {
                    for h in 0..2 {
                        let src = (g * avx512::MR + r) * kp + 2 * p + h;
                        let dst = g * avx512::MR * kp + 2 * (p * avx512::MR + r) + h;
                        assert_eq!(panels[dst], rowmajor[src]);
                    }
                }
            }
        }
    }

    /// The AVX-512 micro-panel packing equals the portable one for every layout, with tails.
    #[test]
    fn avx512_micro_panel_packing_matches_portable() {
        if !crate::simd::has_avx512() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(5);
        for (m, k) in [(3, 5), (14, 32), (30, 70), (40, 96)] {
            let af: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let ab: Vec<bf16> = af.iter().map(|&x| bf16::from_f32(x)).collect();
            let at: Vec<f32> = (0..k * m).map(|idx| af[(idx % m) * k + idx / m]).collect();
            let abt: Vec<bf16> = at.iter().map(|&x| bf16::from_f32(x)).collect();
            for a in [
                Mat {
                    data: WeightRef::F32(&af),
                    rs: k,
                    cs: 1,
                },
                Mat {
                    data: WeightRef::BF16(&ab),
                    rs: k,
                    cs: 1,
                },
                Mat {
                    data: WeightRef::F32(&at),
                    rs: 1,
                    cs: m,
                },
                Mat {
                    data: WeightRef::BF16(&abt),
                    rs: 1,
                    cs: m,
                },
            ] {
                let kp = padded_k(k);
                for i0 in [0, m.saturating_sub(5)] {
                    let rows = 2 * avx512::MR;
                    let mut want = vec![0xffff; rows * kp];
                    let mut got = vec![0xeeee; rows * kp];
                    avx512::pack_a_portable(&mut want, &a, i0, rows, m, k);
                    <avx512::Avx512 as TileKernel>::pack_a(&mut got, &a, i0, rows, m, k);
                    assert_eq!(got, want, "m={m} k={k} i0={i0} cs={}", a.cs);
                }
            }
        }
    }

    #[test]
    fn detection_is_stable_and_names_round_trip() {
        let k = Bf16Kernel::detect();
        assert_eq!(k, Bf16Kernel::detect());
        assert!(k.is_available());
        for k in Bf16Kernel::ALL {
            assert_eq!(Bf16Kernel::parse(k.name()), Some(k));
        }
    }
}
