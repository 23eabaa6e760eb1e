"""The official `openai` Python SDK against a running Tuna server, unchanged: files, fine-tuning
jobs (with Tuna's settings through `extra_body`), events, checkpoints, pause / resume / cancel,
models and chat completions (plain and streamed), the SDK's error classes, and preference
fine-tuning (`method={"type": "dpo", ...}`) started from a supervised fine-tuned model.

Run by `crates/tuna-server/tests/sdk.rs`, which starts the server and sets TUNA_BASE_URL
(`http://127.0.0.1:PORT/v1`), TUNA_API_KEY and TUNA_FIXTURES.
"""

import os
import pathlib
import time

import openai
import pytest

BASE_URL = os.environ["TUNA_BASE_URL"]
API_KEY = os.environ["TUNA_API_KEY"]
FIXTURES = pathlib.Path(os.environ["TUNA_FIXTURES"])
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0)


def tuna_settings(max_steps, checkpoint_interval):
    return {
        "name": "sdk run",
        "method": "lora",
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "max_seq_len": 64,
        "max_steps": max_steps,
        "checkpoint_interval": checkpoint_interval,
        "sample_prompts": 1,
        "sample_max_tokens": 6,
    }


def wait(client, job_id, statuses):
    deadline = time.time() + TIMEOUT_S
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.time() < deadline, f"job {job_id} stuck in {job.status}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def training_file(client):
    path = FIXTURES / "identity-12.jsonl"
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    assert uploaded.object == "file"
    assert uploaded.purpose == "fine-tune"
    assert uploaded.status == "processed"
    assert uploaded.bytes == path.stat().st_size
    # Tuna's check report rides along as an extra field.
    assert uploaded.check["ok"] is True
    assert uploaded.check["stats"]["examples"] == 12
    return uploaded


@pytest.fixture(scope="module")
def finished_job(client, training_file):
    job = client.fine_tuning.jobs.create(
        model="demo",
        training_file=training_file.id,
        suffix="sdk",
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 10}}},
        extra_body={"tuna": tuna_settings(4, 2)},
    )
    assert job.object == "fine_tuning.job"
    assert job.status in ("validating_files", "queued", "running")
    assert job.model == "demo"
    assert job.training_file == training_file.id
    assert job.seed == 3
    assert job.hyperparameters.n_epochs == 1
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.batch_size == 1
    assert job.tuna["name"] == "sdk run"
    assert job.tuna["estimate"]["total_steps"] == 4
    done = wait(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:demo:")
    assert done.trained_tokens > 0
    return done


def test_files(client, training_file):
    listed = [f.id for f in client.files.list()]
    assert training_file.id in listed
    again = client.files.retrieve(training_file.id)
    assert again.id == training_file.id and again.filename == "identity-12.jsonl"
    content = client.files.content(training_file.id).read()
    assert content == (FIXTURES / "identity-12.jsonl").read_bytes()


def test_bad_file_reports_lines(client):
    with open(FIXTURES / "bad.jsonl", "rb") as f:
        bad = client.files.create(file=f, purpose="fine-tune")
    assert bad.status == "error"
    assert [e["line"] for e in bad.check["errors"]] == [2, 4]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="demo", training_file=bad.id)
    assert err.value.code == "invalid_training_file"
    deleted = client.files.delete(bad.id)
    assert deleted.deleted is True and deleted.id == bad.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(bad.id)


def test_jobs_events_and_checkpoints(client, finished_job):
    ids = [j.id for j in client.fine_tuning.jobs.list(limit=1)]  # auto-pagination follows `after`
    assert finished_job.id in ids
    events = list(client.fine_tuning.jobs.list_events(finished_job.id, limit=5))
    assert all(e.object == "fine_tuning.job.event" for e in events)
    assert events[0].message == "The job has successfully completed"
    assert sum(1 for e in events if e.type == "metrics" and e.data and "train_loss" in e.data) == 4
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(finished_job.id))
    assert [c.step_number for c in checkpoints] == [4, 2]
    for c in checkpoints:
        assert c.object == "fine_tuning.job.checkpoint"
        assert c.fine_tuning_job_id == finished_job.id
        assert c.fine_tuned_model_checkpoint == f"{finished_job.fine_tuned_model}:ckpt-step-{c.step_number}"
        assert c.metrics.train_loss > 0
        assert c.tuna["samples"][0]["reference"]


