//! `/v1/files`: uploads (multipart, streamed to the blob store, size-limited) with the dataset
//! check run on upload and its report kept with the file; list, get, content, delete.
//!
//! Every part of an upload is bounded: the file by `max_upload_bytes`, `purpose` and any other
//! field by [`MAX_FIELD_BYTES`] (read chunk by chunk and refused as soon as it is over, never
//! buffered whole nor quoted back), the file name by [`MAX_FILENAME_BYTES`]. Reports are bounded
//! by [`crate::checker`]: a file shows its stored issues, a list a few per file.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use tracing::instrument;

use crate::auth::AuthUser;
use crate::blob::BlobWriter;
use crate::checker::{
    CHECK_MAX_SEQ_LEN, LISTED_ISSUES, STORED_ISSUES, bounded_report, check_dataset,
};
use crate::error::{ApiError, ApiQuery, ApiResult, clip};
use crate::ids;
use crate::openai::types::{FileDeleted, FileListQuery, FileObject, List};
use crate::state::AppState;
use crate::store::{FileRow, Page};

/// Longest multipart field other than `file` (`purpose` is at most a few words).
pub const MAX_FIELD_BYTES: usize = 1024;
/// Longest accepted file name, in bytes (the usual file-system limit).
pub const MAX_FILENAME_BYTES: usize = 255;
/// Files read from the store at once while a list is built.
const LIST_BATCH: i64 = 100;

/// A file as the API shows it, with at most `max_issues` errors and warnings of its report.
pub fn render_file_with(f: &FileRow, max_issues: usize) -> FileObject {
    FileObject {
        id: f.id.clone(),
        object: "file".into(),
        bytes: f.bytes,
        created_at: f.created_at,
        filename: f.filename.clone(),
        purpose: f.purpose.clone(),
        status: f.status.clone(),
        status_details: f.status_details.clone(),
        expires_at: None,
        check: f
            .check_report
            .as_deref()
            .and_then(|s| bounded_report(s, max_issues)),
    }
}

/// A file as the API shows it, with its stored report.
pub fn render_file(f: &FileRow) -> FileObject {
    render_file_with(f, STORED_ISSUES)
}

/// Reads a small multipart field chunk by chunk, refusing it once it passes [`MAX_FIELD_BYTES`].
async fn small_field(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &str,
    limit: u64,
) -> ApiResult<String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        if bytes.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(ApiError::TooLarge {
                message: format!("the form field `{name}` is longer than {MAX_FIELD_BYTES} bytes"),
                param: Some(name.to_string()),
                code: "field_too_large",
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| {
        ApiError::invalid_param(format!("the form field `{name}` is not UTF-8 text"), name)
    })
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::file_too_large(limit)
    } else if crate::error::caused_by_timeout(&e) {
        crate::error::request_timeout()
    } else {
        ApiError::invalid(format!("invalid multipart body: {}", e.body_text()), "file")
    }
}

/// `POST /v1/files` (multipart: `file`, `purpose=fine-tune`).
#[instrument(skip_all, fields(user = %user.id))]
pub async fn upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<FileObject>> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::invalid(
            format!("expected a multipart/form-data body: {}", e.body_text()),
            "file",
        )
    })?;
    crate::quota::check_upload(&*state.store, &state.settings.quotas, &user, 0).await?;
    let limit = state.settings.max_upload_bytes;
    let id = ids::new_id(ids::FILE);
    let key = format!("files/{id}");
    let mut purpose = None;
    let mut stored: Option<(String, u64)> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        match field.name() {
            Some("purpose") => purpose = Some(small_field(&mut field, "purpose", limit).await?),
            Some("file") if stored.is_none() => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                if filename.len() > MAX_FILENAME_BYTES {
                    return Err(ApiError::invalid_param(
                        format!("the file name is longer than {MAX_FILENAME_BYTES} bytes"),
                        "file",
                    ));
                }
                let mut writer: Box<dyn BlobWriter> = state.blobs.writer(&key).await?;
                let mut size = 0u64;
                loop {
                    let chunk = match field.chunk().await {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        Err(e) => {
                            writer.abort().await;
                            return Err(multipart_error(e, limit));
                        }
                    };
                    size += chunk.len() as u64;
                    if size > limit {
                        writer.abort().await;
                        return Err(ApiError::file_too_large(limit));
                    }
                    if let Err(e) = writer.write(&chunk).await {
                        writer.abort().await;
                        return Err(e.into());
                    }
                }
                writer.finish().await?;
                stored = Some((filename, size));
            }
            // Other fields are ignored, as OpenAI does; read through boundedly.
            Some(other) => {
                let name = clip(other).into_owned();
                small_field(&mut field, &name, limit).await?;
            }
            None => {
                small_field(&mut field, "(unnamed)", limit).await?;
            }
        }
    }
    let Some((filename, bytes)) = stored else {
        return Err(ApiError::invalid(
            "the multipart body has no `file` field",
            "file",
        ));
    };
    if let Err(e) =
        crate::quota::check_upload(&*state.store, &state.settings.quotas, &user, bytes).await
    {
        state.blobs.delete(&key).await?;
        return Err(e);
    }
    let purpose = purpose.unwrap_or_default();
    if purpose != "fine-tune" {
        state.blobs.delete(&key).await?;
        return Err(ApiError::invalid(
            format!("`purpose` must be `fine-tune`, got `{}`", clip(&purpose)),
            "purpose",
        ));
    }

    // The check: token counts with the check model's template and tokenizer, on blocking threads.
    let model = state
        .store
        .get_model(&state.settings.check_model)
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "the check model `{}` is not registered",
                state.settings.check_model
            ))
        })?;
    let path = state.blobs.local_path(&key).await?;
    let inference = state.inference.clone();
    let report = tokio::task::spawn_blocking(move || {
        let tokenizer = inference
            .tokenizer(std::path::Path::new(&model.path))
            .map_err(|e| e.to_string())?;
        check_dataset(&path, &tokenizer, CHECK_MAX_SEQ_LEN).map_err(|e| e.to_string())
    })
    .await?
    .map_err(ApiError::Internal)?;
    let (status, details) = if report.ok {
        ("processed", None)
    } else {
        let first = report
            .errors
            .first()
            .map(|e| format!("line {}: {}: {}", e.line, e.code.as_str(), e.message))
            .unwrap_or_default();
        (
            "error",
            Some(format!(
                "{} error(s) found by the dataset check; first: {first}",
                report.stats.error_count
            )),
        )
    };
    let row = FileRow {
        id,
        user_id: user.id.clone(),
        filename,
        purpose,
        bytes: bytes as i64,
        created_at: ids::now(),
        status: status.into(),
        status_details: details,
        check_report: Some(serde_json::to_string(&report).map_err(ApiError::internal)?),
        blob_key: key,
    };
    state.store.insert_file(&row).await?;
    Ok(Json(render_file(&row)))
}

