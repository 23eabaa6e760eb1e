//! Fused LM head + cross-entropy over the labelled rows only, as the CPU engine computes it.
//!
//! The vocabulary is processed in chunks of `VOCAB_CHUNK` rows of the LM head: each chunk's
//! logits (n, chunk) come from one GEMM into a scratch buffer and are folded into per-row running
//! statistics (max, Σexp, argmax, target logit), so the full (n, v) logits never exist. The
//! backward recomputes each chunk's logits and turns them into `scale·(softmax − onehot)` using
//! the saved log-sum-exp, then multiplies back (dhidden) and, for full fine-tuning, into the head's
//! gradient. `hidden` holds only labelled rows: the caller gathers them (see
//! [`crate::ops::embedding`]'s row gather). Not supported: label smoothing, z-loss, soft-capping.

use cubecl::prelude::*;
use tuna_engine::ops::matmul::Layout;

use super::matmul::gemm;
use crate::error::Result;
use crate::reduce::{cube_max, cube_sum};
use crate::runtime::{Buffer, Gpu, dim, elementwise, grid};

/// Vocabulary rows per chunk. A multiple of 64, so every chunk's slice of the head starts on a
/// 256-byte boundary whatever `c` is.
const VOCAB_CHUNK: usize = 8192;
/// Units per cube of the per-row fold.
const FOLD_UNITS: usize = 256;

