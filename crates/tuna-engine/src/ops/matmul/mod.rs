//! Matrix products: the linear layer (`matmul_forward`/`matmul_backward`, here) over the f32
//! `sgemm` (`gemm.rs`, the only caller of `gemm::gemm`), the bf16 products (`bf16/`), the GEMV
//! for few rows (`gemv.rs`) and the widening of half-float weights (`widen.rs`).
//!
//! Weights may be f32, bf16 or f16 (`WeightRef`); activations and accumulation are f32. Each
//! product runs at a [`Precision`]: `F32` (f32 operands), or `Bf16`, where both operands are
//! rounded to bf16 as they enter the product and the products are summed in f32 (PyTorch's bf16
//! autocast) on the machine's bf16 kernel (AMX, AVX512-BF16, or the f32 fallback).
//! Paths of `matmul_forward`, picked by precision, dtype and batch rows `bt`:
//! - many rows (bt > 32: prefill, training), f32: f32 weights go straight to `sgemm`; half weights
//!   are widened a block of rows at a time into a reused f32 scratch buffer (bounded memory: the
//!   LM head is 151936×896) and each block is multiplied into its output columns.
//! - many rows, bf16: the bf16 kernel packs the weight as it is stored (f32 weights are rounded as
//!   they are packed), a piece at a time into L2, and multiplies every input row by it.
//! - few rows (bt ≤ 32: decode, short prompts): the GEMV, which streams the weight once (bf16:
//!   with the input rounded to bf16 first; an f32 weight under bf16 takes the bf16 kernel).
//!
//! `matmul_forward_naive` is the oracle the fast paths are tested against.

mod bf16;
mod gemm;
mod gemv;
pub mod peak;
mod skinny;
mod widen;

pub use bf16::Bf16Kernel;
pub use gemm::{Layout, sgemm};
pub use skinny::{skinny_a_bt, skinny_at_b, skinny_update};

use bf16::gemm_bf16;
pub use bf16::pack::Mat;
pub(crate) use bf16::pack::round_to_bf16_f32;
use gemm::sgemm_strided;
use gemv::gemv;
use widen::widen_par;

use crate::scratch::with_scratch;
use crate::weight::WeightRef;

/// How the matrix products of a pass multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 operands and sums (matches transformers in f32 to about 1e-4).
    #[default]
    F32,
    /// Operands rounded to bf16 at the product's inputs, products summed in f32 by the kernel.
    Bf16(Bf16Kernel),
}

impl Precision {
    /// bf16 on this process's kernel ([`Bf16Kernel::detect`]).
    pub fn bf16() -> Precision {
        Precision::Bf16(Bf16Kernel::detect())
    }

    /// `f32`, or `bf16` with the kernel: `bf16 (avx512-bf16)`.
    pub fn describe(self) -> String {
        match self {
            Precision::F32 => "f32".into(),
            Precision::Bf16(k) => format!("bf16 ({})", k.name()),
        }
    }
}

