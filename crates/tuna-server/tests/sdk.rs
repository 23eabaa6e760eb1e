//! Runs `tests/sdk/test_openai_sdk.py` (pytest, the official `openai` package) against a real
//! server. The Python comes from `TUNA_TEST_PYTHON`, else `<workspace>/.venv-test/bin/python`
//! (which `scripts/test.sh` creates with `pip install openai pytest`). Without either the test
//! says so and passes; with `TUNA_TEST_PYTHON` set, a missing or broken Python fails it.

mod common;

use std::path::PathBuf;

#[test]
fn worker_process_entry() {
    common::run_worker_if_asked();
}

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TUNA_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-test/bin/python");
    venv.exists().then_some(venv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_openai_python_sdk() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: no Python with `openai` and `pytest` (set TUNA_TEST_PYTHON or create .venv-test)"
        );
        return;
    };
    let t = common::TestServer::start().await;
    let (_, key) = tuna_server::auth::create_user(&*t.server.state.store, "sdk")
        .await
        .unwrap();
    let test = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/test_openai_sdk.py");
    let out = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&test)
        .env("TUNA_BASE_URL", format!("{}/v1", t.url()))
        .env("TUNA_API_KEY", &key)
        .env("TUNA_FIXTURES", common::fixture(""))
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(
        text.contains("7 passed"),
        "every SDK test must run:\n{text}"
    );
    t.server.stop().await.unwrap();
}
