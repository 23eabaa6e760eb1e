//! Rotary position embedding (RoPE) in Hugging Face's non-interleaved "rotate_half" form: lane
//! `i` pairs with lane `i + hd/2`. The cos/sin table is the CPU engine's `RopeTable`, uploaded
//! once, so both backends rotate by bit-identical angles.

use cubecl::prelude::*;
use tuna_engine::ops::rope::RopeTable;

use crate::runtime::{Buffer, Gpu, dim, elementwise};

/// The CPU `RopeTable`'s cos/sin (max_pos, hd/2) on the device.
pub struct GpuRopeTable<R: Runtime> {
    cos: Buffer<R, f32>,
    sin: Buffer<R, f32>,
    head_dim: usize,
    max_pos: usize,
}

impl<R: Runtime> GpuRopeTable<R> {
    pub fn upload(gpu: &Gpu<R>, table: &RopeTable) -> Self {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for pos in 0..table.max_pos() {
            let (c, s) = table.row(pos);
            cos.extend_from_slice(c);
            sin.extend_from_slice(s);
        }
        GpuRopeTable {
            cos: gpu.upload(&cos),
            sin: gpu.upload(&sin),
            head_dim: table.head_dim(),
            max_pos: table.max_pos(),
        }
    }

    pub fn max_pos(&self) -> usize {
        self.max_pos
    }
}

#[cube(launch)]
fn rope_kernel<F: Float>(
    x: &mut Array<F>,
    positions: &Array<u32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    bt: u32,
    nh: u32,
    hd: u32,
    #[comptime] inverse: bool,
) {
    let i = ABSOLUTE_POS as u32;
    let half = hd / 2;
    if i < bt * nh * half {
        let t = i / (nh * half);
        let h = (i / half) % nh;
        let k = i % half;
        let at = (positions[t as usize] * half + k) as usize;
        let cs = cos[at];
        let sn = sin[at];
        let lo = ((t * nh + h) * hd + k) as usize;
        let hi = lo + half as usize;
        let a = f32::cast_from(x[lo]);
        let b = f32::cast_from(x[hi]);
        if comptime![inverse] {
            x[lo] = F::cast_from(a * cs + b * sn);
            x[hi] = F::cast_from(b * cs - a * sn);
        } else {
            x[lo] = F::cast_from(a * cs - b * sn);
            x[hi] = F::cast_from(b * cs + a * sn);
        }
    }
}

fn rotate<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    x: &Buffer<R, F>,
    positions: &Buffer<R, u32>,
    table: &GpuRopeTable<R>,
    nh: usize,
    hd: usize,
    inverse: bool,
) {
    let bt = positions.len();
    assert_eq!(
        x.len(),
        bt * nh * hd,
        "rope: x has {} elements, want {bt}x{nh}x{hd}",
        x.len()
    );
    assert_eq!(
        table.head_dim, hd,
        "rope: table built for head_dim {}",
        table.head_dim
    );
    let n = bt * nh * hd / 2;
    if n == 0 {
        return;
    }
    let (count, cube) = elementwise(n);
    rope_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        x.arg(),
        positions.arg(),
        table.cos.arg(),
        table.sin.arg(),
        dim("bt", bt),
        dim("nh", nh),
        dim("hd", hd),
        inverse,
    );
}

/// In place on x (bt, nh, hd): rotate each head of token t by positions[t] (< table.max_pos()).
pub fn rope_forward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    x: &Buffer<R, F>,
    positions: &Buffer<R, u32>,
    table: &GpuRopeTable<R>,
    nh: usize,
    hd: usize,
) {
    rotate(gpu, x, positions, table, nh, hd, false);
}

/// In place: dx ← Rᵀ dx (rotation by −angle). As on the CPU, RoPE is applied in place, so its
/// backward maps the gradient of the rotated values to that of the unrotated ones in the same
/// buffer instead of accumulating.
pub fn rope_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dx: &Buffer<R, F>,
    positions: &Buffer<R, u32>,
    table: &GpuRopeTable<R>,
    nh: usize,
    hd: usize,
) {
    rotate(gpu, dx, positions, table, nh, hd, true);
}
