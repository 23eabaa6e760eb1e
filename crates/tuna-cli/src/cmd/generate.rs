//! `tuna generate`: token ids in, token ids out — for models without a tokenizer.

use std::io::Write;

use clap::Args;
use tuna_model::GenerationConfig;

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
    let (dir, model, adapter) = super::sampling::load_model(
        &args.model,
        args.adapter.as_deref(),
        args.sampling.precision,
    )?;
    let gen_cfg = GenerationConfig::from_model_dir(&dir)?;
    let params = args.sampling.params(&gen_cfg);
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let mut decoder = args.sampling.device.decoder(&model, adapter.as_ref())?;
    let generation = tuna_model::generate_on(
        decoder.as_mut(),
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
