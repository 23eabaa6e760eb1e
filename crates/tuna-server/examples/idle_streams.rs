//! CPU used by idle job-event streams: opens N streams (`GET .../events?stream=true`) on a
//! running job that writes no events (its worker only sleeps), waits for them to settle, then prints the process's CPU time over a window.
//! The per-user cap is raised for the measurement. Loopback only; prints numbers.
//!
//! ```text
//! cargo run --release -p tuna-server --example idle_streams -- [--streams 1500] [--seconds 10]
//! ```

use std::time::{Duration, Instant};

use serde_json::json;
use tuna_server::{RunningServer, Settings};

mod common;
use common::arg;

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given, which we own.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let streams = arg("--streams", 1500) as usize;
    let seconds = arg("--seconds", 10);
    tuna_server::http::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir()?;
        let mut settings = Settings::new(dir.path());
        settings.demo_model_root = std::env::temp_dir().join("tuna-bench-demo");
        settings.max_event_streams_per_user = streams;
        // The job's "worker" only sleeps: the job stays running, its stream open and idle.
        settings.worker_launcher = std::sync::Arc::new(|_: &std::path::Path, _: &str| {
            let mut sleep = std::process::Command::new("sleep");
            sleep.arg("120");
            sleep
        });
        let server = RunningServer::start(settings, "127.0.0.1:0".parse()?).await?;
        let base = server.url();
        let (_, key) = tuna_server::auth::create_user(&*server.state.store, "a").await?;
        let http = reqwest::Client::new();
        let data = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n".repeat(4);
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part(
                "file",
                reqwest::multipart::Part::bytes(data.into_bytes()).file_name("d.jsonl"),
            );
        let file: serde_json::Value = http
            .post(format!("{base}/v1/files"))
            .bearer_auth(&key)
            .multipart(form)
            .send()
            .await?
            .json()
            .await?;
        let job: serde_json::Value = http
            .post(format!("{base}/v1/fine_tuning/jobs"))
            .bearer_auth(&key)
            .json(&json!({"model": "demo", "training_file": file["id"]}))
            .send()
            .await?
            .json()
            .await?;
        let job_id = job["id"].as_str().unwrap_or_default().to_string();
        let url = format!("{base}/v1/fine_tuning/jobs/{job_id}/events?stream=true");
        let mut open = Vec::with_capacity(streams);
        for _ in 0..streams {
            let client = reqwest::Client::new();
            let r = client.get(&url).bearer_auth(&key).send().await?;
            if r.status() != 200 {
                return Err(format!("stream refused: {}", r.status()).into());
            }
            open.push((client, r));
        }
        // Let every stream reach its longest poll interval.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (cpu0, t0) = (cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
        println!(
            "{streams} idle event streams: {:.2} s CPU in {:.1} s ({:.1}% of one core)",
            cpu.as_secs_f64(),
            wall.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
        drop(open);
        // Not `server.stop()`: it would wait for the sleeping "worker" to checkpoint.
        drop(server);
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    std::process::exit(0)
}
