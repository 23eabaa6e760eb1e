//! Matrix products: the linear layer (`matmul_forward`/`matmul_backward`) and `sgemm`.
//! This file is the only caller of `gemm::gemm`.
//!
//! Weights may be f32, bf16 or f16 (`WeightRef`); activations and accumulation are f32.
//! Paths of `matmul_forward`, picked by dtype and batch rows `bt`:
//! - many rows (bt > 32: prefill, training): f32 weights go straight to `sgemm`; half weights are widened
//!   a block of rows at a time into a reused f32 scratch buffer (bounded memory: the LM head is
//!   151936×896) and each block is multiplied into its output columns.
//! - few rows (bt ≤ 32: decode, short prompts): a GEMV that streams the weight once, converting half floats on the fly
//!   (AVX-512 when the CPU has it, portable otherwise), parallel over output rows. It is memory
//!   bound, so reading 2-byte weights directly halves its time.
//!
//! `matmul_forward_naive` is the oracle the fast paths are tested against.

use std::cell::Cell;

use gemm::Parallelism;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::weight::WeightRef;

/// How a matrix operand is laid out in its row-major buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The buffer holds the operand as written: (rows, cols), row-major.
    Normal,
    /// The buffer holds the operand's transpose: it stores (cols, rows), row-major.
    Transposed,
}

/// `dst (m, n) = [dst +] a (m, k) · b (k, n)`.
///
/// With `accumulate` the product is added to `dst` (backward passes); otherwise `dst` is
/// overwritten and its old contents are never read.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    dst: &mut [f32],
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert_eq!(
        dst.len(),
        m * n,
        "sgemm: dst has {} elements, want {m}x{n}",
        dst.len()
    );
    assert_eq!(
        a.len(),
        m * k,
        "sgemm: a has {} elements, want {m}x{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "sgemm: b has {} elements, want {k}x{n}",
        b.len()
    );
    // Row stride and column stride of each operand, in elements.
    let a_st = match a_layout {
        Layout::Normal => (k, 1),
        Layout::Transposed => (1, m),
    };
    let b_st = match b_layout {
        Layout::Normal => (n, 1),
        Layout::Transposed => (1, k),
    };
    sgemm_strided(dst, n, a, a_st, b, b_st, m, k, n, accumulate);
}

/// Largest index a (rows, cols) operand with strides (rs, cs) touches, plus one.
fn extent(rows: usize, cols: usize, (rs, cs): (usize, usize)) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst (m, n) [+]= a (m, k) · b (k, n)` with explicit (row, column) strides for `a` and `b`
/// and row stride `dst_rs` for `dst` (column stride 1): lets a product land in a column block of
/// a wider matrix, or read a column block of one, without copies.
#[allow(clippy::too_many_arguments)]
fn sgemm_strided(
    dst: &mut [f32],
    dst_rs: usize,
    a: &[f32],
    a_st: (usize, usize),
    b: &[f32],
    b_st: (usize, usize),
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(
        extent(m, n, (dst_rs, 1)) <= dst.len(),
        "sgemm: dst too short for {m}x{n}"
    );
    assert!(
        extent(m, k, a_st) <= a.len(),
        "sgemm: a too short for {m}x{k}"
    );
    assert!(
        extent(k, n, b_st) <= b.len(),
        "sgemm: b too short for {k}x{n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the asserts above bound every index gemm derives from (m, k, n) and these strides
    // inside `dst`, `a` and `b` (strides are non-negative, so the extent is the largest index);
    // `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            /* m: usize = */ m,
            /* n: usize = */ n,
            /* k: usize = */ k,
            /* dst: *mut T = */ dst.as_mut_ptr(),
            /* dst_cs: isize = */ 1,
            /* dst_rs: isize = */ dst_rs as isize,
            /* read_dst: bool = */ accumulate,
            /* lhs: *const T = */ a.as_ptr(),
            /* lhs_cs: isize = */ a_st.1 as isize,
            /* lhs_rs: isize = */ a_st.0 as isize,
            /* rhs: *const T = */ b.as_ptr(),
            /* rhs_cs: isize = */ b_st.1 as isize,
            /* rhs_rs: isize = */ b_st.0 as isize,
            /* alpha: T = */ 1.0,
            /* beta: T = */ 1.0,
            /* conj_dst: bool = */ false,
            /* conj_lhs: bool = */ false,
            /* conj_rhs: bool = */ false,
            parallelism(m, k, n),
        )
    }
}

