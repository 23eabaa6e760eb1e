//! Folding a LoRA adapter into its base model: `W ← W + scale · B·A` for every adapted linear
//! layer, written as a Hugging Face model directory in the base model's dtype (what vLLM, llama.cpp
//! converters and transformers load without PEFT).

use std::path::{Path, PathBuf};

use tuna_engine::ops::matmul::{Layout, sgemm};
use tuna_model::{LoraAdapter, LoraTarget, QwenModel, Tensor};

use crate::checkpoint;
use crate::error::{Error, Result};

/// What [`merge_adapter`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MergeSummary {
    pub out_dir: PathBuf,
    /// Linear layers changed.
    pub merged_layers: usize,
    /// Dtype of the written weights ("f32", "bf16", "f16").
    pub dtype: String,
}

/// Adds `scale · B·A` of every adapted layer of `adapter` to `model`'s weights, keeping each
/// weight's dtype (the sum is computed in f32 and rounded once). Returns the layers changed.
pub fn merge_into(model: &mut QwenModel, adapter: &LoraAdapter) -> usize {
    let mut merged = 0;
    for (l, layer) in model.layers.iter_mut().enumerate() {
        for target in LoraTarget::ALL {
            let Some(lora) = adapter.get(l, target) else {
                continue;
            };
            let lin = layer.linear_mut(target);
            let (o, i, r) = (lora.out_features, lora.in_features, lora.rank);
            let dtype = lin.weight.dtype();
            let mut w = lin.weight.to_f32_vec();
            let scaled_b: Vec<f32> = lora.b.iter().map(|x| x * lora.scale).collect();
            // w (o, i) += (scale·B) (o, r) · A (r, i)
            sgemm(
                &mut w,
                &scaled_b,
                Layout::Normal,
                &lora.a,
                Layout::Normal,
                o,
                r,
                i,
                true,
            );
            lin.weight = Tensor::from_f32(vec![o, i], w).to_dtype(dtype);
            merged += 1;
        }
    }
    merged
}

/// Loads `base_dir` and the PEFT adapter in `adapter_dir`, merges them and writes a complete
/// Hugging Face model directory to `out_dir` (config, generation config, tokenizer files,
/// `model.safetensors`).
pub fn merge_adapter(base_dir: &Path, adapter_dir: &Path, out_dir: &Path) -> Result<MergeSummary> {
    if out_dir.exists()
        && std::fs::read_dir(out_dir)
            .map_err(|e| Error::io(out_dir, e))?
            .next()
            .is_some()
    {
        return Err(Error::Config(format!(
            "output directory {} is not empty",
            out_dir.display()
        )));
    }
    let mut model = QwenModel::load(base_dir)?;
    let adapter = LoraAdapter::load(adapter_dir, &model.config)?;
    let dtype = model
        .layers
        .first()
        .map(|l| l.q_proj.weight.dtype())
        .unwrap_or(tuna_engine::DType::F32);
    let merged_layers = merge_into(&mut model, &adapter);
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    checkpoint::copy_tokenizer_files(base_dir, out_dir)?;
    // The base config.json unchanged: same architecture, same dtype.
    let config = base_dir.join("config.json");
    std::fs::copy(&config, out_dir.join("config.json")).map_err(|e| Error::io(&config, e))?;
    tuna_model::demo::save_model_weights(&model, &out_dir.join("model.safetensors"))?;
    Ok(MergeSummary {
        out_dir: out_dir.to_path_buf(),
        merged_layers,
        dtype: dtype.name().to_string(),
    })
}
