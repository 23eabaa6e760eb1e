//! The router driven in-process (`tower::ServiceExt::oneshot`): status codes and the exact error
//! JSON of each error kind (OpenAI's shape, all four keys present).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use tuna_server::{AppState, router};

#[test]
fn worker_process_entry() {
    common::run_worker_if_asked();
}

struct Harness {
    state: AppState,
    key: String,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(configure: impl FnOnce(&mut tuna_server::Settings)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::test_settings(dir.path()).await;
    configure(&mut settings);
    let state = tuna_server::build_state(settings).await.unwrap();
    let (_, key) = tuna_server::auth::create_user(&*state.store, "tester")
        .await
        .unwrap();
    Harness {
        state,
        key,
        _dir: dir,
    }
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: bool,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if auth {
            req = req.header("authorization", format!("Bearer {}", self.key));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string()))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn error(message: &str, r#type: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": r#type, "param": param, "code": code}})
}

#[tokio::test]
async fn missing_and_wrong_keys_are_401() {
    let h = harness().await;
    let (status, body) = h.call("GET", "/v1/files", None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        error(
            "you didn't provide an API key; send it as `Authorization: Bearer <key>` (create one with `tuna users create NAME`)",
            "authentication_error",
            None,
            Some("invalid_api_key")
        )
    );
    let req = Request::builder()
        .uri("/v1/models")
        .header("authorization", "Bearer sk-tuna-wrong")
        .body(Body::empty())
        .unwrap();
    let resp = router(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = h.call("GET", "/v1/models", None, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "demo");
    assert_eq!(body["data"][0]["object"], "model");
}

#[tokio::test]
async fn unknown_objects_and_urls_are_404() {
    let h = harness().await;
    let (status, body) = h
        .call("GET", "/v1/fine_tuning/jobs/ftjob-nope", None, true)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        error(
            "fine-tuning job `ftjob-nope` not found",
            "invalid_request_error",
            None,
            Some("job_not_found")
        )
    );
    let (status, body) = h.call("GET", "/v1/files/file-nope", None, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        error(
            "file `file-nope` not found",
            "invalid_request_error",
            None,
            Some("file_not_found")
        )
    );
    let (status, body) = h.call("GET", "/v1/nothing/here", None, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        error(
            "unknown request URL: GET /v1/nothing/here",
            "invalid_request_error",
            None,
            Some("unknown_url")
        )
    );
    let job = r#"{"model": "nope", "training_file": "file-x"}"#;
    let (status, body) = h
        .call("POST", "/v1/fine_tuning/jobs", Some(job), true)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        error(
            "model `nope` does not exist or you do not have access to it",
            "invalid_request_error",
            Some("model"),
            Some("model_not_found")
        )
    );
    let job = r#"{"model": "demo", "training_file": "file-x"}"#;
    let (status, body) = h
        .call("POST", "/v1/fine_tuning/jobs", Some(job), true)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        error(
            "file `file-x` not found",
            "invalid_request_error",
            Some("training_file"),
            Some("file_not_found")
        )
    );
    let chat = r#"{"model": "ft:demo:someone::x:ckpt-step-1", "messages": [{"role": "user", "content": "hi"}]}"#;
    let (status, body) = h
        .call("POST", "/v1/chat/completions", Some(chat), true)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn malformed_and_invalid_bodies_are_400_with_the_field() {
    let h = harness().await;
    let (status, body) = h
        .call("POST", "/v1/fine_tuning/jobs", Some("{"), true)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the body is not valid JSON"),
        "{body}"
    );
    assert_eq!(
        (
            body["error"]["param"].clone(),
            body["error"]["code"].clone()
        ),
        (Value::Null, Value::Null)
    );
    // Job settings: every invalid field at once, each named as it was sent, in `errors`; the
    // estimate route answers exactly the same.
    for route in ["/v1/fine_tuning/jobs", "/v1/tuna/estimates"] {
        let (status, body) = h
            .call("POST", route, Some(r#"{"training_file": "f"}"#), true)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            json!({"error": {"message": "`model` is required", "type": "invalid_request_error",
                   "param": "model", "code": null,
                   "errors": [{"param": "model", "message": "`model` is required"}]}})
        );
        let bad = r#"{"model": "demo", "training_file": "f", "tuna": {"lora": {"rank": 0}}}"#;
        let (status, body) = h.call("POST", route, Some(bad), true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"]["message"],
            "`tuna.lora.rank` must be between 1 and 1024, got 0"
        );
        assert_eq!(body["error"]["param"], "tuna.lora.rank");
        let many = r#"{"model": "demo", "training_file": "f", "tuna": {"lora_rank": 8, "warmup_ratio": "x"},
            "hyperparameters": {"n_epochs": "three", "learning_rate_multiplier": 1e-300}}"#;
        let (status, body) = h.call("POST", route, Some(many), true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let params: Vec<&str> = body["error"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["param"].as_str().unwrap())
            .collect();
        assert_eq!(
            params,
            [
                "tuna.lora_rank",
                "hyperparameters.n_epochs",
                "hyperparameters.learning_rate_multiplier",
                "tuna.warmup_ratio"
            ],
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .ends_with("(and 3 more invalid fields, listed in `errors`)"),
            "{body}"
        );
        assert!(
            body["error"]["errors"][1]["message"]
                .as_str()
                .unwrap()
                .contains("must be an integer between 1 and 50 or \"auto\", got \"three\""),
            "{body}"
        );
        assert_eq!(
            body["error"]["errors"][2]["message"],
            "`hyperparameters.learning_rate_multiplier` must be >= 0.001 and <= 100, got 1e-300"
        );
    }
    // Every `param` of a settings error is a `param` (or alias) of `GET /v1/tuna/job_settings`.
    let (status, settings) = h.call("GET", "/v1/tuna/job_settings", None, true).await;
    assert_eq!(status, StatusCode::OK);
    let known: Vec<String> = settings["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let mut v = vec![s["param"].as_str().unwrap().to_string()];
            v.extend(
                s["aliases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string()),
            );
            v
        })
        .collect();
    for p in [
        "hyperparameters.n_epochs",
        "hyperparameters.learning_rate_multiplier",
        "tuna.warmup_ratio",
        "tuna.lora.rank",
        "model",
    ] {
        assert!(known.contains(&p.to_string()), "{p}");
    }
    let chat =
        r#"{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}"#;
    let (status, body) = h
        .call("POST", "/v1/chat/completions", Some(chat), true)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        error(
            "`temperature` must be between 0 and 2, got 3",
            "invalid_request_error",
            Some("temperature"),
            None
        )
    );
    let (status, body) = h
        .call("GET", "/v1/fine_tuning/jobs?limit=0", None, true)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "limit");
    let (status, body) = h
        .call(
            "GET",
            "/v1/fine_tuning/jobs?after=ftjob-unknown",
            None,
            true,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "after");
}

