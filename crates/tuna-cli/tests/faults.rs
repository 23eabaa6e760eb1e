//! Fault injection against the real `tuna` binary (issue 9): `tuna serve` runs as its own
//! process (in its own process group) on a fresh data directory, with its real worker
//! processes, and each test does to it what an operator or a machine can: fill the disk, SIGKILL
//! a worker or the server mid-step, Ctrl-C the process group, SIGTERM the server, replace the
//! binary under it, hang up in the middle of job creations. Each asserts that nothing accepted is
//! lost, that no job is left stuck, that the other user's jobs finish, and that every answer is
//! the truth or a clear error.
//!
//! The tests run one at a time (they time training steps and signal process groups) on the demo
//! model with tiny LoRA jobs; only the disk-full test trains a full fine-tune.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tuna_server::test_services::free_port;

const T: Duration = Duration::from_secs(300);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn tuna() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tuna"))
}

/// One demo model for every server of these tests, outside their data directories.
fn demo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tuna-faults-demo");
    tuna_model::demo::ensure_demo_model(&root).expect("demo model");
    root
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuna-server/tests/fixtures/identity-12.jsonl")
}

/// A new database on the shared throwaway PostgreSQL cluster (started on first use).
fn fresh_postgres() -> String {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(tuna_server::test_services::fresh_postgres_database())
}

