//! Causal grouped-query attention (GQA), scale `1/sqrt(hd)`; query head `h` reads kv head
//! `h / (nh / nkv)` (Hugging Face `repeat_kv` order).
//!
//! Training and prefill run on packed batches: `seq_lens` splits the `bt` tokens into sequences
//! and a token attends only to earlier tokens of its own sequence (block-diagonal causal mask).
//! The forward saves only the log-sum-exp of each score row; the backward recomputes the
//! probabilities from it (FlashAttention-2, <https://arxiv.org/abs/2307.08691>), so no `(t, t)`
//! matrix is kept between passes.
//!
//! The fast path works on blocks: the `g = nh / nkv` query heads that share a kv head, times a
//! block of consecutive query positions, against the causal key prefix of that block. Scores and
//! products are `sgemm` calls; rayon runs blocks in parallel. The `*_naive` versions compute
//! every score row directly with plain loops and serve as oracles in the tests.
//!
//! Not supported: sliding-window attention, attention sinks, dropout, non-causal masks.

use rayon::prelude::*;

use super::matmul::{Layout, sgemm};
use crate::scratch::with_scratch;
use crate::simd::{dot, exp_affine, row_max, softmax_grad};

/// Target number of score rows (query heads × query positions) per block: large enough for
/// `sgemm` to run near peak, small enough that a block's scores (rows × keys) stay modest.
const BLOCK_ROWS: usize = 256;

/// Query positions per block for a group of `g` heads.
fn block_len(g: usize) -> usize {
    (BLOCK_ROWS / g).clamp(16, 128)
}

fn softmax_scale(hd: usize) -> f32 {
    // HF: `scaling = head_dim ** -0.5` (a Python float), applied to f32 scores as f32.
    (1.0 / (hd as f64).sqrt()) as f32
}

/// x (bt, nkv, hd) → (nkv, bt, hd): each kv head's rows become contiguous, so any key prefix of
/// a sequence is a plain `(len, hd)` matrix for `sgemm`.
fn heads_major(x: &[f32], bt: usize, nkv: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0.0; nkv * bt * hd];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(bt * hd)
        .enumerate()
        .for_each(|(j, dst)| {
            for (t, row) in dst.chunks_exact_mut(hd).enumerate() {
                row.copy_from_slice(&x[(t * nkv + j) * hd..(t * nkv + j + 1) * hd]);
            }
        });
    out
}

/// One unit of work: kv head `kvh` of the sequence starting at token `off`, query positions
/// `q0..q1` (relative to the sequence).
#[derive(Debug, Clone, Copy)]
struct Block {
    off: usize,
    kvh: usize,
    q0: usize,
    q1: usize,
}

fn sequence_offsets(seq_lens: &[usize]) -> Vec<usize> {
    let mut offs = Vec::with_capacity(seq_lens.len());
    let mut o = 0;
    for &l in seq_lens {
        offs.push(o);
        o += l;
    }
    offs
}

/// Forward of one block: scores, row-wise softmax, and the probability-weighted values.
///
/// qb (m, hd) with row `r = i·g + hh` = query position `pos0 + i` of group head `hh`; kp, vp
/// (kend, hd) the key/value prefix; ob (m, hd) ← output; lse (m) ← log-sum-exp of the visible
/// scaled scores; s (m·kend) and sums (m) are scratch. Query position `p` sees keys `0..=p`.
#[allow(clippy::too_many_arguments)]
fn block_forward(
    ob: &mut [f32],
    lse: &mut [f32],
    s: &mut [f32],
    sums: &mut [f32],
    qb: &[f32],
    kp: &[f32],
    vp: &[f32],
    g: usize,
    pos0: usize,
    kend: usize,
    hd: usize,
    scale: f32,
) {
    let m = lse.len();
    sgemm(
        s,
        qb,
        Layout::Normal,
        kp,
        Layout::Transposed,
        m,
        hd,
        kend,
        false,
    );
    for (r, row) in s.chunks_exact_mut(kend).enumerate() {
        let vis = (pos0 + r / g + 1).min(kend);
        let (live, masked) = row.split_at_mut(vis);
        let max = row_max(live) * scale;
        // Unnormalised exp(scale·s − max); the 1/sum is applied to the (m, hd) output instead
        // of the (m, kend) probabilities.
        let sum = exp_affine(live, scale, max, 1.0);
        masked.fill(0.0);
        lse[r] = max + sum.ln();
        sums[r] = sum;
    }
    sgemm(
        ob,
        s,
        Layout::Normal,
        vp,
        Layout::Normal,
        m,
        kend,
        hd,
        false,
    );
    for (row, &sum) in ob.chunks_exact_mut(hd).zip(sums.iter()) {
        let inv = 1.0 / sum;
        for x in row {
            *x *= inv;
        }
    }
}

