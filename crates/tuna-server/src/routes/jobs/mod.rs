//! `/v1/fine_tuning/jobs`: create (validated against the settings table, planned, admitted,
//! then queued in one transaction), list, get, cancel, pause, resume; `POST /v1/tuna/estimates`.
//!
//! - `render.rs`: rows as API objects.
//! - `plan.rs`: what a request resolves to (shared by creation and estimates).
//! - `events.rs`: the events page and stream.
//! - `artifacts.rs`: checkpoints, metrics, downloads and deletions.
//!
//! Status changes go through `crate::lifecycle`; handlers only decide which one to ask for.

pub mod artifacts;
pub mod events;
pub mod plan;
pub mod render;

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value;
use tracing::instrument;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::estimate::{self, NewJobProbe, QueueSlot};
use crate::ids;
use crate::lifecycle;
use crate::openai::types::{EstimateResponse, FineTuningJob, List, PageQuery};
use crate::state::AppState;
use crate::store::{JobControl, JobRow, JobStatus, NewJob, User};
use crate::validate::{ValidJobRequest, validate_job_request};
use plan::{Plan, plan_job};
use render::{Live, render_job, tuna_view};

pub use artifacts::{checkpoints, delete_all, download, metrics};
pub use events::events;

/// Queue positions of every queued job, and the slot `new` would get.
async fn queue_view(
    state: &AppState,
    new: Option<NewJobProbe<'_>>,
) -> ApiResult<(HashMap<String, QueueSlot>, Option<QueueSlot>)> {
    let snapshot = state.store.queue_snapshot().await?;
    Ok(estimate::simulate_queue(
        &snapshot,
        state.scheduler.slots(),
        ids::now_f64(),
        new,
    ))
}

async fn render_one(state: &AppState, row: &JobRow) -> ApiResult<FineTuningJob> {
    let queue = if row.status == JobStatus::Queued {
        queue_view(state, None).await?.0.remove(&row.id)
    } else {
        None
    };
    Ok(render_job(row, queue.as_ref(), ids::now_f64()))
}

pub(crate) async fn owned(state: &AppState, user: &User, id: &str) -> ApiResult<JobRow> {
    state
        .store
        .get_job(&user.id, id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(id))
}

/// A job body validated, planned and within the user's quotas: what creation and estimates share.
async fn admit(state: &AppState, user: &User, body: &Value) -> ApiResult<(ValidJobRequest, Plan)> {
    let v = validate_job_request(body)?;
    let plan = plan_job(state, user, &v).await?;
    crate::quota::check_new_job(
        &*state.store,
        &state.settings.quotas,
        user,
        plan.footprint.disk_bytes,
    )
    .await?;
    Ok((v, plan))
}

/// `POST /v1/fine_tuning/jobs`.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<FineTuningJob>> {
    let (v, plan) = admit(&state, &user, &body).await?;
    let queued = state
        .store
        .queue_snapshot()
        .await?
        .iter()
        .filter(|e| e.status == JobStatus::Queued)
        .count();
    if queued >= state.settings.max_queued_jobs {
        return Err(ApiError::Overloaded(format!(
            "the queue is full ({queued} jobs waiting); retry later"
        )));
    }
    let id = ids::new_id(ids::JOB);
    let new = NewJob {
        model_id: format!(
            "ft:{}:{}:{}:{}",
            plan.weights.base.name,
            user.name,
            v.suffix().unwrap_or(""),
            &id[ids::JOB.len()..]
        ),
        id,
        user_id: user.id.clone(),
        // As sent: a base model or the fine-tuned model the job trains further.
        model: v.model().to_string(),
        training_file: v.training_file().to_string(),
        validation_file: v.validation_file().map(str::to_string),
        suffix: v.suffix().map(str::to_string),
        seed: v.seed(),
        spec: plan.spec,
        estimate: Some(plan.estimate),
        metadata: v.metadata().cloned(),
        created_at: ids::now(),
        memory_bytes: i64::try_from(plan.footprint.memory_bytes).ok(),
    };
    // One transaction, run to its end even if the client goes away meanwhile: the job exists
    // queued, or not at all.
    let store = state.store.clone();
    let job = tokio::spawn(async move { lifecycle::create(&*store, &new).await }).await??;
    state.scheduler.wake();
    Ok(Json(render_one(&state, &job).await?))
}

