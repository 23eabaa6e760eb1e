//! `tuna serve`: the HTTP API, the web console and the job queue over one data directory.
//!
//! SIGINT (Ctrl-C) and SIGTERM stop it gracefully: no new work is accepted, every running job's
//! worker saves a checkpoint at its current step and exits (bounded by `--worker-stop-seconds`), and
//! the next start resumes those jobs from there, without using a retry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub state: super::SharedStateArgs,
    /// Address to listen on
    #[arg(long, env = "TUNA_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Training jobs this node runs at once on its CPU (0: an API-only node; `tuna worker`
    /// nodes run the jobs)
    #[arg(
        long,
        visible_alias = "local-workers",
        env = "TUNA_CPU_SLOTS",
        default_value_t = 1
    )]
    pub cpu_slots: usize,
    /// This node's slots, one job each (`cpu:0,cpu:1,gpu:0`); default: --cpu-slots CPU slots
    /// and, unless that is 0, every GPU `tuna devices` lists (software ones with --software-gpus)
    #[arg(long, env = "TUNA_DEVICES", value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// Also offer software Vulkan devices (Mesa's lavapipe; they run on the CPU, far slower
    /// than a CPU slot: for tests) when finding GPUs
    #[arg(long, env = "TUNA_SOFTWARE_GPUS")]
    pub software_gpus: bool,
    /// This node's name in `tuna workers list` and in job events (default: the host name)
    #[arg(long, env = "TUNA_WORKER_NAME")]
    pub worker_name: Option<String>,
    #[command(flatten)]
    pub timing: super::QueueTimingArgs,
    /// Largest accepted upload, in MiB
    #[arg(long, env = "TUNA_MAX_UPLOAD_MIB", default_value_t = 512)]
    pub max_upload_mib: u64,
    /// Restarts of a job whose worker died before the job fails
    #[arg(long, env = "TUNA_MAX_RETRIES", default_value_t = 2)]
    pub max_retries: i64,
    /// Price per million trained tokens, for cost estimates
    #[arg(long, env = "TUNA_PRICE_PER_MILLION_TOKENS", default_value_t = 0.0)]
    pub price_per_million_tokens: f64,
    /// Currency of the price
    #[arg(long, env = "TUNA_CURRENCY", default_value = "USD")]
    pub currency: String,
    /// Chat completions generating at once (more wait their turn, then get HTTP 429)
    #[arg(long, env = "TUNA_MAX_CONCURRENT_GENERATIONS", default_value_t = 2)]
    pub max_concurrent_generations: usize,
    /// Generation slots one user may hold at once (default: one less than all, at least 1)
    #[arg(long, env = "TUNA_MAX_GENERATIONS_PER_USER")]
    pub max_generations_per_user: Option<usize>,
    /// Seconds a chat request waits for a generation slot before HTTP 429
    #[arg(long, env = "TUNA_GENERATION_QUEUE_SECONDS", default_value_t = 30)]
    pub generation_queue_seconds: u64,
    /// Longest generation in seconds; then the answer ends with `finish_reason: "length"`
    #[arg(long, env = "TUNA_MAX_GENERATION_SECONDS", default_value_t = 300)]
    pub max_generation_seconds: u64,
    /// Open event streams per user (more get HTTP 429)
    #[arg(long, env = "TUNA_MAX_EVENT_STREAMS_PER_USER", default_value_t = 8)]
    pub max_event_streams_per_user: usize,
    /// Open HTTP connections (kept below the open-file limit)
    #[arg(long, env = "TUNA_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers, or stay idle between requests
    #[arg(long, env = "TUNA_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 15)]
    pub header_read_timeout_seconds: u64,
    /// Seconds a request body may pause before HTTP 408
    #[arg(long, env = "TUNA_BODY_READ_TIMEOUT_SECONDS", default_value_t = 30)]
    pub body_read_timeout_seconds: u64,
    /// On SIGINT/SIGTERM, seconds in-flight requests may still take before they are ended
    #[arg(long, env = "TUNA_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// JSON list of more base models, `[{"name": "...", "path": "/hf/dir"}]` (default: DATA_DIR/models.json)
    #[arg(long, env = "TUNA_MODELS_FILE")]
    pub models_file: Option<PathBuf>,
    /// Effective CPU speed in GFLOP/s, to estimate training time before a model shape was measured
    #[arg(long, env = "TUNA_CPU_GFLOPS", default_value_t = 100.0)]
    pub cpu_gflops: f64,
    /// Jobs allowed to wait in the queue (more get HTTP 429)
    #[arg(long, env = "TUNA_MAX_QUEUED_JOBS", default_value_t = 1000)]
    pub max_queued_jobs: usize,
    /// Per-user quota: MiB of uploaded files and checkpoints (default: unlimited)
    #[arg(long, env = "TUNA_QUOTA_STORED_MIB")]
    pub quota_stored_mib: Option<u64>,
    /// Per-user quota: uploaded files (default: unlimited)
    #[arg(long, env = "TUNA_QUOTA_FILES")]
    pub quota_files: Option<i64>,
    /// Per-user quota: jobs waiting in the queue (default: unlimited)
    #[arg(long, env = "TUNA_QUOTA_QUEUED_JOBS")]
    pub quota_queued_jobs: Option<i64>,
    /// Per-user quota: jobs training at once (default: unlimited)
    #[arg(long, env = "TUNA_QUOTA_RUNNING_JOBS")]
    pub quota_running_jobs: Option<i64>,
    /// Memory a job may plan to use, in MiB; larger jobs are refused at creation (default: the machine's)
    #[arg(long, env = "TUNA_MEMORY_LIMIT_MIB")]
    pub memory_limit_mib: Option<u64>,
    /// Free disk of the data directory (MiB) that jobs may not plan to use
    #[arg(long, env = "TUNA_DISK_RESERVE_MIB", default_value_t = 100)]
    pub disk_reserve_mib: u64,
    /// Seconds a stop waits for workers to checkpoint and exit
    #[arg(long, env = "TUNA_WORKER_STOP_SECONDS", default_value_t = 60)]
    pub worker_stop_seconds: u64,
    /// Executable that runs workers (default: this server's own, even if its file was replaced)
    #[arg(long, env = "TUNA_WORKER_EXE")]
    pub worker_exe: Option<PathBuf>,
    /// Where the demo model is written (default: DATA_DIR/models)
    #[arg(long, env = "TUNA_DEMO_MODEL_ROOT")]
    pub demo_model_root: Option<PathBuf>,
    /// Prompt (prefill) products of chat completions: bf16 where the CPU has bf16 units (auto),
    /// f32, or bf16; decoding reads the weights as stored, in f32, either way
    #[arg(long, env = "TUNA_CHAT_PRECISION", value_enum, default_value = "auto")]
    pub chat_precision: super::train::PrecisionArg,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // First: the data directory (created next) and every file below it are private.
    tuna_server::prepare_server_process();
    let mut settings = args.state.node_settings()?;
    args.timing.apply(&mut settings);
    settings.cpu_slots = args.cpu_slots;
    let slots =
        crate::node_slots::node_slots(args.devices.as_deref(), args.cpu_slots, args.software_gpus)?;
    settings.devices = Some(slots.devices);
    settings.gpus = slots.gpus;
    if let Some(name) = args.worker_name {
        settings.worker_name = name;
    }
    settings.max_upload_bytes = args.max_upload_mib.saturating_mul(1 << 20);
    settings.max_retries = args.max_retries.max(0);
    settings.price_per_million_tokens = args.price_per_million_tokens;
    settings.currency = args.currency;
    settings.max_concurrent_generations = args.max_concurrent_generations.max(1);
    settings.max_generations_per_user = args.max_generations_per_user;
    settings.generation_queue_timeout = Duration::from_secs(args.generation_queue_seconds);
    settings.max_generation_time = Duration::from_secs(args.max_generation_seconds.max(1));
    settings.max_event_streams_per_user = args.max_event_streams_per_user.max(1);
    settings.max_connections = args.max_connections;
    settings.header_read_timeout = Duration::from_secs(args.header_read_timeout_seconds.max(1));
    settings.body_read_timeout = Duration::from_secs(args.body_read_timeout_seconds.max(1));
    settings.shutdown_grace = Duration::from_secs(args.shutdown_grace_seconds);
    settings.cpu_gflops = args.cpu_gflops;
    settings.max_queued_jobs = args.max_queued_jobs;
    settings.chat_precision = args.chat_precision.into();
    if let Some(f) = args.models_file {
        settings.models_file = f;
    }
    settings.quotas = tuna_server::quota::Quotas {
        stored_bytes: args.quota_stored_mib.map(|m| m.saturating_mul(1 << 20)),
        files: args.quota_files,
        queued_jobs: args.quota_queued_jobs,
        running_jobs: args.quota_running_jobs,
    };
    settings.memory_limit_bytes = args.memory_limit_mib.map(|m| m.saturating_mul(1 << 20));
    settings.disk_reserve_bytes = args.disk_reserve_mib.saturating_mul(1 << 20);
    settings.worker_stop_timeout = Duration::from_secs(args.worker_stop_seconds);
    if let Some(exe) = args.worker_exe {
        settings.worker_launcher = tuna_server::state::worker_launcher(exe);
    }
    if let Some(root) = args.demo_model_root {
        settings.demo_model_root = root;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let state = tuna_server::build_state(settings)
            .await
            .with_context(|| format!("opening the data directory {}", args.state.data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
            format!("listening on {}\n---> HINT: another program uses the port; pass `--listen 127.0.0.1:8001`", args.listen)
        })?;
        let addr = listener.local_addr()?;
        eprintln!("Tuna is serving http://{addr}/ (data directory {})", args.state.data_dir.display());
        eprintln!("Create an API key with `tuna users create NAME --data-dir {}`", args.state.data_dir.display());
        tuna_server::serve(listener, state, async {
            let signal = tuna_server::shutdown_signal().await;
            eprintln!(
                "{signal}: stopping. Running jobs save a checkpoint at their current step and resume from it at the next start (signal again to exit now)."
            );
            // A second signal ends the process at once: the workers, seeing their server gone,
            // still stop at their next step with a checkpoint.
            tokio::spawn(async {
                tuna_server::shutdown_signal().await;
                eprintln!("Exiting now; running jobs resume from their last checkpoint at the next start.");
                std::process::exit(130);
            });
        })
        .await
        .context("serving")?;
        eprintln!("Stopped.");
        Ok(())
    })
}
