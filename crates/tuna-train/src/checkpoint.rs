//! Checkpoint files: `out_dir/checkpoint-<step>/` holds the trained weights in the format other
//! tools read, plus what resuming needs.
//!
//! ```text
//! checkpoint-<step>/
//!   adapter_config.json, adapter_model.safetensors    LoRA: PEFT's layout (LoraAdapter::save)
//!   config.json, generation_config.json,              full: a Hugging Face model directory
//!   model.safetensors, tokenizer files
//!   trainer_state.json                                step, epoch, data fingerprint, config
//!   optimizer.safetensors                             AdamW moments (exp_avg.<param>, exp_avg_sq.<param>), step
//!   sample.json                                       held-out prompts answered with these weights
//! ```
//!
//! A checkpoint is written to `checkpoint-<step>.tmp` and renamed when complete, so a crash while
//! saving never leaves a half-written checkpoint for `resume` to pick.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tuna_model::QwenModel;

use crate::config::{Method, TrainConfig};
use crate::error::{Error, Result};
use crate::optim::AdamW;

/// Bumped when the resume files change incompatibly.
pub const STATE_VERSION: u32 = 1;
pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER_STATE: &str = "optimizer.safetensors";
pub const SAMPLE_FILE: &str = "sample.json";

/// Files a tokenizer (and chat) needs, copied into full checkpoints and merged models when present.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
    "LICENSE",
];

/// `trainer_state.json`: where the run stands, and what it must find unchanged on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub version: u32,
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f32,
    pub method: Method,
    pub seed: u64,
    pub train_examples: usize,
    /// [`crate::data::Plan::fingerprint`] of the steps done.
    pub data_fingerprint: String,
    /// `base_model_name_or_path` of the adapter.
    pub base_model: String,
    pub train_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// Schedule position: the learning rate of the last step done.
    pub last_lr: f32,
    pub config: TrainConfig,
}

pub fn checkpoint_dir(out_dir: &Path, step: usize) -> PathBuf {
    out_dir.join(format!("checkpoint-{step}"))
}

/// Complete checkpoints in `out_dir` (those with a `trainer_state.json`), oldest first.
pub fn list_checkpoints(out_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(out_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(out_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(out_dir, e))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        if entry.path().join(TRAINER_STATE).is_file() {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint in `out_dir`.
pub fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(out_dir)?.pop().map(|(_, p)| p))
}

/// Deletes the oldest checkpoints so that at most `keep` remain.
pub fn prune_checkpoints(out_dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(out_dir)?;
    for (_, path) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the AdamW moments under the parameters' names and the step count as an i64 tensor
/// `step` (as PyTorch keeps it). Only one metadata key, so the file's bytes are reproducible
/// (safetensors writes its metadata map in hash order).
pub fn save_optimizer(path: &Path, names: &[String], opt: &AdamW) -> Result<()> {
    let err = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let step = (opt.step as i64).to_le_bytes();
    let mut views = Vec::with_capacity(2 * names.len() + 1);
    views.push((
        "step".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1], &step)
            .map_err(|e| err(e.to_string()))?,
    ));
    for (i, name) in names.iter().enumerate() {
        for (prefix, t) in [("exp_avg", &opt.m[i]), ("exp_avg_sq", &opt.v[i])] {
            let bytes: &[u8] = bytemuck::cast_slice(t.as_slice());
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![t.len()], bytes)
                    .map_err(|e| err(e.to_string()))?;
            views.push((format!("{prefix}.{name}"), view));
        }
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| err(e.to_string()))
}

