//! Shared by the end-to-end tests: a real server on `127.0.0.1:0` with its own data directory,
//! worker processes, and a small OpenAI-style HTTP client.
//!
//! Workers: the server starts each worker as a process. In tests the running executable is the
//! test binary, so the launcher runs it again with only the `worker_process_entry` test selected
//! and the job in the environment; that test calls `tuna_server::worker::run`, the function behind
//! `tuna worker`, and exits with its code. Every test binary using this module must contain
//! `#[test] fn worker_process_entry() { common::run_worker_if_asked(); }`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tuna_server::{RunningServer, Settings};

pub const WORKER_DATA_DIR_ENV: &str = "TUNA_TEST_WORKER_DATA_DIR";
pub const WORKER_JOB_ENV: &str = "TUNA_TEST_WORKER_JOB";
/// Makes a test worker abort right after its first checkpoint was recorded.
pub const ABORT_AFTER_CHECKPOINT_ENV: &str = "TUNA_TEST_ABORT_AFTER_CHECKPOINT";

pub fn run_worker_if_asked() {
    let (Some(dir), Some(job)) = (
        std::env::var_os(WORKER_DATA_DIR_ENV),
        std::env::var(WORKER_JOB_ENV).ok(),
    ) else {
        return; // an ordinary test run: nothing to do
    };
    if std::env::var_os(ABORT_AFTER_CHECKPOINT_ENV).is_some() {
        // Simulates a crash (no cleanup, no exit code of ours) right after the first checkpoint
        // was recorded (stored and its row written: its directory is marked).
        let train = Path::new(&dir).join("jobs").join(&job).join("train");
        std::thread::spawn(move || {
            loop {
                let recorded = std::fs::read_dir(&train)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| {
                        e.path()
                            .join(tuna_server::checkpoints::RECORDED_MARKER)
                            .is_file()
                    });
                if recorded {
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
    let attempt = std::env::var(tuna_server::queue::ATTEMPT_ENV)
        .ok()
        .and_then(|a| a.parse().ok());
    let code = match tuna_server::worker::run(Path::new(&dir), &job, attempt) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("worker failed: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Runs the current test binary as a worker (see the module docs).
pub fn test_worker_launcher() -> tuna_server::WorkerLauncher {
    Arc::new(|data_dir: &Path, job: &str| {
        let exe = std::env::current_exe().expect("test executable");
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "worker_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(WORKER_DATA_DIR_ENV, data_dir)
        .env(WORKER_JOB_ENV, job);
        cmd
    })
}

/// The demo model is written once per target directory and shared by every test's server.
pub fn demo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tuna-server-demo")
}

/// A model that never stops talking, for tests whose chats must run until `max_tokens`: the demo
/// model's untrained start (seeded random weights, the demo's shape and tokenizer; the trained
/// demo model ends its answers after a sentence). Written once per target directory.
pub const NOISE_MODEL: &str = "noise";

/// Registers [`NOISE_MODEL`] through the server's models file.
pub fn with_noise_model(s: &mut Settings) {
    let root = demo_root();
    let dir = root.join(format!("noise-v{}", tuna_model::demo::DEMO_VERSION));
    if !dir.join("model.safetensors").exists() {
        // Written aside, then renamed: test processes running at once share the result.
        let tmp = root.join(format!(".noise-{}", std::process::id()));
        tuna_model::demo::write_init_model(&tmp).unwrap();
        let _ = std::fs::rename(&tmp, &dir);
        let _ = std::fs::remove_dir_all(&tmp);
    }
    std::fs::create_dir_all(s.models_file.parent().unwrap()).unwrap();
    let entry = serde_json::json!([{"name": NOISE_MODEL, "path": dir}]);
    std::fs::write(&s.models_file, entry.to_string()).unwrap();
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn settings(data_dir: &Path) -> Settings {
    let mut s = Settings::new(data_dir);
    s.demo_model_root = demo_root();
    s.worker_launcher = test_worker_launcher();
    s
}

/// Selects the engine every test server of this run uses: `TUNA_TEST_DATABASE=postgres` runs
/// the suite on a fresh database of a throwaway PostgreSQL cluster per server (started by the
/// test process itself); unset or `sqlite`, the data directory's SQLite file.
pub const TEST_DATABASE_ENV: &str = "TUNA_TEST_DATABASE";

pub async fn test_database() -> Option<tuna_server::db::DatabaseUrl> {
    match std::env::var(TEST_DATABASE_ENV).as_deref() {
        Ok("postgres") => Some(tuna_server::db::DatabaseUrl::Postgres(
            tuna_server::test_services::fresh_postgres_database().await,
        )),
        Ok("sqlite") | Err(_) => None,
        Ok(other) => panic!("{TEST_DATABASE_ENV}={other}: expected `sqlite` or `postgres`"),
    }
}

/// Selects the blob store every test server of this run uses: `TUNA_TEST_BLOB_STORE=s3` runs
/// the suite on a fresh prefix of a throwaway SeaweedFS S3 server (started by the test process
/// itself); unset or `file`, the data directory's folder.
pub const TEST_BLOB_STORE_ENV: &str = "TUNA_TEST_BLOB_STORE";

pub async fn test_blob_store() -> Option<tuna_server::blob::BlobStoreUrl> {
    match std::env::var(TEST_BLOB_STORE_ENV).as_deref() {
        Ok("s3") => Some(tuna_server::test_services::SeaweedFs::fresh_location().await),
        Ok("file") | Err(_) => None,
        Ok(other) => panic!("{TEST_BLOB_STORE_ENV}={other}: expected `file` or `s3`"),
    }
}

/// [`settings`] on the engine and blob store of this run ([`TEST_DATABASE_ENV`],
/// [`TEST_BLOB_STORE_ENV`]).
pub async fn test_settings(data_dir: &Path) -> Settings {
    let mut s = settings(data_dir);
    s.database = test_database().await;
    s.blob_store = test_blob_store().await;
    s
}

pub struct TestServer {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = test_settings(dir.path()).await;
        configure(&mut s);
        let server = RunningServer::start(s, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("server starts");
        TestServer { server, dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A new user and a client with its key.
    pub async fn user(&self, name: &str) -> Client {
        let (_, key) = tuna_server::auth::create_user(&*self.server.state.store, name)
            .await
            .expect("create user");
        Client::new(&self.url(), &key)
    }
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

/// An HTTP answer: status and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            key: key.into(),
            http: reqwest::Client::new(),
        }
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        Self::answer(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        Self::answer(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .json(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        Self::answer(
            self.http
                .delete(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .send()
                .await
                .expect("DELETE"),
        )
        .await
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("GET");
        (
            resp.status().as_u16(),
            resp.bytes().await.expect("body").to_vec(),
        )
    }

    pub async fn upload_bytes(&self, filename: &str, bytes: Vec<u8>, purpose: &str) -> Answer {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string());
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_string())
            .part("file", part);
        Self::answer(
            self.http
                .post(format!("{}/v1/files", self.base))
                .bearer_auth(&self.key)
                .multipart(form)
                .send()
                .await
                .expect("upload"),
        )
        .await
    }

    pub async fn upload(&self, fixture_name: &str) -> Answer {
        let bytes = std::fs::read(fixture(fixture_name)).expect("fixture");
        self.upload_bytes(fixture_name, bytes, "fine-tune").await
    }

    /// The `data:` payloads of an SSE response, in order.
    pub async fn sse(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Vec<String>) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("SSE request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("SSE body");
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(str::to_string)
            .collect();
        (status, data)
    }

    /// Polls the job until `done(job)` or the timeout; returns the last job object.
    pub async fn wait_job(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let a = self.get(&format!("/v1/fine_tuning/jobs/{id}")).await;
            assert_eq!(a.status, 200, "{:?}", a.body);
            if done(&a.body) {
                return a.body;
            }
            if start.elapsed() > timeout {
                let events = self
                    .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=50"))
                    .await;
                panic!(
                    "job {id} did not get there in {timeout:?}: {}\nevents: {}",
                    a.body, events.body
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let want = status.to_string();
        self.wait_job(id, timeout, move |j| j["status"] == want.as_str())
            .await
    }
}

/// Tiny training settings for the demo model: a few steps, short sequences.
pub fn tiny_job(training_file: &str, max_steps: i64, checkpoint_interval: i64) -> Value {
    serde_json::json!({
        "model": "demo",
        "training_file": training_file,
        "suffix": "tiny",
        "seed": 7,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 3}}},
        "tuna": {
            "name": "tiny demo run",
            "method": "lora",
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "max_seq_len": 64,
            "max_steps": max_steps,
            "checkpoint_interval": checkpoint_interval,
            "sample_prompts": 1,
            "sample_max_tokens": 6
        }
    })
}

/// Uploads the `identity-12.jsonl` fixture; its file id.
pub async fn upload(c: &Client) -> String {
    let f = c.upload("identity-12.jsonl").await;
    assert_eq!(f.body["status"], "processed", "{:?}", f.body);
    f.body["id"].as_str().unwrap().to_string()
}

/// Creates a job; its id.
pub async fn create(c: &Client, body: &Value) -> String {
    let j = c.post("/v1/fine_tuning/jobs", body).await;
    assert_eq!(j.status, 200, "{:?}", j.body);
    j.body["id"].as_str().unwrap().to_string()
}

/// A job's event messages, newest first.
pub async fn messages(c: &Client, id: &str) -> Vec<String> {
    let ev = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    ev.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// The steps of a job's `train` metrics rows.
pub async fn metric_steps(c: &Client, id: &str) -> Vec<i64> {
    let m = c.get(&format!("/v1/fine_tuning/jobs/{id}/metrics")).await;
    m.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "train")
        .map(|r| r["step"].as_i64().unwrap())
        .collect()
}