#[tokio::test]
async fn busy_generation_slots_are_429_after_a_bounded_wait() {
    let h =
        harness_with(|s| s.generation_queue_timeout = std::time::Duration::from_millis(300)).await;
    // Other users hold every slot: the request waits its turn for the bounded time, then 429.
    let slots = h.state.inference.slots().clone();
    let none = tokio_util::sync::CancellationToken::new();
    let mut held = Vec::new();
    for i in 0..slots.total() {
        held.push(
            slots
                .acquire(&format!("other-{i}"), std::time::Duration::ZERO, &none)
                .await
                .unwrap(),
        );
    }
    let chat =
        r#"{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
    let (status, body) = h
        .call("POST", "/v1/chat/completions", Some(chat), true)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("every generation slot stayed busy for 0.3 s"),
        "{body}"
    );
    drop(held);
    let (status, body) = h
        .call("POST", "/v1/chat/completions", Some(chat), true)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["completion_tokens"].as_i64().unwrap() <= 2);
    assert_eq!(slots.in_use(), 0);
}

#[tokio::test]
async fn base_model_chat_honours_seed_stop_and_system() {
    let h = harness().await;
    let ask = |extra: Value| {
        let mut b = json!({"model": "demo", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Who are you?"}], "max_tokens": 12});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    let text = |b: &Value| {
        b["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Same seed, same sample; temperature 0 ignores the seed.
    let (_, a) = h
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&ask(json!({"seed": 5, "temperature": 1.0}))),
            true,
        )
        .await;
    let (_, b) = h
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&ask(json!({"seed": 5, "temperature": 1.0}))),
            true,
        )
        .await;
    assert_eq!(text(&a), text(&b));
    let (_, g1) = h
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&ask(json!({"seed": 1, "temperature": 0}))),
            true,
        )
        .await;
    let (_, g2) = h
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&ask(json!({"seed": 2, "temperature": 0}))),
            true,
        )
        .await;
    assert_eq!(text(&g1), text(&g2));
    assert_eq!(
        g1["choices"][0]["finish_reason"], "length",
        "the random demo model never says eos this early: {g1}"
    );
    // A stop sequence taken from the greedy answer cuts the answer right before it.
    let full = text(&g1);
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 4, "{full:?}");
    let cut: String = chars[2..4].iter().collect();
    let (_, s) = h
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&ask(json!({"temperature": 0, "stop": [cut.clone()]}))),
            true,
        )
        .await;
    assert_eq!(s["choices"][0]["finish_reason"], "stop");
    assert_eq!(text(&s), full[..full.find(&cut).unwrap()]);
    // The system message reaches the prompt: a different one changes the prompt length.
    let (_, other) = h
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&json!({"model": "demo", "messages": [{"role": "system", "content": "You are a very, very verbose assistant."}, {"role": "user", "content": "Who are you?"}], "max_tokens": 1}).to_string()),
            true,
        )
        .await;
    assert!(
        other["usage"]["prompt_tokens"].as_i64().unwrap()
            > g1["usage"]["prompt_tokens"].as_i64().unwrap()
    );
}

