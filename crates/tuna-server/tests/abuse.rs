//! The service under abuse, over real HTTP (issue 9, the request and transport side): clients
//! that disconnect mid-chat or never finish their headers, one user hammering the generation
//! slots, huge form fields and bodies, wrong methods and types, too many event streams, SIGTERM
//! with chats in flight, and the modes of every file the server writes.
//!
//! Tests that need a process of their own (signals, the open-file limit, the umask) run this
//! test binary again as a server: `server_process_entry` does what `tuna serve` does
//! (`prepare_server_process`, `build_state`, `serve` until SIGINT/SIGTERM), with the settings the
//! test passes in its environment.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, TestServer, tiny_job};
use serde_json::{Value, json};

#[test]
fn worker_process_entry() {
    common::run_worker_if_asked();
}

const SERVE_DIR_ENV: &str = "TUNA_TEST_SERVE_DIR";
const SERVE_HEADER_TIMEOUT_MS_ENV: &str = "TUNA_TEST_SERVE_HEADER_TIMEOUT_MS";
const SERVE_GRACE_MS_ENV: &str = "TUNA_TEST_SERVE_GRACE_MS";
const SERVE_PER_USER_ENV: &str = "TUNA_TEST_SERVE_GENERATIONS_PER_USER";

/// The server process (see the module docs). Writes `ready.json` (address and an API key) into
/// its directory once it listens; its data directory is `<dir>/data`.
#[test]
fn server_process_entry() {
    let Some(dir) = std::env::var_os(SERVE_DIR_ENV).map(PathBuf::from) else {
        return; // an ordinary test run
    };
    let ms = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    tuna_server::prepare_server_process();
    let mut settings = common::settings(&dir.join("data"));
    common::with_noise_model(&mut settings);
    if let Some(t) = ms(SERVE_HEADER_TIMEOUT_MS_ENV) {
        settings.header_read_timeout = t;
    }
    if let Some(t) = ms(SERVE_GRACE_MS_ENV) {
        settings.shutdown_grace = t;
    }
    settings.max_generations_per_user = std::env::var(SERVE_PER_USER_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async move {
        let state = tuna_server::build_state(settings).await?;
        let (_, key) = tuna_server::auth::create_user(&*state.store, "alice").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ready = json!({"addr": listener.local_addr()?.to_string(), "key": key});
        std::fs::write(dir.join("ready.tmp"), ready.to_string())?;
        std::fs::rename(dir.join("ready.tmp"), dir.join("ready.json"))?;
        tuna_server::serve(listener, state, async {
            let signal = tuna_server::shutdown_signal().await;
            eprintln!("{signal}: stopping");
        })
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("server process failed: {e}");
            std::process::exit(3)
        }
    }
}

/// A server in a process of its own; killed if the test ends without stopping it.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    key: String,
    dir: tempfile::TempDir,
}

impl ServerProcess {
    /// `env`: settings for the entry; `max_open_files`: the child's open-file limit (soft and
    /// hard, so the server cannot raise it).
    fn start(env: &[(&str, String)], max_open_files: Option<u64>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "server_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(SERVE_DIR_ENV, dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = max_open_files {
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let ready = dir.path().join("ready.json");
        let start = Instant::now();
        while !ready.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the server exited ({status}): {}", read_log(dir.path()));
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the server did not start: {}",
                read_log(dir.path())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let ready: Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
        ServerProcess {
            child,
            addr: ready["addr"].as_str().unwrap().parse().unwrap(),
            key: ready["key"].as_str().unwrap().to_string(),
            dir,
        }
    }

