//! `tuna`: check datasets, fine-tune Qwen2.5 / Qwen3 models, chat with them, serve the platform.

mod cmd;
mod model_dir;
mod shapes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tuna", version, about = "Fine-tune Qwen2.5 / Qwen3 chat models on your own machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model (one-shot with --prompt, interactive otherwise)
    Chat(cmd::chat::ChatArgs),
    /// Generate token ids from token ids (models without a tokenizer)
    Generate(cmd::generate::GenerateArgs),
    /// Check datasets
    Data(cmd::data::DataArgs),
    /// Benchmarks on random-weight models of real shapes
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TUNA_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(args) => cmd::chat::run(args).map(|()| ExitCode::SUCCESS),
        Command::Generate(args) => cmd::generate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Data(args) => cmd::data::run(args),
        Command::Bench(args) => cmd::bench::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
