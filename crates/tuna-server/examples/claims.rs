//! Bench of the queue (issue 10): claims per second with a deep queue and competing claimers,
//! on PostgreSQL (a throwaway cluster, as the tests start one) and on a SQLite file. Prints
//! numbers; asserts only that no job was claimed twice.
//!
//! ```text
//! cargo run --release -p tuna-server --example claims -- [--jobs 100000] [--claimers 8] [--claims 2000] [--users 3]
//! ```
//!
//! The queue is filled with one SQL statement (`INSERT … SELECT … generate_series`-style copies of
//! one job created through the lifecycle), spread round-robin over `--users` users; then
//! `--claimers` tasks, each a worker of its own name with its own connection from the pool,
//! claim (lease, fencing token, event) until `--claims` jobs are taken.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tuna_server::db::{PgStore, SqliteStore};
use tuna_server::store::{ClaimRequest, NewJob, Store};

mod common;
use common::arg;

const SPEC: &str = r#"{"method":{"type":"supervised","supervised":{"hyperparameters":{"n_epochs":1,"batch_size":1,"learning_rate_multiplier":1.0}}},
"tuna":{"name":null,"method":"lora","lora":{"rank":4,"alpha":8.0,"dropout":0.0,"target_modules":["q_proj"]},"max_seq_len":64,
"checkpoint_interval":2,"eval_interval":null,"max_steps":4,"learning_rate":0.001,"warmup_ratio":0.0,"validation_fraction":null,
"sample_prompts":1,"sample_max_tokens":8}}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs = arg("--jobs", 100_000) as i64;
    let claimers = arg("--claimers", 8).max(1) as usize;
    let claims = arg("--claims", 2000) as usize;
    let users = arg("--users", 3).max(1) as i64;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let url = tuna_server::test_services::fresh_postgres_database().await;
            let pg = PgStore::connect(&url).await?;
            fill(&pg, jobs, users, |sql| {
                let pool = pg.pool.clone();
                async move { sqlx::query(&sql).execute(&pool).await.map(drop) }
            })
            .await?;
            run("postgres", Arc::new(pg), jobs, claimers, claims).await?;

            let dir = tempfile::tempdir()?;
            let lite = SqliteStore::open(&dir.path().join("tuna.db")).await?;
            fill(&lite, jobs, users, |sql| {
                let pool = lite.pool.clone();
                async move { sqlx::query(&sql).execute(&pool).await.map(drop) }
            })
            .await?;
            run("sqlite", Arc::new(lite), jobs, claimers, claims).await
        })
}

/// `users` users, one job made through the lifecycle, then `jobs - 1` copies in one statement.
async fn fill<F, Fut>(
    store: &dyn Store,
    jobs: i64,
    users: i64,
    execute: F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let start = Instant::now();
    let mut ids = Vec::new();
    for u in 0..users {
        let (user, _) = tuna_server::auth::create_user(store, &format!("bench{u}")).await?;
        ids.push(user.id);
    }
    let seed = NewJob {
        id: "ftjob-seed".into(),
        user_id: ids[0].clone(),
        model: "demo".into(),
        training_file: "file-x".into(),
        validation_file: None,
        suffix: None,
        seed: 1,
        spec: serde_json::from_str(SPEC)?,
        model_id: "ft:demo:bench0::seed".into(),
        estimate: None,
        metadata: None,
        created_at: tuna_server::ids::now(),
        memory_bytes: Some(1 << 30),
        compute: tuna_server::spec::Compute::Cpu,
    };
    tuna_server::lifecycle::create(store, &seed).await?;
    let user_case: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!(" WHEN {i} THEN '{id}'"))
        .collect();
    // A recursive counter: portable between SQLite and PostgreSQL.
    execute(format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
         INSERT INTO jobs (id, user_id, model, training_file, seed, status, spec, model_id, created_at, memory_bytes, queue_order) \
         SELECT 'ftjob-bench' || i, CASE i % {users}{user_case} END, s.model, s.training_file, i, 'queued', s.spec, \
                s.model_id || i, s.created_at, s.memory_bytes, i + 1 \
         FROM n, (SELECT * FROM jobs WHERE id = 'ftjob-seed') s",
        last = jobs - 1
    ))
    .await?;
    // Fresh statistics, as autovacuum (PostgreSQL) would have them after such a bulk insert.
    execute("ANALYZE".into()).await?;
    eprintln!(
        "queued {jobs} jobs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run(
    engine: &str,
    store: Arc<dyn Store>,
    jobs: i64,
    claimers: usize,
    claims: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    let left = Arc::new(std::sync::atomic::AtomicIsize::new(claims as isize));
    for c in 0..claimers {
        let (store, left) = (store.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("bench-worker-{c}");
            let mut got = Vec::new();
            let mut latencies = Vec::new();
            while left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                let now = tuna_server::ids::now_f64();
                let request = ClaimRequest {
                    device: "cpu:0",
                    compute: tuna_server::spec::Compute::Cpu,
                    worker: &name,
                    memory_bytes: Some(64 << 30),
                    now,
                    lease_until: now + 30.0,
                    max_running_per_user: None,
                };
                let t = Instant::now();
                let job = tuna_server::lifecycle::claim(&*store, &request).await?;
                latencies.push(t.elapsed());
                got.extend(job.map(|j| j.id));
            }
            Ok::<_, tuna_server::store::StoreError>((got, latencies))
        }));
    }
    let mut all = Vec::new();
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        let (got, lat) = t.await??;
        all.extend(got);
        latencies.extend(lat);
    }
    let elapsed = start.elapsed();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a job was claimed twice");
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{engine}: {} claims by {claimers} claimers from {jobs} queued jobs in {:.2} s = {:.0} claims/s; latency p50 {:.1} ms, p99 {:.1} ms",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}
