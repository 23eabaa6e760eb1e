//! `/v1/fine_tuning/jobs`: create (with `auto` hyperparameters resolved from the dataset check and
//! an estimate recorded), list, get, cancel, pause, resume, events (a page, or a live SSE stream
//! with `?stream=true`), checkpoints (with samples), per-step metrics and checkpoint downloads.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tracing::instrument;
use tuna_model::QwenConfig;

use crate::auth::AuthUser;
use crate::checker::{DatasetSize, check_dataset, dataset_size};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::estimate::{self, QueueSlot};
use crate::ids;
use crate::models::model_shape;
use crate::openai::types::*;
use crate::state::AppState;
use crate::store::{
    CheckpointRow, EventRow, FileRow, JobPatch, JobRow, JobStatus, ModelRow, NewEvent, NewJob,
    Store, User,
};
use crate::validate::{
    JobSpec, ValidJobRequest, auto_batch_size, auto_epochs, base_learning_rate,
    validate_job_request,
};

// ---------------------------------------------------------------------------------------------
// Rendering

fn parse<T: serde::de::DeserializeOwned>(s: Option<&str>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(s).ok())
}

/// The `fine_tuning.job` object of a row; `queue` is its slot when queued.
pub fn render_job(row: &JobRow, queue: Option<&QueueSlot>, now: f64) -> FineTuningJob {
    let status = row.status();
    let spec: Option<JobSpec> = parse(Some(&row.tuna));
    let hp: Hyperparameters = parse(Some(&row.hyperparameters)).unwrap_or(Hyperparameters {
        n_epochs: 0,
        batch_size: 0,
        learning_rate_multiplier: 0.0,
    });
    let est: Option<Estimate> = parse(row.estimate.as_deref());
    let running = status == JobStatus::Running;
    let elapsed = row.running_seconds
        + if running {
            row.run_started_at
                .map(|t| (now - t).max(0.0))
                .unwrap_or(0.0)
        } else {
            0.0
        };
    let entry = crate::store::QueueEntry {
        id: row.id.clone(),
        status: row.status.clone(),
        queue_order: row.queue_order,
        estimate: row.estimate.clone(),
        step: row.step,
        total_steps: row.total_steps,
        running_seconds: row.running_seconds,
        run_started_at: row.run_started_at,
    };
    let eta = running.then(|| estimate::remaining_seconds(&entry, now));
    let queue = queue.filter(|_| status == JobStatus::Queued);
    let spec_or = |f: fn(&JobSpec) -> i64, d: i64| spec.as_ref().map(f).unwrap_or(d);
    FineTuningJob {
        object: "fine_tuning.job".into(),
        id: row.id.clone(),
        created_at: row.created_at,
        error: parse(row.error.as_deref()),
        fine_tuned_model: row.fine_tuned_model.clone(),
        finished_at: row.finished_at,
        hyperparameters: hp,
        model: row.model.clone(),
        organization_id: row.user_id.clone(),
        result_files: parse(Some(&row.result_files)).unwrap_or_default(),
        seed: row.seed,
        status: row.status.clone(),
        trained_tokens: row.trained_tokens,
        training_file: row.training_file.clone(),
        validation_file: row.validation_file.clone(),
        estimated_finish: eta.map(|e| (now + e) as i64),
        integrations: Vec::new(),
        metadata: parse(row.metadata.as_deref()),
        method: MethodOut {
            r#type: "supervised".into(),
            supervised: SupervisedOut {
                hyperparameters: hp,
            },
        },
        user_provided_suffix: row.suffix.clone(),
        tuna: TunaJob {
            name: spec.as_ref().and_then(|s| s.name.clone()),
            method: spec.as_ref().map(|s| s.method.clone()).unwrap_or_default(),
            lora: spec.as_ref().and_then(|s| s.lora.clone()),
            max_seq_len: spec_or(|s| s.max_seq_len, 0),
            checkpoint_interval: spec.as_ref().and_then(|s| s.checkpoint_interval),
            eval_interval: spec.as_ref().and_then(|s| s.eval_interval),
            max_steps: spec.as_ref().and_then(|s| s.max_steps),
            learning_rate: spec.as_ref().map(|s| s.learning_rate).unwrap_or_default(),
            warmup_ratio: spec.as_ref().map(|s| s.warmup_ratio).unwrap_or_default(),
            sample_prompts: spec_or(|s| s.sample_prompts, 0),
            sample_max_tokens: spec_or(|s| s.sample_max_tokens, 0),
            queue_position: queue.map(|q| q.position),
            estimated_start: queue.map(|q| q.estimated_start as i64),
            progress: Progress {
                step: row.step,
                total_steps: row.total_steps.or(est.as_ref().map(|e| e.total_steps)),
                epoch: row.epoch,
                total_epochs: hp.n_epochs,
            },
            elapsed_seconds: elapsed,
            eta_seconds: eta,
            latest_metrics: parse(row.latest_metrics.as_deref()),
            estimate: est,
            retries: row.retries,
            device: row.device.clone(),
            pause_requested: running && row.control.as_deref() == Some("pause"),
        },
    }
}

