//! The scheduler: the machine's devices are slots (`cpu:0`, `cpu:1`, ...); when a slot is free the
//! first queued job is claimed (one `UPDATE … RETURNING` in the store) and a worker process is
//! started for it (`tuna worker --data-dir D --job ID`). A supervisor task per worker waits for
//! its exit and decides what the job becomes:
//!
//! | worker exit                         | job                                                   |
//! |-------------------------------------|-------------------------------------------------------|
//! | 0, status already final             | as the worker left it (succeeded / failed)            |
//! | [`EXIT_PAUSED`] after a pause       | `paused` (the worker saved a resumable checkpoint)    |
//! | anything else (crash, kill, signal) | `queued` again to resume from the last checkpoint, up to `max_retries`; then `failed` |
//! | any, job cancelled meanwhile        | stays `cancelled`                                     |
//!
//! The worker's stdin is a pipe from the server: a line `pause` asks it to stop after the current
//! step, and end-of-file (the server died) makes it stop the same way. Cancel kills it outright.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};

use crate::ids;
use crate::openai::types::JobError;
use crate::state::Settings;
use crate::store::{JobPatch, JobRow, JobStatus, NewEvent, Store, StoreResult};

/// The worker stopped on a `pause` request after saving a resumable checkpoint.
pub const EXIT_PAUSED: i32 = 10;
/// The worker stopped because its server went away (stdin closed); the next server resumes it.
pub const EXIT_ORPHANED: i32 = 11;
/// Set in a worker's environment by the server: watch stdin for requests and end-of-file.
pub const SUPERVISED_ENV: &str = "TUNA_WORKER_SUPERVISED";

enum Control {
    Pause,
    Kill,
}

struct Running {
    control: mpsc::UnboundedSender<Control>,
}

