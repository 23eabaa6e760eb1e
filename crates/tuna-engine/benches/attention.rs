//! Sequence kernels at Qwen2.5-0.5B shapes: attention (nh 14, nkv 2, hd 64) forward and
//! forward + backward on one 512-token sequence, cached decode, and the fused LM head +
//! cross-entropy (c 896, v 151,936) over 256 labeled rows.
//!
//! Run: `cargo bench -p tuna-engine --bench attention -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tuna_engine::WeightRef;
use tuna_engine::ops::attention::{attention_backward, attention_cached, attention_forward};
use tuna_engine::ops::lm_head_ce::{
    lm_head_ce_backward, lm_head_ce_forward, lm_head_ce_forward_backward,
};
use tuna_engine::ops::matmul::Precision;

fn rand_vec(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

fn attention(c: &mut Criterion) {
    let (bt, nh, nkv, hd) = (512, 14, 2, 64);
    let seq_lens = [bt];
    let mut rng = StdRng::seed_from_u64(0);
    let q = rand_vec(&mut rng, bt * nh * hd, 1.0);
    let k = rand_vec(&mut rng, bt * nkv * hd, 1.0);
    let v = rand_vec(&mut rng, bt * nkv * hd, 1.0);
    let dout = rand_vec(&mut rng, bt * nh * hd, 1.0);
    let mut out = vec![0.0; bt * nh * hd];
    let mut lse = vec![0.0; bt * nh];
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);

    let mut g = c.benchmark_group("attention");
    g.throughput(Throughput::Elements(bt as u64));
    g.bench_function("forward_bt512", |b| {
        b.iter(|| attention_forward(&mut out, &mut lse, &q, &k, &v, &seq_lens, nh, nkv, hd))
    });
    g.bench_function("fwd_bwd_bt512", |b| {
        b.iter(|| {
            attention_forward(&mut out, &mut lse, &q, &k, &v, &seq_lens, nh, nkv, hd);
            attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, &seq_lens, nh, nkv, hd,
            );
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut out1 = vec![0.0; nh * hd];
    g.bench_function("cached_decode_tk512", |b| {
        b.iter(|| {
            attention_cached(
                &mut out1,
                &q[(bt - 1) * nh * hd..],
                &k,
                &v,
                1,
                bt,
                nh,
                nkv,
                hd,
            )
        })
    });
    g.finish();
    black_box((&dq, &dk, &dv));
}

fn lm_head_ce(c: &mut Criterion) {
    let (n, ch, v) = (256, 896, 151_936);
    let mut rng = StdRng::seed_from_u64(1);
    let hidden = rand_vec(&mut rng, n * ch, 1.0);
    let w32 = rand_vec(&mut rng, v * ch, 0.05);
    let wbf: Vec<bf16> = w32.iter().map(|&x| bf16::from_f32(x)).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
    let mut dh = vec![0.0; n * ch];

    let mut g = c.benchmark_group("lm_head_ce");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    for (name, weight) in [
        ("bf16", WeightRef::BF16(&wbf)),
        ("f32", WeightRef::F32(&w32)),
    ] {
        g.bench_function(format!("fwd_bwd_n256_{name}"), |b| {
            b.iter(|| {
                lm_head_ce_forward(
                    &mut losses,
                    &mut lse,
                    &hidden,
                    weight,
                    &targets,
                    n,
                    ch,
                    v,
                    Precision::F32,
                );
                lm_head_ce_backward(
                    &mut dh,
                    None,
                    &hidden,
                    weight,
                    &targets,
                    &lse,
                    1.0 / n as f32,
                    n,
                    ch,
                    v,
                    Precision::F32,
                );
            })
        });
    }
    // LoRA: forward and dhidden fused into one pass over the head.
    g.bench_function("fused_n256_bf16", |b| {
        b.iter(|| {
            let w = WeightRef::BF16(&wbf);
            let s = 1.0 / n as f32;
            lm_head_ce_forward_backward(
                &mut losses,
                &mut lse,
                &mut dh,
                &hidden,
                w,
                &targets,
                s,
                n,
                ch,
                v,
                Precision::F32,
            );
        })
    });
    // Full fine-tuning also produces the LM head's gradient.
    let mut dw = vec![0.0; v * ch];
    g.bench_function("fwd_bwd_n256_f32_dweight", |b| {
        b.iter(|| {
            let w = WeightRef::F32(&w32);
            lm_head_ce_forward(
                &mut losses,
                &mut lse,
                &hidden,
                w,
                &targets,
                n,
                ch,
                v,
                Precision::F32,
            );
            lm_head_ce_backward(
                &mut dh,
                Some(&mut dw),
                &hidden,
                w,
                &targets,
                &lse,
                1.0 / n as f32,
                n,
                ch,
                v,
                Precision::F32,
            );
        })
    });
    g.finish();
}

criterion_group!(benches, attention, lm_head_ce);
criterion_main!(benches);
