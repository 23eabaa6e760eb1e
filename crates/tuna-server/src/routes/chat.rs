//! `POST /v1/chat/completions`: answers with a base model or any checkpoint (its adapter applied
//! on the fly), streamed (`stream: true`, OpenAI's chunk format ending in `data: [DONE]`) or
//! not. The model is loaded and the prompt encoded before the response starts, so those errors
//! get their proper status; an error during a stream is sent as the last `data:` event.
//!
//! The request waits its turn for a generation slot ([`crate::slots`]). The generation stops at
//! the next token when the client goes away (the handler future, or the response stream, is
//! dropped and with it the [`crate::inference::CancelOnDrop`] guard), at the server's time limit (the answer so far,
//! `finish_reason: "length"`), or when the server shuts down (`503`, or an error event).

use std::convert::Infallible;
use std::ops::ControlFlow;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::instrument;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::ids;
use crate::inference::{self, InferError, Interrupt, Outcome};
use crate::openai::types::*;
use crate::state::AppState;
use crate::validate::validate_chat;

/// How long the end of a stream waits for a client that stopped reading.
const LAST_PIECE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

enum Piece {
    Text(String),
    Done(Outcome),
    Failed(ApiError),
}

fn usage(o: &Outcome) -> Usage {
    Usage {
        prompt_tokens: o.prompt_tokens as i64,
        completion_tokens: o.completion_tokens as i64,
        total_tokens: (o.prompt_tokens + o.completion_tokens) as i64,
    }
}

#[instrument(skip_all, fields(user = %user.id, model = %req.model))]
pub async fn completions(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let v = validate_chat(req)?;
    let target = super::models::resolve_target(&state, &user, &v.model).await?;
    let permit = state.inference.permit(&user.id, &state.shutdown).await?;
    // The time limit counts from here: waiting for the slot is bounded on its own.
    let (stop, client_gone) = state.inference.stop_signals();
    let id = ids::new_id(ids::CHAT);
    let created = ids::now();
    let seed = v.seed.unwrap_or_else(rand::random);
    let model = v.model.clone();
    let inference = state.inference.clone();

    if !v.stream {
        // Dropped with this future when the client disconnects: the generation stops at once.
        let _client_gone = client_gone;
        let (text, outcome) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let (loaded, adapter) = inference.load(&target)?;
            let prompt = inference::encode(&loaded, &v)?;
            let mut text = String::new();
            let outcome = inference::generate(
                &loaded,
                adapter.as_deref(),
                &v,
                &prompt,
                seed,
                &stop,
                |piece| {
                    text.push_str(piece);
                    ControlFlow::Continue(())
                },
            )?;
            Ok::<_, InferError>((text, outcome))
        })
        .await??;
        if outcome.interrupted == Some(Interrupt::ShuttingDown) {
            return Err(ApiError::shutting_down());
        }
        let body = ChatCompletion {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: text,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: outcome.finish_reason.into(),
            }],
            usage: usage(&outcome),
            system_fingerprint: None,
        };
        return Ok(Json(body).into_response());
    }

    let include_usage = v.include_usage;
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), InferError>>();
    let (tx, rx) = mpsc::channel::<Piece>(64);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let prepared = inference
            .load(&target)
            .and_then(|(loaded, adapter)| Ok((inference::encode(&loaded, &v)?, loaded, adapter)));
        let (prompt, loaded, adapter) = match prepared {
            Ok(p) => {
                if ready_tx.send(Ok(())).is_err() {
                    return;
                }
                p
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        // A closed channel means the client went away; a full one that stays full (a client that
        // stopped reading) ends at the time limit.
        let send = |piece: Piece| match runtime.block_on(stop.race(tx.send(piece))) {
            Ok(Ok(())) => ControlFlow::Continue(()),
            Ok(Err(_)) => ControlFlow::Break(Interrupt::ClientGone),
            Err(why) => ControlFlow::Break(why),
        };
        let result = inference::generate(
            &loaded,
            adapter.as_deref(),
            &v,
            &prompt,
            seed,
            &stop,
            |piece| send(Piece::Text(piece.to_string())),
        );
        let last = match result {
            Ok(o) if o.interrupted == Some(Interrupt::ClientGone) => return,
            Ok(o) if o.interrupted == Some(Interrupt::ShuttingDown) => {
                Piece::Failed(ApiError::shutting_down())
            }
            Ok(o) => Piece::Done(o),
            Err(e) => {
                if let InferError::Internal(detail) = &e {
                    tracing::error!(error = %detail, "generation failed mid-stream");
                }
                Piece::Failed(e.into())
            }
        };
        // The slot is free from here; the last piece (also the shutdown's error event) waits for
        // a slow reader, but boundedly.
        drop(permit);
        let _ = runtime.block_on(tokio::time::timeout(LAST_PIECE_WAIT, tx.send(last)));
    });
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(ApiError::internal(
                "the generation thread ended before it started",
            ));
        }
    }

    let chunk = move |delta: Delta,
                      finish: Option<&str>,
                      usage: Option<Usage>,
                      with_choice: bool| ChatCompletionChunk {
        id: id.clone(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.clone(),
        choices: if with_choice {
            vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish.map(str::to_string),
            }]
        } else {
            Vec::new()
        },
        system_fingerprint: None,
        usage,
    };
    let json = |c: &ChatCompletionChunk| Event::default().json_data(c).unwrap_or_default();
    let first = json(&chunk(
        Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
        },
        None,
        None,
        true,
    ));
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(move |piece| {
        let events: Vec<Event> = match piece {
            Piece::Text(t) => vec![json(&chunk(
                Delta {
                    role: None,
                    content: Some(t),
                },
                None,
                None,
                true,
            ))],
            Piece::Done(o) => {
                let mut v = vec![json(&chunk(
                    Delta::default(),
                    Some(o.finish_reason),
                    None,
                    true,
                ))];
                if include_usage {
                    v.push(json(&chunk(Delta::default(), None, Some(usage(&o)), false)));
                }
                v.push(Event::default().data("[DONE]"));
                v
            }
            // TGI's `From<InferError> for Event`: the error object is the last event.
            Piece::Failed(e) => vec![Event::default().json_data(e.body()).unwrap_or_default()],
        };
        futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>))
    });
    let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(first) })
        .chain(body)
        .map(move |e| {
            // Lives as long as the response stream: dropped when the client goes away.
            let _alive = &client_gone;
            e
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
