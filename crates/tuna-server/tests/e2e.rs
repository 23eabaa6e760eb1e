//! End to end over HTTP against a real server with real worker processes, on the demo model with
//! tiny settings: upload → check → job → queue → training → checkpoints with samples → chat with
//! a checkpoint; bad uploads; isolation between users; pause / resume / cancel; crashed workers;
//! a server restart.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer, tiny_job};
use serde_json::{Value, json};

#[test]
fn worker_process_entry() {
    common::run_worker_if_asked();
}

const TRAIN_TIMEOUT: Duration = Duration::from_secs(300);

async fn upload_ok(c: &Client) -> String {
    let f = c.upload("identity-12.jsonl").await;
    assert_eq!(f.status, 200, "{:?}", f.body);
    assert_eq!(f.body["status"], "processed", "{}", f.body);
    f.body["id"].as_str().unwrap().to_string()
}

fn events_text(events: &Value) -> Vec<String> {
    events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_train_checkpoints_samples_and_chat() {
    let t = TestServer::start().await;
    let c = t.user("alice").await;

    // Upload: the check runs and its report comes back with the file.
    let f = c.upload("identity-12.jsonl").await;
    assert_eq!(f.status, 200, "{:?}", f.body);
    let file = &f.body;
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "fine-tune");
    assert_eq!(file["status"], "processed");
    assert_eq!(
        file["bytes"].as_i64().unwrap() as u64,
        std::fs::metadata(common::fixture("identity-12.jsonl"))
            .unwrap()
            .len()
    );
    assert_eq!(file["check"]["ok"], true);
    assert_eq!(file["check"]["stats"]["examples"], 12);
    let tokens_per_epoch = file["check"]["stats"]["tokens"]["epoch_tokens"]
        .as_i64()
        .unwrap();
    assert!(tokens_per_epoch > 12 * 10, "{tokens_per_epoch}");
    let file_id = file["id"].as_str().unwrap();
    let content = c.get_bytes(&format!("/v1/files/{file_id}/content")).await;
    assert_eq!(
        content.1,
        std::fs::read(common::fixture("identity-12.jsonl")).unwrap()
    );

    // An estimate before creating anything.
    let est = c.post("/v1/tuna/estimates", &tiny_job(file_id, 4, 2)).await;
    assert_eq!(est.status, 200, "{:?}", est.body);
    assert_eq!(est.body["estimate"]["total_steps"], 4);
    assert_eq!(est.body["queue_position"], 1);
    // One compute choice per kind: this server's CPU slot, and a GPU that no worker offers
    // (said so, with no invented estimate); creating a GPU job is refused on its field.
    let choices = est.body["compute_choices"].as_array().unwrap();
    let kinds: Vec<&str> = choices
        .iter()
        .map(|c| c["compute"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cpu", "gpu"]);
    assert_eq!(
        (&choices[0]["slots_total"], &choices[0]["unavailable"]),
        (&json!(1), &Value::Null)
    );
    assert!(choices[0]["estimate"]["duration_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(choices[1]["slots_total"], 0);
    assert_eq!(choices[1]["estimate"]["duration_seconds"], Value::Null);
    assert_eq!(choices[1]["estimate"]["throughput_source"], "none");
    assert!(
        choices[1]["unavailable"]
            .as_str()
            .unwrap()
            .contains("no live worker offers a GPU"),
        "{}",
        choices[1]
    );
    let mut on_gpu = tiny_job(file_id, 4, 2);
    on_gpu["tuna"]["compute"] = json!("gpu");
    let refused = c.post("/v1/fine_tuning/jobs", &on_gpu).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(
        (
            &refused.body["error"]["param"],
            &refused.body["error"]["code"]
        ),
        (&json!("tuna.compute"), &json!("compute_unavailable"))
    );

    // Create the job (with a validation file): hyperparameters recorded, Tuna's fields echoed,
    // estimate kept.
    let validation = upload_ok(&c).await;
    let mut body = tiny_job(file_id, 4, 2);
    body["validation_file"] = validation.clone().into();
    let posted = Instant::now();
    let j = c.post("/v1/fine_tuning/jobs", &body).await;
    assert_eq!(j.status, 200, "{:?}", j.body);
    let job = &j.body;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["validation_file"], validation.as_str());
    assert_eq!(job["object"], "fine_tuning.job");
    assert!(
        ["queued", "running"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    assert_eq!(
        job["hyperparameters"],
        json!({"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 3.0})
    );
    assert_eq!(
        job["method"]["supervised"]["hyperparameters"],
        job["hyperparameters"]
    );
    assert_eq!(job["tuna"]["name"], "tiny demo run");
    assert_eq!(job["tuna"]["lora"]["rank"], 4);
    assert_eq!(job["tuna"]["precision"], "auto");
    // The multiplier scales the model's own recommendation (the demo's tuna_defaults.json).
    let base = tuna_model::demo::demo_training_defaults()
        .lora_learning_rate
        .unwrap() as f64;
    assert!(
        (job["tuna"]["learning_rate"].as_f64().unwrap() - 3.0 * base).abs() < 1e-9,
        "3 × the demo's LoRA rate {base}: {}",
        job["tuna"]["learning_rate"]
    );
    assert_eq!(job["tuna"]["estimate"]["total_steps"], 4);
    assert_eq!(
        job["tuna"]["estimate"]["tokens_per_epoch"]
            .as_i64()
            .unwrap(),
        tokens_per_epoch
    );
    assert_eq!(job["seed"], 7);
    for key in [
        "error",
        "fine_tuned_model",
        "finished_at",
        "trained_tokens",
        "validation_file",
        "estimated_finish",
        "metadata",
    ] {
        assert!(
            job.get(key).is_some(),
            "`{key}` must be present (null allowed)"
        );
    }

    // The free slot takes it at once.
    let running = c
        .wait_job(&id, TRAIN_TIMEOUT, |j| j["status"] != "queued")
        .await;
    let to_running = posted.elapsed();
    eprintln!("POST → running: {:.1} ms", to_running.as_secs_f64() * 1e3);
    assert_ne!(running["status"], "failed", "{running}");

    let done = c.wait_status(&id, "succeeded", TRAIN_TIMEOUT).await;
    // The slot is given back, the device that ran the job is kept.
    assert_eq!(done["tuna"]["device"], Value::Null);
    assert_eq!(
        (
            &done["tuna"]["compute"],
            &done["tuna"]["ran_on"]["device"],
            &done["tuna"]["ran_on"]["backend"]
        ),
        (&json!("cpu"), &json!("cpu:0"), &json!("cpu")),
        "{done}"
    );
    assert!(
        done["fine_tuned_model"]
            .as_str()
            .unwrap()
            .starts_with("ft:demo:alice:tiny:"),
        "{done}"
    );
    assert_eq!(done["tuna"]["progress"]["step"], 4);
    assert_eq!(done["tuna"]["progress"]["total_steps"], 4);
    assert!(done["trained_tokens"].as_i64().unwrap() > 0);
    assert!(done["finished_at"].as_i64().unwrap() >= done["created_at"].as_i64().unwrap());
    assert_eq!(done["result_files"].as_array().unwrap().len(), 1);

    // Per-step metrics: the trainer's rows, a `train` row per step and an `eval` row per
    // validation pass (at each checkpoint: steps 2 and 4), oldest first.
    let m = c.get(&format!("/v1/fine_tuning/jobs/{id}/metrics")).await;
    let rows = m.body["data"].as_array().unwrap();
    let of = |kind: &str| -> Vec<i64> {
        rows.iter()
            .filter(|r| r["type"] == kind)
            .map(|r| r["step"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(of("train"), [1, 2, 3, 4]);
    assert_eq!(of("eval"), [2, 4]);
    assert!(
        rows.iter()
            .all(|r| r["loss"].as_f64().unwrap().is_finite() && r["loss"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(m.body["has_more"], false);
    // Pages hold whole steps: a step's train and eval rows stay together.
    let p1 = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/metrics?limit=2"))
        .await;
    assert_eq!(p1.body["has_more"], true);
    assert_eq!(p1.body["data"].as_array().unwrap().len(), 3, "{}", p1.body);
    let p2 = c
        .get(&format!(
            "/v1/fine_tuning/jobs/{id}/metrics?limit=2&after={}",
            p1.body["last_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(p2.body["data"][0]["step"], 3);
    assert_eq!(p2.body["has_more"], false);
    let csv = c
        .get_bytes(&format!(
            "/v1/files/{}/content",
            done["result_files"][0].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        String::from_utf8(csv.1).unwrap().lines().count(),
        5,
        "header + 4 steps"
    );

    // Events: newest first, OpenAI's objects; metrics events carry the step data.
    let ev = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    let texts = events_text(&ev.body);
    assert_eq!(texts[0], "The job has successfully completed");
    assert!(
        texts
            .iter()
            .any(|t| t == "Files validated, moving job to queued state")
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Fine-tuning job started"))
    );
    // The job says how its matrix products ran (`auto`: bf16 where the CPU has bf16 units).
    let auto = tuna_train::PrecisionSetting::Auto.resolve().describe();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Training started on cpu:0 (")
                && t.ends_with(&format!("matrix products: {auto}"))),
        "{texts:?}"
    );
    let metric_events: Vec<&Value> = ev.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "metrics" && e["data"]["train_loss"].is_number())
        .collect();
    assert_eq!(metric_events.len(), 4);
    assert_eq!(ev.body["data"][0]["object"], "fine_tuning.job.event");
    // Pagination of events.
    let p1 = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=3"))
        .await;
    assert_eq!(p1.body["has_more"], true);
    let last = p1.body["data"][2]["id"].as_str().unwrap();
    let p2 = c
        .get(&format!(
            "/v1/fine_tuning/jobs/{id}/events?limit=3&after={last}"
        ))
        .await;
    assert_eq!(events_text(&p2.body), texts[3..6].to_vec());
    // The SSE stream replays everything oldest first and ends with [DONE] (the job is final).
    let (status, data) = c
        .sse(
            reqwest::Method::GET,
            &format!("/v1/fine_tuning/jobs/{id}/events?stream=true"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let streamed: Vec<String> = data[..data.len() - 1]
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut all_newest_first = Vec::new();
    let mut after = String::new();
    loop {
        let page = c
            .get(&format!(
                "/v1/fine_tuning/jobs/{id}/events?limit=100{after}"
            ))
            .await;
        all_newest_first.extend(events_text(&page.body));
        if page.body["has_more"] != true {
            break;
        }
        after = format!(
            "&after={}",
            page.body["data"].as_array().unwrap().last().unwrap()["id"]
                .as_str()
                .unwrap()
        );
    }
    all_newest_first.reverse();
    assert_eq!(streamed, all_newest_first);

    // Checkpoints at steps 4 and 2 (newest first) with metrics and a sample each.
    let ck = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    assert_eq!(ck.status, 200);
    let cks = ck.body["data"].as_array().unwrap();
    assert_eq!(
        cks.iter()
            .map(|c| c["step_number"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [4, 2]
    );
    let dataset: Vec<Value> = std::fs::read_to_string(common::fixture("identity-12.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for ckpt in cks {
        assert_eq!(ckpt["object"], "fine_tuning.job.checkpoint");
        assert_eq!(ckpt["fine_tuning_job_id"], id.as_str());
        let model_id = ckpt["fine_tuned_model_checkpoint"].as_str().unwrap();
        assert_eq!(
            model_id,
            format!(
                "{}:ckpt-step-{}",
                done["fine_tuned_model"].as_str().unwrap(),
                ckpt["step_number"]
            )
        );
        assert!(ckpt["metrics"]["train_loss"].as_f64().unwrap() > 0.0);
        let valid = ckpt["metrics"]["valid_loss"].as_f64().unwrap();
        assert_eq!(ckpt["metrics"]["full_valid_loss"].as_f64().unwrap(), valid);
        let eval_row = rows
            .iter()
            .find(|r| r["type"] == "eval" && r["step"] == ckpt["step_number"])
            .unwrap();
        assert_eq!(
            eval_row["loss"].as_f64().unwrap(),
            valid,
            "the step's validation loss"
        );
        assert_eq!(
            ckpt["metrics"]["step"].as_f64().unwrap(),
            ckpt["step_number"].as_f64().unwrap()
        );
        let sample = &ckpt["tuna"]["samples"][0];
        // The reference answer is the dataset's answer to the sample's prompt.
        let prompt = sample["messages"].as_array().unwrap();
        let source = dataset
            .iter()
            .find(|d| d["messages"][0]["content"] == prompt.last().unwrap()["content"])
            .expect("sample comes from the dataset");
        assert_eq!(sample["reference"], source["messages"][1]["content"]);
        assert!(sample["generated"].is_string());
        assert_eq!(
            sample["held_out"], true,
            "samples come from the validation file"
        );
    }

    // Chat with the final checkpoint: greedy, as many tokens as the sample, must reproduce the
    // sample the trainer generated (same weights, same prompt, greedy) through a different path:
    // the adapter loaded from disk and applied on the fly.
    let ckpt = &cks[0];
    let sample = &ckpt["tuna"]["samples"][0];
    let messages: Vec<Value> = sample["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({"role": m["role"], "content": m["content"]}))
        .collect();
    let model_id = ckpt["fine_tuned_model_checkpoint"].as_str().unwrap();
    let req = json!({"model": model_id, "messages": messages, "temperature": 0, "max_tokens": 6});
    let chat = c.post("/v1/chat/completions", &req).await;
    assert_eq!(chat.status, 200, "{:?}", chat.body);
    assert_eq!(chat.body["object"], "chat.completion");
    assert_eq!(chat.body["model"], model_id);
    assert_eq!(chat.body["choices"][0]["message"]["role"], "assistant");
    let text = chat.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(
        text,
        sample["generated"].as_str().unwrap(),
        "chat with the checkpoint must match the checkpoint's greedy sample"
    );
    let usage = &chat.body["usage"];
    assert_eq!(
        usage["total_tokens"].as_i64().unwrap(),
        usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap()
    );
    assert!(usage["completion_tokens"].as_i64().unwrap() <= 6);

    // The same request streamed: chunks concatenate to the same text, then [DONE].
    let mut sreq = req.clone();
    sreq["stream"] = true.into();
    sreq["stream_options"] = json!({"include_usage": true});
    let (status, data) = c
        .sse(reqwest::Method::POST, "/v1/chat/completions", Some(&sreq))
        .await;
    assert_eq!(status, 200);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(chunks.last().unwrap()["usage"], *usage);

    // The adapter matters: the base model answers the same request differently.
    let mut base_req = req.clone();
    base_req["model"] = "demo".into();
    let base = c.post("/v1/chat/completions", &base_req).await;
    assert_ne!(
        base.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
        text,
        "the adapter changed nothing"
    );

    // The fine-tuned model id means the last checkpoint.
    let ft = c.post("/v1/chat/completions", &json!({"model": done["fine_tuned_model"], "messages": req["messages"], "temperature": 0, "max_tokens": 6})).await;
    assert_eq!(
        ft.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
        text
    );

    // Models: base, fine-tuned and both checkpoints.
    let models = c.get("/v1/models").await;
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"demo")
            && ids.contains(&model_id)
            && ids.contains(&done["fine_tuned_model"].as_str().unwrap()),
        "{ids:?}"
    );
    assert_eq!(ids.iter().filter(|i| i.contains(":ckpt-step-")).count(), 2);

    // The adapter download is a tar of the PEFT files.
    let (status, tar_bytes) = c
        .get_bytes(&format!(
            "/v1/fine_tuning/jobs/{id}/checkpoints/{}/adapter",
            ckpt["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    let mut names = Vec::new();
    let mut config = None;
    for entry in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
        let mut e = entry.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name.ends_with("adapter_config.json") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            config = Some(serde_json::from_str::<Value>(&s).unwrap());
        }
        names.push(name);
    }
    let prefix = format!("{id}-step-4/");
    assert!(
        names.contains(&format!("{prefix}adapter_config.json"))
            && names.contains(&format!("{prefix}adapter_model.safetensors")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("optimizer.safetensors") || n.ends_with("trainer_state.json")),
        "{names:?}"
    );
    let config = config.unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"].as_f64(), Some(8.0));

    // The measured throughput replaced the seed once the job finished, and estimates use it.
    let tp = c.get("/v1/tuna/throughput").await;
    let row = tp.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == "lora")
        .cloned()
        .unwrap();
    assert_eq!(
        (row["source"].as_str(), row["samples"].as_i64()),
        (Some("measured"), Some(1)),
        "{row}"
    );
    let est = c.post("/v1/tuna/estimates", &tiny_job(file_id, 4, 2)).await;
    assert_eq!(est.body["estimate"]["throughput_source"], "measured");
    assert_eq!(
        est.body["estimate"]["tokens_per_second"],
        row["tokens_per_second"]
    );

    // A file a finished job used can now be deleted; it is gone afterwards.
    let del = c.delete(&format!("/v1/files/{file_id}")).await;
    assert_eq!(
        del.body,
        json!({"id": file_id, "object": "file", "deleted": true})
    );
    assert_eq!(c.get(&format!("/v1/files/{file_id}")).await.status, 404);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upload_gets_a_line_numbered_report() {
    let t = TestServer::start().await;
    let c = t.user("bob").await;
    let f = c.upload("bad.jsonl").await;
    assert_eq!(f.status, 200, "{:?}", f.body);
    assert_eq!(f.body["status"], "error");
    let check = &f.body["check"];
    assert_eq!(check["ok"], false);
    let errors: Vec<(i64, String)> = check["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_i64().unwrap(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (2, "invalid_json".to_string()),
            (4, "unknown_role".to_string())
        ]
    );
    assert_eq!(check["stats"]["examples"], 3);
    assert!(
        f.body["status_details"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{}",
        f.body
    );
    // The report is kept with the file.
    let again = c
        .get(&format!("/v1/files/{}", f.body["id"].as_str().unwrap()))
        .await;
    assert_eq!(again.body["check"], *check);

    // A job cannot use it.
    let j = c
        .post(
            "/v1/fine_tuning/jobs",
            &tiny_job(f.body["id"].as_str().unwrap(), 2, 2),
        )
        .await;
    assert_eq!(j.status, 400);
    assert_eq!(j.body["error"]["code"], "invalid_training_file");
    assert_eq!(j.body["error"]["param"], "training_file");
    assert_eq!(j.body["error"]["type"], "invalid_request_error");

    // Wrong purpose, no file field, over the size limit.
    let p = c
        .upload_bytes("x.jsonl", b"{}".to_vec(), "assistants")
        .await;
    assert_eq!(
        (p.status, p.body["error"]["param"].as_str()),
        (400, Some("purpose"))
    );
    let empty = c.upload_bytes("empty.jsonl", Vec::new(), "fine-tune").await;
    assert_eq!(empty.body["status"], "error");
    assert_eq!(empty.body["check"]["errors"][0]["code"], "empty_file");
    t.server.stop().await.unwrap();

    let small = TestServer::start_with(|s| s.max_upload_bytes = 100).await;
    let c = small.user("carol").await;
    let big = c.upload("identity-12.jsonl").await;
    assert_eq!(big.status, 413, "{:?}", big.body);
    assert_eq!(big.body["error"]["code"], "file_too_large");
    assert_eq!(
        c.get("/v1/files").await.body["data"],
        json!([]),
        "nothing is kept of a refused upload"
    );
    small.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_cannot_see_or_change_each_others_objects() {
    let t = TestServer::start().await;
    let a = t.user("ann").await;
    let b = t.user("ben").await;
    let file = upload_ok(&a).await;
    let job = a
        .post("/v1/fine_tuning/jobs", &tiny_job(&file, 2, 2))
        .await
        .body;
    let job_id = job["id"].as_str().unwrap().to_string();
    let done = a.wait_status(&job_id, "succeeded", TRAIN_TIMEOUT).await;
    let ckpts = a
        .get(&format!("/v1/fine_tuning/jobs/{job_id}/checkpoints"))
        .await
        .body;
    let ckpt_id = ckpts["data"][0]["id"].as_str().unwrap().to_string();
    let ckpt_model = ckpts["data"][0]["fine_tuned_model_checkpoint"]
        .as_str()
        .unwrap()
        .to_string();

    // Ben gets 404 for every one of Ann's objects, reading or changing.
    let not_found = [
        b.get(&format!("/v1/files/{file}")).await,
        b.get(&format!("/v1/files/{file}/content")).await,
        b.delete(&format!("/v1/files/{file}")).await,
        b.get(&format!("/v1/fine_tuning/jobs/{job_id}")).await,
        b.post(&format!("/v1/fine_tuning/jobs/{job_id}/cancel"), &json!({})).await,
        b.post(&format!("/v1/fine_tuning/jobs/{job_id}/pause"), &json!({})).await,
        b.post(&format!("/v1/fine_tuning/jobs/{job_id}/resume"), &json!({})).await,
        b.get(&format!("/v1/fine_tuning/jobs/{job_id}/events")).await,
        b.get(&format!("/v1/fine_tuning/jobs/{job_id}/events?stream=true")).await,
        b.get(&format!("/v1/fine_tuning/jobs/{job_id}/checkpoints")).await,
        b.get(&format!("/v1/fine_tuning/jobs/{job_id}/metrics")).await,
        b.get(&format!("/v1/fine_tuning/jobs/{job_id}/checkpoints/{ckpt_id}/adapter")).await,
        b.get(&format!("/v1/models/{ckpt_model}")).await,
        b.post("/v1/chat/completions", &json!({"model": ckpt_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})).await,
        b.post("/v1/chat/completions", &json!({"model": done["fine_tuned_model"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})).await,
        b.delete(&format!("/v1/models/{ckpt_model}")).await,
        b.delete(&format!("/v1/models/{}", done["fine_tuned_model"].as_str().unwrap())).await,
        b.delete(&format!("/v1/fine_tuning/jobs/{job_id}/checkpoints")).await,
        b.post("/v1/fine_tuning/jobs", &tiny_job(&file, 2, 2)).await,
    ];
    for (i, r) in not_found.iter().enumerate() {
        assert_eq!(r.status, 404, "request {i}: {:?}", r.body);
        assert_eq!(
            r.body["error"]["type"], "invalid_request_error",
            "request {i}"
        );
    }
    assert_eq!(
        not_found.last().unwrap().body["error"]["param"],
        "training_file"
    );
    // Ann's fine-tuned models are no starting point for Ben's jobs.
    let ben_file = upload_ok(&b).await;
    for model in [
        ckpt_model.as_str(),
        done["fine_tuned_model"].as_str().unwrap(),
    ] {
        let mut body = tiny_job(&ben_file, 2, 2);
        body["model"] = model.into();
        let r = b.post("/v1/fine_tuning/jobs", &body).await;
        assert_eq!(r.status, 404, "{model}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], "model", "{:?}", r.body);
    }
    b.delete(&format!("/v1/files/{ben_file}")).await;
    // Lists are per user.
    assert_eq!(b.get("/v1/files").await.body["data"], json!([]));
    assert_eq!(b.get("/v1/fine_tuning/jobs").await.body["data"], json!([]));
    let models = b.get("/v1/models").await.body;
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| !m["id"].as_str().unwrap().starts_with("ft:")),
        "{models}"
    );
    // A cursor from another user's list is not accepted.
    assert_eq!(
        b.get(&format!("/v1/fine_tuning/jobs?after={job_id}"))
            .await
            .status,
        400
    );
    // Ann still sees everything.
    assert_eq!(a.get(&format!("/v1/files/{file}")).await.status, 200);
    assert_eq!(
        a.get("/v1/fine_tuning/jobs").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Without a key or with a wrong one: 401 in OpenAI's shape.
    let anon = Client::new(&t.url(), "");
    let r = anon
        .http
        .get(format!("{}/v1/files", t.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let wrong = Client::new(&t.url(), "sk-tuna-not-a-key");
    assert_eq!(wrong.get("/v1/fine_tuning/jobs").await.status, 401);
    t.server.stop().await.unwrap();
}

/// A DPO job through the API: preference metrics in the one metrics schema, its checkpoints
/// carry the cached reference log-probabilities (in the download too), so a paused job resumes
/// from them; a LoRA checkpoint cannot be fine-tuned fully.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dpo_job_reports_preference_metrics_and_resumes_from_its_reference() {
    let t = TestServer::start().await;
    let c = t.user("dana").await;
    let f = c.upload("identity-pref-8.jsonl").await;
    assert_eq!(f.body["status"], "processed", "{:?}", f.body);
    assert_eq!(f.body["check"]["stats"]["format"], "preference");
    let file = f.body["id"].as_str().unwrap().to_string();

    let mut body = tiny_job(&file, 100_000, 50_000);
    body["method"] = json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "batch_size": 2, "learning_rate_multiplier": 10}}});
    let j = c.post("/v1/fine_tuning/jobs", &body).await;
    assert_eq!(j.status, 200, "{:?}", j.body);
    let id = j.body["id"].as_str().unwrap().to_string();
    assert_eq!(j.body["method"]["type"], "dpo");
    assert_eq!(j.body["method"]["dpo"]["hyperparameters"]["beta"], 0.1);
    assert_eq!(
        j.body["hyperparameters"]["batch_size"], 2,
        "the top-level hyperparameters mirror the method's"
    );

    c.wait_job(&id, TRAIN_TIMEOUT, |j| {
        j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    let p = c
        .post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({}))
        .await;
    assert_eq!(p.status, 200, "{:?}", p.body);
    c.wait_status(&id, "paused", TRAIN_TIMEOUT).await;

    // Every train row carries TRL's preference metrics.
    let m = c.get(&format!("/v1/fine_tuning/jobs/{id}/metrics")).await;
    let rows: Vec<&Value> = m.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "train")
        .collect();
    assert!(rows.len() >= 2, "{}", m.body);
    for r in &rows {
        for key in [
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
        ] {
            assert!(r[key].as_f64().is_some_and(f64::is_finite), "{key}: {r}");
        }
        assert_eq!(r["pairs"], 2, "{r}");
    }

    // The pause checkpoint: a sample with both answers, and the reference log-probabilities
    // (which the resume below reads) in the download.
    let ck = c
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    let ckpt = &ck.body["data"][0];
    let step = ckpt["step_number"].as_i64().unwrap();
    let sample = &ckpt["tuna"]["samples"][0];
    assert!(
        sample["reference"].as_str().unwrap().contains("Marlin")
            && sample["non_preferred"].as_str().unwrap().contains("Qwen"),
        "{sample}"
    );
    let (status, tar_bytes) = c
        .get_bytes(&format!(
            "/v1/fine_tuning/jobs/{id}/checkpoints/{}/adapter",
            ckpt["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    let names: Vec<String> = tar::Archive::new(tar_bytes.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&format!(
            "{id}-step-{step}/{}",
            tuna_train::dpo::REFERENCE_FILE
        )),
        "{names:?}"
    );

    // A LoRA checkpoint trains on only as LoRA.
    let model = ckpt["fine_tuned_model_checkpoint"].as_str().unwrap();
    let mut full = body.clone();
    full["model"] = model.into();
    full["tuna"] = json!({"method": "full", "max_seq_len": 64, "max_steps": 1});
    let refused = c.post("/v1/fine_tuning/jobs", &full).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["param"], "tuna.method");
    // As LoRA, the job continues the checkpoint's adapter and records its settings.
    let mut lora = body.clone();
    lora["model"] = model.into();
    lora["tuna"]["lora"] = json!({"rank": 8, "alpha": 16});
    let from_ckpt = c.post("/v1/fine_tuning/jobs", &lora).await;
    assert_eq!(from_ckpt.status, 200, "{:?}", from_ckpt.body);
    assert_eq!(from_ckpt.body["model"], model);
    assert_eq!(from_ckpt.body["tuna"]["lora"]["rank"], 4);
    assert_eq!(from_ckpt.body["tuna"]["lora"]["alpha"], 8.0);
    assert!(
        from_ckpt.body["fine_tuned_model"].is_null()
            || from_ckpt.body["fine_tuned_model"]
                .as_str()
                .unwrap()
                .starts_with("ft:demo:dana:"),
        "{}",
        from_ckpt.body
    );
    let second = from_ckpt.body["id"].as_str().unwrap();
    let x = c
        .post(&format!("/v1/fine_tuning/jobs/{second}/cancel"), &json!({}))
        .await;
    assert_eq!(x.status, 200, "{:?}", x.body);

    // Resumed, it continues past the pause (a missing reference file would fail it).
    let r = c
        .post(&format!("/v1/fine_tuning/jobs/{id}/resume"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    c.wait_job(&id, TRAIN_TIMEOUT, |j| {
        j["tuna"]["progress"]["step"].as_i64().unwrap_or(0) > step && j["status"] == "running"
    })
    .await;
    assert!(
        common::messages(&c, &id)
            .await
            .iter()
            .any(|m| m.starts_with(&format!("Training resumed at step {step} of "))),
        "{:?}",
        common::messages(&c, &id).await
    );
    let x = c
        .post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(x.status, 200, "{:?}", x.body);
    c.wait_status(&id, "cancelled", TRAIN_TIMEOUT).await;

    // The weights a later job started from stay while that job keeps models trained from them:
    // deleting them is refused, naming the job; once its own models are gone, they may go.
    let mut child = lora.clone();
    child["tuna"]["max_steps"] = 1.into();
    let child = c.post("/v1/fine_tuning/jobs", &child).await;
    assert_eq!(child.status, 200, "{:?}", child.body);
    let child_id = child.body["id"].as_str().unwrap().to_string();
    let child_model =
        c.wait_status(&child_id, "succeeded", TRAIN_TIMEOUT).await["fine_tuned_model"]
            .as_str()
            .unwrap()
            .to_string();
    // Its measured speed went to the preference row of the throughput table, not to SFT's.
    let speeds = c.get("/v1/tuna/throughput").await;
    let methods: Vec<(&str, &str)> = speeds.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    assert!(methods.contains(&("lora+dpo", "measured")), "{methods:?}");
    assert!(!methods.contains(&("lora", "measured")), "{methods:?}");
    let escaped = |m: &str| m.replace(':', "%3A");
    for path in [
        format!("/v1/models/{}", escaped(model)),
        format!("/v1/fine_tuning/jobs/{id}/checkpoints"),
    ] {
        let refused = c.delete(&path).await;
        assert_eq!(refused.status, 400, "{path}: {:?}", refused.body);
        assert_eq!(
            refused.body["error"]["code"], "model_in_use",
            "{:?}",
            refused.body
        );
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&child_id), "{message}");
    }
    let still = c
        .get(&format!("/v1/models/{}", escaped(&child_model)))
        .await;
    assert_eq!(
        still.status, 200,
        "the child still resolves: {:?}",
        still.body
    );
    for job in [child_id.as_str(), second] {
        c.wait_job(job, TRAIN_TIMEOUT, |j| {
            ["succeeded", "cancelled", "failed"].contains(&j["status"].as_str().unwrap_or(""))
        })
        .await;
        let freed = c
            .delete(&format!("/v1/fine_tuning/jobs/{job}/checkpoints"))
            .await;
        assert_eq!(freed.status, 200, "{:?}", freed.body);
    }
    let gone = c.delete(&format!("/v1/models/{}", escaped(model))).await;
    assert_eq!(gone.status, 200, "{:?}", gone.body);
    t.server.stop().await.unwrap();
}
