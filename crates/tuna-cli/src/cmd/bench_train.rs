//! `tuna bench train`: training throughput on a random-weight model of a real shape.
//!
//! One example of `--seq-len` random tokens whose last half carries labels (the first half plays
//! the prompt: no LM head or loss there; `--labels all` labels every position, as a plain causal-LM
//! batch does), LoRA of rank 8 on all seven projections (or full fine-tuning), a few warm-up steps,
//! then timed steps of forward + backward + clipping + AdamW, at `--precision`.
//! Reports which matmul kernels ran, tokens/s, the GFLOP/s of the matrix products the step actually
//! does against the machine's measured peaks (the bf16 dot-product instruction, the f32 FMA, and
//! large f32 / bf16 products), and the peak RSS. Numbers are printed, never asserted.
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
use tuna_engine::ops::matmul::{Bf16Kernel, Precision, matmul_forward, peak};
use tuna_engine::{DType, WeightRef};
use tuna_model::params::trainable_parameters_mut;
use tuna_model::train::TrainOptions;
use tuna_model::{Gradients, LoraAdapter, LoraConfig, LoraTarget, QwenConfig, QwenModel};
use tuna_train::data::{DataStats, Dataset, Plan};
use tuna_train::dpo::{self, ReferenceLogps};
use tuna_train::optim::{AdamW, AdamWSettings, clip_grad_norm};
use tuna_train::{BatchSize, Objective, PrecisionSetting, TrainConfig};

use super::bench::BenchDType;
use super::train::PrecisionArg;
use crate::device_arg::DeviceArg;

/// Which positions carry a label.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelShare {
    /// The last half (a prompt, then its answer): the LM head runs on half the positions.
    Half,
    /// Every position but the last (a plain causal-LM batch, as transformers computes logits for).
    All,
}

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
    /// Dtype the frozen weights are stored in (Qwen checkpoints are bf16; full fine-tuning trains
    /// f32 master weights either way)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: BenchDType,
    /// Matrix products: bf16 where the CPU has bf16 units (auto), f32, or bf16
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// Labelled positions: the last half, or all (SFT only)
    #[arg(long, value_enum, default_value = "half")]
    pub labels: LabelShare,
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
    /// Where the SFT step's forward and backward run: cpu, gpu or gpu:N (f32 on a GPU; the
    /// optimizer stays on the host, as in `tuna train`) [default: cpu]
    #[arg(long, default_value = "cpu")]
    pub device: crate::device_arg::DeviceArg,
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

