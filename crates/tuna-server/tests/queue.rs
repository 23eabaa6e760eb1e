//! The queue and the workers over HTTP: positions and start estimates, pause / resume / cancel,
//! workers that crash (resumed from the last checkpoint, then failed past the retry limit), a
//! server restart, full fine-tuning, and the chat concurrency limit.

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

/// A job far longer than any test waits for (they cancel it).
fn long_job(file: &str) -> Value {
    tiny_job(file, 100_000, 50_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_positions_pause_resume_and_cancel() {
    let t = TestServer::start_with(|s| {
        s.cpu_slots = 1;
        s.max_queued_jobs = 2;
    })
    .await;
    let c = t.user("q").await;
    let file = upload(&c).await;

    let a = create(&c, &long_job(&file)).await;
    c.wait_job(&a, T, |j| {
        j["status"] == "running" && j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    // One slot: the next jobs wait, in order, each with a position and an expected start.
    let b = create(&c, &tiny_job(&file, 2, 2)).await;
    let cc = create(&c, &tiny_job(&file, 2, 2)).await;
    // Both from one list: the expected starts move with the running job's measured speed, so
    // two separate reads may see different predictions.
    let list = c.get("/v1/fine_tuning/jobs?limit=10").await.body;
    let find = |id: &str| {
        list["data"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("job {id} is not in the list: {list}"))
    };
    let (jb, jc) = (find(&b), find(&cc));
    assert_eq!(
        (jb["status"].as_str(), jb["tuna"]["queue_position"].as_i64()),
        (Some("queued"), Some(1))
    );
    assert_eq!(
        (jc["status"].as_str(), jc["tuna"]["queue_position"].as_i64()),
        (Some("queued"), Some(2))
    );
    assert!(
        jc["tuna"]["estimated_start"].as_i64().unwrap()
            >= jb["tuna"]["estimated_start"].as_i64().unwrap()
    );
    // The queue holds two: a third waiting job is refused.
    let full = c.post("/v1/fine_tuning/jobs", &tiny_job(&file, 2, 2)).await;
    assert_eq!(full.status, 429, "{:?}", full.body);
    assert_eq!(full.body["error"]["code"], "overloaded");

    // A queued job paused leaves the queue; resumed, it goes to the back.
    let p = c
        .post(&format!("/v1/fine_tuning/jobs/{b}/pause"), &json!({}))
        .await;
    assert_eq!(p.body["status"], "paused");
    assert!(p.body["tuna"]["queue_position"].is_null());
    assert_eq!(
        c.get(&format!("/v1/fine_tuning/jobs/{cc}")).await.body["tuna"]["queue_position"],
        1
    );
    let r = c
        .post(&format!("/v1/fine_tuning/jobs/{b}/resume"), &json!({}))
        .await;
    assert_eq!(
        (
            r.body["status"].as_str(),
            r.body["tuna"]["queue_position"].as_i64()
        ),
        (Some("queued"), Some(2))
    );
    assert_eq!(
        c.post(&format!("/v1/fine_tuning/jobs/{b}/resume"), &json!({}))
            .await
            .status,
        400,
        "only a paused job resumes"
    );

    // Pause the running job: it stops after its step with a resumable checkpoint.
    let p = c
        .post(&format!("/v1/fine_tuning/jobs/{a}/pause"), &json!({}))
        .await;
    assert_eq!(p.status, 200);
    let paused = c.wait_status(&a, "paused", T).await;
    let step = paused["tuna"]["progress"]["step"].as_i64().unwrap();
    let ck = c
        .get(&format!("/v1/fine_tuning/jobs/{a}/checkpoints"))
        .await
        .body;
    assert_eq!(
        ck["data"][0]["step_number"].as_i64(),
        Some(step),
        "the pause wrote a checkpoint at its step: {ck}"
    );
    // The slot went to the next queued job (cc, first in the queue now); it finishes.
    c.wait_status(&cc, "succeeded", T).await;
    c.wait_status(&b, "succeeded", T).await;

    // Resumed, the paused job continues from its step: the steps it did are not redone.
    let r = c
        .post(&format!("/v1/fine_tuning/jobs/{a}/resume"), &json!({}))
        .await;
    assert_eq!(r.status, 200);
    c.wait_job(&a, T, |j| {
        j["status"] == "running" && j["tuna"]["progress"]["step"].as_i64().unwrap() >= step + 2
    })
    .await;
    assert!(
        messages(&c, &a)
            .await
            .contains(&format!("Training resumed at step {step} of 100000"))
    );
    let steps = metric_steps(&c, &a).await;
    assert_eq!(
        steps[..steps.len().min(step as usize + 2)],
        (1..=(step + 2).min(steps.len() as i64)).collect::<Vec<_>>()[..]
    );

    // Cancel stops the worker at once: no step is reported after the answer.
    let x = c
        .post(&format!("/v1/fine_tuning/jobs/{a}/cancel"), &json!({}))
        .await;
    assert_eq!(x.body["status"], "cancelled");
    assert!(x.body["finished_at"].is_i64());
    let status = c.get("/v1/tuna/status").await.body;
    assert_eq!(status["running"], 0, "{status}");
    let n = metric_steps(&c, &a).await.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric_steps(&c, &a).await.len(),
        n,
        "the worker kept training after cancel"
    );
    assert_eq!(
        c.post(&format!("/v1/fine_tuning/jobs/{a}/cancel"), &json!({}))
            .await
            .status,
        400
    );
    // Pages of jobs: newest first.
    let page = c.get("/v1/fine_tuning/jobs?limit=2").await.body;
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["id"], cc.as_str());
    let rest = c
        .get(&format!("/v1/fine_tuning/jobs?limit=2&after={cc}"))
        .await
        .body;
    assert_eq!(
        rest["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [b.as_str(), a.as_str()]
    );
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_worker_resumes_from_its_last_checkpoint() {
    let launches = Arc::new(AtomicUsize::new(0));
    let counter = launches.clone();
    let t = TestServer::start_with(move |s| {
        let real = common::test_worker_launcher();
        s.worker_launcher = Arc::new(move |dir, job| {
            let mut cmd = real(dir, job);
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                cmd.env(common::ABORT_AFTER_CHECKPOINT_ENV, "1");
            }
            cmd
        });
    })
    .await;
    let c = t.user("crash").await;
    let file = upload(&c).await;
    let id = create(&c, &tiny_job(&file, 6, 3)).await;
    let done = c.wait_status(&id, "succeeded", T).await;
    assert_eq!(launches.load(Ordering::SeqCst), 2);
    assert_eq!(done["tuna"]["retries"], 1);
    let msgs = messages(&c, &id).await;
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("The worker exited unexpectedly") && m.contains("retry 1 of 2")),
        "{msgs:?}"
    );
    assert!(
        msgs.contains(&"Training resumed at step 3 of 6".to_string()),
        "{msgs:?}"
    );
    assert_eq!(metric_steps(&c, &id).await, [1, 2, 3, 4, 5, 6]);
    let ck = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await
        .body;
    assert_eq!(
        ck["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["step_number"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [6, 3]
    );
    t.server.stop().await.unwrap();
}

/// The object store (SeaweedFS, SIGKILLed) unreachable for a worker, twice. First while it
/// fetches the job's training file: the job's events name what, the key and the store, and the
/// job is retried, not lost. Then while it stores a checkpoint: no row is written for it (a
/// checkpoint is recorded only once every file is stored), the events say so, and the job is
/// retried from its last stored checkpoint. Once the store is back the job succeeds, every step
/// trained once, and every recorded checkpoint downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_cannot_reach_the_object_store_says_so_and_the_job_is_retried() {
    use tuna_server::test_services::SeaweedFs;
    let weed = tokio::task::spawn_blocking(|| SeaweedFs::start(16, 64))
        .await
        .unwrap();
    let mut url = weed.location("worker-down");
    if let tuna_server::blob::BlobStoreUrl::S3(loc) = &mut url {
        loc.retry_timeout = Duration::from_secs(1);
    }
    let t = TestServer::start_with(|s| {
        s.blob_store = Some(url);
        s.max_retries = 20;
    })
    .await;
    let c = t.user("s3down").await;
    let file = upload(&c).await;
    let weed = tokio::task::spawn_blocking(move || {
        weed.kill();
        weed
    })
    .await
    .unwrap();
    let mut body = tiny_job(&file, 900, 3);
    body["tuna"]["sample_prompts"] = json!(0);
    let id = create(&c, &body).await;
    let fetch_failed = format!(
        "Cannot fetch training_file `{file}` (key `files/{file}`) from the blob store s3://"
    );
    let start = std::time::Instant::now();
    while !messages(&c, &id)
        .await
        .iter()
        .any(|m| m.starts_with(&fetch_failed))
    {
        assert!(start.elapsed() < T, "{:?}", messages(&c, &id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let weed = tokio::task::spawn_blocking(move || {
        weed.restart();
        weed
    })
    .await
    .unwrap();
    // Training, past its first stored checkpoint: the store goes again.
    c.wait_job(&id, T, |j| {
        j["status"] == "running" && j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= 4
    })
    .await;
    let weed = tokio::task::spawn_blocking(move || {
        weed.kill();
        weed
    })
    .await
    .unwrap();
    let start = std::time::Instant::now();
    while !messages(&c, &id).await.iter().any(|m| {
        m.contains("could not be stored") && m.contains("retried from its last stored checkpoint")
    }) {
        assert!(start.elapsed() < T, "{:?}", messages(&c, &id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let weed = tokio::task::spawn_blocking(move || {
        weed.restart();
        weed
    })
    .await
    .unwrap();
    let done = c.wait_status(&id, "succeeded", T).await;
    assert!(done["tuna"]["retries"].as_i64().unwrap() >= 2, "{done}");
    assert_eq!(metric_steps(&c, &id).await, (1..=900).collect::<Vec<i64>>());
    // (The resume's event is older than the newest 100 events: the steps above show it.)
    let ck = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints?limit=10"))
        .await
        .body;
    for row in ck["data"].as_array().unwrap() {
        let step = row["step_number"].as_i64().unwrap();
        let got = c
            .http
            .get(format!(
                "{}/v1/fine_tuning/jobs/{id}/checkpoints/{step}/adapter",
                c.base
            ))
            .bearer_auth(&c.key)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200, "checkpoint {step}");
    }
    t.server.stop().await.unwrap();
    tokio::task::spawn_blocking(move || drop(weed))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_keeps_dying_fails_the_job_with_the_reason() {
    let t = TestServer::start_with(|s| {
        s.max_retries = 1;
        s.worker_launcher = Arc::new(|_, _| {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "echo 'out of memory: boom' >&2; exit 3"]);
            cmd
        });
    })
    .await;
    let c = t.user("dies").await;
    let file = upload(&c).await;
    let id = create(&c, &tiny_job(&file, 2, 2)).await;
    let failed = c.wait_status(&id, "failed", T).await;
    assert_eq!(failed["error"]["code"], "worker_crashed");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2 times") && message.contains("out of memory: boom"),
        "{message}"
    );
    assert!(failed["error"]["param"].is_null());
    assert_eq!(failed["tuna"]["retries"], 1);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restart_queued_jobs_stay_queued_and_running_ones_resume() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || {
        let mut s = common::settings(dir.path());
        s.cpu_slots = 1;
        s
    };
    let first = tuna_server::RunningServer::start(settings(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_, key) = tuna_server::auth::create_user(&*first.state.store, "r")
        .await
        .unwrap();
    let c = Client::new(&first.url(), &key);
    let file = upload(&c).await;
    let a = create(&c, &long_job(&file)).await;
    let running = c
        .wait_job(&a, T, |j| {
            j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= 2
        })
        .await;
    assert_eq!(running["status"], "running");
    let b = create(&c, &tiny_job(&file, 2, 2)).await;
    first.stop().await.unwrap();

    let second = tuna_server::RunningServer::start(settings(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let c = Client::new(&second.url(), &key);
    // The interrupted job keeps its place and continues from its checkpoint; the other still waits.
    let start = std::time::Instant::now();
    while !messages(&c, &a)
        .await
        .iter()
        .any(|m| m.starts_with("Training resumed at step "))
    {
        assert!(
            start.elapsed() < T,
            "the job did not resume: {:?}",
            messages(&c, &a).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.get(&format!("/v1/fine_tuning/jobs/{a}")).await.body["status"],
        "running"
    );
    let jb = c.get(&format!("/v1/fine_tuning/jobs/{b}")).await.body;
    assert_eq!(
        (jb["status"].as_str(), jb["tuna"]["queue_position"].as_i64()),
        (Some("queued"), Some(1))
    );
    let msgs = messages(&c, &a).await;
    let stopped = msgs
        .iter()
        .find_map(|m| m.strip_prefix("The server is shutting down; the job stopped at step "))
        .expect("shutdown event");
    let step: i64 = stopped.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        msgs.contains(&format!("Training resumed at step {step} of 100000")),
        "resumed where it stopped: {msgs:?}"
    );
    c.post(&format!("/v1/fine_tuning/jobs/{a}/cancel"), &json!({}))
        .await;
    c.wait_status(&b, "succeeded", T).await;
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_fine_tuning_checkpoints_are_whole_models() {
    let t = TestServer::start().await;
    let c = t.user("full").await;
    let file = upload(&c).await;
    let mut body = tiny_job(&file, 2, 2);
    body["tuna"] = json!({"method": "full", "max_seq_len": 64, "max_steps": 2, "checkpoint_interval": 2, "sample_max_tokens": 5, "learning_rate": 0.01});
    let id = create(&c, &body).await;
    let done = c.wait_status(&id, "succeeded", T).await;
    assert_eq!(done["tuna"]["method"], "full");
    assert!(done["tuna"]["lora"].is_null());
    let ck = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await
        .body;
    let ckpt = &ck["data"][0];
    assert_eq!(ckpt["tuna"]["kind"], "full");
    let sample = &ckpt["tuna"]["samples"][0];
    let messages: Vec<Value> = sample["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({"role": m["role"], "content": m["content"]}))
        .collect();
    let chat = c.post("/v1/chat/completions", &json!({"model": ckpt["fine_tuned_model_checkpoint"], "messages": messages, "temperature": 0, "max_tokens": 5})).await;
    assert_eq!(chat.status, 200, "{:?}", chat.body);
    assert_eq!(
        chat.body["choices"][0]["message"]["content"],
        sample["generated"]
    );
    // The checkpoint's own weights answer, not the base model's.
    let base = c
        .post(
            "/v1/chat/completions",
            &json!({"model": "demo", "messages": messages, "temperature": 0, "max_tokens": 5}),
        )
        .await;
    assert_ne!(
        base.body["choices"][0]["message"]["content"],
        sample["generated"]
    );
    assert_eq!(done["tuna"]["learning_rate"], 0.01);
    let (status, tar_bytes) = c
        .get_bytes(&format!("/v1/fine_tuning/jobs/{id}/checkpoints/2/adapter"))
        .await;
    assert_eq!(status, 200);
    let names: Vec<String> = tar::Archive::new(tar_bytes.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(names.contains(&format!("{id}-step-2/{f}")), "{names:?}");
    }
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_holding_the_only_slot_makes_others_wait_with_429() {
    let t = TestServer::start_with(|s| {
        common::with_noise_model(s);
        s.max_concurrent_generations = 1;
        s.generation_queue_timeout = Duration::from_millis(300);
    })
    .await;
    let c = t.user("chat").await;
    // The noise model talks until max_tokens (the demo model would end after a sentence).
    let long = json!({"model": common::NOISE_MODEL, "messages": [{"role": "user", "content": "Tell me everything."}], "max_tokens": 3000, "stream": true, "temperature": 1.0, "seed": 1});
    let mut first = c
        .http
        .post(format!("{}/v1/chat/completions", c.base))
        .bearer_auth(&c.key)
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let chunk = first.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&chunk).starts_with("data: "),
        "{chunk:?}"
    );
    // While the first answer is being generated, another request waits its bounded time for
    // the slot, then is refused.
    let second = c.post("/v1/chat/completions", &json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})).await;
    assert_eq!(second.status, 429, "{:?}", second.body);
    assert_eq!(second.body["error"]["type"], "rate_limit_error");
    // Closing the stream frees the slot (generation notices the closed channel and stops).
    drop(first);
    let mut status = 0;
    for _ in 0..200 {
        status = c.post("/v1/chat/completions", &json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    t.server.stop().await.unwrap();
}
