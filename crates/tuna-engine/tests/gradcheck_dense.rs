//! Gradient checks for the dense kernels: matmul, embedding, rmsnorm, swiglu.
//!
//! Each check takes a scalar loss `L = Σ out ⊙ R` (R random), computes `∂L/∂x` by f64 central
//! finite differences of an independent f64 reference forward, and compares every element with the
//! kernel's `_backward` (f32, called with `dout = R`). The f32 forward is first checked against the
//! same f64 reference, so the finite differences describe the function the kernels compute.
//! Also: backward accumulates (two calls give 2×), and AdamW against hand-computed f64 values.

use half::bf16;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tuna_engine::WeightRef;
use tuna_engine::ops::adamw::{AdamWConfig, adamw_update};
use tuna_engine::ops::embedding::{embedding_backward, embedding_forward};
use tuna_engine::ops::matmul::{Precision, matmul_backward, matmul_forward};
use tuna_engine::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use tuna_engine::ops::swiglu::{swiglu_backward, swiglu_forward};

/// Finite-difference step: with f64 the truncation error (h²) and rounding error (ε/h) are both
/// ~1e-10 relative.
const H: f64 = 1e-5;

fn rand_vec(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central differences of `loss` with respect to every element of `x`.
fn fd_grad(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + H;
            let lp = loss(&xp);
            xp[i] = orig - H;
            let lm = loss(&xp);
            xp[i] = orig;
            (lp - lm) / (2.0 * H)
        })
        .collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| element-wise, printing the worst element
/// (llm.c's `check_tensor`).
fn check(name: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g as f64 - w).abs() - (atol + rtol * w.abs());
        if excess > worst.0 || i == 0 {
            worst = (excess.max(worst.0), i);
        }
    }
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    println!(
        "{name}: max abs diff {max_abs:.3e} over {} elements",
        got.len()
    );
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{name}[{i}]: got {}, want {} (atol {atol}, rtol {rtol})",
        got[i],
        want[i]
    );
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---- f64 reference forwards ------------------------------------------------------------------

/// out (bt, oc) = inp (bt, c) · w (oc, c)ᵀ + b (oc)
fn matmul_ref(inp: &[f64], w: &[f64], b: &[f64], bt: usize, c: usize, oc: usize) -> Vec<f64> {
    let mut out = vec![0.0; bt * oc];
    for i in 0..bt {
        for o in 0..oc {
            out[i * oc + o] = b[o] + dot(&inp[i * c..(i + 1) * c], &w[o * c..(o + 1) * c]);
        }
    }
    out
}

fn rmsnorm_ref(inp: &[f64], w: &[f64], n: usize, c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; n * c];
    for i in 0..n {
        let x = &inp[i * c..(i + 1) * c];
        let r = 1.0 / (dot(x, x) / c as f64 + eps).sqrt();
        for j in 0..c {
            out[i * c + j] = x[j] * r * w[j];
        }
    }
    out
}

fn swiglu_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

// ---- matmul --------------------------------------------------------------------------------

#[test]
fn matmul_gradients_f32_weight() {
    let mut rng = StdRng::seed_from_u64(100);
    for (bt, c, oc) in [(1, 4, 3), (5, 7, 6), (13, 9, 11)] {
        let inp = rand_vec(&mut rng, bt * c, -1.0, 1.0);
        let w = rand_vec(&mut rng, oc * c, -1.0, 1.0);
        let b = rand_vec(&mut rng, oc, -1.0, 1.0);
        let r = rand_vec(&mut rng, bt * oc, -1.0, 1.0);
        let (inp64, w64, b64, r64) = (to_f64(&inp), to_f64(&w), to_f64(&b), to_f64(&r));

        let mut out = vec![0.0; bt * oc];
        matmul_forward(
            &mut out,
            &inp,
            WeightRef::F32(&w),
            Some(&b),
            bt,
            c,
            oc,
            Precision::F32,
        );
        // tolerance: f32 forward vs f64, c ≤ 9 unit-size products
        check(
            "matmul forward",
            &out,
            &matmul_ref(&inp64, &w64, &b64, bt, c, oc),
            1e-5,
            1e-5,
        );

        let (mut dinp, mut dw, mut db) = (vec![0.0; bt * c], vec![0.0; oc * c], vec![0.0; oc]);
        matmul_backward(
            Some(&mut dinp),
            Some(&mut dw),
            Some(&mut db),
            &r,
            &inp,
            WeightRef::F32(&w),
            bt,
            c,
            oc,
            Precision::F32,
        );
        let fd_inp = fd_grad(&inp64, |x| dot(&matmul_ref(x, &w64, &b64, bt, c, oc), &r64));
        let fd_w = fd_grad(&w64, |x| dot(&matmul_ref(&inp64, x, &b64, bt, c, oc), &r64));
        let fd_b = fd_grad(&b64, |x| dot(&matmul_ref(&inp64, &w64, x, bt, c, oc), &r64));
        // tolerance: f32 backward of O(1) values summed over ≤ 13 terms
        check("matmul dinp", &dinp, &fd_inp, 1e-5, 1e-5);
        check("matmul dweight", &dw, &fd_w, 1e-5, 1e-5);
        check("matmul dbias", &db, &fd_b, 1e-5, 1e-5);
    }
}

