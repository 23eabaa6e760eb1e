//! Long-lived server-sent-event streams (job events with `stream=true`): a cap on open streams
//! per user, the end of every stream when the server shuts down, and how often an idle stream
//! looks for news.
//!
//! Issue 9, item 7: 1,500 idle event streams kept a core busy, each polling the database every
//! 250 ms. Now a user holds at most `max_event_streams_per_user` streams (more get 429), and an
//! idle stream polls less and less often, up to every [`MAX_IDLE_POLL`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// The first poll interval of a stream with nothing new, doubled per empty poll.
pub const FIRST_IDLE_POLL: Duration = Duration::from_millis(250);
pub const MAX_IDLE_POLL: Duration = Duration::from_secs(2);

/// How long to wait before the next poll after `empty_polls` polls in a row found nothing.
pub fn idle_poll_interval(empty_polls: u32) -> Duration {
    FIRST_IDLE_POLL
        .saturating_mul(1 << empty_polls.min(8))
        .min(MAX_IDLE_POLL)
}

/// Open streams per user.
#[derive(Debug)]
pub struct StreamSlots {
    per_user: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; dropping it (the stream ended or its client left) frees the place.
#[derive(Debug)]
pub struct StreamPermit {
    slots: Arc<StreamSlots>,
    user: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl StreamSlots {
    pub fn new(per_user: usize) -> Arc<Self> {
        Arc::new(StreamSlots {
            per_user: per_user.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Streams `user` has open now.
    pub fn open_for(&self, user: &str) -> usize {
        self.lock().get(user).copied().unwrap_or(0)
    }

    /// A place for one more stream of `user`, or 429 when they have the maximum open.
    pub fn acquire(self: &Arc<Self>, user: &str) -> Result<StreamPermit, ApiError> {
        let mut open = self.lock();
        let n = open.entry(user.to_string()).or_default();
        if *n >= self.per_user {
            return Err(ApiError::TooManyStreams(format!(
                "you have {} event streams open, the most allowed; close one first",
                self.per_user
            )));
        }
        *n += 1;
        Ok(StreamPermit {
            slots: self.clone(),
            user: user.to_string(),
        })
    }
}

/// `stream`, holding `permit` while it is open, ended with an error event (code
/// `server_shutting_down`) when `shutdown` fires, so the client knows to reconnect later.
pub fn guarded<S>(
    stream: S,
    permit: StreamPermit,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let stopped = shutdown.clone();
    let farewell = futures_util::stream::once(async move {
        Ok(Event::default()
            .json_data(ApiError::shutting_down().body())
            .unwrap_or_default())
    })
    .filter(move |_| std::future::ready(stopped.is_cancelled()));
    stream
        .take_until(async move { shutdown.cancelled_owned().await })
        .chain(farewell)
        .map(move |e| {
            let _open = &permit;
            e
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_polls_back_off_to_the_maximum() {
        assert_eq!(idle_poll_interval(0), FIRST_IDLE_POLL);
        assert_eq!(idle_poll_interval(1), FIRST_IDLE_POLL * 2);
        assert_eq!(idle_poll_interval(30), MAX_IDLE_POLL);
    }

    #[test]
    fn streams_are_capped_per_user_and_freed_on_drop() {
        let slots = StreamSlots::new(2);
        let a = slots.acquire("u").unwrap();
        let _b = slots.acquire("u").unwrap();
        let err = slots.acquire("u").unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.body().error.code.as_deref(), Some("too_many_streams"));
        let _other = slots.acquire("v").unwrap();
        drop(a);
        assert_eq!(slots.open_for("u"), 1);
        let _c = slots.acquire("u").unwrap();
    }

    #[tokio::test]
    async fn a_stream_ends_with_an_error_event_at_shutdown() {
        let slots = StreamSlots::new(1);
        let shutdown = CancellationToken::new();
        let endless = futures_util::stream::pending::<Result<Event, Infallible>>();
        let mut s = Box::pin(guarded(
            endless,
            slots.acquire("u").unwrap(),
            shutdown.clone(),
        ));
        shutdown.cancel();
        assert!(s.next().await.is_some(), "the farewell event");
        assert!(s.next().await.is_none());
        drop(s);
        assert_eq!(slots.open_for("u"), 0);
    }
}