/// Threads only pay off once a product has enough work to split.
fn parallelism(m: usize, k: usize, n: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * k * n < 64 * 64 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

// ----------------------------------------------------------------------------------------------
// Linear layer

/// Up to this many rows `matmul_forward` uses the GEMV kernels (any dtype). gemm 0.19 is slow
/// for a short `m` on this hardware: measured on the 2-core dev machine, the GEMV beat it by
/// 1.3–6× for bt = 2..32 (f32 and bf16 weights), while at bt = 64 they were even.
const GEMV_MAX_BT: usize = 32;
/// Elements of widened weight per block in the half-weight gemm path (f32: 4 bytes each).
const WIDEN_BLOCK_ELEMS: usize = 1 << 21;

thread_local! {
    /// Reused scratch for widened weight blocks. Taken out while in use (not borrowed), so a
    /// re-entrant call from a rayon task on this thread just allocates its own.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with a scratch buffer of at least `len` elements (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.set(buf));
    r
}

/// Rows of weight (each `c` long) per widened block.
fn widen_block_rows(c: usize, oc: usize) -> usize {
    (WIDEN_BLOCK_ELEMS / c.max(1)).clamp(16, oc.max(16))
}

/// out (bt, oc) = inp (bt, c) · weight (oc, c)ᵀ [+ bias (oc)]. Overwrites out.
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: WeightRef,
    bias: Option<&[f32]>,
    bt: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(
        out.len(),
        bt * oc,
        "matmul_forward: out has {} elements, want {bt}x{oc}",
        out.len()
    );
    assert_eq!(
        inp.len(),
        bt * c,
        "matmul_forward: inp has {} elements, want {bt}x{c}",
        inp.len()
    );
    assert_eq!(
        weight.len(),
        oc * c,
        "matmul_forward: weight has {} elements, want {oc}x{c}",
        weight.len()
    );
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            oc,
            "matmul_forward: bias has {} elements, want {oc}",
            b.len()
        );
    }
    match weight {
        WeightRef::F32(w) if bt > GEMV_MAX_BT => sgemm(
            out,
            inp,
            Layout::Normal,
            w,
            Layout::Transposed,
            bt,
            c,
            oc,
            false,
        ),
        WeightRef::BF16(_) | WeightRef::F16(_) if bt > GEMV_MAX_BT => {
            forward_widened(out, inp, weight, bt, c, oc, widen_block_rows(c, oc))
        }
        _ => gemv(out, inp, weight, bt, c, oc),
    }
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(oc) {
            for (o, &bi) in row.iter_mut().zip(b) {
                *o += bi;
            }
        }
    }
}

/// Straightforward oracle: f64 dot products of widened weights.
pub fn matmul_forward_naive(
    out: &mut [f32],
    inp: &[f32],
    weight: WeightRef,
    bias: Option<&[f32]>,
    bt: usize,
    c: usize,
    oc: usize,
) {
    let w = weight.to_f32_vec();
    for i in 0..bt {
        for o in 0..oc {
            let mut s: f64 = bias.map_or(0.0, |b| b[o] as f64);
            for k in 0..c {
                s += inp[i * c + k] as f64 * w[o * c + k] as f64;
            }
            out[i * oc + o] = s as f32;
        }
    }
}