/// Processes whose command line mentions `needle` (the server's and its workers' data dir).
fn pids_with(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn signal(target: &str, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {target}");
}

/// `tuna serve` on `data_dir`, started as `program` (the built binary or a copy of it).
struct Server {
    child: Option<Child>,
    program: Vec<String>,
    data_dir: PathBuf,
    /// `--database`, when the test passed one.
    database: Option<String>,
    /// Added to its environment and its nodes' (the blob store's variables).
    env: Vec<(String, String)>,
    log: PathBuf,
    pub url: String,
    pub port: u16,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_as(vec![tuna().display().to_string()], data_dir, extra)
    }

    /// `program` is the argv prefix (a binary, or `sh -c '…' tuna`).
    fn start_as(program: Vec<String>, data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(program, data_dir, extra, Vec::new())
    }

    fn start_with_env(
        program: Vec<String>,
        data_dir: &Path,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Server {
        let database = extra
            .iter()
            .position(|a| *a == "--database")
            .and_then(|i| extra.get(i + 1))
            .map(|d| d.to_string());
        let mut s = Server {
            child: None,
            program,
            data_dir: data_dir.to_path_buf(),
            database,
            env,
            log: data_dir.with_extension(format!("{}.log", free_port())),
            url: String::new(),
            port: 0,
        };
        s.spawn(extra);
        s
    }

    fn spawn(&mut self, extra: &[&str]) {
        self.port = free_port();
        self.url = format!("http://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--demo-model-root")
            .arg(demo_root())
            .args(["--worker-stop-seconds", "60"])
            .args(extra)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, as a shell gives a command: the tests signal the group.
            .process_group(0);
        self.child = Some(cmd.spawn().expect("tuna serve starts"));
        let start = Instant::now();
        loop {
            if let Ok(r) = reqwest::blocking::get(format!("{}/health", self.url))
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tuna serve exited with {status}: {}", self.log_text());
            }
            assert!(
                start.elapsed() < T,
                "tuna serve did not answer: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the server process to end.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "the server did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn workers(&self) -> Vec<u32> {
        pids_with(&format!("worker --data-dir {}", self.data_dir.display()))
    }

    /// Alice and Bob, each with the fixture uploaded: (alice, bob, alice's file, bob's file).
    fn two_users(&self) -> (Api, Api, String, String) {
        let (a, b) = (self.user("alice"), self.user("bob"));
        let (fa, fb) = (a.upload(), b.upload());
        (a, b, fa, fb)
    }

    fn user(&self, name: &str) -> Api {
        let out = Command::new(tuna())
            .args(["users", "create", name, "--data-dir"])
            .arg(&self.data_dir)
            .args(self.database.iter().flat_map(|d| ["--database", d]))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Api {
            base: self.url.clone(),
            key,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail = &log[log.floor_char_boundary(log.len().saturating_sub(8000))..];
            eprintln!("---- end of the server's log ----\n{tail}");
        }
        // Whatever the test left: the server's group, then any worker (each in its own group).
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
        for pid in pids_with(&self.data_dir.display().to_string()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

struct Api {
    base: String,
    key: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn at(&self, server: &Server) -> Api {
        Api {
            base: server.url.clone(),
            key: self.key.clone(),
            http: self.http.clone(),
        }
    }

    fn answer(r: reqwest::blocking::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .send()
                .unwrap(),
        )
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .json(body)
                .send()
                .unwrap(),
        )
    }

    fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    }

    fn delete(&self, path: &str) -> (u16, Value) {
        Self::answer(
            self.http
                .delete(format!("{}{path}", self.base))
                .bearer_auth(&self.key)
                .send()
                .unwrap(),
        )
    }

    fn upload(&self) -> String {
        let form = reqwest::blocking::multipart::Form::new()
            .text("purpose", "fine-tune")
            .file("file", fixture())
            .unwrap();
        let (status, body) = Self::answer(
            self.http
                .post(format!("{}/v1/files", self.base))
                .bearer_auth(&self.key)
                .multipart(form)
                .send()
                .unwrap(),
        );
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("processed")),
            "{body}"
        );
        body["id"].as_str().unwrap().to_string()
    }

    fn create(&self, body: &Value) -> String {
        let (status, job) = self.post("/v1/fine_tuning/jobs", body);
        assert_eq!(status, 200, "{job}");
        job["id"].as_str().unwrap().to_string()
    }

    fn job(&self, id: &str) -> Value {
        let (status, job) = self.get(&format!("/v1/fine_tuning/jobs/{id}"));
        assert_eq!(status, 200, "{job}");
        job
    }

    fn wait_job(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let j = self.job(id);
            if done(&j) {
                return j;
            }
            assert!(
                start.elapsed() < T,
                "job {id} never got {what}: {j}\nevents: {:?}",
                self.messages(id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_job(id, status, |j| j["status"] == status)
    }

    fn wait_step(&self, id: &str, step: i64) -> Value {
        self.wait_job(id, "running at that step", |j| {
            j["status"] == "running" && j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= step
        })
    }

    fn messages(&self, id: &str) -> Vec<String> {
        let (_, ev) = self.get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"));
        let mut out: Vec<String> = ev["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["message"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.reverse(); // oldest first
        out
    }

    /// The `train` rows' steps of a job's metrics.
    fn train_steps(&self, id: &str) -> Vec<i64> {
        let (_, m) = self.get(&format!("/v1/fine_tuning/jobs/{id}/metrics"));
        m["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "train")
            .map(|r| r["step"].as_i64().unwrap())
            .collect()
    }

    /// Waits until exactly these workers are listed.
    fn wait_workers(&self, names: &[&str]) {
        let start = Instant::now();
        loop {
            let (_, w) = self.get("/v1/tuna/workers");
            let listed: Vec<&str> = w["data"]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w["name"].as_str()).collect())
                .unwrap_or_default();
            if listed == names {
                return;
            }
            assert!(start.elapsed() < T, "workers {listed:?}, not {names:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// No job of this user is left unfinished.
    fn assert_all_final(&self) {
        let (_, list) = self.get("/v1/fine_tuning/jobs?limit=100");
        for j in list["data"].as_array().unwrap() {
            assert!(
                ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap()),
                "job left unfinished: {j}\nevents: {:?}\nread again: {}",
                self.messages(j["id"].as_str().unwrap()),
                self.job(j["id"].as_str().unwrap())
            );
        }
    }
}

/// A tiny LoRA job on the demo model.
fn lora_job(file: &str, steps: i64, every: i64) -> Value {
    json!({
        "model": "demo", "training_file": file, "seed": 7,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 100}}},
        "tuna": {"lora": {"rank": 4, "alpha": 8, "dropout": 0.0}, "max_seq_len": 64, "max_steps": steps,
                 "checkpoint_interval": every, "sample_prompts": 0}
    })
}

fn one_to(n: i64) -> Vec<i64> {
    (1..=n).collect()
}

/// A job that was stopped at some step and resumed: every step once, in order.
fn assert_resumed_without_repeats(api: &Api, id: &str, total: i64) {
    assert_eq!(api.train_steps(id), one_to(total), "{:?}", api.messages(id));
}

/// A finished job keeps no resume state: no checkpoint holds optimizer moments any more. Its
/// worker drops them just after the final status is recorded, so this waits for that (and fails
/// after `T`).
fn assert_no_resume_state(data_dir: &Path, job: &str) {
    let train = data_dir.join("jobs").join(job).join("train");
    let start = Instant::now();
    loop {
        let checkpoints: Vec<PathBuf> = std::fs::read_dir(&train)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
            .map(|e| e.path())
            .collect();
        assert!(
            !checkpoints.is_empty(),
            "no checkpoint in {}",
            train.display()
        );
        let holding: Vec<&PathBuf> = checkpoints
            .iter()
            .filter(|c| c.join("optimizer.safetensors").exists())
            .collect();
        if holding.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < T,
            "{holding:?} still hold optimizer state"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------

/// Where the disk-full test keeps its data directory.
enum SmallDisk {
    /// A tmpfs mounted by the test (we run as root).
    Tmpfs { mount: PathBuf },
    /// Mounting was refused: a file-size limit (`ulimit -f`) on the server and its workers
    /// makes writes past it fail the same way a full disk does.
    FileSizeLimit,
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let SmallDisk::Tmpfs { mount } = self {
            let _ = Command::new("umount").arg("-l").arg(&*mount).status();
        }
    }
}

fn fill(dir: &Path, name: &str, leave_free: u64) -> u64 {
    let free = tuna_server::disk::free_bytes(dir).unwrap();
    let size = free.saturating_sub(leave_free);
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    written
}

#[test]
fn disk_full_fails_only_the_job_that_cannot_write() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    let disk = if mounted {
        eprintln!(
            "disk-full test: ran on a 512 MiB tmpfs at {}",
            mount.display()
        );
        SmallDisk::Tmpfs {
            mount: mount.clone(),
        }
    } else {
        eprintln!(
            "disk-full test: tmpfs could not be mounted; ran under a 40 MiB file-size limit (ulimit -f) instead"
        );
        SmallDisk::FileSizeLimit
    };
    let data = mount.join("data");
    let server = match disk {
        SmallDisk::Tmpfs { .. } => Server::start(&data, &["--disk-reserve-mib", "0"]),
        SmallDisk::FileSizeLimit => Server::start_as(
            vec![
                "sh".into(),
                "-c".into(),
                "ulimit -f 40960; trap '' XFSZ; exec \"$0\" \"$@\"".into(),
                tuna().display().to_string(),
            ],
            &data,
            &["--disk-reserve-mib", "0"],
        ),
    };
    let (a, b, fa, fb) = server.two_users();
    // Bob's first job holds the slot while Alice's full fine-tune is admitted and queued.
    let b1 = b.create(&lora_job(&fb, 8, 4));
    b.wait_step(&b1, 1);
    let mut full = lora_job(&fa, 4, 1);
    full["tuna"] = json!({"method": "full", "max_seq_len": 64, "max_steps": 4, "checkpoint_interval": 1,
                          "keep_checkpoints": 1, "sample_prompts": 0});
    let a1 = a.create(&full);
    let b2 = b.create(&lora_job(&fb, 3, 3));
    // Something else fills the disk: less than one full checkpoint is left.
    if matches!(disk, SmallDisk::Tmpfs { .. }) {
        fill(&mount, "ballast", 120 << 20);
    }
    let failed = a.wait_status(&a1, "failed");
    assert_eq!(failed["error"]["code"], "disk_full", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("disk full"),
        "{failed}"
    );
    let msgs = a.messages(&a1);
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("Fine-tuning job failed: disk full")),
        "{msgs:?}"
    );
    // The other user's jobs are untouched and finish.
    b.wait_status(&b1, "succeeded");
    b.wait_status(&b2, "succeeded");
    assert_eq!(b.train_steps(&b1), one_to(8));
    // No half-written checkpoint is left taking the space.
    let train = data.join("jobs").join(&a1).join("train");
    let leftovers: Vec<_> = std::fs::read_dir(&train)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().ends_with(".tmp")),
        "{leftovers:?}"
    );

    if let SmallDisk::Tmpfs { .. } = disk {
        // Now nothing at all is left while Bob trains: every answer is the truth or a clear
        // error, never a 500, and nothing is left stuck once space comes back.
        let b3 = b.create(&lora_job(&fb, 100_000, 50_000));
        b.wait_step(&b3, 1);
        fill(&mount, "ballast2", 0);
        let (status, body) = b.post("/v1/fine_tuning/jobs", &lora_job(&fb, 2, 2));
        let created = match status {
            200 => Some(body["id"].as_str().unwrap().to_string()),
            400 => {
                assert_eq!(body["error"]["code"], "exceeds_machine", "{body}");
                None
            }
            507 => {
                assert_eq!(body["error"]["code"], "disk_full", "{body}");
                None
            }
            other => panic!("creation answered {other}: {body}"),
        };
        let (status, body) = b.post(&format!("/v1/fine_tuning/jobs/{b3}/cancel"), &json!({}));
        let stored = b.job(&b3)["status"].as_str().unwrap().to_string();
        match status {
            200 => assert_eq!(stored, "cancelled", "{body}"),
            400 => assert!(
                ["failed", "succeeded"].contains(&stored.as_str()),
                "{stored}: {body}"
            ),
            507 => assert_ne!(stored, "cancelled", "{body}"),
            other => panic!("cancel answered {other}: {body}"),
        }
        std::fs::remove_file(mount.join("ballast")).unwrap();
        std::fs::remove_file(mount.join("ballast2")).unwrap();
        let end = b.wait_job(&b3, "a final status", |j| {
            ["failed", "cancelled"].contains(&j["status"].as_str().unwrap_or(""))
        });
        if end["status"] == "failed" {
            assert_eq!(end["error"]["code"], "disk_full", "{end}");
        }
        if let Some(id) = created {
            b.wait_status(&id, "succeeded");
        }
    }
    a.assert_all_final();
    b.assert_all_final();
    server.wait_for_idle_workers();
    let log = server.log_text();
    assert!(!log.contains("panicked"), "{log}");
    drop(server);
    drop(disk);
}