/// Frozen half-precision weight: dinp flows through the widened weight (the gemm block path).
#[test]
fn matmul_gradients_bf16_weight() {
    let mut rng = StdRng::seed_from_u64(101);
    let (bt, c, oc) = (12, 10, 7);
    let inp = rand_vec(&mut rng, bt * c, -1.0, 1.0);
    let wb: Vec<bf16> = rand_vec(&mut rng, oc * c, -1.0, 1.0)
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let w64: Vec<f64> = wb.iter().map(|x| x.to_f64()).collect();
    let zero = vec![0.0; oc];
    let r = rand_vec(&mut rng, bt * oc, -1.0, 1.0);
    let (inp64, r64) = (to_f64(&inp), to_f64(&r));

    let mut out = vec![0.0; bt * oc];
    matmul_forward(
        &mut out,
        &inp,
        WeightRef::BF16(&wb),
        None,
        bt,
        c,
        oc,
        Precision::F32,
    );
    check(
        "matmul bf16 forward",
        &out,
        &matmul_ref(&inp64, &w64, &zero, bt, c, oc),
        1e-5,
        1e-5,
    );

    let mut dinp = vec![0.0; bt * c];
    matmul_backward(
        Some(&mut dinp),
        None,
        None,
        &r,
        &inp,
        WeightRef::BF16(&wb),
        bt,
        c,
        oc,
        Precision::F32,
    );
    let fd_inp = fd_grad(&inp64, |x| {
        dot(&matmul_ref(x, &w64, &zero, bt, c, oc), &r64)
    });
    check("matmul bf16 dinp", &dinp, &fd_inp, 1e-5, 1e-5);
}

// ---- embedding -------------------------------------------------------------------------------

#[test]
fn embedding_gradient() {
    let mut rng = StdRng::seed_from_u64(102);
    let (v, c) = (6, 5);
    let ids = [3u32, 0, 3, 5, 1, 3];
    let table = rand_vec(&mut rng, v * c, -1.0, 1.0);
    let r = rand_vec(&mut rng, ids.len() * c, -1.0, 1.0);
    let r64 = to_f64(&r);
    let gather = |t: &[f64]| -> Vec<f64> {
        ids.iter()
            .flat_map(|&i| t[i as usize * c..(i as usize + 1) * c].to_vec())
            .collect()
    };

    let mut out = vec![0.0; ids.len() * c];
    embedding_forward(&mut out, &ids, WeightRef::F32(&table), c);
    check(
        "embedding forward",
        &out,
        &gather(&to_f64(&table)),
        0.0,
        0.0,
    );

    let mut dt = vec![0.0; v * c];
    embedding_backward(&mut dt, &r, &ids, c);
    let fd = fd_grad(&to_f64(&table), |t| dot(&gather(t), &r64));
    // tolerance: exact sums of ≤ 3 f32 values, FD error ~1e-10
    check("embedding dtable", &dt, &fd, 1e-6, 1e-6);
}

// ---- rmsnorm -------------------------------------------------------------------------------