/// Folds chunk `v0..v0+vc` of the logits into the running statistics of row `CUBE_POS`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ce_fold_kernel<F: Float>(
    run_max: &mut Array<f32>,
    run_sum: &mut Array<f32>,
    argmax: &mut Array<u32>,
    target_logit: &mut Array<f32>,
    logits: &Array<F>,
    targets: &Array<u32>,
    n: u32,
    vc: u32,
    v0: u32,
    #[comptime] units: usize,
    #[comptime] plane: bool,
) {
    let row = CUBE_POS;
    if row < n as usize {
        let base = row * vc as usize;
        let target = targets[row];
        // Local max and the lowest index holding it (f32::MIN, not −∞: WGSL has no infinity
        // literal).
        let mut local_max = f32::new(f32::MIN);
        let mut local_arg = 0u32;
        let mut j = UNIT_POS;
        while j < vc {
            let x = f32::cast_from(logits[base + j as usize]);
            if x > local_max {
                local_max = x;
                local_arg = j;
            }
            if v0 + j == target {
                target_logit[row] = x;
            }
            j += units as u32;
        }
        let chunk_max = cube_max(local_max, units, plane);
        // Lowest index among units holding the maximum: max of −index, exact in f32 for
        // indices below 2²⁴ (the vocabulary is checked on the host).
        let mut candidate = f32::new(f32::MIN);
        if local_max == chunk_max {
            candidate = -f32::cast_from(local_arg);
        }
        let chunk_arg = u32::cast_from(-cube_max(candidate, units, plane));
        let mut local_sum = 0.0f32;
        j = UNIT_POS;
        while j < vc {
            local_sum += f32::exp(f32::cast_from(logits[base + j as usize]) - chunk_max);
            j += units as u32;
        }
        let chunk_sum = cube_sum(local_sum, units, plane);
        if UNIT_POS == 0 {
            let old_max = run_max[row];
            let new_max = f32::max(old_max, chunk_max);
            // exp(−∞) = 0 on the first chunk.
            run_sum[row] = run_sum[row] * f32::exp(old_max - new_max)
                + chunk_sum * f32::exp(chunk_max - new_max);
            // Strictly larger only: on ties the earlier (lower) index stays, as in torch.argmax.
            if chunk_max > old_max {
                argmax[row] = v0 + chunk_arg;
            }
            run_max[row] = new_max;
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ce_finish_kernel(
    losses: &mut Array<f32>,
    lse: &mut Array<f32>,
    hits: &mut Array<u32>,
    run_max: &Array<f32>,
    run_sum: &Array<f32>,
    argmax: &Array<u32>,
    target_logit: &Array<f32>,
    targets: &Array<u32>,
    n: u32,
) {
    let r = ABSOLUTE_POS;
    if r < n as usize {
        let l = run_max[r] + f32::ln(run_sum[r]);
        lse[r] = l;
        losses[r] = l - target_logit[r];
        let mut hit = 0u32;
        if argmax[r] == targets[r] {
            hit = 1;
        }
        hits[r] = hit;
    }
}

/// In place on a logits chunk (n, vc): `scale·(exp(logit − lse) − onehot(target))`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ce_grad_kernel<F: Float>(
    logits: &mut Array<F>,
    lse: &Array<f32>,
    targets: &Array<u32>,
    scale: f32,
    n: u32,
    vc: u32,
    v0: u32,
) {
    let i = ABSOLUTE_POS;
    if i < (n * vc) as usize {
        let r = i as u32 / vc;
        let j = i as u32 % vc;
        let mut g = scale * f32::exp(f32::cast_from(logits[i]) - lse[r as usize]);
        if v0 + j == targets[r as usize] {
            g -= scale;
        }
        logits[i] = F::cast_from(g);
    }
}

fn check<R: Runtime, F>(
    hidden: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    targets: &Buffer<R, u32>,
    n: usize,
    c: usize,
    v: usize,
) {
    assert_eq!(hidden.len(), n * c, "lm_head_ce: hidden, want {n}x{c}");
    assert_eq!(weight.len(), v * c, "lm_head_ce: weight, want {v}x{c}");
    assert_eq!(targets.len(), n, "lm_head_ce: targets");
    assert!(
        v < (1 << 24),
        "lm_head_ce: vocabulary of {v} exceeds 2^24 (argmax ties are resolved in f32)"
    );
}

/// The vocabulary chunks `(v0, v1)`.
fn chunks(v: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..v)
        .step_by(VOCAB_CHUNK)
        .map(move |v0| (v0, (v0 + VOCAB_CHUNK).min(v)))
}

/// hidden (n, c) are the final-norm outputs of the n labelled positions; weight (v, c) the LM
/// head; targets (n) < v. Writes losses (n) = lse − logit[target], lse (n) saved for the
/// backward, and hits (n) = 1 where argmax == target (token accuracy; ties → lowest index, like
/// torch.argmax). The CPU engine returns the hit count; here it stays on the device
/// ([`count_hits`] reads it) so a training step need not wait for it.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    losses: &Buffer<R, f32>,
    lse: &Buffer<R, f32>,
    hits: &Buffer<R, u32>,
    hidden: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    targets: &Buffer<R, u32>,
    n: usize,
    c: usize,
    v: usize,
) -> Result<()> {
    check(hidden, weight, targets, n, c, v);
    assert!(
        losses.len() == n && lse.len() == n && hits.len() == n,
        "lm_head_ce: outputs"
    );
    if n == 0 {
        return Ok(());
    }
    assert!(v > 0, "lm_head_ce: empty vocabulary");
    let run_max = gpu.alloc::<f32>(n);
    super::elementwise::fill(gpu, &run_max, f32::NEG_INFINITY);
    let run_sum = super::elementwise::zeros::<R, f32>(gpu, n);
    let argmax = super::elementwise::zeros::<R, u32>(gpu, n);
    let target_logit = gpu.alloc::<f32>(n);
    super::elementwise::fill(gpu, &target_logit, f32::NAN);
    let logits = gpu.alloc::<F>(n * VOCAB_CHUNK.min(v));
    for (v0, v1) in chunks(v) {
        let vc = v1 - v0;
        let chunk = logits.slice(0..n * vc);
        // logits (n, vc) = hidden (n, c) · W[v0..v1]ᵀ
        let wc = weight.slice(v0 * c..v1 * c);
        gemm(
            gpu,
            &chunk,
            hidden,
            Layout::Normal,
            &wc,
            Layout::Transposed,
            n,
            c,
            vc,
            false,
        )?;
        ce_fold_kernel::launch::<F, R>(
            gpu.client(),
            grid(n),
            CubeDim::new_1d(FOLD_UNITS as u32),
            run_max.arg(),
            run_sum.arg(),
            argmax.arg(),
            target_logit.arg(),
            chunk.arg(),
            targets.arg(),
            dim("n", n),
            dim("vc", vc),
            dim("v0", v0),
            FOLD_UNITS,
            gpu.plane(),
        );
    }
    let (count, cube) = elementwise(n);
    ce_finish_kernel::launch::<R>(
        gpu.client(),
        count,
        cube,
        losses.arg(),
        lse.arg(),
        hits.arg(),
        run_max.arg(),
        run_sum.arg(),
        argmax.arg(),
        target_logit.arg(),
        targets.arg(),
        dim("n", n),
    );
    Ok(())
}