impl Server {
    /// No worker process is left behind (each job's worker exited).
    fn wait_for_idle_workers(&self) {
        let start = Instant::now();
        while !self.workers().is_empty() {
            assert!(start.elapsed() < T, "workers left: {:?}", self.workers());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn sigkill_of_a_worker_mid_step_resumes_from_its_last_checkpoint() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (a, b, fa, fb) = server.two_users();
    let id = a.create(&lora_job(&fa, 10, 3));
    let other = b.create(&lora_job(&fb, 3, 3));
    a.wait_step(&id, 4);
    let workers = server.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    signal(&workers[0].to_string(), "KILL");
    let done = a.wait_status(&id, "succeeded");
    assert_eq!(done["tuna"]["retries"], 1, "a crash uses a retry");
    assert_resumed_without_repeats(&a, &id, 10);
    assert_no_resume_state(&server.data_dir, &id);
    let msgs = a.messages(&id);
    assert!(msgs.iter().any(|m| m.contains("signal: 9")), "{msgs:?}");
    assert!(
        ["3", "6", "9"]
            .iter()
            .any(|s| msgs.contains(&format!("Training resumed at step {s} of 10"))),
        "resumed from a checkpoint: {msgs:?}"
    );
    b.wait_status(&other, "succeeded");
    a.assert_all_final();
    b.assert_all_final();
}

#[test]
fn sigkill_of_the_server_mid_step_loses_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let (a, b, fa, fb) = server.two_users();
    let id = a.create(&lora_job(&fa, 10, 2));
    let other = b.create(&lora_job(&fb, 3, 3));
    a.wait_step(&id, 3);
    signal(&server.pid().to_string(), "KILL");
    server.wait(T);
    // The orphaned worker notices its server is gone and stops at a step with a checkpoint.
    server.wait_for_idle_workers();
    server.spawn(&[]);
    let (a, b) = (a.at(&server), b.at(&server));
    let done = a.wait_status(&id, "succeeded");
    assert_eq!(
        done["tuna"]["retries"], 0,
        "the server's crash is not the job's"
    );
    assert_resumed_without_repeats(&a, &id, 10);
    assert_no_resume_state(&data, &id);
    let msgs = a.messages(&id);
    assert!(
        msgs.iter()
            .any(|m| m
                .starts_with("The server that ran the worker went away; the job stopped at step")),
        "{msgs:?}"
    );
    b.wait_status(&other, "succeeded");
    a.assert_all_final();
    b.assert_all_final();
}

/// SIGINT (a terminal's Ctrl-C, which reaches the whole process group) or SIGTERM (to the server):
/// the server exits cleanly after its workers checkpoint at their current step, and the jobs
/// resume there after a restart without using a retry.
fn graceful_stop(sig: &str, to_group: bool) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let (a, b, fa, fb) = server.two_users();
    let id = a.create(&lora_job(&fa, 40, 100));
    let other = b.create(&lora_job(&fb, 3, 3));
    a.wait_step(&id, 3);
    let target = if to_group {
        format!("-{}", server.pid())
    } else {
        server.pid().to_string()
    };
    signal(&target, sig);
    let status = server.wait(T);
    assert!(
        status.success(),
        "the server ended with {status}: {}",
        server.log_text()
    );
    assert!(
        server.workers().is_empty(),
        "the server waited for its workers"
    );
    server.spawn(&[]);
    let (a, b) = (a.at(&server), b.at(&server));
    let done = a.wait_status(&id, "succeeded");
    assert_eq!(done["tuna"]["retries"], 0, "a stop is not a crash");
    let msgs = a.messages(&id);
    let stopped_at: i64 = msgs
        .iter()
        .find_map(|m| m.strip_prefix("The server is shutting down; the job stopped at step "))
        .unwrap_or_else(|| panic!("no shutdown event: {msgs:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(stopped_at >= 3);
    assert!(
        msgs.contains(&format!("Training resumed at step {stopped_at} of 40")),
        "resumed where it stopped (a checkpoint at that very step): {msgs:?}"
    );
    assert_resumed_without_repeats(&a, &id, 40);
    b.wait_status(&other, "succeeded");
    a.assert_all_final();
    b.assert_all_final();
}

#[test]
fn sigint_to_the_process_group_checkpoints_and_resumes_without_a_retry() {
    graceful_stop("INT", true);
}

#[test]
fn sigterm_checkpoints_and_resumes_without_a_retry() {
    graceful_stop("TERM", false);
}

#[test]
fn replacing_the_binary_while_serving_keeps_starting_workers() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let copy = bin.join("tuna");
    std::fs::copy(tuna(), &copy).unwrap();
    let server = Server::start_as(
        vec![copy.display().to_string()],
        &dir.path().join("data"),
        &[],
    );
    let (a, b, fa, fb) = server.two_users();
    let long = a.create(&lora_job(&fa, 100_000, 50_000));
    a.wait_step(&long, 1);
    let waiting = b.create(&lora_job(&fb, 3, 3));
    // An upgrade: the file goes, another takes its name.
    std::fs::remove_file(&copy).unwrap();
    std::fs::write(&copy, "#!/bin/sh\necho 'not tuna' >&2\nexit 3\n").unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&copy)
        .status()
        .unwrap();
    let (status, _) = a.post(&format!("/v1/fine_tuning/jobs/{long}/cancel"), &json!({}));
    assert_eq!(status, 200);
    let done = b.wait_status(&waiting, "succeeded");
    assert_eq!(done["tuna"]["retries"], 0);
    assert_eq!(b.train_steps(&waiting), one_to(3));
    let after = a.create(&lora_job(&fa, 2, 2));
    a.wait_status(&after, "succeeded");
    a.assert_all_final();
    b.assert_all_final();
}