/// Accumulates: dinp (bt, c) += dout (bt, oc) · weight (oc, c); dweight (oc, c) += doutᵀ · inp
/// (f32, for trainable weights); dbias (oc) += Σ_rows dout. Each output is optional.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: Option<&mut [f32]>,
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: WeightRef,
    bt: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(
        dout.len(),
        bt * oc,
        "matmul_backward: dout has {} elements, want {bt}x{oc}",
        dout.len()
    );
    if let Some(dinp) = dinp {
        assert_eq!(
            dinp.len(),
            bt * c,
            "matmul_backward: dinp has {} elements, want {bt}x{c}",
            dinp.len()
        );
        assert_eq!(
            weight.len(),
            oc * c,
            "matmul_backward: weight has {} elements, want {oc}x{c}",
            weight.len()
        );
        match weight {
            WeightRef::F32(w) => sgemm(
                dinp,
                dout,
                Layout::Normal,
                w,
                Layout::Normal,
                bt,
                oc,
                c,
                true,
            ),
            WeightRef::BF16(_) | WeightRef::F16(_) => {
                backward_dinp_widened(dinp, dout, weight, bt, c, oc, widen_block_rows(c, oc))
            }
        }
    }
    if let Some(dweight) = dweight {
        assert_eq!(
            inp.len(),
            bt * c,
            "matmul_backward: inp has {} elements, want {bt}x{c}",
            inp.len()
        );
        assert_eq!(
            dweight.len(),
            oc * c,
            "matmul_backward: dweight has {} elements, want {oc}x{c}",
            dweight.len()
        );
        // dweight (oc, c) += doutᵀ (oc, bt) · inp (bt, c)
        sgemm(
            dweight,
            dout,
            Layout::Transposed,
            inp,
            Layout::Normal,
            oc,
            bt,
            c,
            true,
        );
    }
    if let Some(dbias) = dbias {
        assert_eq!(
            dbias.len(),
            oc,
            "matmul_backward: dbias has {} elements, want {oc}",
            dbias.len()
        );
        for row in dout.chunks_exact(oc) {
            for (d, &g) in dbias.iter_mut().zip(row) {
                *d += g;
            }
        }
    }
}

/// out (bt, oc) = inp (bt, c) · weight (oc, c)ᵀ, widening `rows` weight rows at a time.
fn forward_widened(
    out: &mut [f32],
    inp: &[f32],
    weight: WeightRef,
    bt: usize,
    c: usize,
    oc: usize,
    rows: usize,
) {
    let rows = rows.max(1);
    with_scratch(rows.min(oc) * c, |buf| {
        for o0 in (0..oc).step_by(rows) {
            let nb = rows.min(oc - o0);
            let wb = &mut buf[..nb * c];
            widen_par(weight.slice(o0 * c..(o0 + nb) * c), wb);
            // out[:, o0..o0+nb] = inp (bt, c) · wb (nb, c)ᵀ
            sgemm_strided(
                &mut out[o0..],
                oc,
                inp,
                (c, 1),
                wb,
                (1, c),
                bt,
                c,
                nb,
                false,
            );
        }
    });
}

/// dinp (bt, c) += dout (bt, oc) · weight (oc, c), widening `rows` weight rows at a time.
#[allow(clippy::too_many_arguments)]
fn backward_dinp_widened(
    dinp: &mut [f32],
    dout: &[f32],
    weight: WeightRef,
    bt: usize,
    c: usize,
    oc: usize,
    rows: usize,
) {
    let rows = rows.max(1);
    with_scratch(rows.min(oc) * c, |buf| {
        for o0 in (0..oc).step_by(rows) {
            let nb = rows.min(oc - o0);
            let wb = &mut buf[..nb * c];
            widen_par(weight.slice(o0 * c..(o0 + nb) * c), wb);
            // dinp += dout[:, o0..o0+nb] (bt, nb) · wb (nb, c)
            sgemm_strided(dinp, c, &dout[o0..], (oc, 1), wb, (c, 1), bt, nb, c, true);
        }
    });
}

// ----------------------------------------------------------------------------------------------
// Widening

/// Elements per rayon task when widening.
const WIDEN_CHUNK: usize = 1 << 16;

/// `out = weight` widened to f32, in parallel for large blocks.
fn widen_par(weight: WeightRef, out: &mut [f32]) {
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
            let bits: &[u16] = bytemuck_bf16(w);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { widen_bf16_avx512(bits, out) };
            }
            widen_bf16_body(bits, out)
        }
        WeightRef::F16(w) => {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { widen_f16_avx512(bytemuck_f16(w), out) };
            }
            for (o, x) in out.iter_mut().zip(w) {
                *o = x.to_f32();
            }
        }
    }
}

fn bytemuck_bf16(w: &[bf16]) -> &[u16] {
    // SAFETY: bf16 is a `repr(transparent)` wrapper of u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()) }
}

