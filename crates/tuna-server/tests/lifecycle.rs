//! Jobs over HTTP against limits and clean-up (issue 9): per-user quotas, admission control,
//! fair share between users, a worker that cannot start, checkpoint retention and the optimizer
//! state only a resume needs, and the deletion of models, checkpoints and a job's artifacts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, TestServer, create, messages, metric_steps, tiny_job, upload};
use serde_json::{Value, json};

#[test]
fn worker_process_entry() {
    common::run_worker_if_asked();
}

const T: Duration = Duration::from_secs(300);

/// The steps of a job's checkpoints, newest first.
async fn checkpoint_steps(c: &Client, job: &str) -> Vec<i64> {
    c.get(&format!("/v1/fine_tuning/jobs/{job}/checkpoints?limit=100"))
        .await
        .body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["step_number"].as_i64().unwrap())
        .collect()
}

fn ckpt_dirs(t: &TestServer, job: &str) -> Vec<(i64, bool)> {
    let train = t.dir.path().join("jobs").join(job).join("train");
    let mut out: Vec<(i64, bool)> = std::fs::read_dir(&train)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
                    Some((step, e.path().join("optimizer.safetensors").exists()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_and_admission_control_refuse_with_the_limit_named() {
    let t = TestServer::start_with(|s| {
        s.quotas.queued_jobs = Some(1);
        s.quotas.files = Some(2);
        s.quotas.stored_bytes = Some(1 << 20);
        // Nothing runs: jobs stay queued.
        s.cpu_slots = 1;
        s.memory_limit_bytes = Some(400 << 20);
    })
    .await;
    let c = t.user("q").await;
    let file = upload(&c).await;
    // Keep the only slot busy with another user's job so that `q`'s jobs wait.
    let other = t.user("other").await;
    let of = upload(&other).await;
    let busy = create(&other, &tiny_job(&of, 100_000, 50_000)).await;
    other.wait_job(&busy, T, |j| j["status"] == "running").await;

    let a = create(&c, &tiny_job(&file, 2, 2)).await;
    let refused = c.post("/v1/fine_tuning/jobs", &tiny_job(&file, 2, 2)).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["type"], "insufficient_quota");
    assert_eq!(refused.body["error"]["code"], "quota_exceeded");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("quota `queued_jobs` (1) reached: you have 1 jobs waiting"),
        "{}",
        refused.body
    );
    // The estimate route says the same before anything is created.
    let est = c.post("/v1/tuna/estimates", &tiny_job(&file, 2, 2)).await;
    assert_eq!(est.status, 429, "{:?}", est.body);

    // Files: the second upload fits, a third does not; stored bytes count the uploads.
    let second = c.upload("identity-12.jsonl").await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    let third = c.upload("identity-12.jsonl").await;
    assert_eq!(third.status, 429, "{:?}", third.body);
    assert!(
        third.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("quota `files` (2)")
    );
    let status = c.get("/v1/tuna/status").await.body;
    assert_eq!(status["quotas"]["files"], 2);
    assert_eq!(status["usage"]["files"], 2);
    assert_eq!(status["usage"]["queued_jobs"], 1);

    // Stored bytes count the checkpoints a job will keep: ten LoRA checkpoints do not fit 1 MiB.
    c.post(&format!("/v1/fine_tuning/jobs/{a}/cancel"), &json!({}))
        .await;
    let many = c
        .post("/v1/fine_tuning/jobs", &tiny_job(&file, 10, 1))
        .await;
    assert_eq!(many.status, 429, "{:?}", many.body);
    assert!(
        many.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("quota `stored_bytes` (1.0 MiB) reached"),
        "{}",
        many.body
    );
    // Admission control: full fine-tuning of the demo needs more than the 400 MiB allowed.
    let mut full = tiny_job(&file, 2, 2);
    full["tuna"] = json!({"method": "full", "max_seq_len": 64, "max_steps": 2});
    let r = c.post("/v1/fine_tuning/jobs", &full).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "exceeds_machine");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("of memory to train"),
        "{}",
        r.body
    );
    other
        .post(&format!("/v1/fine_tuning/jobs/{busy}/cancel"), &json!({}))
        .await;
    t.server.stop().await.unwrap();
}

