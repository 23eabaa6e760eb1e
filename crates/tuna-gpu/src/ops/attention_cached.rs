//! Attention of new tokens against a key/value cache, for generation: `tq` query rows at
//! positions `past..past+tq` (the whole prompt at prefill, one token per decode step) attend to
//! cached keys `0..=past+t` of one sequence (causal), grouped-query as in [`super::attention`],
//! whose tiles, online softmax and row helpers it reuses. No log-sum-exp is kept (generation has
//! no backward) and no `(tq, tk)` buffer exists. Also the cache append (`kv_append`).
//!
//! One unit owns one query row, so a decode step (`tq = 1`) runs one unit per head that streams
//! the whole cache: right and simple, not yet the split-over-keys ("flash-decoding") kernel a
//! long context on a real GPU wants.

use cubecl::prelude::*;

use super::attention::{
    ROWS_PER_CUBE, TILE, load_row, online_softmax_tile, softmax_scale, stage_rows, write_normalized,
};
use crate::runtime::{Buffer, Gpu, dim, elementwise, grid};

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_cached_kernel<F: Float>(
    out: &mut Array<F>,
    q: &Array<F>,
    k_cache: &Array<F>,
    v_cache: &Array<F>,
    past: u32,
    tq: u32,
    nh: u32,
    nkv: u32,
    scale: f32,
    #[comptime] hd: usize,
) {
    let units = comptime![ROWS_PER_CUBE];
    let tile_rows = comptime![TILE];
    let cube = CUBE_POS as u32;
    let h = cube % nh;
    let t0 = (cube / nh) * units as u32;
    // Uniform over the cube (the syncs inside are reached by all its units).
    if t0 < tq {
        let kvh = h / (nh / nkv);
        let t = t0 + UNIT_POS;
        let valid = t < tq;
        let mut t_last = t0 + units as u32 - 1;
        if t_last >= tq {
            t_last = tq - 1;
        }
        // The last key any row of this cube sees.
        let key_last = past + t_last;
        let qr = load_row(q, t, nh, h, valid, hd);
        let mut acc = Array::<f32>::new(hd);
        for d in 0..hd {
            acc[d] = 0.0;
        }
        let mut m = f32::new(f32::MIN);
        let mut l = 0.0f32;
        let mut ks = SharedMemory::<f32>::new(tile_rows * hd);
        let mut vs = SharedMemory::<f32>::new(tile_rows * hd);
        let mut kt = 0u32;
        while kt <= key_last {
            stage_rows(
                &mut ks, k_cache, kt, key_last, nkv, kvh, hd, tile_rows, units,
            );
            stage_rows(
                &mut vs, v_cache, kt, key_last, nkv, kvh, hd, tile_rows, units,
            );
            sync_cube();
            if valid {
                let (m_new, l_new) = online_softmax_tile(
                    &qr,
                    &ks,
                    &vs,
                    &mut acc,
                    m,
                    l,
                    kt,
                    0u32,
                    past + t,
                    scale,
                    hd,
                    tile_rows,
                );
                m = m_new;
                l = l_new;
            }
            sync_cube();
            kt += tile_rows as u32;
        }
        if valid {
            write_normalized(out, &acc, l, ((t * nh + h) as usize) * hd, hd);
        }
    }
}

#[cube(launch)]
fn kv_append_kernel<F: Float>(cache: &mut Array<F>, x: &Array<F>, offset: u32, n: u32) {
    let i = ABSOLUTE_POS;
    if i < n as usize {
        cache[offset as usize + i] = x[i];
    }
}

/// out (tq, nh, hd) = attention of q (tq, nh, hd), the tokens at positions `past..past+tq`, over
/// the first `past + tq` rows of k_cache/v_cache (capacity, nkv, hd), which already hold them.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, F>,
    q: &Buffer<R, F>,
    k_cache: &Buffer<R, F>,
    v_cache: &Buffer<R, F>,
    past: usize,
    tq: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    assert!(
        nkv > 0 && nh.is_multiple_of(nkv),
        "attention_cached: nh {nh} is not a multiple of nkv {nkv}"
    );
    assert_eq!(q.len(), tq * nh * hd, "attention_cached: q");
    assert_eq!(out.len(), tq * nh * hd, "attention_cached: out");
    let tk = past + tq;
    assert!(
        k_cache.len() >= tk * nkv * hd && v_cache.len() == k_cache.len(),
        "attention_cached: the cache holds fewer than {tk} rows"
    );
    if tq == 0 || nh == 0 || hd == 0 {
        return;
    }
    attention_cached_kernel::launch::<F, R>(
        gpu.client(),
        grid(tq.div_ceil(ROWS_PER_CUBE) * nh),
        CubeDim::new_1d(ROWS_PER_CUBE as u32),
        out.arg(),
        q.arg(),
        k_cache.arg(),
        v_cache.arg(),
        dim("past", past),
        dim("tq", tq),
        dim("nh", nh),
        dim("nkv", nkv),
        softmax_scale(hd),
        hd,
    );
}

/// Writes x (rows, width) into cache (capacity, width) from row `at` on: the keys or values of
/// new tokens. (A buffer view cannot start there: views need 256-byte aligned offsets.)
pub fn kv_append<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    cache: &Buffer<R, F>,
    x: &Buffer<R, F>,
    at: usize,
    width: usize,
) {
    let n = x.len();
    assert!(
        width > 0 && n.is_multiple_of(width) && (at * width + n) <= cache.len(),
        "kv_append: {n} values at row {at} of a cache of {} (width {width})",
        cache.len()
    );
    let (count, cube) = elementwise(n);
    kv_append_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        cache.arg(),
        x.arg(),
        dim("offset", at * width),
        dim("n", n),
    );
}
