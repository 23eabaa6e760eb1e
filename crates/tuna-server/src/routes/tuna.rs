//! Tuna's own routes under `/v1/tuna/`: who am I, the cluster's queue and slots, the job settings
//! with their defaults and limits, the throughput table behind the estimates
//! (`POST /v1/tuna/estimates` lives with the jobs).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tracing::instrument;

use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::openai::types::List;
use crate::spec::Compute;
use crate::state::AppState;
use crate::store::{JobStatus, ThroughputRow};

/// `GET /v1/tuna/me`: the key's user (lets a client check a key).
pub async fn me(AuthUser(user): AuthUser) -> Json<Value> {
    Json(
        json!({ "object": "tuna.user", "id": user.id, "name": user.name, "created_at": user.created_at }),
    )
}

/// `GET /v1/tuna/status`: slots and queue length (all users; no job details).
#[instrument(skip_all)]
pub async fn status(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Value>> {
    let snapshot = state.store.queue_snapshot().await?;
    let running = snapshot
        .iter()
        .filter(|e| e.status == JobStatus::Running)
        .count();
    let queued = snapshot
        .iter()
        .filter(|e| e.status == JobStatus::Queued)
        .count();
    let s = &state.settings;
    let usage = state.store.usage(&user.id).await?;
    let offers = crate::compute::offers(&state).await?;
    let total = |kind| offers.get(&kind).map_or(0, |o| o.total);
    let q = &s.quotas;
    Ok(Json(json!({
        "object": "tuna.status",
        // Over every live worker; with none yet (an API-only node), one CPU slot.
        "slots": { "cpu": total(Compute::Cpu).max(1), "gpu": total(Compute::Gpu) },
        "running": running,
        "queued": queued,
        "max_queued_jobs": s.max_queued_jobs,
        "max_upload_bytes": s.max_upload_bytes,
        "price_per_million_tokens": s.price_per_million_tokens,
        "currency": s.currency,
        "max_concurrent_generations": s.max_concurrent_generations,
        "quotas": {
            "stored_bytes": q.stored_bytes,
            "files": q.files,
            "queued_jobs": q.queued_jobs,
            "running_jobs": q.running_jobs,
        },
        "usage": {
            "stored_bytes": usage.file_bytes + usage.checkpoint_bytes,
            "files": usage.files,
            "queued_jobs": usage.queued_jobs,
            "running_jobs": usage.running_jobs,
        },
    })))
}

/// `GET /v1/tuna/throughput`: measured (or seeded) tokens per second per model shape.
#[instrument(skip_all)]
pub async fn throughput(
    State(state): State<AppState>,
    AuthUser(_user): AuthUser,
) -> ApiResult<Json<List<ThroughputRow>>> {
    Ok(Json(List::new(state.store.list_throughput().await?, false)))
}

/// `GET /v1/tuna/workers`: the workers that joined (every node with slots), their devices and
/// memory, their last heartbeat and how many jobs they run; the caller's own running jobs by id
/// (other users' jobs are only counted). Tuna has no admin role: any key may look, as with
/// `/v1/tuna/status`.
#[instrument(skip_all)]
pub async fn workers(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<List<Value>>> {
    let now = crate::ids::now_f64();
    let lease = state.settings.lease.as_secs_f64();
    let rows = state
        .store
        .list_workers()
        .await?
        .into_iter()
        .map(|w| {
            let mine: Vec<&str> = w
                .jobs
                .iter()
                .filter(|(_, owner)| *owner == user.id)
                .map(|(id, _)| id.as_str())
                .collect();
            json!({
                "object": "tuna.worker",
                "name": w.worker.name,
                "devices": w.worker.devices.split(',').filter(|d| !d.is_empty()).collect::<Vec<_>>(),
                "memory_bytes": w.worker.memory_bytes,
                "started_at": w.worker.started_at,
                "last_heartbeat": w.worker.last_heartbeat,
                // Seen within two leases: a scheduler heartbeats every 2 s.
                "alive": now - w.worker.last_heartbeat <= 2.0 * lease.max(2.0),
                "running_jobs": w.jobs.len(),
                "your_jobs": mine,
            })
        })
        .collect();
    Ok(Json(List::new(rows, false)))
}

/// `GET /v1/tuna/job_settings`: every setting a job request takes, with its type, limits,
/// default, `auto` rule and description (the table validation uses).
pub async fn job_settings(AuthUser(_user): AuthUser) -> Json<Value> {
    Json(crate::validate::settings::describe_all())
}
