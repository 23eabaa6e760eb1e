//! Fair share of the chat generation slots: user A hammers the server with long chats (more at
//! once than there are slots, a new one as soon as one ends) while user B sends short chats one
//! after another. Prints B's latency and refusals, and A's throughput, for the default per-user
//! limit (one slot less than all), for a limit that lets one user hold every slot, and for that
//! limit without a wait for a slot (429 at once: the server before issue 9).
//! Loopback only; prints numbers, asserts nothing about time.
//!
//! ```text
//! cargo run --release -p tuna-server --example chat_fair_share -- [--seconds 20] [--a-tokens 600] [--b-tokens 16]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tuna_server::{RunningServer, Settings};

mod common;
use common::arg;

/// Chats user A keeps going at once (twice the server's 2 slots).
const A_CONCURRENCY: usize = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Run {
    b_latencies: Vec<Duration>,
    b_refused: usize,
    a_done: usize,
    a_refused: usize,
    a_tokens: usize,
    elapsed: Duration,
}

async fn chat(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    max_tokens: u64,
) -> Result<(u16, usize), reqwest::Error> {
    let body = json!({
        "model": "demo",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "seed": 1,
    });
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await?;
    let tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
    Ok((status, tokens))
}

async fn run(
    per_user: Option<usize>,
    queue_wait: Duration,
    seconds: u64,
    a_tokens: u64,
    b_tokens: u64,
) -> Result<Run, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut settings = Settings::new(dir.path());
    settings.max_generations_per_user = per_user;
    settings.generation_queue_timeout = queue_wait;
    settings.demo_model_root = std::env::temp_dir().join("tuna-bench-demo");
    let server = RunningServer::start(settings, "127.0.0.1:0".parse()?).await?;
    let base = server.url();
    let (_, key_a) = tuna_server::auth::create_user(&*server.state.store, "a").await?;
    let (_, key_b) = tuna_server::auth::create_user(&*server.state.store, "b").await?;
    let http = reqwest::Client::new();
    // Load the model once so neither user pays for it.
    chat(&http, &base, &key_b, 1).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let a_done = Arc::new(AtomicUsize::new(0));
    let a_refused = Arc::new(AtomicUsize::new(0));
    let a_tokens_total = Arc::new(AtomicUsize::new(0));
    let mut hammer = Vec::new();
    for _ in 0..A_CONCURRENCY {
        let (http, base, key) = (http.clone(), base.clone(), key_a.clone());
        let (stop, done, refused, tokens) = (
            stop.clone(),
            a_done.clone(),
            a_refused.clone(),
            a_tokens_total.clone(),
        );
        hammer.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match chat(&http, &base, &key, a_tokens).await {
                    Ok((200, t)) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        tokens.fetch_add(t, Ordering::Relaxed);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Let A fill the slots first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let mut b_latencies = Vec::new();
    let mut b_refused = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        let t = Instant::now();
        match chat(&http, &base, &key_b, b_tokens).await? {
            (200, _) => b_latencies.push(t.elapsed()),
            _ => b_refused += 1,
        }
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in hammer {
        h.abort();
    }
    server.stop().await?;
    b_latencies.sort();
    Ok(Run {
        b_latencies,
        b_refused,
        a_done: a_done.load(Ordering::Relaxed),
        a_refused: a_refused.load(Ordering::Relaxed),
        a_tokens: a_tokens_total.load(Ordering::Relaxed),
        elapsed,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = arg("--seconds", 20);
    let a_tokens = arg("--a-tokens", 600);
    let b_tokens = arg("--b-tokens", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "user A: {A_CONCURRENCY} concurrent chats of {a_tokens} tokens, restarted as they end; user B: one chat of {b_tokens} tokens after another, for {seconds} s; 2 slots"
    );
    println!(
        "| per-user limit | B served | B refused | B p50 | B p95 | B max | A answers | A refused | A tokens/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let wait = Settings::new(".").generation_queue_timeout;
    for (label, per_user, queue_wait) in [
        ("1 (default)", None, wait),
        ("2 (one user may hold all)", Some(2), wait),
        (
            "2, no waiting (429 at once, as before issue 9)",
            Some(2),
            Duration::ZERO,
        ),
    ] {
        let r = runtime.block_on(run(per_user, queue_wait, seconds, a_tokens, b_tokens))?;
        println!(
            "| {label} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} | {:.0} |",
            r.b_latencies.len(),
            r.b_refused,
            percentile(&r.b_latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&r.b_latencies, 0.95).as_secs_f64() * 1e3,
            r.b_latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            r.a_done,
            r.a_refused,
            r.a_tokens as f64 / r.elapsed.as_secs_f64(),
        );
    }
    Ok(())
}
