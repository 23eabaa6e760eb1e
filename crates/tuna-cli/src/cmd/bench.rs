//! `tuna bench`: end-to-end throughput on random-weight models of real shapes (or, for
//! generation, a model directory), on the CPU or a GPU.
//! Numbers are printed, never asserted (see STYLE.md: timing never runs in `cargo test`).

use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tuna_engine::DType;
use tuna_model::QwenModel;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Prefill and decode speed of generation
    Generate(GenerateBenchArgs),
    /// Training step speed (LoRA or full) on one example
    Train(super::bench_train::TrainBenchArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum BenchDType {
    F32,
    Bf16,
}

impl From<BenchDType> for DType {
    fn from(d: BenchDType) -> DType {
        match d {
            BenchDType::F32 => DType::F32,
            BenchDType::Bf16 => DType::BF16,
        }
    }
}

#[derive(Args, Debug)]
pub struct GenerateBenchArgs {
    /// Model shape: qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b
    #[arg(long, default_value = "qwen2.5-0.5b")]
    pub shape: String,
    /// Dtype the weights are stored in (compute is f32)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: BenchDType,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Matrix products (prefill): f32, bf16 (operands rounded to bf16, f32 sums), or auto (bf16
    /// where the CPU has bf16 units). Decode reads the weights as stored either way.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: super::train::PrecisionArg,
    /// Benchmark this model directory (or `demo`) instead of a random-weight `--shape`
    #[arg(long)]
    pub model: Option<String>,
    /// Where generation runs: cpu, gpu or gpu:N (f32 weights and the key/value cache on the GPU;
    /// `--precision` and `--dtype` apply to the CPU only)
    #[arg(long, default_value = "cpu")]
    pub device: crate::device_arg::DeviceArg,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Generate(args) => bench_generate(args),
        BenchCommand::Train(args) => super::bench_train::run(args),
    }
}

/// Peak resident set size of this process in MB (Linux `VmHWM`), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bench_generate(args: GenerateBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.prompt_len > 0 && args.new_tokens > 0,
        "--prompt-len and --new-tokens must be positive"
    );
    let build = Instant::now();
    let (name, mut model) = match &args.model {
        Some(m) => {
            let dir = crate::model_dir::resolve(m)?;
            let model = QwenModel::load(&dir)
                .with_context(|| format!("loading model {}", dir.display()))?;
            (m.clone(), model)
        }
        None => {
            let cfg = crate::shapes::config(&args.shape)?;
            let model = QwenModel::random(cfg, args.dtype.into(), 0.02, 1);
            (args.shape.clone(), model)
        }
    };
    let cfg = model.config.clone();
    anyhow::ensure!(
        args.prompt_len + args.new_tokens <= cfg.max_position_embeddings,
        "--prompt-len + --new-tokens exceed the context window of {} tokens",
        cfg.max_position_embeddings
    );
    let precision = tuna_train::PrecisionSetting::from(args.precision).resolve();
    model.set_precision(precision);
    let mut decoder = args.device.decoder(&model, None)?;
    let build_s = build.elapsed().as_secs_f64();
    let mut rng = StdRng::seed_from_u64(2);
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|_| rng.random_range(0..cfg.vocab_size as u32))
        .collect();

    // Warm-up: page in the weights, spin up the thread pool, compile the GPU kernels.
    decoder.start(args.prompt_len + args.new_tokens)?;
    let logits = decoder.step(&prompt)?;
    decoder.step(&[tuna_model::generate::argmax(&logits)])?;
    decoder.start(args.prompt_len + args.new_tokens)?;

    let t0 = Instant::now();
    let mut logits = decoder.step(&prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..args.new_tokens {
        let next = tuna_model::generate::argmax(&logits);
        logits = decoder.step(&[next])?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let prefill_tps = args.prompt_len as f64 / prefill_s;
    let decode_tps = args.new_tokens as f64 / decode_s;
    let rss = peak_rss_mb();
    let threads = rayon::current_num_threads();
    let device = args.device.to_string();
    let (dtype, products) = match args.device {
        crate::device_arg::DeviceArg::Cpu => (
            model.embed_tokens.dtype().name().to_string(),
            precision.describe(),
        ),
        crate::device_arg::DeviceArg::Gpu(_) => ("f32".to_string(), "f32".into()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "shape": name, "device": device, "dtype": dtype, "threads": threads,
                "precision": products,
                "parameters": cfg.num_parameters(), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps,
                "peak_rss_mb": rss, "build_s": build_s,
            })
        );
    } else {
        println!(
            "{name} ({:.1}M parameters) on {device}, weights {dtype}, {products} products, {threads} threads",
            cfg.num_parameters() as f64 / 1e6,
        );
        println!(
            "prefill  {:>4} tokens  {:>8.1} tokens/s",
            args.prompt_len, prefill_tps
        );
        println!(
            "decode   {:>4} tokens  {:>8.1} tokens/s",
            args.new_tokens, decode_tps
        );
        if let Some(rss) = rss {
            println!("peak RSS {rss:.0} MB");
        }
    }
    Ok(())
}
