//! SwiGLU, the Qwen MLP's activation: `out = silu(gate) ⊙ up`, `silu(g) = g·σ(g)`.
//!
//! Element-wise and memory bound, except for `exp`: libm's `expf` does not vectorise, so
//! `simd::exp_fast`, a Cephes-style polynomial that LLVM vectorises, replaces it. Loops are
//! compiled twice (AVX-512 and baseline) and picked at run time.

use rayon::prelude::*;

use crate::simd::{avx512_or_baseline, exp_fast};

/// Below this many elements the rayon fork/join costs more than the work.
const PAR_MIN: usize = 1 << 15;
/// Elements per rayon task.
const CHUNK: usize = 1 << 13;

/// out (n) = silu(gate (n)) ⊙ up (n). Overwrites `out`.
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert_eq!(
        out.len(),
        gate.len(),
        "swiglu_forward: out/gate lengths differ"
    );
    assert_eq!(out.len(), up.len(), "swiglu_forward: out/up lengths differ");
    if out.len() < PAR_MIN {
        forward_chunk(out, gate, up);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK))
            .zip(up.par_chunks(CHUNK))
            .for_each(|((o, g), u)| forward_chunk(o, g, u));
    }
}

/// Accumulates dgate (n) += dout ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))) and dup (n) += dout ⊙ silu(g).
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let n = dout.len();
    assert!(
        dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n,
        "swiglu_backward: all five slices must have {n} elements"
    );
    if n < PAR_MIN {
        backward_chunk(dgate, dup, dout, gate, up);
    } else {
        dgate
            .par_chunks_mut(CHUNK)
            .zip(dup.par_chunks_mut(CHUNK))
            .zip(dout.par_chunks(CHUNK))
            .zip(gate.par_chunks(CHUNK))
            .zip(up.par_chunks(CHUNK))
            .for_each(|((((dg, du), d), g), u)| backward_chunk(dg, du, d, g, u));
    }
}

/// Straightforward oracle (libm `exp`).
pub fn swiglu_forward_naive(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[inline(always)]
fn forward_body(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let s = 1.0 / (1.0 + exp_fast(-g));
        *o = g * s * u;
    }
}

#[inline(always)]
fn backward_body(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    for ((((dg, du), &d), &g), &u) in dgate
        .iter_mut()
        .zip(dup.iter_mut())
        .zip(dout)
        .zip(gate)
        .zip(up)
    {
        let s = 1.0 / (1.0 + exp_fast(-g));
        *dg += d * u * s * (1.0 + g * (1.0 - s));
        *du += d * g * s;
    }
}

avx512_or_baseline! {
    fn forward_chunk(out: &mut [f32], gate: &[f32], up: &[f32]) = forward_body;
}
avx512_or_baseline! {
    fn backward_chunk(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) = backward_body;
}
