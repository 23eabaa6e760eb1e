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
use crate::openai::types::{ComputeChoice, EstimateResponse, FineTuningJob, List, PageQuery};
use crate::spec::Compute;
use crate::state::AppState;
use crate::store::{JobControl, JobRow, JobStatus, NewJob, QueueEntry, User};
use crate::validate::{ValidJobRequest, validate_job_request};
use plan::{Plan, plan_job};
use render::{Live, render_job, tuna_view};

pub use artifacts::{checkpoints, delete_all, download, metrics};
pub use events::events;

/// Queue positions of every queued job, and the slot `new` would get on `compute`. Each kind
/// of slot has its own queue: CPU jobs wait for CPU slots, GPU jobs for GPUs.
async fn queue_view(
    state: &AppState,
    new: Option<(NewJobProbe<'_>, Compute)>,
) -> ApiResult<(HashMap<String, QueueSlot>, Option<QueueSlot>)> {
    let snapshot = state.store.queue_snapshot().await?;
    let offers = crate::compute::offers(state).await?;
    let now = ids::now_f64();
    let mut out = HashMap::new();
    let mut new_slot = None;
    for kind in Compute::ALL {
        let of_kind: Vec<QueueEntry> = snapshot
            .iter()
            .filter(|e| e.compute == kind)
            .cloned()
            .collect();
        let probe = new.filter(|(_, c)| *c == kind).map(|(p, _)| p);
        if of_kind.is_empty() && probe.is_none() {
            continue;
        }
        // With no live worker of the kind (an API-only node before its workers joined), the
        // queue is simulated on one slot.
        let slots = offers.get(&kind).map_or(0, |o| o.total).max(1);
        let (positions, slot) = estimate::simulate_queue(&of_kind, slots, now, probe);
        out.extend(positions);
        new_slot = new_slot.or(slot);
    }
    Ok((out, new_slot))
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
    let compute = plan.spec.tuna.compute;
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
        compute,
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
    let snapshot = state.store.queue_snapshot().await?;
    let mut compute_choices = Vec::new();
    let mut next = None;
    for kind in Compute::ALL {
        let estimate = plan.estimate_on(&state, kind).await?;
        let probe = NewJobProbe {
            user_id: &user.id,
            seconds: estimate.duration_seconds.unwrap_or(0.0),
        };
        let slot = queue_view(&state, Some((probe, kind)))
            .await?
            .1
            .unwrap_or(QueueSlot {
                position: 1,
                estimated_start: ids::now_f64(),
            });
        let offer = plan.offers.get(&kind).cloned().unwrap_or_default();
        let running = snapshot
            .iter()
            .filter(|e| e.compute == kind && e.status == JobStatus::Running)
            .count();
        // Jobs ahead without a duration (GPU jobs before any measurement) make the start unknown.
        let unknown_ahead = snapshot.iter().any(|e| {
            e.compute == kind
                && e.estimate
                    .as_ref()
                    .is_none_or(|x| x.duration_seconds.is_none())
        });
        let dpo = matches!(plan.spec.method, crate::spec::MethodSpec::Dpo { .. });
        if kind == plan.spec.tuna.compute {
            next = Some(slot);
        }
        compute_choices.push(ComputeChoice {
            compute: kind.as_str().into(),
            slots_total: offer.total as i64,
            slots_free: offer.total.saturating_sub(running) as i64,
            devices: offer.devices,
            jobs_ahead: running as i64 + slot.position - 1,
            queue_position: slot.position,
            estimated_start: (!unknown_ahead && offer.total > 0)
                .then_some(slot.estimated_start as i64),
            estimate,
            unavailable: crate::compute::unavailable(kind, &plan.offers, dpo),
        });
    }
    let next = next.unwrap_or(QueueSlot {
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
        compute_choices,
    }))
}
