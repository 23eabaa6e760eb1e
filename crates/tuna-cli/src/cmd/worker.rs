//! `tuna worker`: with `--job`, trains one claimed job (how `tuna serve` and worker nodes start
//! each job's process); without it, a worker node that joins a shared database from any machine,
//! claims jobs that fit its devices and memory under leases, and runs each in its own process.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub state: super::SharedStateArgs,
    /// The job to train (`ftjob-…`); without it, run as a worker node
    #[arg(long)]
    pub job: Option<String>,
    /// The claim this worker was started for (set by the server); a worker whose job was
    /// claimed again since does nothing
    #[arg(long, env = tuna_server::queue::ATTEMPT_ENV)]
    pub attempt: Option<i64>,
    /// Worker node: its slots, one job each (`cpu:0,cpu:1,gpu:0`; default: `cpu:0` and every
    /// GPU `tuna devices` lists, software Vulkan devices only with --software-gpus)
    #[arg(long, env = "TUNA_DEVICES", value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// Worker node: also offer software Vulkan devices (Mesa's lavapipe; they run on the CPU,
    /// far slower than a CPU slot: for tests) when finding GPUs
    #[arg(long, env = "TUNA_SOFTWARE_GPUS")]
    pub software_gpus: bool,
    /// Worker node: its name in `tuna workers list` and in job events (default: the host name)
    #[arg(long, env = "TUNA_WORKER_NAME")]
    pub name: Option<String>,
    /// Worker node: memory its jobs may plan to use together, in MiB (default: the machine's)
    #[arg(long, env = "TUNA_MEMORY_LIMIT_MIB")]
    pub memory_limit_mib: Option<u64>,
    /// Worker node: restarts of a job whose worker died before the job fails
    #[arg(long, env = "TUNA_MAX_RETRIES", default_value_t = 2)]
    pub max_retries: i64,
    #[command(flatten)]
    pub timing: super::QueueTimingArgs,
    /// Worker node: seconds a stop waits for workers to checkpoint and exit
    #[arg(long, env = "TUNA_WORKER_STOP_SECONDS", default_value_t = 60)]
    pub worker_stop_seconds: u64,
}

/// One job: the exit code tells the server what happened (0 done, 10 paused, 11 orphaned,
/// 12 stopped, 13 disk full, 14 fenced, else a crash). A node: runs until SIGINT or SIGTERM.
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let Some(job) = &args.job else {
        return run_node(args).map(|()| ExitCode::SUCCESS);
    };
    let code = tuna_server::worker::run_with_database(
        &args.state.data_dir,
        args.state.database_url()?,
        args.state.blob_store_url()?,
        job,
        args.attempt,
    )?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn run_node(args: WorkerArgs) -> anyhow::Result<()> {
    tuna_server::prepare_server_process();
    let slots = crate::node_slots::node_slots(args.devices.as_deref(), 1, args.software_gpus)?;
    let mut settings = args.state.node_settings()?;
    args.timing.apply(&mut settings);
    settings.cpu_slots = slots.devices.len();
    settings.devices = Some(slots.devices);
    settings.gpus = slots.gpus;
    if let Some(name) = args.name {
        settings.worker_name = name;
    }
    settings.memory_limit_bytes = args.memory_limit_mib.map(|m| m.saturating_mul(1 << 20));
    settings.max_retries = args.max_retries.max(0);
    settings.worker_stop_timeout = std::time::Duration::from_secs(args.worker_stop_seconds);
    let name = settings.worker_name.clone();
    let devices = settings.devices().join(", ");
    let database = settings.database_url().display();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        eprintln!("Worker {name} joined {database} with slots {devices}");
        tuna_server::run_worker_node(settings, async {
            let signal = tuna_server::shutdown_signal().await;
            eprintln!(
                "{signal}: stopping. Running jobs save a checkpoint and go back to the queue."
            );
        })
        .await
        .context("running the worker node")?;
        eprintln!("Stopped.");
        Ok(())
    })
}
