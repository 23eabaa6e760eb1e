//! Finite differences on the device: every GPU backward against central differences of the
//! same GPU forward (lavapipe, or CUDA with `--features cuda-tests`; f32), independently of the CPU engine (`tests/kernels.rs`
//! compares with that). Each check uses L = Σ w ⊙ forward(inputs) for a fixed random w, so the
//! backward's input is w. LoRA's is in `tests/kernels.rs`; AdamW has no backward.
//!
//! Probes: the coordinate with the largest |gradient| of each input, plus random ones. The
//! error is measured against the input's largest |gradient| (as `check_tensor` does): f32
//! rounding of L over a step of 1e-2 leaves up to about 1e-4 of it (measured on lavapipe); the
//! stated tolerance is 1e-3.

mod common;

use rand::Rng;
use rand::rngs::StdRng;

use common::{Dev, TestRuntime, device, download, rand_vec, rng};
use tuna_engine::ops::rope::RopeTable;
use tuna_gpu::ops::attention::PackedSeqs;
use tuna_gpu::ops::rope::GpuRopeTable;
use tuna_gpu::{Buffer, ops as g};

const STEP: f32 = 1e-2;
const TOL: f64 = 1e-3;
const RANDOM_PROBES: usize = 5;

/// Σ w ⊙ y in f64.
fn dot(y: &[f32], w: &[f32]) -> f64 {
    assert_eq!(y.len(), w.len());
    y.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
}

fn zeros(gpu: &Dev, n: usize) -> Buffer<TestRuntime, f32> {
    gpu.upload(&vec![0.0f32; n])
}

/// Central differences of `loss` at the probed coordinates of each input, against `grads`.
/// The step actually taken is read back from the perturbed f32 values.
fn fd_check(
    kernel: &str,
    names: &[&str],
    inputs: &[Vec<f32>],
    grads: &[Vec<f32>],
    loss: impl Fn(&[Vec<f32>]) -> f64,
    r: &mut StdRng,
) {
    let mut worst = 0.0f64;
    for (which, (input, grad)) in inputs.iter().zip(grads).enumerate() {
        assert_eq!(input.len(), grad.len(), "{kernel} {}", names[which]);
        let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs() as f64));
        assert!(
            scale > 0.0,
            "{kernel} {}: all-zero gradient, the check would be vacuous",
            names[which]
        );
        let largest = (0..grad.len())
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap_or(0);
        let probes = std::iter::once(largest)
            .chain((0..RANDOM_PROBES).map(|_| r.random_range(0..grad.len())))
            .collect::<Vec<_>>();
        for at in probes {
            let (mut plus, mut minus) = (inputs.to_vec(), inputs.to_vec());
            plus[which][at] = input[at] + STEP;
            minus[which][at] = input[at] - STEP;
            let h = plus[which][at] as f64 - minus[which][at] as f64;
            let numeric = (loss(&plus) - loss(&minus)) / h;
            let rel = (grad[at] as f64 - numeric).abs() / scale;
            worst = worst.max(rel);
            assert!(
                rel <= TOL,
                "{kernel} d{}[{at}]: backward {} vs finite difference {numeric} \
                 (largest |grad| {scale:.3e}, relative error {rel:.3e})",
                names[which],
                grad[at]
            );
        }
    }
    println!("{kernel}: finite differences, worst relative error {worst:.3e}");
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let gpu = device();
    let (n, c, eps) = (5, 96, 1e-6);
    let mut r = rng(101);
    let inp = rand_vec(&mut r, n * c, 2.0);
    let w: Vec<f32> = rand_vec(&mut r, c, 0.5).iter().map(|x| x + 1.0).collect();
    let dout = rand_vec(&mut r, n * c, 1.0);
    let forward = |xs: &[Vec<f32>]| {
        let (out, rstd) = (gpu.alloc::<f32>(n * c), gpu.alloc::<f32>(n));
        let (gi, gw) = (gpu.upload(&xs[0]), gpu.upload(&xs[1]));
        g::rmsnorm::rmsnorm_forward(&gpu, &out, &rstd, &gi, &gw, n, c, eps);
        (out, rstd, gi, gw)
    };
    let inputs = [inp, w];
    let (_, rstd, gi, gw) = forward(&inputs);
    let (di, dw) = (zeros(&gpu, n * c), zeros(&gpu, c));
    g::rmsnorm::rmsnorm_backward(
        &gpu,
        &di,
        Some(&dw),
        &gpu.upload(&dout),
        &gi,
        &gw,
        &rstd,
        n,
        c,
    );
    let grads = [download(&gpu, &di), download(&gpu, &dw)];
    fd_check(
        "rmsnorm",
        &["inp", "weight"],
        &inputs,
        &grads,
        |xs| dot(&download(&gpu, &forward(xs).0), &dout),
        &mut r,
    );
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let gpu = device();
    let n = 300;
    let mut r = rng(102);
    let inputs = [rand_vec(&mut r, n, 6.0), rand_vec(&mut r, n, 2.0)];
    let dout = rand_vec(&mut r, n, 1.0);
    let forward = |xs: &[Vec<f32>]| {
        let out = gpu.alloc::<f32>(n);
        g::swiglu::swiglu_forward(&gpu, &out, &gpu.upload(&xs[0]), &gpu.upload(&xs[1]));
        download(&gpu, &out)
    };
    let (dg, du) = (zeros(&gpu, n), zeros(&gpu, n));
    let (gg, gu) = (gpu.upload(&inputs[0]), gpu.upload(&inputs[1]));
    g::swiglu::swiglu_backward(&gpu, &dg, &du, &gpu.upload(&dout), &gg, &gu);
    let grads = [download(&gpu, &dg), download(&gpu, &du)];
    fd_check(
        "swiglu",
        &["gate", "up"],
        &inputs,
        &grads,
        |xs| dot(&forward(xs), &dout),
        &mut r,
    );
}

