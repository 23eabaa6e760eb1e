//! f32 products where one dimension is a LoRA rank r (4–64): general GEMM kernels tile for
//! square-ish shapes and run these at a fraction of their speed (the gemm crate at ~35 GFLOP/s on
//! the 2-core dev machine for Qwen2.5-0.5B's LoRA shapes, against ~200 for square products), and
//! a bf16 kernel would spend more on packing its wide operand than on the product.
//!
//! Three shapes, each reading its wide operand once, in place, with no packing; the rank side is
//! held in registers 8 rows at a time:
//! - [`skinny_at_b`]: C (r, n) += Pᵀ · X, P (bt, r), X (bt, n) (LoRA's dA and dB);
//! - [`skinny_a_bt`]: C (bt, r) = X · Yᵀ, X (bt, k), Y (r, k) (LoRA's x·Aᵀ and dy·B);
//! - [`skinny_update`]: D (bt, n) += P · Y, P (bt, r), Y (r, n) (LoRA's output and dx).
//!
//! Parallel over the wide dimension in fixed chunks; each output element is summed by one task in
//! one order, so results do not depend on the thread count.

use rayon::prelude::*;

use crate::simd::avx512_or_baseline;

/// Rank rows held in registers at once.
const RB: usize = 8;
/// Columns per register block: three 16-lane vectors.
const CB: usize = 48;
/// Rows of the tall operand per task in the row-parallel kernels.
const ROWS_PER_TASK: usize = 32;
/// Columns per task in [`skinny_at_b`].
const COLS_PER_TASK: usize = 4 * CB;

/// acc (RB, CB) += Σ_t p[t][j0 + j] · x[t][c0 + c] over rows t, for j < rb, c < cb.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn at_b_block(
    acc: &mut [[f32; CB]; RB],
    p: &[f32],
    x: &[f32],
    bt: usize,
    r: usize,
    n: usize,
    j0: usize,
    rb: usize,
    c0: usize,
    cb: usize,
) {
    for t in 0..bt {
        let xr = &x[t * n + c0..t * n + c0 + cb];
        let mut xv = [0.0f32; CB];
        xv[..cb].copy_from_slice(xr);
        let pr = &p[t * r + j0..t * r + j0 + rb];
        for (j, &pv) in pr.iter().enumerate() {
            for c in 0..CB {
                acc[j][c] += pv * xv[c];
            }
        }
    }
}

/// Columns `c0 ..` of C = Pᵀ · X into `out`, (r, cols) row-major.
#[inline(always)]
fn at_b_columns_body(
    out: &mut [f32],
    p: &[f32],
    x: &[f32],
    bt: usize,
    r: usize,
    n: usize,
    c0: usize,
) {
    let cols = out.len() / r;
    for b0 in (0..cols).step_by(CB) {
        let cb = CB.min(cols - b0);
        for j0 in (0..r).step_by(RB) {
            let rb = RB.min(r - j0);
            let mut acc = [[0.0f32; CB]; RB];
            at_b_block(&mut acc, p, x, bt, r, n, j0, rb, c0 + b0, cb);
            for j in 0..rb {
                for c in 0..cb {
                    out[(j0 + j) * cols + b0 + c] = acc[j][c];
                }
            }
        }
    }
}

avx512_or_baseline! {
    fn at_b_columns(out: &mut [f32], p: &[f32], x: &[f32], bt: usize, r: usize, n: usize, c0: usize) = at_b_columns_body;
}