    fn client(&self) -> Client {
        Client::new(&format!("http://{}", self.addr), &self.key)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill only sends a signal to our own child process.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit (at most `timeout`); returns its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > timeout {
                panic!(
                    "the server did not exit within {timeout:?}: {}",
                    read_log(self.dir.path())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// A chat that runs until `max_tokens` (on the noise model, which never stops by itself).
fn long_chat(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": common::NOISE_MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": max_tokens,
        "stream": stream,
        "seed": 1
    })
}

/// Raises this test process's open-file limit to its hard limit (for many client sockets).
fn raise_own_open_file_limit() -> u64 {
    tuna_server::http::raise_open_file_limit().unwrap()
}

/// A request written by hand (raw TCP), then the answer read until the server closes or
/// `timeout`: for what `reqwest` cannot send (bodies that never end, partial headers).
fn raw_exchange(
    addr: SocketAddr,
    head: &str,
    body_chunks: impl Iterator<Item = Vec<u8>>,
) -> (usize, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let reader = {
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut answer = Vec::new();
            let _ = r.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        })
    };
    // Keep sending until the server answers and closes (a write then fails) or the body ends.
    let mut sent = 0;
    for chunk in body_chunks {
        if reader.is_finished() || s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    (sent, reader.join().unwrap())
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn json_of(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

// --- item 5: disconnects and fair share of the generation slots ---------------------------------

/// Two `max_tokens: 4000` chats cut after a second must not hold the slots: another user's
/// chat is served right away (today: both slots stayed busy ~40 s and everyone got 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_generation_stops_when_the_client_disconnects() {
    let t = TestServer::start_with(|s| {
        common::with_noise_model(s);
        s.max_generations_per_user = Some(2);
        s.generation_queue_timeout = Duration::from_secs(5);
    })
    .await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut cut = Vec::new();
    for _ in 0..2 {
        let c = alice.clone();
        cut.push(tokio::spawn(async move {
            c.http
                .post(format!("{}/v1/chat/completions", c.base))
                .bearer_auth(&c.key)
                .json(&long_chat(4000, false))
                .timeout(Duration::from_millis(1500))
                .send()
                .await
        }));
    }
    for c in cut {
        let r = c.await.unwrap();
        assert!(
            r.as_ref().is_err_and(|e| e.is_timeout()),
            "the long chat should still be running when it is cut: {r:?}"
        );
    }
    let slots = t.server.state.inference.slots().clone();
    let freed = Instant::now();
    while slots.in_use() > 0 && freed.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slots.in_use(), 0, "the cut chats still hold their slots");
    let a = bob.post("/v1/chat/completions", &long_chat(2, false)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["object"], "chat.completion");
}

/// While one user keeps both slots' worth of long chats going, another user's chat is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_user_is_served_while_the_first_hammers_the_slots() {
    let t = TestServer::start_with(|s| {
        common::with_noise_model(s);
        s.generation_queue_timeout = Duration::from_secs(20);
    })
    .await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut hammer = Vec::new();
    for _ in 0..3 {
        let c = alice.clone();
        hammer.push(tokio::spawn(async move {
            c.post("/v1/chat/completions", &long_chat(4000, false))
                .await
        }));
    }
    let slots = t.server.state.inference.slots().clone();
    while slots.in_use() == 0 || slots.waiting() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slots.in_use(), 1, "alice holds one slot, her others wait");
    let a = bob.post("/v1/chat/completions", &long_chat(4, false)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    for h in &hammer {
        assert!(!h.is_finished(), "alice's long chats are still generating");
    }
    for h in hammer {
        h.abort();
    }
}

// --- item 7: slow clients, connection cap, event streams ----------------------------------------

/// 1,100 connections that never finish their headers, under an open-file limit of 1024, must
/// not make `/health` unreachable; the server closes them after its header-read timeout.
#[test]
fn slow_clients_cannot_lock_out_health() {
    let have = raise_own_open_file_limit();
    assert!(have > 2400, "the test needs ~2,300 open files, has {have}");
    let server = ServerProcess::start(&[(SERVE_HEADER_TIMEOUT_MS_ENV, "3000".into())], Some(1024));
    let mut slow = Vec::new();
    for _ in 0..1100 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
        slow.push(s);
    }
    let health = || {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .expect("/health must answer within 5 s");
        answer
    };
    let answer = health();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );
    // A connection that sends half its headers is closed after the header-read timeout.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let started = Instant::now();
    let closed = match idle.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => true, // hyper may answer 408 before closing
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    assert!(
        closed,
        "the half-sent request was not closed (waited {:?})",
        started.elapsed()
    );
    drop(slow);
    assert!(health().ends_with("ok"));
}