pub fn render_event(e: &EventRow) -> JobEvent {
    JobEvent {
        object: "fine_tuning.job.event".into(),
        id: e.id.clone(),
        created_at: e.created_at,
        level: e.level.clone(),
        message: e.message.clone(),
        r#type: e.r#type.clone(),
        data: parse(e.data.as_deref()),
    }
}

pub fn render_checkpoint(c: &CheckpointRow) -> JobCheckpoint {
    let sample: Option<serde_json::Value> = parse(c.sample.as_deref());
    let samples = sample
        .as_ref()
        .and_then(|s| s.get("samples"))
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    JobCheckpoint {
        object: "fine_tuning.job.checkpoint".into(),
        id: c.id.clone(),
        created_at: c.created_at,
        fine_tuned_model_checkpoint: c.fine_tuned_model_checkpoint.clone(),
        fine_tuning_job_id: c.job_id.clone(),
        metrics: parse(Some(&c.metrics)).unwrap_or_default(),
        step_number: c.step,
        tuna: CheckpointTuna {
            kind: c.kind.clone(),
            epoch: sample
                .as_ref()
                .and_then(|s| s.get("epoch"))
                .and_then(|e| e.as_f64()),
            samples,
            download_url: format!(
                "/v1/fine_tuning/jobs/{}/checkpoints/{}/adapter",
                c.job_id, c.id
            ),
        },
    }
}

/// Queue positions of every queued job, and the slot a new job would get.
async fn queue_view(
    state: &AppState,
    new_job_seconds: f64,
) -> ApiResult<(HashMap<String, QueueSlot>, QueueSlot)> {
    let snapshot = state.store.queue_snapshot().await?;
    Ok(estimate::simulate_queue(
        &snapshot,
        state.scheduler.slots(),
        ids::now_f64(),
        new_job_seconds,
    ))
}

async fn render_one(state: &AppState, row: &JobRow) -> ApiResult<FineTuningJob> {
    let queue = if row.status() == JobStatus::Queued {
        queue_view(state, 0.0).await?.0.remove(&row.id)
    } else {
        None
    };
    Ok(render_job(row, queue.as_ref(), ids::now_f64()))
}

async fn owned(state: &AppState, user: &User, id: &str) -> ApiResult<JobRow> {
    state
        .store
        .get_job(&user.id, id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(id))
}

// ---------------------------------------------------------------------------------------------
// Planning: what a request resolves to, shared by job creation and `POST /v1/tuna/estimates`.

pub struct Plan {
    pub model: ModelRow,
    pub hp: Hyperparameters,
    pub spec: JobSpec,
    pub size: DatasetSize,
    pub estimate: Estimate,
}

async fn usable_file(
    store: &dyn Store,
    user: &User,
    id: &str,
    param: &'static str,
) -> ApiResult<FileRow> {
    let file = store
        .get_file(&user.id, id)
        .await?
        .ok_or_else(|| ApiError::file_not_found(id, Some(param)))?;
    let code = if param == "training_file" {
        "invalid_training_file"
    } else {
        "invalid_validation_file"
    };
    if file.purpose != "fine-tune" {
        return Err(ApiError::invalid_coded(
            format!(
                "file `{id}` has purpose `{}`, not `fine-tune`",
                file.purpose
            ),
            Some(param),
            code,
        ));
    }
    if file.status != "processed" {
        let why = file
            .status_details
            .clone()
            .unwrap_or_else(|| "the dataset check did not pass".into());
        return Err(ApiError::invalid_coded(
            format!(
                "file `{id}` cannot be trained on: {why}; see the file's `check` for every problem"
            ),
            Some(param),
            code,
        ));
    }
    Ok(file)
}

