//! Generation slots shared fairly between users (issue 9, item 5: one user's two long chats held
//! both slots and every other user got 429).
//!
//! A request asks for a slot and waits for it, at most `max_wait`; then it gets 429. A user holds
//! at most `per_user` slots at once (the server default leaves one slot for somebody else). When
//! a slot frees up it goes to the waiting request whose user holds the fewest slots, the earliest
//! of those first, so a second user is served next even while a first one keeps many requests
//! queued. Waiting requests are bounded per user and in all, so the queue itself stays small.
//!
//! A slot is handed to a waiter under the lock, before the waiter runs; a waiter that gives up
//! (timeout, client gone) after it was handed a slot gives it back, so no slot leaks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Waiting requests allowed per user, and in all.
pub const MAX_WAITING_PER_USER: usize = 8;
pub const MAX_WAITING: usize = 256;

pub struct FairSlots {
    total: usize,
    per_user: usize,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    free: usize,
    /// Slots held per user (users holding none are absent).
    held: HashMap<String, usize>,
    /// In arrival order.
    waiting: VecDeque<Waiter>,
    /// Waiters handed a slot that have not picked it up yet.
    granted: HashSet<u64>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    user: String,
    wake: oneshot::Sender<()>,
}

/// A held slot; dropping it frees the slot for the next waiter.
pub struct SlotPermit {
    slots: Arc<FairSlots>,
    user: String,
}

impl std::fmt::Debug for SlotPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPermit")
            .field("user", &self.user)
            .finish()
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        let mut st = self.slots.lock();
        self.slots.release_locked(&mut st, &self.user);
    }
}

/// Withdraws a waiter whose request stopped waiting (dropped, timed out).
struct WaitGuard<'a> {
    slots: &'a Arc<FairSlots>,
    id: u64,
    user: &'a str,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.slots.lock();
            if st.granted.remove(&self.id) {
                // Handed a slot it will not use: pass it on.
                self.slots.release_locked(&mut st, self.user);
            } else {
                st.waiting.retain(|w| w.id != self.id);
            }
        }
    }
}