#[test]
fn rmsnorm_gradients() {
    let mut rng = StdRng::seed_from_u64(103);
    // A model-row case and a per-head case (n = bt·nh rows of head_dim).
    for (n, c, eps) in [(3, 16, 1e-6f32), (8, 5, 1e-5)] {
        let inp = rand_vec(&mut rng, n * c, -2.0, 2.0);
        let w = rand_vec(&mut rng, c, 0.5, 1.5);
        let r = rand_vec(&mut rng, n * c, -1.0, 1.0);
        let (inp64, w64, r64) = (to_f64(&inp), to_f64(&w), to_f64(&r));

        let mut out = vec![0.0; n * c];
        let mut rstd = vec![0.0; n];
        rmsnorm_forward(&mut out, &mut rstd, &inp, &w, n, c, eps);
        check(
            "rmsnorm forward",
            &out,
            &rmsnorm_ref(&inp64, &w64, n, c, eps as f64),
            1e-5,
            1e-5,
        );

        let (mut dinp, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        rmsnorm_backward(&mut dinp, Some(&mut dw), &r, &inp, &w, &rstd, n, c);
        let fd_inp = fd_grad(&inp64, |x| {
            dot(&rmsnorm_ref(x, &w64, n, c, eps as f64), &r64)
        });
        let fd_w = fd_grad(&w64, |x| {
            dot(&rmsnorm_ref(&inp64, x, n, c, eps as f64), &r64)
        });
        // tolerance: f32 backward, values O(1), sums over ≤ 16 terms
        check("rmsnorm dinp", &dinp, &fd_inp, 1e-5, 1e-4);
        check("rmsnorm dweight", &dw, &fd_w, 1e-5, 1e-4);
    }
}

// ---- swiglu --------------------------------------------------------------------------------

#[test]
fn swiglu_gradients() {
    let mut rng = StdRng::seed_from_u64(104);
    let n = 50;
    let gate = rand_vec(&mut rng, n, -6.0, 6.0);
    let up = rand_vec(&mut rng, n, -2.0, 2.0);
    let r = rand_vec(&mut rng, n, -1.0, 1.0);
    let (g64, u64_, r64) = (to_f64(&gate), to_f64(&up), to_f64(&r));

    let mut out = vec![0.0; n];
    swiglu_forward(&mut out, &gate, &up);
    check("swiglu forward", &out, &swiglu_ref(&g64, &u64_), 1e-6, 1e-5);

    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&mut dg, &mut du, &r, &gate, &up);
    let fd_g = fd_grad(&g64, |x| dot(&swiglu_ref(x, &u64_), &r64));
    let fd_u = fd_grad(&u64_, |x| dot(&swiglu_ref(&g64, x), &r64));
    // tolerance: element-wise f32 with a polynomial exp (~3e-7 relative)
    check("swiglu dgate", &dg, &fd_g, 1e-6, 1e-5);
    check("swiglu dup", &du, &fd_u, 1e-6, 1e-5);
}

// ---- accumulation ---------------------------------------------------------------------------

