//! Causal grouped-query attention over packed sequences: a token attends only to earlier tokens
//! of its own sequence (block-diagonal causal mask); query head `h` reads kv head `h / (nh/nkv)`;
//! scale `1/sqrt(hd)`.
//!
//! FlashAttention-2 style (<https://arxiv.org/abs/2307.08691>): the forward streams key/value
//! tiles through shared memory with an online softmax and saves only the log-sum-exp of each
//! score row; the backward recomputes the probabilities from it. No `(t, t)` buffer exists in
//! either pass. The backward runs two kernels — dq per query row, dk/dv per key row (summing the
//! query heads of its group) — so no gradient is written by two units and no atomics are needed.
//!
//! One unit owns one row and keeps it (and its accumulators) in registers, so `hd` is a
//! compile-time constant of the kernel. Not supported: sliding windows, sinks, dropout.

use cubecl::prelude::*;

use crate::runtime::{Buffer, Gpu, dim, elementwise, grid};

/// Query rows (units) per cube in the forward and dq kernels; key rows per cube in dk/dv.
pub(crate) const ROWS_PER_CUBE: usize = 32;
/// Rows per tile staged in shared memory.
pub(crate) const TILE: usize = 16;

/// The sequence boundaries of a packed batch on the device: for each token, where its sequence
/// starts and ends (exclusive).
pub struct PackedSeqs<R: Runtime> {
    seq_start: Buffer<R, u32>,
    seq_end: Buffer<R, u32>,
    bt: usize,
}

impl<R: Runtime> PackedSeqs<R> {
    /// From the lengths of the packed sequences, in order (`bt = Σ seq_lens`).
    pub fn new(gpu: &Gpu<R>, seq_lens: &[usize]) -> Self {
        let bt: usize = seq_lens.iter().sum();
        let (mut start, mut end) = (Vec::with_capacity(bt), Vec::with_capacity(bt));
        let mut off = 0;
        for &len in seq_lens {
            start.extend(std::iter::repeat_n(dim("bt", off), len));
            end.extend(std::iter::repeat_n(dim("bt", off + len), len));
            off += len;
        }
        PackedSeqs {
            seq_start: gpu.upload(&start),
            seq_end: gpu.upload(&end),
            bt,
        }
    }

    /// Tokens in the batch.
    pub fn bt(&self) -> usize {
        self.bt
    }
}

pub(crate) fn softmax_scale(hd: usize) -> f32 {
    // As the CPU engine and HF: `head_dim ** -0.5` as a Python float, applied in f32.
    (1.0 / (hd as f64).sqrt()) as f32
}

/// Stages rows `first..first+TILE` (those `<= last`) of head `head` of x (bt, heads, hd) in
/// `tile` (TILE, hd), zero-filling rows past `last`. All units of the cube take part.
#[cube]
pub(crate) fn stage_rows<F: Float>(
    tile: &mut SharedMemory<f32>,
    x: &Array<F>,
    first: u32,
    last: u32,
    heads: u32,
    head: u32,
    #[comptime] hd: usize,
    #[comptime] rows: usize,
    #[comptime] units: usize,
) {
    let mut e = UNIT_POS as usize;
    while e < rows * hd {
        let row = first + (e / hd) as u32;
        let d = e % hd;
        let mut value = 0.0f32;
        if row <= last {
            value = f32::cast_from(x[((row * heads + head) as usize) * hd + d]);
        }
        tile[e] = value;
        e += units;
    }
}

/// Σ_d a[d] · tile[row·hd + d].
#[cube]
pub(crate) fn dot_row(
    a: &Array<f32>,
    tile: &SharedMemory<f32>,
    row: usize,
    #[comptime] hd: usize,
) -> f32 {
    let mut s = 0.0f32;
    for d in 0..hd {
        s += a[d] * tile[row * hd + d];
    }
    s
}

/// Loads row `row`, head `head` of x (bt, heads, hd) into a register array (zeros if invalid).
#[cube]
pub(crate) fn load_row<F: Float>(
    x: &Array<F>,
    row: u32,
    heads: u32,
    head: u32,
    valid: bool,
    #[comptime] hd: usize,
) -> Array<f32> {
    let mut r = Array::<f32>::new(hd);
    for d in 0..hd {
        let mut value = 0.0f32;
        if valid {
            value = f32::cast_from(x[((row * heads + head) as usize) * hd + d]);
        }
        r[d] = value;
    }
    r
}

