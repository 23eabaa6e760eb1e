//! Fair share between users, measured: user A queues 1,000 jobs, then user B queues one. Prints
//! how many of A's jobs started between B's job being queued and B's job starting, how long B
//! waited, the position the API gave B's job, and where plain first-in-first-out would have put
//! it. Asserts nothing about time.
//!
//! ```text
//! cargo run --release -p tuna-server --example fair_share -- [--jobs 1000] [--slots 1]
//! ```
//!
//! The server runs in this process on `127.0.0.1:0` with a fresh data directory; its workers are
//! this executable too (`fair_share worker --data-dir D --job ID`, the arguments `tuna worker`
//! takes) and train the demo model, one step per job.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tuna_server::store::JobStatus;
use tuna_server::{RunningServer, Settings};

mod common;
use common::arg;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_as_worker_if_asked()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(
            arg("--jobs", 1000) as usize,
            arg("--slots", 1) as usize,
        ))
}

struct User {
    key: String,
    file: String,
}

async fn user(
    server: &RunningServer,
    http: &reqwest::Client,
    name: &str,
) -> Result<User, Box<dyn std::error::Error>> {
    let (_, key) = tuna_server::auth::create_user(&*server.state.store, name).await?;
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/identity-12.jsonl"
    ))?;
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("identity-12.jsonl"),
        );
    let file: Value = http
        .post(format!("{}/v1/files", server.url()))
        .bearer_auth(&key)
        .multipart(form)
        .send()
        .await?
        .json()
        .await?;
    let file = file["id"].as_str().ok_or("upload failed")?.to_string();
    Ok(User { key, file })
}

fn job(file: &str) -> Value {
    json!({
        "model": "demo", "training_file": file, "seed": 1,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}},
        "tuna": {"lora": {"rank": 4}, "max_seq_len": 64, "max_steps": 1, "sample_prompts": 0}
    })
}

async fn create(
    server: &RunningServer,
    http: &reqwest::Client,
    u: &User,
) -> Result<Value, Box<dyn std::error::Error>> {
    let j: Value = http
        .post(format!("{}/v1/fine_tuning/jobs", server.url()))
        .bearer_auth(&u.key)
        .json(&job(&u.file))
        .send()
        .await?
        .json()
        .await?;
    if j["id"].is_null() {
        return Err(format!("job creation failed: {j}").into());
    }
    Ok(j)
}

async fn run(jobs: usize, slots: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut settings = Settings::new(dir.path());
    settings.demo_model_root = std::env::temp_dir().join("tuna-load-demo");
    settings.cpu_slots = slots;
    settings.max_queued_jobs = jobs + 10;
    let server = RunningServer::start(settings, "127.0.0.1:0".parse()?).await?;
    let store = server.state.store.clone();
    let http = reqwest::Client::new();
    let a = user(&server, &http, "a").await?;
    let b = user(&server, &http, "b").await?;

    let t0 = Instant::now();
    for _ in 0..jobs {
        create(&server, &http, &a).await?;
    }
    println!(
        "user a queued {jobs} jobs in {:.1} s ({slots} slot(s))",
        t0.elapsed().as_secs_f64()
    );
    // Let a's first jobs start, so that b arrives behind a running job and a long queue.
    while store
        .queue_snapshot()
        .await?
        .iter()
        .all(|e| e.status != JobStatus::Running)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = store.queue_snapshot().await?;
    let a_queued = snapshot
        .iter()
        .filter(|e| e.status == JobStatus::Queued)
        .count();
    let queued_at = tuna_server::ids::now_f64();
    let t_b = Instant::now();
    let bj = create(&server, &http, &b).await?;
    let b_id = bj["id"].as_str().unwrap_or_default().to_string();
    println!(
        "user b queued 1 job behind {a_queued} of a's: the API gave it queue position {}",
        bj["tuna"]["queue_position"]
    );
    let b_claimed = loop {
        let row = store
            .get_job_unscoped(&b_id)
            .await?
            .ok_or("b's job vanished")?;
        if let Some(t) = row.claimed_at {
            break t;
        }
        if t_b.elapsed() > Duration::from_secs(600) {
            return Err("b's job did not start within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let waited = t_b.elapsed();
    let a_started_between = store
        .jobs_with_status(&[JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed])
        .await?
        .iter()
        .filter(|j| j.id != b_id)
        .filter(|j| j.claimed_at.is_some_and(|t| t > queued_at && t < b_claimed))
        .count();
    println!(
        "a's jobs that started after b's was queued and before it started: {a_started_between} (first-in-first-out: {a_queued})"
    );
    println!(
        "b's job started {:.2} s after it was queued",
        waited.as_secs_f64()
    );
    server.stop().await?;
    Ok(())
}