/// `GET /v1/files?after&limit&order&purpose`.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(q): ApiQuery<FileListQuery>,
) -> ApiResult<Json<List<FileObject>>> {
    let page = super::page(q.after.clone(), q.limit, 10_000, 10_000)?;
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return Err(ApiError::invalid(
                format!("`order` must be `asc` or `desc`, got `{}`", clip(o)),
                "order",
            ));
        }
    };
    // Read in batches, each row's stored report trimmed before the next batch is read: a page
    // of 10,000 files never holds 10,000 full reports at once.
    let mut data: Vec<FileObject> = Vec::new();
    let mut after = page.after.clone();
    let mut has_more;
    loop {
        let batch = Page {
            after: after.clone(),
            limit: (page.limit - data.len() as i64).min(LIST_BATCH),
        };
        let listed = state
            .store
            .list_files(&user.id, q.purpose.as_deref(), ascending, &batch)
            .await?;
        let Some((rows, more)) = listed else {
            if data.is_empty() {
                return Err(super::bad_cursor(&q.after));
            }
            // The last file of the previous batch was deleted meanwhile: end the page there.
            has_more = true;
            break;
        };
        has_more = more;
        after = rows.last().map(|f| f.id.clone());
        data.extend(rows.iter().map(|f| render_file_with(f, LISTED_ISSUES)));
        if !more || data.len() as i64 >= page.limit {
            break;
        }
    }
    let mut list = List::new(data, has_more);
    list.first_id = list.data.first().map(|f| f.id.clone());
    list.last_id = list.data.last().map(|f| f.id.clone());
    Ok(Json(list))
}

async fn owned(state: &AppState, user: &str, id: &str) -> ApiResult<FileRow> {
    state
        .store
        .get_file(user, id)
        .await?
        .ok_or_else(|| ApiError::file_not_found(id, None))
}

/// `GET /v1/files/{id}`.
#[instrument(skip_all, fields(user = %user.id, file.id = %id))]
pub async fn get(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<FileObject>> {
    Ok(Json(render_file(&owned(&state, &user.id, &id).await?)))
}

/// `GET /v1/files/{id}/content`: the bytes as uploaded, streamed.
#[instrument(skip_all, fields(user = %user.id, file.id = %id))]
pub async fn content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let file = owned(&state, &user.id, &id).await?;
    let reader = state.blobs.open(&file.blob_key).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, file.bytes)
        .header(
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                file.filename.replace(['"', '\\', '\r', '\n'], "_")
            ),
        )
        .body(body)
        .map_err(ApiError::internal)
}

/// `DELETE /v1/files/{id}`. A file an unfinished job still reads cannot be deleted.
#[instrument(skip_all, fields(user = %user.id, file.id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<FileDeleted>> {
    owned(&state, &user.id, &id).await?;
    if let Some(job) = state.store.active_job_using_file(&user.id, &id).await? {
        return Err(ApiError::invalid_coded(
            format!(
                "file `{id}` is used by job `{job}`, which has not finished; cancel the job first"
            ),
            None,
            "file_in_use",
        ));
    }
    let Some(file) = state.store.delete_file(&user.id, &id).await? else {
        return Err(ApiError::file_not_found(&id, None));
    };
    state.blobs.delete(&file.blob_key).await?;
    Ok(Json(FileDeleted {
        id,
        object: "file".into(),
        deleted: true,
    }))
}
