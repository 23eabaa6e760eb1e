//! Training on the device (lavapipe in CI, CUDA with `--features cuda-tests`) against the CPU
//! engine, through the one training pass of `tuna_model::train` and the one trainer of
//! `tuna-train`: a LoRA and a full fine-tuning pass (loss, accuracy and every gradient within
//! 1e-4 relative), LoRA SFT runs on the tiny Qwen2 and Qwen3 fixtures (loss curve, evaluation and
//! saved adapter), and a resumed run on the device.

mod common;
#[path = "../../tuna-train/tests/common/mod.rs"]
mod train_common;

use std::path::{Path, PathBuf};

use common::{F32_REL_TOL, check_tensor, device};
use train_common::{Recorder, batch_examples, read_tensors, tiny_model};
use tuna_data::tokenize::TokenizedExample;
use tuna_gpu::GpuModel;
use tuna_model::{
    LoraAdapter, LoraConfig, QwenModel, SamplingParams, TrainBatch, TrainDevice, TrainOptions,
};
use tuna_train::{BatchSize, Dataset, Method, PrecisionSetting, TrainConfig, Trainer};

fn upload(model: &QwenModel, adapter: Option<&LoraAdapter>) -> Box<dyn TrainDevice> {
    Box::new(GpuModel::upload(device(), "test device".into(), model, adapter).unwrap())
}

/// The fixture's sequences packed into one batch, targets shifted inside each sequence.
struct Packed {
    ids: Vec<u32>,
    targets: Vec<i32>,
    positions: Vec<u32>,
    lens: Vec<usize>,
}

impl Packed {
    fn new(examples: &[TokenizedExample]) -> Self {
        let mut p = Packed {
            ids: vec![],
            targets: vec![],
            positions: vec![],
            lens: vec![],
        };
        for e in examples {
            let n = e.input_ids.len();
            p.ids.extend(&e.input_ids);
            p.positions.extend(0..n as u32);
            p.targets
                .extend((0..n).map(|t| if t + 1 < n { e.labels[t + 1] } else { -100 }));
            p.lens.push(n);
        }
        p
    }

    fn batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            input_ids: &self.ids,
            targets: &self.targets,
            position_ids: &self.positions,
            seq_lens: &self.lens,
        }
    }
}

/// The PEFT fixture's batch (`crates/tuna-train/tests/fixtures`).
fn fixture_examples() -> Vec<TokenizedExample> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuna-train/tests/fixtures");
    batch_examples(&dir.join("peft-tiny-qwen2"))
}

fn fixture_batch() -> Packed {
    Packed::new(&fixture_examples())
}

/// A LoRA adapter with random A and B (PEFT starts B at zero, which would leave dA zero).
fn random_adapter(model: &QwenModel, dropout: f32) -> LoraAdapter {
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: dropout,
        ..LoraConfig::default()
    };
    let mut adapter = LoraAdapter::new_random(&model.config, &cfg, 3);
    let mut rng = common::rng(11);
    for p in adapter.parameters_mut() {
        let values = common::rand_vec(&mut rng, p.len(), 0.05);
        p.copy_from_slice(&values);
    }
    adapter
}

