//! `tuna models add DIR` / `tuna models list`: the base models a server offers (besides `demo`,
//! which `tuna serve` registers on first start).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Register a Hugging Face model directory (Qwen2.5 / Qwen3) as a base model
    Add(AddArgs),
    /// List the registered base models
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer files)
    pub dir: PathBuf,
    /// Name to use in the API (default: the directory's name, lowercased)
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub state: super::SharedStateArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub state: super::SharedStateArgs,
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    let state = match &cmd {
        ModelsCommand::Add(a) => a.state.clone(),
        ModelsCommand::List(a) => a.state.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = state.open_store().await?;
        let store = &*store;
        match cmd {
            ModelsCommand::Add(args) => {
                let name = match args.name {
                    Some(n) => n,
                    None => default_name(&args.dir),
                };
                let row = tuna_server::models::add_model(store, &name, &args.dir, "cli")
                    .await
                    .with_context(|| format!("adding {}", args.dir.display()))?;
                println!("{}\t{}", row.name, row.path);
            }
            ModelsCommand::List(_) => {
                let rows = store.list_models().await?;
                if rows.is_empty() {
                    eprintln!("No models yet: `tuna serve` registers `demo` on its first start.");
                }
                for m in rows {
                    println!("{}\t{}\t{}", m.name, m.source, m.path);
                }
            }
        }
        Ok(())
    })
}

/// The directory's last component, lowercased, other characters replaced by `-`.
fn default_name(dir: &std::path::Path) -> String {
    let base = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    base.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}