#[test]
fn rope_backward_matches_finite_differences() {
    let gpu = device();
    let (nh, hd) = (2, 64);
    let table = GpuRopeTable::upload(&gpu, &RopeTable::new(hd, 1_000_000.0, 128));
    let positions: Vec<u32> = (0..9).chain(0..4).chain(100..107).collect();
    let bt = positions.len();
    let gp = gpu.upload(&positions);
    let mut r = rng(103);
    let inputs = [rand_vec(&mut r, bt * nh * hd, 2.0)];
    let dout = rand_vec(&mut r, bt * nh * hd, 1.0);
    let forward = |xs: &[Vec<f32>]| {
        let x = gpu.upload(&xs[0]);
        g::rope::rope_forward(&gpu, &x, &gp, &table, nh, hd);
        download(&gpu, &x)
    };
    // The backward works in place: dout in, d(input) out.
    let dx = gpu.upload(&dout);
    g::rope::rope_backward(&gpu, &dx, &gp, &table, nh, hd);
    fd_check(
        "rope",
        &["x"],
        &inputs,
        &[download(&gpu, &dx)],
        |xs| dot(&forward(xs), &dout),
        &mut r,
    );
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let gpu = device();
    let (v, c) = (20, 16);
    let ids: Vec<u32> = vec![3, 7, 3, 19, 0, 7, 7];
    let gids = gpu.upload(&ids);
    let mut r = rng(104);
    let inputs = [rand_vec(&mut r, v * c, 1.0)];
    let dout = rand_vec(&mut r, ids.len() * c, 1.0);
    let forward = |xs: &[Vec<f32>]| {
        let out = gpu.alloc::<f32>(ids.len() * c);
        g::embedding::embedding_forward(&gpu, &out, &gids, &gpu.upload(&xs[0]), c);
        download(&gpu, &out)
    };
    let dt = zeros(&gpu, v * c);
    g::embedding::embedding_backward(&gpu, &dt, &gpu.upload(&dout), &gids, c);
    fd_check(
        "embedding",
        &["table"],
        &inputs,
        &[download(&gpu, &dt)],
        |xs| dot(&forward(xs), &dout),
        &mut r,
    );
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let gpu = device();
    let (bt, c, oc) = (9, 24, 17);
    let mut r = rng(105);
    let inputs = [
        rand_vec(&mut r, bt * c, 1.0),
        rand_vec(&mut r, oc * c, 0.3),
        rand_vec(&mut r, oc, 0.5),
    ];
    let dout = rand_vec(&mut r, bt * oc, 1.0);
    let forward = |xs: &[Vec<f32>]| {
        let out = gpu.alloc::<f32>(bt * oc);
        let (gi, gw, gb) = (gpu.upload(&xs[0]), gpu.upload(&xs[1]), gpu.upload(&xs[2]));
        g::matmul::matmul_forward(&gpu, &out, &gi, &gw, Some(&gb), bt, c, oc).unwrap();
        download(&gpu, &out)
    };
    let (di, dw, db) = (zeros(&gpu, bt * c), zeros(&gpu, oc * c), zeros(&gpu, oc));
    g::matmul::matmul_backward(
        &gpu,
        Some(&di),
        Some(&dw),
        Some(&db),
        &gpu.upload(&dout),
        &gpu.upload(&inputs[0]),
        &gpu.upload(&inputs[1]),
        bt,
        c,
        oc,
    )
    .unwrap();
    let grads = [
        download(&gpu, &di),
        download(&gpu, &dw),
        download(&gpu, &db),
    ];
    fd_check(
        "matmul",
        &["inp", "weight", "bias"],
        &inputs,
        &grads,
        |xs| dot(&forward(xs), &dout),
        &mut r,
    );
}