/// Sends a job creation and hangs up after `delay`, without reading the answer.
fn post_and_hang_up(port: u16, key: &str, body: &str, delay: Duration) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let request = format!(
        "POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(request.as_bytes());
    std::thread::sleep(delay);
    let _ = s.shutdown(std::net::Shutdown::Both);
}

#[test]
fn clients_that_hang_up_during_creation_leave_no_job_stuck() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let (a, b, fa, fb) = server.two_users();
    // Keep the slot busy so created jobs stay queued.
    let busy = b.create(&lora_job(&fb, 100_000, 50_000));
    b.wait_step(&busy, 1);
    let body = lora_job(&fa, 1, 1).to_string();
    let threads: Vec<_> = (0..60u64)
        .map(|i| {
            let (key, body, port) = (a.key.clone(), body.clone(), server.port);
            std::thread::spawn(move || {
                // From before the handler starts to after it answered.
                post_and_hang_up(port, &key, &body, Duration::from_micros(i * 2_000))
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let (_, list) = a.get("/v1/fine_tuning/jobs?limit=100");
    let jobs = list["data"].as_array().unwrap().clone();
    assert!(jobs.len() <= 60);
    for j in &jobs {
        assert_eq!(j["status"], "queued", "{j}");
        let msgs = a.messages(j["id"].as_str().unwrap());
        assert_eq!(
            msgs.last().map(String::as_str),
            Some("Files validated, moving job to queued state"),
            "created whole or not at all: {msgs:?}"
        );
    }
    eprintln!(
        "{} of 60 creations were kept before their client hung up",
        jobs.len()
    );

    // A job left `validating_files` by an earlier version (the bug this guards against): the
    // next start settles it. Stop the server, mark one job so, start again.
    let marked = match jobs.first() {
        Some(j) => j["id"].as_str().unwrap().to_string(),
        None => a.create(&lora_job(&fa, 1, 1)),
    };
    signal(&server.pid().to_string(), "TERM");
    assert!(server.wait(T).success());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = tuna_server::db::SqliteStore::open(&data.join("tuna.db"))
            .await
            .unwrap();
        sqlx::query("UPDATE jobs SET status = 'validating_files' WHERE id = ?")
            .bind(&marked)
            .execute(&store.pool)
            .await
            .unwrap();
        store.pool.close().await;
    });
    server.spawn(&[]);
    let (a, b) = (a.at(&server), b.at(&server));
    let j = a.job(&marked);
    assert_ne!(j["status"], "validating_files", "{j}");
    // Everything can be cancelled, and then the file is free to delete.
    let (_, list) = a.get("/v1/fine_tuning/jobs?limit=100");
    for j in list["data"].as_array().unwrap() {
        let id = j["id"].as_str().unwrap();
        if !["succeeded", "cancelled", "failed"].contains(&j["status"].as_str().unwrap()) {
            let (status, body) = a.post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}));
            assert!(status == 200 || status == 400, "{body}");
        }
    }
    b.post(&format!("/v1/fine_tuning/jobs/{busy}/cancel"), &json!({}));
    let (status, body) = a.delete(&format!("/v1/files/{fa}"));
    assert_eq!(status, 200, "{body}");
    a.assert_all_final();
    b.assert_all_final();
}

/// `tuna users …` on a data directory; stdout, or the failure's stderr.
fn users(data: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tuna())
        .arg("users")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

#[test]
fn a_leaked_key_is_revoked_while_the_server_runs() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let first = server.user("carol");
    let second_key = users(&data, &["create-key", "carol"]).unwrap();
    let second = Api {
        key: second_key.trim().to_string(),
        ..first.at(&server)
    };
    assert_ne!(first.key, second.key);
    assert_eq!(first.get("/v1/models").0, 200);
    assert_eq!(second.get("/v1/models").0, 200);

    let listed = users(&data, &["list"]).unwrap();
    let row = listed
        .lines()
        .find(|l| l.starts_with("carol\t"))
        .unwrap_or_else(|| panic!("{listed}"));
    let prefixes: Vec<&str> = row.split('\t').nth(2).unwrap().split(',').collect();
    assert_eq!(prefixes.len(), 2, "{row}");
    assert!(!listed.contains(&first.key), "keys are never shown again");
    let leaked = prefixes
        .iter()
        .find(|p| first.key.starts_with(**p))
        .unwrap();

    // Only the leaked key stops working, at once.
    users(&data, &["revoke", "carol", "--key", leaked]).unwrap();
    let (status, body) = first.get("/v1/models");
    assert_eq!(status, 401, "{body}");
    assert_eq!(second.get("/v1/models").0, 200);
    let err = users(&data, &["revoke", "carol", "--key", leaked]).unwrap_err();
    assert!(err.contains("has no key"), "{err}");
    let err = users(&data, &["create-key", "nobody"]).unwrap_err();
    assert!(err.contains("there is no user `nobody`"), "{err}");

    users(&data, &["revoke", "carol"]).unwrap();
    assert_eq!(second.get("/v1/models").0, 401);
    let listed = users(&data, &["list"]).unwrap();
    assert!(listed.contains("(revoked)"), "{listed}");
}

// ---------------------------------------------------------------------------------------------
// Many machines (issue 10): worker nodes that join, leases, fencing, several API nodes. The
// "machines" are processes sharing one database; in the [`Cluster`] tests each has a data folder
// of its own and files and checkpoints go through S3 (SeaweedFS), as on real machines.

/// Seconds a claim lasts without a heartbeat in these tests.
const LEASE: &str = "2";

/// `tuna worker` as a node: claims jobs on its one device under `name`.
struct Node {
    child: Child,
    log: PathBuf,
    data_dir: PathBuf,
}

impl Node {
    /// A node on the server's data directory.
    fn start(server: &Server, name: &str) -> Node {
        Self::start_with(server, name, &["--lease-seconds", LEASE])
    }

    fn start_with(server: &Server, name: &str, extra: &[&str]) -> Node {
        Self::start_in_with(server, &server.data_dir, name, extra)
    }

    /// A node on a machine of its own: data directory `data_dir`, the server's database and
    /// blob store.
    fn start_in(server: &Server, data_dir: &Path, name: &str) -> Node {
        Self::start_in_with(server, data_dir, name, &["--lease-seconds", LEASE])
    }

