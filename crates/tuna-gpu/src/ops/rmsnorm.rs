//! RMSNorm as in Hugging Face `Qwen2RMSNorm` (also Qwen3's per-head `q_norm`/`k_norm`):
//! `y = (x · rsqrt(mean(x²) + eps)) · weight`, computed in f32.
//! One cube per row; the row sums go through [`crate::reduce`].

use cubecl::prelude::*;

use super::colsum::{RowTerm, colsum_accumulate};
use crate::reduce::cube_sum;
use crate::runtime::{Buffer, Gpu, dim, grid, row_units};

#[cube(launch)]
fn rmsnorm_forward_kernel<F: Float>(
    out: &mut Array<F>,
    rstd: &mut Array<f32>,
    inp: &Array<F>,
    weight: &Array<F>,
    n: u32,
    c: u32,
    eps: f32,
    #[comptime] units: usize,
    #[comptime] plane: bool,
) {
    let row = CUBE_POS;
    if row < n as usize {
        let base = row * c as usize;
        let mut ss = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < c as usize {
            let x = f32::cast_from(inp[base + j]);
            ss += x * x;
            j += units;
        }
        let total = cube_sum(ss, units, plane);
        let r = 1.0 / f32::sqrt(total / f32::cast_from(c) + eps);
        if UNIT_POS == 0 {
            rstd[row] = r;
        }
        j = UNIT_POS as usize;
        while j < c as usize {
            // Same association as HF: normalise first, then scale by the weight.
            let x = f32::cast_from(inp[base + j]);
            out[base + j] = F::cast_from((x * r) * f32::cast_from(weight[j]));
            j += units;
        }
    }
}

#[cube(launch)]
fn rmsnorm_backward_kernel<F: Float>(
    dinp: &mut Array<F>,
    dout: &Array<F>,
    inp: &Array<F>,
    weight: &Array<F>,
    rstd: &Array<f32>,
    n: u32,
    c: u32,
    #[comptime] units: usize,
    #[comptime] plane: bool,
) {
    let row = CUBE_POS;
    if row < n as usize {
        let base = row * c as usize;
        let r = rstd[row];
        let mut dot = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < c as usize {
            dot += f32::cast_from(dout[base + j])
                * f32::cast_from(weight[j])
                * f32::cast_from(inp[base + j]);
            j += units;
        }
        let total = cube_sum(dot, units, plane);
        let coef = r * r * r * total / f32::cast_from(c);
        j = UNIT_POS as usize;
        while j < c as usize {
            let g = f32::cast_from(dout[base + j]) * f32::cast_from(weight[j]);
            let x = f32::cast_from(inp[base + j]);
            dinp[base + j] = F::cast_from(f32::cast_from(dinp[base + j]) + r * g - coef * x);
            j += units;
        }
    }
}

/// out (n, c), rstd (n) saved for backward, inp (n, c), weight (c). Overwrites `out` and `rstd`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, F>,
    rstd: &Buffer<R, f32>,
    inp: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    n: usize,
    c: usize,
    eps: f32,
) {
    assert_eq!(out.len(), n * c, "rmsnorm_forward: out");
    assert_eq!(rstd.len(), n, "rmsnorm_forward: rstd");
    assert_eq!(inp.len(), n * c, "rmsnorm_forward: inp");
    assert_eq!(weight.len(), c, "rmsnorm_forward: weight");
    if n == 0 || c == 0 {
        return;
    }
    let units = row_units(c);
    rmsnorm_forward_kernel::launch::<F, R>(
        gpu.client(),
        grid(n),
        CubeDim::new_1d(units as u32),
        out.arg(),
        rstd.arg(),
        inp.arg(),
        weight.arg(),
        dim("n", n),
        dim("c", c),
        eps,
        units,
        gpu.plane(),
    );
}

/// Accumulates dinp (n, c) and, if given, dweight (c). dout (n, c), inp (n, c), weight (c),
/// rstd (n) from the forward.
///
/// With `r = rstd` and `g = dout ⊙ weight`: `dx = r·g − x · r³/c · Σ(g ⊙ x)`, `dw += Σ_rows dout ⊙ x·r`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dinp: &Buffer<R, F>,
    dweight: Option<&Buffer<R, F>>,
    dout: &Buffer<R, F>,
    inp: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    rstd: &Buffer<R, f32>,
    n: usize,
    c: usize,
) {
    assert_eq!(dinp.len(), n * c, "rmsnorm_backward: dinp");
    assert_eq!(dout.len(), n * c, "rmsnorm_backward: dout");
    assert_eq!(inp.len(), n * c, "rmsnorm_backward: inp");
    assert_eq!(weight.len(), c, "rmsnorm_backward: weight");
    assert_eq!(rstd.len(), n, "rmsnorm_backward: rstd");
    if n == 0 || c == 0 {
        return;
    }
    let units = row_units(c);
    rmsnorm_backward_kernel::launch::<F, R>(
        gpu.client(),
        grid(n),
        CubeDim::new_1d(units as u32),
        dinp.arg(),
        dout.arg(),
        inp.arg(),
        weight.arg(),
        rstd.arg(),
        dim("n", n),
        dim("c", c),
        units,
        gpu.plane(),
    );
    if let Some(dw) = dweight {
        assert_eq!(dw.len(), c, "rmsnorm_backward: dweight");
        colsum_accumulate(gpu, dw, RowTerm::ProductScaled, dout, inp, rstd, n, c);
    }
}
