//! Server settings and the state every handler shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tuna_train::PrecisionSetting;

use crate::blob::{BlobStore, BlobStoreUrl};
use crate::db::DatabaseUrl;
use crate::inference::{GenerationLimits, Inference};
use crate::queue::Scheduler;
use crate::quota::Quotas;
use crate::sse::StreamSlots;
use crate::store::{GpuSlot, Store};

/// Builds the command that runs one job's worker process: `(data_dir, job_id) -> Command`.
/// The scheduler adds the claim (`TUNA_WORKER_ATTEMPT`), stdin, logs and a process group.
pub type WorkerLauncher = Arc<dyn Fn(&Path, &str) -> std::process::Command + Send + Sync>;

/// The executable workers run: the server's own. On Linux `/proc/self/exe` still names the file
/// the server was started from after that file was replaced or deleted (a package upgrade while
/// it runs), so workers always match their server; elsewhere, the path it was started from.
pub fn own_executable() -> PathBuf {
    let proc = Path::new("/proc/self/exe");
    if proc.exists() {
        return proc.to_path_buf();
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tuna"))
}

/// `PROGRAM worker --data-dir D --job ID`.
pub fn worker_launcher(program: PathBuf) -> WorkerLauncher {
    Arc::new(move |data_dir: &Path, job_id: &str| {
        let mut cmd = std::process::Command::new(&program);
        std::os::unix::process::CommandExt::arg0(&mut cmd, "tuna");
        cmd.arg("worker")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--job")
            .arg(job_id);
        cmd
    })
}

/// `tuna worker --data-dir D --job ID` with [`own_executable`].
pub fn default_worker_launcher() -> WorkerLauncher {
    worker_launcher(own_executable())
}

/// The machine's host name (`localhost` when it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Everything configurable about a server. `Settings::new(data_dir)` gives the defaults.
#[derive(Clone)]
pub struct Settings {
    /// SQLite database, uploaded files, job directories and the demo model live here.
    pub data_dir: PathBuf,
    /// Where the state and the queue live (`--database`); `None`: `<data_dir>/tuna.db`.
    pub database: Option<DatabaseUrl>,
    /// Where uploaded files, results and stored models live (`--blob-store`); `None`:
    /// `<data_dir>/blobs`.
    pub blob_store: Option<BlobStoreUrl>,
    /// Training slots on the CPU: jobs this node runs at once (0: an API-only node). Default 1.
    pub cpu_slots: usize,
    /// This node's slots by name (`--devices cpu:0,cpu:1,gpu:0`); `None`: `cpu:0` …
    /// `cpu:{cpu_slots - 1}`, then the GPUs of `gpus`.
    pub devices: Option<Vec<String>>,
    /// The GPUs this node offers as slots, by slot name (`gpu:0`), one job each. The binary that
    /// links the GPU crate finds them (`tuna devices`); the server only schedules onto them.
    pub gpus: BTreeMap<String, GpuSlot>,
    /// The name this node's workers claim under and are listed by (`tuna workers list`).
    /// Default: the host name.
    pub worker_name: String,
    /// How long a claim lasts without a heartbeat (`TUNA_LEASE_SECONDS`, default 30 s).
    pub lease: Duration,
    /// How often an idle scheduler looks at the queue and reaps expired leases when nothing woke
    /// it (`--poll-seconds`, default 2 s). On PostgreSQL a queued job wakes it at once
    /// ([`crate::signals`]); the poll is the fallback.
    pub poll_interval: Duration,
    /// Largest accepted upload in bytes. Default 512 MiB.
    pub max_upload_bytes: u64,
    /// Times a job whose worker died is restarted (from its last checkpoint) before it fails. Default 2.
    pub max_retries: i64,
    /// Price per million trained tokens, for cost estimates. Default 0.
    pub price_per_million_tokens: f64,
    pub currency: String,
    /// Chat completions generating at once; more wait for a slot. Default 2.
    pub max_concurrent_generations: usize,
    /// Generation slots one user may hold at once. `None` (the default): one less than
    /// `max_concurrent_generations` (at least 1), so one user never holds every slot.
    pub max_generations_per_user: Option<usize>,
    /// How long a chat request waits for a slot before 429. Default 30 s.
    pub generation_queue_timeout: Duration,
    /// Longest time one chat completion generates; then it ends with `finish_reason: "length"`.
    /// Default 300 s.
    pub max_generation_time: Duration,
    /// Open event streams (`GET .../events?stream=true`) per user; more get 429. Default 8.
    pub max_event_streams_per_user: usize,
    /// Open HTTP connections; at the cap the oldest idle one is closed for a new one. The cap is
    /// also kept below the process's open-file limit. Default 4096.
    pub max_connections: usize,
    /// A connection must send a request's headers within this time of opening or of its last
    /// response (also the idle keep-alive timeout). Default 15 s.
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body; then 408. Default 30 s.
    pub body_read_timeout: Duration,
    /// On SIGINT/SIGTERM, how long in-flight requests may still finish before they are ended
    /// (a chat gets 503, or an error event in its stream). Default 10 s.
    pub shutdown_grace: Duration,
    /// Base models kept loaded for chat (least recently used evicted). Default 2.
    pub model_cache_size: usize,
    /// LoRA adapters kept loaded for chat. Default 8.
    pub adapter_cache_size: usize,
    /// Prompt (prefill) products of chat completions: bf16 where the CPU has bf16 units by
    /// default; decoding reads the weights as stored in f32 either way.
    pub chat_precision: PrecisionSetting,
    /// Where the demo model is written (`<data_dir>/models` by default).
    pub demo_model_root: PathBuf,
    /// JSON file listing more base models: `[{"name": "...", "path": "/hf/dir"}]`
    /// (`<data_dir>/models.json` by default; a missing file is fine).
    pub models_file: PathBuf,
    /// Effective CPU speed in GFLOP/s used to seed throughput estimates of unmeasured model shapes.
    pub cpu_gflops: f64,
    /// Jobs allowed to wait in the queue (all users); more get 429. Default 1000.
    pub max_queued_jobs: usize,
    /// Model whose tokenizer and template count tokens when a file is checked on upload. Default `demo`.
    pub check_model: String,
    /// How the server starts a worker process.
    pub worker_launcher: WorkerLauncher,
    /// Per-user limits (all off by default).
    pub quotas: Quotas,
    /// Memory a job may plan to use (admission control). Default: the machine's memory.
    pub memory_limit_bytes: Option<u64>,
    /// Disk space of the data directory that jobs may not plan to fill. Default 100 MiB.
    pub disk_reserve_bytes: u64,
    /// How long a graceful stop waits for workers to checkpoint and exit. Default 60 s.
    pub worker_stop_timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("data_dir", &self.data_dir)
            .field("database", &self.database_url().display())
            .field("blob_store", &self.blob_store_url().url())
            .field("cpu_slots", &self.cpu_slots)
            .field("devices", &self.devices())
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("max_retries", &self.max_retries)
            .field("price_per_million_tokens", &self.price_per_million_tokens)
            .field(
                "max_concurrent_generations",
                &self.max_concurrent_generations,
            )
            .field("chat_precision", &self.chat_precision)
            .field("models_file", &self.models_file)
            .field("quotas", &self.quotas)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("disk_reserve_bytes", &self.disk_reserve_bytes)
            .field("worker_stop_timeout", &self.worker_stop_timeout)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Settings {
            cpu_slots: 1,
            devices: None,
            gpus: BTreeMap::new(),
            worker_name: host_name(),
            lease: crate::queue::lease_duration(),
            poll_interval: Duration::from_secs(2),
            max_upload_bytes: 512 << 20,
            max_retries: 2,
            price_per_million_tokens: 0.0,
            currency: "USD".into(),
            max_concurrent_generations: 2,
            max_generations_per_user: None,
            generation_queue_timeout: Duration::from_secs(30),
            max_generation_time: Duration::from_secs(300),
            max_event_streams_per_user: 8,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            model_cache_size: 2,
            adapter_cache_size: 8,
            chat_precision: PrecisionSetting::Auto,
            demo_model_root: data_dir.join("models"),
            models_file: data_dir.join("models.json"),
            cpu_gflops: 100.0,
            max_queued_jobs: 1000,
            check_model: tuna_model::demo::DEMO_MODEL_NAME.into(),
            worker_launcher: default_worker_launcher(),
            quotas: Quotas::default(),
            memory_limit_bytes: None,
            disk_reserve_bytes: 100 << 20,
            worker_stop_timeout: Duration::from_secs(60),
            database: None,
            blob_store: None,
            data_dir,
        }
    }

    /// This node's slots (see [`Settings::devices`]).
    pub fn devices(&self) -> Vec<String> {
        self.devices.clone().unwrap_or_else(|| {
            (0..self.cpu_slots)
                .map(|i| format!("cpu:{i}"))
                .chain(self.gpus.keys().cloned())
                .collect()
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("tuna.db")
    }

    /// The database in use: `--database`, else the SQLite file in the data directory.
    pub fn database_url(&self) -> DatabaseUrl {
        self.database
            .clone()
            .unwrap_or_else(|| DatabaseUrl::Sqlite(self.db_path()))
    }

    pub fn blob_root(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }

    /// The blob store in use: `--blob-store`, else the `blobs` folder of the data directory.
    pub fn blob_store_url(&self) -> BlobStoreUrl {
        self.blob_store
            .clone()
            .unwrap_or_else(|| BlobStoreUrl::File(self.blob_root()))
    }

    /// This node's local copies of what lives in the blob store (checkpoints, datasets).
    pub fn cache_root(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    /// Opens the blob store; local copies of remote blobs go to `<data_dir>/cache/blobs`.
    pub fn open_blob_store(&self) -> std::io::Result<Arc<dyn BlobStore>> {
        self.blob_store_url().open(&self.cache_root().join("blobs"))
    }

    /// How chat generation is shared and bounded.
    pub fn generation_limits(&self) -> GenerationLimits {
        let slots = self.max_concurrent_generations.max(1);
        GenerationLimits {
            slots,
            per_user: self
                .max_generations_per_user
                .unwrap_or(slots.saturating_sub(1))
                .clamp(1, slots),
            max_wait: self.generation_queue_timeout,
            max_time: self.max_generation_time,
        }
    }

    /// A job's working directory: checkpoints, `metrics.jsonl`, the worker's log.
    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.data_dir.join("jobs").join(job_id)
    }
}

/// Shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub blobs: Arc<dyn BlobStore>,
    pub settings: Arc<Settings>,
    pub scheduler: Arc<Scheduler>,
    pub inference: Arc<Inference>,
    /// Open event streams per user.
    pub streams: Arc<StreamSlots>,
    /// Cancelled on SIGINT/SIGTERM (or when a test stops the server): the server takes no new
    /// work, the HTTP side drains its requests, and the scheduler stops claiming and asks every
    /// worker to checkpoint at its current step and exit.
    pub shutdown: CancellationToken,
}
