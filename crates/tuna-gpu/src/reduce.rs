//! Reductions across the units of one cube, shared by the row kernels.
//!
//! Two paths, picked when the kernel is compiled: a tree in shared memory (portable: lavapipe
//! and other CPU adapters get no plane operations from CubeCL), and plane (warp/subgroup)
//! reductions whose per-plane results are then folded through shared memory. Every unit gets
//! the result. All units of the cube must call them (they synchronise the cube).

use cubecl::prelude::*;

/// Σ `value` over the `units` units of the cube (`units` = the cube size, a power of two).
#[cube]
pub fn cube_sum(value: f32, #[comptime] units: usize, #[comptime] plane: bool) -> f32 {
    cube_reduce(value, units, plane, false)
}

/// max `value` over the `units` units of the cube.
#[cube]
pub fn cube_max(value: f32, #[comptime] units: usize, #[comptime] plane: bool) -> f32 {
    cube_reduce(value, units, plane, true)
}

#[cube]
fn combine(a: f32, b: f32, #[comptime] is_max: bool) -> f32 {
    if comptime![is_max] {
        f32::max(a, b)
    } else {
        a + b
    }
}

#[cube]
fn cube_reduce(
    value: f32,
    #[comptime] units: usize,
    #[comptime] plane: bool,
    #[comptime] is_max: bool,
) -> f32 {
    let mut smem = SharedMemory::<f32>::new(units);
    let unit = UNIT_POS as usize;
    let result = if comptime![plane] {
        let partial = if comptime![is_max] {
            plane_max(value)
        } else {
            plane_sum(value)
        };
        if UNIT_POS_PLANE == 0 {
            smem[unit / PLANE_DIM as usize] = partial;
        }
        sync_cube();
        // Every unit folds the per-plane results in the same order: no broadcast step, and any
        // plane size (8 on lavapipe, 32 on NVIDIA) works.
        let planes = CUBE_DIM / PLANE_DIM;
        let mut acc = smem[0];
        for i in 1..planes {
            acc = combine(acc, smem[i as usize], is_max);
        }
        acc
    } else {
        smem[unit] = value;
        sync_cube();
        let mut stride = CUBE_DIM / 2;
        while stride > 0 {
            if UNIT_POS < stride {
                smem[unit] = combine(smem[unit], smem[unit + stride as usize], is_max);
            }
            sync_cube();
            stride /= 2;
        }
        smem[0]
    };
    // Nobody may start the next reduction (which may reuse this memory) before all have read.
    sync_cube();
    result
}
