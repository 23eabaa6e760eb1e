//! `sgemm`: f32 matrix products through the `gemm` crate (the only caller of `gemm::gemm`).

use gemm::Parallelism;

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
    sgemm_strided(dst, (n, 1), a, a_st, b, b_st, m, k, n, accumulate);
}

/// Largest index a (rows, cols) operand with strides (rs, cs) touches, plus one.
pub(super) fn extent(rows: usize, cols: usize, (rs, cs): (usize, usize)) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst (m, n) [+]= a (m, k) · b (k, n)` with explicit (row, column) strides for `dst`, `a` and
/// `b`: lets a product land in a column block of a wider matrix (or in its transpose), or read a
/// column block of one, without copies. The `dst` strides must map distinct (i, j) to distinct
/// elements.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm_strided(
    dst: &mut [f32],
    dst_st: (usize, usize),
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
        extent(m, n, dst_st) <= dst.len(),
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
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_st.0 + j * dst_st.1] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: the asserts above bound every index gemm derives from (m, k, n) and these strides
    // inside `dst`, `a` and `b` (strides are non-negative, so the extent is the largest index);
    // `dst` is borrowed mutably, so it aliases neither input, and its strides are injective
    // (the caller's contract), so no element is written twice.
    unsafe {
        gemm::gemm(
            /* m: usize = */ m,
            /* n: usize = */ n,
            /* k: usize = */ k,
            /* dst: *mut T = */ dst.as_mut_ptr(),
            /* dst_cs: isize = */ dst_st.1 as isize,
            /* dst_rs: isize = */ dst_st.0 as isize,
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
}
