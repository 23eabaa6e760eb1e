//! What a job produced: its checkpoints (list, download, delete), its per-step metrics (paged),
//! and the deletions behind `DELETE /v1/models/{id}`.
//!
//! Deleting writes the store first (in one transaction with its event), then removes the files:
//! nothing ever points at files that are gone, and repeating a delete whose file removal failed
//! finishes it.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::Response;
use serde_json::{Value, json};
use tracing::instrument;

use super::owned;
use super::render::render_checkpoint;
use crate::artifacts as files;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiQuery, ApiResult};
use crate::lifecycle;
use crate::openai::types::{JobCheckpoint, List, MetricsQuery, PageQuery};
use crate::state::AppState;
use crate::store::{CheckpointRow, JobRow, JobStatus, NewEvent, Page};

/// `GET /v1/fine_tuning/jobs/{id}/checkpoints?after&limit` (newest step first).
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn checkpoints(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<JobCheckpoint>>> {
    owned(&state, &user, &id).await?;
    let page = crate::routes::page(q.after.clone(), q.limit, 10, 100)?;
    let (rows, has_more) = state
        .store
        .list_checkpoints(&id, &page)
        .await?
        .ok_or_else(|| crate::routes::bad_cursor(&q.after))?;
    let mut list = List::new(
        rows.iter().map(render_checkpoint).collect::<Vec<_>>(),
        has_more,
    );
    list.first_id = list.data.first().map(|c| c.id.clone());
    list.last_id = list.data.last().map(|c| c.id.clone());
    Ok(Json(list))
}

/// `GET /v1/fine_tuning/jobs/{id}/metrics?after=<step>&limit=N`: the trainer's rows (`train` for
/// every optimizer step, `eval` for every validation pass), oldest step first, at most `limit`
/// steps per page (default 1000, at most 10000); `last_id` is the last step, the next page's
/// `after`.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn metrics(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<List<Value>>> {
    owned(&state, &user, &id).await?;
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        None => 0,
        Some(a) => a.parse::<i64>().map_err(|_| {
            ApiError::invalid_param(
                format!("`after` must be a step number (the previous page's `last_id`), got `{a}`"),
                "after",
            )
        })?,
    };
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid_param(
            format!("`limit` must be between 1 and 10000, got {limit}"),
            "limit",
        ));
    }
    let (rows, has_more) = state.store.list_metrics(&id, after, limit).await?;
    let mut list = List::new(rows.iter().map(|r| r.data.clone()).collect(), has_more);
    list.first_id = rows.first().map(|r| r.step.to_string());
    list.last_id = rows.last().map(|r| r.step.to_string());
    Ok(Json(list))
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
    let dir = crate::checkpoints::local_dir(&*state.blobs, &state.settings.cache_root(), &c, false)
        .await?;
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

fn unfinished(job: &JobRow) -> ApiError {
    ApiError::invalid_coded(
        format!(
            "job `{}` is {}: its checkpoints can be deleted once it is finished (cancel it first)",
            job.id, job.status
        ),
        None,
        "invalid_job_state",
    )
}

/// Refuses to delete the weights behind `names` (model ids of one job) while another job of the
/// user started from one of them and still needs it: a job that is not finished, or one that
/// keeps a fine-tuned model or checkpoints, whose ids resolve through their starting model back
/// to the base (a DPO run after SFT, say). Its own models deleted first, it lets go.
async fn refuse_if_started_from(state: &AppState, user_id: &str, names: &[&str]) -> ApiResult<()> {
    let mut children = Vec::new();
    let mut page = Page {
        after: None,
        limit: 100,
    };
    while let Some((jobs, more)) = state.store.list_jobs(user_id, &page).await? {
        for j in &jobs {
            if !names.contains(&j.model.as_str()) {
                continue;
            }
            let holds = !j.status.is_terminal()
                || j.fine_tuned_model.is_some()
                || !state.store.job_checkpoints(&j.id).await?.is_empty();
            if holds {
                children.push(format!("`{}`", j.id));
            }
        }
        match jobs.last() {
            Some(last) if more => page.after = Some(last.id.clone()),
            _ => break,
        }
    }
    if children.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_coded(
        format!(
            "`{}` is the starting model of job {}, whose models are trained from its weights; delete that job's checkpoints and models first",
            names.first().copied().unwrap_or_default(),
            children.join(", ")
        ),
        Some("model"),
        "model_in_use",
    ))
}

