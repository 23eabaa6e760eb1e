//! Column sums over many rows (`dst (c) += Σ_rows f(row)`), the weight/bias gradients of row-wise
//! ops. Two stages without atomics, so results do not depend on scheduling: each unit sums one
//! column over a chunk of `ROWS_PER_CHUNK` rows into a partial (chunks, c), then one unit per
//! column adds the partials in chunk order.

use cubecl::prelude::*;

use crate::runtime::{Buffer, Gpu, dim, elementwise};

/// Rows summed by one unit in the first stage.
pub(crate) const ROWS_PER_CHUNK: usize = 64;

/// What the first stage sums per row and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RowTerm {
    /// `a[r, j]` (bias gradients).
    Plain,
    /// `a[r, j] · b[r, j] · s[r]` (RMSNorm's weight gradient: dout ⊙ x · rstd).
    ProductScaled,
}

#[cube(launch)]
fn colsum_partial_kernel<F: Float>(
    partial: &mut Array<f32>,
    a: &Array<F>,
    b: &Array<F>,
    s: &Array<f32>,
    n: u32,
    c: u32,
    chunks: u32,
    #[comptime] rows_per_chunk: u32,
    #[comptime] product: bool,
) {
    let i = ABSOLUTE_POS;
    if i < (chunks * c) as usize {
        let chunk = i as u32 / c;
        let j = i as u32 % c;
        let r0 = chunk * rows_per_chunk;
        let mut r1 = r0 + rows_per_chunk;
        if r1 > n {
            r1 = n;
        }
        let mut acc = 0.0f32;
        for r in r0..r1 {
            let at = (r * c + j) as usize;
            if comptime![product] {
                acc += f32::cast_from(a[at]) * f32::cast_from(b[at]) * s[r as usize];
            } else {
                acc += f32::cast_from(a[at]);
            }
        }
        partial[i] = acc;
    }
}

#[cube(launch)]
fn colsum_finish_kernel<F: Float>(dst: &mut Array<F>, partial: &Array<f32>, chunks: u32, c: u32) {
    let j = ABSOLUTE_POS;
    if j < c as usize {
        let mut acc = 0.0f32;
        for k in 0..chunks {
            acc += partial[(k * c) as usize + j];
        }
        dst[j] = F::cast_from(f32::cast_from(dst[j]) + acc);
    }
}

/// dst (c) += Σ_r term(r, ·) over the n rows of a (n, c) [, b (n, c), s (n)].
#[allow(clippy::too_many_arguments)]
pub(crate) fn colsum_accumulate<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dst: &Buffer<R, F>,
    term: RowTerm,
    a: &Buffer<R, F>,
    b: &Buffer<R, F>,
    s: &Buffer<R, f32>,
    n: usize,
    c: usize,
) {
    if n == 0 || c == 0 {
        return;
    }
    let chunks = n.div_ceil(ROWS_PER_CHUNK);
    let partial = gpu.alloc::<f32>(chunks * c);
    let (count, cube) = elementwise(chunks * c);
    colsum_partial_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        partial.arg(),
        a.arg(),
        b.arg(),
        s.arg(),
        dim("n", n),
        dim("c", c),
        dim("chunks", chunks),
        ROWS_PER_CHUNK as u32,
        term == RowTerm::ProductScaled,
    );
    let (count, cube) = elementwise(c);
    colsum_finish_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        dst.arg(),
        partial.arg(),
        dim("chunks", chunks),
        dim("c", c),
    );
}