/// Gradient of `scale · Σ losses` (scale = 1/normalizer, the unmasked token count of the whole
/// accumulated batch). Accumulates dhidden (n, c) += scale·(softmax − onehot)·weight and, if
/// given, dweight (v, c) += scale·(softmax − onehot)ᵀ·hidden (full fine-tuning). `lse` (n) is the
/// forward's saved log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dhidden: &Buffer<R, F>,
    dweight: Option<&Buffer<R, F>>,
    hidden: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    targets: &Buffer<R, u32>,
    lse: &Buffer<R, f32>,
    scale: f32,
    n: usize,
    c: usize,
    v: usize,
) -> Result<()> {
    check(hidden, weight, targets, n, c, v);
    assert_eq!(dhidden.len(), n * c, "lm_head_ce_backward: dhidden");
    assert_eq!(lse.len(), n, "lm_head_ce_backward: lse");
    if n == 0 || v == 0 {
        return Ok(());
    }
    let logits = gpu.alloc::<F>(n * VOCAB_CHUNK.min(v));
    for (v0, v1) in chunks(v) {
        let vc = v1 - v0;
        let chunk = logits.slice(0..n * vc);
        let wc = weight.slice(v0 * c..v1 * c);
        gemm(
            gpu,
            &chunk,
            hidden,
            Layout::Normal,
            &wc,
            Layout::Transposed,
            n,
            c,
            vc,
            false,
        )?;
        let (count, cube) = elementwise(n * vc);
        ce_grad_kernel::launch::<F, R>(
            gpu.client(),
            count,
            cube,
            chunk.arg(),
            lse.arg(),
            targets.arg(),
            scale,
            dim("n", n),
            dim("vc", vc),
            dim("v0", v0),
        );
        // dhidden (n, c) += dlogits (n, vc) · W[v0..v1] (vc, c)
        gemm(
            gpu,
            dhidden,
            &chunk,
            Layout::Normal,
            &wc,
            Layout::Normal,
            n,
            vc,
            c,
            true,
        )?;
        if let Some(dw) = dweight {
            assert_eq!(dw.len(), v * c, "lm_head_ce_backward: dweight");
            // dweight[v0..v1] (vc, c) += dlogitsᵀ (vc, n) · hidden (n, c)
            let dwc = dw.slice(v0 * c..v1 * c);
            gemm(
                gpu,
                &dwc,
                &chunk,
                Layout::Transposed,
                hidden,
                Layout::Normal,
                vc,
                n,
                c,
                true,
            )?;
        }
    }
    Ok(())
}

/// Forward, then the `dhidden` half of the backward (for LoRA, where the head is frozen): the
/// same results as [`lm_head_ce_forward`] followed by [`lm_head_ce_backward`] with
/// `dweight = None`, which is how it is computed here (the CPU engine fuses the two passes).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    losses: &Buffer<R, f32>,
    lse: &Buffer<R, f32>,
    hits: &Buffer<R, u32>,
    dhidden: &Buffer<R, F>,
    hidden: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    targets: &Buffer<R, u32>,
    scale: f32,
    n: usize,
    c: usize,
    v: usize,
) -> Result<()> {
    lm_head_ce_forward(gpu, losses, lse, hits, hidden, weight, targets, n, c, v)?;
    lm_head_ce_backward(
        gpu, dhidden, None, hidden, weight, targets, lse, scale, n, c, v,
    )
}

/// Number of rows whose argmax hit the target (reads `hits` back; waits for the device).
pub fn count_hits<R: Runtime>(gpu: &Gpu<R>, hits: &Buffer<R, u32>) -> Result<usize> {
    Ok(gpu.download(hits)?.iter().map(|&h| h as usize).sum())
}