/// One key/value tile `ks`/`vs` (rows `kt..kt+rows`) folded into the online softmax of one
/// query row `qr`: keys at positions `lo..=hi` count, the others are masked. Rescales `acc` in
/// place and returns the new running max and sum `(m, l)`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn online_softmax_tile(
    qr: &Array<f32>,
    ks: &SharedMemory<f32>,
    vs: &SharedMemory<f32>,
    acc: &mut Array<f32>,
    m: f32,
    l: f32,
    kt: u32,
    lo: u32,
    hi: u32,
    scale: f32,
    #[comptime] hd: usize,
    #[comptime] rows: usize,
) -> (f32, f32) {
    let mut m = m;
    let mut l = l;
    for r in 0..rows {
        let key = kt + r as u32;
        if key >= lo && key <= hi {
            let s = dot_row(qr, ks, r, hd) * scale;
            let m_new = f32::max(m, s);
            let corr = f32::exp(m - m_new);
            let p = f32::exp(s - m_new);
            l = l * corr + p;
            for d in 0..hd {
                acc[d] = acc[d] * corr + p * vs[r * hd + d];
            }
            m = m_new;
        }
    }
    (m, l)
}

/// out[base..base+hd] = acc / l: the finished output row of an online softmax.
#[cube]
pub(crate) fn write_normalized<F: Float>(
    out: &mut Array<F>,
    acc: &Array<f32>,
    l: f32,
    base: usize,
    #[comptime] hd: usize,
) {
    let inv = 1.0 / l;
    for d in 0..hd {
        out[base + d] = F::cast_from(acc[d] * inv);
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_forward_kernel<F: Float>(
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    seq_start: &Array<u32>,
    bt: u32,
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
    // Uniform over the cube, so the syncs inside are reached by all its units; false for the
    // spare cubes of a two-axis grid.
    if t0 < bt {
        let kvh = h / (nh / nkv);
        let t = t0 + UNIT_POS;
        let valid = t < bt;
        let mut t_last = t0 + units as u32 - 1;
        if t_last >= bt {
            t_last = bt - 1;
        }
        let mut my_start = 0u32;
        if valid {
            my_start = seq_start[t as usize];
        }
        let qr = load_row(q, t, nh, h, valid, hd);
        let mut acc = Array::<f32>::new(hd);
        for d in 0..hd {
            acc[d] = 0.0;
        }
        // Running max. f32::MIN, not −∞: WGSL has no infinity literal; exp(MIN − s) is 0 all
        // the same.
        let mut m = f32::new(f32::MIN);
        let mut l = 0.0f32;
        let mut ks = SharedMemory::<f32>::new(tile_rows * hd);
        let mut vs = SharedMemory::<f32>::new(tile_rows * hd);
        let mut kt = seq_start[t0 as usize];
        while kt <= t_last {
            stage_rows(&mut ks, k, kt, t_last, nkv, kvh, hd, tile_rows, units);
            stage_rows(&mut vs, v, kt, t_last, nkv, kvh, hd, tile_rows, units);
            sync_cube();
            if valid {
                let (m_new, l_new) = online_softmax_tile(
                    &qr, &ks, &vs, &mut acc, m, l, kt, my_start, t, scale, hd, tile_rows,
                );
                m = m_new;
                l = l_new;
            }
            sync_cube();
            kt += tile_rows as u32;
        }
        if valid {
            write_normalized(out, &acc, l, ((t * nh + h) as usize) * hd, hd);
            lse[(t * nh + h) as usize] = m + f32::ln(l);
        }
    }
}

/// delta (bt·nh) = Σ_d dout ⊙ out per row: the softmax backward's `D` term.
#[cube(launch)]
fn attention_delta_kernel<F: Float>(
    delta: &mut Array<f32>,
    dout: &Array<F>,
    out: &Array<F>,
    rows: u32,
    #[comptime] hd: usize,
) {
    let i = ABSOLUTE_POS;
    if i < rows as usize {
        let mut s = 0.0f32;
        for d in 0..hd {
            s += f32::cast_from(dout[i * hd + d]) * f32::cast_from(out[i * hd + d]);
        }
        delta[i] = s;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_dq_kernel<F: Float>(
    dq: &mut Array<F>,
    dout: &Array<F>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    seq_start: &Array<u32>,
    bt: u32,
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
    if t0 < bt {
        let kvh = h / (nh / nkv);
        let t = t0 + UNIT_POS;
        let valid = t < bt;
        let mut t_last = t0 + units as u32 - 1;
        if t_last >= bt {
            t_last = bt - 1;
        }
        let mut my_start = 0u32;
        let mut row_lse = 0.0f32;
        let mut row_delta = 0.0f32;
        if valid {
            my_start = seq_start[t as usize];
            row_lse = lse[(t * nh + h) as usize];
            row_delta = delta[(t * nh + h) as usize];
        }
        let qr = load_row(q, t, nh, h, valid, hd);
        let dor = load_row(dout, t, nh, h, valid, hd);
        let mut acc = Array::<f32>::new(hd);
        for d in 0..hd {
            acc[d] = 0.0;
        }
        let mut ks = SharedMemory::<f32>::new(tile_rows * hd);
        let mut vs = SharedMemory::<f32>::new(tile_rows * hd);
        let mut kt = seq_start[t0 as usize];
        while kt <= t_last {
            stage_rows(&mut ks, k, kt, t_last, nkv, kvh, hd, tile_rows, units);
            stage_rows(&mut vs, v, kt, t_last, nkv, kvh, hd, tile_rows, units);
            sync_cube();
            if valid {
                for r in 0..tile_rows {
                    let key = kt + r as u32;
                    if key >= my_start && key <= t {
                        let p = f32::exp(dot_row(&qr, &ks, r, hd) * scale - row_lse);
                        let ds = p * (dot_row(&dor, &vs, r, hd) - row_delta);
                        for d in 0..hd {
                            acc[d] += ds * ks[r * hd + d];
                        }
                    }
                }
            }
            sync_cube();
            kt += tile_rows as u32;
        }
        if valid {
            let base = ((t * nh + h) as usize) * hd;
            for d in 0..hd {
                dq[base + d] = F::cast_from(f32::cast_from(dq[base + d]) + acc[d] * scale);
            }
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_dkv_kernel<F: Float>(
    dk: &mut Array<F>,
    dv: &mut Array<F>,
    dout: &Array<F>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    seq_end: &Array<u32>,
    bt: u32,
    nh: u32,
    nkv: u32,
    scale: f32,
    #[comptime] hd: usize,
) {
    let units = comptime![ROWS_PER_CUBE];
    let tile_rows = comptime![TILE];
    let cube = CUBE_POS as u32;
    let kvh = cube % nkv;
    let u0 = (cube / nkv) * units as u32;
    if u0 < bt {
        let g = nh / nkv;
        let u = u0 + UNIT_POS;
        let valid = u < bt;
        let mut u_last = u0 + units as u32 - 1;
        if u_last >= bt {
            u_last = bt - 1;
        }
        // Queries that can see some key of this cube: up to the end of the last key's sequence.
        let q_last = seq_end[u_last as usize] - 1;
        let mut my_end = 0u32;
        if valid {
            my_end = seq_end[u as usize];
        }
        let kr = load_row(k, u, nkv, kvh, valid, hd);
        let vr = load_row(v, u, nkv, kvh, valid, hd);
        let mut dk_acc = Array::<f32>::new(hd);
        let mut dv_acc = Array::<f32>::new(hd);
        for d in 0..hd {
            dk_acc[d] = 0.0;
            dv_acc[d] = 0.0;
        }
        let mut qs = SharedMemory::<f32>::new(tile_rows * hd);
        let mut dos = SharedMemory::<f32>::new(tile_rows * hd);
        let mut lse_s = SharedMemory::<f32>::new(tile_rows);
        let mut delta_s = SharedMemory::<f32>::new(tile_rows);
        for hg in 0..g {
            let h = kvh * g + hg;
            let mut qt = u0;
            while qt <= q_last {
                stage_rows(&mut qs, q, qt, q_last, nh, h, hd, tile_rows, units);
                stage_rows(&mut dos, dout, qt, q_last, nh, h, hd, tile_rows, units);
                if (UNIT_POS as usize) < tile_rows {
                    let row = qt + UNIT_POS;
                    let mut row_lse = 0.0f32;
                    let mut row_delta = 0.0f32;
                    if row <= q_last {
                        row_lse = lse[(row * nh + h) as usize];
                        row_delta = delta[(row * nh + h) as usize];
                    }
                    lse_s[UNIT_POS as usize] = row_lse;
                    delta_s[UNIT_POS as usize] = row_delta;
                }
                sync_cube();
                if valid {
                    for r in 0..tile_rows {
                        let tq = qt + r as u32;
                        if tq >= u && tq < my_end {
                            let p = f32::exp(dot_row(&kr, &qs, r, hd) * scale - lse_s[r]);
                            let ds = p * (dot_row(&vr, &dos, r, hd) - delta_s[r]);
                            for d in 0..hd {
                                dv_acc[d] += p * dos[r * hd + d];
                                dk_acc[d] += ds * qs[r * hd + d];
                            }
                        }
                    }
                }
                sync_cube();
                qt += tile_rows as u32;
            }
        }
        if valid {
            let base = ((u * nkv + kvh) as usize) * hd;
            for d in 0..hd {
                dk[base + d] = F::cast_from(f32::cast_from(dk[base + d]) + dk_acc[d] * scale);
                dv[base + d] = F::cast_from(f32::cast_from(dv[base + d]) + dv_acc[d]);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_shapes<R: Runtime, F>(
    seqs: &PackedSeqs<R>,
    nh: usize,
    nkv: usize,
    hd: usize,
    q: &Buffer<R, F>,
    k: &Buffer<R, F>,
    v: &Buffer<R, F>,
) {
    let bt = seqs.bt;
    assert!(
        nkv > 0 && nh.is_multiple_of(nkv),
        "attention: nh {nh} is not a multiple of nkv {nkv}"
    );
    assert_eq!(q.len(), bt * nh * hd, "attention: q");
    assert_eq!(k.len(), bt * nkv * hd, "attention: k");
    assert_eq!(v.len(), bt * nkv * hd, "attention: v");
}

/// Packed training/prefill: q (bt, nh, hd), k/v (bt, nkv, hd). out (bt, nh, hd) overwritten;
/// lse (bt, nh) = log-sum-exp of the scaled scores, saved for the backward.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, F>,
    lse: &Buffer<R, f32>,
    q: &Buffer<R, F>,
    k: &Buffer<R, F>,
    v: &Buffer<R, F>,
    seqs: &PackedSeqs<R>,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    check_shapes(seqs, nh, nkv, hd, q, k, v);
    let bt = seqs.bt;
    assert_eq!(out.len(), bt * nh * hd, "attention: out");
    assert_eq!(lse.len(), bt * nh, "attention: lse");
    if bt == 0 || nh == 0 || hd == 0 {
        return;
    }
    attention_forward_kernel::launch::<F, R>(
        gpu.client(),
        grid(bt.div_ceil(ROWS_PER_CUBE) * nh),
        CubeDim::new_1d(ROWS_PER_CUBE as u32),
        out.arg(),
        lse.arg(),
        q.arg(),
        k.arg(),
        v.arg(),
        seqs.seq_start.arg(),
        dim("bt", bt),
        dim("nh", nh),
        dim("nkv", nkv),
        softmax_scale(hd),
        hd,
    );
}

/// Accumulates dq (bt, nh, hd), dk, dv (bt, nkv, hd). dout, out (bt, nh, hd) and lse (bt, nh)
/// are the forward's output gradient, output and saved log-sum-exp; q, k, v as in the forward.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dq: &Buffer<R, F>,
    dk: &Buffer<R, F>,
    dv: &Buffer<R, F>,
    dout: &Buffer<R, F>,
    out: &Buffer<R, F>,
    lse: &Buffer<R, f32>,
    q: &Buffer<R, F>,
    k: &Buffer<R, F>,
    v: &Buffer<R, F>,
    seqs: &PackedSeqs<R>,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    check_shapes(seqs, nh, nkv, hd, q, k, v);
    let bt = seqs.bt;
    assert!(
        dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len(),
        "attention_backward: gradient shapes"
    );
    assert!(
        dout.len() == q.len() && out.len() == q.len() && lse.len() == bt * nh,
        "attention_backward: dout/out/lse shapes"
    );
    if bt == 0 || nh == 0 || hd == 0 {
        return;
    }
    let delta = gpu.alloc::<f32>(bt * nh);
    let (count, cube) = elementwise(bt * nh);
    attention_delta_kernel::launch::<F, R>(
        gpu.client(),
        count,
        cube,
        delta.arg(),
        dout.arg(),
        out.arg(),
        dim("rows", bt * nh),
        hd,
    );
    let scale = softmax_scale(hd);
    attention_dq_kernel::launch::<F, R>(
        gpu.client(),
        grid(bt.div_ceil(ROWS_PER_CUBE) * nh),
        CubeDim::new_1d(ROWS_PER_CUBE as u32),
        dq.arg(),
        dout.arg(),
        lse.arg(),
        delta.arg(),
        q.arg(),
        k.arg(),
        v.arg(),
        seqs.seq_start.arg(),
        dim("bt", bt),
        dim("nh", nh),
        dim("nkv", nkv),
        scale,
        hd,
    );
    attention_dkv_kernel::launch::<F, R>(
        gpu.client(),
        grid(bt.div_ceil(ROWS_PER_CUBE) * nkv),
        CubeDim::new_1d(ROWS_PER_CUBE as u32),
        dk.arg(),
        dv.arg(),
        dout.arg(),
        lse.arg(),
        delta.arg(),
        q.arg(),
        k.arg(),
        v.arg(),
        seqs.seq_end.arg(),
        dim("bt", bt),
        dim("nh", nh),
        dim("nkv", nkv),
        scale,
        hd,
    );
}