/// A data directory on a small tmpfs (we run as root), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoints_that_do_not_fit_the_disk_are_refused_at_creation() {
    // 256 MiB: four full checkpoints of the demo model (~90 MB each) and its optimizer state
    // (~160 MB) do not fit; LoRA's do. Without a tmpfs, the free space of the test's disk less a
    // reserve stands in (other programs writing meanwhile can disturb that one).
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let disk = SmallDisk::mount(&data, "256m");
    let free = tuna_server::disk::free_bytes(root.path()).unwrap();
    eprintln!(
        "{}",
        if disk.is_some() {
            "disk admission: ran on a 256 MiB tmpfs"
        } else {
            "disk admission: tmpfs refused; ran with a reserve leaving 300 MiB of the disk"
        }
    );
    let mut s = common::settings(&data);
    if disk.is_none() {
        s.disk_reserve_bytes = free.saturating_sub(300 << 20);
    }
    let server = tuna_server::RunningServer::start(s, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_, key) = tuna_server::auth::create_user(&*server.state.store, "disk")
        .await
        .unwrap();
    let c = Client::new(&server.url(), &key);
    let file = upload(&c).await;
    let mut full = tiny_job(&file, 4, 1);
    full["tuna"] =
        json!({"method": "full", "max_seq_len": 64, "max_steps": 4, "checkpoint_interval": 1});
    let r = c.post("/v1/tuna/estimates", &full).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "exceeds_machine");
    assert_eq!(r.body["error"]["param"], "tuna.keep_checkpoints");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checkpoints need about"),
        "{}",
        r.body
    );
    // A LoRA job's checkpoints are small: it is admitted.
    assert_eq!(
        c.post("/v1/tuna/estimates", &tiny_job(&file, 4, 1))
            .await
            .status,
        200
    );
    server.stop().await.unwrap();
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_user_starts_before_the_first_users_queue() {
    let t = TestServer::start_with(|s| s.cpu_slots = 1).await;
    let a = t.user("a").await;
    let b = t.user("b").await;
    let fa = upload(&a).await;
    let fb = upload(&b).await;
    let first = create(&a, &tiny_job(&fa, 100_000, 50_000)).await;
    a.wait_job(&first, T, |j| j["status"] == "running").await;
    let mut a_jobs = Vec::new();
    for _ in 0..3 {
        a_jobs.push(create(&a, &tiny_job(&fa, 1, 1)).await);
    }
    let bj = b.post("/v1/fine_tuning/jobs", &tiny_job(&fb, 1, 1)).await;
    assert_eq!(bj.status, 200);
    // B's job is next, though A queued three before it: positions say so.
    assert_eq!(bj.body["tuna"]["queue_position"], 1, "{}", bj.body);
    let b_id = bj.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        a.get(&format!("/v1/fine_tuning/jobs/{}", a_jobs[0]))
            .await
            .body["tuna"]["queue_position"],
        2
    );
    a.post(&format!("/v1/fine_tuning/jobs/{first}/cancel"), &json!({}))
        .await;
    b.wait_status(&b_id, "succeeded", T).await;
    // Start order from the store: B before every one of A's queued jobs.
    let store = &t.server.state.store;
    let b_claim = store
        .get_job_unscoped(&b_id)
        .await
        .unwrap()
        .unwrap()
        .claimed_at
        .unwrap();
    for id in &a_jobs {
        a.wait_status(id, "succeeded", T).await;
        let claimed = store
            .get_job_unscoped(id)
            .await
            .unwrap()
            .unwrap()
            .claimed_at
            .unwrap();
        assert!(claimed > b_claim, "A's {id} started before B's job");
    }
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_cannot_start_leaves_the_job_queued_without_a_retry() {
    let launches = Arc::new(AtomicUsize::new(0));
    let counter = launches.clone();
    let t = TestServer::start_with(move |s| {
        let real = common::test_worker_launcher();
        s.worker_launcher = Arc::new(move |dir, job| {
            if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                // What a deleted or replaced executable gives.
                return std::process::Command::new("/nonexistent/tuna");
            }
            real(dir, job)
        });
    })
    .await;
    let c = t.user("start").await;
    let file = upload(&c).await;
    let id = create(&c, &tiny_job(&file, 2, 2)).await;
    let done = c.wait_status(&id, "succeeded", T).await;
    assert_eq!(done["tuna"]["retries"], 0, "not the job's fault");
    assert!(launches.load(Ordering::SeqCst) >= 3);
    let msgs = messages(&c, &id).await;
    let failures = msgs
        .iter()
        .filter(|m| m.starts_with("Could not start a worker process") && m.contains("stays queued"))
        .count();
    assert_eq!(failures, 2, "{msgs:?}");
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_optimizer_state_and_deleting_models_and_artifacts() {
    let t = TestServer::start().await;
    let c = t.user("clean").await;
    let file = upload(&c).await;

    // A long run keeping 3 checkpoints: paused, only the newest has optimizer state.
    let mut body = tiny_job(&file, 100_000, 1);
    body["tuna"]["keep_checkpoints"] = json!(3);
    let long = create(&c, &body).await;
    c.wait_job(&long, T, |j| {
        j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= 5
    })
    .await;
    c.post(&format!("/v1/fine_tuning/jobs/{long}/pause"), &json!({}))
        .await;
    let paused = c.wait_status(&long, "paused", T).await;
    let step = paused["tuna"]["progress"]["step"].as_i64().unwrap();
    let dirs = ckpt_dirs(&t, &long);
    assert_eq!(
        dirs,
        [(step - 2, false), (step - 1, false), (step, true)],
        "three kept, the newest resumable"
    );
    assert_eq!(
        checkpoint_steps(&c, &long).await,
        [step, step - 1, step - 2]
    );
    // Not while it can still run.
    let busy = c
        .delete(&format!("/v1/fine_tuning/jobs/{long}/checkpoints"))
        .await;
    assert_eq!(busy.status, 400);
    assert_eq!(busy.body["error"]["code"], "invalid_job_state");
    // Cancelled: nothing will resume, so no optimizer state is kept.
    c.post(&format!("/v1/fine_tuning/jobs/{long}/cancel"), &json!({}))
        .await;
    assert!(ckpt_dirs(&t, &long).iter().all(|(_, opt)| !opt));
    let del = c
        .delete(&format!("/v1/fine_tuning/jobs/{long}/checkpoints"))
        .await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    assert_eq!(del.body["checkpoints"], 3);
    assert!(del.body["freed_bytes"].as_u64().unwrap() > 0);
    assert!(ckpt_dirs(&t, &long).is_empty());
    assert!(
        c.get(&format!("/v1/fine_tuning/jobs/{long}/checkpoints"))
            .await
            .body["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A finished job: deleting its model (OpenAI's answer), then a checkpoint of it.
    let id = create(&c, &tiny_job(&file, 4, 2)).await;
    let done = c.wait_status(&id, "succeeded", T).await;
    assert!(ckpt_dirs(&t, &id).iter().all(|(_, opt)| !opt));
    let model = done["fine_tuned_model"].as_str().unwrap().to_string();
    let ckpt2 = format!("{model}:ckpt-step-2");
    let ckpt4 = format!("{model}:ckpt-step-4");
    let in_use = c.delete(&format!("/v1/models/{ckpt4}")).await;
    assert_eq!(in_use.status, 400, "{:?}", in_use.body);
    assert_eq!(in_use.body["error"]["code"], "checkpoint_in_use");
    let base = c.delete("/v1/models/demo").await;
    assert_eq!(base.body["error"]["code"], "model_not_deletable");
    let gone = c.delete(&format!("/v1/models/{model}")).await;
    assert_eq!(gone.status, 200, "{:?}", gone.body);
    assert_eq!(
        gone.body,
        json!({"id": model, "object": "model", "deleted": true})
    );
    assert_eq!(c.get(&format!("/v1/models/{model}")).await.status, 404);
    assert_eq!(c.get(&format!("/v1/models/{ckpt4}")).await.status, 404);
    let chat = c
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        )
        .await;
    assert_eq!(chat.status, 404);
    assert_eq!(c.delete(&format!("/v1/models/{model}")).await.status, 404);
    let job = c.get(&format!("/v1/fine_tuning/jobs/{id}")).await.body;
    assert_eq!(
        (job["status"].as_str(), &job["fine_tuned_model"]),
        (Some("succeeded"), &Value::Null)
    );
    // The older checkpoint is still a model, and can go on its own.
    assert_eq!(c.get(&format!("/v1/models/{ckpt2}")).await.status, 200);
    let r = c.delete(&format!("/v1/models/{ckpt2}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(ckpt_dirs(&t, &id).is_empty());
    let msgs = messages(&c, &id).await;
    assert!(
        msgs.iter()
            .any(|m| m == &format!("Fine-tuned model {model} deleted")),
        "{msgs:?}"
    );
    t.server.stop().await.unwrap();
}

/// What a worker killed after writing (and uploading) a checkpoint but before its row landed
/// leaves: a checkpoint folder no row names. The row is the commit point: the resume starts from
/// the last recorded checkpoint, the unrecorded folder is removed, never trained on or listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_written_but_not_recorded_is_never_resumed_from() {
    let t = TestServer::start().await;
    let c = t.user("gap").await;
    let file = upload(&c).await;
    let id = create(&c, &tiny_job(&file, 10_000, 2)).await;
    c.wait_job(&id, T, |j| {
        j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= 3
    })
    .await;
    c.post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({}))
        .await;
    let step = c.wait_status(&id, "paused", T).await["tuna"]["progress"]["step"]
        .as_i64()
        .unwrap();
    let train = t.dir.path().join("jobs").join(&id).join("train");
    let unrecorded = train.join(format!("checkpoint-{}", step + 2));
    std::fs::create_dir_all(&unrecorded).unwrap();
    for entry in std::fs::read_dir(train.join(format!("checkpoint-{step}"))).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_name().to_string_lossy().starts_with('.') {
            std::fs::copy(entry.path(), unrecorded.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(unrecorded.join("planted"), "").unwrap();
    c.post(&format!("/v1/fine_tuning/jobs/{id}/resume"), &json!({}))
        .await;
    c.wait_job(&id, T, |j| {
        j["status"] == "running" && j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) > step
    })
    .await;
    c.post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))
        .await;
    assert!(
        !unrecorded.join("planted").exists(),
        "the unrecorded folder was removed"
    );
    let msgs = messages(&c, &id).await;
    assert!(
        msgs.contains(&format!("Training resumed at step {step} of 10000")),
        "{msgs:?}"
    );
    let listed = checkpoint_steps(&c, &id).await;
    assert!(listed.contains(&step), "{listed:?} lacks {step}");
    let steps = metric_steps(&c, &id).await;
    assert_eq!(
        steps[..step as usize + 1],
        (1..=step + 1).collect::<Vec<_>>()[..]
    );
    t.server.stop().await.unwrap();
}
