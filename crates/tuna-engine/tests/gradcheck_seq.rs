//! Gradient checks for the sequence kernels: RoPE, attention and the fused LM head +
//! cross-entropy.
//!
//! Each test re-implements the forward in f64 here (independently of the kernels), takes central
//! finite differences of a random scalar loss through it, and compares them with the f32
//! `_backward` kernels. Tolerance: |analytic − numeric| ≤ ATOL + RTOL·|numeric| with the values
//! below (f32 kernels against f64 differences with step 1e-4, whose error is ~1e-8).
//! Also here: accumulate tests (backward twice → 2×) and the packed-boundary isolation test.

use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tuna_engine::WeightRef;
use tuna_engine::ops::attention::{attention_backward, attention_forward};
use tuna_engine::ops::lm_head_ce::{
    lm_head_ce_backward, lm_head_ce_backward_weighted, lm_head_ce_forward,
    lm_head_ce_forward_backward,
};
use tuna_engine::ops::matmul::Precision;
use tuna_engine::ops::rope::{RopeTable, rope_backward, rope_forward};

const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-3;
const STEP: f64 = 1e-4;

fn rand_vec(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central difference of `f` along coordinate `i` of `x`.
fn numeric_grad(x: &mut [f64], i: usize, f: &dyn Fn(&[f64]) -> f64) -> f64 {
    let x0 = x[i];
    x[i] = x0 + STEP;
    let up = f(x);
    x[i] = x0 - STEP;
    let down = f(x);
    x[i] = x0;
    (up - down) / (2.0 * STEP)
}

/// Checks `analytic` against finite differences of `f` at `count` random coordinates (all when
/// `count >= x.len()`); returns the largest error seen.
fn check_grad(
    name: &str,
    analytic: &[f32],
    x: &[f32],
    count: usize,
    rng: &mut StdRng,
    f: &dyn Fn(&[f64]) -> f64,
) -> f64 {
    assert_eq!(analytic.len(), x.len());
    let mut xd = widen(x);
    let coords: Vec<usize> = if count >= x.len() {
        (0..x.len()).collect()
    } else {
        (0..count).map(|_| rng.random_range(0..x.len())).collect()
    };
    let mut worst = 0.0f64;
    let mut nonzero = 0;
    for i in coords {
        let num = numeric_grad(&mut xd, i, f);
        let ana = analytic[i] as f64;
        let err = (ana - num).abs();
        assert!(
            err <= ATOL + RTOL * num.abs(),
            "{name}[{i}]: analytic {ana:.8e} vs numeric {num:.8e} (err {err:.3e})"
        );
        if num.abs() > 1e-6 {
            nonzero += 1;
        }
        worst = worst.max(err);
    }
    // Guard against a vacuous check where every sampled gradient is zero.
    assert!(nonzero > 0, "{name}: every sampled gradient is zero");
    println!("{name}: max abs err {worst:.3e}");
    worst
}

// ---------------------------------------------------------------- RoPE

fn rope_ref(x: &[f64], positions: &[u32], table: &RopeTable, nh: usize, hd: usize) -> Vec<f64> {
    let half = hd / 2;
    let mut y = x.to_vec();
    for (t, &p) in positions.iter().enumerate() {
        let (cos, sin) = table.row(p as usize);
        for h in 0..nh {
            let o = (t * nh + h) * hd;
            for i in 0..half {
                let (a, b) = (x[o + i], x[o + i + half]);
                let (c, s) = (cos[i] as f64, sin[i] as f64);
                y[o + i] = a * c - b * s;
                y[o + i + half] = b * c + a * s;
            }
        }
    }
    y
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(1);
    let (bt, nh, hd) = (9, 3, 16);
    let table = RopeTable::new(hd, 1_000_000.0, 64);
    let positions: Vec<u32> = (0..bt).map(|_| rng.random_range(0..64)).collect();
    let x = rand_vec(&mut rng, bt * nh * hd, 1.0);
    let r = rand_vec(&mut rng, bt * nh * hd, 1.0);
    // Forward of the kernel agrees with the f64 reference.
    let mut y = x.clone();
    rope_forward(&mut y, &positions, &table, nh, hd);
    let yr = rope_ref(&widen(&x), &positions, &table, nh, hd);
    for (a, b) in y.iter().zip(&yr) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
    // loss = Σ r ∘ rope(x); its gradient is rope_backward(r).
    let mut g = r.clone();
    rope_backward(&mut g, &positions, &table, nh, hd);
    let rd = widen(&r);
    let loss = |xd: &[f64]| -> f64 {
        rope_ref(xd, &positions, &table, nh, hd)
            .iter()
            .zip(&rd)
            .map(|(a, b)| a * b)
            .sum()
    };
    check_grad("rope dx", &g, &x, usize::MAX, &mut rng, &loss);
}

// ---------------------------------------------------------------- attention

struct AttnShape<'a> {
    seq_lens: &'a [usize],
    nh: usize,
    nkv: usize,
    hd: usize,
}