/// One forward + backward on both backends: loss, accuracy and every gradient.
fn check_pass(model: &QwenModel, adapter: Option<&LoraAdapter>, opts: TrainOptions) {
    let packed = fixture_batch();
    let batch = packed.batch();
    let layout = match adapter {
        Some(a) => a.layout(),
        None => model.full_layout(),
    };
    let scale = 1.0 / 7.0;
    let mut cpu_grads = layout.zero_gradients();
    let cpu = model
        .forward_backward(&batch, adapter, &mut cpu_grads, scale, &opts)
        .unwrap();
    let mut dev = upload(model, adapter);
    let mut gpu_grads = layout.zero_gradients();
    let gpu = dev
        .forward_backward(&batch, &layout, &mut gpu_grads, scale, &opts)
        .unwrap();
    assert_eq!((gpu.tokens, gpu.correct), (cpu.tokens, cpu.correct));
    let rel = (gpu.loss_sum - cpu.loss_sum).abs() / cpu.loss_sum;
    println!(
        "loss sum: gpu {} cpu {} (rel {rel:.2e})",
        gpu.loss_sum, cpu.loss_sum
    );
    assert!(rel < F32_REL_TOL, "loss: relative error {rel:.2e}");
    for ((name, g), c) in layout
        .names()
        .iter()
        .zip(&gpu_grads.tensors)
        .zip(&cpu_grads.tensors)
    {
        check_tensor(name, g, c, F32_REL_TOL);
    }
    let eval_gpu = dev.evaluate(&batch).unwrap();
    let eval_cpu = model.evaluate(&batch, adapter).unwrap();
    assert_eq!(eval_gpu.correct, eval_cpu.correct);
    assert!((eval_gpu.loss_sum - eval_cpu.loss_sum).abs() / eval_cpu.loss_sum < F32_REL_TOL);
}

#[test]
fn lora_pass_matches_the_cpu_engine() {
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        println!("== {name}");
        let model = QwenModel::load(&tiny_model(name)).unwrap();
        // Dropout on: both backends must drop the same elements (host-made masks).
        let adapter = random_adapter(&model, 0.1);
        let opts = TrainOptions {
            recompute_activations: false,
            dropout_seed: 5,
        };
        check_pass(&model, Some(&adapter), opts);
    }
}

#[test]
fn full_fine_tuning_pass_matches_the_cpu_engine() {
    // Tied (embedding gets the head's gradient too) and untied heads.
    for name in ["tiny-qwen2", "tiny-qwen3-untied"] {
        println!("== {name}");
        let mut model = QwenModel::load(&tiny_model(name)).unwrap();
        let _ = model.full_parameters_mut();
        let opts = TrainOptions {
            recompute_activations: true,
            dropout_seed: 0,
        };
        check_pass(&model, None, opts);
    }
}

fn sft_config(model: &str, out: &Path, steps: usize) -> TrainConfig {
    let mut cfg = TrainConfig {
        model_dir: tiny_model(model),
        train_file: "batch.json".into(),
        out_dir: out.to_path_buf(),
        method: Method::Lora,
        max_steps: Some(steps),
        batch_size: BatchSize::Examples(2),
        gradient_accumulation_steps: 1,
        max_seq_len: 64,
        sample_prompts: 0,
        learning_rate: Some(1e-3),
        // The device multiplies in f32; so must the CPU run it is compared with.
        precision: PrecisionSetting::F32,
        save_every: Some(steps / 2),
        eval_every: Some(steps / 2),
        ..TrainConfig::default()
    };
    cfg.lora.rank = 4;
    cfg.lora.alpha = 8.0;
    cfg.lora.dropout = 0.05;
    cfg
}

fn sft_data() -> Dataset {
    let examples = fixture_examples();
    let validation = examples[..1].to_vec();
    Dataset::from_examples(examples, validation, Vec::new(), Default::default())
}

/// Runs `cfg`, on the device when `gpu`; returns its recorder and the last checkpoint.
fn train(cfg: &TrainConfig, gpu: bool, stop_after: Option<usize>) -> (Recorder, PathBuf) {
    let model = QwenModel::load(&cfg.model_dir).unwrap();
    let mut trainer = Trainer::from_parts(cfg.clone(), model, None, sft_data()).unwrap();
    if gpu {
        let dev = upload(trainer.model(), trainer.adapter());
        trainer.set_device(dev).unwrap();
    }
    let mut rec = Recorder {
        stop_after,
        ..Recorder::default()
    };
    let summary = trainer.run(&mut rec).unwrap();
    let last = summary.checkpoints.last().unwrap().path.clone();
    (rec, last)
}

