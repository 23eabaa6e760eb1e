//! Tuna's HTTP service: an OpenAI-compatible API (files, fine-tuning jobs with events and
//! checkpoints, models, chat completions) plus Tuna's own routes and the web console; the store
//! (SQLite) and file storage behind traits; the queue that runs jobs in worker processes.
//!
//! Layout: [`router`] lists every route; `routes/` holds the handlers; `openai/types.rs` the wire
//! types; `validate.rs` turns requests into `Valid*` values; `error.rs` the one error type;
//! `db.rs` all SQL; `queue.rs` the scheduler; `worker.rs` the worker process; `inference.rs`
//! chat generation. The API is described route by route in `docs/api.md`.
//!
//! Not supported: several servers sharing one database (the scheduler assumes it owns the
//! slots), GPUs, DPO / reinforcement methods, `n > 1`, tools and logprobs in chat completions.

pub mod archive;
pub mod auth;
pub mod blob;
pub mod checker;
pub mod console;
pub mod db;
pub mod error;
pub mod estimate;
pub mod ids;
pub mod inference;
pub mod models;
pub mod openai;
pub mod queue;
pub mod routes;
pub mod state;
pub mod store;
pub mod validate;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};

use crate::blob::LocalBlobStore;
use crate::db::SqliteStore;
use crate::error::ApiError;
use crate::inference::Inference;
use crate::queue::Scheduler;
use crate::routes::{chat, files, jobs, models as model_routes, tuna};
pub use crate::state::{AppState, Settings, WorkerLauncher};
use crate::store::Store;

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    // Multipart framing adds a little to the file itself.
    let upload_limit = (state.settings.max_upload_bytes as usize).saturating_add(1 << 20);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/v1/files",
            post(files::upload)
                .layer(DefaultBodyLimit::max(upload_limit))
                .get(files::list),
        )
        .route("/v1/files/{id}", get(files::get).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/fine_tuning/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/fine_tuning/jobs/{id}", get(jobs::get))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/fine_tuning/jobs/{id}/pause", post(jobs::pause))
        .route("/v1/fine_tuning/jobs/{id}/resume", post(jobs::resume))
        .route("/v1/fine_tuning/jobs/{id}/events", get(jobs::events))
        .route(
            "/v1/fine_tuning/jobs/{id}/checkpoints",
            get(jobs::checkpoints),
        )
        .route(
            "/v1/fine_tuning/jobs/{id}/checkpoints/{ckpt}/adapter",
            get(jobs::download),
        )
        .route("/v1/fine_tuning/jobs/{id}/metrics", get(jobs::metrics))
        .route("/v1/models", get(model_routes::list))
        .route("/v1/models/{id}", get(model_routes::get))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/tuna/estimates", post(jobs::estimate))
        .route("/v1/tuna/me", get(tuna::me))
        .route("/v1/tuna/status", get(tuna::status))
        .route("/v1/tuna/throughput", get(tuna::throughput))
        .merge(console::routes())
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::NotFound {
                message: format!("unknown request URL: {method} {}", uri.path()),
                code: "unknown_url",
                param: None,
            }
        })
        .layer(axum::middleware::from_fn(error::log_internal_errors))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
}

/// Opens the store (migrating it), registers the demo model and the models file, and puts jobs
/// that were running when the server last stopped back in the queue.
pub async fn build_state(settings: Settings) -> Result<AppState, StartError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::DataDir {
        path: settings.data_dir.clone(),
        source,
    })?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.db_path()).await?);
    models::register_demo(&*store, &settings.demo_model_root).await?;
    models::register_models_file(&*store, &settings.models_file).await?;
    let settings = Arc::new(settings);
    let scheduler = Scheduler::new(store.clone(), settings.clone());
    scheduler.recover().await?;
    let inference = Arc::new(Inference::new(
        settings.max_concurrent_generations,
        settings.model_cache_size,
        settings.adapter_cache_size,
    ));
    Ok(AppState {
        store,
        blobs: Arc::new(LocalBlobStore::new(settings.blob_root())),
        settings,
        scheduler,
        inference,
    })
}

/// Serves `state` on `listener` until `shutdown` completes; then stops the workers at their next
/// step (their jobs stay queued for the next start). Open streams get a few seconds to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scheduler = state.scheduler.clone();
    let loop_handle = scheduler.start();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop_signal = stop.clone();
    let graceful = async move {
        shutdown.await;
        stop_signal.notify_waiters();
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(graceful);
    let force = async {
        stop.notified().await;
        // Event and chat streams may stay open: don't wait for them forever.
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::select! {
        r = server => r?,
        () = force => {}
    }
    loop_handle.abort();
    scheduler.shutdown(Duration::from_secs(60)).await;
    Ok(())
}

/// A server running in the background (tests, examples): its address and a way to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Builds the state and serves it on `addr` (use `127.0.0.1:0` for a free port).
    pub async fn start(settings: Settings, addr: SocketAddr) -> Result<Self, StartError> {
        let state = build_state(settings).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(StartError::Listen)?;
        let addr = listener.local_addr().map_err(StartError::Listen)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Ok(RunningServer {
            addr,
            state,
            stop: Some(tx),
            handle,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the workers to stop.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.handle).await.map_err(std::io::Error::other)?
    }
}