/// C (r, n) += Pᵀ (r, bt) · X (bt, n), with P (bt, r) and X (bt, n) row-major; C element (j, c)
/// at `j·dst_st.0 + c·dst_st.1` (so C may be stored transposed, as LoRA's B is).
pub fn skinny_at_b(
    dst: &mut [f32],
    dst_st: (usize, usize),
    p: &[f32],
    x: &[f32],
    bt: usize,
    r: usize,
    n: usize,
) {
    assert!(
        p.len() == bt * r && x.len() == bt * n,
        "skinny_at_b: operand sizes"
    );
    assert!(
        r == 0 || n == 0 || (r - 1) * dst_st.0 + (n - 1) * dst_st.1 < dst.len(),
        "skinny_at_b: dst too short"
    );
    if r == 0 || n == 0 {
        return;
    }
    let chunks: Vec<Vec<f32>> = (0..n.div_ceil(COLS_PER_TASK))
        .into_par_iter()
        .map(|ch| {
            let c0 = ch * COLS_PER_TASK;
            let cols = COLS_PER_TASK.min(n - c0);
            let mut out = vec![0.0f32; r * cols];
            at_b_columns(&mut out, p, x, bt, r, n, c0);
            out
        })
        .collect();
    for (ch, out) in chunks.iter().enumerate() {
        let c0 = ch * COLS_PER_TASK;
        let cols = out.len() / r;
        for j in 0..r {
            for c in 0..cols {
                dst[j * dst_st.0 + (c0 + c) * dst_st.1] += out[j * cols + c];
            }
        }
    }
}

/// Rows `t0 ..` (c.len() / r of them) of C (bt, r) = X · Yᵀ.
#[inline(always)]
fn a_bt_rows_body(c: &mut [f32], x: &[f32], y: &[f32], k: usize, r: usize, t0: usize) {
    const LANES: usize = 16;
    const TB: usize = 2;
    let rows = c.len() / r;
    for tb in (0..rows).step_by(TB) {
        let nt = TB.min(rows - tb);
        for j0 in (0..r).step_by(RB) {
            let rb = RB.min(r - j0);
            let mut acc = [[[0.0f32; LANES]; RB]; TB];
            let full = k / LANES * LANES;
            for k0 in (0..full).step_by(LANES) {
                let mut xv = [[0.0f32; LANES]; TB];
                for (i, v) in xv.iter_mut().enumerate().take(nt) {
                    v.copy_from_slice(&x[(t0 + tb + i) * k + k0..][..LANES]);
                }
                for j in 0..rb {
                    let yv = &y[(j0 + j) * k + k0..][..LANES];
                    for i in 0..TB {
                        for l in 0..LANES {
                            acc[i][j][l] += xv[i][l] * yv[l];
                        }
                    }
                }
            }
            for i in 0..nt {
                let xr = &x[(t0 + tb + i) * k..(t0 + tb + i + 1) * k];
                for j in 0..rb {
                    let yr = &y[(j0 + j) * k..(j0 + j + 1) * k];
                    let tail: f32 = (full..k).map(|q| xr[q] * yr[q]).sum();
                    c[(tb + i) * r + j0 + j] = acc[i][j].iter().sum::<f32>() + tail;
                }
            }
        }
    }
}

avx512_or_baseline! {
    fn a_bt_rows(c: &mut [f32], x: &[f32], y: &[f32], k: usize, r: usize, t0: usize) = a_bt_rows_body;
}

/// C (bt, r) = X (bt, k) · Yᵀ (k, r), with X and Y (r, k) row-major. Overwrites C.
pub fn skinny_a_bt(c: &mut [f32], x: &[f32], y: &[f32], bt: usize, k: usize, r: usize) {
    assert!(
        c.len() == bt * r && x.len() == bt * k && y.len() == r * k,
        "skinny_a_bt: operand sizes"
    );
    if r == 0 {
        return;
    }
    c.par_chunks_mut(ROWS_PER_TASK * r)
        .enumerate()
        .for_each(|(i, ch)| a_bt_rows(ch, x, y, k, r, i * ROWS_PER_TASK));
}

/// Rows `t0 ..` (d.len() / n of them) of D (bt, n) += P · Y.
#[inline(always)]
fn update_rows_body(d: &mut [f32], p: &[f32], y: &[f32], r: usize, n: usize, t0: usize) {
    const TB: usize = 4;
    let rows = d.len() / n;
    for tb in (0..rows).step_by(TB) {
        let nt = TB.min(rows - tb);
        for c0 in (0..n).step_by(CB) {
            let cb = CB.min(n - c0);
            let mut acc = [[0.0f32; CB]; TB];
            for (i, a) in acc.iter_mut().enumerate().take(nt) {
                a[..cb].copy_from_slice(&d[(tb + i) * n + c0..(tb + i) * n + c0 + cb]);
            }
            for j in 0..r {
                let mut yv = [0.0f32; CB];
                yv[..cb].copy_from_slice(&y[j * n + c0..j * n + c0 + cb]);
                for (i, a) in acc.iter_mut().enumerate().take(nt) {
                    let pv = p[(t0 + tb + i) * r + j];
                    for c in 0..CB {
                        a[c] += pv * yv[c];
                    }
                }
            }
            for (i, a) in acc.iter().enumerate().take(nt) {
                d[(tb + i) * n + c0..(tb + i) * n + c0 + cb].copy_from_slice(&a[..cb]);
            }
        }
    }
}

