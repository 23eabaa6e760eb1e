//! `tuna generate`: token ids in, token ids out — for models without a tokenizer.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use tuna_model::{GenerationConfig, LoraAdapter, QwenModel};

use super::sampling::SamplingArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model directory, or `demo`
    #[arg(long, env = "TUNA_MODEL")]
    pub model: String,
    /// LoRA adapter directory (PEFT layout) applied on top of the model
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// Prompt token ids, comma-separated (e.g. 1,2,3)
    #[arg(long, value_delimiter = ',', required = true)]
    pub prompt_ids: Vec<u32>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print `{"ids": [...]}` (the generated ids only)
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let dir = crate::model_dir::resolve(&args.model)?;
    let model =
        QwenModel::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let adapter = match &args.adapter {
        Some(a) => Some(
            LoraAdapter::load(a, &model.config)
                .with_context(|| format!("loading adapter {}", a.display()))?,
        ),
        None => None,
    };
    let gen_cfg = GenerationConfig::from_model_dir(&dir)?;
    let params = args.sampling.params(&gen_cfg);
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let generation = tuna_model::generate(
        &model,
        adapter.as_ref(),
        &args.prompt_ids,
        &params,
        &gen_cfg.eos_token_id,
        |id| {
            if !json {
                let _ = write!(stdout, "{id} ");
                let _ = stdout.flush();
            }
            std::ops::ControlFlow::Continue(())
        },
    )?;
    if json {
        println!("{}", serde_json::json!({ "ids": generation.tokens }));
    } else {
        println!();
        eprintln!("finish_reason: {:?}", generation.finish_reason);
    }
    Ok(())
}
