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

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tuna_server::blob::{BLOB_STORE_ENV, BlobStoreUrl};
use tuna_server::db::{DATABASE_ENV, DatabaseUrl};
use tuna_server::store::Store;

/// `--database` and `--blob-store`, taken by every command that takes `--data-dir`, so an
/// operator can run all of them against the shared state of several machines.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DatabaseArg {
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

impl DatabaseArg {
    pub fn url(&self) -> anyhow::Result<Option<DatabaseUrl>> {
        self.database
            .as_deref()
            .map(DatabaseUrl::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--database {e}"))
    }

    pub fn blob_store(&self) -> anyhow::Result<Option<BlobStoreUrl>> {
        self.blob_store
            .as_deref()
            .map(BlobStoreUrl::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--blob-store {e}"))
    }

    /// Opens (and migrates) the store: `--database`, else the data directory's SQLite file.
    pub async fn open(&self, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
        let mut settings = tuna_server::Settings::new(data_dir);
        settings.database = self.url()?;
        let url = settings.database_url();
        tuna_server::db::open_store(&url)
            .await
            .with_context(|| format!("opening the database {}", url.display()))
    }
}