impl FairSlots {
    pub fn new(total: usize, per_user: usize) -> Arc<Self> {
        let total = total.max(1);
        Arc::new(FairSlots {
            total,
            per_user: per_user.clamp(1, total),
            state: Mutex::new(SlotState {
                free: total,
                ..SlotState::default()
            }),
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn per_user(&self) -> usize {
        self.per_user
    }

    /// Slots held now.
    pub fn in_use(&self) -> usize {
        self.total - self.lock().free
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is consistent between statements; a panic elsewhere must not stop chat.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `user`, waiting at most `max_wait` (429 after that, 503 when `shutdown` fires).
    pub async fn acquire(
        self: &Arc<Self>,
        user: &str,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<SlotPermit, ApiError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.lock();
            let mine = st.waiting.iter().filter(|w| w.user == user).count();
            if mine >= MAX_WAITING_PER_USER || st.waiting.len() >= MAX_WAITING {
                return Err(ApiError::overloaded(format!(
                    "too many chat requests are waiting for a generation slot ({} of yours, at most \
                     {MAX_WAITING_PER_USER}); retry shortly",
                    mine
                )));
            }
            let id = st.next_id;
            st.next_id += 1;
            st.waiting.push_back(Waiter {
                id,
                user: user.to_string(),
                wake: tx,
            });
            self.dispatch(&mut st);
            id
        };
        let mut guard = WaitGuard {
            slots: self,
            id,
            user,
            armed: true,
        };
        let outcome = tokio::select! {
            r = rx => r.map_err(|_| ApiError::internal("a generation slot waiter was dropped")),
            () = tokio::time::sleep(max_wait) => Err(ApiError::overloaded(format!(
                "every generation slot stayed busy for {} s ({} slots, at most {} per user); retry shortly",
                max_wait.as_secs_f32(), self.total, self.per_user
            ))),
            () = shutdown.cancelled() => Err(ApiError::shutting_down()),
        };
        // A slot may have been handed over just as the wait ended: take it.
        let granted = self.lock().granted.remove(&id);
        if granted {
            guard.armed = false;
            return Ok(SlotPermit {
                slots: self.clone(),
                user: user.to_string(),
            });
        }
        drop(guard);
        match outcome {
            Ok(()) => Err(ApiError::internal("woken without a generation slot")),
            Err(e) => Err(e),
        }
    }

    fn release_locked(&self, st: &mut SlotState, user: &str) {
        if let Some(n) = st.held.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                st.held.remove(user);
            }
        }
        st.free += 1;
        self.dispatch(st);
    }

    /// Hands free slots to waiters: the user holding the fewest first, then arrival order.
    fn dispatch(&self, st: &mut SlotState) {
        while st.free > 0 {
            let held = |u: &str| st.held.get(u).copied().unwrap_or(0);
            let pick = st
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| held(&w.user) < self.per_user)
                .min_by_key(|(i, w)| (held(&w.user), *i))
                .map(|(i, _)| i);
            let Some(i) = pick else { break };
            let Some(w) = st.waiting.remove(i) else { break };
            *st.held.entry(w.user).or_default() += 1;
            st.free -= 1;
            st.granted.insert(w.id);
            // Every queued waiter has a live receiver: its guard removes it under this lock.
            let _ = w.wake.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_user_never_holds_more_than_their_share() {
        let slots = FairSlots::new(2, 1);
        let none = CancellationToken::new();
        let a1 = slots.acquire("a", WAIT, &none).await.unwrap();
        // a's second request waits although a slot is free…
        let err = slots
            .acquire("a", Duration::from_millis(50), &none)
            .await
            .unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        // …which b gets at once.
        let b1 = slots.acquire("b", WAIT, &none).await.unwrap();
        assert_eq!(slots.in_use(), 2);
        drop(a1);
        drop(b1);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_user_holding_fewest() {
        let slots = FairSlots::new(2, 2);
        let none = CancellationToken::new();
        let a1 = slots.acquire("a", WAIT, &none).await.unwrap();
        let a2 = slots.acquire("a", WAIT, &none).await.unwrap();
        // a queues first, then b: b must still be served first.
        let s = slots.clone();
        let n = none.clone();
        let a3 = tokio::spawn(async move { s.acquire("a", WAIT, &n).await.map(|_| "a") });
        tokio::task::yield_now().await;
        while slots.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let s = slots.clone();
        let n = none.clone();
        let b1 = tokio::spawn(async move {
            let p = s.acquire("b", WAIT, &n).await;
            p.map(|p| {
                drop(p);
                "b"
            })
        });
        while slots.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        drop(a1);
        assert_eq!(b1.await.unwrap().unwrap(), "b");
        drop(a2);
        assert_eq!(a3.await.unwrap().unwrap(), "a");
        assert_eq!(slots.in_use(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_wait_gives_its_slot_back() {
        let slots = FairSlots::new(1, 1);
        let none = CancellationToken::new();
        let a = slots.acquire("a", WAIT, &none).await.unwrap();
        let s = slots.clone();
        let n = none.clone();
        let waiter = tokio::spawn(async move { s.acquire("b", WAIT, &n).await.map(drop) });
        while slots.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(slots.waiting(), 0);
        drop(a);
        assert_eq!(slots.in_use(), 0, "no slot leaked to the dropped waiter");
        let _c = slots.acquire("c", WAIT, &none).await.unwrap();
    }

    #[tokio::test]
    async fn waiters_are_bounded_and_shutdown_ends_the_wait() {
        let slots = FairSlots::new(1, 1);
        let shutdown = CancellationToken::new();
        let _held = slots.acquire("x", WAIT, &shutdown).await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..MAX_WAITING_PER_USER {
            let s = slots.clone();
            let t = shutdown.clone();
            waiters.push(tokio::spawn(async move {
                s.acquire("a", WAIT, &t).await.map(drop)
            }));
        }
        while slots.waiting() < MAX_WAITING_PER_USER {
            tokio::task::yield_now().await;
        }
        let err = slots.acquire("a", WAIT, &shutdown).await.unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        shutdown.cancel();
        for w in waiters {
            let err = w.await.unwrap().unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}
