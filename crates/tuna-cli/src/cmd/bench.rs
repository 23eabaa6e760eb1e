//! `tuna bench`: end-to-end throughput on random-weight models of real shapes.
//! Numbers are printed, never asserted (see STYLE.md: timing never runs in `cargo test`).

use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tuna_engine::DType;
use tuna_model::{KvCache, QwenModel};

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
    let cfg = crate::shapes::config(&args.shape)?;
    anyhow::ensure!(
        args.prompt_len > 0 && args.new_tokens > 0,
        "--prompt-len and --new-tokens must be positive"
    );
    let build = Instant::now();
    let mut model = QwenModel::random(cfg.clone(), args.dtype.into(), 0.02, 1);
    let precision = tuna_train::PrecisionSetting::from(args.precision).resolve();
    model.set_precision(precision);
    let build_s = build.elapsed().as_secs_f64();
    let mut rng = StdRng::seed_from_u64(2);
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|_| rng.random_range(0..cfg.vocab_size as u32))
        .collect();

    // Warm-up: page in the weights and spin up the thread pool.
    let mut cache = KvCache::new(&cfg, args.prompt_len + args.new_tokens);
    model.forward(&prompt[..1], &mut cache, None)?;
    cache.clear();

    let t0 = Instant::now();
    let mut logits = model.forward(&prompt, &mut cache, None)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..args.new_tokens {
        let next = tuna_model::generate::argmax(&logits);
        logits = model.forward(&[next], &mut cache, None)?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let prefill_tps = args.prompt_len as f64 / prefill_s;
    let decode_tps = args.new_tokens as f64 / decode_s;
    let rss = peak_rss_mb();
    let threads = rayon::current_num_threads();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "shape": args.shape, "dtype": DType::from(args.dtype).name(), "threads": threads,
                "precision": precision.describe(),
                "parameters": cfg.num_parameters(), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps,
                "peak_rss_mb": rss, "build_s": build_s,
            })
        );
    } else {
        println!(
            "shape {} ({:.0}M parameters), weights {}, {} products, {threads} threads",
            args.shape,
            cfg.num_parameters() as f64 / 1e6,
            DType::from(args.dtype).name(),
            precision.describe()
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