/// Packed training/prefill: q (bt, nh, hd), k/v (bt, nkv, hd), bt = Σ seq_lens. Tokens attend only
/// within their own sequence (block-diagonal causal). out (bt, nh, hd) overwritten; lse (bt, nh) =
/// log-sum-exp of the scaled scores, saved for backward (flash-attention style: no (t,t) matrix kept).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_lens: &[usize],
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    let bt: usize = seq_lens.iter().sum();
    check_shapes(bt, nh, nkv, hd, q, k, v);
    assert_eq!(
        out.len(),
        bt * nh * hd,
        "attention: out has {} elements",
        out.len()
    );
    assert_eq!(
        lse.len(),
        bt * nh,
        "attention: lse has {} elements",
        lse.len()
    );
    if bt == 0 || nh == 0 || hd == 0 {
        return;
    }
    let g = nh / nkv;
    let kt = heads_major(k, bt, nkv, hd);
    let vt = heads_major(v, bt, nkv, hd);
    let bl = block_len(g);
    let offs = sequence_offsets(seq_lens);
    let mut blocks = Vec::new();
    for (&off, &len) in offs.iter().zip(seq_lens) {
        for kvh in 0..nkv {
            for q0 in (0..len).step_by(bl) {
                blocks.push(Block {
                    off,
                    kvh,
                    q0,
                    q1: (q0 + bl).min(len),
                });
            }
        }
    }
    // Largest blocks first, so the causal tail does not leave one thread working alone.
    blocks.sort_by_key(|b| std::cmp::Reverse(b.q1 * (b.q1 - b.q0)));
    let scale = softmax_scale(hd);
    let gw = g * hd;
    let results: Vec<(Block, Vec<f32>, Vec<f32>)> = blocks
        .par_iter()
        .map(|&b| {
            let m = (b.q1 - b.q0) * g;
            let kend = b.q1;
            let base = (b.kvh * bt + b.off) * hd;
            let kp = &kt[base..base + kend * hd];
            let vp = &vt[base..base + kend * hd];
            let mut ob = vec![0.0; m * hd];
            let mut lb = vec![0.0; m];
            with_scratch(m * hd + m * kend + m, |buf| {
                let (qb, rest) = buf.split_at_mut(m * hd);
                let (s, sums) = rest.split_at_mut(m * kend);
                for (i, dst) in qb.chunks_exact_mut(gw).enumerate() {
                    let t = b.off + b.q0 + i;
                    dst.copy_from_slice(&q[(t * nh + b.kvh * g) * hd..][..gw]);
                }
                block_forward(
                    &mut ob, &mut lb, s, sums, qb, kp, vp, g, b.q0, kend, hd, scale,
                );
            });
            (b, ob, lb)
        })
        .collect();
    for (b, ob, lb) in results {
        for i in 0..b.q1 - b.q0 {
            let t = b.off + b.q0 + i;
            out[(t * nh + b.kvh * g) * hd..][..gw].copy_from_slice(&ob[i * gw..(i + 1) * gw]);
            lse[t * nh + b.kvh * g..][..g].copy_from_slice(&lb[i * g..(i + 1) * g]);
        }
    }
}