/// Deletes checkpoint rows (with an event), then their files (blob store, this node's
/// directories and cached copies); the local bytes freed.
async fn delete_rows(
    state: &AppState,
    job: &JobRow,
    rows: &[CheckpointRow],
    message: String,
) -> ApiResult<u64> {
    let ids: Vec<String> = rows.iter().map(|c| c.id.clone()).collect();
    let event = NewEvent::info(job, message);
    let gone = state
        .store
        .delete_checkpoints(&job.id, &ids, Some(&event))
        .await?;
    Ok(crate::checkpoints::remove(&*state.blobs, &state.settings.cache_root(), &gone).await)
}

/// `DELETE /v1/fine_tuning/jobs/{id}/checkpoints`: every artifact of a finished job (its
/// checkpoints, so also its fine-tuned model, and the trainer's files); the job's record, events
/// and metrics stay.
#[instrument(skip_all, fields(user = %user.id, job.id = %id))]
pub async fn delete_all(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let mut job = owned(&state, &user, &id).await?;
    if !job.status.is_terminal() {
        return Err(unfinished(&job));
    }
    let rows = state.store.job_checkpoints(&id).await?;
    let names: Vec<&str> = job
        .fine_tuned_model
        .iter()
        .map(String::as_str)
        .chain(rows.iter().map(|c| c.fine_tuned_model_checkpoint.as_str()))
        .collect();
    refuse_if_started_from(&state, &job.user_id, &names).await?;
    if job.fine_tuned_model.is_some() {
        job = lifecycle::model_deleted(&*state.store, &job).await?;
    }
    let mut freed = if rows.is_empty() {
        0
    } else {
        delete_rows(
            &state,
            &job,
            &rows,
            format!("{} checkpoints deleted", rows.len()),
        )
        .await?
    };
    let train = files::train_dir(&state.settings.job_dir(&id));
    freed += tokio::task::spawn_blocking(move || files::remove_dirs(&[train])).await??;
    Ok(Json(json!({
        "object": "tuna.job_artifacts.deleted",
        "id": id,
        "deleted": true,
        "checkpoints": rows.len(),
        "freed_bytes": freed,
    })))
}

/// `DELETE /v1/models/{ft:…}` of a fine-tuned model: its weights (the job's final checkpoint)
/// go and the model id stops resolving; the job keeps its record and its other checkpoints.
pub async fn delete_fine_tuned_model(state: &AppState, job: &JobRow) -> ApiResult<()> {
    let newest = state.store.job_checkpoints(&job.id).await?;
    let names: Vec<&str> = job
        .fine_tuned_model
        .iter()
        .map(String::as_str)
        .chain(
            newest
                .first()
                .map(|c| c.fine_tuned_model_checkpoint.as_str()),
        )
        .collect();
    refuse_if_started_from(state, &job.user_id, &names).await?;
    let job = lifecycle::model_deleted(&*state.store, job).await?;
    if let Some(last) = newest.first() {
        delete_rows(
            state,
            &job,
            std::slice::from_ref(last),
            format!("Checkpoint at step {} deleted with the model", last.step),
        )
        .await?;
    }
    Ok(())
}

/// `DELETE /v1/models/{ft:…:ckpt-step-N}`: one checkpoint of a finished job. The newest
/// checkpoint of a job whose fine-tuned model exists holds that model: it goes with the model.
pub async fn delete_checkpoint_model(state: &AppState, c: &CheckpointRow) -> ApiResult<()> {
    let job = state
        .store
        .get_job(&c.user_id, &c.job_id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(&c.job_id))?;
    if !job.status.is_terminal() {
        return Err(unfinished(&job));
    }
    if let Some(model) = &job.fine_tuned_model {
        let newest = state.store.job_checkpoints(&job.id).await?;
        if newest.first().is_some_and(|n| n.id == c.id) {
            return Err(ApiError::invalid_coded(
                format!(
                    "checkpoint `{}` holds the weights of the fine-tuned model `{model}`; delete that model instead",
                    c.fine_tuned_model_checkpoint
                ),
                Some("model"),
                "checkpoint_in_use",
            ));
        }
    }
    refuse_if_started_from(state, &job.user_id, &[&c.fine_tuned_model_checkpoint]).await?;
    delete_rows(
        state,
        &job,
        std::slice::from_ref(c),
        format!("Checkpoint at step {} deleted", c.step),
    )
    .await?;
    Ok(())
}

/// Drops the resume state of a job that became final without a worker to do it.
pub async fn drop_resume_state(state: &AppState, job: &JobRow) {
    if job.status == JobStatus::Running {
        return;
    }
    let train = files::train_dir(&state.settings.job_dir(&job.id));
    let _ =
        tokio::task::spawn_blocking(move || files::drop_optimizer_state_except(&train, None)).await;
}
