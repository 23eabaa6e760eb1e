//! Every GPU kernel's forward and backward against the CPU engine's, on Mesa's software Vulkan
//! device (lavapipe) — or on CUDA with `--features cuda-tests` (`scripts/gpu-check.sh`) —, in f32. Tolerance: `common::F32_REL_TOL` (1e-4 of the tensor's largest
//! value). Backward outputs start from random values, so accumulation (`+=`) is checked too.
//! Row reductions run on both paths: the shared-memory tree (what lavapipe gets by default)
//! and the plane (subgroup) path, forced.

mod common;

use rand::Rng;

use common::{Dev, F32_REL_TOL, check_tensor, device, download, rand_vec, rng};
use tuna_engine::WeightRef;
use tuna_engine::ops::matmul::{Layout, Precision, sgemm};
use tuna_engine::ops::{
    adamw, attention, embedding, lm_head_ce, matmul, residual, rmsnorm, rope, swiglu,
};
use tuna_gpu::ops::attention::PackedSeqs;
use tuna_gpu::ops::rope::GpuRopeTable;
use tuna_gpu::{ReduceMode, ops as g};

fn both_reduce_modes() -> [Dev; 2] {
    let gpu = device();
    [
        gpu.clone().with_reduce_mode(ReduceMode::SharedMemory),
        gpu.with_reduce_mode(ReduceMode::Plane),
    ]
}

#[cfg(not(feature = "cuda-tests"))]
#[test]
fn lavapipe_is_a_software_vulkan_device() {
    let gpu = device();
    println!("adapter: {}", gpu.name());
    assert!(gpu.name().contains("llvmpipe"), "adapter {}", gpu.name());
    assert_eq!(
        tuna_gpu::ops::matmul::matmul_kernel(&gpu),
        tuna_gpu::ops::matmul::MatmulKernel::Unit,
        "lavapipe has no tensor cores"
    );
}

#[test]
fn rmsnorm_matches_cpu_on_both_reduction_paths() {
    for gpu in both_reduce_modes() {
        let mode = format!("{:?}", gpu.reduce_mode());
        // c = 896 (Qwen2.5-0.5B hidden, 256 units, ragged strides) and 64 (q_norm, 64 units).
        for (n, c) in [(67, 896), (130, 64), (3, 37)] {
            let mut r = rng(1 + c as u64);
            let inp = rand_vec(&mut r, n * c, 3.0);
            let w: Vec<f32> = rand_vec(&mut r, c, 0.5).iter().map(|x| x + 1.0).collect();
            let dout = rand_vec(&mut r, n * c, 1.0);
            let dinp0 = rand_vec(&mut r, n * c, 0.1);
            let dw0 = rand_vec(&mut r, c, 0.1);
            let eps = 1e-6;

            let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
            rmsnorm::rmsnorm_forward(&mut out, &mut rstd, &inp, &w, n, c, eps);
            let (mut dinp, mut dw) = (dinp0.clone(), dw0.clone());
            rmsnorm::rmsnorm_backward(&mut dinp, Some(&mut dw), &dout, &inp, &w, &rstd, n, c);

            let (gi, gw) = (gpu.upload(&inp), gpu.upload(&w));
            let (go, gr) = (gpu.alloc::<f32>(n * c), gpu.alloc::<f32>(n));
            g::rmsnorm::rmsnorm_forward(&gpu, &go, &gr, &gi, &gw, n, c, eps);
            let (gdi, gdw) = (gpu.upload(&dinp0), gpu.upload(&dw0));
            let gd = gpu.upload(&dout);
            g::rmsnorm::rmsnorm_backward(&gpu, &gdi, Some(&gdw), &gd, &gi, &gw, &gr, n, c);

            let tag = format!("rmsnorm {mode} n={n} c={c}");
            check_tensor(
                &format!("{tag} out"),
                &download(&gpu, &go),
                &out,
                F32_REL_TOL,
            );
            check_tensor(
                &format!("{tag} rstd"),
                &download(&gpu, &gr),
                &rstd,
                F32_REL_TOL,
            );
            check_tensor(
                &format!("{tag} dinp"),
                &download(&gpu, &gdi),
                &dinp,
                F32_REL_TOL,
            );
            check_tensor(
                &format!("{tag} dweight"),
                &download(&gpu, &gdw),
                &dw,
                F32_REL_TOL,
            );
        }
    }
}

