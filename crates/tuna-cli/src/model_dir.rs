//! Resolving a `--model` argument: a Hugging Face directory, or `demo` for the built-in model.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tuna_model::demo::{DEMO_MODEL_NAME, ensure_demo_model};

/// Where Tuna keeps generated files such as the demo model: `$TUNA_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/tuna`, else `~/.cache/tuna`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TUNA_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("tuna");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("tuna"),
        None => std::env::temp_dir().join("tuna-cache"),
    }
}

/// Maps `demo` to the built-in demo model (written on first use) and checks that a directory exists.
pub fn resolve(name_or_dir: &str) -> anyhow::Result<PathBuf> {
    if name_or_dir == DEMO_MODEL_NAME {
        let root = cache_dir();
        return ensure_demo_model(&root)
            .with_context(|| format!("creating the demo model under {}", root.display()));
    }
    let dir = PathBuf::from(name_or_dir);
    if !dir.is_dir() {
        bail!(
            "model `{name_or_dir}` is neither `demo` nor a directory\n---> HINT: pass a Hugging Face model directory (config.json, model.safetensors, tokenizer.json) or `--model demo`"
        );
    }
    Ok(dir)
}
