//! AdamW exactly as the CPU engine (and `torch.optim.AdamW`, foreach=False) computes it, on
//! f32 master weights and f32 moments; also the global gradient norm used for clipping.
//! <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>

use cubecl::prelude::*;
use tuna_engine::ops::adamw::AdamWConfig;

use crate::reduce::cube_sum;
use crate::runtime::{Buffer, Gpu, dim, elementwise, grid};

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    params: &mut Array<f32>,
    grads: &Array<f32>,
    m: &mut Array<f32>,
    v: &mut Array<f32>,
    decay: f32,
    w1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    n: u32,
) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        let g = grads[i];
        let p = params[i] * decay;
        // torch.lerp with weight < 0.5 computes start + weight·(end − start).
        let mi = m[i] + w1 * (g - m[i]);
        let vi = v[i] * beta2 + one_minus_beta2 * (g * g);
        let denom = f32::sqrt(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        params[i] = p + (-step_size) * (mi / denom);
    }
}

#[cube(launch)]
fn sumsq_partial_kernel(
    partial: &mut Array<f32>,
    x: &Array<f32>,
    n: u32,
    #[comptime] units: usize,
    #[comptime] per_unit: u32,
    #[comptime] plane: bool,
) {
    // Cube b sums elements [b·units·per_unit, (b+1)·units·per_unit), strided by `units` so
    // neighbouring units read neighbouring elements.
    let base = CUBE_POS as u32 * units as u32 * per_unit;
    let mut acc = 0.0f32;
    for k in 0..per_unit {
        let i = base + k * units as u32 + UNIT_POS;
        if i < n {
            acc += x[i as usize] * x[i as usize];
        }
    }
    let total = cube_sum(acc, units, plane);
    if UNIT_POS == 0 {
        partial[CUBE_POS] = total;
    }
}

/// Units per cube and elements per unit of the sum-of-squares partials.
const SUMSQ_UNITS: usize = 256;
const SUMSQ_PER_UNIT: usize = 16;

/// One AdamW step (`step` counts from 1) over params, grads, m, v (all n). Updates params, m, v.
/// The per-step scalars are computed in f64 and rounded once, as the CPU engine does.
pub fn adamw_update<R: Runtime>(
    gpu: &Gpu<R>,
    params: &Buffer<R, f32>,
    grads: &Buffer<R, f32>,
    m: &Buffer<R, f32>,
    v: &Buffer<R, f32>,
    cfg: &AdamWConfig,
    step: u64,
) {
    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n,
        "adamw_update: params, grads, m and v must all have {n} elements"
    );
    assert!(step >= 1, "adamw_update: step counts from 1");
    if n == 0 {
        return;
    }
    // Same scalars as tuna_engine::ops::adamw (kept in step with it; see its doc comment).
    let (lr, b1, b2) = (cfg.lr as f64, cfg.beta1 as f64, cfg.beta2 as f64);
    let t = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let (count, cube) = elementwise(n);
    adamw_kernel::launch::<R>(
        gpu.client(),
        count,
        cube,
        params.arg(),
        grads.arg(),
        m.arg(),
        v.arg(),
        (1.0 - lr * cfg.weight_decay as f64) as f32,
        (1.0 - b1) as f32,
        cfg.beta2,
        (1.0 - b2) as f32,
        (lr / bc1) as f32,
        bc2.sqrt() as f32,
        cfg.eps,
        dim("n", n),
    );
}

/// `sqrt(Σ g²)` over all given buffers. Each cube sums its block in f32; the block sums are read
/// back and added in f64 in a fixed order (this waits for the device).
pub fn grad_norm<R: Runtime>(gpu: &Gpu<R>, grads: &[&Buffer<R, f32>]) -> crate::Result<f32> {
    let mut total = 0.0f64;
    for g in grads {
        let n = g.len();
        if n == 0 {
            continue;
        }
        let cubes = n.div_ceil(SUMSQ_UNITS * SUMSQ_PER_UNIT);
        let partial = gpu.alloc::<f32>(cubes);
        sumsq_partial_kernel::launch::<R>(
            gpu.client(),
            grid(cubes),
            CubeDim::new_1d(SUMSQ_UNITS as u32),
            partial.arg(),
            g.arg(),
            dim("n", n),
            SUMSQ_UNITS,
            SUMSQ_PER_UNIT as u32,
            gpu.plane(),
        );
        total += gpu
            .download(&partial)?
            .iter()
            .map(|&x| x as f64)
            .sum::<f64>();
    }
    Ok(total.sqrt() as f32)
}