/// A user may hold a few open event streams (settings: 2); more get 429 until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_streams_are_capped_per_user() {
    let t = TestServer::start_with(|s| s.max_event_streams_per_user = 2).await;
    let c = t.user("alice").await;
    let f = c.upload("identity-12.jsonl").await;
    assert_eq!(f.status, 200, "{}", f.body);
    let file = f.body["id"].as_str().unwrap();
    let j = c
        .post("/v1/fine_tuning/jobs", &tiny_job(file, 100, 50))
        .await;
    assert_eq!(j.status, 200, "{}", j.body);
    let id = j.body["id"].as_str().unwrap().to_string();
    // A paused job's stream stays open.
    let p = c
        .post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({}))
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    c.wait_status(&id, "paused", Duration::from_secs(120)).await;
    let url = format!("{}/v1/fine_tuning/jobs/{id}/events?stream=true", c.base);
    let open = || c.http.get(&url).bearer_auth(&c.key).send();
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open().await.unwrap();
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    // Closing a stream frees its place (the server notices the closed connection).
    drop(first);
    let start = Instant::now();
    loop {
        let again = open().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the closed stream was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- item 6: bounded fields and reports -------------------------------------------------------------

/// A 200 MB `purpose` is refused while it is still arriving (the server does not buffer it) and
/// is never quoted back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_form_field_is_refused_early_and_not_echoed() {
    let t = TestServer::start().await;
    let c = t.user("alice").await;
    let addr = t.server.addr;
    let key = c.key.clone();
    let (sent, answer) = tokio::task::spawn_blocking(move || {
        let boundary = "XyZbOuNdArY";
        let total: usize = 200 << 20;
        let head = format!(
            "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n",
            total + 200
        );
        let chunks = (0..total / 65536).map(|_| vec![b'Z'; 65536]);
        raw_exchange(addr, &head, chunks)
    })
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 413, "{answer}");
    let body = json_of(&answer);
    assert_eq!(body["error"]["code"], "field_too_large", "{body}");
    assert_eq!(body["error"]["param"], "purpose", "{body}");
    assert!(!answer.contains("ZZZZ"), "the value was echoed: {answer}");
    assert!(
        sent < 32 << 20,
        "the answer came only after {sent} bytes: the field was buffered"
    );
    // Nothing was kept.
    let list = c.get("/v1/files").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 0);
    // A long but bounded wrong purpose is quoted cut.
    let long = "p".repeat(1000);
    let a = c.upload_bytes("x.jsonl", b"{}\n".to_vec(), &long).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.len() < 200 && msg.contains("(1000 bytes in all)"),
        "{msg}"
    );
}

/// 30 lines with 1 MB unknown keys: the stored report, every answer and the database stay small
/// (today every `GET /v1/files` was 105 MB for 100 such lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_reports_stay_small() {
    let t = TestServer::start().await;
    let c = t.user("alice").await;
    let mut data = Vec::new();
    for i in 0..30 {
        let key = format!("k{i}{}", "x".repeat(1 << 20));
        let line = json!({
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            key: 1,
        });
        data.extend_from_slice(line.to_string().as_bytes());
        data.push(b'\n');
    }
    let up = c.upload_bytes("wide.jsonl", data, "fine-tune").await;
    assert_eq!(up.status, 200, "{}", up.body);
    let stats = &up.body["check"]["stats"];
    assert_eq!(stats["warnings_by_code"]["unknown_field"], 30, "{stats}");
    let id = up.body["id"].as_str().unwrap();
    let one = c.get_bytes(&format!("/v1/files/{id}")).await;
    assert_eq!(one.0, 200);
    assert!(
        one.1.len() < 64 << 10,
        "GET /v1/files/{{id}}: {} bytes",
        one.1.len()
    );
    let list = c.get_bytes("/v1/files").await;
    assert!(
        list.1.len() < 16 << 10,
        "GET /v1/files: {} bytes",
        list.1.len()
    );
    let listed: Value = serde_json::from_slice(&list.1).unwrap();
    assert_eq!(
        listed["data"][0]["check"]["stats"]["warnings_by_code"]["unknown_field"],
        30
    );
    let db: u64 = ["tuna.db", "tuna.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(t.dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(db < 8 << 20, "the database holds {db} bytes");
}

/// A list longer than one store batch comes out whole, in order, and pages on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_lists_span_store_batches() {
    let t = TestServer::start().await;
    let c = t.user("alice").await;
    let user = c.get("/v1/tuna/me").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..230 {
        let row = tuna_server::store::FileRow {
            id: format!("file-{i:04}"),
            user_id: user.clone(),
            filename: format!("f{i}.jsonl"),
            purpose: "fine-tune".into(),
            bytes: 1,
            created_at: 1,
            status: "processed".into(),
            status_details: None,
            check_report: None,
            blob_key: format!("files/file-{i:04}"),
        };
        t.server.state.store.insert_file(&row).await.unwrap();
    }
    let first = c.get("/v1/files?limit=205&order=asc").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let ids: Vec<&str> = first.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..205).map(|i| format!("file-{i:04}")).collect();
    assert_eq!(ids, want);
    assert_eq!(first.body["has_more"], true);
    let rest = c.get("/v1/files?limit=205&order=asc&after=file-0204").await;
    assert_eq!(rest.body["data"].as_array().unwrap().len(), 25);
    assert_eq!(rest.body["has_more"], false);
    assert_eq!(
        c.get("/v1/files").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        230
    );
}