#[tokio::test]
async fn a_model_reports_its_generation_defaults() {
    let h = harness().await;
    let (status, body) = h.call("GET", "/v1/models/demo", None, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The demo model's generation_config.json: temperature 0.7, top_p 0.8.
    assert_eq!(
        body["tuna"]["generation"],
        json!({"temperature": 0.7, "top_p": 0.8, "max_tokens": 512})
    );
    let (status, body) = h.call("GET", "/v1/models/no-such-model", None, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// The object store (SeaweedFS) SIGKILLed: an upload answers 503 `storage_unavailable` in
/// OpenAI's shape, no file is listed for it, and once the store is back the same upload works.
/// Always on S3 (its own server), whatever the run's blob store.
#[tokio::test]
async fn uploads_while_the_object_store_is_down_are_503_and_keep_nothing() {
    use tuna_server::test_services::SeaweedFs;
    let weed = tokio::task::spawn_blocking(|| SeaweedFs::start(16, 64))
        .await
        .unwrap();
    let mut url = weed.location("api-down");
    if let tuna_server::blob::BlobStoreUrl::S3(loc) = &mut url {
        loc.retry_timeout = std::time::Duration::from_secs(2);
    }
    let server = common::TestServer::start_with(|s| s.blob_store = Some(url)).await;
    let c = server.user("u").await;
    let first = c.upload("identity-12.jsonl").await;
    assert_eq!(first.status, 200, "{:?}", first.body);

    let weed = tokio::task::spawn_blocking(move || {
        weed.kill();
        weed
    })
    .await
    .unwrap();
    let down = c.upload("identity-12.jsonl").await;
    assert_eq!(down.status, 503, "{:?}", down.body);
    assert_eq!(
        down.body,
        error(
            "the server's file storage is unavailable, so nothing of this request was kept; try again later",
            "server_error",
            None,
            Some("storage_unavailable")
        )
    );
    let weed = tokio::task::spawn_blocking(move || {
        weed.restart();
        weed
    })
    .await
    .unwrap();
    let files = c.get("/v1/files").await;
    let listed = files.body["data"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 1, "{:?}", files.body);
    let again = c.upload("identity-12.jsonl").await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["status"], "processed", "{:?}", again.body);
    tokio::task::spawn_blocking(move || drop(weed))
        .await
        .unwrap();
}