fn bytemuck_f16(w: &[f16]) -> &[u16] {
    // SAFETY: f16 is a `repr(transparent)` wrapper of u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()) }
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

// ----------------------------------------------------------------------------------------------
// GEMV (few rows)

/// Output rows of the weight per inner block when the batch is split into groups: keeps the
/// block in L2 while each group re-reads it.
const GEMV_SUB_ROWS: usize = 64;
/// How far ahead (bytes) the GEMV kernels prefetch the weight stream; 4–12 KiB measured alike.
const GEMV_PREFETCH_BYTES: usize = 8192;
/// Below this many weight elements one thread does the whole GEMV (rayon costs a few µs).
const GEMV_PAR_MIN: usize = 1 << 16;

/// out (bt, oc) = inp (bt, c) · weight (oc, c)ᵀ for small `bt`, parallel over output rows.
fn gemv(out: &mut [f32], inp: &[f32], weight: WeightRef, bt: usize, c: usize, oc: usize) {
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

/// Whether the AVX-512 GEMV kernels can run (std caches the CPUID answers).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
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
                    let w = bytemuck_bf16(w);
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
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; x.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = x[r * cols + c];
            }
        }
        t
    }

    #[test]
    fn sgemm_matches_naive_for_every_layout() {
        let (m, k, n) = (37, 129, 70);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let want = naive(&a, &b, m, k, n);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        for (a_buf, al) in [(&a, Layout::Normal), (&at, Layout::Transposed)] {
            for (b_buf, bl) in [(&b, Layout::Normal), (&bt, Layout::Transposed)] {
                let mut got = vec![f32::NAN; m * n];
                sgemm(&mut got, a_buf, al, b_buf, bl, m, k, n, false);
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 1e-4, "{al:?} x {bl:?}: max diff {diff}");
                sgemm(&mut got, a_buf, al, b_buf, bl, m, k, n, true);
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - 2.0 * w).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 2e-4, "accumulate {al:?} x {bl:?}: max diff {diff}");
            }
        }
    }

    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The three dtypes of one random weight. Half weights are rounded copies, and every path
    /// (and the oracle) reads the same rounded values, so they agree to f32 accumulation error.
    struct Weights {
        f32: Vec<f32>,
        bf16: Vec<bf16>,
        f16: Vec<f16>,
    }

    impl Weights {
        fn new(rng: &mut StdRng, n: usize) -> Self {
            let f32 = rand_vec(rng, n);
            let bf16 = f32.iter().map(|&x| bf16::from_f32(x)).collect();
            let f16 = f32.iter().map(|&x| f16::from_f32(x)).collect();
            Weights { f32, bf16, f16 }
        }
        fn refs(&self) -> [WeightRef<'_>; 3] {
            [
                WeightRef::F32(&self.f32),
                WeightRef::BF16(&self.bf16),
                WeightRef::F16(&self.f16),
            ]
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn forward_hand_computed() {
        // inp (2, 3), weight (2, 3), bias (2)
        let inp = [1.0, 2.0, 3.0, -1.0, 0.0, 1.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let want = [-2.0 + 10.0, 3.0 + 20.0, -2.0 + 10.0, 0.0 + 20.0];
        let wb: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
        let wh: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
        for weight in [
            WeightRef::F32(&w),
            WeightRef::BF16(&wb),
            WeightRef::F16(&wh),
        ] {
            let mut out = [f32::NAN; 4];
            matmul_forward(&mut out, &inp, weight, Some(&[10.0, 20.0]), 2, 3, 2);
            assert_eq!(out, want, "{:?}", weight.dtype());
            // The blocked path with one row per block.
            forward_widened(&mut out, &inp, weight, 2, 3, 2, 1);
            assert_eq!(out, [-2.0, 3.0, -2.0, 0.0], "{:?} widened", weight.dtype());
        }
    }

    /// Every forward path (GEMV for bt ≤ 8 incl. the parallel split and odd tails, gemm for
    /// larger bt, widened blocks of several sizes) against the f64 oracle.
    #[test]
    fn forward_fast_matches_naive() {
        let mut rng = StdRng::seed_from_u64(11);
        for (bt, c, oc) in [
            (1, 7, 5),
            (1, 896, 131),
            (2, 33, 9),
            (3, 100, 77),
            (5, 17, 300),
            (8, 129, 1030),
            (9, 64, 70),
            (40, 97, 203),
        ] {
            let inp = rand_vec(&mut rng, bt * c);
            let bias = rand_vec(&mut rng, oc);
            let w = Weights::new(&mut rng, oc * c);
            for weight in w.refs() {
                let mut want = vec![0.0; bt * oc];
                matmul_forward_naive(&mut want, &inp, weight, Some(&bias), bt, c, oc);
                let mut got = vec![f32::NAN; bt * oc];
                matmul_forward(&mut got, &inp, weight, Some(&bias), bt, c, oc);
                // tolerance: f32 sums of c products of magnitude ≤ 1 (√c·ulp-ish), 1e-5 plenty
                let d = max_diff(&got, &want);
                assert!(
                    d < 1e-5 * (c as f32).sqrt(),
                    "bt={bt} c={c} oc={oc} {:?}: {d}",
                    weight.dtype()
                );
                for rows in [1, 7, 64, oc] {
                    let mut got = vec![f32::NAN; bt * oc];
                    forward_widened(&mut got, &inp, weight, bt, c, oc, rows);
                    let mut want_nb = vec![0.0; bt * oc];
                    matmul_forward_naive(&mut want_nb, &inp, weight, None, bt, c, oc);
                    let d = max_diff(&got, &want_nb);
                    assert!(
                        d < 1e-5 * (c as f32).sqrt(),
                        "widened rows={rows} bt={bt} c={c} oc={oc}: {d}"
                    );
                }
                let mut got = vec![f32::NAN; bt * oc];
                gemv(&mut got, &inp, weight, bt, c, oc);
                let mut want_nb = vec![0.0; bt * oc];
                matmul_forward_naive(&mut want_nb, &inp, weight, None, bt, c, oc);
                let d = max_diff(&got, &want_nb);
                assert!(
                    d < 1e-5 * (c as f32).sqrt(),
                    "gemv bt={bt} c={c} oc={oc} {:?}: {d}",
                    weight.dtype()
                );
            }
        }
    }

    /// The portable GEMV kernel (the AVX-512 one runs on this machine) against the oracle.
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

    /// Backward of every dtype against explicit loops over widened weights (f64).
    #[test]
    fn backward_matches_naive_and_accumulates() {
        let mut rng = StdRng::seed_from_u64(14);
        for (bt, c, oc) in [(1, 5, 3), (4, 33, 70), (37, 96, 130)] {
            let inp = rand_vec(&mut rng, bt * c);
            let dout = rand_vec(&mut rng, bt * oc);
            let w = Weights::new(&mut rng, oc * c);
            for weight in w.refs() {
                let wf = weight.to_f32_vec();
                let init_dinp = rand_vec(&mut rng, bt * c);
                let init_dw = rand_vec(&mut rng, oc * c);
                let init_db = rand_vec(&mut rng, oc);
                let (mut dinp, mut dw, mut db) =
                    (init_dinp.clone(), init_dw.clone(), init_db.clone());
                matmul_backward(
                    Some(&mut dinp),
                    Some(&mut dw),
                    Some(&mut db),
                    &dout,
                    &inp,
                    weight,
                    bt,
                    c,
                    oc,
                );
                let mut want_dinp = init_dinp.clone();
                for b in 0..bt {
                    for k in 0..c {
                        let s: f64 = (0..oc)
                            .map(|o| dout[b * oc + o] as f64 * wf[o * c + k] as f64)
                            .sum();
                        want_dinp[b * c + k] += s as f32;
                    }
                }
                let mut want_dw = init_dw.clone();
                for o in 0..oc {
                    for k in 0..c {
                        let s: f64 = (0..bt)
                            .map(|b| dout[b * oc + o] as f64 * inp[b * c + k] as f64)
                            .sum();
                        want_dw[o * c + k] += s as f32;
                    }
                }
                let mut want_db = init_db.clone();
                for o in 0..oc {
                    want_db[o] += (0..bt).map(|b| dout[b * oc + o]).sum::<f32>();
                }
                // tolerance: f32 accumulation of ≤ 130 unit-size products
                let tol = 1e-5 * (oc.max(bt) as f32).sqrt();
                let dt = weight.dtype();
                assert!(max_diff(&dinp, &want_dinp) < tol, "dinp {dt:?} bt={bt}");
                assert!(max_diff(&dw, &want_dw) < tol, "dweight {dt:?} bt={bt}");
                assert!(max_diff(&db, &want_db) < tol, "dbias {dt:?} bt={bt}");
                if dt != crate::DType::F32 {
                    // Several widened blocks give the same dinp.
                    let mut d2 = init_dinp.clone();
                    backward_dinp_widened(&mut d2, &dout, weight, bt, c, oc, 7);
                    assert!(
                        max_diff(&d2, &want_dinp) < tol,
                        "dinp widened blocks {dt:?} bt={bt}"
                    );
                }
            }
        }
    }
}
