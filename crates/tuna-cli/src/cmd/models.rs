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
    /// Only record the directory's path instead of storing the model in the blob store (every
    /// machine must then have the model at that path, e.g. on a shared read-only mount)
    #[arg(long)]
    pub keep_in_place: bool,
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
                // On one machine with the default folder store, the files are hard-linked
                // into it where the file system allows: no second copy.
                let blobs = match args.keep_in_place {
                    true => None,
                    false => Some(
                        state
                            .node_settings()?
                            .open_blob_store()
                            .context("opening the blob store")?,
                    ),
                };
                eprintln!("Checking and storing {} …", args.dir.display());
                let row = tuna_server::models::add_model(
                    store,
                    blobs.as_deref(),
                    &name,
                    &args.dir,
                    "cli",
                )
                .await
                .with_context(|| format!("adding {}", args.dir.display()))?;
                println!("{}\t{}", row.name, stored_at(&row));
            }
            ModelsCommand::List(_) => {
                let rows = store.list_models().await?;
                if rows.is_empty() {
                    eprintln!("No models yet: `tuna serve` registers `demo` on its first start.");
                }
                for m in rows {
                    println!("{}\t{}\t{}", m.name, m.source, stored_at(&m));
                }
            }
        }
        Ok(())
    })
}

/// Where every machine reads the model from: its blob-store prefix, else its path.
fn stored_at(row: &tuna_server::store::ModelRow) -> String {
    row.blob_files
        .as_deref()
        .and_then(|json| tuna_server::blob::manifest::Manifest::parse(json, &row.name).ok())
        .map(|m| format!("blob-store:{}", m.prefix))
        .unwrap_or_else(|| row.path.clone())
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