/// Accumulates dq (bt, nh, hd), dk, dv (bt, nkv, hd). Recomputes probabilities from lse.
///
/// dout, out (bt, nh, hd) and lse (bt, nh) are the forward's output gradient, output and saved
/// log-sum-exp; q, k, v as in [`attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_lens: &[usize],
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    let bt: usize = seq_lens.iter().sum();
    check_shapes(bt, nh, nkv, hd, q, k, v);
    assert_eq!(
        dq.len(),
        q.len(),
        "attention_backward: dq has {} elements",
        dq.len()
    );
    assert_eq!(
        dk.len(),
        k.len(),
        "attention_backward: dk has {} elements",
        dk.len()
    );
    assert_eq!(
        dv.len(),
        v.len(),
        "attention_backward: dv has {} elements",
        dv.len()
    );
    assert_eq!(
        dout.len(),
        q.len(),
        "attention_backward: dout has {} elements",
        dout.len()
    );
    assert_eq!(
        out.len(),
        q.len(),
        "attention_backward: out has {} elements",
        out.len()
    );
    assert_eq!(
        lse.len(),
        bt * nh,
        "attention_backward: lse has {} elements",
        lse.len()
    );
    if bt == 0 || nh == 0 || hd == 0 {
        return;
    }
    let g = nh / nkv;
    let kt = heads_major(k, bt, nkv, hd);
    let vt = heads_major(v, bt, nkv, hd);
    let bl = block_len(g);
    let offs = sequence_offsets(seq_lens);
    // dK and dV of a key prefix collect contributions from every later query block, so each task
    // owns a private (prefix, hd) accumulator and the tasks' sums are added at the end. Tasks
    // take query blocks round-robin (part, part + parts, ...) to balance the causal triangle.
    let threads = rayon::current_num_threads().max(1);
    let units = seq_lens.iter().filter(|&&l| l > 0).count() * nkv;
    let mut tasks = Vec::new();
    for (&off, &len) in offs.iter().zip(seq_lens) {
        if len == 0 {
            continue;
        }
        let nblocks = len.div_ceil(bl);
        let parts = nblocks.min((4 * threads).div_ceil(units.max(1))).max(1);
        for kvh in 0..nkv {
            for part in 0..parts {
                let blocks: Vec<Block> = (part..nblocks)
                    .step_by(parts)
                    .map(|bi| Block {
                        off,
                        kvh,
                        q0: bi * bl,
                        q1: ((bi + 1) * bl).min(len),
                    })
                    .collect();
                tasks.push(blocks);
            }
        }
    }
    tasks.sort_by_key(|bs| {
        std::cmp::Reverse(bs.iter().map(|b| b.q1 * (b.q1 - b.q0)).sum::<usize>())
    });
    let scale = softmax_scale(hd);
    let gw = g * hd;
    struct Grads {
        off: usize,
        kvh: usize,
        kend: usize,
        dk: Vec<f32>,
        dv: Vec<f32>,
        dq: Vec<(Block, Vec<f32>)>,
    }
    let results: Vec<Grads> = tasks
        .par_iter()
        .map(|blocks| {
            let first = blocks[0];
            let kend_max = blocks.iter().map(|b| b.q1).max().unwrap_or(0);
            let base = (first.kvh * bt + first.off) * hd;
            let mut dk_acc = vec![0.0; kend_max * hd];
            let mut dv_acc = vec![0.0; kend_max * hd];
            let mut dqs = Vec::with_capacity(blocks.len());
            for &b in blocks {
                let m = (b.q1 - b.q0) * g;
                let kend = b.q1;
                let kp = &kt[base..base + kend * hd];
                let vp = &vt[base..base + kend * hd];
                let mut dqb = vec![0.0; m * hd];
                with_scratch(2 * m * hd + 2 * m + 2 * m * kend, |buf| {
                    let (qb, rest) = buf.split_at_mut(m * hd);
                    let (dob, rest) = rest.split_at_mut(m * hd);
                    let (lb, rest) = rest.split_at_mut(m);
                    let (dd, rest) = rest.split_at_mut(m);
                    let (p, ds) = rest.split_at_mut(m * kend);
                    for i in 0..b.q1 - b.q0 {
                        let t = b.off + b.q0 + i;
                        let src = (t * nh + b.kvh * g) * hd;
                        qb[i * gw..(i + 1) * gw].copy_from_slice(&q[src..src + gw]);
                        dob[i * gw..(i + 1) * gw].copy_from_slice(&dout[src..src + gw]);
                        lb[i * g..(i + 1) * g].copy_from_slice(&lse[t * nh + b.kvh * g..][..g]);
                        for hh in 0..g {
                            let o = src + hh * hd;
                            // D = rowsum(dO ∘ O) = rowsum(P ∘ dP), the softmax Jacobian's shared term.
                            dd[i * g + hh] = dot(&dout[o..o + hd], &out[o..o + hd]);
                        }
                    }
                    // P = exp(scale·S − lse), zero where masked.
                    sgemm(
                        p,
                        qb,
                        Layout::Normal,
                        kp,
                        Layout::Transposed,
                        m,
                        hd,
                        kend,
                        false,
                    );
                    for (r, row) in p.chunks_exact_mut(kend).enumerate() {
                        let vis = (b.q0 + r / g + 1).min(kend);
                        let (live, masked) = row.split_at_mut(vis);
                        exp_affine(live, scale, lb[r], 1.0);
                        masked.fill(0.0);
                    }
                    // dV[..kend] += Pᵀ · dO
                    let dvp = &mut dv_acc[..kend * hd];
                    sgemm(
                        dvp,
                        p,
                        Layout::Transposed,
                        dob,
                        Layout::Normal,
                        kend,
                        m,
                        hd,
                        true,
                    );
                    // dP = dO · Vᵀ, then dS = scale · P ∘ (dP − D) in place.
                    sgemm(
                        ds,
                        dob,
                        Layout::Normal,
                        vp,
                        Layout::Transposed,
                        m,
                        hd,
                        kend,
                        false,
                    );
                    for (r, (dsr, pr)) in ds
                        .chunks_exact_mut(kend)
                        .zip(p.chunks_exact(kend))
                        .enumerate()
                    {
                        // Masked columns have P = 0, so they come out 0 too.
                        softmax_grad(dsr, pr, dd[r], scale);
                    }
                    // dQ_block = dS · K;  dK[..kend] += dSᵀ · Q_block
                    sgemm(
                        &mut dqb,
                        ds,
                        Layout::Normal,
                        kp,
                        Layout::Normal,
                        m,
                        kend,
                        hd,
                        false,
                    );
                    let dkp = &mut dk_acc[..kend * hd];
                    sgemm(
                        dkp,
                        ds,
                        Layout::Transposed,
                        qb,
                        Layout::Normal,
                        kend,
                        m,
                        hd,
                        true,
                    );
                });
                dqs.push((b, dqb));
            }
            Grads {
                off: first.off,
                kvh: first.kvh,
                kend: kend_max,
                dk: dk_acc,
                dv: dv_acc,
                dq: dqs,
            }
        })
        .collect();
    for r in results {
        for t in 0..r.kend {
            let dst = ((r.off + t) * nkv + r.kvh) * hd;
            for (d, s) in dk[dst..dst + hd]
                .iter_mut()
                .zip(&r.dk[t * hd..(t + 1) * hd])
            {
                *d += s;
            }
            for (d, s) in dv[dst..dst + hd]
                .iter_mut()
                .zip(&r.dv[t * hd..(t + 1) * hd])
            {
                *d += s;
            }
        }
        for (b, dqb) in r.dq {
            for i in 0..b.q1 - b.q0 {
                let dst = ((b.off + b.q0 + i) * nh + b.kvh * g) * hd;
                for (d, s) in dq[dst..dst + gw].iter_mut().zip(&dqb[i * gw..(i + 1) * gw]) {
                    *d += s;
                }
            }
        }
    }
}