/// `dst (m, n) [+]= a (m, k) · b (k, n)` at `precision`; `dst` element (i, j) at
/// `i·dst_st.0 + j·dst_st.1` (one stride 1, the other at least the row or column count). At `F32`
/// both operands must be f32 (`sgemm`); at bf16 they may be weights in any dtype.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    precision: Precision,
    dst: &mut [f32],
    dst_st: (usize, usize),
    a: Mat,
    b: Mat,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    match (precision, a.data, b.data) {
        (Precision::F32, WeightRef::F32(av), WeightRef::F32(bv)) => sgemm_strided(
            dst,
            dst_st,
            av,
            (a.rs, a.cs),
            bv,
            (b.rs, b.cs),
            m,
            k,
            n,
            accumulate,
        ),
        (Precision::F32, ..) => panic!("gemm: f32 products take f32 operands"),
        (Precision::Bf16(kernel), ..) => gemm_bf16(kernel, dst, dst_st, a, b, m, k, n, accumulate),
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

/// Rows of weight (each `c` long) per widened block.
fn widen_block_rows(c: usize, oc: usize) -> usize {
    (WIDEN_BLOCK_ELEMS / c.max(1)).clamp(16, oc.max(16))
}

/// out (bt, oc) = inp (bt, c) · weight (oc, c)ᵀ [+ bias (oc)] at `precision`. Overwrites out.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: WeightRef,
    bias: Option<&[f32]>,
    bt: usize,
    c: usize,
    oc: usize,
    precision: Precision,
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
    match (precision, weight) {
        (Precision::Bf16(_), WeightRef::BF16(_)) if bt <= GEMV_MAX_BT => {
            // Products of bf16 values are exact in f32: the f32 GEMV over the rounded input is
            // a bf16 product with f32 sums.
            with_scratch(bt * c, |x| {
                for (r, &v) in x.iter_mut().zip(inp) {
                    *r = round_to_bf16_f32(v);
                }
                gemv(out, x, weight, bt, c, oc)
            })
        }
        (Precision::Bf16(kernel), _) => {
            // out (bt, oc) = inp (bt, c) · weightᵀ (c, oc)
            gemm_bf16(
                kernel,
                out,
                (oc, 1),
                Mat {
                    data: WeightRef::F32(inp),
                    rs: c,
                    cs: 1,
                },
                Mat {
                    data: weight,
                    rs: 1,
                    cs: c,
                },
                bt,
                c,
                oc,
                false,
            )
        }
        (Precision::F32, WeightRef::F32(w)) if bt > GEMV_MAX_BT => sgemm(
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
        (Precision::F32, WeightRef::BF16(_) | WeightRef::F16(_)) if bt > GEMV_MAX_BT => {
            forward_widened(out, inp, weight, bt, c, oc, widen_block_rows(c, oc))
        }
        (Precision::F32, _) => gemv(out, inp, weight, bt, c, oc),
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
/// (f32, for trainable weights); dbias (oc) += Σ_rows dout. Each output is optional. The two
/// products run at `precision`; dbias is summed in f32.
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
    precision: Precision,
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
        match (precision, weight) {
            (Precision::Bf16(kernel), _) => gemm_bf16(
                kernel,
                dinp,
                (c, 1),
                Mat {
                    data: WeightRef::F32(dout),
                    rs: oc,
                    cs: 1,
                },
                Mat {
                    data: weight,
                    rs: c,
                    cs: 1,
                },
                bt,
                oc,
                c,
                true,
            ),
            (Precision::F32, WeightRef::F32(w)) => sgemm(
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
            (Precision::F32, WeightRef::BF16(_) | WeightRef::F16(_)) => {
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
        gemm(
            precision,
            dweight,
            (c, 1),
            Mat {
                data: WeightRef::F32(dout),
                rs: 1,
                cs: oc,
            },
            Mat {
                data: WeightRef::F32(inp),
                rs: c,
                cs: 1,
            },
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
    for_each_widened_block(weight, c, oc, rows, |o0, nb, wb| {
        // out[:, o0..o0+nb] = inp (bt, c) · wb (nb, c)ᵀ
        sgemm_strided(
            &mut out[o0..],
            (oc, 1),
            inp,
            (c, 1),
            wb,
            (1, c),
            bt,
            c,
            nb,
            false,
        );
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
    for_each_widened_block(weight, c, oc, rows, |o0, nb, wb| {
        // dinp += dout[:, o0..o0+nb] (bt, nb) · wb (nb, c)
        sgemm_strided(
            dinp,
            (c, 1),
            &dout[o0..],
            (oc, 1),
            wb,
            (c, 1),
            bt,
            nb,
            c,
            true,
        );
    });
}

/// Runs `f(o0, nb, rows o0..o0+nb of the weight widened to f32)` over the weight's rows, `rows`
/// at a time, in one scratch buffer (the widening both products share).
fn for_each_widened_block(
    weight: WeightRef,
    c: usize,
    oc: usize,
    rows: usize,
    mut f: impl FnMut(usize, usize, &[f32]),
) {
    let rows = rows.max(1);
    with_scratch(rows.min(oc) * c, |buf| {
        for o0 in (0..oc).step_by(rows) {
            let nb = rows.min(oc - o0);
            let wb = &mut buf[..nb * c];
            widen_par(weight.slice(o0 * c..(o0 + nb) * c), wb);
            f(o0, nb, wb);
        }
    });
}

#[cfg(test)]
pub(super) mod test_util {
    use half::{bf16, f16};
    use rand::{Rng, rngs::StdRng};

    use crate::weight::WeightRef;

    pub fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The three dtypes of one random weight. Half weights are rounded copies, and every path
    /// (and the oracle) reads the same rounded values, so they agree to f32 accumulation error.
    pub struct Weights {
        pub f32: Vec<f32>,
        pub bf16: Vec<bf16>,
        pub f16: Vec<f16>,
    }

    impl Weights {
        pub fn new(rng: &mut StdRng, n: usize) -> Self {
            let f32 = rand_vec(rng, n);
            let bf16 = f32.iter().map(|&x| bf16::from_f32(x)).collect();
            let f16 = f32.iter().map(|&x| f16::from_f32(x)).collect();
            Weights { f32, bf16, f16 }
        }
        pub fn refs(&self) -> [WeightRef<'_>; 3] {
            [
                WeightRef::F32(&self.f32),
                WeightRef::BF16(&self.bf16),
                WeightRef::F16(&self.f16),
            ]
        }
    }

    pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use half::{bf16, f16};
    use rand::{SeedableRng, rngs::StdRng};

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
            matmul_forward(
                &mut out,
                &inp,
                weight,
                Some(&[10.0, 20.0]),
                2,
                3,
                2,
                Precision::F32,
            );
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
                matmul_forward(
                    &mut got,
                    &inp,
                    weight,
                    Some(&bias),
                    bt,
                    c,
                    oc,
                    Precision::F32,
                );
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
                    Precision::F32,
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

    /// The linear layer at bf16 on every kernel this machine has (and the f32 fallback): forward
    /// (GEMV and kernel paths, f32 and bf16 weights), dinp and dweight against f64 sums of the
    /// bf16-rounded operands. Tolerance: `n·2⁻²³·Σ|products|` per element (f32 summation of n
    /// exact products), plus the f32 rounding of what was accumulated onto.
    #[test]
    fn bf16_linear_matches_rounded_oracle_on_every_kernel() {
        let r = |x: f32| round_to_bf16_f32(x) as f64;
        let mut rng = StdRng::seed_from_u64(15);
        for kernel in Bf16Kernel::available() {
            let precision = Precision::Bf16(kernel);
            for (bt, c, oc) in [(3, 40, 9), (20, 64, 70), (45, 96, 33)] {
                let inp = rand_vec(&mut rng, bt * c);
                let dout = rand_vec(&mut rng, bt * oc);
                let w = Weights::new(&mut rng, oc * c);
                for weight in [WeightRef::F32(&w.f32), WeightRef::BF16(&w.bf16)] {
                    let wf = weight.to_f32_vec();
                    let label = format!("{} bt={bt} {:?}", kernel.name(), weight.dtype());
                    let check = |got: &[f32],
                                 base: &[f32],
                                 want: &dyn Fn(usize) -> (f64, f64, usize),
                                 what: &str| {
                        for (idx, (&g, &b0)) in got.iter().zip(base).enumerate() {
                            let (s, abs, n) = want(idx);
                            let tol = n as f64 * f32::EPSILON as f64 * abs
                                + 2.0 * f32::EPSILON as f64 * (b0.abs() as f64 + s.abs());
                            assert!(
                                (g as f64 - b0 as f64 - s).abs() <= tol + 1e-30,
                                "{label} {what}[{idx}]: {g} vs {}",
                                b0 as f64 + s
                            );
                        }
                    };
                    let mut out = vec![f32::NAN; bt * oc];
                    matmul_forward(&mut out, &inp, weight, None, bt, c, oc, precision);
                    check(
                        &out,
                        &vec![0.0; bt * oc],
                        &|idx| {
                            let (t, o) = (idx / oc, idx % oc);
                            let terms = (0..c).map(|j| r(inp[t * c + j]) * r(wf[o * c + j]));
                            let (s, a) = terms.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                            (s, a, c)
                        },
                        "out",
                    );
                    let init_dinp = rand_vec(&mut rng, bt * c);
                    let init_dw = rand_vec(&mut rng, oc * c);
                    let (mut dinp, mut dw) = (init_dinp.clone(), init_dw.clone());
                    matmul_backward(
                        Some(&mut dinp),
                        Some(&mut dw),
                        None,
                        &dout,
                        &inp,
                        weight,
                        bt,
                        c,
                        oc,
                        precision,
                    );
                    check(
                        &dinp,
                        &init_dinp,
                        &|idx| {
                            let (t, j) = (idx / c, idx % c);
                            let terms = (0..oc).map(|o| r(dout[t * oc + o]) * r(wf[o * c + j]));
                            let (s, a) = terms.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                            (s, a, oc)
                        },
                        "dinp",
                    );
                    check(
                        &dw,
                        &init_dw,
                        &|idx| {
                            let (o, j) = (idx / c, idx % c);
                            let terms = (0..bt).map(|t| r(dout[t * oc + o]) * r(inp[t * c + j]));
                            let (s, a) = terms.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                            (s, a, bt)
                        },
                        "dweight",
                    );
                }
            }
        }
    }
}
