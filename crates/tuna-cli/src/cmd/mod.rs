//! One file per subcommand.

pub mod bench;
pub mod bench_train;
pub mod chat;
pub mod data;
pub mod devices;
pub mod generate;
pub mod merge;
pub mod models;
pub mod sampling;
pub mod serve;
pub mod train;
pub mod users;
pub mod worker;
pub mod workers;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tuna_server::Settings;
use tuna_server::blob::{BLOB_STORE_ENV, BlobStoreUrl};
use tuna_server::db::{DATABASE_ENV, DatabaseUrl};
use tuna_server::store::Store;

/// Where the state lives: `--data-dir`, `--database` and `--blob-store`, one group taken by every
/// command that touches the server's state (`serve`, `worker`, `users …`, `models …`,
/// `workers …`), so an operator can run all of them against the shared state of several machines.
#[derive(clap::Args, Debug, Clone)]
pub struct SharedStateArgs {
    /// Data directory: job directories and caches; also the SQLite database without --database
    /// and the blob folder without --blob-store
    #[arg(long, env = "TUNA_DATA_DIR", default_value = "./tuna-data")]
    pub data_dir: PathBuf,
    /// Where the state and the queue live: sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB
    /// (default: tuna.db in the data directory)
    #[arg(long, env = DATABASE_ENV)]
    pub database: Option<String>,
    /// Where uploaded files, results and models live: file://DIR or s3://BUCKET/PREFIX, the
    /// S3 endpoint, region and credentials from the AWS_* variables (AWS_ENDPOINT_URL,
    /// AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP=true for plain
    /// http) (default: the blobs folder of the data directory)
    #[arg(long, env = BLOB_STORE_ENV)]
    pub blob_store: Option<String>,
}

impl SharedStateArgs {
    pub fn database_url(&self) -> anyhow::Result<Option<DatabaseUrl>> {
        self.database
            .as_deref()
            .map(DatabaseUrl::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--database {e}"))
    }

    pub fn blob_store_url(&self) -> anyhow::Result<Option<BlobStoreUrl>> {
        self.blob_store
            .as_deref()
            .map(BlobStoreUrl::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--blob-store {e}"))
    }

    /// A long-running node's settings (`serve`, a `worker` node): the data directory created
    /// private and made absolute (its workers get it as an argument, whatever their working
    /// directory), with the database and the blob store.
    pub fn node_settings(&self) -> anyhow::Result<Settings> {
        tuna_server::perms::private_dir(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&self.data_dir)
            .with_context(|| format!("resolving {}", self.data_dir.display()))?;
        let mut settings = Settings::new(&data_dir);
        settings.database = self.database_url()?;
        settings.blob_store = self.blob_store_url()?;
        Ok(settings)
    }

    /// Opens (and migrates) the store for a one-off command: `--database`, else the data
    /// directory's SQLite file (the directory is created when missing).
    pub async fn open_store(&self) -> anyhow::Result<Arc<dyn Store>> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let mut settings = Settings::new(&self.data_dir);
        settings.database = self.database_url()?;
        let url = settings.database_url();
        tuna_server::db::open_store(&url)
            .await
            .with_context(|| format!("opening the database {}", url.display()))
    }
}

/// How a node keeps its claims and looks at the queue (`serve` and `worker` nodes).
#[derive(clap::Args, Debug, Clone)]
pub struct QueueTimingArgs {
    /// Seconds a claim lasts without a heartbeat (tests shorten it; every node should agree)
    #[arg(long, env = tuna_server::queue::LEASE_ENV, hide = true)]
    pub lease_seconds: Option<f64>,
    /// Seconds between looks at the queue when nothing woke the node (on PostgreSQL a queued job
    /// wakes it at once; this is the fallback)
    #[arg(long, env = "TUNA_POLL_SECONDS", default_value_t = 2.0)]
    pub poll_seconds: f64,
}

impl QueueTimingArgs {
    pub fn apply(&self, settings: &mut Settings) {
        if let Some(s) = self.lease_seconds {
            settings.lease = tuna_server::queue::lease_of(s);
        }
        let poll = self.poll_seconds;
        settings.poll_interval = std::time::Duration::from_secs_f64(if poll.is_finite() {
            poll.clamp(0.1, 86_400.0)
        } else {
            2.0
        });
    }
}