#[test]
fn swiglu_and_residual_match_cpu() {
    let gpu = device();
    let n = 5000;
    let mut r = rng(2);
    let gate = rand_vec(&mut r, n, 12.0);
    let up = rand_vec(&mut r, n, 2.0);
    let dout = rand_vec(&mut r, n, 1.0);
    let (dg0, du0) = (rand_vec(&mut r, n, 0.1), rand_vec(&mut r, n, 0.1));

    let mut out = vec![0.0; n];
    swiglu::swiglu_forward(&mut out, &gate, &up);
    let (mut dg, mut du) = (dg0.clone(), du0.clone());
    swiglu::swiglu_backward(&mut dg, &mut du, &dout, &gate, &up);

    let (gg, gu, gd) = (gpu.upload(&gate), gpu.upload(&up), gpu.upload(&dout));
    let go = gpu.alloc::<f32>(n);
    g::swiglu::swiglu_forward(&gpu, &go, &gg, &gu);
    let (gdg, gdu) = (gpu.upload(&dg0), gpu.upload(&du0));
    g::swiglu::swiglu_backward(&gpu, &gdg, &gdu, &gd, &gg, &gu);
    check_tensor("swiglu out", &download(&gpu, &go), &out, F32_REL_TOL);
    check_tensor("swiglu dgate", &download(&gpu, &gdg), &dg, F32_REL_TOL);
    check_tensor("swiglu dup", &download(&gpu, &gdu), &du, F32_REL_TOL);

    // Residual add, then scaling.
    let mut acc = gate.clone();
    residual::residual_forward(&mut acc, &up);
    adamw::scale_in_place(&mut acc, 0.25);
    let gacc = gpu.upload(&gate);
    g::elementwise::residual_forward(&gpu, &gacc, &gu);
    g::elementwise::scale_in_place(&gpu, &gacc, 0.25);
    check_tensor("residual + scale", &download(&gpu, &gacc), &acc, 0.0);
}

#[test]
fn embedding_matches_cpu_with_repeated_ids() {
    let gpu = device();
    let (v, c) = (50, 96);
    let ids: Vec<u32> = vec![3, 7, 3, 49, 0, 7, 7, 12, 3];
    let bt = ids.len();
    let mut r = rng(3);
    let table = rand_vec(&mut r, v * c, 1.0);
    let dout = rand_vec(&mut r, bt * c, 1.0);
    let dtable0 = rand_vec(&mut r, v * c, 0.1);

    let mut out = vec![0.0; bt * c];
    embedding::embedding_forward(&mut out, &ids, WeightRef::F32(&table), c);
    let mut dtable = dtable0.clone();
    embedding::embedding_backward(&mut dtable, &dout, &ids, c);

    let (gids, gt) = (gpu.upload(&ids), gpu.upload(&table));
    let go = gpu.alloc::<f32>(bt * c);
    g::embedding::embedding_forward(&gpu, &go, &gids, &gt, c);
    let gdt = gpu.upload(&dtable0);
    g::embedding::embedding_backward(&gpu, &gdt, &gpu.upload(&dout), &gids, c);
    // A gather and in-order sums: bit-identical to the CPU.
    check_tensor("embedding out", &download(&gpu, &go), &out, 0.0);
    check_tensor("embedding dtable", &download(&gpu, &gdt), &dtable, 0.0);
}

#[test]
fn rope_matches_cpu() {
    let gpu = device();
    let (nh, hd) = (3, 64);
    let table = rope::RopeTable::new(hd, 1_000_000.0, 256);
    let gtable = GpuRopeTable::upload(&gpu, &table);
    // Packed: positions restart at 0 for each sequence.
    let positions: Vec<u32> = (0..40).chain(0..17).chain(200..256).collect();
    let bt = positions.len();
    let mut r = rng(4);
    let x0 = rand_vec(&mut r, bt * nh * hd, 2.0);

    let mut x = x0.clone();
    rope::rope_forward(&mut x, &positions, &table, nh, hd);
    let gx = gpu.upload(&x0);
    let gp = gpu.upload(&positions);
    g::rope::rope_forward(&gpu, &gx, &gp, &gtable, nh, hd);
    check_tensor("rope forward", &download(&gpu, &gx), &x, F32_REL_TOL);

    let mut dx = x0.clone();
    rope::rope_backward(&mut dx, &positions, &table, nh, hd);
    let gdx = gpu.upload(&x0);
    g::rope::rope_backward(&gpu, &gdx, &gp, &gtable, nh, hd);
    check_tensor("rope backward", &download(&gpu, &gdx), &dx, F32_REL_TOL);
}

