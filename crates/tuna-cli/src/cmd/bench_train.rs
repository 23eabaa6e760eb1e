//! `tuna bench train`: training throughput on a random-weight model of a real shape.
//!
//! One example of `--seq-len` random tokens whose last half carries labels (the first half plays
//! the prompt: no LM head or loss there), LoRA of rank 8 on all seven projections (or full
//! fine-tuning), a few warm-up steps, then timed steps of forward + backward + clipping + AdamW.
//! Reports tokens/s, the GFLOP/s of the matrix products the step actually does, the machine's f32
//! matmul peak (a timed large sgemm) and the peak RSS. Numbers are printed, never asserted.
//!
//! `--objective dpo` times DPO steps instead: one preference pair whose two sequences are each
//! `--seq-len` tokens (a shared prompt of the first half, two different answers of the second
//! half, labelled), packed in one micro-batch, after the one-off reference pass. It reports
//! pairs/s and the peak RSS (taken before anything else runs), then times SFT steps on the
//! pair's preferred sequence in the same process, for comparison.

use std::time::Instant;

use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tuna_data::tokenize::{TokenizedExample, TokenizedPair};
use tuna_engine::IGNORE_INDEX;
use tuna_engine::ops::matmul::{Layout, sgemm};
use tuna_model::train::TrainOptions;
use tuna_model::{Gradients, LoraAdapter, LoraConfig, LoraTarget, QwenConfig, QwenModel};
use tuna_train::data::{DataStats, Dataset, Plan};
use tuna_train::dpo::{self, ReferenceLogps};
use tuna_train::optim::{AdamW, AdamWSettings, clip_grad_norm};
use tuna_train::{BatchSize, Objective, TrainConfig};

use super::bench::BenchDType;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMethod {
    Lora,
    Full,
}

/// One timed step's forward and backward: gradients into the buffer, returning the loss.
type StepFn<'a> =
    dyn FnMut(&mut Gradients, Option<&LoraAdapter>, &QwenModel) -> anyhow::Result<f64> + 'a;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchObjective {
    Sft,
    Dpo,
}

#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    /// SFT steps on one example, or DPO steps on one preference pair (then SFT for comparison)
    #[arg(long, value_enum, default_value = "sft")]
    pub objective: BenchObjective,
    /// Model shape: qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b
    #[arg(long, default_value = "qwen2.5-0.5b")]
    pub shape: String,
    /// Tokens of the one training example (the last half is labelled); with DPO, of each of the
    /// pair's two sequences
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    #[arg(long, value_enum, default_value = "lora")]
    pub method: BenchMethod,
    /// LoRA rank (all seven projections)
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// Dtype the frozen weights are stored in (compute is f32; full fine-tuning trains f32 weights)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: BenchDType,
    /// Recompute activations in backward
    #[arg(long)]
    pub recompute: bool,
    #[arg(long, default_value_t = 1)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// Floating-point operations of one training step's matrix products (element-wise work is left out).
/// `t` positions, `tl` of them labelled; attention counted over the causal half only.
fn step_flops(
    cfg: &QwenConfig,
    t: usize,
    tl: usize,
    lora_rank: Option<usize>,
    recompute: bool,
) -> f64 {
    let (c, im, hd) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.head_dim as f64,
    );
    let (q, kv) = (cfg.num_heads as f64 * hd, cfg.num_kv_heads as f64 * hd);
    let (t, tl, v) = (t as f64, tl as f64, cfg.vocab_size as f64);
    let linear_params = c * q + 2.0 * c * kv + q * c + 3.0 * c * im;
    let linear_fwd = 2.0 * t * linear_params;
    // QKᵀ and P·V, each 2·hd multiply-adds per (query, key) pair with key ≤ query.
    let attn_fwd = 2.0 * 2.0 * cfg.num_heads as f64 * hd * t * (t + 1.0) / 2.0;
    let lora_fwd = lora_rank.map_or(0.0, |r| {
        LoraTarget::ALL
            .iter()
            .map(|tg| {
                let (i, o) = tg.dims(cfg);
                2.0 * t * r as f64 * (i + o) as f64
            })
            .sum()
    });
    let layer_fwd = linear_fwd + attn_fwd + lora_fwd;
    // Backward: dX through every linear (and dW too for full), twice the attention forward, LoRA's
    // dA, dB and dX (twice its forward).
    let layer_bwd =
        linear_fwd * if lora_rank.is_some() { 1.0 } else { 2.0 } + 2.0 * attn_fwd + 2.0 * lora_fwd;
    let layers =
        cfg.num_layers as f64 * (layer_fwd * if recompute { 2.0 } else { 1.0 } + layer_bwd);
    // LM head on labelled rows: forward, d hidden, and d weight when trained.
    let head = 2.0 * tl * c * v * if lora_rank.is_some() { 2.0 } else { 3.0 };
    layers + head
}