#[test]
fn attention_backward_matches_finite_differences() {
    let gpu = device();
    // Packed: a sequence longer than a 32-row block, then two short ones; GQA 2:1.
    let seq_lens = [35, 6, 3];
    let (nh, nkv, hd) = (2, 1, 64);
    let seqs = PackedSeqs::new(&gpu, &seq_lens);
    let bt: usize = seq_lens.iter().sum();
    let mut r = rng(106);
    let inputs = [
        rand_vec(&mut r, bt * nh * hd, 1.0),
        rand_vec(&mut r, bt * nkv * hd, 1.0),
        rand_vec(&mut r, bt * nkv * hd, 1.0),
    ];
    let dout = rand_vec(&mut r, bt * nh * hd, 1.0);
    let forward = |xs: &[Vec<f32>]| {
        let (out, lse) = (gpu.alloc::<f32>(bt * nh * hd), gpu.alloc::<f32>(bt * nh));
        let (q, k, v) = (gpu.upload(&xs[0]), gpu.upload(&xs[1]), gpu.upload(&xs[2]));
        g::attention::attention_forward(&gpu, &out, &lse, &q, &k, &v, &seqs, nh, nkv, hd);
        (out, lse, q, k, v)
    };
    let (out, lse, q, k, v) = forward(&inputs);
    let (dq, dk, dv) = (
        zeros(&gpu, q.len()),
        zeros(&gpu, k.len()),
        zeros(&gpu, v.len()),
    );
    g::attention::attention_backward(
        &gpu,
        &dq,
        &dk,
        &dv,
        &gpu.upload(&dout),
        &out,
        &lse,
        &q,
        &k,
        &v,
        &seqs,
        nh,
        nkv,
        hd,
    );
    let grads = [
        download(&gpu, &dq),
        download(&gpu, &dk),
        download(&gpu, &dv),
    ];
    fd_check(
        "attention",
        &["q", "k", "v"],
        &inputs,
        &grads,
        |xs| dot(&download(&gpu, &forward(xs).0), &dout),
        &mut r,
    );
}

#[test]
fn lm_head_ce_backward_matches_finite_differences() {
    let gpu = device();
    // Two vocabulary chunks (8192 each), the second ragged.
    let (n, c, v) = (6, 16, 9000);
    let scale = 1.0 / 11.0; // 1 / (unmasked tokens of the accumulated batch)
    let mut r = rng(107);
    let targets: Vec<u32> = (0..n).map(|_| r.random_range(0..v as u32)).collect();
    let gt = gpu.upload(&targets);
    let inputs = [rand_vec(&mut r, n * c, 1.0), rand_vec(&mut r, v * c, 1.0)];
    let forward = |xs: &[Vec<f32>]| {
        let (losses, lse, hits) = (
            gpu.alloc::<f32>(n),
            gpu.alloc::<f32>(n),
            gpu.alloc::<u32>(n),
        );
        let (h, w) = (gpu.upload(&xs[0]), gpu.upload(&xs[1]));
        g::lm_head_ce::lm_head_ce_forward(&gpu, &losses, &lse, &hits, &h, &w, &gt, n, c, v)
            .unwrap();
        (losses, lse, h, w)
    };
    let (_, lse, h, w) = forward(&inputs);
    let (dh, dw) = (zeros(&gpu, n * c), zeros(&gpu, v * c));
    g::lm_head_ce::lm_head_ce_backward(&gpu, &dh, Some(&dw), &h, &w, &gt, &lse, scale, n, c, v)
        .unwrap();
    let grads = [download(&gpu, &dh), download(&gpu, &dw)];
    fd_check(
        "lm_head_ce",
        &["hidden", "weight"],
        &inputs,
        &grads,
        |xs| {
            scale as f64
                * download(&gpu, &forward(xs).0)
                    .iter()
                    .map(|&l| l as f64)
                    .sum::<f64>()
        },
        &mut r,
    );
}