    fn start_in_with(server: &Server, data_dir: &Path, name: &str, extra: &[&str]) -> Node {
        let log = data_dir.with_extension(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(tuna())
            .args(["worker", "--data-dir"])
            .arg(data_dir)
            .args(server.database.iter().flat_map(|d| ["--database", d]))
            .envs(server.env.iter().cloned())
            .args(["--devices", "cpu:0", "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("tuna worker starts");
        Node {
            child,
            log,
            data_dir: data_dir.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- {} ----\n{log}", self.log.display());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its job processes (own process groups).
        for pid in pids_with(&format!("--data-dir {} ", self.data_dir.display())) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The process training `job` (`tuna worker --job ID`), once there is one.
fn job_process(job: &str) -> u32 {
    let start = Instant::now();
    loop {
        if let [pid] = pids_with(&format!("--job {job}"))[..] {
            return pid;
        }
        assert!(start.elapsed() < T, "no worker process for {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_gone(pid: u32) {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(start.elapsed() < T, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An API-only node (no local workers) with short leases, and two users.
fn api_node(data: &Path, extra: &[&str]) -> (Server, Api, Api, String, String) {
    let mut args = vec!["--local-workers", "0", "--lease-seconds", LEASE];
    args.extend_from_slice(extra);
    let server = Server::start(data, &args);
    let (a, b, fa, fb) = server.two_users();
    (server, a, b, fa, fb)
}

/// Machines that share nothing but a PostgreSQL database and an S3 store (SeaweedFS): each
/// node gets a data folder of its own under `dir`.
struct Cluster {
    dir: tempfile::TempDir,
    database: String,
    /// `TUNA_BLOB_STORE` and the `AWS_*` variables of the store.
    env: Vec<(String, String)>,
}

impl Cluster {
    fn new() -> Cluster {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let database = rt.block_on(tuna_server::test_services::fresh_postgres_database());
        let blobs = rt.block_on(tuna_server::test_services::SeaweedFs::fresh_location());
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            database,
            env: blobs.child_env(),
        }
    }

    /// The data folder of `machine`.
    fn folder(&self, machine: &str) -> PathBuf {
        self.dir.path().join(machine)
    }

    /// An API-only node (no local workers, short leases) on `machine`.
    fn api_node(&self, machine: &str) -> Server {
        Server::start_with_env(
            vec![tuna().display().to_string()],
            &self.folder(machine),
            &[
                "--database",
                &self.database,
                "--local-workers",
                "0",
                "--lease-seconds",
                LEASE,
            ],
            self.env.clone(),
        )
    }

    /// A worker node `name` on `machine`.
    fn worker(&self, server: &Server, machine: &str, name: &str) -> Node {
        Node::start_in(server, &self.folder(machine), name)
    }
}

/// A file's content in a tar archive.
fn file_in_tar(tar: &[u8], suffix: &str) -> Option<Vec<u8>> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_string();
        if name.is_empty() {
            return None;
        }
        let size_field = String::from_utf8_lossy(&header[124..136]);
        let size =
            usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .ok()?;
        let body = at + 512;
        if name.ends_with(suffix) {
            return Some(tar[body..body + size].to_vec());
        }
        at = body + size.div_ceil(512) * 512;
    }
    None
}

/// The adapter of checkpoint `step` of `job`, downloaded through the API.
fn downloaded_adapter(api: &Api, job: &str, step: i64) -> Vec<u8> {
    let (status, tar) = api.get_bytes(&format!(
        "/v1/fine_tuning/jobs/{job}/checkpoints/{step}/adapter"
    ));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&tar));
    file_in_tar(&tar, "adapter_model.safetensors").expect("an adapter in the archive")
}

/// A cluster of separate machines sharing nothing but PostgreSQL and S3 (each process has its own
/// data folder): 2 API nodes, 3 worker nodes, 3 users, 20 jobs created on both API nodes. One
/// machine dies mid-job (its worker node and the job's process SIGKILLed together): nobody
/// records anything, the lease runs out, an API node's reaper puts the job back, a node on
/// another machine resumes it from the last checkpoint in the store, and the adapter is
/// bit-identical to an uninterrupted run's. Every job succeeds; the second API node, which never
/// saw a checkpoint on its disk, serves the adapters and chats with the model.
#[test]
fn a_dead_machine_s_job_resumes_on_another_node_after_its_lease() {
    let _serial = serial();
    let cluster = Cluster::new();
    let server = cluster.api_node("api-1");
    let (a, b, fa, fb) = server.two_users();
    let api_2 = cluster.api_node("api-2");
    let (a2, b2) = (a.at(&api_2), b.at(&api_2));
    let c = api_2.user("carol");
    let fc = c.upload();
    let node_a = cluster.worker(&server, "machine-a", "node-a");
    let id = a.create(&lora_job(&fa, 10, 3));
    a.wait_step(&id, 4);
    let job_pid = job_process(&id);
    signal(&node_a.pid().to_string(), "KILL");
    signal(&job_pid.to_string(), "KILL");
    wait_gone(job_pid);
    let killed_at = Instant::now();
    // 19 more small jobs of the three users, through both API nodes.
    let mut others = Vec::new();
    for i in 0..19 {
        let (api, file) = match i % 3 {
            0 => (if i % 2 == 0 { &a } else { &a2 }, &fa),
            1 => (if i % 2 == 0 { &b } else { &b2 }, &fb),
            _ => (&c, &fc),
        };
        others.push((api, api.create(&lora_job(file, 4, 2))));
    }
    let _node_b = cluster.worker(&server, "machine-b", "node-b");
    let _node_c = cluster.worker(&server, "machine-c", "node-c");
    let done = a.wait_status(&id, "succeeded");
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "taken over before the lease could expire"
    );
    assert_eq!(
        done["tuna"]["retries"],
        1,
        "a dead machine uses a retry: {:?}",
        a.messages(&id)
    );
    assert_resumed_without_repeats(&a, &id, 10);
    let msgs = a.messages(&id);
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("Worker node-a stopped answering (its lease expired")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("of worker node-b (retry 1)")
            || m.contains("of worker node-c (retry 1)")),
        "{msgs:?}"
    );
    let resumed_at = ["3", "6", "9"]
        .into_iter()
        .find(|s| msgs.contains(&format!("Training resumed at step {s} of 10")))
        .unwrap_or_else(|| panic!("resumed from a checkpoint: {msgs:?}"));
    // The machine that resumed it fetched machine a's checkpoint from the store (claim 1 wrote
    // it); no folder of machine a was read.
    let fetched: Vec<PathBuf> = ["machine-b", "machine-c"]
        .iter()
        .map(|m| {
            cluster
                .folder(m)
                .join("cache/checkpoints")
                .join(&id)
                .join(format!("attempt-1/step-{resumed_at}"))
        })
        .filter(|d| d.join("adapter_model.safetensors").is_file())
        .collect();
    assert_eq!(fetched.len(), 1, "no machine fetched the checkpoint");
    for (api, job) in &others {
        let done = api.wait_status(job, "succeeded");
        assert_eq!(api.train_steps(job), one_to(4), "{done}");
    }
    // The same job (same file, seed and settings) uninterrupted.
    let reference = b.create(&lora_job(&fb, 10, 3));
    b.wait_status(&reference, "succeeded");
    assert!(
        downloaded_adapter(&a2, &id, 10) == downloaded_adapter(&b2, &reference, 10),
        "the resumed adapter differs from the uninterrupted one"
    );
    let model = done["fine_tuned_model"].as_str().unwrap();
    let (status, chat) = a2.post(
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{chat}");
    a.assert_all_final();
    b.assert_all_final();
    c.assert_all_final();
}

/// `tuna models add` on an operator's machine stores the model in the object store, and the
/// source folder can go: a worker on another machine fetches it (cached by content hash, checked
/// against the manifest) and trains on it; an API node plans the job from its configuration and
/// tokenizer files alone and fetches the weights only to chat. The same model added under a
/// second name is stored once.
#[test]
fn a_model_added_on_one_machine_trains_and_chats_on_the_others() {
    let _serial = serial();
    let cluster = Cluster::new();
    let server = cluster.api_node("api-1");
    let (a, _b, fa, _fb) = server.two_users();
    let source = cluster.dir.path().join("operator/Qwen-demo-copy");
    std::fs::create_dir_all(&source).unwrap();
    let demo = tuna_model::demo::ensure_demo_model(&demo_root()).unwrap();
    for entry in std::fs::read_dir(&demo).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), source.join(entry.file_name())).unwrap();
    }
    std::fs::write(source.join("README.md"), "not a model file").unwrap();
    let add = |name: &str| {
        let out = Command::new(tuna())
            .args(["models", "add"])
            .arg(&source)
            .args(["--name", name, "--data-dir"])
            .arg(cluster.folder("operator"))
            .args(["--database", &cluster.database])
            .envs(cluster.env.iter().cloned())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = add("team-model");
    let second = add("team-model-again");
    let prefix = |line: &str| {
        line.split_once("blob-store:")
            .map(|(_, p)| p.trim().to_string())
            .unwrap_or_else(|| panic!("stored in the blob store: {line}"))
    };
    assert!(prefix(&first).starts_with("models/sha256-"), "{first}");
    assert_eq!(prefix(&first), prefix(&second), "one content, one copy");
    std::fs::remove_dir_all(&source).unwrap();

    let api_2 = cluster.api_node("api-2");
    let a2 = a.at(&api_2);
    let _node = cluster.worker(&server, "machine-b", "node-b");
    let mut job = lora_job(&fa, 3, 3);
    job["model"] = json!("team-model");
    let id = a2.create(&job);
    let done = a2.wait_status(&id, "succeeded");
    assert_eq!(a2.train_steps(&id), one_to(3), "{done}");
    let cached = |machine: &str, file: &str| {
        cluster
            .folder(machine)
            .join("cache")
            .join(prefix(&first))
            .join(file)
            .is_file()
    };
    assert!(
        cached("machine-b", "model.safetensors"),
        "the worker fetched the weights"
    );
    assert!(
        !cached("machine-b", "README.md"),
        "only the files Tuna reads are stored"
    );
    assert!(
        cached("api-2", "config.json"),
        "the API node planned from the stored config"
    );
    assert!(
        !cached("api-2", "model.safetensors"),
        "planning fetched no weights"
    );
    let (status, chat) = a2.post(
        "/v1/chat/completions",
        &json!({"model": "team-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{chat}");
    assert!(
        cached("api-2", "model.safetensors"),
        "chat fetched the weights"
    );
    a.assert_all_final();
}

/// A worker frozen past its lease (SIGSTOP): another node takes the job over; when the frozen
/// one wakes (SIGCONT), its claim is stale, its writes are refused and it exits at once
/// (fenced) without a checkpoint or a metric of its own landing.
///
/// On PostgreSQL, the database of many machines. (On SQLite a process stopped inside a write
/// transaction holds the database's write lock, 11 of 300 random stops of a training worker
/// measured, and nobody can write, the reaper included, until it continues or dies: SQLite is
/// for one machine.) The stop may land between `BEGIN` and `COMMIT` of a report: the row lock
/// it holds then ends with its session (`db::PG_IDLE_IN_TRANSACTION`), so the takeover still
/// happens; `db::tests::a_session_frozen_inside_a_transaction_does_not_block_the_reaper` forces
/// that case.
#[test]
fn a_frozen_worker_is_fenced_when_it_wakes() {
    let _serial = serial();
    let url = fresh_postgres();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, a, _b, fa, _fb) = api_node(&data, &["--database", &url]);
    let _node_a = Node::start(&server, "node-a");
    let id = a.create(&lora_job(&fa, 12, 4));
    a.wait_step(&id, 2);
    let frozen = job_process(&id);
    signal(&frozen.to_string(), "STOP");
    let frozen_step = a.job(&id)["tuna"]["progress"]["step"].as_i64().unwrap();
    let _node_b = Node::start(&server, "node-b");
    // Reaped, then claimed by node-b, whose worker waits for the frozen one's lock.
    a.wait_job(&id, "taken over", |j| {
        j["tuna"]["retries"] == 1 && j["status"] == "running"
    });
    let metrics_before = a.train_steps(&id);
    signal(&frozen.to_string(), "CONT");
    wait_gone(frozen);
    let log = std::fs::read_to_string(data.join("jobs").join(&id).join("worker.log")).unwrap();
    assert!(
        log.contains("is no longer valid; exiting (fenced)"),
        "{log}"
    );
    // Nothing of the frozen worker landed after the takeover: no step past the one it was at.
    assert!(
        metrics_before.iter().all(|s| *s <= frozen_step + 1),
        "{metrics_before:?} (frozen at {frozen_step})"
    );
    let done = a.wait_status(&id, "succeeded");
    assert_eq!(done["tuna"]["retries"], 1);
    assert_resumed_without_repeats(&a, &id, 12);
    let msgs = a.messages(&id);
    assert!(
        msgs.iter()
            .any(|m| m.contains("of worker node-b (retry 1)")),
        "{msgs:?}"
    );
    a.assert_all_final();
}

/// Two `tuna serve` on one PostgreSQL database: both answer, a node that restarts does not take
/// the other's running job back, and both nodes' workers are listed.
#[test]
fn two_api_nodes_on_one_postgres_answer_alike_and_keep_each_other_s_jobs() {
    let _serial = serial();
    let url = fresh_postgres();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let common = ["--database", &url, "--lease-seconds", LEASE];
    let one = Server::start(&data, &[&common[..], &["--worker-name", "node-1"]].concat());
    let mut two = Server::start(
        &data,
        &[
            &common[..],
            &["--worker-name", "node-2", "--local-workers", "0"],
        ]
        .concat(),
    );
    let (a, _b, fa, _fb) = one.two_users();
    let id = a.create(&lora_job(&fa, 300, 100));
    let running = a.wait_step(&id, 2);
    let at_two = a.at(&two);
    let seen = at_two.job(&id);
    assert_eq!(
        (&seen["id"], &seen["status"]),
        (&running["id"], &json!("running"))
    );
    // Node two restarts while node one's worker trains: the job stays where it is.
    signal(&two.pid().to_string(), "TERM");
    two.wait(T);
    two.spawn(
        &[
            &common[..],
            &["--worker-name", "node-2", "--local-workers", "0"],
        ]
        .concat(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let at_two = a.at(&two);
    let (status, workers) = at_two.get("/v1/tuna/workers");
    assert_eq!(status, 200, "{workers}");
    let names: Vec<&str> = workers["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["node-1"],
        "an API-only node runs no worker: {workers}"
    );
    assert_eq!(workers["data"][0]["your_jobs"], json!([id]), "{workers}");
    let out = Command::new(tuna())
        .args(["workers", "list", "--database", &url, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("node-1\tcpu:0") && listed.contains(&id),
        "{listed}"
    );
    let done = at_two.wait_status(&id, "succeeded");
    assert_eq!(done["tuna"]["retries"], 0, "{:?}", a.messages(&id));
    assert_resumed_without_repeats(&a, &id, 300);
    // Every event of the job (more than a page of them), from the database itself.
    let events = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = tuna_server::db::PgStore::connect(&url).await.unwrap();
        tuna_server::store::Store::events_since(&store, &id, 0, 100_000)
            .await
            .unwrap()
    });
    let starts: Vec<&str> = events
        .iter()
        .map(|e| e.message.as_str())
        .filter(|m| {
            m.starts_with("Fine-tuning job started")
                || m.contains("restarted")
                || m.contains("stopped answering")
        })
        .collect();
    assert_eq!(
        starts,
        ["Fine-tuning job started on cpu:0 of worker node-1"],
        "claimed once"
    );
    a.assert_all_final();
}

/// PostgreSQL `LISTEN/NOTIFY`: with the poll and the heartbeats an hour apart, only a notification
/// can explain that an idle node claims a job queued on another node, and that a pause and a
/// cancel asked on the API node reach the worker on the other one (each within the tests' 300 s).
#[test]
fn queued_jobs_pauses_and_cancels_reach_other_nodes_through_postgres_notify() {
    let _serial = serial();
    let url = fresh_postgres();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow = ["--lease-seconds", "3600", "--poll-seconds", "3600"];
    let server = Server::start(
        &data,
        &[
            &["--database", url.as_str(), "--local-workers", "0"][..],
            &slow[..],
        ]
        .concat(),
    );
    let (a, _b, fa, _fb) = server.two_users();
    let _node = Node::start_with(&server, "node-a", &slow);
    // The node has looked at the (empty) queue once and now naps for an hour. (It registers just
    // before it looks; the second lets that look end. Were it not over, the test would pass
    // without a notification, never fail without a reason.)
    a.wait_workers(&["node-a"]);
    std::thread::sleep(Duration::from_secs(1));
    let id = a.create(&lora_job(&fa, 400, 100));
    a.wait_step(&id, 2);
    let first = job_process(&id);

    let (status, body) = a.post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({}));
    assert_eq!(status, 200, "{body}");
    let paused = a.wait_status(&id, "paused");
    wait_gone(first);
    let at = paused["tuna"]["progress"]["step"].as_i64().unwrap();
    // The node looked at the queue once more after its worker exited (nothing to claim).
    std::thread::sleep(Duration::from_secs(1));

    let (status, body) = a.post(&format!("/v1/fine_tuning/jobs/{id}/resume"), &json!({}));
    assert_eq!(status, 200, "{body}");
    a.wait_step(&id, at + 1);
    let second = job_process(&id);
    assert_ne!(first, second);

    let (status, body) = a.post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}));
    assert_eq!(status, 200, "{body}");
    wait_gone(second);
    let log = std::fs::read_to_string(data.join("jobs").join(&id).join("worker.log")).unwrap();
    assert!(
        log.contains("is no longer valid; exiting (fenced)"),
        "the cancel reached the worker: {log}"
    );
    assert_eq!(a.job(&id)["status"], "cancelled");
    let msgs = a.messages(&id);
    assert_eq!(
        msgs.iter()
            .filter(|m| m.starts_with("Fine-tuning job started"))
            .count(),
        2,
        "{msgs:?}"
    );
    a.assert_all_final();
}

