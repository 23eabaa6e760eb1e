//! Upload throughput to an S3 blob store and the memory it takes: starts a SeaweedFS server
//! (`weed` from `TUNA_TEST_WEED` or `PATH`) and a Tuna server on it, writes a JSONL file of
//! `--mib` MiB, uploads it through `POST /v1/files` (streamed from disk by the client), and
//! prints the time until the file is stored in S3 and back in the server's local cache (where
//! the upload check reads it; the check itself, tokenizing every line, is not measured: it is
//! the same on every store), the MiB/s, and the peak RSS of this process then (server and
//! client together; the client streams, so nearly all of it is the server's). Prints numbers.
//!
//! ```text
//! TUNA_TEST_WEED=.venv-test/bin/weed \
//!   cargo run --release -p tuna-server --example s3_upload -- [--mib 1024]
//! ```

use std::io::Write;
use std::time::Instant;

use tuna_server::test_services::SeaweedFs;
use tuna_server::{RunningServer, Settings};

mod common;
use common::arg;

/// This process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib = arg("--mib", 1024);
    let dir = tempfile::tempdir()?;
    // Volumes as large as the file may need: the tests' 16 MB volumes would run out.
    let weed = SeaweedFs::start(1024, 16);
    let path = dir.path().join("upload.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut written = 0u64;
        let mut i = 0u64;
        while written < mib << 20 {
            let line = format!(
                "{{\"messages\": [{{\"role\": \"user\", \"content\": \"Question {i}: what is {i} plus one?\"}}, {{\"role\": \"assistant\", \"content\": \"{i} plus one is {}.\"}}]}}\n",
                i + 1
            );
            f.write_all(line.as_bytes())?;
            written += line.len() as u64;
            i += 1;
        }
        f.flush()?;
    }
    let bytes = std::fs::metadata(&path)?.len();
    let rss_before = peak_rss_mib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let mut settings = Settings::new(dir.path().join("data"));
        settings.demo_model_root = std::env::temp_dir().join("tuna-bench-demo");
        settings.max_upload_bytes = bytes + (1 << 20);
        settings.body_read_timeout = std::time::Duration::from_secs(600);
        settings.blob_store = Some(weed.location("bench"));
        let server = RunningServer::start(settings, "127.0.0.1:0".parse()?).await?;
        let (_, key) = tuna_server::auth::create_user(&*server.state.store, "a").await?;
        let file = tokio::fs::File::open(&path).await?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part(
                "file",
                reqwest::multipart::Part::stream_with_length(body, bytes).file_name("big.jsonl"),
            );
        let start = Instant::now();
        let upload = tokio::spawn(
            reqwest::Client::new()
                .post(format!("{}/v1/files", server.url()))
                .bearer_auth(&key)
                .multipart(form)
                .send(),
        );
        // Stored in S3 and downloaded again: the complete file appears in the local cache.
        let cache = dir.path().join("data/cache/blobs/files");
        let secs = loop {
            let done = std::fs::read_dir(&cache)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    !e.file_name().to_string_lossy().starts_with('.')
                        && e.metadata().is_ok_and(|m| m.len() == bytes)
                });
            if done {
                break start.elapsed().as_secs_f64();
            }
            if upload.is_finished() {
                let resp = upload.await??;
                return Err(format!("the upload ended first: {}", resp.text().await?).into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let mib = bytes as f64 / (1 << 20) as f64;
        println!("file: {mib:.0} MiB of JSONL");
        println!(
            "API upload to S3 (SeaweedFS) + download into the cache: {secs:.1} s, {:.1} MiB/s \
             ({:.1} MiB/s each way)",
            mib / secs,
            2.0 * mib / secs
        );
        println!(
            "peak RSS of the process: {:.0} MiB (before the server started: {rss_before:.0} MiB)",
            peak_rss_mib()
        );
        upload.abort();
        drop(server);
        drop(weed);
        drop(dir);
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    // The upload check still tokenizing the file on a blocking thread is not waited for.
    runtime.shutdown_background();
    result
}