impl AttnShape<'_> {
    fn bt(&self) -> usize {
        self.seq_lens.iter().sum()
    }
}

/// f64 reference: block-diagonal causal GQA softmax attention.
fn attention_ref(q: &[f64], k: &[f64], v: &[f64], s: &AttnShape) -> Vec<f64> {
    let (nh, nkv, hd) = (s.nh, s.nkv, s.hd);
    let g = nh / nkv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; s.bt() * nh * hd];
    let mut off = 0;
    for &len in s.seq_lens {
        for h in 0..nh {
            let j = h / g;
            for i in 0..len {
                let qi = &q[((off + i) * nh + h) * hd..][..hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|t| {
                        let kt = &k[((off + t) * nkv + j) * hd..][..hd];
                        qi.iter().zip(kt).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (t, ev) in e.iter().enumerate() {
                    let vt = &v[((off + t) * nkv + j) * hd..][..hd];
                    for c in 0..hd {
                        out[((off + i) * nh + h) * hd + c] += ev / z * vt[c];
                    }
                }
            }
        }
        off += len;
    }
    out
}

struct AttnCase {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    r: Vec<f32>,
}

fn attn_case(rng: &mut StdRng, s: &AttnShape) -> AttnCase {
    let bt = s.bt();
    AttnCase {
        q: rand_vec(rng, bt * s.nh * s.hd, 1.5),
        k: rand_vec(rng, bt * s.nkv * s.hd, 1.5),
        v: rand_vec(rng, bt * s.nkv * s.hd, 1.0),
        r: rand_vec(rng, bt * s.nh * s.hd, 1.0),
    }
}

/// Runs forward + backward (dout = r) into zeroed grads; returns (out, dq, dk, dv).
fn attn_grads(c: &AttnCase, s: &AttnShape, times: usize) -> [Vec<f32>; 4] {
    let bt = s.bt();
    let mut out = vec![0.0; c.q.len()];
    let mut lse = vec![0.0; bt * s.nh];
    attention_forward(
        &mut out, &mut lse, &c.q, &c.k, &c.v, s.seq_lens, s.nh, s.nkv, s.hd,
    );
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; c.q.len()],
        vec![0.0; c.k.len()],
        vec![0.0; c.v.len()],
    );
    for _ in 0..times {
        attention_backward(
            &mut dq, &mut dk, &mut dv, &c.r, &out, &lse, &c.q, &c.k, &c.v, s.seq_lens, s.nh, s.nkv,
            s.hd,
        );
    }
    [out, dq, dk, dv]
}