/// Losses of the CPU and device runs agree within `LOSS_TOL` (relative) at every step. Both
/// start from the same weights and draw the same dropout masks; only the summation order of the
/// f32 kernels differs (~1e-6 relative per gradient, checked above), and AdamW carries that into
/// the weights (its first steps move each weight by about ±lr whatever the gradient's size).
/// Measured on lavapipe over 8 steps: worst loss 1.3e-7 relative, worst adapter tensor 5e-5 of
/// its largest value; the tolerances leave two orders of magnitude for other drivers.
const LOSS_TOL: f64 = 1e-5;
/// Saved adapter tensors: max |gpu − cpu| over max |cpu|.
const ADAPTER_TOL: f64 = 5e-3;

#[test]
fn lora_sft_on_the_device_follows_the_cpu_engine_and_resumes() {
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        println!("== {name}");
        let steps = 8;
        let (cpu_dir, gpu_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cpu, cpu_ckpt) = train(&sft_config(name, cpu_dir.path(), steps), false, None);
        let (gpu, gpu_ckpt) = train(&sft_config(name, gpu_dir.path(), steps), true, None);
        assert_eq!(gpu.steps.len(), steps);
        let first = cpu.steps[0].loss;
        let last = cpu.steps[steps - 1].loss;
        assert!(last < first, "the run does not learn: {first} → {last}");
        for (g, c) in gpu.steps.iter().zip(&cpu.steps) {
            let rel = (g.loss - c.loss).abs() / c.loss;
            println!(
                "step {}: loss gpu {:.7} cpu {:.7} rel {rel:.2e}; grad norm gpu {:.6} cpu {:.6}",
                c.step, g.loss, c.loss, g.grad_norm, c.grad_norm
            );
            assert!(
                rel <= LOSS_TOL,
                "step {}: loss relative error {rel:.2e}",
                c.step
            );
            assert_eq!(g.trained_tokens, c.trained_tokens);
        }
        for (g, c) in gpu.evals.iter().zip(&cpu.evals) {
            let rel = (g.loss - c.loss).abs() / c.loss;
            println!(
                "eval at {}: gpu {} cpu {} rel {rel:.2e}",
                c.step, g.loss, c.loss
            );
            assert!(rel <= LOSS_TOL);
        }
        assert_eq!(gpu.evals.len(), 2);
        let ours = read_tensors(&gpu_ckpt.join("adapter_model.safetensors"));
        let theirs = read_tensors(&cpu_ckpt.join("adapter_model.safetensors"));
        assert_eq!(ours.len(), theirs.len());
        for (tensor, (_, want)) in &theirs {
            check_tensor(tensor, &ours[tensor].1, want, ADAPTER_TOL);
        }

        // Resume on the device: stop after the first checkpoint, continue, end where the
        // uninterrupted device run ended.
        let resumed_dir = tempfile::tempdir().unwrap();
        let cfg = sft_config(name, resumed_dir.path(), steps);
        let (first_half, _) = train(&cfg, true, Some(steps / 2));
        assert_eq!(first_half.steps.len(), steps / 2);
        let cfg = TrainConfig {
            resume: true,
            ..cfg
        };
        let (second_half, resumed_ckpt) = train(&cfg, true, None);
        assert_eq!(second_half.steps[0].step, steps / 2 + 1);
        for (r, g) in second_half.steps.iter().zip(&gpu.steps[steps / 2..]) {
            let rel = (r.loss - g.loss).abs() / g.loss;
            println!(
                "resumed step {}: {} vs {} (rel {rel:.2e})",
                r.step, r.loss, g.loss
            );
            assert!(rel <= 1e-6, "resumed step {}", r.step);
        }
        let resumed = read_tensors(&resumed_ckpt.join("adapter_model.safetensors"));
        for (tensor, (_, want)) in &ours {
            check_tensor(tensor, &resumed[tensor].1, want, 1e-6);
        }
    }
}

/// The optimizer step on the device (global norm, clipping, AdamW, gradient accumulation over
/// micro-batches) against the CPU trainer: `steps` steps of 2 micro-batches with clipping active.
fn optimizer_config(name: &str, out: &Path, method: Method) -> TrainConfig {
    let mut cfg = sft_config(name, out, 4);
    cfg.method = method;
    cfg.batch_size = BatchSize::Examples(1);
    cfg.gradient_accumulation_steps = 2;
    cfg.max_grad_norm = Some(CLIP);
    // Every step updates (a warmup's first step has lr 0).
    cfg.warmup_steps = Some(0);
    cfg
}

