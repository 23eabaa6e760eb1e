//! The scheduler: the machine's devices are slots (`cpu:0`, `cpu:1`, ..., and one `gpu:N` per GPU
//! offered); when a slot is free the next queued job of the slot's kind (`tuna.compute`) is claimed (one statement in the store, fair between users) and a worker
//! process is started for it (`tuna worker --data-dir D --job ID`, with the claim's `attempt` in
//! `TUNA_WORKER_ATTEMPT`). A supervisor task per worker waits for its exit and has the lifecycle
//! record what the job becomes:
//!
//! | worker exit                                  | job                                                       |
//! |----------------------------------------------|-----------------------------------------------------------|
//! | any, job final or claimed again meanwhile    | as it is (the worker finished it, or the user cancelled)  |
//! | any, a pause was requested                   | `paused` (the worker saved a resumable checkpoint)        |
//! | [`EXIT_STOPPED`], [`EXIT_PAUSED`], SIGINT/SIGTERM | `queued` in its place, no retry used (shutdown, signal) |
//! | [`EXIT_DISK_FULL`]                           | `failed`, code `disk_full`                                |
//! | anything else (crash, SIGKILL)               | `queued` to resume from the last checkpoint, up to `max_retries`; then `failed` |
//!
//! Workers run in their own process group, so a Ctrl-C in the server's terminal reaches only the
//! server, which then stops them itself: each gets `stop` on its stdin, saves a checkpoint at its
//! current step and exits; the server waits (bounded by `worker_stop_timeout`). A `pause` line asks
//! the same for a user's pause, and end-of-file (the server died) makes the worker stop the same
//! way. Cancel kills the worker outright.
//!
//! Every claim is a lease of [`lease_duration`] (default 30 s, `TUNA_LEASE_SECONDS`): the worker
//! process heartbeats every third of it, which also carries a pause requested on another node,
//! and exits at once ([`EXIT_FENCED`]) when its claim is gone (the job was cancelled, or taken
//! over after the lease ran out). Each loop of every scheduler (every `tuna serve`, every
//! `tuna worker` that joined, also one with no slots) first reaps expired leases
//! ([`lifecycle::reap_expired`]): a machine that died or froze gives its jobs back within a lease,
//! and several nodes on one database never take a job from a live worker. The scheduler also
//! records itself in the `workers` table (name, devices, memory, heartbeat) and claims only jobs
//! whose planned memory fits in what its running jobs leave of the machine's.
//!
//! Failures of the machinery are never a job's fault: a worker that cannot start (its executable
//! gone, a full disk, no more processes) puts the job back in its place and the scheduler backs
//! off; a claim that cannot be written (full disk) starts nothing; a supervisor that cannot
//! record an exit keeps trying, and start-up recovery settles whatever is left.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::DATABASE_ENV;
use crate::lifecycle::{self, StopReason};
use crate::openai::types::JobError;
use crate::signals::Signal;
use crate::spec::Compute;
use crate::state::Settings;
use crate::store::{
    ClaimRequest, GpuSlot, JobControl, JobRow, JobStatus, Store, StoreResult, WorkerRow,
};

