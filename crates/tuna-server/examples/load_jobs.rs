//! Load test of `GET /v1/fine_tuning/jobs` with 1,000 jobs in the store (or 100,000: issue 10's
//! bench), and the time from `POST /v1/fine_tuning/jobs` to the job running when a slot is free.
//! Loopback only, bounded. Prints numbers; asserts nothing on time.
//!
//! ```text
//! cargo run --release -p tuna-server --example load_jobs -- [--requests 20000] [--concurrency 16] [--jobs 1000] [--postgres]
//! ```
//!
//! `--postgres`: the store is a fresh database on a throwaway PostgreSQL cluster (as the tests
//! start one) instead of the data directory's SQLite file. The jobs beyond the first five are
//! copies of a real one, made in one SQL statement (finished: `cancelled`), all the same user's.
//!
//! The server runs in this process on `127.0.0.1:0` with a fresh data directory; its workers are
//! this executable too (`load_jobs worker --data-dir D --job ID`, the same arguments `tuna
//! worker` takes), so the POST-to-running measurement includes the real worker start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tuna_server::{RunningServer, Settings};

mod common;
use common::arg;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::run_as_worker_if_asked()?;
    let requests = arg("--requests", 20_000) as usize;
    let concurrency = arg("--concurrency", 16).max(1) as usize;
    let jobs = arg("--jobs", 1000) as usize;
    let postgres = std::env::args().any(|a| a == "--postgres");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(requests, concurrency, jobs, postgres))
}

async fn run(
    requests: usize,
    concurrency: usize,
    jobs: usize,
    postgres: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut settings = Settings::new(dir.path());
    if postgres {
        let url = tuna_server::test_services::fresh_postgres_database().await;
        settings.database = Some(tuna_server::db::DatabaseUrl::Postgres(url));
    }
    let database = settings.database_url();
    settings.demo_model_root = std::env::temp_dir().join("tuna-load-demo");
    let server = RunningServer::start(settings, "127.0.0.1:0".parse()?).await?;
    let store = server.state.store.clone();
    let (user, key) = tuna_server::auth::create_user(&*store, "load").await?;
    let http = reqwest::Client::new();
    let base = server.url();

    // A real upload gives real job JSON (hyperparameters, Tuna settings, estimate) to copy.
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
        .post(format!("{base}/v1/files"))
        .bearer_auth(&key)
        .multipart(form)
        .send()
        .await?
        .json()
        .await?;
    let file_id = file["id"].as_str().ok_or("upload failed")?.to_string();
    let body = json!({
        "model": "demo", "training_file": file_id, "seed": 1,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}},
        "tuna": {"lora": {"rank": 4}, "max_seq_len": 64, "max_steps": 2, "checkpoint_interval": 2, "sample_max_tokens": 4}
    });

    // POST → running, with the slot free each time (one job after the other).
    let mut to_running = Vec::new();
    let mut to_first_step = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let job: Value = http
            .post(format!("{base}/v1/fine_tuning/jobs"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let id = job["id"]
            .as_str()
            .ok_or_else(|| format!("job creation failed: {job}"))?
            .to_string();
        let mut running_at = None;
        loop {
            let j: Value = http
                .get(format!("{base}/v1/fine_tuning/jobs/{id}"))
                .bearer_auth(&key)
                .send()
                .await?
                .json()
                .await?;
            if running_at.is_none() && j["status"] != "queued" && j["status"] != "validating_files"
            {
                running_at = Some(t0.elapsed());
            }
            if j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= 1
                || j["status"] == "succeeded"
            {
                to_first_step.push(t0.elapsed());
                break;
            }
            if j["status"] == "failed" {
                return Err(format!("job failed: {}", j["error"]).into());
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err("job did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        to_running.push(running_at.unwrap_or_default());
        loop {
            let j: Value = http
                .get(format!("{base}/v1/fine_tuning/jobs/{id}"))
                .bearer_auth(&key)
                .send()
                .await?
                .json()
                .await?;
            if j["status"] == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    to_running.sort();
    to_first_step.sort();
    println!(
        "POST /v1/fine_tuning/jobs → status running (slot free), 5 jobs: median {:.1} ms, max {:.1} ms; → first step done: median {:.0} ms",
        to_running[2].as_secs_f64() * 1e3,
        to_running[4].as_secs_f64() * 1e3,
        to_first_step[2].as_secs_f64() * 1e3
    );

    // Fill the store to `jobs` finished jobs, copying the real job's settings.
    let template = store
        .list_jobs(
            &user.id,
            &tuna_server::store::Page {
                after: None,
                limit: 1,
            },
        )
        .await?
        .ok_or("no job")?
        .0
        .remove(0);
    let existing = 5;
    let copies = jobs.saturating_sub(existing);
    let fill = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {copies}) \
         INSERT INTO jobs (id, user_id, model, training_file, seed, status, spec, model_id, estimate, created_at, \
                           finished_at, memory_bytes, queue_order) \
         SELECT 'ftjob-load' || i, s.user_id, s.model, s.training_file, i, 'cancelled', s.spec, s.model_id || '-' || i, \
                s.estimate, s.created_at - i, s.created_at, s.memory_bytes, (SELECT MAX(queue_order) FROM jobs) + i \
         FROM n, (SELECT * FROM jobs WHERE id = '{}') s",
        template.id
    );
    let start = Instant::now();
    if copies > 0 {
        match &database {
            tuna_server::db::DatabaseUrl::Postgres(url) => {
                let pool = tuna_server::db::PgStore::connect(url).await?.pool;
                sqlx::query(&fill).execute(&pool).await?;
                sqlx::query("ANALYZE").execute(&pool).await?;
            }
            tuna_server::db::DatabaseUrl::Sqlite(path) => {
                let pool = tuna_server::db::SqliteStore::open(path).await?.pool;
                sqlx::query(&fill).execute(&pool).await?;
                sqlx::query("ANALYZE").execute(&pool).await?;
            }
        }
    }
    println!(
        "{}: {jobs} jobs in the store ({copies} copied in {:.1} s)",
        if postgres { "PostgreSQL" } else { "SQLite" },
        start.elapsed().as_secs_f64()
    );

    for limit in [20, 100] {
        let url = Arc::new(format!("{base}/v1/fine_tuning/jobs?limit={limit}"));
        // Warm up connections.
        for _ in 0..concurrency {
            http.get(url.as_str())
                .bearer_auth(&key)
                .send()
                .await?
                .bytes()
                .await?;
        }
        let per_task = requests / concurrency;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let http = http.clone();
            let key = key.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    let resp = http
                        .get(url.as_str())
                        .bearer_auth(&key)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if !resp.status().is_success() {
                        return Err(format!("status {}", resp.status()));
                    }
                    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
                    if bytes.len() < 100 {
                        return Err("short body".into());
                    }
                    lat.push(t.elapsed());
                }
                Ok::<_, String>(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        let wall = start.elapsed();
        all.sort();
        println!(
            "GET /v1/fine_tuning/jobs?limit={limit} with {jobs} jobs: {} requests, {concurrency} connections: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            all.len(),
            all.len() as f64 / wall.as_secs_f64(),
            percentile(&all, 0.50).as_secs_f64() * 1e3,
            percentile(&all, 0.99).as_secs_f64() * 1e3,
            all.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
    server.stop().await?;
    Ok(())
}