// --- item 10: the shape of errors ------------------------------------------------------------------

/// A 100 MB JSON body is 413 (announced or chunked), answered without reading it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_json_body_is_413() {
    let t = TestServer::start().await;
    let c = t.user("alice").await;
    let addr = t.server.addr;
    for chunked in [false, true] {
        let key = c.key.clone();
        let (sent, answer) = tokio::task::spawn_blocking(move || {
            let total: usize = 100 << 20;
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {total}")
            };
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\n{framing}\r\n\r\n"
            );
            let piece = |bytes: Vec<u8>| {
                if chunked {
                    let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
                    framed.extend_from_slice(&bytes);
                    framed.extend_from_slice(b"\r\n");
                    framed
                } else {
                    bytes
                }
            };
            let mut first =
                b"{\"model\": \"demo\", \"messages\": [{\"role\": \"user\", \"content\": \""
                    .to_vec();
            first.resize(65536, b'a');
            let chunks = std::iter::once(piece(first))
                .chain((1..total / 65536).map(move |_| piece(vec![b'a'; 65536])));
            raw_exchange(addr, &head, chunks)
        })
        .await
        .unwrap();
        assert_eq!(status_of(&answer), 413, "chunked {chunked}: {answer}");
        let body = json_of(&answer);
        assert_eq!(
            body,
            json!({"error": {
                "message": format!("the request body is larger than the limit of {} bytes", 2 << 20),
                "type": "invalid_request_error", "param": null, "code": "request_too_large"}}),
            "chunked {chunked}"
        );
        assert!(sent < 32 << 20, "answered only after {sent} bytes");
    }
}

/// A request body that stops arriving is answered 408 (JSON and multipart alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_body_is_408() {
    let t = TestServer::start_with(|s| s.body_read_timeout = Duration::from_millis(500)).await;
    let c = t.user("alice").await;
    let addr = t.server.addr;
    for (path, content_type) in [
        ("/v1/chat/completions", "application/json".to_string()),
        ("/v1/files", "multipart/form-data; boundary=B".to_string()),
    ] {
        let key = c.key.clone();
        let (_, answer) = tokio::task::spawn_blocking(move || {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n--B\r\n"
            );
            // The body never comes: the iterator waits, then ends.
            let stall = std::iter::once(()).map(|()| {
                std::thread::sleep(Duration::from_secs(3));
                Vec::new()
            });
            raw_exchange(addr, &head, stall)
        })
        .await
        .unwrap();
        assert_eq!(status_of(&answer), 408, "{path}: {answer}");
        assert_eq!(
            json_of(&answer)["error"]["code"],
            "request_timeout",
            "{path}"
        );
    }
}

/// 405 carries OpenAI's error object; type errors name the field in the message and `param`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_methods_and_types_get_openai_errors() {
    let t = TestServer::start().await;
    let c = t.user("alice").await;
    let r = c
        .http
        .get(format!("{}/v1/chat/completions", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "invalid method for URL (GET /v1/chat/completions)",
            "type": "invalid_request_error", "param": null, "code": "method_not_allowed"}})
    );
    let r = c.delete("/v1/files").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.body["error"]["code"], "method_not_allowed", "{}", r.body);

    // Job settings are checked against their table (every invalid field, in `errors`); other
    // bodies by their types.
    let cases = [
        (
            "/v1/fine_tuning/jobs",
            json!({"model": "demo", "training_file": "file-x", "hyperparameters": {"n_epochs": "many"}}),
            "hyperparameters.n_epochs",
            "`hyperparameters.n_epochs` must be an integer between 1 and 50 or \"auto\", got \"many\"",
        ),
        (
            "/v1/fine_tuning/jobs",
            json!({"model": "demo", "training_file": "file-x",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": [1]}}}}),
            "method.supervised.hyperparameters.learning_rate_multiplier",
            "`method.supervised.hyperparameters.learning_rate_multiplier` must be a number >= 0.001 and <= 100 or \"auto\", got [1]",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "demo", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
            "invalid `messages[0].content`: expected a string or a list of content parts",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "demo", "messages": [], "stop": 3}),
            "stop",
            "invalid `stop`: expected a string or a list of strings",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "demo", "messages": [], "temperature": "hot"}),
            "temperature",
            "invalid `temperature`: invalid type: string \"hot\"",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            "model",
            "invalid `model`: missing field `model`",
        ),
    ];
    for (path, body, param, text) in cases {
        let a = c.post(path, &body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.body["error"]["param"], param, "{body}: {}", a.body);
        assert_eq!(a.body["error"]["type"], "invalid_request_error");
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(text), "{body}: {message}");
        assert!(!message.contains("untagged"), "{message}");
    }
}