fn check_attention(seq_lens: &[usize], nh: usize, nkv: usize, hd: usize, seed: u64) {
    let gpu = device();
    let bt: usize = seq_lens.iter().sum();
    let mut r = rng(seed);
    let q = rand_vec(&mut r, bt * nh * hd, 1.5);
    let k = rand_vec(&mut r, bt * nkv * hd, 1.5);
    let v = rand_vec(&mut r, bt * nkv * hd, 1.0);
    let dout = rand_vec(&mut r, bt * nh * hd, 1.0);
    let dq0 = rand_vec(&mut r, q.len(), 0.1);
    let dk0 = rand_vec(&mut r, k.len(), 0.1);
    let dv0 = rand_vec(&mut r, v.len(), 0.1);

    let (mut out, mut lse) = (vec![0.0; bt * nh * hd], vec![0.0; bt * nh]);
    attention::attention_forward(&mut out, &mut lse, &q, &k, &v, seq_lens, nh, nkv, hd);
    let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
    attention::attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, seq_lens, nh, nkv, hd,
    );

    let seqs = PackedSeqs::new(&gpu, seq_lens);
    let (gq, gk, gv) = (gpu.upload(&q), gpu.upload(&k), gpu.upload(&v));
    let (go, gl) = (gpu.alloc::<f32>(out.len()), gpu.alloc::<f32>(lse.len()));
    g::attention::attention_forward(&gpu, &go, &gl, &gq, &gk, &gv, &seqs, nh, nkv, hd);
    let (gdq, gdk, gdv) = (gpu.upload(&dq0), gpu.upload(&dk0), gpu.upload(&dv0));
    let gd = gpu.upload(&dout);
    g::attention::attention_backward(
        &gpu, &gdq, &gdk, &gdv, &gd, &go, &gl, &gq, &gk, &gv, &seqs, nh, nkv, hd,
    );
    let tag = format!("attention {seq_lens:?} nh={nh} nkv={nkv} hd={hd}");
    check_tensor(
        &format!("{tag} out"),
        &download(&gpu, &go),
        &out,
        F32_REL_TOL,
    );
    check_tensor(
        &format!("{tag} lse"),
        &download(&gpu, &gl),
        &lse,
        F32_REL_TOL,
    );
    check_tensor(
        &format!("{tag} dq"),
        &download(&gpu, &gdq),
        &dq,
        F32_REL_TOL,
    );
    check_tensor(
        &format!("{tag} dk"),
        &download(&gpu, &gdk),
        &dk,
        F32_REL_TOL,
    );
    check_tensor(
        &format!("{tag} dv"),
        &download(&gpu, &gdv),
        &dv,
        F32_REL_TOL,
    );
}

#[test]
fn attention_matches_cpu_on_packed_sequences() {
    // Sequences shorter and longer than a 32-row block, a block straddling three sequences,
    // GQA with 2 query heads per kv head (Qwen2.5-0.5B: 14 / 2, hd 64).
    check_attention(&[37, 64, 3, 24], 4, 2, 64, 5);
    // Qwen3's head_dim 128, multi-query (all heads share one kv head).
    check_attention(&[50, 1, 20], 2, 1, 128, 6);
}