/// Reads moments written by [`save_optimizer`] into `opt` (whose tensors give the expected sizes).
pub fn load_optimizer(path: &Path, names: &[String], opt: &mut AdamW) -> Result<()> {
    let err = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let step = st
        .tensor("step")
        .ok()
        .filter(|v| v.dtype() == safetensors::Dtype::I64 && v.data().len() == 8)
        .and_then(|v| v.data().try_into().ok().map(i64::from_le_bytes))
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| err("no i64 tensor `step`".into()))?;
    for (i, name) in names.iter().enumerate() {
        for (prefix, dst) in [("exp_avg", &mut opt.m[i]), ("exp_avg_sq", &mut opt.v[i])] {
            let key = format!("{prefix}.{name}");
            let view = st
                .tensor(&key)
                .map_err(|_| err(format!("missing tensor `{key}`")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != [dst.len()] {
                return Err(err(format!(
                    "tensor `{key}` is {:?} {:?}, expected F32 [{}]",
                    view.dtype(),
                    view.shape(),
                    dst.len()
                )));
            }
            for (d, c) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    opt.step = step;
    Ok(())
}

/// Copies whichever of [`TOKENIZER_FILES`] exist in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

/// `config.json` of `base_dir` with the dtype fields set to `dtype` ("float32", "bfloat16", ...).
pub fn write_model_config(base_dir: &Path, dir: &Path, dtype: &str) -> Result<()> {
    let mut config: serde_json::Value = read_json(&base_dir.join("config.json"))?;
    if let Some(obj) = config.as_object_mut() {
        // transformers 4 reads `torch_dtype`, 5 writes `dtype`; keep whichever the base uses.
        let mut set = false;
        for key in ["torch_dtype", "dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), dtype.into());
                set = true;
            }
        }
        if !set {
            obj.insert("torch_dtype".into(), dtype.into());
        }
    }
    write_json(&dir.join("config.json"), &config)
}

/// A full fine-tuning checkpoint: a Hugging Face model directory. Weights are written in f32 (the
/// dtype they are trained in), so resuming continues from exactly the same values.
pub fn save_full_model(model: &QwenModel, base_dir: &Path, dir: &Path) -> Result<()> {
    copy_tokenizer_files(base_dir, dir)?;
    write_model_config(base_dir, dir, "float32")?;
    tuna_model::demo::save_model_weights(model, &dir.join("model.safetensors"))?;
    Ok(())
}

/// The `.tmp` directory a checkpoint is assembled in; removed if left over from a crash.
pub fn fresh_tmp_dir(final_dir: &Path) -> Result<PathBuf> {
    let mut name = final_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = final_dir.with_file_name(name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Moves a completed `.tmp` directory into place (replacing an older checkpoint of the same step).
pub fn commit_dir(tmp: &Path, final_dir: &Path) -> Result<()> {
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir).map_err(|e| Error::io(final_dir, e))?;
    }
    std::fs::rename(tmp, final_dir).map_err(|e| Error::io(final_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamWSettings;

    #[test]
    fn optimizer_state_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let s = AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut a = AdamW::new(s, &[3, 2], vec![true, false]);
        a.m[0] = vec![1.0, -2.5, f32::MIN_POSITIVE];
        a.v[1] = vec![3.25, 1e-30];
        a.step = 7;
        let names = vec!["x.weight".to_string(), "y.bias".to_string()];
        let path = dir.path().join(OPTIMIZER_STATE);
        save_optimizer(&path, &names, &a).unwrap();
        let mut b = AdamW::new(s, &[3, 2], vec![true, false]);
        load_optimizer(&path, &names, &mut b).unwrap();
        assert_eq!(a, b);
        // A different parameter set is refused, naming the tensor.
        let mut c = AdamW::new(s, &[4, 2], vec![true, false]);
        let e = load_optimizer(&path, &names, &mut c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exp_avg.x.weight"), "{e}");
    }

    #[test]
    fn lists_prunes_and_ignores_incomplete_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        for step in [2, 10, 4] {
            let d = checkpoint_dir(dir.path(), step);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(TRAINER_STATE), "{}").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("checkpoint-12.tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("checkpoint-20")).unwrap(); // no trainer_state.json
        let steps: Vec<usize> = list_checkpoints(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, [2, 4, 10]);
        assert_eq!(
            latest_checkpoint(dir.path()).unwrap().unwrap(),
            checkpoint_dir(dir.path(), 10)
        );
        prune_checkpoints(dir.path(), 2).unwrap();
        let steps: Vec<usize> = list_checkpoints(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, [4, 10]);
    }
}