// --- item 2 (HTTP half): SIGTERM ---------------------------------------------------------------------

/// SIGTERM with two chats generating: new connections are refused at once, the non-streaming
/// chat gets a proper answer (503 once the grace period is over), the stream ends with an error
/// event, and the process exits 0 (today it died in 77 ms and the chat got an empty reply).
#[test]
fn sigterm_ends_in_flight_chats_with_proper_answers() {
    let mut server = ServerProcess::start(
        &[
            (SERVE_GRACE_MS_ENV, "1000".into()),
            (SERVE_PER_USER_ENV, "2".into()),
        ],
        None,
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let c = server.client();
    let (plain, mut stream) = runtime.block_on(async {
        let plain = {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c
                    .http
                    .post(format!("{}/v1/chat/completions", c.base))
                    .bearer_auth(&c.key)
                    .json(&long_chat(4000, false))
                    .send()
                    .await?;
                Ok::<_, reqwest::Error>((r.status().as_u16(), r.text().await?))
            })
        };
        let stream = c
            .http
            .post(format!("{}/v1/chat/completions", c.base))
            .bearer_auth(&c.key)
            .json(&long_chat(4000, true))
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        (plain, stream)
    });
    // The stream has produced text: both chats are generating.
    let mut text = String::new();
    runtime.block_on(async {
        while !text.contains("\"content\":\"") || text.matches("data:").count() < 3 {
            let chunk = stream.chunk().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "new connections must be refused once shutdown starts"
    );
    let (status, body) = runtime
        .block_on(plain)
        .unwrap()
        .expect("the in-flight chat got no answer");
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(body["error"]["code"], "server_shutting_down", "{body}");
    let rest = runtime.block_on(async {
        let mut rest = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    });
    let last = rest
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .unwrap_or_default();
    let last: Value = serde_json::from_str(last).unwrap_or(Value::Null);
    assert_eq!(
        last["error"]["code"],
        "server_shutting_down",
        "{}",
        &rest[rest.len().saturating_sub(600)..]
    );
    assert_eq!(server.wait(Duration::from_secs(30)), Some(0));
}

// --- item 8: private files -------------------------------------------------------------------------

/// After an upload, a job with checkpoints and a chat, nothing under the data directory is open
/// to group or others: directories 0700, files 0600 (database, `-wal`/`-shm`, uploads, job files).
#[test]
fn every_file_the_server_writes_is_private() {
    let mut server = ServerProcess::start(&[], None);
    let c = server.client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let f = c.upload("identity-12.jsonl").await;
        assert_eq!(f.status, 200, "{}", f.body);
        let file = f.body["id"].as_str().unwrap();
        let j = c.post("/v1/fine_tuning/jobs", &tiny_job(file, 2, 1)).await;
        assert_eq!(j.status, 200, "{}", j.body);
        let id = j.body["id"].as_str().unwrap();
        c.wait_status(id, "succeeded", Duration::from_secs(300))
            .await;
        let a = c.post("/v1/chat/completions", &long_chat(2, false)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    });
    let data = server.data_dir();
    let mut seen = Vec::new();
    let mut open = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            if meta.permissions().mode() & 0o077 != 0 {
                open.push(format!(
                    "{:o} {}",
                    meta.permissions().mode() & 0o777,
                    path.display()
                ));
            }
            seen.push(path);
        }
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for name in ["tuna.db", "tuna.db-wal", "tuna.db-shm"] {
        assert!(data.join(name).exists(), "{name} missing");
    }
    assert!(
        seen.iter()
            .any(|p| p.to_string_lossy().contains("checkpoint")),
        "the job wrote no checkpoint: {seen:?}"
    );
    assert!(seen.len() > 10, "{seen:?}");
    assert!(open.is_empty(), "readable by others:\n{}", open.join("\n"));
    server.signal(libc::SIGINT);
    assert_eq!(server.wait(Duration::from_secs(60)), Some(0));
}