/// Best of a few timed `n`×`n`×`n` f32 products, in GFLOP/s.
fn sgemm_peak_gflops(n: usize) -> f64 {
    let mut rng = StdRng::seed_from_u64(3);
    let a: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut c = vec![0.0f32; n * n];
    sgemm(
        &mut c,
        &a,
        Layout::Normal,
        &b,
        Layout::Normal,
        n,
        n,
        n,
        false,
    ); // warm-up
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t0 = Instant::now();
        sgemm(
            &mut c,
            &a,
            Layout::Normal,
            &b,
            Layout::Normal,
            n,
            n,
            n,
            false,
        );
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

pub fn run(args: TrainBenchArgs) -> anyhow::Result<()> {
    let cfg = crate::shapes::config(&args.shape)?;
    anyhow::ensure!(args.seq_len >= 4, "--seq-len must be at least 4");
    anyhow::ensure!(args.steps > 0, "--steps must be positive");
    let peak = sgemm_peak_gflops(2048);

    let build = Instant::now();
    let mut model = QwenModel::random(cfg.clone(), args.dtype.into(), 0.02, 1);
    let lora = (args.method == BenchMethod::Lora).then(|| LoraConfig {
        r: args.lora_rank,
        lora_alpha: 2.0 * args.lora_rank as f32,
        lora_dropout: 0.0,
        target_modules: LoraTarget::ALL.to_vec(),
        use_rslora: false,
    });
    let mut adapter = lora.as_ref().map(|l| LoraAdapter::new_random(&cfg, l, 1));
    let layout = match &adapter {
        Some(a) => a.layout(),
        None => {
            let _ = model.full_parameters_mut();
            model.full_layout()
        }
    };
    let mut grads = layout.zero_gradients();
    let settings = AdamWSettings {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(settings, &layout.sizes(), layout.decay_flags());
    let build_s = build.elapsed().as_secs_f64();

    // One example: random ids; positions of the second half predict their next token. With DPO
    // it is the preferred sequence of a pair whose other answer is different random ids.
    let t = args.seq_len;
    let mut rng = StdRng::seed_from_u64(2);
    let mut random_ids = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| rng.random_range(0..cfg.vocab_size as u32))
            .collect()
    };
    let prompt = random_ids(t / 2);
    let answer = |ids: Vec<u32>| {
        let input_ids: Vec<u32> = prompt.iter().copied().chain(ids).collect();
        // Labels unshifted: the targets of positions t/2 .. t-2.
        let labels = (0..t)
            .map(|i| {
                if i > t / 2 {
                    input_ids[i] as i32
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        TokenizedExample { input_ids, labels }
    };
    let chosen = answer(random_ids(t - t / 2));
    let rejected = answer(random_ids(t - t / 2));
    let labelled = chosen.trained_tokens();
    let opts = TrainOptions {
        recompute_activations: args.recompute,
        dropout_seed: 0,
    };
    // DPO: the pair as a one-step plan, and its reference pass (once per pair, timed apart).
    let dpo_setup = if args.objective == BenchObjective::Dpo {
        let data = Dataset::from_pairs(
            vec![TokenizedPair {
                chosen: chosen.clone(),
                rejected,
            }],
            Vec::new(),
            Vec::new(),
            DataStats::default(),
        );
        let plan_cfg = TrainConfig {
            objective: Objective::Dpo,
            batch_size: BatchSize::Examples(1),
            gradient_accumulation_steps: 1,
            max_steps: Some(1),
            ..TrainConfig::default()
        };
        let plan = Plan::new(&data, &plan_cfg);
        let batches = plan.batches(0, &data);
        let r0 = Instant::now();
        // A fresh adapter is a no-op: the reference is the base model (no adapter).
        let reference = ReferenceLogps::compute(&model, None, &data, BatchSize::Examples(1))?;
        Some((plan, batches, reference, r0.elapsed().as_secs_f64()))
    } else {
        None
    };

    // Times warm-up + timed steps of `step` (gradients into `grads`, returning the loss), each
    // followed by clipping and AdamW; returns the mean step time and the last loss.
    let mut timed = |step: &mut StepFn| -> anyhow::Result<(f64, f64)> {
        let mut times = Vec::new();
        let mut loss = 0.0;
        for i in 0..args.warmup_steps + args.steps {
            let t0 = Instant::now();
            grads.zero();
            loss = step(&mut grads, adapter.as_ref(), &model)?;
            clip_grad_norm(&mut grads, Some(1.0));
            let params = match &mut adapter {
                Some(a) => a.parameters_mut(),
                None => model.full_parameters_mut(),
            };
            opt.update(params, &grads, 1e-4);
            if i >= args.warmup_steps {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok((times.iter().sum::<f64>() / times.len() as f64, loss))
    };

    let dpo = match &dpo_setup {
        Some((plan, batches, reference, reference_s)) => {
            let (step_s, loss) = timed(&mut |grads, adapter, model| {
                let sums = dpo::accumulate_step(
                    model,
                    adapter,
                    grads,
                    plan.step_units(0),
                    batches,
                    &reference.train,
                    0.1,
                    |_| opts,
                )?;
                Ok(sums.mean_loss())
            })?;
            Some((step_s, loss, *reference_s, super::bench::peak_rss_mb()))
        }
        None => None,
    };

    let batch = tuna_train::data::pack_group(&[&chosen]);
    let (step_s, loss) = timed(&mut |grads, adapter, model| {
        let stats = model.forward_backward(
            &batch.as_train_batch(),
            adapter,
            grads,
            1.0 / labelled as f32,
            &opts,
        )?;
        Ok(stats.loss_sum / stats.tokens.max(1) as f64)
    })?;
    let tokens_per_s = t as f64 / step_s;
    let flops = step_flops(
        &cfg,
        t,
        labelled,
        lora.as_ref().map(|l| l.r),
        args.recompute,
    );
    let gflops = flops / step_s / 1e9;
    let rss = super::bench::peak_rss_mb();
    let threads = rayon::current_num_threads();
    let method = match args.method {
        BenchMethod::Lora => format!("lora r={} (all 7 projections)", args.lora_rank),
        BenchMethod::Full => "full".to_string(),
    };
    if args.json {
        let mut out = serde_json::json!({
            "shape": args.shape, "method": method, "dtype": tuna_engine::DType::from(args.dtype).name(),
            "threads": threads, "seq_len": t, "labelled_tokens": labelled, "recompute": args.recompute,
            "parameters": cfg.num_parameters(), "trainable_parameters": layout.num_elements(),
            "step_s": step_s, "tokens_per_s": tokens_per_s, "gflop_per_step": flops / 1e9,
            "gflops": gflops, "peak_gflops": peak, "peak_rss_mb": rss, "loss": loss, "build_s": build_s,
        });
        if let (Some((dpo_s, dpo_loss, reference_s, dpo_rss)), Some(obj)) =
            (dpo, out.as_object_mut())
        {
            obj.insert(
                "dpo".into(),
                serde_json::json!({
                    "pair_tokens": 2 * t, "step_s": dpo_s, "pairs_per_s": 1.0 / dpo_s,
                    "tokens_per_s": 2.0 * t as f64 / dpo_s, "reference_pass_s": reference_s,
                    "peak_rss_mb": dpo_rss, "loss": dpo_loss,
                }),
            );
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "shape {} ({:.0}M parameters), {method}, weights {}, {threads} threads{}",
        args.shape,
        cfg.num_parameters() as f64 / 1e6,
        tuna_engine::DType::from(args.dtype).name(),
        if args.recompute {
            ", recomputed activations"
        } else {
            ""
        }
    );
    if let Some((dpo_s, _, reference_s, dpo_rss)) = dpo {
        println!(
            "DPO: one pair of two {t}-token sequences (shared prompt of {}, answers of {} labelled tokens) in one micro-batch; {} timed steps after {} warm-up",
            t / 2,
            labelled,
            args.steps,
            args.warmup_steps
        );
        println!("step      {dpo_s:>8.3} s   (reference pass, once per pair: {reference_s:.3} s)");
        println!(
            "DPO       {:>8.3} pairs/s   ({:.1} tokens/s)",
            1.0 / dpo_s,
            2.0 * t as f64 / dpo_s
        );
        if let Some(rss) = dpo_rss {
            println!("peak RSS  {rss:>8.0} MB   (DPO)");
        }
        println!("SFT on the pair's preferred sequence, for comparison:");
    }
    println!(
        "one example of {t} tokens, the last half ({labelled} targets) labelled; {} timed steps after {} warm-up",
        args.steps, args.warmup_steps
    );
    println!(
        "step      {:>8.3} s   ({:.1} GFLOP of matrix products)",
        step_s,
        flops / 1e9
    );
    println!("training  {tokens_per_s:>8.1} tokens/s");
    println!(
        "achieved  {gflops:>8.1} GFLOP/s   (f32 sgemm peak of this machine: {peak:.1} GFLOP/s, {:.0}%)",
        100.0 * gflops / peak
    );
    if let (Some(rss), None) = (rss, dpo) {
        println!("peak RSS  {rss:>8.0} MB");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_adds_up_for_one_position() {
        let mut cfg = crate::shapes::config("qwen2.5-0.5b").unwrap();
        cfg.num_layers = 1;
        // One position, no label (no LM head): full = 3 × forward, LoRA = 2 × frozen linears
        // (forward, d input) + 3 × attention and LoRA (forward, backward twice).
        let lin =
            2.0 * (896.0 * 896.0 + 2.0 * 896.0 * 128.0 + 896.0 * 896.0 + 3.0 * 896.0 * 4864.0);
        let attn = 2.0 * 2.0 * 14.0 * 64.0;
        let full = step_flops(&cfg, 1, 0, None, false);
        assert!((full - 3.0 * (lin + attn)).abs() < 1.0, "{full}");
        let lora_in_out = 896.0
            + 896.0
            + 2.0 * (896.0 + 128.0)
            + 896.0
            + 896.0
            + 2.0 * (896.0 + 4864.0)
            + 4864.0
            + 896.0;
        let lora = 2.0 * 8.0 * lora_in_out;
        let got = step_flops(&cfg, 1, 0, Some(8), false);
        assert!(
            (got - (2.0 * lin + 3.0 * attn + 3.0 * lora)).abs() < 1.0,
            "{got}"
        );
        // The LM head on labelled rows: forward and d hidden for LoRA, plus d weight for full.
        let head = 2.0 * 896.0 * 151_936.0;
        assert!((step_flops(&cfg, 1, 1, Some(8), false) - got - 2.0 * head).abs() < 1.0);
        assert!((step_flops(&cfg, 1, 1, None, false) - full - 3.0 * head).abs() < 1.0);
    }
}
