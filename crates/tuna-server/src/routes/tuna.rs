//! Tuna's own routes under `/v1/tuna/`: who am I, the server's queue and slots, the throughput
//! table behind the estimates (`POST /v1/tuna/estimates` lives with the jobs).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tracing::instrument;

use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::openai::types::List;
use crate::state::AppState;
use crate::store::ThroughputRow;

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
    AuthUser(_user): AuthUser,
) -> ApiResult<Json<Value>> {
    let snapshot = state.store.queue_snapshot().await?;
    let running = snapshot.iter().filter(|e| e.status == "running").count();
    let queued = snapshot.iter().filter(|e| e.status == "queued").count();
    let s = &state.settings;
    Ok(Json(json!({
        "object": "tuna.status",
        "slots": { "cpu": state.scheduler.slots() },
        "running": running,
        "queued": queued,
        "max_queued_jobs": s.max_queued_jobs,
        "max_upload_bytes": s.max_upload_bytes,
        "price_per_million_tokens": s.price_per_million_tokens,
        "currency": s.currency,
        "max_concurrent_generations": s.max_concurrent_generations,
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
