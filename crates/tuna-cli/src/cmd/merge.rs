//! `tuna merge`: fold a LoRA adapter (a PEFT directory, e.g. a training checkpoint) into its base
//! model and write a standalone Hugging Face model directory in the base model's dtype.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: a Hugging Face directory, or `demo`
    #[arg(long, env = "TUNA_MODEL")]
    pub model: String,
    /// Adapter directory (adapter_config.json + adapter_model.safetensors)
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged model (must not exist or be empty)
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let base = crate::model_dir::resolve(&args.model)?;
    let summary = tuna_train::merge::merge_adapter(&base, &args.adapter, &args.out)
        .with_context(|| format!("merging {} into {}", args.adapter.display(), base.display()))?;
    println!(
        "merged {} LoRA layers into {} ({} weights): {}",
        summary.merged_layers,
        base.display(),
        summary.dtype,
        summary.out_dir.display()
    );
    println!("try it: tuna chat --model {}", summary.out_dir.display());
    Ok(())
}
