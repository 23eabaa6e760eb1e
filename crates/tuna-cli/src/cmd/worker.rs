//! `tuna worker`: trains one queued job; started by `tuna serve`, one process per running job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The server's data directory
    #[arg(long, env = "TUNA_DATA_DIR", default_value = "./tuna-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub database: super::DatabaseArg,
    /// The job to train (`ftjob-…`)
    #[arg(long)]
    pub job: String,
    /// The claim this worker was started for (set by the server); a worker whose job was
    /// claimed again since does nothing
    #[arg(long, env = tuna_server::queue::ATTEMPT_ENV)]
    pub attempt: Option<i64>,
}

/// The exit code tells the server what happened (0 done, 10 paused, 11 orphaned, 12 stopped,
/// 13 disk full, else a crash).
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let code = tuna_server::worker::run_with_database(
        &args.data_dir,
        args.database.url()?,
        args.database.blob_store()?,
        &args.job,
        args.attempt,
    )?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