/// Below every step's gradient norm in these runs, so each step is clipped (asserted).
const CLIP: f32 = 0.05;

/// Weights and adapter tensors after device steps: max |gpu − cpu| over max |cpu|. Moments,
/// losses and gradient norms hold [`F32_REL_TOL`] (worst measured on lavapipe: 2.3e-5, 2.5e-7,
/// 2.5e-7). The weights cannot, for a reason outside the optimizer: a LoRA B starts at zero, so its
/// values are nothing but AdamW's normalised updates `m̂/(√v̂ + ε)`, which turn the passes' f32
/// rounding of a gradient element near zero into a relative error of that element's update
/// (worst measured 6e-4, a LoRA B, over 4 steps; the full fine-tune's weights 2e-5). The
/// optimizer alone is exact: `kernels::adamw_and_grad_norm_match_cpu`.
const WEIGHT_TOL: f64 = 1e-3;

/// Every f32 tensor of every `.safetensors` file of checkpoint `want` (weights or adapter within
/// [`WEIGHT_TOL`], and AdamW's moments in `optimizer.safetensors` within [`F32_REL_TOL`])
/// equals `got`'s, relative to the tensor's largest value.
fn check_checkpoint(got: &Path, want: &Path) {
    let mut files = 0;
    for entry in std::fs::read_dir(want).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let file = path.file_name().unwrap();
        let theirs = read_tensors(&path);
        let ours = read_tensors(&got.join(file));
        assert_eq!(ours.len(), theirs.len(), "{file:?}");
        let tol = if file == "optimizer.safetensors" {
            F32_REL_TOL
        } else {
            WEIGHT_TOL
        };
        for (tensor, (_, w)) in &theirs {
            check_tensor(&format!("{file:?} {tensor}"), &ours[tensor].1, w, tol);
        }
        files += 1;
    }
    assert!(
        files >= 2,
        "{}: weights and optimizer state",
        want.display()
    );
}

fn check_losses(got: &Recorder, want: &Recorder, from: usize) {
    assert!(!got.steps.is_empty() && got.steps.len() + from <= want.steps.len());
    for (g, c) in got.steps.iter().zip(&want.steps[from..]) {
        assert_eq!(g.step, c.step);
        let rel = (g.loss - c.loss).abs() / c.loss;
        let norm_rel = f64::from((g.grad_norm - c.grad_norm).abs() / c.grad_norm);
        println!(
            "step {}: loss {:.7} vs {:.7} (rel {rel:.2e}), grad norm {:.6} vs {:.6} (rel {norm_rel:.2e})",
            c.step, g.loss, c.loss, g.grad_norm, c.grad_norm
        );
        assert!(rel <= F32_REL_TOL, "step {}: loss rel {rel:.2e}", c.step);
        assert!(
            norm_rel <= F32_REL_TOL,
            "step {}: grad norm rel {norm_rel:.2e}",
            c.step
        );
        assert!(c.grad_norm > CLIP, "step {}: clipping inactive", c.step);
    }
}

#[test]
fn the_optimizer_on_the_device_matches_the_cpu_trainer_and_checkpoints_cross_over() {
    for (name, method) in [
        ("tiny-qwen2", Method::Lora),
        ("tiny-qwen3-untied", Method::Full),
    ] {
        println!("== {name} {method:?}");
        let dir = |_| tempfile::tempdir().unwrap();
        let [cpu_dir, gpu_dir, g2c_dir, c2g_dir] = [0, 1, 2, 3].map(dir);
        let (cpu, cpu_ckpt) = train(&optimizer_config(name, cpu_dir.path(), method), false, None);
        let (gpu, gpu_ckpt) = train(&optimizer_config(name, gpu_dir.path(), method), true, None);
        assert_eq!((cpu.steps.len(), gpu.steps.len()), (4, 4));
        check_losses(&gpu, &cpu, 0);
        check_checkpoint(&gpu_ckpt, &cpu_ckpt);

        // Half on one, resumed on the other, ends where the uninterrupted runs ended.
        for (out, first_on_gpu) in [(&g2c_dir, true), (&c2g_dir, false)] {
            println!(
                "-- first half on the {}",
                if first_on_gpu { "gpu" } else { "cpu" }
            );
            let cfg = optimizer_config(name, out.path(), method);
            let (half, _) = train(&cfg, first_on_gpu, Some(2));
            assert_eq!(half.steps.len(), 2);
            check_losses(&half, &cpu, 0);
            let cfg = TrainConfig {
                resume: true,
                ..cfg
            };
            let (rest, ckpt) = train(&cfg, !first_on_gpu, None);
            assert_eq!(rest.steps.len(), 2);
            check_losses(&rest, &cpu, 2);
            check_checkpoint(&ckpt, &cpu_ckpt);
        }
    }
}