#[test]
fn matmul_and_gemm_match_cpu() {
    let gpu = device();
    let (bt, c, oc) = (67, 96, 130);
    let mut r = rng(7);
    let inp = rand_vec(&mut r, bt * c, 1.0);
    let w = rand_vec(&mut r, oc * c, 0.2);
    let bias = rand_vec(&mut r, oc, 0.5);
    let dout = rand_vec(&mut r, bt * oc, 1.0);
    let (di0, dw0, db0) = (
        rand_vec(&mut r, bt * c, 0.1),
        rand_vec(&mut r, oc * c, 0.1),
        rand_vec(&mut r, oc, 0.1),
    );

    let mut out = vec![0.0; bt * oc];
    matmul::matmul_forward(
        &mut out,
        &inp,
        WeightRef::F32(&w),
        Some(&bias),
        bt,
        c,
        oc,
        Precision::F32,
    );
    let (mut di, mut dw, mut db) = (di0.clone(), dw0.clone(), db0.clone());
    matmul::matmul_backward(
        Some(&mut di),
        Some(&mut dw),
        Some(&mut db),
        &dout,
        &inp,
        WeightRef::F32(&w),
        bt,
        c,
        oc,
        Precision::F32,
    );

    let (gi, gw, gb) = (gpu.upload(&inp), gpu.upload(&w), gpu.upload(&bias));
    let go = gpu.alloc::<f32>(bt * oc);
    g::matmul::matmul_forward(&gpu, &go, &gi, &gw, Some(&gb), bt, c, oc).unwrap();
    let (gdi, gdw, gdb) = (gpu.upload(&di0), gpu.upload(&dw0), gpu.upload(&db0));
    g::matmul::matmul_backward(
        &gpu,
        Some(&gdi),
        Some(&gdw),
        Some(&gdb),
        &gpu.upload(&dout),
        &gi,
        &gw,
        bt,
        c,
        oc,
    )
    .unwrap();
    check_tensor("matmul out", &download(&gpu, &go), &out, F32_REL_TOL);
    check_tensor("matmul dinp", &download(&gpu, &gdi), &di, F32_REL_TOL);
    check_tensor("matmul dweight", &download(&gpu, &gdw), &dw, F32_REL_TOL);
    check_tensor("matmul dbias", &download(&gpu, &gdb), &db, F32_REL_TOL);

    // gemm: every layout pair, overwrite and accumulate, odd sizes.
    let (m, k, n) = (33, 70, 19);
    for (la, lb) in [
        (Layout::Normal, Layout::Normal),
        (Layout::Normal, Layout::Transposed),
        (Layout::Transposed, Layout::Normal),
        (Layout::Transposed, Layout::Transposed),
    ] {
        for accumulate in [false, true] {
            let a = rand_vec(&mut r, m * k, 1.0);
            let b = rand_vec(&mut r, k * n, 1.0);
            let d0 = rand_vec(&mut r, m * n, 1.0);
            let mut d = d0.clone();
            sgemm(&mut d, &a, la, &b, lb, m, k, n, accumulate);
            let gd = gpu.upload(&d0);
            g::matmul::gemm(
                &gpu,
                &gd,
                &gpu.upload(&a),
                la,
                &gpu.upload(&b),
                lb,
                m,
                k,
                n,
                accumulate,
            )
            .unwrap();
            check_tensor(
                &format!("gemm {la:?}x{lb:?} accumulate={accumulate}"),
                &download(&gpu, &gd),
                &d,
                F32_REL_TOL,
            );
        }
    }
}