avx512_or_baseline! {
    fn update_rows(d: &mut [f32], p: &[f32], y: &[f32], r: usize, n: usize, t0: usize) = update_rows_body;
}

/// D (bt, n) += P (bt, r) · Y (r, n), all row-major.
pub fn skinny_update(d: &mut [f32], p: &[f32], y: &[f32], bt: usize, r: usize, n: usize) {
    assert!(
        d.len() == bt * n && p.len() == bt * r && y.len() == r * n,
        "skinny_update: operand sizes"
    );
    if n == 0 {
        return;
    }
    d.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(i, ch)| update_rows(ch, p, y, r, n, i * ROWS_PER_TASK));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Each kernel against f64 sums, on ranks around the register block (RB = 8) and widths
    /// around the column block and task chunks. Tolerance: f32 sums of ≤ 100 unit-size
    /// products, 1e-5·√terms.
    #[test]
    fn skinny_products_match_f64() {
        let mut rng = StdRng::seed_from_u64(31);
        for (bt, r, n) in [
            (1, 1, 1),
            (7, 4, 33),
            (37, 8, 100),
            (70, 9, 49),
            (33, 16, 200),
            (3, 3, 17),
        ] {
            let p = rand_vec(&mut rng, bt * r);
            let x = rand_vec(&mut rng, bt * n);
            let tol = |terms: usize| 1e-5 * (terms as f64).sqrt().max(1.0);
            // C (r, n) += Pᵀ X, stored plain and transposed.
            for transposed in [false, true] {
                let st = if transposed { (1, r) } else { (n, 1) };
                let init = rand_vec(&mut rng, r * n);
                let mut c = init.clone();
                skinny_at_b(&mut c, st, &p, &x, bt, r, n);
                for j in 0..r {
                    for col in 0..n {
                        let want: f64 = (0..bt)
                            .map(|t| p[t * r + j] as f64 * x[t * n + col] as f64)
                            .sum();
                        let idx = j * st.0 + col * st.1;
                        let got = c[idx] as f64 - init[idx] as f64;
                        assert!(
                            (got - want).abs() < tol(bt),
                            "at_b {bt} {r} {n} ({j},{col}): {got} vs {want}"
                        );
                    }
                }
            }
            // C (bt, r) = X Yᵀ with k = n.
            let y = rand_vec(&mut rng, r * n);
            let mut c = vec![f32::NAN; bt * r];
            skinny_a_bt(&mut c, &x, &y, bt, n, r);
            for t in 0..bt {
                for j in 0..r {
                    let want: f64 = (0..n)
                        .map(|q| x[t * n + q] as f64 * y[j * n + q] as f64)
                        .sum();
                    assert!(
                        (c[t * r + j] as f64 - want).abs() < tol(n),
                        "a_bt {bt} {r} {n} ({t},{j})"
                    );
                }
            }
            // D (bt, n) += P Y.
            let init = rand_vec(&mut rng, bt * n);
            let mut d = init.clone();
            skinny_update(&mut d, &p, &y, bt, r, n);
            for t in 0..bt {
                for col in 0..n {
                    let want: f64 = (0..r)
                        .map(|j| p[t * r + j] as f64 * y[j * n + col] as f64)
                        .sum();
                    let got = d[t * n + col] as f64 - init[t * n + col] as f64;
                    assert!(
                        (got - want).abs() < tol(r),
                        "update {bt} {r} {n} ({t},{col})"
                    );
                }
            }
        }
    }
}