/// CPU time of this process (all threads), in seconds.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best of a few timed `n`×`n`×`n` products at `precision` (through the linear layer), in GFLOP/s.
fn product_peak_gflops(n: usize, precision: Precision) -> f64 {
    let mut rng = StdRng::seed_from_u64(3);
    let a: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut c = vec![0.0f32; n * n];
    let mut run = || matmul_forward(&mut c, &a, WeightRef::F32(&b), None, n, n, n, precision);
    run(); // warm-up
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t0 = Instant::now();
        run();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// The machine's peaks, measured before the model is built.
#[derive(Debug, Clone, serde::Serialize)]
struct Peaks {
    /// The bf16 dot-product instruction of the detected kernel (`vdpbf16ps` / `tdpbf16ps`), all
    /// threads, each at its rate over its own CPU time (robust to a busy machine).
    bf16_dot: Option<f64>,
    /// AVX-512 f32 FMA, measured likewise.
    f32_fma: Option<f64>,
    /// A 2048³ f32 product (sgemm).
    f32_product: f64,
    /// A 2048³ product through the bf16 kernel (None without one).
    bf16_product: Option<f64>,
}

impl Peaks {
    fn measure(kernel: Bf16Kernel) -> Peaks {
        Peaks {
            bf16_dot: peak::bf16_dot_peak_gflops(kernel),
            f32_fma: peak::f32_fma_peak_gflops(),
            f32_product: product_peak_gflops(2048, Precision::F32),
            bf16_product: kernel
                .is_native()
                .then(|| product_peak_gflops(2048, Precision::Bf16(kernel))),
        }
    }

    /// The instruction peak the step's products are bounded by.
    fn for_precision(&self, precision: Precision) -> Option<f64> {
        match precision {
            Precision::Bf16(k) if k.is_native() => self.bf16_dot,
            _ => self.f32_fma,
        }
    }
}

pub fn run(args: TrainBenchArgs) -> anyhow::Result<()> {
    tuna_engine::alloc::reuse_freed_memory();
    let cfg = crate::shapes::config(&args.shape)?;
    anyhow::ensure!(args.seq_len >= 4, "--seq-len must be at least 4");
    anyhow::ensure!(args.steps > 0, "--steps must be positive");
    anyhow::ensure!(
        args.objective == BenchObjective::Sft || args.labels == LabelShare::Half,
        "--labels all is for SFT steps (a DPO pair labels its answers)"
    );
    anyhow::ensure!(
        args.objective == BenchObjective::Sft || args.device == DeviceArg::Cpu,
        "--objective dpo runs on the CPU only"
    );
    let precision = PrecisionSetting::from(args.precision).resolve();
    let kernel = Bf16Kernel::detect();
    let peaks = Peaks::measure(kernel);

    let build = Instant::now();
    let mut model = QwenModel::random(cfg.clone(), args.dtype.into(), 0.02, 1);
    model.set_precision(precision);
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
    let opt_configs = opt.configs(1e-4);
    let build_s = build.elapsed().as_secs_f64();

    // One example: random ids; positions from the first label on predict their next token (the
    // second half, or all). With DPO it is the preferred sequence of a pair whose other answer is
    // different random ids.
    let t = args.seq_len;
    let first_label = match args.labels {
        LabelShare::Half => t / 2,
        LabelShare::All => 0,
    };
    let mut rng = StdRng::seed_from_u64(2);
    let mut random_ids = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| rng.random_range(0..cfg.vocab_size as u32))
            .collect()
    };
    let prompt = random_ids(t / 2);
    let answer = |ids: Vec<u32>| {
        let input_ids: Vec<u32> = prompt.iter().copied().chain(ids).collect();
        // Labels unshifted: the targets of positions first_label .. t-2.
        let labels = (0..t)
            .map(|i| {
                if i > first_label {
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

    let mut device = match args.device {
        DeviceArg::Cpu => None,
        DeviceArg::Gpu(index) => {
            let mut d = tuna_gpu::train_device(index, &model, adapter.as_ref())?;
            // As in training: gradients, clipping and AdamW stay on the device.
            d.keep_optimizer(&layout, &opt.m, &opt.v)?;
            Some(d)
        }
    };

    // Times warm-up + timed steps of `step` (gradients into `grads`, returning the loss), each
    // followed by clipping and AdamW on the host when `host_optimizer` (else `step` ran them on
    // its device); returns the mean step time, the mean CPU seconds of all threads per step (on a
    // loaded machine the wall time mostly measures the share of the CPUs this process got; this
    // does not, as idle rayon threads sleep) and the last loss.
    let mut timed = |step: &mut StepFn, host_optimizer: bool| -> anyhow::Result<(f64, f64, f64)> {
        let (mut times, mut cpu_times) = (Vec::new(), Vec::new());
        let mut loss = 0.0;
        for i in 0..args.warmup_steps + args.steps {
            let (t0, c0) = (Instant::now(), process_cpu_s());
            grads.zero();
            loss = step(&mut grads, adapter.as_ref(), &model)?;
            if host_optimizer {
                clip_grad_norm(&mut grads, Some(1.0));
                let params = trainable_parameters_mut(&mut model, adapter.as_mut());
                opt.update(params, &grads, 1e-4);
            }
            if i >= args.warmup_steps {
                times.push(t0.elapsed().as_secs_f64());
                cpu_times.push(process_cpu_s() - c0);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        Ok((mean(&times), mean(&cpu_times), loss))
    };

    let dpo = match &dpo_setup {
        Some((plan, batches, reference, reference_s)) => {
            let (step_s, _, loss) = timed(
                &mut |grads, adapter, model| {
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
                },
                true,
            )?;
            Some((step_s, loss, *reference_s, super::bench::peak_rss_mb()))
        }
        None => None,
    };

    let batch = tuna_train::data::pack_group(&[&chosen]);
    let host_optimizer = device.is_none();
    let mut step_number = 0;
    let (step_s, cpu_s, loss) = timed(
        &mut |grads, adapter, model| {
            let (b, scale) = (batch.as_train_batch(), 1.0 / labelled as f32);
            let stats = match &mut device {
                Some(d) => {
                    let stats = d.forward_backward(&b, &layout, grads, scale, &opts)?;
                    step_number += 1;
                    d.optimizer_step(&opt_configs, step_number, Some(1.0))?;
                    stats
                }
                None => model.forward_backward(&b, adapter, grads, scale, &opts)?,
            };
            Ok(stats.loss_sum / stats.tokens.max(1) as f64)
        },
        host_optimizer,
    )?;
    let device_name = device
        .as_ref()
        .map_or_else(|| "cpu".into(), |d| d.describe());
    let precision_name = device
        .as_ref()
        .map_or_else(|| precision.describe(), |d| d.precision());
    let tokens_per_s = t as f64 / step_s;
    let flops = step_flops(
        &cfg,
        t,
        labelled,
        lora.as_ref().map(|l| l.r),
        args.recompute,
    );
    let gflops = flops / step_s / 1e9;
    // Per CPU-second of all threads, against one thread's share of the instruction peak: what the
    // step gets out of the time it ran, whatever else shares the machine.
    let gflop_per_cpu_s = flops / cpu_s / 1e9;
    let rss = super::bench::peak_rss_mb();
    let threads = rayon::current_num_threads();
    let method = match args.method {
        BenchMethod::Lora => format!("lora r={} (all 7 projections)", args.lora_rank),
        BenchMethod::Full => "full".to_string(),
    };
    let dtype = DType::from(args.dtype).name();
    // The CPU's peaks say nothing of a device's.
    let peak = peaks.for_precision(precision).filter(|_| device.is_none());
    // The LoRA products (rank r) and attention stay f32 at every precision.
    let kernels = match (&device, precision) {
        (Some(_), _) => {
            "f32 on the device (cubek-matmul); gradients and AdamW on the device".to_string()
        }
        (None, Precision::F32) => "f32 sgemm (gemm crate); GEMV for <= 32 rows".to_string(),
        (None, Precision::Bf16(k)) => format!(
            "{} for linear layers and the LM head (bf16 operands, f32 sums); f32 for LoRA (rank-r kernels) and attention",
            k.name()
        ),
    };
    if args.json {
        let mut out = serde_json::json!({
            "shape": args.shape, "method": method, "dtype": dtype, "device": device_name,
            "precision": precision_name, "precision_setting": PrecisionSetting::from(args.precision).as_str(),
            "bf16_kernel_detected": kernel.name(), "kernels": kernels,
            "threads": threads, "seq_len": t, "labelled_tokens": labelled, "labels": format!("{:?}", args.labels).to_lowercase(),
            "recompute": args.recompute,
            "parameters": cfg.num_parameters(), "trainable_parameters": layout.num_elements(),
            "step_s": step_s, "tokens_per_s": tokens_per_s, "gflop_per_step": flops / 1e9,
            "cpu_s_per_step": cpu_s, "tokens_per_cpu_s": t as f64 / cpu_s,
            "gflops": gflops, "gflop_per_cpu_s": gflop_per_cpu_s,
            "peak_gflops": peak, "peak_gflops_per_thread": peak.map(|p| p / threads as f64), "peaks": peaks,
            "peak_rss_mb": rss, "loss": loss, "build_s": build_s,
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
        "shape {} ({:.0}M parameters), {method}, weights {dtype}, {threads} threads{}",
        args.shape,
        cfg.num_parameters() as f64 / 1e6,
        if args.recompute {
            ", recomputed activations"
        } else {
            ""
        }
    );
    println!("device {device_name}; precision {precision_name} ({kernels})");
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
        "one example of {t} tokens, {labelled} labelled targets ({:?}); {} timed steps after {} warm-up",
        args.labels, args.steps, args.warmup_steps
    );
    println!(
        "step      {:>8.3} s   ({:.1} GFLOP of matrix products)",
        step_s,
        flops / 1e9
    );
    println!(
        "training  {tokens_per_s:>8.1} tokens/s   ({:.1} tokens per CPU-second of all threads)",
        t as f64 / cpu_s
    );
    let peak_name = if matches!(precision, Precision::Bf16(k) if k.is_native()) {
        "bf16 dot-product"
    } else {
        "f32 FMA"
    };
    match peak {
        Some(p) => {
            println!(
                "achieved  {gflops:>8.1} GFLOP/s   ({:.0}% of the {peak_name} instruction peak, {p:.1} GFLOP/s)",
                100.0 * gflops / p,
            );
            println!(
                "          {gflop_per_cpu_s:>8.1} GFLOP per CPU-second ({:.0}% of one thread's share of that peak, {:.1})",
                100.0 * gflop_per_cpu_s * threads as f64 / p,
                p / threads as f64
            );
        }
        None => println!("achieved  {gflops:>8.1} GFLOP/s"),
    }
    println!(
        "peaks     bf16 dot {}, f32 FMA {}, 2048^3 product: f32 {:.1}, bf16 {} GFLOP/s",
        peaks.bf16_dot.map_or("-".into(), |p| format!("{p:.1}")),
        peaks.f32_fma.map_or("-".into(), |p| format!("{p:.1}")),
        peaks.f32_product,
        peaks.bf16_product.map_or("-".into(), |p| format!("{p:.1}")),
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