/// PostgreSQL stops (fast shutdown, as `pg_ctl stop`) in the middle of a run and comes back on
/// the same port and data: the API node, the worker node and the job's worker reconnect, the job
/// finishes without using a retry, every step's metrics are there once, and the API answers.
#[test]
fn postgres_stopped_and_restarted_mid_run_loses_nothing() {
    let _serial = serial();
    let cluster = tuna_server::test_services::PostgresCluster::private();
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(cluster.fresh_database());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--database",
            url.as_str(),
            "--local-workers",
            "0",
            "--lease-seconds",
            "30",
        ],
    );
    let (a, _b, fa, _fb) = server.two_users();
    let _node = Node::start_with(&server, "node-a", &["--lease-seconds", "30"]);
    let id = a.create(&lora_job(&fa, 100, 5));
    a.wait_step(&id, 3);
    let worker = job_process(&id);
    cluster.stop();
    assert!(
        Path::new(&format!("/proc/{worker}")).exists(),
        "the job ended before the outage"
    );
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart();
    let done = a.wait_status(&id, "succeeded");
    assert_eq!(done["tuna"]["retries"], 0, "{:?}", a.messages(&id));
    // The worker exits moments after the status is final (it first removes checkpoint blobs no
    // row names); one that lingers fails `wait_gone`.
    wait_gone(worker);
    assert_eq!(
        job_process_count(&id),
        0,
        "another process of the job lived on"
    );
    assert_resumed_without_repeats(&a, &id, 100);
    let log = std::fs::read_to_string(data.join("jobs").join(&id).join("worker.log")).unwrap();
    assert!(
        log.contains("the connection listening for job notifications dropped"),
        "the job's worker saw the outage: {log}"
    );
    let events = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = tuna_server::db::PgStore::connect(&url).await.unwrap();
        tuna_server::store::Store::events_since(&store, &id, 0, 100_000)
            .await
            .unwrap()
    });
    let starts = events
        .iter()
        .filter(|e| e.message.starts_with("Fine-tuning job started"))
        .count();
    assert_eq!(starts, 1, "one worker ran the whole job");
    // A new job after the restart runs too: the worker node claims again.
    let again = a.create(&lora_job(&fa, 3, 3));
    a.wait_status(&again, "succeeded");
    a.assert_all_final();
}