#[test]
fn lm_head_ce_matches_cpu_on_both_reduction_paths() {
    // v spans three vocabulary chunks (8192 each), the last one ragged.
    let (n, c, v) = (21, 48, 20_000);
    let mut r = rng(8);
    let hidden = rand_vec(&mut r, n * c, 1.0);
    let w = rand_vec(&mut r, v * c, 0.3);
    let mut targets: Vec<u32> = (0..n).map(|_| r.random_range(0..v as u32)).collect();
    let scale = 1.0 / 37.0;
    let dh0 = rand_vec(&mut r, n * c, 0.01);
    let dw0 = rand_vec(&mut r, v * c, 0.01);
    // Every third row's target is its argmax, so the accuracy count is not trivially zero.
    for (row, t) in targets.iter_mut().enumerate().step_by(3) {
        let h = &hidden[row * c..(row + 1) * c];
        let logit = |j: usize| {
            h.iter()
                .zip(&w[j * c..(j + 1) * c])
                .map(|(a, b)| a * b)
                .sum::<f32>()
        };
        *t = (0..v).fold(0, |best, j| if logit(j) > logit(best) { j } else { best }) as u32;
    }
    let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
    let hits_cpu = lm_head_ce::lm_head_ce_forward(
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
    assert!(hits_cpu >= n / 3, "the test's own setup: {hits_cpu} hits");
    let (mut dh, mut dw) = (dh0.clone(), dw0.clone());
    lm_head_ce::lm_head_ce_backward(
        &mut dh,
        Some(&mut dw),
        &hidden,
        WeightRef::F32(&w),
        &targets,
        &lse,
        scale,
        n,
        c,
        v,
        Precision::F32,
    );

    for gpu in both_reduce_modes() {
        let mode = format!("{:?}", gpu.reduce_mode());
        let (gh, gw, gt) = (gpu.upload(&hidden), gpu.upload(&w), gpu.upload(&targets));
        let (gls, gl, ghits) = (
            gpu.alloc::<f32>(n),
            gpu.alloc::<f32>(n),
            gpu.alloc::<u32>(n),
        );
        g::lm_head_ce::lm_head_ce_forward(&gpu, &gls, &gl, &ghits, &gh, &gw, &gt, n, c, v).unwrap();
        let (gdh, gdw) = (gpu.upload(&dh0), gpu.upload(&dw0));
        g::lm_head_ce::lm_head_ce_backward(
            &gpu,
            &gdh,
            Some(&gdw),
            &gh,
            &gw,
            &gt,
            &gl,
            scale,
            n,
            c,
            v,
        )
        .unwrap();
        check_tensor(
            &format!("lm_head_ce {mode} losses"),
            &download(&gpu, &gls),
            &losses,
            F32_REL_TOL,
        );
        check_tensor(
            &format!("lm_head_ce {mode} lse"),
            &download(&gpu, &gl),
            &lse,
            F32_REL_TOL,
        );
        check_tensor(
            &format!("lm_head_ce {mode} dhidden"),
            &download(&gpu, &gdh),
            &dh,
            F32_REL_TOL,
        );
        check_tensor(
            &format!("lm_head_ce {mode} dweight"),
            &download(&gpu, &gdw),
            &dw,
            F32_REL_TOL,
        );
        let hits = g::lm_head_ce::count_hits(&gpu, &ghits).unwrap();
        assert_eq!(hits, hits_cpu, "{mode}: token accuracy count");

        // The LoRA variant (frozen head): forward + dhidden in one call.
        let gdh2 = gpu.upload(&dh0);
        g::lm_head_ce::lm_head_ce_forward_backward(
            &gpu, &gls, &gl, &ghits, &gdh2, &gh, &gw, &gt, scale, n, c, v,
        )
        .unwrap();
        let (mut l2, mut lse2, mut dh2) = (vec![0.0; n], vec![0.0; n], dh0.clone());
        lm_head_ce::lm_head_ce_forward_backward(
            &mut l2,
            &mut lse2,
            &mut dh2,
            &hidden,
            WeightRef::F32(&w),
            &targets,
            scale,
            n,
            c,
            v,
            Precision::F32,
        );
        check_tensor(
            &format!("lm_head_ce_forward_backward {mode} losses"),
            &download(&gpu, &gls),
            &l2,
            F32_REL_TOL,
        );
        check_tensor(
            &format!("lm_head_ce_forward_backward {mode} dhidden"),
            &download(&gpu, &gdh2),
            &dh2,
            F32_REL_TOL,
        );
    }
}

#[test]
fn adamw_and_grad_norm_match_cpu() {
    let n = 70_001;
    let mut r = rng(9);
    let cfg = adamw::AdamWConfig {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut p = rand_vec(&mut r, n, 1.0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    for gpu in both_reduce_modes() {
        let (gp, gm, gv) = (gpu.upload(&p), gpu.upload(&m), gpu.upload(&v));
        let mut pc = p.clone();
        let (mut mc, mut vc) = (m.clone(), v.clone());
        for step in 1..=3 {
            let grads = rand_vec(&mut r, n, 0.5);
            adamw::adamw_update(&mut pc, &grads, &mut mc, &mut vc, &cfg, step);
            g::adamw::adamw_update(&gpu, &gp, &gpu.upload(&grads), &gm, &gv, &cfg, step);
        }
        let mode = format!("{:?}", gpu.reduce_mode());
        check_tensor(
            &format!("adamw {mode} params"),
            &download(&gpu, &gp),
            &pc,
            F32_REL_TOL,
        );
        check_tensor(
            &format!("adamw {mode} m"),
            &download(&gpu, &gm),
            &mc,
            F32_REL_TOL,
        );
        check_tensor(
            &format!("adamw {mode} v"),
            &download(&gpu, &gv),
            &vc,
            F32_REL_TOL,
        );

        let (a, b) = (rand_vec(&mut r, n, 1.0), rand_vec(&mut r, 333, 3.0));
        let want = adamw::grad_norm(&[&a, &b]);
        let got = g::adamw::grad_norm(&gpu, &[&gpu.upload(&a), &gpu.upload(&b)]).unwrap();
        let rel = ((got - want) / want).abs() as f64;
        println!("grad_norm {mode}: gpu {got} cpu {want} rel {rel:.3e}");
        assert!(rel <= F32_REL_TOL, "grad_norm {mode}: {got} vs {want}");
        (p, m, v) = (pc, mc, vc);
    }
}

/// The CPU model's LoRA branch (tuna-model `linear_forward`/`linear_backward`), written with the
/// engine's `sgemm`: y += s·(x_in·Aᵀ)·Bᵀ and its gradients.
#[allow(clippy::too_many_arguments)]
fn lora_cpu(
    y: &mut [f32],
    dx: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    keep: &[f32],
    a: &[f32],
    b: &[f32],
    d: g::lora::LoraDims,
) {
    let (bt, i, r, o, s) = (d.bt, d.in_features, d.rank, d.out_features, d.scale);
    let x_in: Vec<f32> = x.iter().zip(keep).map(|(p, q)| p * q).collect();
    let mut u = vec![0.0; bt * r];
    sgemm(
        &mut u,
        &x_in,
        Layout::Normal,
        a,
        Layout::Transposed,
        bt,
        i,
        r,
        false,
    );
    let us: Vec<f32> = u.iter().map(|v| v * s).collect();
    sgemm(
        y,
        &us,
        Layout::Normal,
        b,
        Layout::Transposed,
        bt,
        r,
        o,
        true,
    );
    sgemm(
        db,
        dy,
        Layout::Transposed,
        &us,
        Layout::Normal,
        o,
        bt,
        r,
        true,
    );
    let mut du = vec![0.0; bt * r];
    sgemm(
        &mut du,
        dy,
        Layout::Normal,
        b,
        Layout::Normal,
        bt,
        o,
        r,
        false,
    );
    du.iter_mut().for_each(|v| *v *= s);
    sgemm(
        da,
        &du,
        Layout::Transposed,
        &x_in,
        Layout::Normal,
        r,
        bt,
        i,
        true,
    );
    let mut dxd = vec![0.0; bt * i];
    sgemm(
        &mut dxd,
        &du,
        Layout::Normal,
        a,
        Layout::Normal,
        bt,
        r,
        i,
        false,
    );
    for ((d, g), k) in dx.iter_mut().zip(&dxd).zip(keep) {
        *d += g * k;
    }
}

#[test]
fn lora_products_match_cpu_and_finite_differences() {
    let gpu = device();
    let d = g::lora::LoraDims {
        bt: 45,
        in_features: 72,
        rank: 8,
        out_features: 40,
        scale: 16.0 / 8.0,
    };
    let (bt, i, r, o) = (d.bt, d.in_features, d.rank, d.out_features);
    let mut rn = rng(10);
    let x = rand_vec(&mut rn, bt * i, 1.0);
    let a = rand_vec(&mut rn, r * i, 0.3);
    let b = rand_vec(&mut rn, o * r, 0.3);
    let dy = rand_vec(&mut rn, bt * o, 1.0);
    let y0 = rand_vec(&mut rn, bt * o, 0.5);
    // Dropout p = 0.25: keep = 0 or 1/0.75.
    let keep: Vec<f32> = (0..bt * i)
        .map(|_| {
            if rn.random::<f32>() < 0.25 {
                0.0
            } else {
                1.0 / 0.75
            }
        })
        .collect();
    let (dx0, da0, db0) = (
        rand_vec(&mut rn, bt * i, 0.1),
        rand_vec(&mut rn, r * i, 0.1),
        rand_vec(&mut rn, o * r, 0.1),
    );
    let (mut y, mut dx, mut da, mut db) = (y0.clone(), dx0.clone(), da0.clone(), db0.clone());
    lora_cpu(&mut y, &mut dx, &mut da, &mut db, &dy, &x, &keep, &a, &b, d);

    let (gx, ga, gb, gk) = (
        gpu.upload(&x),
        gpu.upload(&a),
        gpu.upload(&b),
        gpu.upload(&keep),
    );
    let (gy, gu) = (gpu.upload(&y0), gpu.alloc::<f32>(bt * r));
    g::lora::lora_forward(&gpu, &gy, &gu, &gx, Some(&gk), &ga, &gb, d).unwrap();
    let (gdx, gda, gdb) = (gpu.upload(&dx0), gpu.upload(&da0), gpu.upload(&db0));
    g::lora::lora_backward(
        &gpu,
        &gdx,
        &gda,
        &gdb,
        &gpu.upload(&dy),
        &gx,
        Some(&gk),
        &gu,
        &ga,
        &gb,
        d,
    )
    .unwrap();
    check_tensor("lora y", &download(&gpu, &gy), &y, F32_REL_TOL);
    check_tensor("lora dx", &download(&gpu, &gdx), &dx, F32_REL_TOL);
    check_tensor("lora dA", &download(&gpu, &gda), &da, F32_REL_TOL);
    check_tensor("lora dB", &download(&gpu, &gdb), &db, F32_REL_TOL);

    // Finite differences of L = Σ dy ⊙ y through the GPU forward alone, against the GPU
    // backward (no dropout). L is linear in each of x, A and B, so a central difference has no
    // truncation error: what remains is f32 rounding of L.
    let loss = |x: &[f32], a: &[f32], b: &[f32]| -> f64 {
        let gy = gpu.upload(&vec![0.0f32; bt * o]);
        let gu = gpu.alloc::<f32>(bt * r);
        g::lora::lora_forward(
            &gpu,
            &gy,
            &gu,
            &gpu.upload(x),
            None,
            &gpu.upload(a),
            &gpu.upload(b),
            d,
        )
        .unwrap();
        download(&gpu, &gy)
            .iter()
            .zip(&dy)
            .map(|(p, q)| (*p as f64) * (*q as f64))
            .sum()
    };
    let zeros = |n| gpu.upload(&vec![0.0f32; n]);
    let (gdx, gda, gdb) = (zeros(bt * i), zeros(r * i), zeros(o * r));
    let gu = gpu.alloc::<f32>(bt * r);
    g::lora::lora_forward(&gpu, &zeros(bt * o), &gu, &gx, None, &ga, &gb, d).unwrap();
    g::lora::lora_backward(
        &gpu,
        &gdx,
        &gda,
        &gdb,
        &gpu.upload(&dy),
        &gx,
        None,
        &gu,
        &ga,
        &gb,
        d,
    )
    .unwrap();
    let grads = [
        download(&gpu, &gdx),
        download(&gpu, &gda),
        download(&gpu, &gdb),
    ];
    let step = 0.25f32;
    let mut worst = 0.0f64;
    for (which, grad) in grads.iter().enumerate() {
        for _ in 0..4 {
            let at = rn.random_range(0..grad.len());
            let (mut xp, mut ap, mut bp) = (x.clone(), a.clone(), b.clone());
            let (mut xm, mut am, mut bm) = (x.clone(), a.clone(), b.clone());
            match which {
                0 => (xp[at], xm[at]) = (x[at] + step, x[at] - step),
                1 => (ap[at], am[at]) = (a[at] + step, a[at] - step),
                _ => (bp[at], bm[at]) = (b[at] + step, b[at] - step),
            }
            let numeric = (loss(&xp, &ap, &bp) - loss(&xm, &am, &bm)) / (2.0 * step as f64);
            let err = (grad[at] as f64 - numeric).abs();
            worst = worst.max(err / numeric.abs().max(1.0));
            assert!(
                err <= 1e-3 * numeric.abs().max(1.0),
                "lora grad {which}[{at}]: backward {} vs finite difference {numeric}",
                grad[at]
            );
        }
    }
    println!("lora finite differences: worst relative error {worst:.3e}");
}

#[cfg(not(feature = "cuda-tests"))]
#[test]
fn a_failing_kernel_is_reported_not_read_back_as_zeros() {
    // A device of its own: the failure must not reach the other tests' device.
    let gpu = tuna_gpu::devices::open_software_vulkan().expect("lavapipe");
    // head_dim 2048: the forward stages two (16, 2048) f32 tiles, 256 KiB of shared memory,
    // beyond any Vulkan device's limit, so the kernel cannot be created.
    let (bt, nh, hd) = (4, 1, 2048);
    let seqs = PackedSeqs::new(&gpu, &[bt]);
    let x = gpu.upload(&vec![0.5f32; bt * nh * hd]);
    let (out, lse) = (gpu.alloc::<f32>(bt * nh * hd), gpu.alloc::<f32>(bt * nh));
    g::attention::attention_forward(&gpu, &out, &lse, &x, &x, &x, &seqs, nh, nh, hd);
    let err = gpu.download(&out).expect_err("the launch cannot succeed");
    println!("reported: {err}");
    assert!(matches!(err, tuna_gpu::Error::Device(_)), "{err:?}");
    // The device stays usable.
    let y = gpu.upload(&[1.0f32, 2.0]);
    g::elementwise::scale_in_place(&gpu, &y, 3.0);
    assert_eq!(gpu.download(&y).unwrap(), vec![3.0, 6.0]);
}

/// The kernels are generic over the storage float; bf16 cannot run on lavapipe, so the generic
/// path is exercised in f16 (which lavapipe has): inputs rounded to f16, compute in f32, the
/// result rounded to f16 once. Tolerance: 2 f16 ulps of the tensor's scale (2·2⁻¹⁰).
#[test]
fn half_precision_storage_matches_cpu_within_f16_rounding() {
    use half::f16;
    let gpu = device();
    let tol = 2.0 * 2f64.powi(-10);
    let (n, c) = (33, 256);
    let mut r = rng(11);
    let round =
        |v: Vec<f32>| -> Vec<f32> { v.iter().map(|&x| f16::from_f32(x).to_f32()).collect() };
    let to_f16 = |v: &[f32]| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
    let inp = round(rand_vec(&mut r, n * c, 3.0));
    let w = round(rand_vec(&mut r, c, 0.5).iter().map(|x| x + 1.0).collect());
    let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
    rmsnorm::rmsnorm_forward(&mut out, &mut rstd, &inp, &w, n, c, 1e-6);
    let go = gpu.alloc::<f16>(n * c);
    let gr = gpu.alloc::<f32>(n);
    let (gi, gw) = (gpu.upload(&to_f16(&inp)), gpu.upload(&to_f16(&w)));
    g::rmsnorm::rmsnorm_forward(&gpu, &go, &gr, &gi, &gw, n, c, 1e-6);
    // Widened on the device, so the cast kernel is checked as well.
    let wide = gpu.alloc::<f32>(n * c);
    g::elementwise::cast(&gpu, &wide, &go);
    check_tensor("rmsnorm f16 out", &download(&gpu, &wide), &out, tol);
    check_tensor("rmsnorm f16 rstd", &download(&gpu, &gr), &rstd, F32_REL_TOL);

    let gate = round(rand_vec(&mut r, n * c, 8.0));
    let up = round(rand_vec(&mut r, n * c, 2.0));
    let mut sw = vec![0.0; n * c];
    swiglu::swiglu_forward(&mut sw, &gate, &up);
    let gs = gpu.alloc::<f16>(n * c);
    g::swiglu::swiglu_forward(
        &gpu,
        &gs,
        &gpu.upload(&to_f16(&gate)),
        &gpu.upload(&to_f16(&up)),
    );
    let got: Vec<f32> = gpu
        .download(&gs)
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect();
    check_tensor("swiglu f16 out", &got, &sw, tol);
}
