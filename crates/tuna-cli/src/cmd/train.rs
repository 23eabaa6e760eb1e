//! `tuna train`: supervised fine-tuning (LoRA or full) of a model on a chat JSONL file, or DPO on
//! a preference JSONL file (`--objective dpo`), with a progress bar, evaluation and sample lines
//! at each checkpoint, and a summary at the end.
//! Ctrl-C stops after the current step with a resumable checkpoint (`--resume` continues).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tuna_data::pack::LengthPolicy;
use tuna_model::LoraTarget;
use tuna_train::{
    BatchSize, CheckpointInfo, EvalMetrics, Method, Objective, PrecisionSetting, PreferenceMetrics,
    ScheduleKind, StepMetrics, TrainConfig, TrainObserver, Trainer,
};

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum MethodArg {
    Lora,
    Full,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ObjectiveArg {
    /// Supervised fine-tuning on chat data ({"messages": [...]})
    Sft,
    /// Direct preference optimisation on preference pairs ({"input", "preferred_output", "non_preferred_output"})
    Dpo,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ScheduleArg {
    Linear,
    Cosine,
    Constant,
}

/// How the matrix products multiply: bf16 where the CPU has bf16 units (auto), f32, or bf16.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionArg {
    Auto,
    F32,
    Bf16,
}

impl From<PrecisionArg> for PrecisionSetting {
    fn from(p: PrecisionArg) -> PrecisionSetting {
        match p {
            PrecisionArg::Auto => PrecisionSetting::Auto,
            PrecisionArg::F32 => PrecisionSetting::F32,
            PrecisionArg::Bf16 => PrecisionSetting::Bf16,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LengthPolicyArg {
    Truncate,
    Drop,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Hugging Face model directory, or `demo`
    #[arg(long, env = "TUNA_MODEL")]
    pub model: String,
    /// Training data: OpenAI chat JSONL (`{"messages": [...]}` per line); with `--objective dpo`,
    /// OpenAI preference JSONL (`{"input": ..., "preferred_output": ..., "non_preferred_output": ...}`)
    #[arg(long)]
    pub data: PathBuf,
    /// Validation data in the same format [default: hold out 5% of --data when it has 50+ examples]
    #[arg(long)]
    pub validation: Option<PathBuf>,
    /// Share of --data held out for validation when --validation is not given (0 trains on everything)
    #[arg(long)]
    pub validation_fraction: Option<f32>,
    /// Output directory: checkpoint-<step>/, metrics.jsonl, train_config.json
    #[arg(long)]
    pub out: PathBuf,
    /// JSON file with training settings (the fields of TrainConfig); flags override it
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// What to optimise [default: sft]
    #[arg(long, value_enum)]
    pub objective: Option<ObjectiveArg>,
    /// DPO: how far the model may move from the reference (the model as the run starts) [default: 0.1]
    #[arg(long)]
    pub beta: Option<f32>,
    /// What to train [default: lora]
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Passes over the data [default: 3]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps to run (overrides --epochs)
    #[arg(long, conflicts_with = "epochs")]
    pub max_steps: Option<usize>,
    /// Peak learning rate [default: 1e-4 for LoRA, 1e-5 for full; DPO 5e-6 for LoRA, 1e-6 for full]
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learning-rate schedule after warmup [default: cosine]
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Warmup as a share of all steps [default: 0.03]
    #[arg(long)]
    pub warmup_ratio: Option<f32>,
    /// Warmup in steps (overrides --warmup-ratio)
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// AdamW weight decay [default: 0.01]
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Clip the gradient norm to this (0 disables clipping) [default: 1.0]
    #[arg(long)]
    pub max_grad_norm: Option<f32>,
    /// Examples per micro-batch, packed without padding [default: 1]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per micro-batch instead of a number of examples
    #[arg(long, conflicts_with = "batch_size")]
    pub batch_tokens: Option<usize>,
    /// Micro-batches per optimizer step [default: 8]
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Longest example in tokens [default: 2048]
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// What happens to longer examples: left out (as `tuna data check` reports) or cut [default: drop]
    #[arg(long, value_enum)]
    pub length_policy: Option<LengthPolicyArg>,
    /// LoRA rank [default: 16]
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (scale = alpha / rank) [default: 32]
    #[arg(long)]
    pub lora_alpha: Option<f32>,
    /// LoRA dropout [default: 0.05]
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// Adapted projections, comma-separated (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) [default: all]
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Rank-stabilised LoRA scaling (alpha / sqrt(rank))
    #[arg(long)]
    pub rslora: bool,
    /// Start LoRA from this PEFT adapter directory (DPO after SFT: it is also DPO's reference)
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Seed for the split, shuffling, initialisation and dropout [default: 42]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate every N steps [default: at each checkpoint]
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps [default: at the end of each epoch]
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Keep only the newest N checkpoints
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Recompute activations in backward (less memory, ~30% slower)
    #[arg(long)]
    pub recompute: bool,
    /// Matrix products: bf16 operands with f32 sums where the CPU has bf16 units (auto), f32, or
    /// bf16; master weights, LoRA and AdamW state stay f32 [default: auto]
    #[arg(long, value_enum, env = "TUNA_PRECISION")]
    pub precision: Option<PrecisionArg>,
    /// Held-out prompts answered at each checkpoint [default: 1]
    #[arg(long)]
    pub sample_prompts: Option<usize>,
    /// Continue from the newest checkpoint in --out
    #[arg(long)]
    pub resume: bool,
    /// Continue from this checkpoint directory
    #[arg(long, conflicts_with = "resume")]
    pub resume_from: Option<PathBuf>,
    /// No progress bar: print one JSON line per step, evaluation and checkpoint to stdout
    #[arg(long)]
    pub json: bool,
    /// Where the forward and backward passes run: cpu, gpu or gpu:N (`tuna devices` lists them);
    /// the optimizer, checkpoints and metrics are the same on each [default: cpu]
    #[arg(long, default_value = "cpu", env = "TUNA_DEVICE")]
    pub device: crate::device_arg::DeviceArg,
}

impl TrainArgs {
    /// The config file (or the defaults) with every given flag applied.
    fn to_config(&self, model_dir: PathBuf) -> anyhow::Result<TrainConfig> {
        let mut c: TrainConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {} as a training config", path.display()))?
            }
            None => TrainConfig::default(),
        };
        c.model_dir = model_dir;
        c.train_file = self.data.clone();
        c.out_dir = self.out.clone();
        set(&mut c.validation_file, self.validation.clone().map(Some));
        set(
            &mut c.validation_fraction,
            self.validation_fraction.map(Some),
        );
        set(
            &mut c.objective,
            self.objective.map(|o| match o {
                ObjectiveArg::Sft => Objective::Sft,
                ObjectiveArg::Dpo => Objective::Dpo,
            }),
        );
        set(&mut c.dpo.beta, self.beta);
        set(
            &mut c.method,
            self.method.map(|m| match m {
                MethodArg::Lora => Method::Lora,
                MethodArg::Full => Method::Full,
            }),
        );
        set(&mut c.epochs, self.epochs);
        set(&mut c.max_steps, self.max_steps.map(Some));
        set(&mut c.learning_rate, self.lr.map(Some));
        set(
            &mut c.lr_schedule,
            self.schedule.map(|s| match s {
                ScheduleArg::Linear => ScheduleKind::Linear,
                ScheduleArg::Cosine => ScheduleKind::Cosine,
                ScheduleArg::Constant => ScheduleKind::Constant,
            }),
        );
        set(&mut c.warmup_ratio, self.warmup_ratio);
        set(&mut c.warmup_steps, self.warmup_steps.map(Some));
        set(&mut c.weight_decay, self.weight_decay);
        set(
            &mut c.max_grad_norm,
            self.max_grad_norm.map(|n| (n > 0.0).then_some(n)),
        );
        set(&mut c.batch_size, self.batch_size.map(BatchSize::Examples));
        set(&mut c.batch_size, self.batch_tokens.map(BatchSize::Tokens));
        set(&mut c.gradient_accumulation_steps, self.grad_accum);
        set(&mut c.max_seq_len, self.max_seq_len);
        set(
            &mut c.length_policy,
            self.length_policy.map(|p| match p {
                LengthPolicyArg::Truncate => LengthPolicy::Truncate,
                LengthPolicyArg::Drop => LengthPolicy::Drop,
            }),
        );
        set(&mut c.lora.rank, self.lora_rank);
        set(&mut c.lora.alpha, self.lora_alpha);
        set(&mut c.lora.dropout, self.lora_dropout);
        if let Some(names) = &self.lora_targets {
            c.lora.target_modules = names
                .iter()
                .map(|n| {
                    LoraTarget::parse(n.trim()).with_context(|| {
                        format!("unknown LoRA target `{n}`; use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        c.lora.use_rslora |= self.rslora;
        set(&mut c.init_adapter, self.init_adapter.clone().map(Some));
        set(&mut c.seed, self.seed);
        set(&mut c.eval_every, self.eval_every.map(Some));
        set(&mut c.save_every, self.save_every.map(Some));
        set(&mut c.save_total_limit, self.save_total_limit.map(Some));
        c.recompute_activations |= self.recompute;
        set(&mut c.precision, self.precision.map(PrecisionSetting::from));
        set(&mut c.sample_prompts, self.sample_prompts);
        c.resume |= self.resume;
        set(&mut c.resume_from, self.resume_from.clone().map(Some));
        Ok(c)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// Shows progress on a bar (or as JSON lines) and stops on Ctrl-C.
struct Progress {
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
}

impl Progress {
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }
}

impl TrainObserver for Progress {
    fn on_step(&mut self, m: &StepMetrics) -> ControlFlow<()> {
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step as u64);
                bar.set_message(format!(
                    "loss {:.4}{}  lr {:.2e}  {:.0} tok/s  ETA {}",
                    m.loss,
                    m.preference.as_ref().map(rewards).unwrap_or_default(),
                    m.lr,
                    m.tokens_per_sec,
                    format_duration(m.eta_s)
                ));
            }
            None => println!("{}", json_line("train", m)),
        }
        if self.stop.load(Ordering::Relaxed) {
            self.line("stopping: writing a checkpoint you can --resume from");
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn on_eval(&mut self, m: &EvalMetrics) {
        if self.bar.is_none() {
            return println!("{}", json_line("eval", m));
        }
        self.line(&format!(
            "step {:>6}  eval loss {:.4}  perplexity {:.2}  token accuracy {:.1}%{}",
            m.step,
            m.loss,
            m.perplexity,
            100.0 * m.token_accuracy,
            m.preference.as_ref().map(rewards).unwrap_or_default()
        ));
    }

    fn on_checkpoint(&mut self, c: &CheckpointInfo) {
        if self.bar.is_none() {
            return println!("{}", json_line("checkpoint", c));
        }
        self.line(&format!(
            "step {:>6}  checkpoint {}",
            c.step,
            c.path.display()
        ));
        for s in &c.samples {
            let prompt = s
                .messages
                .last()
                .map(|m| m.content.as_str())
                .unwrap_or_default();
            self.line(&format!("    prompt    {}", one_line(prompt)));
            match &s.non_preferred {
                Some(worse) => {
                    self.line(&format!("    preferred {}", one_line(&s.reference)));
                    self.line(&format!("    rejected  {}", one_line(worse)));
                }
                None => self.line(&format!("    reference {}", one_line(&s.reference))),
            }
            self.line(&format!("    generated {}", one_line(&s.generated)));
        }
    }
}

/// DPO's reward accuracy and margin, for the progress line.
fn rewards(p: &PreferenceMetrics) -> String {
    format!(
        "  reward accuracy {:.0}%  margin {:.3}",
        100.0 * p.rewards_accuracies,
        p.rewards_margins
    )
}

fn json_line<T: serde::Serialize>(kind: &str, value: &T) -> String {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("type".into(), kind.into());
    }
    v.to_string()
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 100 {
        format!("{}…", flat.chars().take(100).collect::<String>())
    } else {
        flat
    }
}

fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// First Ctrl-C: stop after the current step with a checkpoint. Second: exit at once.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nCtrl-C: finishing this step and writing a checkpoint (Ctrl-C again to quit at once)");
                flag.store(true, Ordering::Relaxed);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
    stop
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    tuna_engine::alloc::reuse_freed_memory();
    let model_dir = crate::model_dir::resolve(&args.model)?;
    let cfg = args.to_config(model_dir)?;
    if !args.json {
        eprintln!(
            "loading {} and tokenizing {} ...",
            cfg.model_dir.display(),
            cfg.train_file.display()
        );
    }
    let mut trainer = Trainer::new(cfg).with_context(|| {
        format!(
            "setting up training\n---> HINT: `tuna data check {}` lists every problem of a dataset",
            args.data.display()
        )
    })?;
    args.device.apply(&mut trainer)?;
    let c = trainer.config().clone();
    let d = &trainer.data().stats;
    if !args.json {
        let what = match c.objective {
            Objective::Sft => "examples",
            Objective::Dpo => "pairs",
        };
        eprintln!(
            "{} {} training {} parameters of {} ({} steps; {} train / {} validation {what}, {} tokens per epoch, {} trained)",
            c.objective.as_str(),
            c.method.as_str(),
            trainer.trainable_parameters(),
            c.model_dir.display(),
            trainer.total_steps(),
            d.train_examples,
            d.validation_examples,
            d.train_tokens,
            d.train_trained_tokens,
        );
        eprintln!(
            "device: {}; matrix products: {} (precision {})",
            trainer.device_name(),
            trainer.precision_name(),
            c.precision.as_str()
        );
        if d.truncated + d.dropped_too_long + d.dropped_no_labels > 0 {
            eprintln!(
                "note: {} {what} truncated to {} tokens, {} dropped as too long, {} dropped without a trained token",
                d.truncated, c.max_seq_len, d.dropped_too_long, d.dropped_no_labels
            );
        }
        if let Some(from) = trainer.resumed_from() {
            eprintln!(
                "resuming from {} (step {})",
                from.display(),
                trainer.steps_done()
            );
        }
    }
    let bar = (!args.json).then(|| {
        let bar = ProgressBar::new(trainer.total_steps() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} step {pos}/{len} [{elapsed_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(trainer.steps_done() as u64);
        bar
    });
    let mut progress = Progress {
        bar,
        stop: stop_on_ctrl_c(),
    };
    let summary = trainer.run(&mut progress).context("training")?;
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", json_line("summary", &summary));
        return Ok(());
    }
    let verb = if summary.stopped {
        "stopped"
    } else {
        "finished"
    };
    println!(
        "{verb} after {}/{} steps in {} ({} matrix products): train loss {}, eval loss {}",
        summary.steps,
        summary.total_steps,
        format_duration(summary.elapsed_s),
        summary.precision,
        summary.train_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary
            .eval
            .as_ref()
            .map_or("-".into(), |e| format!("{:.4}", e.loss)),
    );
    if let Some(last) = summary.checkpoints.last() {
        println!("checkpoint: {}", last.path.display());
        match c.method {
            Method::Lora => println!(
                "try it:     tuna chat --model {} --adapter {}\nmerge it:   tuna merge --model {} --adapter {} --out merged",
                args.model,
                last.path.display(),
                args.model,
                last.path.display()
            ),
            Method::Full => println!("try it:     tuna chat --model {}", last.path.display()),
        }
    }
    if summary.stopped {
        println!(
            "continue:   tuna train ... --out {} --resume",
            c.out_dir.display()
        );
    }
    Ok(())
}