/// Below this many new tokens, cached attention loops over keys directly (decode is
/// memory-bound; gathering the cache for `sgemm` would double the traffic).
const CACHED_DIRECT_MAX_TQ: usize = 4;

/// Inference with a KV cache: q (tq, nh, hd) are the newest tq tokens; k_cache/v_cache hold (≥tk, nkv, hd)
/// where the first tk rows are valid and include the new tokens; query i attends to keys 0..=tk−tq+i.
/// out (tq, nh, hd) overwritten.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    tq: usize,
    tk: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    assert!(
        nkv > 0 && nh.is_multiple_of(nkv),
        "attention: nh {nh} must be a multiple of nkv {nkv}"
    );
    assert!(
        tq <= tk,
        "attention_cached: {tq} new tokens but only {tk} cached"
    );
    assert_eq!(
        q.len(),
        tq * nh * hd,
        "attention_cached: q has {} elements",
        q.len()
    );
    assert_eq!(
        out.len(),
        tq * nh * hd,
        "attention_cached: out has {} elements",
        out.len()
    );
    assert!(
        k_cache.len() >= tk * nkv * hd,
        "attention_cached: k_cache shorter than {tk} rows"
    );
    assert!(
        v_cache.len() >= tk * nkv * hd,
        "attention_cached: v_cache shorter than {tk} rows"
    );
    if tq == 0 || nh == 0 || hd == 0 {
        return;
    }
    let g = nh / nkv;
    let scale = softmax_scale(hd);
    let past = tk - tq;
    if tq <= CACHED_DIRECT_MAX_TQ {
        // One task per (query, head): scores by dot products over the strided cache rows.
        out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
            let (i, h) = (idx / nh, idx % nh);
            let j = h / g;
            let qv = &q[idx * hd..(idx + 1) * hd];
            let vis = past + i + 1;
            with_scratch(vis, |s| {
                for (t, x) in s.iter_mut().enumerate() {
                    *x = dot(qv, &k_cache[(t * nkv + j) * hd..][..hd]);
                }
                let max = row_max(s) * scale;
                let inv = 1.0 / exp_affine(s, scale, max, 1.0);
                o.fill(0.0);
                for (t, &pv) in s.iter().enumerate() {
                    let w = pv * inv;
                    for (d, &x) in o.iter_mut().zip(&v_cache[(t * nkv + j) * hd..][..hd]) {
                        *d += w * x;
                    }
                }
            });
        });
        return;
    }
    let kt = heads_major(&k_cache[..tk * nkv * hd], tk, nkv, hd);
    let vt = heads_major(&v_cache[..tk * nkv * hd], tk, nkv, hd);
    let bl = block_len(g);
    let mut blocks = Vec::new();
    for kvh in 0..nkv {
        for q0 in (0..tq).step_by(bl) {
            blocks.push(Block {
                off: 0,
                kvh,
                q0,
                q1: (q0 + bl).min(tq),
            });
        }
    }
    let gw = g * hd;
    let results: Vec<(Block, Vec<f32>)> = blocks
        .par_iter()
        .map(|&b| {
            let m = (b.q1 - b.q0) * g;
            let kend = past + b.q1;
            let base = b.kvh * tk * hd;
            let kp = &kt[base..base + kend * hd];
            let vp = &vt[base..base + kend * hd];
            let mut ob = vec![0.0; m * hd];
            with_scratch(m * hd + m * kend + 2 * m, |buf| {
                let (qb, rest) = buf.split_at_mut(m * hd);
                let (s, rest) = rest.split_at_mut(m * kend);
                let (lb, sums) = rest.split_at_mut(m);
                for (i, dst) in qb.chunks_exact_mut(gw).enumerate() {
                    dst.copy_from_slice(&q[((b.q0 + i) * nh + b.kvh * g) * hd..][..gw]);
                }
                block_forward(
                    &mut ob,
                    lb,
                    s,
                    sums,
                    qb,
                    kp,
                    vp,
                    g,
                    past + b.q0,
                    kend,
                    hd,
                    scale,
                );
            });
            (b, ob)
        })
        .collect();
    for (b, ob) in results {
        for i in 0..b.q1 - b.q0 {
            out[((b.q0 + i) * nh + b.kvh * g) * hd..][..gw]
                .copy_from_slice(&ob[i * gw..(i + 1) * gw]);
        }
    }
}

