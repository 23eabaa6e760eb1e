//! Checkpoint files on the tiny fixture models: PEFT's exact adapter layout, a Hugging Face full
//! checkpoint that loads back, NaN handling, and merging an adapter into its base.

mod common;

use std::path::Path;

use common::*;
use tuna_model::{LoraAdapter, QwenModel};
use tuna_train::{BatchSize, Dataset, Error, Method, TrainConfig, Trainer};

fn tiny_config(model: &str, out: &Path, method: Method) -> TrainConfig {
    TrainConfig {
        model_dir: tiny_model(model),
        train_file: "batch.json".into(),
        out_dir: out.to_path_buf(),
        method,
        max_steps: Some(1),
        batch_size: BatchSize::Examples(2),
        gradient_accumulation_steps: 1,
        max_seq_len: 64,
        sample_prompts: 0,
        ..TrainConfig::default()
    }
}

fn tiny_data() -> Dataset {
    Dataset::from_examples(
        batch_examples(&fixtures().join("peft-tiny-qwen2")),
        Vec::new(),
        Vec::new(),
        Default::default(),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn lora_checkpoint_has_pefts_exact_layout() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config("tiny-qwen2", out.path(), Method::Lora);
    // The fixture adapter's hyper-parameters, so names and shapes must equal what PEFT wrote.
    cfg.lora.rank = 4;
    cfg.lora.alpha = 8.0;
    cfg.lora.dropout = 0.0;
    let model = QwenModel::load(&cfg.model_dir).unwrap();
    let summary = Trainer::from_parts(cfg.clone(), model, None, tiny_data())
        .unwrap()
        .run(&mut ())
        .unwrap();
    let ckpt = out.path().join("checkpoint-1");
    assert_eq!(summary.checkpoints.last().unwrap().path, ckpt);

    let peft = fixtures().join("peft-tiny-qwen2/initial");
    let ours = read_tensors(&ckpt.join("adapter_model.safetensors"));
    let theirs = read_tensors(&peft.join("adapter_model.safetensors"));
    let mut names: Vec<&String> = ours.keys().collect();
    let mut want: Vec<&String> = theirs.keys().collect();
    names.sort();
    want.sort();
    assert_eq!(names, want, "tensor names");
    for (name, (shape, _)) in &theirs {
        assert_eq!(&ours[name].0, shape, "{name}");
    }
    let bytes = std::fs::read(ckpt.join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");

    let ours = json(&ckpt.join("adapter_config.json"));
    let theirs = json(&peft.join("adapter_config.json"));
    for key in ["r", "lora_alpha", "lora_dropout"] {
        assert_eq!(
            ours[key].as_f64(),
            theirs[key].as_f64(),
            "adapter_config.json `{key}`"
        );
    }
    for key in [
        "target_modules",
        "peft_type",
        "task_type",
        "bias",
        "fan_in_fan_out",
        "use_rslora",
        "use_dora",
        "inference_mode",
        "modules_to_save",
        "layers_to_transform",
    ] {
        assert_eq!(ours[key], theirs[key], "adapter_config.json `{key}`");
    }
    assert_eq!(
        ours["base_model_name_or_path"],
        cfg.model_dir.display().to_string()
    );

    // The resume files sit beside the adapter.
    let state = json(&ckpt.join("trainer_state.json"));
    assert_eq!(
        (state["step"].as_u64(), state["method"].as_str()),
        (Some(1), Some("lora"))
    );
    let moments = read_tensors(&ckpt.join("optimizer.safetensors"));
    assert_eq!(moments.len(), 2 * theirs_len(&peft));
    assert!(
        moments
            .contains_key("exp_avg_sq.base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
    );

    // metrics.jsonl: one train line, then the checkpoint line.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "train");
    assert_eq!(lines[0]["trained_tokens"], 10);
    assert!(lines[0]["loss"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["type"], "checkpoint");
}

fn theirs_len(peft: &Path) -> usize {
    read_tensors(&peft.join("adapter_model.safetensors")).len()
}

#[test]
fn full_checkpoint_is_a_hugging_face_model_directory() {
    let out = tempfile::tempdir().unwrap();
    let cfg = tiny_config("tiny-qwen3", out.path(), Method::Full);
    let base = QwenModel::load(&cfg.model_dir).unwrap();
    let mut trainer = Trainer::from_parts(cfg.clone(), base.clone(), None, tiny_data()).unwrap();
    trainer.run(&mut ()).unwrap();
    let ckpt = out.path().join("checkpoint-1");
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "trainer_state.json",
        "optimizer.safetensors",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing");
    }
    // Same tensor names and shapes as the transformers-written base, in f32.
    let ours = read_tensors(&ckpt.join("model.safetensors"));
    let theirs = read_tensors(&cfg.model_dir.join("model.safetensors"));
    let mut a: Vec<_> = ours
        .iter()
        .map(|(n, (s, _))| (n.clone(), s.clone()))
        .collect();
    let mut b: Vec<_> = theirs
        .iter()
        .map(|(n, (s, _))| (n.clone(), s.clone()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(json(&ckpt.join("config.json"))["model_type"], "qwen3");
    // It loads back with the trained weights, which moved away from the base.
    let reloaded = QwenModel::load(&ckpt).unwrap();
    let w = reloaded.layers[0].q_proj.weight.to_f32_vec();
    let trained = trainer.model().layers[0].q_proj.weight.to_f32_vec();
    assert_eq!(w, trained);
    assert!(max_abs_diff(&w, &base.layers[0].q_proj.weight.to_f32_vec()) > 0.0);
}

#[test]
fn non_finite_loss_stops_before_anything_is_saved() {
    let out = tempfile::tempdir().unwrap();
    let cfg = tiny_config("tiny-qwen2", out.path(), Method::Lora);
    let mut model = QwenModel::load(&cfg.model_dir).unwrap();
    model.norm[0] = f32::NAN;
    let err = Trainer::from_parts(cfg, model, None, tiny_data())
        .unwrap()
        .run(&mut ())
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { step: 1, .. }), "{err}");
    assert!(err.to_string().contains("not finite"), "{err}");
    let entries: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries.iter().any(|e| e.starts_with("checkpoint")),
        "{entries:?}"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap(),
        ""
    );
}

#[test]
fn a_fresh_run_refuses_a_directory_with_checkpoints() {
    let out = tempfile::tempdir().unwrap();
    let cfg = tiny_config("tiny-qwen2", out.path(), Method::Lora);
    let model = QwenModel::load(&cfg.model_dir).unwrap();
    Trainer::from_parts(cfg.clone(), model.clone(), None, tiny_data())
        .unwrap()
        .run(&mut ())
        .unwrap();
    let err = Trainer::from_parts(cfg.clone(), model.clone(), None, tiny_data())
        .unwrap()
        .run(&mut ())
        .unwrap_err();
    assert!(err.to_string().contains("resume"), "{err}");
    // Resuming a finished run does nothing and succeeds.
    let resumed = TrainConfig {
        resume: true,
        ..cfg
    };
    let summary = Trainer::from_parts(resumed, model, None, tiny_data())
        .unwrap()
        .run(&mut ())
        .unwrap();
    assert_eq!((summary.steps, summary.checkpoints.len()), (1, 0));
}

#[test]
fn merged_model_equals_base_plus_adapter() {
    let base_dir = tiny_model("tiny-qwen2");
    let adapter_dir = fixtures().join("peft-tiny-qwen2/initial");
    let out = tempfile::tempdir().unwrap();
    let merged_dir = out.path().join("merged");
    let summary = tuna_train::merge::merge_adapter(&base_dir, &adapter_dir, &merged_dir).unwrap();
    assert_eq!(summary.merged_layers, 14);
    let base = QwenModel::load(&base_dir).unwrap();
    let adapter = LoraAdapter::load(&adapter_dir, &base.config).unwrap();
    let merged = QwenModel::load(&merged_dir).unwrap();
    let tokens = [3u32, 17, 250, 9, 77, 1, 400];
    let want = base.forward_all_logits(&tokens, Some(&adapter)).unwrap();
    let got = merged.forward_all_logits(&tokens, None).unwrap();
    let rel = rel_err("merged logits", &got, &want);
    assert!(
        rel < 1e-5,
        "merged logits differ from base + adapter: {rel:.3e}"
    );
    assert!(merged_dir.join("generation_config.json").is_file());
    // Refuses to overwrite.
    assert!(tuna_train::merge::merge_adapter(&base_dir, &adapter_dir, &merged_dir).is_err());
}
