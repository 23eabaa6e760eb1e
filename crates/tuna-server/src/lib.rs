//! Tuna's HTTP service: an OpenAI-compatible API (files, fine-tuning jobs with events and
//! checkpoints, models, chat completions) plus Tuna's own routes and the web console; the store
//! (SQLite) and file storage behind traits; the queue that runs jobs in worker processes.
//!
//! Layout: [`router`] lists every route; `routes/` holds the handlers; `openai/types.rs` the wire
//! types; `validate/` turns requests into `Valid*` values (its `settings.rs` is the one table of
//! job settings, defaults and limits); `spec.rs` the one description of a job's settings;
//! `lifecycle.rs` the only code that changes a job's status; `error.rs` the one error type;
//! `store.rs` the store interface and `db.rs` all SQL; `queue.rs` the scheduler and worker
//! supervision; `worker/` the worker process; `quota.rs` per-user quotas and admission control;
//! `artifacts.rs` a job's files; `inference.rs` chat generation and `slots.rs` its fair share of
//! slots; `http.rs` the listener (timeouts, connection cap, drain); `sse.rs` the limits of event
//! streams; `perms.rs` private files. The API is described route by route in `docs/api.md`.
//!
//! Shutdown (SIGINT or SIGTERM in `tuna serve`, [`shutdown_signal`]): [`AppState::shutdown`] is
//! cancelled; the listener closes, every connection finishes its request in progress and closes,
//! event streams end with an error event, chat generations get [`Settings::shutdown_grace`] to
//! finish and are then ended (503, or an error event in a stream), and the scheduler stops
//! claiming and has every worker save a checkpoint at its current step and exit (bounded by
//! [`Settings::worker_stop_timeout`]); then [`serve`] returns.
//!
//! Several nodes may share one database (PostgreSQL): every `tuna serve` answers every route, and
//! every node with slots (`tuna serve --local-workers N`, `tuna worker` without `--job`, see
//! [`run_worker_node`]) claims jobs under leases (see `queue.rs`).
//!
//! Not supported: GPUs, DPO / reinforcement methods, `n > 1`, tools and logprobs in chat completions.

pub mod archive;
pub mod artifacts;
pub mod auth;
pub mod blob;
pub mod checker;
pub mod checkpoints;
pub mod compute;
pub mod console;
pub mod db;
pub mod disk;
pub mod error;
pub mod estimate;
pub mod http;
pub mod ids;
pub mod inference;
pub mod lifecycle;
pub mod models;
pub mod openai;
pub mod perms;
pub mod queue;
pub mod quota;
pub mod routes;
pub mod signals;
pub mod slots;
pub mod spec;
pub mod sse;
pub mod state;
pub mod store;
#[cfg(any(test, feature = "test-services"))]
pub mod test_services;
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
use tokio_util::sync::CancellationToken;

use crate::db::DatabaseUrl;
use crate::error::ApiError;
use crate::inference::Inference;
use crate::queue::Scheduler;
use crate::routes::{chat, files, jobs, models as model_routes, tuna};
use crate::sse::StreamSlots;
pub use crate::state::{AppState, Settings, WorkerLauncher};
use crate::store::Store;

/// Largest JSON request body (axum's default, stated): larger bodies get 413.
pub const MAX_JSON_BODY_BYTES: usize = 2 << 20;
/// How long connections may still take after the shutdown grace period before they are dropped.
const DRAIN_SLACK: Duration = Duration::from_secs(5);

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
            get(jobs::checkpoints).delete(jobs::delete_all),
        )
        .route(
            "/v1/fine_tuning/jobs/{id}/checkpoints/{ckpt}/adapter",
            get(jobs::download),
        )
        .route("/v1/fine_tuning/jobs/{id}/metrics", get(jobs::metrics))
        .route("/v1/models", get(model_routes::list))
        .route(
            "/v1/models/{id}",
            get(model_routes::get).delete(model_routes::delete),
        )
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/tuna/estimates", post(jobs::estimate))
        .route("/v1/tuna/me", get(tuna::me))
        .route("/v1/tuna/job_settings", get(tuna::job_settings))
        .route("/v1/tuna/status", get(tuna::status))
        .route("/v1/tuna/throughput", get(tuna::throughput))
        .route("/v1/tuna/workers", get(tuna::workers))
        .merge(console::routes())
        // After every route: it applies to the routes already added.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::NotFound {
                message: format!(
                    "unknown request URL: {method} {}",
                    error::clip_to(uri.path(), 200)
                ),
                code: "unknown_url",
                param: None,
            }
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
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
    #[error("cannot open the blob store: {0}")]
    BlobStore(std::io::Error),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
}