fn check_shapes(bt: usize, nh: usize, nkv: usize, hd: usize, q: &[f32], k: &[f32], v: &[f32]) {
    assert!(
        nkv > 0 && nh.is_multiple_of(nkv),
        "attention: nh {nh} must be a multiple of nkv {nkv}"
    );
    assert_eq!(
        q.len(),
        bt * nh * hd,
        "attention: q has {} elements, want {bt}x{nh}x{hd}",
        q.len()
    );
    assert_eq!(
        k.len(),
        bt * nkv * hd,
        "attention: k has {} elements, want {bt}x{nkv}x{hd}",
        k.len()
    );
    assert_eq!(
        v.len(),
        bt * nkv * hd,
        "attention: v has {} elements, want {bt}x{nkv}x{hd}",
        v.len()
    );
}

/// Oracle for [`attention_forward`]: plain loops, one full score row per (token, head).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_naive(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_lens: &[usize],
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    let bt: usize = seq_lens.iter().sum();
    check_shapes(bt, nh, nkv, hd, q, k, v);
    let g = nh / nkv;
    let scale = softmax_scale(hd);
    for (&off, &len) in sequence_offsets(seq_lens).iter().zip(seq_lens) {
        for h in 0..nh {
            let j = h / g;
            for i in 0..len {
                let qi = &q[((off + i) * nh + h) * hd..][..hd];
                let s: Vec<f32> = (0..=i)
                    .map(|t| {
                        let kt = &k[((off + t) * nkv + j) * hd..][..hd];
                        qi.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                lse[(off + i) * nh + h] = max + sum.ln();
                let o = &mut out[((off + i) * nh + h) * hd..][..hd];
                o.fill(0.0);
                for (t, ev) in e.iter().enumerate() {
                    let vt = &v[((off + t) * nkv + j) * hd..][..hd];
                    for (d, x) in o.iter_mut().zip(vt) {
                        *d += ev / sum * x;
                    }
                }
            }
        }
    }
}

/// Oracle for [`attention_backward`] (accumulates likewise): materialises P and dP per row.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_naive(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_lens: &[usize],
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    let bt: usize = seq_lens.iter().sum();
    check_shapes(bt, nh, nkv, hd, q, k, v);
    let g = nh / nkv;
    let scale = softmax_scale(hd);
    for (&off, &len) in sequence_offsets(seq_lens).iter().zip(seq_lens) {
        for h in 0..nh {
            let j = h / g;
            for i in 0..len {
                let row = ((off + i) * nh + h) * hd;
                let qi = &q[row..row + hd];
                let doi = &dout[row..row + hd];
                let kv = |t: usize| ((off + t) * nkv + j) * hd..((off + t) * nkv + j + 1) * hd;
                let s: Vec<f32> = (0..=i)
                    .map(|t| qi.iter().zip(&k[kv(t)]).map(|(a, b)| a * b).sum::<f32>() * scale)
                    .collect();
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                let p: Vec<f32> = e.iter().map(|x| x / sum).collect();
                let dp: Vec<f32> = (0..=i)
                    .map(|t| doi.iter().zip(&v[kv(t)]).map(|(a, b)| a * b).sum())
                    .collect();
                let d: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for t in 0..=i {
                    let ds = p[t] * (dp[t] - d) * scale;
                    let r = kv(t);
                    for c in 0..hd {
                        dq[row + c] += ds * k[r.start + c];
                        dk[r.start + c] += ds * qi[c];
                        dv[r.start + c] += p[t] * doi[c];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-amp..amp)).collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    struct Case {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        bt: usize,
    }

    fn case(seed: u64, seq_lens: &[usize], nh: usize, nkv: usize, hd: usize) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let bt: usize = seq_lens.iter().sum();
        // Amplitude 2 gives peaked softmax rows (scores up to ~hd·4·scale), which exercises
        // the max-subtraction.
        Case {
            q: rand_vec(&mut rng, bt * nh * hd, 2.0),
            k: rand_vec(&mut rng, bt * nkv * hd, 2.0),
            v: rand_vec(&mut rng, bt * nkv * hd, 1.0),
            bt,
        }
    }

    #[test]
    fn hand_computed_two_tokens() {
        // hd 1, scale 1: token 0 sees only itself; token 1 weights v by softmax(q1·k0, q1·k1).
        let (q, k, v) = (vec![1.0, 2.0], vec![0.5, 1.0], vec![3.0, -1.0]);
        let (mut out, mut lse) = (vec![0.0; 2], vec![0.0; 2]);
        attention_forward(&mut out, &mut lse, &q, &k, &v, &[2], 1, 1, 1);
        let (e0, e1) = (1f64.exp(), 2f64.exp());
        let want1 = (3.0 * e0 - e1) / (e0 + e1);
        assert!((out[0] - 3.0).abs() < 1e-6);
        assert!(
            (out[1] as f64 - want1).abs() < 1e-6,
            "{} vs {want1}",
            out[1]
        );
        assert!((lse[0] - 0.5).abs() < 1e-6);
        assert!((lse[1] as f64 - (e0 + e1).ln()).abs() < 1e-6);
    }

    #[test]
    fn forward_matches_naive_packed_gqa() {
        for (seed, seq_lens, nh, nkv, hd) in [
            (1u64, vec![300usize], 14usize, 2usize, 64usize),
            (2, vec![37, 1, 130, 64, 5], 6, 2, 32),
            (3, vec![129, 200], 4, 4, 16),
            (4, vec![0, 17, 0], 8, 1, 8),
        ] {
            let c = case(seed, &seq_lens, nh, nkv, hd);
            let mut out = vec![f32::NAN; c.bt * nh * hd];
            let mut lse = vec![f32::NAN; c.bt * nh];
            attention_forward(&mut out, &mut lse, &c.q, &c.k, &c.v, &seq_lens, nh, nkv, hd);
            let mut out_n = vec![0.0; c.bt * nh * hd];
            let mut lse_n = vec![0.0; c.bt * nh];
            attention_forward_naive(
                &mut out_n, &mut lse_n, &c.q, &c.k, &c.v, &seq_lens, nh, nkv, hd,
            );
            let (d_out, d_lse) = (max_diff(&out, &out_n), max_diff(&lse, &lse_n));
            assert!(
                d_out < 2e-5,
                "{seq_lens:?} nh {nh} nkv {nkv}: out max diff {d_out}"
            );
            assert!(
                d_lse < 2e-5,
                "{seq_lens:?} nh {nh} nkv {nkv}: lse max diff {d_lse}"
            );
        }
    }

    #[test]
    fn backward_matches_naive_and_accumulates() {
        for (seed, seq_lens, nh, nkv, hd) in [
            (5u64, vec![300usize], 14usize, 2usize, 64usize),
            (6, vec![37, 1, 130, 64, 5], 6, 2, 32),
            (7, vec![129, 200], 4, 4, 16),
        ] {
            let c = case(seed, &seq_lens, nh, nkv, hd);
            let mut rng = StdRng::seed_from_u64(seed + 100);
            let dout = rand_vec(&mut rng, c.bt * nh * hd, 1.0);
            let mut out = vec![0.0; c.bt * nh * hd];
            let mut lse = vec![0.0; c.bt * nh];
            attention_forward(&mut out, &mut lse, &c.q, &c.k, &c.v, &seq_lens, nh, nkv, hd);
            // Start from non-zero gradients: backward must add, not overwrite.
            let dq0 = rand_vec(&mut rng, c.q.len(), 1.0);
            let dk0 = rand_vec(&mut rng, c.k.len(), 1.0);
            let dv0 = rand_vec(&mut rng, c.v.len(), 1.0);
            let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
            attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &c.q, &c.k, &c.v, &seq_lens, nh, nkv,
                hd,
            );
            let (mut dqn, mut dkn, mut dvn) = (dq0, dk0, dv0);
            attention_backward_naive(
                &mut dqn, &mut dkn, &mut dvn, &dout, &c.q, &c.k, &c.v, &seq_lens, nh, nkv, hd,
            );
            for (name, a, b) in [("dq", &dq, &dqn), ("dk", &dk, &dkn), ("dv", &dv, &dvn)] {
                let d = max_diff(a, b);
                assert!(
                    d < 1e-4,
                    "{seq_lens:?} nh {nh} nkv {nkv}: {name} max diff {d}"
                );
            }
        }
    }

    #[test]
    fn cached_equals_last_rows_of_full_forward() {
        for (seed, t, nh, nkv, hd) in [
            (8u64, 150usize, 14usize, 2usize, 64usize),
            (9, 40, 4, 1, 16),
        ] {
            let c = case(seed, &[t], nh, nkv, hd);
            let mut full = vec![0.0; t * nh * hd];
            let mut lse = vec![0.0; t * nh];
            attention_forward(&mut full, &mut lse, &c.q, &c.k, &c.v, &[t], nh, nkv, hd);
            // The cache holds spare rows beyond tk, filled with garbage that must not be read.
            let spare = 7 * nkv * hd;
            let mut kc = c.k.clone();
            let mut vc = c.v.clone();
            kc.extend(std::iter::repeat_n(1e6, spare));
            vc.extend(std::iter::repeat_n(f32::NAN, spare));
            for tq in [1usize, 2, 4, 5, 33, t] {
                let row = nh * hd;
                let mut out = vec![f32::NAN; tq * row];
                attention_cached(
                    &mut out,
                    &c.q[(t - tq) * row..],
                    &kc,
                    &vc,
                    tq,
                    t,
                    nh,
                    nkv,
                    hd,
                );
                let d = max_diff(&out, &full[(t - tq) * row..]);
                assert!(d < 2e-5, "t {t} tq {tq}: max diff {d}");
            }
        }
    }

    #[test]
    fn heads_major_transposes() {
        let x: Vec<f32> = (0..3 * 2 * 2).map(|i| i as f32).collect();
        // (bt 3, nkv 2, hd 2) → (2, 3, 2)
        assert_eq!(
            heads_major(&x, 3, 2, 2),
            vec![0., 1., 4., 5., 8., 9., 2., 3., 6., 7., 10., 11.]
        );
    }
}
