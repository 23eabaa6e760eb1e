//! Kernel benchmarks at Qwen2.5-0.5B shapes (hidden 896, MLP 4864, vocab 151936).
//!
//! `matmul_bt512` (prefill/training) and `matmul_backward_bt512` report FLOP/s as elements/s
//! (2·bt·c·oc per product) at f32 and, on a CPU with a bf16 unit, at bf16 (ids `bf16/<weight
//! dtype>`); `matmul_bt1` (decode) reports the weight bytes streamed per second, since a GEMV is
//! memory bound. Element-wise groups report elements/s.
//!
//! `cargo bench -p tuna-engine --bench kernels -- --warm-up-time 1 --measurement-time 3 matmul`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tuna_engine::WeightRef;
use tuna_engine::ops::adamw::{AdamWConfig, adamw_update};
use tuna_engine::ops::matmul::{Bf16Kernel, Precision, matmul_backward, matmul_forward};
use tuna_engine::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use tuna_engine::ops::swiglu::{swiglu_backward, swiglu_forward};

/// (name, c, oc) of the Qwen2.5-0.5B linear layers.
const SHAPES: [(&str, usize, usize); 4] = [
    ("q_o_896x896", 896, 896),
    ("gate_up_896x4864", 896, 4864),
    ("down_4864x896", 4864, 896),
    ("lm_head_896x151936", 896, 151936),
];

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The precisions to time: f32, and bf16 when the CPU multiplies bf16 natively.
fn precisions() -> Vec<(&'static str, Precision)> {
    let kernel = Bf16Kernel::detect();
    let mut p = vec![("f32", Precision::F32)];
    if kernel.is_native() {
        p.push(("bf16", Precision::Bf16(kernel)));
    }
    p
}

fn bench_matmul(cr: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    for bt in [512usize, 1] {
        let mut group = cr.benchmark_group(format!("matmul_bt{bt}"));
        group.sample_size(10);
        for (name, c, oc) in SHAPES {
            let w = rand_vec(&mut rng, oc * c);
            let wb: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
            let inp = rand_vec(&mut rng, bt * c);
            let mut out = vec![0.0f32; bt * oc];
            for weight in [WeightRef::F32(&w), WeightRef::BF16(&wb)] {
                let tp = if bt == 1 {
                    Throughput::Bytes((weight.len() * weight.dtype().size_in_bytes()) as u64)
                } else {
                    Throughput::Elements((2 * bt * c * oc) as u64)
                };
                group.throughput(tp);
                for (pname, precision) in precisions() {
                    let id = format!("{pname}/{}", weight.dtype().name());
                    group.bench_function(BenchmarkId::new(name, id), |b| {
                        b.iter(|| {
                            matmul_forward(
                                &mut out,
                                black_box(&inp),
                                weight,
                                None,
                                bt,
                                c,
                                oc,
                                precision,
                            )
                        })
                    });
                }
            }
        }
        group.finish();
    }

    // Training backward: dinp through a frozen weight (f32 and bf16) and dweight (LoRA-free full
    // fine-tuning), on the layer shapes without the LM head.
    let bt = 512;
    let mut group = cr.benchmark_group("matmul_backward_bt512");
    group.sample_size(10);
    for (name, c, oc) in &SHAPES[..3] {
        let (c, oc) = (*c, *oc);
        let w = rand_vec(&mut rng, oc * c);
        let wb: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
        let inp = rand_vec(&mut rng, bt * c);
        let dout = rand_vec(&mut rng, bt * oc);
        let mut dinp = vec![0.0f32; bt * c];
        let mut dw = vec![0.0f32; oc * c];
        group.throughput(Throughput::Elements((2 * bt * c * oc) as u64));
        for (pname, precision) in precisions() {
            for weight in [WeightRef::F32(&w), WeightRef::BF16(&wb)] {
                group.bench_function(
                    BenchmarkId::new(
                        format!("{name}/dinp"),
                        format!("{pname}/{}", weight.dtype().name()),
                    ),
                    |b| {
                        b.iter(|| {
                            matmul_backward(
                                Some(&mut dinp),
                                None,
                                None,
                                black_box(&dout),
                                &inp,
                                weight,
                                bt,
                                c,
                                oc,
                                precision,
                            )
                        })
                    },
                );
            }
            group.bench_function(
                BenchmarkId::new(format!("{name}/dweight"), format!("{pname}/f32")),
                |b| {
                    b.iter(|| {
                        matmul_backward(
                            None,
                            Some(&mut dw),
                            None,
                            black_box(&dout),
                            &inp,
                            WeightRef::F32(&w),
                            bt,
                            c,
                            oc,
                            precision,
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_elementwise(cr: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let (bt, c, ff) = (512usize, 896usize, 4864usize);

    let mut group = cr.benchmark_group("rmsnorm_bt512");
    let inp = rand_vec(&mut rng, bt * c);
    let w = rand_vec(&mut rng, c);
    let dout = rand_vec(&mut rng, bt * c);
    let mut out = vec![0.0; bt * c];
    let mut rstd = vec![0.0; bt];
    let mut dinp = vec![0.0; bt * c];
    let mut dw = vec![0.0; c];
    group.throughput(Throughput::Elements((bt * c) as u64));
    group.bench_function("forward", |b| {
        b.iter(|| rmsnorm_forward(&mut out, &mut rstd, black_box(&inp), &w, bt, c, 1e-6))
    });
    group.bench_function("backward", |b| {
        b.iter(|| {
            rmsnorm_backward(
                &mut dinp,
                Some(&mut dw),
                black_box(&dout),
                &inp,
                &w,
                &rstd,
                bt,
                c,
            )
        })
    });
    group.finish();

    let mut group = cr.benchmark_group("swiglu_bt512");
    let n = bt * ff;
    let gate = rand_vec(&mut rng, n);
    let up = rand_vec(&mut rng, n);
    let dout = rand_vec(&mut rng, n);
    let mut out = vec![0.0; n];
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("forward", |b| {
        b.iter(|| swiglu_forward(&mut out, black_box(&gate), &up))
    });
    group.bench_function("backward", |b| {
        b.iter(|| swiglu_backward(&mut dg, &mut du, black_box(&dout), &gate, &up))
    });
    group.finish();

    // AdamW over a LoRA-sized parameter set (r 16 on all linear layers of 0.5B ≈ 8.8M).
    let mut group = cr.benchmark_group("adamw");
    let n = 8_798_208;
    let mut p = rand_vec(&mut rng, n);
    let g = rand_vec(&mut rng, n);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let cfg = AdamWConfig {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("update_8.8M", |b| {
        b.iter(|| adamw_update(&mut p, black_box(&g), &mut m, &mut v, &cfg, 3))
    });
    group.finish();
}

criterion_group!(benches, bench_matmul, bench_elementwise);
criterion_main!(benches);