#[test]
fn attention_backward_matches_finite_differences() {
    // GQA with several packed sequences of unequal length. With nh / nkv = 8 the fast path uses
    // 32-position query blocks, so the 70-token sequence spans three blocks (one partial).
    let shapes = [
        AttnShape {
            seq_lens: &[70, 33, 1, 5],
            nh: 8,
            nkv: 1,
            hd: 8,
        },
        AttnShape {
            seq_lens: &[13, 20],
            nh: 6,
            nkv: 2,
            hd: 16,
        },
        AttnShape {
            seq_lens: &[17],
            nh: 2,
            nkv: 2,
            hd: 4,
        },
    ];
    let mut rng = StdRng::seed_from_u64(2);
    for s in &shapes {
        let c = attn_case(&mut rng, s);
        let [out, dq, dk, dv] = attn_grads(&c, s, 1);
        let (qd, kd, vd, rd) = (widen(&c.q), widen(&c.k), widen(&c.v), widen(&c.r));
        let out_ref = attention_ref(&qd, &kd, &vd, s);
        let fwd_err = out
            .iter()
            .zip(&out_ref)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            fwd_err < 1e-5,
            "forward vs f64 reference: max err {fwd_err}"
        );
        let dot = |o: Vec<f64>| -> f64 { o.iter().zip(&rd).map(|(a, b)| a * b).sum() };
        let label = format!("{:?} nh {} nkv {}", s.seq_lens, s.nh, s.nkv);
        check_grad(&format!("{label} dq"), &dq, &c.q, 300, &mut rng, &|x| {
            dot(attention_ref(x, &kd, &vd, s))
        });
        check_grad(&format!("{label} dk"), &dk, &c.k, 300, &mut rng, &|x| {
            dot(attention_ref(&qd, x, &vd, s))
        });
        check_grad(&format!("{label} dv"), &dv, &c.v, 300, &mut rng, &|x| {
            dot(attention_ref(&qd, &kd, x, s))
        });
    }
}