/// Every backward adds into its outputs: two calls on zeroed buffers give twice one call.
/// Sizes are large enough to take the parallel/gemm paths.
#[test]
fn backwards_accumulate() {
    let mut rng = StdRng::seed_from_u64(105);
    let twice = |name: &str, once: &[f32], two: &[f32]| {
        for (i, (&a, &b)) in once.iter().zip(two).enumerate() {
            // tolerance: parallel reductions may sum in another order between calls
            assert!(
                (b - 2.0 * a).abs() <= 1e-5 * (1.0 + a.abs()),
                "{name}[{i}]: once {a}, twice {b}"
            );
        }
    };

    let (bt, c, oc) = (70, 96, 130);
    let inp = rand_vec(&mut rng, bt * c, -1.0, 1.0);
    let w = rand_vec(&mut rng, oc * c, -1.0, 1.0);
    let wb: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
    let dout = rand_vec(&mut rng, bt * oc, -1.0, 1.0);
    for weight in [WeightRef::F32(&w), WeightRef::BF16(&wb)] {
        let run = |times: usize| {
            let (mut dinp, mut dw, mut db) = (vec![0.0; bt * c], vec![0.0; oc * c], vec![0.0; oc]);
            for _ in 0..times {
                matmul_backward(
                    Some(&mut dinp),
                    Some(&mut dw),
                    Some(&mut db),
                    &dout,
                    &inp,
                    weight,
                    bt,
                    c,
                    oc,
                    Precision::F32,
                );
            }
            (dinp, dw, db)
        };
        let (a, b) = (run(1), run(2));
        twice("matmul dinp", &a.0, &b.0);
        twice("matmul dweight", &a.1, &b.1);
        twice("matmul dbias", &a.2, &b.2);
    }

    let (n, c) = (300, 256);
    let x = rand_vec(&mut rng, n * c, -2.0, 2.0);
    let g = rand_vec(&mut rng, n * c, -1.0, 1.0);
    let nw = rand_vec(&mut rng, c, 0.5, 1.5);
    let mut out = vec![0.0; n * c];
    let mut rstd = vec![0.0; n];
    rmsnorm_forward(&mut out, &mut rstd, &x, &nw, n, c, 1e-6);
    let run = |times: usize| {
        let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        for _ in 0..times {
            rmsnorm_backward(&mut dx, Some(&mut dw), &g, &x, &nw, &rstd, n, c);
        }
        (dx, dw)
    };
    let (a, b) = (run(1), run(2));
    twice("rmsnorm dinp", &a.0, &b.0);
    twice("rmsnorm dweight", &a.1, &b.1);

    let up = rand_vec(&mut rng, n * c, -1.0, 1.0);
    let run = |times: usize| {
        let (mut dg, mut du) = (vec![0.0; n * c], vec![0.0; n * c]);
        for _ in 0..times {
            swiglu_backward(&mut dg, &mut du, &g, &x, &up);
        }
        (dg, du)
    };
    let (a, b) = (run(1), run(2));
    twice("swiglu dgate", &a.0, &b.0);
    twice("swiglu dup", &a.1, &b.1);

    let ids: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
    let run = |times: usize| {
        let mut dt = vec![0.0; 7 * c];
        for _ in 0..times {
            embedding_backward(&mut dt, &g, &ids, c);
        }
        dt
    };
    twice("embedding dtable", &run(1), &run(2));
}

// ---- AdamW -----------------------------------------------------------------------------------

/// Two steps of AdamW against the PyTorch formula evaluated in f64 (step counts from 1).
/// n is large enough for the parallel path; the first elements are fixed edge values.
#[test]
fn adamw_two_steps_match_formula() {
    let mut rng = StdRng::seed_from_u64(106);
    let cfg = AdamWConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let n = 40_000;
    let mut p = rand_vec(&mut rng, n, -1.0, 1.0);
    p[0] = 0.5;
    let g1 = {
        let mut g = rand_vec(&mut rng, n, -1.0, 1.0);
        g[0] = 0.0;
        g[1] = 1e-4;
        g
    };
    let g2 = rand_vec(&mut rng, n, -1.0, 1.0);

    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut pe, mut me, mut ve) = (to_f64(&p), vec![0.0f64; n], vec![0.0f64; n]);
    let (lr, b1, b2, eps, wd) = (
        cfg.lr as f64,
        cfg.beta1 as f64,
        cfg.beta2 as f64,
        cfg.eps as f64,
        cfg.weight_decay as f64,
    );
    for (step, g) in [(1u64, &g1), (2, &g2)] {
        adamw_update(&mut p, g, &mut m, &mut v, &cfg, step);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for i in 0..n {
            let gi = g[i] as f64;
            pe[i] *= 1.0 - lr * wd;
            me[i] = b1 * me[i] + (1.0 - b1) * gi;
            ve[i] = b2 * ve[i] + (1.0 - b2) * gi * gi;
            pe[i] -= lr / bc1 * me[i] / (ve[i].sqrt() / bc2.sqrt() + eps);
        }
        // tolerance: f32 arithmetic of a few ops per element
        check(&format!("adamw m step {step}"), &m, &me, 1e-7, 1e-5);
        check(&format!("adamw v step {step}"), &v, &ve, 1e-9, 1e-5);
        check(&format!("adamw params step {step}"), &p, &pe, 1e-7, 1e-6);
    }
    // Hand-checked element: p = 0.5, g = 0 then g2[0]. Step 1: p = 0.5·(1 − 1e-4) exactly.
    let g = g2[0] as f64;
    let p1 = 0.5 * (1.0 - 1e-4);
    let (m2, v2) = (0.1 * g, 0.05 * g * g);
    let want = p1 * (1.0 - 1e-4) - 1e-3 / 0.19 * m2 / (v2.sqrt() / (1.0f64 - 0.9025).sqrt() + 1e-8);
    assert!(
        (p[0] as f64 - want).abs() < 1e-7,
        "p[0] = {}, want {want}",
        p[0]
    );
}
