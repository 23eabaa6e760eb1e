//! Element-wise helpers: the residual add (`acc += x`, also used to sum gradient branches: the
//! backward of `a + b` is the identity), scaling, filling and the element-wise product (LoRA
//! dropout masks). One unit per element; arithmetic in f32 whatever the storage type.

use cubecl::prelude::*;

use crate::runtime::{Buffer, Gpu, dim, elementwise};

#[cube(launch)]
fn fill_kernel<E: Numeric>(out: &mut Array<E>, value: f32, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        out[i] = E::cast_from(value);
    }
}

#[cube(launch)]
fn cast_kernel<A: Float, B: Float>(out: &mut Array<B>, x: &Array<A>, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        out[i] = B::cast_from(x[i]);
    }
}

#[cube(launch)]
fn add_kernel<F: Float>(acc: &mut Array<F>, x: &Array<F>, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        acc[i] = F::cast_from(f32::cast_from(acc[i]) + f32::cast_from(x[i]));
    }
}

#[cube(launch)]
fn scale_kernel<F: Float>(x: &mut Array<F>, scale: f32, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        x[i] = F::cast_from(f32::cast_from(x[i]) * scale);
    }
}

#[cube(launch)]
fn mul_kernel<F: Float>(out: &mut Array<F>, a: &Array<F>, b: &Array<F>, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        out[i] = F::cast_from(f32::cast_from(a[i]) * f32::cast_from(b[i]));
    }
}

/// Sets every element of `out` to `value`.
pub fn fill<R: Runtime, E: Numeric + CubeElement>(gpu: &Gpu<R>, out: &Buffer<R, E>, value: f32) {
    let n = out.len();
    let (count, cube) = elementwise(n);
    fill_kernel::launch::<E, R>(gpu.client(), count, cube, out.arg(), value, dim("n", n));
}

/// A new buffer of `len` zeros.
pub fn zeros<R: Runtime, E: Numeric + CubeElement>(gpu: &Gpu<R>, len: usize) -> Buffer<R, E> {
    let buf = gpu.alloc(len);
    fill(gpu, &buf, 0.0);
    buf
}

/// out (n) = x (n) converted to `B` (e.g. f32 master weights to a bf16 working copy).
pub fn cast<R: Runtime, A: Float + CubeElement, B: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, B>,
    x: &Buffer<R, A>,
) {
    let n = x.len();
    assert_eq!(out.len(), n, "cast: out has {} elements, x {n}", out.len());
    let (count, cube) = elementwise(n);
    cast_kernel::launch::<A, B, R>(gpu.client(), count, cube, out.arg(), x.arg(), dim("n", n));
}

/// `acc += x`, element-wise. acc (n), x (n).
pub fn residual_forward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    acc: &Buffer<R, F>,
    x: &Buffer<R, F>,
) {
    let n = acc.len();
    assert_eq!(
        x.len(),
        n,
        "residual_forward: acc has {n} elements, x {}",
        x.len()
    );
    let (count, cube) = elementwise(n);
    add_kernel::launch::<F, R>(gpu.client(), count, cube, acc.arg(), x.arg(), dim("n", n));
}

/// Multiplies every element of `x` by `scale` (gradient clipping, loss normalisation).
pub fn scale_in_place<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    x: &Buffer<R, F>,
    scale: f32,
) {
    let n = x.len();
    let (count, cube) = elementwise(n);
    scale_kernel::launch::<F, R>(gpu.client(), count, cube, x.arg(), scale, dim("n", n));
}

/// out (n) = a (n) ⊙ b (n). Overwrites `out`.
pub fn mul<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, F>,
    a: &Buffer<R, F>,
    b: &Buffer<R, F>,
) {
    let n = out.len();
    assert!(
        a.len() == n && b.len() == n,
        "mul: all three buffers must have {n} elements"
    );
    let (count, cube) = elementwise(n);
    mul_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        out.arg(),
        a.arg(),
        b.arg(),
        dim("n", n),
    );
}