pub struct Scheduler {
    store: Arc<dyn Store>,
    settings: Arc<Settings>,
    wake: Notify,
    /// Free slot indices.
    free: Mutex<Vec<usize>>,
    running: Mutex<HashMap<String, Running>>,
    /// Set by [`Scheduler::shutdown`]: workers that stop now go back to the queue, not to `paused`.
    shutting_down: AtomicBool,
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>, settings: Arc<Settings>) -> Arc<Self> {
        let slots = settings.cpu_slots.max(1);
        Arc::new(Scheduler {
            store,
            settings,
            wake: Notify::new(),
            free: Mutex::new((0..slots).rev().collect()),
            running: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
        })
    }

    pub fn slots(&self) -> usize {
        self.settings.cpu_slots.max(1)
    }

    /// Jobs that were running when the server stopped go back to the queue in their old place
    /// (their workers resume from the last checkpoint); pending pauses complete.
    pub async fn recover(&self) -> StoreResult<()> {
        let now = ids::now_f64();
        for job in self.store.jobs_with_status(JobStatus::Running).await? {
            let ran = job.run_started_at.map(|t| (now - t).max(0.0));
            let patch = JobPatch {
                run_started_at: Some(None),
                add_running_seconds: ran,
                device: Some(None),
                ..JobPatch::default()
            };
            if job.control.as_deref() == Some("pause") {
                let patch = JobPatch {
                    control: Some(None),
                    ..patch
                };
                if let Some(j) = self
                    .store
                    .transition_job(&job.id, &[JobStatus::Running], JobStatus::Paused, &patch)
                    .await?
                {
                    self.store
                        .add_event(&NewEvent::info(
                            &j,
                            "The server restarted; the job is paused",
                        ))
                        .await?;
                }
            } else if let Some(j) = self
                .store
                .transition_job(&job.id, &[JobStatus::Running], JobStatus::Queued, &patch)
                .await?
            {
                self.store
                    .add_event(&NewEvent::info(&j, "The server restarted; the job is queued to resume from its last checkpoint"))
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs the scheduling loop until the process ends.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.fill_slots().await {
                    tracing::error!(error = %e, "scheduling failed");
                }
                // Woken by new jobs and finished workers; the timeout also picks up jobs that
                // another process (e.g. `tuna` on the same data directory) queued.
                let _ = tokio::time::timeout(Duration::from_secs(2), me.wake.notified()).await;
            }
        })
    }

    /// Asks the loop to look at the queue now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Jobs this server is running right now.
    pub fn running_jobs(&self) -> usize {
        lock(&self.running).len()
    }

    async fn fill_slots(self: &Arc<Self>) -> StoreResult<()> {
        loop {
            if self.shutting_down.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some(slot) = lock(&self.free).pop() else {
                return Ok(());
            };
            let device = format!("cpu:{slot}");
            match self.store.claim_next_queued(&device, ids::now_f64()).await {
                Ok(Some(job)) => self.spawn_worker(job, slot).await,
                Ok(None) => {
                    lock(&self.free).push(slot);
                    return Ok(());
                }
                Err(e) => {
                    lock(&self.free).push(slot);
                    return Err(e);
                }
            }
        }
    }

    async fn spawn_worker(self: &Arc<Self>, job: JobRow, slot: usize) {
        let dir = self.settings.job_dir(&job.id);
        let log_path = dir.join("worker.log");
        let child = (|| -> std::io::Result<tokio::process::Child> {
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?;
            let mut cmd = (self.settings.worker_launcher)(&self.settings.data_dir, &job.id);
            cmd.stdin(std::process::Stdio::piped())
                .stdout(log.try_clone()?)
                .stderr(log)
                .env(SUPERVISED_ENV, "1");
            tokio::process::Command::from(cmd).spawn()
        })();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot start a worker");
                let err = JobError {
                    code: "worker_start_failed".into(),
                    message: format!("the worker process could not start: {e}"),
                    param: None,
                };
                self.fail(&job, err).await;
                lock(&self.free).push(slot);
                self.wake();
                return;
            }
        };
        // Registered before any await, so a cancel or pause from now on reaches this worker.
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.running).insert(
            job.id.clone(),
            Running {
                control: tx.clone(),
            },
        );
        // A pause asked for between the claim and the line above found no worker to tell.
        if let Ok(Some(j)) = self.store.get_job_unscoped(&job.id).await
            && j.control.as_deref() == Some("pause")
        {
            let _ = tx.send(Control::Pause);
        }
        let retry_note = if job.retries > 0 {
            format!(" (retry {})", job.retries)
        } else {
            String::new()
        };
        let _ = self
            .store
            .add_event(&NewEvent::info(
                &job,
                format!(
                    "Fine-tuning job started on {}{retry_note}",
                    job.device.as_deref().unwrap_or("cpu")
                ),
            ))
            .await;
        let me = self.clone();
        tokio::spawn(async move {
            let mut stdin = child.stdin.take();
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    msg = rx.recv() => match msg {
                        Some(Control::Pause) => {
                            if let Some(s) = stdin.as_mut() {
                                let _ = s.write_all(b"pause\n").await;
                                let _ = s.flush().await;
                            }
                        }
                        Some(Control::Kill) => { let _ = child.start_kill(); }
                        // Never: the sender lives in `running` until this task removes it.
                        None => {}
                    },
                }
            };
            drop(stdin);
            lock(&me.running).remove(&job.id);
            lock(&me.free).push(slot);
            let code = match &status {
                Ok(s) => s.code(),
                Err(_) => None,
            };
            let described = match &status {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            if let Err(e) = me.after_exit(&job.id, code, &described, &log_path).await {
                tracing::error!(job = %job.id, error = %e, "handling a worker's exit failed");
            }
            me.wake();
        });
    }

    async fn after_exit(
        &self,
        job_id: &str,
        code: Option<i32>,
        described: &str,
        log: &Path,
    ) -> StoreResult<()> {
        let Some(job) = self.store.get_job_unscoped(job_id).await? else {
            return Ok(());
        };
        let now = ids::now_f64();
        // Close the run's clock whatever happened.
        let ran = job.run_started_at.map(|t| (now - t).max(0.0));
        let clock = JobPatch {
            run_started_at: Some(None),
            add_running_seconds: ran,
            ..JobPatch::default()
        };
        if job.status() != JobStatus::Running {
            // Final (the worker finished it, or the user cancelled): only the clock.
            if ran.is_some() {
                self.store
                    .patch_job(job_id, &[job.status()], &clock)
                    .await?;
            }
            return Ok(());
        }
        let user_pause = job.control.as_deref() == Some("pause");
        if code == Some(EXIT_PAUSED) && !user_pause && self.shutting_down.load(Ordering::SeqCst) {
            // Stopped for the server's shutdown: resume first thing at the next start.
            let patch = JobPatch {
                device: Some(None),
                ..clock
            };
            if let Some(j) = self
                .store
                .transition_job(job_id, &[JobStatus::Running], JobStatus::Queued, &patch)
                .await?
            {
                self.store.add_event(&NewEvent::info(&j, format!("The server is shutting down; the job stopped at step {} and stays queued", j.step))).await?;
            }
            return Ok(());
        }
        if code == Some(EXIT_PAUSED) {
            let patch = JobPatch {
                control: Some(None),
                ..clock
            };
            if let Some(j) = self
                .store
                .transition_job(job_id, &[JobStatus::Running], JobStatus::Paused, &patch)
                .await?
            {
                self.store
                    .add_event(&NewEvent::info(
                        &j,
                        format!("Job paused at step {}", j.step),
                    ))
                    .await?;
            }
            return Ok(());
        }
        if code == Some(EXIT_ORPHANED) {
            // Only happens when the pipe broke while this server lives on: resume like a crash.
            tracing::warn!(job = %job_id, "worker lost its stdin");
        }
        let tail = log_tail(log, 2000);
        if job.retries < self.settings.max_retries {
            let patch = JobPatch {
                retries: Some(job.retries + 1),
                device: Some(None),
                ..clock
            };
            if let Some(j) = self
                .store
                .transition_job(job_id, &[JobStatus::Running], JobStatus::Queued, &patch)
                .await?
            {
                let msg = format!(
                    "The worker exited unexpectedly ({described}); the job resumes from its last checkpoint (retry {} of {})",
                    j.retries, self.settings.max_retries
                );
                self.store
                    .add_event(&NewEvent::info(&j, msg).level("warn"))
                    .await?;
            }
        } else {
            let message = format!(
                "the worker exited unexpectedly ({described}) {} times; last output: {}",
                job.retries + 1,
                if tail.is_empty() {
                    "(none)".to_string()
                } else {
                    tail
                }
            );
            let err = JobError {
                code: "worker_crashed".into(),
                message,
                param: None,
            };
            if let Some(j) = self
                .store
                .patch_job(job_id, &[JobStatus::Running], &clock)
                .await?
            {
                self.fail(&j, err).await;
            }
        }
        Ok(())
    }

    async fn fail(&self, job: &JobRow, err: JobError) {
        let patch = JobPatch {
            finished_at: Some(ids::now()),
            error: Some(Some(serde_json::to_string(&err).unwrap_or_default())),
            ..JobPatch::default()
        };
        match self
            .store
            .transition_job(
                &job.id,
                &[JobStatus::Running, JobStatus::Queued],
                JobStatus::Failed,
                &patch,
            )
            .await
        {
            Ok(Some(j)) => {
                let _ = self
                    .store
                    .add_event(
                        &NewEvent::info(&j, format!("Fine-tuning job failed: {}", err.message))
                            .level("error"),
                    )
                    .await;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot mark the job failed"),
        }
    }

    /// Asks the job's worker to stop after its current step, keeping a resumable checkpoint.
    /// Returns false when this server runs no worker for the job.
    pub fn pause(&self, job_id: &str) -> bool {
        lock(&self.running)
            .get(job_id)
            .is_some_and(|r| r.control.send(Control::Pause).is_ok())
    }

    /// Kills the job's worker (cancel).
    pub fn kill(&self, job_id: &str) -> bool {
        lock(&self.running)
            .get(job_id)
            .is_some_and(|r| r.control.send(Control::Kill).is_ok())
    }

    /// Graceful shutdown: every worker stops after its current step (saving a resumable
    /// checkpoint) and its job stays queued for the next start. Waits up to `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for r in lock(&self.running).values() {
            let _ = r.control.send(Control::Pause);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.running_jobs() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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
    use crate::db::SqliteStore;
    use crate::store::{NewJob, User};

    #[tokio::test]
    async fn recovery_requeues_running_jobs_in_place_and_completes_pauses() {
        let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
        store
            .create_user(
                &User {
                    id: "u".into(),
                    name: "u".into(),
                    created_at: 0,
                },
                "h",
                "p",
            )
            .await
            .unwrap();
        for id in ["run", "pausing", "waiting"] {
            let j = NewJob {
                id: id.into(),
                user_id: "u".into(),
                model: "demo".into(),
                training_file: "f".into(),
                validation_file: None,
                suffix: None,
                seed: 0,
                status: JobStatus::Queued,
                hyperparameters: "{}".into(),
                tuna: "{}".into(),
                estimate: None,
                metadata: None,
                created_at: 0,
            };
            store.insert_job(&j).await.unwrap();
        }
        store.claim_next_queued("cpu:0", 10.0).await.unwrap();
        store.claim_next_queued("cpu:1", 10.0).await.unwrap();
        store
            .patch_job(
                "pausing",
                &[JobStatus::Running],
                &JobPatch {
                    control: Some(Some("pause".into())),
                    ..JobPatch::default()
                },
            )
            .await
            .unwrap();

        let sched = Scheduler::new(store.clone(), Arc::new(Settings::new("/nonexistent")));
        sched.recover().await.unwrap();
        let run = store.get_job_unscoped("run").await.unwrap().unwrap();
        assert_eq!(run.status(), JobStatus::Queued);
        assert!(run.run_started_at.is_none() && run.running_seconds > 0.0);
        assert_eq!(
            store
                .get_job_unscoped("pausing")
                .await
                .unwrap()
                .unwrap()
                .status(),
            JobStatus::Paused
        );
        // The interrupted job keeps its place ahead of the one that was waiting.
        let order: Vec<String> = store
            .queue_snapshot()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(order, ["run", "waiting"]);
    }

    #[test]
    fn log_tail_is_the_end_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "first line\nsecond\nthe end\n").unwrap();
        assert_eq!(log_tail(&p, 12), "ond the end");
        assert_eq!(log_tail(&dir.path().join("none"), 10), "");
    }
}