#[test]
fn attention_backward_accumulates() {
    let s = AttnShape {
        seq_lens: &[40, 25],
        nh: 4,
        nkv: 2,
        hd: 16,
    };
    let mut rng = StdRng::seed_from_u64(3);
    let c = attn_case(&mut rng, &s);
    let [_, dq1, dk1, dv1] = attn_grads(&c, &s, 1);
    let [_, dq2, dk2, dv2] = attn_grads(&c, &s, 2);
    for (name, one, two) in [("dq", dq1, dq2), ("dk", dk1, dk2), ("dv", dv1, dv2)] {
        for (a, b) in one.iter().zip(&two) {
            assert!(
                (2.0 * a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{name}: 2×{a} vs {b}"
            );
        }
    }
}

#[test]
fn packed_sequences_do_not_attend_across_boundaries() {
    let s = AttnShape {
        seq_lens: &[50, 70, 30],
        nh: 14,
        nkv: 2,
        hd: 32,
    };
    let (nkv, hd) = (s.nkv, s.hd);
    let mut rng = StdRng::seed_from_u64(4);
    let base = attn_case(&mut rng, &s);
    let [out0, dq0, dk0, dv0] = attn_grads(&base, &s, 1);
    let row_q = s.nh * hd;
    let row_kv = nkv * hd;
    let bounds = [0usize, 50, 120, 150];
    // Perturb the keys and values of each sequence in turn (and its output gradient): every other
    // sequence's outputs and gradients must stay bit-identical, earlier and later ones alike.
    for seq in 0..3 {
        let mut c = AttnCase {
            q: base.q.clone(),
            k: base.k.clone(),
            v: base.v.clone(),
            r: base.r.clone(),
        };
        let (t0, t1) = (bounds[seq], bounds[seq + 1]);
        for x in &mut c.k[t0 * row_kv..t1 * row_kv] {
            *x += rng.random_range(-3.0..3.0);
        }
        for x in &mut c.v[t0 * row_kv..t1 * row_kv] {
            *x = rng.random_range(-10.0..10.0);
        }
        for x in &mut c.r[t0 * row_q..t1 * row_q] {
            *x = rng.random_range(-5.0..5.0);
        }
        let [out, dq, dk, dv] = attn_grads(&c, &s, 1);
        for other in (0..3).filter(|&o| o != seq) {
            let (u0, u1) = (bounds[other], bounds[other + 1]);
            let q_rows = u0 * row_q..u1 * row_q;
            let kv_rows = u0 * row_kv..u1 * row_kv;
            assert!(
                out[q_rows.clone()] == out0[q_rows.clone()],
                "perturbing seq {seq} changed out of {other}"
            );
            assert!(
                dq[q_rows.clone()] == dq0[q_rows],
                "perturbing seq {seq} changed dq of {other}"
            );
            assert!(
                dk[kv_rows.clone()] == dk0[kv_rows.clone()],
                "perturbing seq {seq} changed dk of {other}"
            );
            assert!(
                dv[kv_rows.clone()] == dv0[kv_rows],
                "perturbing seq {seq} changed dv of {other}"
            );
        }
        // The perturbed sequence itself did change (the test is not vacuous).
        assert!(out[t0 * row_q..t1 * row_q] != out0[t0 * row_q..t1 * row_q]);
    }
}

// ---------------------------------------------------------------- LM head + cross-entropy

/// f64 reference of `scale · Σ_r (logsumexp(W h_r) − (W h_r)[target_r])`.
fn ce_ref(
    hidden: &[f64],
    w: &[f64],
    targets: &[u32],
    scale: f64,
    n: usize,
    c: usize,
    v: usize,
) -> f64 {
    let mut total = 0.0;
    for r in 0..n {
        let h = &hidden[r * c..(r + 1) * c];
        let logits: Vec<f64> = (0..v)
            .map(|j| {
                h.iter()
                    .zip(&w[j * c..(j + 1) * c])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        total += lse - logits[targets[r] as usize];
    }
    scale * total
}

/// dweight against finite differences on every target's row (where the one-hot term lands).
fn check_target_rows(
    label: &str,
    dw: &[f32],
    w: &[f64],
    targets: &[u32],
    c: usize,
    f: &dyn Fn(&[f64]) -> f64,
) {
    let mut wm = w.to_vec();
    for &t in targets {
        for k in 0..c {
            let i = t as usize * c + k;
            let num = numeric_grad(&mut wm, i, f);
            let err = (dw[i] as f64 - num).abs();
            assert!(
                err <= ATOL + RTOL * num.abs(),
                "{label} dweight[{i}] {} vs {num}",
                dw[i]
            );
        }
    }
}

#[test]
fn lm_head_ce_backward_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(5);
    // v crosses a vocabulary chunk boundary (chunks are 4096 rows).
    let (n, c, v) = (5, 8, 4096 + 300);
    let hidden = rand_vec(&mut rng, n * c, 1.0);
    let w32 = rand_vec(&mut rng, v * c, 1.0);
    let wbf: Vec<bf16> = w32.iter().map(|&x| bf16::from_f32(x)).collect();
    // Targets on both sides of the chunk boundary.
    let targets: Vec<u32> = vec![3, 4095, 4096, 4300, 1000];
    let scale = 1.0 / 7.0;
    for weight in [WeightRef::F32(&w32), WeightRef::BF16(&wbf)] {
        let wf = weight.to_f32_vec();
        let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
        lm_head_ce_forward(
            &mut losses,
            &mut lse,
            &hidden,
            weight,
            &targets,
            n,
            c,
            v,
            Precision::F32,
        );
        let (hd, wd) = (widen(&hidden), widen(&wf));
        let want = ce_ref(&hd, &wd, &targets, 1.0, n, c, v);
        let got: f64 = losses.iter().map(|&l| l as f64).sum();
        assert!(
            (got - want).abs() < 1e-4,
            "{:?}: loss {got} vs f64 {want}",
            weight.dtype()
        );

        let mut dh = vec![0.0; n * c];
        let mut dw = vec![0.0; v * c];
        lm_head_ce_backward(
            &mut dh,
            Some(&mut dw),
            &hidden,
            weight,
            &targets,
            &lse,
            scale,
            n,
            c,
            v,
            Precision::F32,
        );
        let sc = scale as f64;
        let label = format!("{:?}", weight.dtype());
        check_grad(
            &format!("{label} dhidden"),
            &dh,
            &hidden,
            usize::MAX,
            &mut rng,
            &|x| ce_ref(x, &wd, &targets, sc, n, c, v),
        );
        // The fused single pass (forward + dhidden, online rescaled) against the same differences.
        let (mut losses_f, mut lse_f, mut dh_f) = (vec![0.0; n], vec![0.0; n], vec![0.0; n * c]);
        lm_head_ce_forward_backward(
            &mut losses_f,
            &mut lse_f,
            &mut dh_f,
            &hidden,
            weight,
            &targets,
            scale,
            n,
            c,
            v,
            Precision::F32,
        );
        let got_f: f64 = losses_f.iter().map(|&l| l as f64).sum();
        assert!(
            (got_f - want).abs() < 1e-4,
            "fused loss {got_f} vs f64 {want}"
        );
        check_grad(
            &format!("{label} fused dhidden"),
            &dh_f,
            &hidden,
            usize::MAX,
            &mut rng,
            &|x| ce_ref(x, &wd, &targets, sc, n, c, v),
        );
        // dweight: random rows plus every target row (where the one-hot term lands).
        check_grad(&format!("{label} dweight"), &dw, &wf, 150, &mut rng, &|x| {
            ce_ref(&hd, x, &targets, sc, n, c, v)
        });
        check_target_rows(&label, &dw, &wd, &targets, c, &|x| {
            ce_ref(&hd, x, &targets, sc, n, c, v)
        });
    }
}

/// f64 reference of `Σ_r row_scale[r] · (logsumexp(W h_r) − (W h_r)[target_r])`.
fn ce_ref_weighted(
    hidden: &[f64],
    w: &[f64],
    targets: &[u32],
    row_scale: &[f64],
    n: usize,
    c: usize,
    v: usize,
) -> f64 {
    (0..n)
        .map(|r| {
            let h = &hidden[r * c..(r + 1) * c];
            row_scale[r] * ce_ref(h, w, &targets[r..r + 1], 1.0, 1, c, v)
        })
        .sum()
}

/// Per-row factors of both signs (DPO: + on the preferred answer's tokens, − on the other's),
/// including a zero row, against finite differences; and accumulation (twice → 2×).
#[test]
fn lm_head_ce_backward_weighted_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(15);
    let (n, c, v) = (6, 8, 4096 + 200);
    let hidden = rand_vec(&mut rng, n * c, 1.0);
    let w32 = rand_vec(&mut rng, v * c, 1.0);
    let wbf: Vec<bf16> = w32.iter().map(|&x| bf16::from_f32(x)).collect();
    let targets: Vec<u32> = vec![3, 4095, 4096, 4250, 1000, 17];
    let row_scale = [0.3f32, 0.3, -0.7, -0.7, 0.0, 1.25];
    let rs: Vec<f64> = row_scale.iter().map(|&x| x as f64).collect();
    for weight in [WeightRef::F32(&w32), WeightRef::BF16(&wbf)] {
        let wf = weight.to_f32_vec();
        let (hd, wd) = (widen(&hidden), widen(&wf));
        let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
        lm_head_ce_forward(
            &mut losses,
            &mut lse,
            &hidden,
            weight,
            &targets,
            n,
            c,
            v,
            Precision::F32,
        );
        let mut dh = vec![0.0; n * c];
        let mut dw = vec![0.0; v * c];
        lm_head_ce_backward_weighted(
            &mut dh,
            Some(&mut dw),
            &hidden,
            weight,
            &targets,
            &lse,
            &row_scale,
            n,
            c,
            v,
            Precision::F32,
        );
        let label = format!("{:?} weighted", weight.dtype());
        check_grad(
            &format!("{label} dhidden"),
            &dh,
            &hidden,
            usize::MAX,
            &mut rng,
            &|x| ce_ref_weighted(x, &wd, &targets, &rs, n, c, v),
        );
        assert!(
            dh[4 * c..5 * c].iter().all(|&x| x == 0.0),
            "a zero factor gives no gradient"
        );
        check_grad(&format!("{label} dweight"), &dw, &wf, 150, &mut rng, &|x| {
            ce_ref_weighted(&hd, x, &targets, &rs, n, c, v)
        });
        check_target_rows(&label, &dw, &wd, &targets, c, &|x| {
            ce_ref_weighted(&hd, x, &targets, &rs, n, c, v)
        });
        // Equal factors give exactly what the uniform backward gives; a second call doubles.
        let (mut dh_u, mut dh_w) = (vec![0.0; n * c], vec![0.0; n * c]);
        lm_head_ce_backward(
            &mut dh_u,
            None,
            &hidden,
            weight,
            &targets,
            &lse,
            0.5,
            n,
            c,
            v,
            Precision::F32,
        );
        for _ in 0..2 {
            lm_head_ce_backward_weighted(
                &mut dh_w,
                None,
                &hidden,
                weight,
                &targets,
                &lse,
                &[0.5; 6],
                n,
                c,
                v,
                Precision::F32,
            );
        }
        for (a, b) in dh_u.iter().zip(&dh_w) {
            assert!(
                (2.0 * a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "2×{a} vs {b}"
            );
        }
    }
}

#[test]
fn lm_head_ce_backward_accumulates() {
    let mut rng = StdRng::seed_from_u64(6);
    let (n, c, v) = (7, 16, 5000);
    let hidden = rand_vec(&mut rng, n * c, 1.0);
    let w = rand_vec(&mut rng, v * c, 0.5);
    let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
    lm_head_ce_forward(
        &mut losses,
        &mut lse,
        &hidden,
        WeightRef::F32(&w),
        &targets,
        n,
        c,
        v,
        Precision::F32,
    );
    let run = |times: usize| {
        let (mut dh, mut dw) = (vec![0.0; n * c], vec![0.0; v * c]);
        for _ in 0..times {
            lm_head_ce_backward(
                &mut dh,
                Some(&mut dw),
                &hidden,
                WeightRef::F32(&w),
                &targets,
                &lse,
                0.25,
                n,
                c,
                v,
                Precision::F32,
            );
        }
        (dh, dw)
    };
    // The fused pass accumulates dhidden likewise.
    let fused = |times: usize| {
        let mut dh = vec![0.0; n * c];
        for _ in 0..times {
            let (mut l, mut s) = (vec![0.0; n], vec![0.0; n]);
            let w = WeightRef::F32(&w);
            lm_head_ce_forward_backward(
                &mut l,
                &mut s,
                &mut dh,
                &hidden,
                w,
                &targets,
                0.25,
                n,
                c,
                v,
                Precision::F32,
            );
        }
        dh
    };
    let (f1, f2) = (fused(1), fused(2));
    for (a, b) in f1.iter().zip(&f2) {
        assert!(
            (2.0 * a - b).abs() <= 1e-6 * (1.0 + b.abs()),
            "fused dhidden: 2×{a} vs {b}"
        );
    }
    let (dh1, dw1) = run(1);
    let (dh2, dw2) = run(2);
    for (name, one, two) in [("dhidden", dh1, dh2), ("dweight", dw1, dw2)] {
        assert!(one.iter().any(|&x| x != 0.0), "{name} is all zero");
        for (a, b) in one.iter().zip(&two) {
            assert!(
                (2.0 * a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{name}: 2×{a} vs {b}"
            );
        }
    }
}
