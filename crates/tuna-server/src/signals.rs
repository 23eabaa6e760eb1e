//! Wake-ups the database pushes (PostgreSQL `LISTEN/NOTIFY`): an idle node claims a job the moment
//! it is queued on any node, and a running job's worker checks its claim the moment the job is
//! cancelled, paused or taken over, instead of at its next poll or heartbeat. The notifications
//! come from a trigger on `jobs` (migration `20261221000000_notify-queue-and-control`), so every
//! path that changes a job sends them, on commit.
//!
//! Polling stays the fallback: SQLite has no `NOTIFY` ([`Subscription::none`] never fires), and
//! a notification sent while the listening connection was down is lost. So each time the
//! listener (re)connects it sends [`Signal::Resync`], on which every subscriber looks at
//! everything again, as at a poll.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;

/// A channel carrying "look at the queue" (no payload).
pub const QUEUED_CHANNEL: &str = "tuna_queued";
/// A channel carrying a job id whose claim or control changed.
pub const JOB_CHANNEL: &str = "tuna_job";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A job became claimable, or a running job ended.
    Queued,
    /// This running job was cancelled, paused, requeued or claimed again.
    Job(String),
    /// The listener (re)connected: notifications may have been missed, look at everything.
    Resync,
}

impl Signal {
    /// Whether the worker of `job_id` should check its claim now.
    pub fn concerns(&self, job_id: &str) -> bool {
        match self {
            Signal::Job(id) => id == job_id,
            Signal::Resync => true,
            Signal::Queued => false,
        }
    }
}

/// One subscriber's stream of [`Signal`]s.
pub struct Subscription(Option<broadcast::Receiver<Signal>>);

impl Subscription {
    /// A subscription that never fires (a store without notifications: poll).
    pub fn none() -> Self {
        Subscription(None)
    }

    /// The next signal; never returns when the store sends none. A subscriber that fell behind
    /// gets [`Signal::Resync`].
    pub async fn next(&mut self) -> Signal {
        if let Some(rx) = &mut self.0 {
            match rx.recv().await {
                Ok(s) => return s,
                Err(broadcast::error::RecvError::Lagged(_)) => return Signal::Resync,
                Err(broadcast::error::RecvError::Closed) => self.0 = None,
            }
        }
        std::future::pending().await
    }
}

/// The listening side of one PostgreSQL pool: one connection that `LISTEN`s, started on the first
/// subscription, reconnecting (with a back-off) whenever it drops, until the pool closes.
#[derive(Debug, Default)]
pub struct PgSignals {
    sender: std::sync::OnceLock<broadcast::Sender<Signal>>,
}

impl PgSignals {
    /// Subscribes (starting the listener on the first call; needs a Tokio runtime).
    pub fn subscribe(&self, pool: &PgPool) -> Subscription {
        let tx = self.sender.get_or_init(|| {
            let (tx, _) = broadcast::channel(256);
            tokio::spawn(listen(pool.clone(), tx.clone()));
            tx
        });
        Subscription(Some(tx.subscribe()))
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(5);

async fn listen(pool: PgPool, tx: broadcast::Sender<Signal>) {
    let mut retry = FIRST_RETRY;
    loop {
        if pool.is_closed() {
            return;
        }
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            // A dropped connection ends `try_recv` with `None`; this loop reconnects itself, so
            // that it knows when to send `Resync`.
            l.eager_reconnect(false);
            l.listen_all([QUEUED_CHANNEL, JOB_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for job notifications; polling until it can (next try in {retry:?})");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LAST_RETRY);
                continue;
            }
        };
        retry = FIRST_RETRY;
        tracing::debug!("listening for job notifications");
        let _ = tx.send(Signal::Resync);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let signal = match n.channel() {
                        JOB_CHANNEL => Signal::Job(n.payload().to_string()),
                        _ => Signal::Queued,
                    };
                    let _ = tx.send(signal);
                }
                Ok(None) => {
                    tracing::warn!(
                        "the connection listening for job notifications dropped; reconnecting"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for job notifications failed; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_check_their_claim_on_their_own_job_and_on_a_resync() {
        assert!(Signal::Job("a".into()).concerns("a"));
        assert!(!Signal::Job("b".into()).concerns("a"));
        assert!(Signal::Resync.concerns("a"));
        assert!(!Signal::Queued.concerns("a"));
    }
}