/// A run on the device generates its checkpoint samples there (`TrainDevice::decoder`), with the
/// weights as trained there: after optimizer steps the host has not seen, the device's greedy
/// answer and logits are the CPU engine's over the weights downloaded from it, and not those of
/// the weights before training.
#[test]
fn the_device_samples_with_the_weights_it_trained() {
    use tuna_engine::ops::adamw::AdamWConfig;
    use tuna_model::generate::{CpuDecoder, Decoder, generate_on};
    use tuna_model::params::trainable_parameters_mut;

    for (name, lora) in [("tiny-qwen2", true), ("tiny-qwen3-untied", false)] {
        println!("== {name} {}", if lora { "LoRA" } else { "full" });
        let mut model = QwenModel::load(&tiny_model(name)).unwrap();
        let mut adapter = lora.then(|| random_adapter(&model, 0.0));
        let layout = match &adapter {
            Some(a) => a.layout(),
            None => {
                let _ = model.full_parameters_mut();
                model.full_layout()
            }
        };
        let mut dev = upload(&model, adapter.as_ref());
        let zeros = layout.zero_gradients().tensors;
        dev.keep_optimizer(&layout, &zeros, &zeros).unwrap();
        let packed = fixture_batch();
        let opts = TrainOptions {
            recompute_activations: false,
            dropout_seed: 0,
        };
        let adamw = vec![
            AdamWConfig {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            };
            zeros.len()
        ];
        for step in 1..=3 {
            let mut unused = layout.zero_gradients();
            dev.forward_backward(&packed.batch(), &layout, &mut unused, 1.0, &opts)
                .unwrap();
            dev.optimizer_step(&adamw, step, None).unwrap();
        }

        let prompt = &packed.ids[..packed.lens[0].min(12)];
        let greedy = SamplingParams {
            greedy: true,
            max_new_tokens: 10,
            ..SamplingParams::default()
        };
        let answer = |decoder: &mut dyn Decoder| {
            let logits = {
                decoder.start(prompt.len()).unwrap();
                decoder.step(prompt).unwrap()
            };
            let tokens = generate_on(decoder, prompt, &greedy, &[], |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap()
            .tokens;
            (logits, tokens)
        };
        let (untrained_logits, _) = answer(&mut CpuDecoder::new(&model, adapter.as_ref()));
        let (m, v) = (&mut zeros.clone(), &mut zeros.clone());
        dev.download_state(trainable_parameters_mut(&mut model, adapter.as_mut()), m, v)
            .unwrap();
        let (want_logits, want_tokens) = answer(&mut CpuDecoder::new(&model, adapter.as_ref()));
        let (got_logits, got_tokens) = answer(&mut *dev.decoder());
        check_tensor("prompt logits", &got_logits, &want_logits, F32_REL_TOL);
        assert_eq!(got_tokens, want_tokens, "greedy answer");
        assert_eq!(got_tokens.len(), 10);
        let moved = check_tensor(
            "logits before training (must differ)",
            &untrained_logits,
            &want_logits,
            f64::INFINITY,
        );
        assert!(
            moved > 1e-3,
            "training moved the logits by {moved:.2e} only: the check is vacuous"
        );
    }
}