/// `GET /v1/fine_tuning/jobs?after&limit` (newest first).
#[instrument(skip_all, fields(user = %user.id))]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<FineTuningJob>>> {
    let page = super::page(q.after.clone(), q.limit, 20, 100)?;
    let (rows, has_more) = state
        .store
        .list_jobs(&user.id, &page)
        .await?
        .ok_or_else(|| super::bad_cursor(&q.after))?;
    let queue = if rows.iter().any(|r| r.status == JobStatus::Queued) {
        queue_view(&state, None).await?.0
    } else {
        HashMap::new()
    };
    let now = ids::now_f64();
    let data = rows
        .iter()
        .map(|r| render_job(r, queue.get(&r.id), now))
        .collect();
    Ok(Json(List::new(data, has_more)))
}

/// `GET /v1/fine_tuning/jobs/{id}`.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn get(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<FineTuningJob>> {
    let job = owned(&state, &user, &id).await?;
    Ok(Json(render_one(&state, &job).await?))
}

/// `POST /v1/fine_tuning/jobs/{id}/cancel`: the answer is what the store holds, and a running
/// worker is killed at once.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<FineTuningJob>> {
    let job = owned(&state, &user, &id).await?;
    let cancelled = lifecycle::cancel(&*state.store, &job).await?;
    // A worker may have been started between the read and the cancel: kill whatever runs.
    if !state.scheduler.kill(&id) {
        artifacts::drop_resume_state(&state, &cancelled).await;
    }
    state.scheduler.wake();
    Ok(Json(render_one(&state, &cancelled).await?))
}

/// `POST /v1/fine_tuning/jobs/{id}/pause`: a queued job leaves the queue; a running one stops
/// after its current step, keeping a resumable checkpoint (`tuna.pause_requested` until then).
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn pause(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<FineTuningJob>> {
    let job = owned(&state, &user, &id).await?;
    let out = lifecycle::request_pause(&*state.store, &job).await?;
    if out.control == Some(JobControl::Pause) {
        state.scheduler.pause(&id);
    }
    Ok(Json(render_one(&state, &out).await?))
}

/// `POST /v1/fine_tuning/jobs/{id}/resume`: a paused job goes to the back of the queue and
/// continues from its last checkpoint when it runs.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn resume(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<FineTuningJob>> {
    let job = owned(&state, &user, &id).await?;
    let out = lifecycle::resume(&*state.store, &job).await?;
    state.scheduler.wake();
    Ok(Json(render_one(&state, &out).await?))
}

/// `POST /v1/tuna/estimates`: what a job with this body would cost and when it would start.
/// The body is validated, planned and admitted exactly as job creation does.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn estimate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<EstimateResponse>> {
    let (v, plan) = admit(&state, &user, &body).await?;
    let probe = NewJobProbe {
        user_id: &user.id,
        seconds: plan.estimate.duration_seconds,
    };
    let next = queue_view(&state, Some(probe))
        .await?
        .1
        .unwrap_or(QueueSlot {
            position: 1,
            estimated_start: ids::now_f64(),
        });
    let live = Live {
        queue: Some(next),
        ..Live::default()
    };
    Ok(Json(EstimateResponse {
        object: "tuna.estimate".into(),
        model: v.model().to_string(),
        training_file: v.training_file().to_string(),
        hyperparameters: *plan.spec.hyperparameters(),
        tuna: tuna_view(&plan.spec, Some(&plan.estimate), live),
        estimate: plan.estimate,
        queue_position: next.position,
        estimated_start: next.estimated_start as i64,
    }))
}
