//! The HTTP listener, built on hyper directly because `axum::serve` has no timeouts and no
//! connection cap (issue 9, item 7: 1,100 connections that never finished their headers made
//! `/health` unreachable for 45 s under an open-file limit of 1024).
//!
//! - Every connection must send a request's headers within `header_read_timeout` of opening or
//!   of its previous response (hyper starts the timer whenever it waits for a request head, so it
//!   is also the idle keep-alive timeout). A request body must keep arriving: at most
//!   `body_read_timeout` between two pieces (then 408).
//! - At most `max_connections` connections are open, kept below the open-file limit. At the cap
//!   a new connection closes the oldest connection that has no request in progress (one still
//!   sending its headers, or idle between requests), so connections that never finish their
//!   headers cannot lock others out; when every connection is busy, the new one is answered 503.
//! - On shutdown the listener closes at once (new connections are refused), each connection
//!   finishes its request in progress and closes, and after `drain_timeout` whatever is left is
//!   dropped.
//!
//! HTTP/1.1 only: the SDKs and browsers speak it to a plain-HTTP server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::error::ApiError;

/// Open files kept for the database, uploads, worker pipes and logs when the connection cap is
/// derived from the open-file limit.
const RESERVED_FDS: u64 = 128;
const MIN_CONNECTIONS: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// After shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
}

/// Raises this process's soft open-file limit to its hard limit (many systems start servers
/// at 1024 with a far higher hard limit); returns the soft limit in force.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    // Linux refuses more than `fs.nr_open` (1,048,576 by default), even under an infinite hard limit.
    let target = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(target);
        }
    }
    Some(lim.rlim_cur)
}

/// This process's soft open-file limit.
pub fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// `requested`, lowered to leave [`RESERVED_FDS`] of the open-file limit for everything else.
pub fn connection_cap(requested: usize) -> usize {
    match open_file_limit() {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            requested.min(room).max(MIN_CONNECTIONS)
        }
        None => requested.max(MIN_CONNECTIONS),
    }
}

struct Conn {
    /// Requests in progress (from their headers to the end of their response body).
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Connections {
    table: Mutex<BTreeMap<u64, Conn>>,
    next: AtomicU64,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Conn>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self) -> (u64, Arc<AtomicUsize>, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = CancellationToken::new();
        self.lock().insert(
            id,
            Conn {
                busy: busy.clone(),
                evict: evict.clone(),
            },
        );
        (id, busy, evict)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the oldest connection with no request in progress; false when all are busy.
    fn evict_oldest_idle(&self) -> bool {
        let mut table = self.lock();
        let idle = table
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| table.remove(&id)) {
            Some(conn) => {
                conn.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Counts one request in progress on its connection while alive.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `shutdown` fires, then drains (see the module docs).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    opts: ListenOptions,
    shutdown: CancellationToken,
) {
    let conns = Arc::new(Connections::default());
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    if conns.len() >= opts.max_connections && !conns.evict_oldest_idle() {
                        refuse(&stream);
                        continue;
                    }
                    let (id, busy, evict) = conns.add();
                    let conns = conns.clone();
                    let app = app.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        serve_connection(stream, app, &opts, busy, evict, shutdown).await;
                        conns.remove(id);
                    });
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of file descriptors: make room and try again shortly.
                    conns.evict_oldest_idle();
                    tracing::warn!(error = %e, open = conns.len(), "accept: out of file descriptors");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // A connection that failed before it was accepted (reset, aborted).
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "connections still open after the drain timeout; closing them"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    opts: &ListenOptions,
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let body_timeout = opts.body_read_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let request = Busy::enter(&busy);
        let app = app.clone();
        async move {
            let req = req.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
            let resp = match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            // The request stays in progress until its response body is done (streams too).
            Ok::<_, Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_progress = &request;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = evict.cancelled() => break,
        }
    }
}

/// Answers 503 on a connection over the cap when no open connection can make room.
fn refuse(stream: &TcpStream) {
    let error = ApiError::Unavailable {
        message: "the server has too many open connections; retry shortly".into(),
        code: "too_many_connections",
    };
    let body = serde_json::to_string(&error.body()).unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Best effort, never blocking: the socket's send buffer takes a small answer whole.
    let _ = stream.try_write(resp.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_is_evicted_first() {
        let conns = Connections::default();
        let (a, busy_a, evict_a) = conns.add();
        let (_b, _busy_b, evict_b) = conns.add();
        let (_c, _busy_c, evict_c) = conns.add();
        let _req = Busy::enter(&busy_a);
        assert!(conns.evict_oldest_idle());
        assert!(!evict_a.is_cancelled(), "a has a request in progress");
        assert!(evict_b.is_cancelled());
        assert!(!evict_c.is_cancelled());
        assert!(conns.evict_oldest_idle());
        assert!(evict_c.is_cancelled());
        assert!(!conns.evict_oldest_idle(), "only the busy one is left");
        assert_eq!(conns.len(), 1);
        conns.remove(a);
        assert_eq!(conns.len(), 0);
    }

    #[test]
    fn the_connection_cap_stays_below_the_open_file_limit() {
        let limit = open_file_limit().unwrap();
        let cap = connection_cap(usize::MAX);
        assert!(
            cap as u64
                <= limit
                    .saturating_sub(RESERVED_FDS)
                    .max(MIN_CONNECTIONS as u64)
        );
        assert_eq!(connection_cap(20), 20.min(cap));
    }
}
