//! Loading Hugging Face model directories: every way a directory can be wrong gets an error that
//! names the file or tensor.

use std::path::{Path, PathBuf};

use tuna_model::{QwenModel, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    QwenModel::load(dir)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "loaded".into())
}

#[test]
fn loads_sharded_bf16_and_tied_or_untied_checkpoints() {
    let untied = QwenModel::load(&fixture("tiny-qwen3-untied")).unwrap();
    assert!(untied.lm_head.is_some());
    assert_eq!(untied.embed_tokens.dtype(), tuna_engine::DType::BF16);
    assert_eq!(untied.config.head_dim, 32);
    let tied = QwenModel::load(&fixture("tiny-qwen2")).unwrap();
    assert!(tied.lm_head.is_none());
    assert!(tied.layers[0].q_proj.bias.is_some());
}

#[test]
fn missing_config_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-qwen2"), tmp.path());
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn missing_weights_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-qwen2"), tmp.path());
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unsupported_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-qwen2"), tmp.path());
    let path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["model_type"] = "mistral".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = load_err(tmp.path());
    assert!(
        err.contains("mistral") && err.contains("unsupported"),
        "{err}"
    );
}

/// Rewrites `model.safetensors` with `edit` applied to its tensor list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let model = QwenModel::load(dir).unwrap();
    let mut tensors = model.named_tensors();
    drop(model);
    edit(&mut tensors);
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let path = dir.join("model.safetensors");
    let tmp = dir.join("model.tmp");
    tuna_model::safetensors::save_tensors(&tmp, &refs, None).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-qwen2"), tmp.path());
    rewrite_weights(tmp.path(), |t| {
        t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
    });
    let err = load_err(tmp.path());
    assert!(
        err.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-qwen2"), tmp.path());
    rewrite_weights(tmp.path(), |t| {
        for (n, tensor) in t.iter_mut() {
            if n == "model.layers.0.self_attn.k_proj.weight" {
                *tensor = Tensor::from_f32(vec![16, 64], vec![0.0; 16 * 64]);
            }
        }
    });
    let err = load_err(tmp.path());
    assert!(
        err.contains("model.layers.0.self_attn.k_proj.weight")
            && err.contains("[16, 64]")
            && err.contains("[32, 64]"),
        "{err}"
    );
}

#[test]
fn token_ids_beyond_the_vocabulary_are_rejected() {
    let model = QwenModel::load(&fixture("tiny-qwen2")).unwrap();
    let err = model
        .forward_all_logits(&[1, 2, 100_000], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("100000"), "{err}");
}