/// Opens the store (migrating it), registers the demo model and the models file, and queues jobs
/// left mid-creation (running jobs are left to their leases: another node may run them). The data directory and
/// the database are made private (0700, 0600) first.
pub async fn build_state(settings: Settings) -> Result<AppState, StartError> {
    let data_dir_error = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| StartError::DataDir { path, source }
    };
    perms::private_dir(&settings.data_dir).map_err(data_dir_error(&settings.data_dir))?;
    let database = settings.database_url();
    if let DatabaseUrl::Sqlite(db_path) = &database {
        perms::private_sqlite(db_path).map_err(data_dir_error(db_path))?;
    }
    let blobs = settings.open_blob_store().map_err(StartError::BlobStore)?;
    let store: Arc<dyn Store> = db::open_store(&database).await?;
    models::register_demo(&*store, &settings.demo_model_root).await?;
    models::register_models_file(&*store, &settings.models_file).await?;
    let settings = Arc::new(settings);
    let shutdown = CancellationToken::new();
    let scheduler = Scheduler::new(store.clone(), settings.clone(), shutdown.clone());
    scheduler.recover().await?;
    let inference = Arc::new(Inference::new(
        settings.generation_limits(),
        settings.model_cache_size,
        settings.adapter_cache_size,
        settings.chat_precision.resolve(),
    ));
    Ok(AppState {
        store,
        blobs,
        streams: StreamSlots::new(settings.max_event_streams_per_user),
        settings,
        scheduler,
        inference,
        shutdown,
    })
}

/// `tuna worker` without `--job`: a node that only runs jobs, on its own devices, against a
/// shared database; until `signal` completes, then its workers checkpoint and stop (their jobs
/// stay queued for any node).
pub async fn run_worker_node(
    settings: Settings,
    signal: impl Future<Output = ()>,
) -> Result<(), StartError> {
    perms::private_dir(&settings.data_dir).map_err(|source| StartError::DataDir {
        path: settings.data_dir.clone(),
        source,
    })?;
    let store: Arc<dyn Store> = db::open_store(&settings.database_url()).await?;
    let shutdown = CancellationToken::new();
    let scheduler = Scheduler::new(store, Arc::new(settings), shutdown.clone());
    let handle = scheduler.start();
    signal.await;
    shutdown.cancel();
    let _ = handle.await;
    Ok(())
}

/// What a serving process does first: files it (and its workers) create are private (umask
/// 077), and its open-file limit is raised to the hard limit (room for connections).
pub fn prepare_server_process() {
    perms::restrict_new_files();
    http::raise_open_file_limit();
}

/// Completes on SIGINT or SIGTERM; returns the signal's name.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Serves `state` on `listener` until `signal` completes (or [`AppState::shutdown`] is cancelled
/// otherwise), then shuts down as the crate docs describe and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let settings = state.settings.clone();
    let scheduler = state.scheduler.clone();
    let inference = state.inference.clone();
    let loop_handle = scheduler.start();
    let opts = http::ListenOptions {
        max_connections: http::connection_cap(settings.max_connections),
        header_read_timeout: settings.header_read_timeout,
        body_read_timeout: settings.body_read_timeout,
        drain_timeout: settings.shutdown_grace + DRAIN_SLACK,
    };
    tracing::info!(
        max_connections = opts.max_connections,
        "serving on {}",
        listener.local_addr()?
    );
    let trigger = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = signal => shutdown.cancel(),
                () = shutdown.cancelled() => {}
            }
        })
    };
    let http = http::serve_http(listener, router(state), opts, shutdown.clone());
    let generations = async {
        shutdown.cancelled().await;
        tokio::time::sleep(settings.shutdown_grace).await;
        inference.abort_all();
    };
    // The scheduler's loop ends on the shutdown token, after its workers stopped.
    let workers = async {
        let _ = loop_handle.await;
    };
    tokio::select! {
        ((), ()) = async { tokio::join!(http, workers) } => {}
        // The grace period only matters while requests are still open.
        () = async { generations.await; std::future::pending::<()>().await } => {}
    }
    trigger.abort();
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