def test_models_and_chat(client, finished_job):
    checkpoint = list(client.fine_tuning.jobs.checkpoints.list(finished_job.id))[0]
    models = [m.id for m in client.models.list()]
    assert "demo" in models and checkpoint.fine_tuned_model_checkpoint in models
    assert client.models.retrieve(checkpoint.fine_tuned_model_checkpoint).id == checkpoint.fine_tuned_model_checkpoint

    sample = checkpoint.tuna["samples"][0]
    messages = [{"role": m["role"], "content": m["content"]} for m in sample["messages"]]
    reply = client.chat.completions.create(
        model=checkpoint.fine_tuned_model_checkpoint, messages=messages, temperature=0, max_tokens=6
    )
    assert reply.object == "chat.completion"
    text = reply.choices[0].message.content
    assert text == sample["generated"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client.chat.completions.create(
        model=checkpoint.fine_tuned_model_checkpoint,
        messages=messages,
        temperature=0,
        max_completion_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert "".join(pieces) == text
    assert len(finish) == 1
    assert usage.completion_tokens == reply.usage.completion_tokens

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], temperature=5)


def test_pause_resume_cancel(client, training_file, finished_job):
    job = client.fine_tuning.jobs.create(model="demo", training_file=training_file.id, extra_body={"tuna": tuna_settings(100000, 50000)})
    deadline = time.time() + TIMEOUT_S
    while client.fine_tuning.jobs.retrieve(job.id).tuna["progress"]["step"] < 2:
        assert time.time() < deadline
        time.sleep(0.1)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait(client, job.id, ("paused",))
    assert paused.tuna["progress"]["step"] >= 2
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


@pytest.fixture(scope="module")
def preference_file(client):
    with open(FIXTURES / "identity-pref-8.jsonl", "rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    assert uploaded.status == "processed", uploaded.check
    assert uploaded.check["stats"]["format"] == "preference"
    assert uploaded.check["stats"]["examples"] == 8
    return uploaded


def test_dpo_after_supervised(client, finished_job, training_file, preference_file):
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": "auto", "batch_size": 2, "learning_rate_multiplier": "auto"}}}
    # Each method trains on its own format; the error names the file.
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="demo", training_file=training_file.id, method=dpo)
    assert err.value.param == "training_file"
    assert "preference pairs" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="demo", training_file=preference_file.id)
    assert err.value.param == "training_file"

    # OpenAI's advice: supervised first, then DPO from the fine-tuned model.
    job = client.fine_tuning.jobs.create(
        model=finished_job.fine_tuned_model,
        training_file=preference_file.id,
        suffix="dpo",
        method=dpo,
        extra_body={"tuna": tuna_settings(4, 2)},
    )
    assert job.model == finished_job.fine_tuned_model
    assert job.method.type == "dpo"
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.batch_size == 2
    assert job.method.dpo.hyperparameters.n_epochs == 13  # auto: 100 trained pairs / 8 pairs, rounded up
    assert job.method.dpo.hyperparameters.learning_rate_multiplier == 1
    done = wait(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:demo:") and ":dpo:" in done.fine_tuned_model

    events = list(client.fine_tuning.jobs.list_events(done.id, limit=100))
    metrics = [e.data for e in events if e.type == "metrics" and e.data and "train_loss" in e.data]
    assert len(metrics) == 4
    for m in metrics:
        for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert key in m, m
        assert m["pairs"] == 2
        assert m["rewards/margins"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"], abs=1e-9)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(done.id))
    assert [c.step_number for c in checkpoints] == [4, 2]
    sample = checkpoints[0].tuna["samples"][0]
    assert "Marlin" in sample["reference"] and "Qwen" in sample["non_preferred"]

    # The result answers chat as the last checkpoint's sample did (its adapter over the base).
    messages = [{"role": m["role"], "content": m["content"]} for m in sample["messages"]]
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=messages, temperature=0, max_tokens=6)
    assert reply.choices[0].message.content == sample["generated"]


def test_errors(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")
    assert err.value.code == "job_not_found"
    bad = openai.OpenAI(base_url=BASE_URL, api_key="sk-tuna-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
