//! SwiGLU, the Qwen MLP's activation: `out = silu(gate) ⊙ up`, `silu(g) = g·σ(g)`.
//! One unit per element; arithmetic in f32 whatever the storage type `F`.

use cubecl::prelude::*;

use crate::runtime::{Buffer, Gpu, dim, elementwise};

#[cube(launch)]
fn swiglu_forward_kernel<F: Float>(out: &mut Array<F>, gate: &Array<F>, up: &Array<F>, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        let g = f32::cast_from(gate[i]);
        let u = f32::cast_from(up[i]);
        let s = 1.0 / (1.0 + f32::exp(-g));
        out[i] = F::cast_from(g * s * u);
    }
}

#[cube(launch)]
fn swiglu_backward_kernel<F: Float>(
    dgate: &mut Array<F>,
    dup: &mut Array<F>,
    dout: &Array<F>,
    gate: &Array<F>,
    up: &Array<F>,
    n: u32,
) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        let g = f32::cast_from(gate[i]);
        let u = f32::cast_from(up[i]);
        let d = f32::cast_from(dout[i]);
        let s = 1.0 / (1.0 + f32::exp(-g));
        dgate[i] = F::cast_from(f32::cast_from(dgate[i]) + d * u * s * (1.0 + g * (1.0 - s)));
        dup[i] = F::cast_from(f32::cast_from(dup[i]) + d * g * s);
    }
}

/// out (n) = silu(gate (n)) ⊙ up (n), `silu(g) = g·σ(g)`. Overwrites `out`.
pub fn swiglu_forward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, F>,
    gate: &Buffer<R, F>,
    up: &Buffer<R, F>,
) {
    let n = out.len();
    assert!(
        gate.len() == n && up.len() == n,
        "swiglu_forward: out, gate and up must all have {n} elements"
    );
    let (count, cube) = elementwise(n);
    swiglu_forward_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        out.arg(),
        gate.arg(),
        up.arg(),
        dim("n", n),
    );
}

/// Accumulates dgate (n) += dout ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))) and dup (n) += dout ⊙ silu(g).
pub fn swiglu_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dgate: &Buffer<R, F>,
    dup: &Buffer<R, F>,
    dout: &Buffer<R, F>,
    gate: &Buffer<R, F>,
    up: &Buffer<R, F>,
) {
    let n = dout.len();
    assert!(
        dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n,
        "swiglu_backward: all five buffers must have {n} elements"
    );
    let (count, cube) = elementwise(n);
    swiglu_backward_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        dgate.arg(),
        dup.arg(),
        dout.arg(),
        gate.arg(),
        up.arg(),
        dim("n", n),
    );
}