/// The worker stopped on a `pause` request after saving a resumable checkpoint.
pub const EXIT_PAUSED: i32 = 10;
/// The worker stopped because its server went away (stdin closed); the next server resumes it.
pub const EXIT_ORPHANED: i32 = 11;
/// The worker stopped on a `stop` request or on SIGINT / SIGTERM, after saving a checkpoint.
pub const EXIT_STOPPED: i32 = 12;
/// The disk was full and the worker could not record the job's failure itself.
pub const EXIT_DISK_FULL: i32 = 13;
/// Set in a worker's environment by the server: watch stdin for requests and end-of-file.
pub const SUPERVISED_ENV: &str = "TUNA_WORKER_SUPERVISED";
/// The worker found its claim gone (cancelled, or taken over after its lease expired) and
/// stopped without writing anything more.
pub const EXIT_FENCED: i32 = 14;
/// The claim (`attempt`) a worker was started for.
pub const ATTEMPT_ENV: &str = "TUNA_WORKER_ATTEMPT";
/// Seconds a claim's lease lasts without a heartbeat (every node and worker of one database
/// should agree; tests shorten it).
pub const LEASE_ENV: &str = "TUNA_LEASE_SECONDS";
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The lease of a claim: `TUNA_LEASE_SECONDS` (fractional, at least 0.5 s), else 30 s.
/// A scheduler passes its own to the worker processes it starts.
pub fn lease_duration() -> Duration {
    std::env::var(LEASE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(lease_of)
        .unwrap_or(DEFAULT_LEASE)
}

/// A lease of `seconds` (at least 0.5 s).
pub fn lease_of(seconds: f64) -> Duration {
    Duration::from_secs_f64(if seconds.is_finite() {
        seconds.max(0.5)
    } else {
        30.0
    })
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

enum Control {
    Pause,
    Stop,
    Kill,
}

struct Running {
    control: mpsc::UnboundedSender<Control>,
    /// The job's planned memory, held while it runs here.
    memory_bytes: i64,
}

pub struct Scheduler {
    store: Arc<dyn Store>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    wake: Notify,
    /// This node's devices (`cpu:0`, ...); none on an API-only node.
    devices: Vec<String>,
    /// Free slots (indices into `devices`).
    free: Mutex<Vec<usize>>,
    /// Memory the jobs of this node may plan to use together (`None`: unknown, no limit).
    memory_bytes: Option<i64>,
    started_at: i64,
    /// Jobs with a worker (until its exit is recorded).
    running: Mutex<HashMap<String, Running>>,
    /// No claims before this instant (after a worker could not start, or a full disk), and the
    /// delay of the next hold.
    hold: Mutex<(Option<Instant>, Duration)>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        settings: Arc<Settings>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let devices = settings.devices();
        let memory_bytes = settings
            .memory_limit_bytes
            .or_else(crate::disk::total_memory_bytes)
            .and_then(|m| i64::try_from(m).ok());
        Arc::new(Scheduler {
            store,
            settings,
            shutdown,
            wake: Notify::new(),
            free: Mutex::new((0..devices.len()).rev().collect()),
            devices,
            memory_bytes,
            started_at: crate::ids::now(),
            running: Mutex::new(HashMap::new()),
            hold: Mutex::new((None, FIRST_BACKOFF)),
        })
    }

    /// Settles jobs left mid-creation before the first claim (see [`lifecycle::recover`]).
    pub async fn recover(&self) -> StoreResult<()> {
        lifecycle::recover(&*self.store).await
    }

    /// Runs the scheduling loop until the shutdown token is cancelled, then stops every worker
    /// (checkpoint and exit, bounded by `worker_stop_timeout`); the handle completes after that.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut signals = me.store.signals();
            loop {
                if let Err(e) = me.reap_and_register().await {
                    tracing::error!(error = %e, "reaping expired leases failed");
                }
                let held = me.held_for();
                if held.is_none()
                    && let Err(e) = me.fill_slots().await
                {
                    tracing::error!(error = %e, "scheduling failed");
                }
                // Woken by new jobs and finished workers of this node, by the database's
                // notifications (a job queued on any node, PostgreSQL only), and at the latest
                // after a poll interval (jobs another process queued on SQLite, expired leases).
                let nap = held
                    .unwrap_or(me.settings.poll_interval)
                    .min(me.settings.poll_interval);
                let until = Instant::now() + nap;
                loop {
                    tokio::select! {
                        () = me.shutdown.cancelled() => break,
                        _ = tokio::time::timeout_at(until, me.wake.notified()) => break,
                        signal = signals.next() => {
                            // Another job's claim changing is its own worker's business.
                            if matches!(signal, Signal::Queued | Signal::Resync) {
                                break;
                            }
                        }
                    }
                }
                if me.shutdown.is_cancelled() {
                    break;
                }
            }
            me.stop_workers().await;
        })
    }

    /// Asks the loop to look at the queue now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Jobs this server runs a worker for right now.
    pub fn running_jobs(&self) -> usize {
        lock(&self.running).len()
    }

    /// Puts the jobs of workers that stopped answering back in the queue, then records this
    /// node's heartbeat in the `workers` table (when it has devices).
    async fn reap_and_register(&self) -> StoreResult<()> {
        let now = crate::ids::now_f64();
        let reaped = lifecycle::reap_expired(&*self.store, now, self.settings.max_retries).await?;
        for job in &reaped {
            tracing::warn!(job = %job.id, worker = ?job.worker, status = %job.status, "lease expired");
        }
        if self.devices.is_empty() {
            return Ok(());
        }
        self.store
            .upsert_worker(&WorkerRow {
                name: self.settings.worker_name.clone(),
                devices: self.devices.join(","),
                memory_bytes: self.memory_bytes,
                started_at: self.started_at,
                last_heartbeat: now,
                device_info: self.gpu_info(),
            })
            .await
    }

    /// This node's GPU slots, described (`None` when it has none).
    pub fn gpu_info(&self) -> Option<BTreeMap<String, GpuSlot>> {
        let gpus: BTreeMap<String, GpuSlot> = self
            .devices
            .iter()
            .filter_map(|d| Some((d.clone(), self.settings.gpus.get(d)?.clone())))
            .collect();
        (!gpus.is_empty()).then_some(gpus)
    }

    /// This node's slots, and the worker name they are listed under.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Memory a job on `slot` may plan to use: what this node's running jobs leave, and for a
    /// GPU at most its own memory.
    fn memory_for(&self, slot: &str) -> Option<i64> {
        let gpu = self
            .settings
            .gpus
            .get(slot)
            .and_then(|g| g.memory_bytes)
            .and_then(|m| i64::try_from(m).ok());
        match (self.memory_left(), gpu) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Memory this node's running jobs leave.
    fn memory_left(&self) -> Option<i64> {
        let used: i64 = lock(&self.running).values().map(|r| r.memory_bytes).sum();
        self.memory_bytes.map(|m| m - used)
    }

    fn held_for(&self) -> Option<Duration> {
        let (until, _) = *lock(&self.hold);
        until.and_then(|u| u.checked_duration_since(Instant::now()))
    }

    /// Stops claiming for a while; each hold in a row doubles (up to a minute).
    fn hold(&self) -> Duration {
        let mut h = lock(&self.hold);
        let delay = h.1;
        *h = (Some(Instant::now() + delay), (delay * 2).min(MAX_BACKOFF));
        delay
    }

    fn release_hold(&self) {
        *lock(&self.hold) = (None, FIRST_BACKOFF);
    }

    /// Claims a job for each free slot, until the queue has nothing more for a slot's kind.
    async fn fill_slots(self: &Arc<Self>) -> StoreResult<()> {
        // Kinds (CPU, GPU) the queue had nothing for in this pass.
        let mut exhausted: Vec<Compute> = Vec::new();
        let kind = |slot: usize| Compute::of_slot(&self.devices[slot]).unwrap_or_default();
        loop {
            if self.shutdown.is_cancelled() || self.held_for().is_some() {
                return Ok(());
            }
            // The lowest free slot of a kind not exhausted yet: slots are tried in their order
            // (`cpu:0` first), whatever order they were freed in.
            let slot = {
                let mut free = lock(&self.free);
                let Some((i, _)) = free
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !exhausted.contains(&kind(**s)))
                    .min_by_key(|(_, s)| **s)
                else {
                    return Ok(());
                };
                free.remove(i)
            };
            let now = crate::ids::now_f64();
            let device = &self.devices[slot];
            let request = ClaimRequest {
                device,
                compute: kind(slot),
                worker: &self.settings.worker_name,
                memory_bytes: self.memory_for(device),
                now,
                lease_until: now + self.settings.lease.as_secs_f64(),
                max_running_per_user: self.settings.quotas.running_jobs,
            };
            let claimed = lifecycle::claim(&*self.store, &request).await;
            match claimed {
                Ok(Some(job)) => self.spawn_worker(job, slot).await,
                Ok(None) => {
                    lock(&self.free).push(slot);
                    exhausted.push(kind(slot));
                }
                Err(e) => {
                    lock(&self.free).push(slot);
                    let delay = self.hold();
                    tracing::error!(error = %e, "cannot claim a job; the next try is in {delay:?}");
                    return Err(e);
                }
            }
        }
    }

    fn worker_command(&self, job: &JobRow) -> std::io::Result<std::process::Command> {
        let dir = self.settings.job_dir(&job.id);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("worker.log"))?;
        let mut cmd = (self.settings.worker_launcher)(&self.settings.data_dir, &job.id);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(SUPERVISED_ENV, "1")
            .env(ATTEMPT_ENV, job.attempt.to_string())
            .env(LEASE_ENV, self.settings.lease.as_secs_f64().to_string())
            // Its own process group: a Ctrl-C in the server's terminal must not reach it.
            .process_group(0);
        if let Some(db) = &self.settings.database {
            // The environment, not the command line: a PostgreSQL URL may hold a password.
            cmd.env(DATABASE_ENV, db.url());
        }
        if self.settings.blob_store.is_some() {
            // Likewise: the S3 settings tests pass may hold credentials.
            cmd.envs(self.settings.blob_store_url().child_env());
        }
        Ok(cmd)
    }

    async fn spawn_worker(self: &Arc<Self>, job: JobRow, slot: usize) {
        let spawned = self
            .worker_command(&job)
            .and_then(|cmd| tokio::process::Command::from(cmd).spawn());
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                // Not the job's fault: it goes back to its place and the scheduler waits.
                let delay = self.hold();
                let why = if crate::disk::is_disk_full(&e) {
                    format!("disk full: {e}")
                } else {
                    e.to_string()
                };
                tracing::error!(job = %job.id, error = %why, "cannot start a worker; retrying in {delay:?}");
                let store = self.store.clone();
                self.persist("putting a job back in the queue", || {
                    lifecycle::start_failed(&*store, &job, &why, delay.as_secs().max(1))
                })
                .await;
                lock(&self.free).push(slot);
                return;
            }
        };
        self.release_hold();
        // Registered before any await, so a cancel or pause from now on reaches this worker.
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.running).insert(
            job.id.clone(),
            Running {
                control: tx.clone(),
                memory_bytes: job.memory_bytes.unwrap_or(0),
            },
        );
        // A pause asked for between the claim and the line above found no worker to tell.
        if let Ok(Some(j)) = self.store.get_job_unscoped(&job.id).await
            && j.control == Some(JobControl::Pause)
        {
            let _ = tx.send(Control::Pause);
        }
        if self.shutdown.is_cancelled() {
            let _ = tx.send(Control::Stop);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut stdin = child.stdin.take();
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    msg = rx.recv() => {
                        let line: &[u8] = match msg {
                            Some(Control::Pause) => b"pause\n",
                            Some(Control::Stop) => b"stop\n",
                            Some(Control::Kill) => { let _ = child.start_kill(); continue; }
                            // Never: the sender lives in `running` until this task removes it.
                            None => continue,
                        };
                        if let Some(s) = stdin.as_mut() {
                            let _ = s.write_all(line).await;
                            let _ = s.flush().await;
                        }
                    }
                }
            };
            drop(stdin);
            let log = me.settings.job_dir(&job.id).join("worker.log");
            let store = me.store.clone();
            let exit = Exit::of(&status);
            me.persist("recording a worker's exit", || {
                after_exit(&*store, &me.settings, &me.shutdown, &job, &exit, &log)
            })
            .await;
            lock(&me.running).remove(&job.id);
            lock(&me.free).push(slot);
            me.wake();
        });
    }

    /// Runs a store operation until it succeeds: a full disk must not leave a job without a
    /// recorded state. Gives up only while shutting down (start-up recovery settles it then).
    async fn persist<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut delay = Duration::from_millis(250);
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::error!(error = %e, "{what} failed; trying again in {delay:?}");
                    if self.shutdown.is_cancelled() && delay >= Duration::from_secs(4) {
                        return None;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Asks the job's worker to stop after its current step, keeping a resumable checkpoint.
    /// Returns false when this server runs no worker for the job.
    pub fn pause(&self, job_id: &str) -> bool {
        self.send(job_id, Control::Pause)
    }

    /// Kills the job's worker (cancel).
    pub fn kill(&self, job_id: &str) -> bool {
        self.send(job_id, Control::Kill)
    }

    fn send(&self, job_id: &str, c: Control) -> bool {
        lock(&self.running)
            .get(job_id)
            .is_some_and(|r| r.control.send(c).is_ok())
    }

    /// Every worker saves a checkpoint at its current step and exits; its job stays queued for
    /// the next start. Waits up to `worker_stop_timeout` for the exits to be recorded.
    async fn stop_workers(&self) {
        for r in lock(&self.running).values() {
            let _ = r.control.send(Control::Stop);
        }
        let deadline = Instant::now() + self.settings.worker_stop_timeout;
        while self.running_jobs() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.running_jobs();
        if left > 0 {
            tracing::warn!(
                "{left} workers did not stop within {:?}; they stop at their next step and the next start resumes their jobs",
                self.settings.worker_stop_timeout
            );
        }
    }
}