pub async fn plan_job(state: &AppState, user: &User, v: &ValidJobRequest) -> ApiResult<Plan> {
    let store = &*state.store;
    let model = store
        .get_model(&v.model)
        .await?
        .ok_or_else(|| ApiError::model_not_found(&v.model))?;
    let dir = std::path::PathBuf::from(&model.path);
    let cfg = tokio::task::spawn_blocking(move || QwenConfig::from_model_dir(&dir))
        .await?
        .map_err(ApiError::internal)?;
    let train = usable_file(store, user, &v.training_file, "training_file").await?;
    if let Some(val) = &v.validation_file {
        usable_file(store, user, val, "validation_file").await?;
    }
    let mut spec = v.spec.clone();
    spec.max_seq_len = spec.max_seq_len.min(cfg.max_position_embeddings as i64);
    let report: serde_json::Value = parse(train.check_report.as_deref()).unwrap_or_default();
    let mut size = dataset_size(&report)
        .ok_or_else(|| ApiError::internal(format!("file {} has no token statistics", train.id)))?;
    // The upload check counted with its own sequence length: count again if this job cuts
    // examples differently.
    if size.max_seq_len != spec.max_seq_len && size.longest > spec.max_seq_len.min(size.max_seq_len)
    {
        let path = state.blobs.local_path(&train.blob_key).await?;
        let inference = state.inference.clone();
        let model_dir = std::path::PathBuf::from(&model.path);
        let max = spec.max_seq_len as usize;
        let report = tokio::task::spawn_blocking(move || {
            let tok = inference.tokenizer(&model_dir).map_err(|e| e.to_string())?;
            check_dataset(&path, &tok, max).map_err(|e| e.to_string())
        })
        .await?
        .map_err(ApiError::Internal)?;
        let json = serde_json::to_value(&report).map_err(ApiError::internal)?;
        size = dataset_size(&json)
            .ok_or_else(|| ApiError::internal("the re-check has no token statistics"))?;
    }
    let hp = Hyperparameters {
        n_epochs: v.n_epochs.unwrap_or_else(|| auto_epochs(size.examples)),
        batch_size: v
            .batch_size
            .unwrap_or_else(|| auto_batch_size(size.examples)),
        learning_rate_multiplier: v.learning_rate_multiplier.unwrap_or(1.0),
    };
    spec.learning_rate = v
        .explicit_learning_rate
        .unwrap_or(hp.learning_rate_multiplier * base_learning_rate(&spec.method));
    let device = "cpu";
    let tps = estimate::throughput(
        store,
        &model_shape(&cfg),
        device,
        &spec.method,
        &cfg,
        state.settings.cpu_gflops,
    )
    .await?;
    let estimate = estimate::make_estimate(
        &size,
        &hp,
        spec.max_steps,
        &tps,
        state.settings.price_per_million_tokens,
        &state.settings.currency,
        device,
    );
    Ok(Plan {
        model,
        hp,
        spec,
        size,
        estimate,
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// `POST /v1/fine_tuning/jobs`.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> ApiResult<Json<FineTuningJob>> {
    let v = validate_job_request(req)?;
    let plan = plan_job(&state, &user, &v).await?;
    let queued = state
        .store
        .queue_snapshot()
        .await?
        .iter()
        .filter(|e| e.status == "queued")
        .count();
    if queued >= state.settings.max_queued_jobs {
        return Err(ApiError::Overloaded(format!(
            "the queue is full ({queued} jobs waiting); retry later"
        )));
    }
    let id = ids::new_id(ids::JOB);
    let mut spec = plan.spec;
    spec.model_id = format!(
        "ft:{}:{}:{}:{}",
        plan.model.name,
        user.name,
        v.suffix.as_deref().unwrap_or(""),
        &id[ids::JOB.len()..]
    );
    let new = NewJob {
        id: id.clone(),
        user_id: user.id.clone(),
        model: plan.model.name.clone(),
        training_file: v.training_file.clone(),
        validation_file: v.validation_file.clone(),
        suffix: v.suffix.clone(),
        seed: v
            .seed
            .unwrap_or_else(|| rand::random_range(0..i32::MAX as i64)),
        status: JobStatus::ValidatingFiles,
        hyperparameters: serde_json::to_string(&plan.hp).map_err(ApiError::internal)?,
        tuna: serde_json::to_string(&spec).map_err(ApiError::internal)?,
        estimate: Some(serde_json::to_string(&plan.estimate).map_err(ApiError::internal)?),
        metadata: v.metadata.as_ref().map(|m| m.to_string()),
        created_at: ids::now(),
    };
    let job = state.store.insert_job(&new).await?;
    let mut files = format!("Validating training file: {}", job.training_file);
    if let Some(val) = &job.validation_file {
        files.push_str(&format!(" and validation file: {val}"));
    }
    state.store.add_event(&NewEvent::info(&job, files)).await?;
    let e = &plan.estimate;
    let msg = format!(
        "Estimate: {} examples, {} tokens per epoch × {} epochs = {} tokens in {} steps; about {:.0} s at {:.0} tokens/s ({}); cost {:.4} {}",
        e.examples,
        e.tokens_per_epoch,
        e.n_epochs,
        e.total_tokens,
        e.total_steps,
        e.duration_seconds,
        e.tokens_per_second,
        e.throughput_source,
        e.cost,
        e.currency
    );
    state
        .store
        .add_event(&NewEvent {
            data: Some(serde_json::to_string(e).map_err(ApiError::internal)?),
            ..NewEvent::info(&job, msg)
        })
        .await?;
    let job = state
        .store
        .transition_job(
            &id,
            &[JobStatus::ValidatingFiles],
            JobStatus::Queued,
            &JobPatch::default(),
        )
        .await?
        .ok_or_else(|| ApiError::internal("a new job left validating_files on its own"))?;
    state
        .store
        .add_event(&NewEvent::info(
            &job,
            "Files validated, moving job to queued state",
        ))
        .await?;
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
    let queue = if rows.iter().any(|r| r.status() == JobStatus::Queued) {
        queue_view(&state, 0.0).await?.0
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

fn wrong_state(job: &JobRow, action: &str) -> ApiError {
    ApiError::invalid_coded(
        format!("job `{}` is {}; it cannot be {action}", job.id, job.status),
        None,
        "invalid_job_state",
    )
}

/// `POST /v1/fine_tuning/jobs/{id}/cancel`: stops the worker at once (kill).
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<FineTuningJob>> {
    let job = owned(&state, &user, &id).await?;
    if job.status().is_terminal() {
        return Err(wrong_state(&job, "cancelled"));
    }
    let patch = JobPatch {
        finished_at: Some(ids::now()),
        control: Some(None),
        ..JobPatch::default()
    };
    let Some(cancelled) = state
        .store
        .transition_job(&id, &JobStatus::ACTIVE, JobStatus::Cancelled, &patch)
        .await?
    else {
        // It finished meanwhile.
        let now = owned(&state, &user, &id).await?;
        return Err(wrong_state(&now, "cancelled"));
    };
    if job.status() == JobStatus::Running {
        state.scheduler.kill(&id);
    }
    state
        .store
        .add_event(&NewEvent::info(&cancelled, "Fine-tuning job cancelled"))
        .await?;
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
    let out = match job.status() {
        JobStatus::Paused => job,
        JobStatus::Queued | JobStatus::ValidatingFiles => {
            match state
                .store
                .transition_job(
                    &id,
                    &[JobStatus::Queued, JobStatus::ValidatingFiles],
                    JobStatus::Paused,
                    &JobPatch::default(),
                )
                .await?
            {
                Some(j) => {
                    state
                        .store
                        .add_event(&NewEvent::info(&j, "Job paused"))
                        .await?;
                    j
                }
                None => return Err(wrong_state(&owned(&state, &user, &id).await?, "paused")),
            }
        }
        JobStatus::Running => {
            let patch = JobPatch {
                control: Some(Some("pause".into())),
                ..JobPatch::default()
            };
            let Some(j) = state
                .store
                .patch_job(&id, &[JobStatus::Running], &patch)
                .await?
            else {
                return Err(wrong_state(&owned(&state, &user, &id).await?, "paused"));
            };
            state.scheduler.pause(&id);
            state
                .store
                .add_event(&NewEvent::info(
                    &j,
                    "Pause requested; the job stops after its current step",
                ))
                .await?;
            j
        }
        _ => return Err(wrong_state(&job, "paused")),
    };
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
    if job.status() != JobStatus::Paused {
        return Err(wrong_state(&job, "resumed"));
    }
    let patch = JobPatch {
        requeue: true,
        control: Some(None),
        ..JobPatch::default()
    };
    let Some(j) = state
        .store
        .transition_job(&id, &[JobStatus::Paused], JobStatus::Queued, &patch)
        .await?
    else {
        return Err(wrong_state(&owned(&state, &user, &id).await?, "resumed"));
    };
    state
        .store
        .add_event(&NewEvent::info(&j, "Job resumed"))
        .await?;
    state.scheduler.wake();
    Ok(Json(render_one(&state, &j).await?))
}

/// `GET /v1/fine_tuning/jobs/{id}/events?after&limit` (newest first), or with `stream=true` a
/// Server-Sent Events stream: every event so far, oldest first, then new ones as they happen,
/// ending with `data: [DONE]` once the job is final.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn events(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    owned(&state, &user, &id).await?;
    if q.stream == Some(true) {
        let permit = state.streams.acquire(&user.id)?;
        let stream = event_stream(state.store.clone(), id);
        let stream = crate::sse::guarded(stream, permit, state.shutdown.clone());
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let page = super::page(q.after.clone(), q.limit, 20, 100)?;
    let (rows, has_more) = state
        .store
        .list_events(&id, &page)
        .await?
        .ok_or_else(|| super::bad_cursor(&q.after))?;
    Ok(Json(List::new(rows.iter().map(render_event).collect(), has_more)).into_response())
}

struct EventFeed {
    store: Arc<dyn Store>,
    job_id: String,
    last_seq: i64,
    buf: VecDeque<EventRow>,
    /// The job is final: drain once more, then `[DONE]`.
    draining: bool,
    done: bool,
    /// Polls in a row that found nothing (idle streams poll less often).
    empty_polls: u32,
}

fn event_stream(
    store: Arc<dyn Store>,
    job_id: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let feed = EventFeed {
        store,
        job_id,
        last_seq: 0,
        buf: VecDeque::new(),
        draining: false,
        done: false,
        empty_polls: 0,
    };
    stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.buf.pop_front() {
                let event = Event::default()
                    .id(e.id.clone())
                    .json_data(render_event(&e))
                    .unwrap_or_default();
                return Some((Ok(event), f));
            }
            if f.done {
                return None;
            }
            let rows = match f.store.events_since(&f.job_id, f.last_seq, 100).await {
                Ok(r) => r,
                Err(e) => {
                    let err = ApiError::from(e);
                    f.done = true;
                    return Some((
                        Ok(Event::default().json_data(err.body()).unwrap_or_default()),
                        f,
                    ));
                }
            };
            if let Some(last) = rows.last() {
                f.last_seq = last.seq;
                f.buf.extend(rows);
                f.empty_polls = 0;
                continue;
            }
            if f.draining {
                f.done = true;
                return Some((Ok(Event::default().data("[DONE]")), f));
            }
            let final_status = matches!(f.store.get_job_unscoped(&f.job_id).await, Ok(Some(j)) if j.status().is_terminal());
            if final_status {
                // The last events may land just after the status: give them a moment.
                tokio::time::sleep(Duration::from_millis(300)).await;
                f.draining = true;
            } else {
                tokio::time::sleep(crate::sse::idle_poll_interval(f.empty_polls)).await;
                f.empty_polls = f.empty_polls.saturating_add(1);
            }
        }
    })
}

/// `GET /v1/fine_tuning/jobs/{id}/checkpoints?after&limit` (newest step first).
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn checkpoints(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<JobCheckpoint>>> {
    owned(&state, &user, &id).await?;
    let page = super::page(q.after.clone(), q.limit, 10, 100)?;
    let (rows, has_more) = state
        .store
        .list_checkpoints(&id, &page)
        .await?
        .ok_or_else(|| super::bad_cursor(&q.after))?;
    let mut list = List::new(
        rows.iter().map(render_checkpoint).collect::<Vec<_>>(),
        has_more,
    );
    list.first_id = list.data.first().map(|c| c.id.clone());
    list.last_id = list.data.last().map(|c| c.id.clone());
    Ok(Json(list))
}

/// `GET /v1/fine_tuning/jobs/{id}/metrics`: one row per optimizer step, oldest first.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn metrics(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<List<serde_json::Value>>> {
    owned(&state, &user, &id).await?;
    let rows = state.store.list_metrics(&id).await?;
    Ok(Json(List::new(
        rows.iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect(),
        false,
    )))
}

/// `GET /v1/fine_tuning/jobs/{id}/checkpoints/{ckpt}/adapter`: the checkpoint as a tar archive
/// (`<job>-step-<N>/` with the PEFT adapter files, or the full model's files); `ckpt` is the
/// checkpoint id, its model id or its step number. Resume state is left out.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn download(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, ckpt)): Path<(String, String)>,
) -> ApiResult<Response> {
    owned(&state, &user, &id).await?;
    let c = state
        .store
        .get_checkpoint(&user.id, &id, &ckpt)
        .await?
        .ok_or_else(|| ApiError::checkpoint_not_found(&ckpt))?;
    let dir = std::path::PathBuf::from(&c.path);
    let files = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || crate::archive::publishable_files(&dir)).await??
    };
    if files.is_empty() {
        return Err(ApiError::internal(format!(
            "checkpoint directory {} is empty or gone",
            dir.display()
        )));
    }
    let prefix = format!("{}-step-{}", c.job_id, c.step);
    let size = crate::archive::tar_size(&files);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let name = prefix.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = crate::archive::ChannelWriter::new(tx.clone());
        let result = crate::archive::write_tar(&dir, &name, &files, &mut w)
            .and_then(|()| std::io::Write::flush(&mut w));
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            tracing::error!(error = %e, "writing a checkpoint archive failed");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_LENGTH, size)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{prefix}.tar\""),
        )
        .body(body)
        .map_err(ApiError::internal)
}

