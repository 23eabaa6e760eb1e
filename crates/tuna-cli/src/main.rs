//! `tuna`: check datasets, fine-tune Qwen2.5 / Qwen3 models, chat with them, serve the platform.

mod cmd;
mod device_arg;
mod model_dir;
mod node_slots;
mod shapes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tuna",
    version,
    about = "Fine-tune Qwen2.5 / Qwen3 chat models on your own machine"
)]
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
    /// Fine-tune a model (LoRA or full) on a chat JSONL file
    Train(Box<cmd::train::TrainArgs>),
    /// Merge a LoRA adapter into its base model
    Merge(cmd::merge::MergeArgs),
    /// Benchmarks on random-weight models of real shapes
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Serve the API, the web console and the job queue
    Serve(Box<cmd::serve::ServeArgs>),
    /// Join a shared database as a worker node (or, with --job, train one claimed job)
    Worker(cmd::worker::WorkerArgs),
    /// The worker nodes of the shared database
    #[command(subcommand)]
    Workers(cmd::workers::WorkersCommand),
    /// Manage users and API keys
    #[command(subcommand)]
    Users(cmd::users::UsersCommand),
    /// Manage the base models a server offers
    #[command(subcommand)]
    Models(cmd::models::ModelsCommand),
    /// List the CPU and the GPUs Tuna can use (`gpu:N`)
    Devices(cmd::devices::DevicesArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TUNA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (a job's worker.log on a full disk) is dropped: by
        // default the subscriber reports that with `eprintln!`, which panics on the same disk.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    // Workers of this binary (a node's job processes, `tuna worker --job`) train on their slot's
    // device, GPUs included.
    tuna_server::worker::set_device_opener(node_slots::open_slot);
    let result = match cli.command {
        Command::Chat(args) => cmd::chat::run(args).map(|()| ExitCode::SUCCESS),
        Command::Generate(args) => cmd::generate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Data(args) => cmd::data::run(args),
        Command::Train(args) => cmd::train::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Merge(args) => cmd::merge::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => cmd::bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => cmd::serve::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Worker(args) => cmd::worker::run(args),
        Command::Workers(args) => cmd::workers::run(args).map(|()| ExitCode::SUCCESS),
        Command::Users(args) => cmd::users::run(args).map(|()| ExitCode::SUCCESS),
        Command::Models(args) => cmd::models::run(args).map(|()| ExitCode::SUCCESS),
        Command::Devices(args) => cmd::devices::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, skipping a cause whose text the message before it already quotes
/// (library errors often embed their source in their own message).
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
