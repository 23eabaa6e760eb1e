//! The real model shapes benchmarks build random weights for (configs copied from the Qwen repos).

use anyhow::{Context, bail};
use tuna_model::QwenConfig;
use tuna_model::config::HfConfig;

const SHAPES: &[(&str, &str)] = &[
    (
        "qwen2.5-0.5b",
        include_str!("../../../assets/configs/qwen2.5-0.5b/config.json"),
    ),
    (
        "qwen2.5-1.5b",
        include_str!("../../../assets/configs/qwen2.5-1.5b/config.json"),
    ),
    (
        "qwen2.5-7b",
        include_str!("../../../assets/configs/qwen2.5-7b/config.json"),
    ),
    (
        "qwen3-0.6b",
        include_str!("../../../assets/configs/qwen3-0.6b/config.json"),
    ),
    (
        "qwen3-1.7b",
        include_str!("../../../assets/configs/qwen3-1.7b/config.json"),
    ),
    (
        "qwen3-4b",
        include_str!("../../../assets/configs/qwen3-4b/config.json"),
    ),
    (
        "qwen3-8b",
        include_str!("../../../assets/configs/qwen3-8b/config.json"),
    ),
];

pub fn names() -> Vec<&'static str> {
    SHAPES.iter().map(|(n, _)| *n).collect()
}

/// The config of a named shape (`qwen2.5-0.5b`, `qwen3-0.6b`, ...).
pub fn config(name: &str) -> anyhow::Result<QwenConfig> {
    let Some((_, json)) = SHAPES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        bail!(
            "unknown shape `{name}`; known shapes: {}",
            names().join(", ")
        );
    };
    let hf: HfConfig = serde_json::from_str(json).context("parsing a built-in config")?;
    Ok(QwenConfig::from_hf(&hf, std::path::Path::new(name))?)
}
