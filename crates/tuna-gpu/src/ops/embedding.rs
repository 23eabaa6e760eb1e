//! Token embedding lookup (rows of the (v, c) table) and its backward. The same two kernels
//! gather and scatter-add rows by index elsewhere (the labelled rows fed to the LM head).
//!
//! Ids are validated by the caller (the tokenizer and data pipeline know the vocabulary); the
//! kernels run in checked mode, so a bad id reads zeros instead of foreign memory.

use cubecl::prelude::*;

use crate::runtime::{Buffer, Gpu, dim, elementwise};

#[cube(launch)]
fn gather_rows_kernel<W: Float, F: Float>(
    out: &mut Array<F>,
    ids: &Array<u32>,
    table: &Array<W>,
    bt: u32,
    c: u32,
) {
    let i = ABSOLUTE_POS;
    if i < (bt * c) as usize {
        let t = i as u32 / c;
        let j = i as u32 % c;
        out[i] = F::cast_from(table[(ids[t as usize] * c + j) as usize]);
    }
}

/// One unit per column walks all tokens in order, so repeated ids add up in the same order as
/// on the CPU, without atomics, and the result is bit-reproducible.
#[cube(launch)]
fn scatter_add_rows_kernel<F: Float>(
    dtable: &mut Array<F>,
    dout: &Array<F>,
    ids: &Array<u32>,
    bt: u32,
    c: u32,
) {
    let j = ABSOLUTE_POS;
    if j < c as usize {
        for t in 0..bt {
            let at = (ids[t as usize] * c) as usize + j;
            dtable[at] = F::cast_from(
                f32::cast_from(dtable[at]) + f32::cast_from(dout[(t * c) as usize + j]),
            );
        }
    }
}

/// out (bt, c) = table (v, c) rows `ids` (bt), converted to `F`. Overwrites `out`.
pub fn embedding_forward<R: Runtime, W: Float + CubeElement, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, F>,
    ids: &Buffer<R, u32>,
    table: &Buffer<R, W>,
    c: usize,
) {
    let bt = ids.len();
    assert_eq!(out.len(), bt * c, "embedding_forward: out");
    assert!(
        c > 0 && table.len().is_multiple_of(c),
        "embedding_forward: table"
    );
    if bt == 0 {
        return;
    }
    let (count, cube) = elementwise(bt * c);
    gather_rows_kernel::launch::<W, F, R>(
        gpu.client(),
        count,
        cube,
        out.arg(),
        ids.arg(),
        table.arg(),
        dim("bt", bt),
        dim("c", c),
    );
}

/// Accumulates: dtable (v, c) rows `ids` (bt) += dout (bt, c) rows.
pub fn embedding_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dtable: &Buffer<R, F>,
    dout: &Buffer<R, F>,
    ids: &Buffer<R, u32>,
    c: usize,
) {
    let bt = ids.len();
    assert_eq!(dout.len(), bt * c, "embedding_backward: dout");
    assert!(
        c > 0 && dtable.len().is_multiple_of(c),
        "embedding_backward: dtable"
    );
    if bt == 0 {
        return;
    }
    let (count, cube) = elementwise(c);
    scatter_add_rows_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        dtable.arg(),
        dout.arg(),
        ids.arg(),
        dim("bt", bt),
        dim("c", c),
    );
}
