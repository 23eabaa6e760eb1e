//! `GET /v1/fine_tuning/jobs/{id}/events`: a page of events (newest first, at most 100), or with
//! `?stream=true` a Server-Sent Events stream: every event so far, oldest first, then new ones as
//! they happen, ending with `data: [DONE]` once the job is final.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tracing::instrument;

use super::owned;
use super::render::render_event;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiQuery, ApiResult};
use crate::openai::types::{EventsQuery, List};
use crate::state::AppState;
use crate::store::{EventRow, Store};

/// Events read from the store per poll of a stream.
const STREAM_BATCH: i64 = 100;

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
    let page = crate::routes::page(q.after.clone(), q.limit, 20, 100)?;
    let (rows, has_more) = state
        .store
        .list_events(&id, &page)
        .await?
        .ok_or_else(|| crate::routes::bad_cursor(&q.after))?;
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
            let rows = match f
                .store
                .events_since(&f.job_id, f.last_seq, STREAM_BATCH)
                .await
            {
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
            let final_status = matches!(f.store.get_job_unscoped(&f.job_id).await, Ok(Some(j)) if j.status.is_terminal());
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