fn job_process_count(job: &str) -> usize {
    pids_with(&format!("--job {job}")).len()
}

/// Issue 14, the service part, end to end on the real binary: a node offers lavapipe (a
/// software Vulkan GPU, offered only because `--software-gpus` asks for it) as `gpu:0` beside
/// its CPU slot. A GPU job created through the API is claimed by the GPU slot only, trains on
/// `gpu:0`, follows the same job on the CPU within 1e-3 at every step, and records the device.
/// The estimates list both choices; the GPU's says "no measurement" until the GPU job measured it.
/// (Lives here for the `tuna serve` harness; it injects no fault.)
#[test]
fn a_gpu_job_is_claimed_by_the_gpu_slot_and_follows_the_cpu_job() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--cpu-slots", "1", "--software-gpus"]);
    let api = server.user("gina");
    let file = api.upload();
    let job = |compute: &str| {
        let mut body = lora_job(&file, 2, 2);
        body["tuna"]["precision"] = json!("f32");
        body["tuna"]["compute"] = json!(compute);
        body
    };
    let choices = |body: &Value| {
        let (status, est) = api.post("/v1/tuna/estimates", body);
        assert_eq!(status, 200, "{est}");
        est["compute_choices"].as_array().unwrap().clone()
    };
    let before = choices(&job("gpu"));
    let gpu = before.iter().find(|c| c["compute"] == "gpu").unwrap();
    assert_eq!(
        (&gpu["slots_total"], &gpu["slots_free"]),
        (&json!(1), &json!(1)),
        "{gpu}"
    );
    let label = gpu["devices"][0].as_str().unwrap();
    assert!(
        label.starts_with("gpu:0 on ") && label.contains("llvmpipe"),
        "{label}"
    );
    assert_eq!(
        gpu["estimate"]["throughput_source"], "none",
        "no guess: {gpu}"
    );
    assert_eq!(gpu["estimate"]["duration_seconds"], Value::Null);
    let cpu = before.iter().find(|c| c["compute"] == "cpu").unwrap();
    assert_eq!(cpu["slots_total"], 1);
    assert!(
        cpu["estimate"]["duration_seconds"].as_f64().unwrap() > 0.0,
        "{cpu}"
    );

    let on_gpu = api.create(&job("gpu"));
    let on_cpu = api.create(&job("cpu"));
    let losses = |id: &str| -> Vec<f64> {
        let done = api.wait_status(id, "succeeded");
        assert_eq!(
            done["tuna"]["compute"],
            if id == on_gpu { "gpu" } else { "cpu" }
        );
        let (_, m) = api.get(&format!("/v1/fine_tuning/jobs/{id}/metrics"));
        m["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "train")
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    let (g, c) = (losses(&on_gpu), losses(&on_cpu));
    assert_eq!((g.len(), c.len()), (2, 2));
    for (step, (g, c)) in g.iter().zip(&c).enumerate() {
        assert!(
            (g - c).abs() / c < 1e-3,
            "step {}: gpu {g} cpu {c}",
            step + 1
        );
    }
    let ran_on = api.job(&on_gpu)["tuna"]["ran_on"].clone();
    assert_eq!(
        (&ran_on["device"], &ran_on["backend"], &ran_on["software"]),
        (&json!("gpu:0"), &json!("vulkan"), &json!(true)),
        "{ran_on}"
    );
    assert!(
        ran_on["name"].as_str().unwrap().contains("llvmpipe"),
        "{ran_on}"
    );
    assert_eq!(api.job(&on_cpu)["tuna"]["ran_on"]["device"], "cpu:0");
    let events = api.messages(&on_gpu);
    assert!(
        events
            .iter()
            .any(|m| m.starts_with("Fine-tuning job started on gpu:0")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|m| m.starts_with("Training started on gpu:0 (llvmpipe") && m.contains("vulkan")),
        "{events:?}"
    );
    // The GPU job measured lavapipe's speed: its choice now estimates from it.
    let after = choices(&job("gpu"));
    let gpu = after.iter().find(|c| c["compute"] == "gpu").unwrap();
    assert_eq!(gpu["estimate"]["throughput_source"], "measured", "{gpu}");
    assert!(
        gpu["estimate"]["device"]
            .as_str()
            .unwrap()
            .starts_with("gpu/llvmpipe"),
        "{gpu}"
    );
    assert!(
        gpu["estimate"]["duration_seconds"].as_f64().unwrap() > 0.0,
        "{gpu}"
    );
}

/// The GPU of a slot is gone when its job starts (here: the Vulkan driver that `tuna serve`
/// found at start-up is removed, through the loader's `VK_ICD_FILENAMES`, which the job's worker
/// process inherits). The job fails with `device_unavailable` naming the slot; the server and its
/// other slot go on: a CPU job queued behind it succeeds.
#[test]
fn a_gpu_slot_whose_device_cannot_be_opened_fails_its_job_with_device_unavailable() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let icd = dir.path().join("lvp_icd.json");
    std::fs::copy("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json", &icd)
        .expect("lavapipe's Vulkan driver (mesa-vulkan-drivers) is installed");
    let program = vec![
        "env".to_string(),
        format!("VK_ICD_FILENAMES={}", icd.display()),
        tuna().display().to_string(),
    ];
    let server = Server::start_as(
        program,
        &dir.path().join("data"),
        &["--cpu-slots", "1", "--software-gpus"],
    );
    let api = server.user("gina");
    let file = api.upload();
    let job = |compute: &str| {
        let mut body = lora_job(&file, 2, 2);
        body["tuna"]["compute"] = json!(compute);
        body
    };
    // The node offers gpu:0 ...
    let (status, est) = api.post("/v1/tuna/estimates", &job("gpu"));
    assert_eq!(status, 200, "{est}");
    let offered = est["compute_choices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["compute"] == "gpu" && c["slots_total"] == 1);
    assert!(offered, "{est}");
    // ... whose driver then disappears.
    std::fs::remove_file(&icd).unwrap();
    let on_gpu = api.create(&job("gpu"));
    let failed = api.wait_status(&on_gpu, "failed");
    let error = &failed["error"];
    assert_eq!(error["code"], "device_unavailable", "{failed}");
    assert_eq!(error["param"], "tuna.compute", "{failed}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("slot `gpu:0`") && message.contains("no GPU `gpu:0`"),
        "{message}"
    );
    let on_cpu = api.create(&job("cpu"));
    api.wait_status(&on_cpu, "succeeded");
}