/// How a worker process ended.
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    described: String,
}

impl Exit {
    fn of(status: &std::io::Result<std::process::ExitStatus>) -> Self {
        match status {
            Ok(s) => Exit {
                code: s.code(),
                signal: s.signal(),
                described: s.to_string(),
            },
            Err(e) => Exit {
                code: None,
                signal: None,
                described: format!("unknown ({e})"),
            },
        }
    }
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// Records what a worker's exit means for its job (see the module's table).
async fn after_exit(
    store: &dyn Store,
    settings: &Settings,
    shutdown: &CancellationToken,
    claimed: &JobRow,
    exit: &Exit,
    log: &Path,
) -> StoreResult<()> {
    let Some(job) = store.get_job_unscoped(&claimed.id).await? else {
        return Ok(());
    };
    if job.status.is_terminal() {
        // The worker finished it, or the user cancelled: no resume will need its state.
        let train = crate::artifacts::train_dir(&settings.job_dir(&job.id));
        let _ = tokio::task::spawn_blocking(move || {
            crate::artifacts::drop_optimizer_state_except(&train, None)
        })
        .await;
        return Ok(());
    }
    if job.status != JobStatus::Running || job.attempt != claimed.attempt {
        // Claimed again, or paused/queued meanwhile.
        return Ok(());
    }
    if job.control == Some(JobControl::Pause) {
        lifecycle::worker_paused(store, &job).await?;
        return Ok(());
    }
    let stopped = matches!(exit.code, Some(EXIT_STOPPED | EXIT_PAUSED))
        || matches!(exit.signal, Some(SIGINT | SIGTERM));
    if stopped {
        let reason = if shutdown.is_cancelled() {
            StopReason::Shutdown
        } else {
            StopReason::Signal
        };
        lifecycle::worker_stopped(store, &job, reason).await?;
        return Ok(());
    }
    let tail = log_tail(log, 2000);
    if exit.code == Some(EXIT_DISK_FULL) {
        let err = JobError {
            code: "disk_full".into(),
            message: format!(
                "disk full: the worker could not write to the server's data disk; last output: {tail}"
            ),
            param: None,
        };
        lifecycle::fail(store, &job, Some(job.attempt), err).await?;
        return Ok(());
    }
    if exit.code == Some(EXIT_ORPHANED) {
        // Only happens when the pipe broke while this server lives on: resume like a crash.
        tracing::warn!(job = %job.id, "worker lost its stdin");
    }
    lifecycle::worker_crashed(store, &job, &exit.described, &tail, settings.max_retries).await?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The last `max` bytes of a log, as text, on one line.
pub fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_is_the_end_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "first line\nsecond\nthe end\n").unwrap();
        assert_eq!(log_tail(&p, 12), "ond the end");
        assert_eq!(log_tail(&dir.path().join("none"), 10), "");
    }
}
