//! LoRA products (<https://arxiv.org/abs/2106.09685>) around a frozen linear layer, as the CPU
//! model computes them: `y += s · (dropout(x) · Aᵀ) · Bᵀ` with `A (r, in)`, `B (out, r)`, in f32.
//! Dropout is a host-made keep mask (0 or 1/(1−p) per element), so both backends drop the same
//! elements.

use cubecl::prelude::*;
use tuna_engine::ops::matmul::Layout;

use super::elementwise::mul;
use super::matmul::gemm;
use crate::error::Result;
use crate::runtime::{Buffer, Gpu, dim, elementwise};

#[cube(launch)]
fn scale_copy_kernel(out: &mut Array<f32>, x: &Array<f32>, scale: f32, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        out[i] = x[i] * scale;
    }
}

#[cube(launch)]
fn add_product_kernel(acc: &mut Array<f32>, a: &Array<f32>, b: &Array<f32>, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        acc[i] += a[i] * b[i];
    }
}

/// out (n) = s · x (n).
fn scale_copy<R: Runtime>(gpu: &Gpu<R>, out: &Buffer<R, f32>, x: &Buffer<R, f32>, s: f32) {
    let n = x.len();
    let (count, cube) = elementwise(n);
    scale_copy_kernel::launch::<R>(
        gpu.client(),
        count,
        cube,
        out.arg(),
        x.arg(),
        s,
        dim("n", n),
    );
}

/// The adapter's input: x itself, or x ⊙ keep when dropout is on.
fn dropped<R: Runtime>(
    gpu: &Gpu<R>,
    x: &Buffer<R, f32>,
    keep: Option<&Buffer<R, f32>>,
) -> Buffer<R, f32> {
    match keep {
        Some(k) => {
            let out = gpu.alloc(x.len());
            mul(gpu, &out, x, k);
            out
        }
        None => x.clone(),
    }
}

/// Shapes of one adapted layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraDims {
    /// Rows (tokens) of the batch.
    pub bt: usize,
    pub in_features: usize,
    pub rank: usize,
    pub out_features: usize,
    /// alpha / r (or alpha / √r with rsLoRA).
    pub scale: f32,
}

/// Accumulates y (bt, out) += s · (x_in · Aᵀ) · Bᵀ and overwrites u (bt, r) = x_in · Aᵀ, saved
/// for the backward; x_in = x (bt, in) ⊙ keep (bt, in) when a dropout mask is given.
#[allow(clippy::too_many_arguments)]
pub fn lora_forward<R: Runtime>(
    gpu: &Gpu<R>,
    y: &Buffer<R, f32>,
    u: &Buffer<R, f32>,
    x: &Buffer<R, f32>,
    keep: Option<&Buffer<R, f32>>,
    a: &Buffer<R, f32>,
    b: &Buffer<R, f32>,
    d: LoraDims,
) -> Result<()> {
    let (bt, i, r, o) = (d.bt, d.in_features, d.rank, d.out_features);
    let x_in = dropped(gpu, x, keep);
    gemm(
        gpu,
        u,
        &x_in,
        Layout::Normal,
        a,
        Layout::Transposed,
        bt,
        i,
        r,
        false,
    )?;
    let us = gpu.alloc(bt * r);
    scale_copy(gpu, &us, u, d.scale);
    gemm(
        gpu,
        y,
        &us,
        Layout::Normal,
        b,
        Layout::Transposed,
        bt,
        r,
        o,
        true,
    )
}

/// Backward of [`lora_forward`]; accumulates dx (bt, in), da (r, in) and db (out, r) from
/// dy (bt, out), the forward's x, keep and saved u.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward<R: Runtime>(
    gpu: &Gpu<R>,
    dx: &Buffer<R, f32>,
    da: &Buffer<R, f32>,
    db: &Buffer<R, f32>,
    dy: &Buffer<R, f32>,
    x: &Buffer<R, f32>,
    keep: Option<&Buffer<R, f32>>,
    u: &Buffer<R, f32>,
    a: &Buffer<R, f32>,
    b: &Buffer<R, f32>,
    d: LoraDims,
) -> Result<()> {
    let (bt, i, r, o) = (d.bt, d.in_features, d.rank, d.out_features);
    // dB (o, r) += s · dyᵀ · u
    let us = gpu.alloc(bt * r);
    scale_copy(gpu, &us, u, d.scale);
    gemm(
        gpu,
        db,
        dy,
        Layout::Transposed,
        &us,
        Layout::Normal,
        o,
        bt,
        r,
        true,
    )?;
    // du (bt, r) = s · dy · B
    let du = gpu.alloc(bt * r);
    gemm(
        gpu,
        &du,
        dy,
        Layout::Normal,
        b,
        Layout::Normal,
        bt,
        o,
        r,
        false,
    )?;
    super::elementwise::scale_in_place(gpu, &du, d.scale);
    // dA (r, in) += duᵀ · x_in
    let x_in = dropped(gpu, x, keep);
    gemm(
        gpu,
        da,
        &du,
        Layout::Transposed,
        &x_in,
        Layout::Normal,
        r,
        bt,
        i,
        true,
    )?;
    // dx += (du · A) ⊙ keep
    match keep {
        None => gemm(
            gpu,
            dx,
            &du,
            Layout::Normal,
            a,
            Layout::Normal,
            bt,
            r,
            i,
            true,
        ),
        Some(k) => {
            let dxd = gpu.alloc(bt * i);
            gemm(
                gpu,
                &dxd,
                &du,
                Layout::Normal,
                a,
                Layout::Normal,
                bt,
                r,
                i,
                false,
            )?;
            let n = bt * i;
            let (count, cube) = elementwise(n);
            add_product_kernel::launch::<R>(
                gpu.client(),
                count,
                cube,
                dx.arg(),
                dxd.arg(),
                k.arg(),
                dim("n", n),
            );
            Ok(())
        }
    }
}