/// `POST /v1/tuna/estimates`: what a job with this body would cost and when it would start.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn estimate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> ApiResult<Json<EstimateResponse>> {
    let v = validate_job_request(req)?;
    let plan = plan_job(&state, &user, &v).await?;
    let (_, next) = queue_view(&state, plan.estimate.duration_seconds).await?;
    let mut spec = plan.spec.clone();
    spec.model_id = String::new();
    let row = JobRow {
        id: String::new(),
        user_id: user.id.clone(),
        model: plan.model.name.clone(),
        training_file: v.training_file.clone(),
        validation_file: v.validation_file.clone(),
        suffix: v.suffix.clone(),
        seed: 0,
        status: JobStatus::Queued.as_str().into(),
        hyperparameters: serde_json::to_string(&plan.hp).map_err(ApiError::internal)?,
        tuna: serde_json::to_string(&spec).map_err(ApiError::internal)?,
        estimate: Some(serde_json::to_string(&plan.estimate).map_err(ApiError::internal)?),
        metadata: None,
        created_at: ids::now(),
        started_at: None,
        finished_at: None,
        fine_tuned_model: None,
        trained_tokens: None,
        error: None,
        step: 0,
        total_steps: None,
        epoch: 0.0,
        latest_metrics: None,
        retries: 0,
        control: None,
        queue_order: 0,
        device: None,
        running_seconds: 0.0,
        run_started_at: None,
        result_files: "[]".into(),
    };
    let rendered = render_job(&row, Some(&next), ids::now_f64());
    Ok(Json(EstimateResponse {
        object: "tuna.estimate".into(),
        model: plan.model.name,
        training_file: v.training_file,
        hyperparameters: plan.hp,
        tuna: rendered.tuna,
        estimate: plan.estimate,
        queue_position: next.position,
        estimated_start: next.estimated_start as i64,
    }))
}
