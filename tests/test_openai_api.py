"""The openai Python SDK, unmodified but for base_url and api_key, against a live server on the tiny model: files,
fine-tuning jobs (events, checkpoints, cancel), chat completions on the tuned model and a checkpoint (streaming
too), models, errors in OpenAI's shape; and the same job seen through the Vertex route. No mocked transport."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import tunery_home, write_jsonl
from tests.test_api import LiveServer
from tunery.train import metrics as mt

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-tunery-test"
BASE = "gpt-4o-mini-2024-07-18"  # an alias in the server's config.toml for the tiny model
COLOURS = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]


def chat(i: int, c: str) -> dict:
    return {"messages": [{"role": "system", "content": "Name the colour."},
                         {"role": "user", "content": f"Colour {i}: {c}?"}, {"role": "assistant", "content": f"It is {c}."}]}


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    rows = [chat(i, c) for i, c in enumerate(COLOURS * 3)]
    with tunery_home(tmp_path_factory.mktemp("openai-home"), tiny_model_dir) as home:
        with open(home / "config.toml", "a") as f:
            f.write(f'[aliases]\n"{BASE}" = "{tiny_model_dir}"\n')
        write_jsonl(home / "train.jsonl", rows[:16])
        write_jsonl(home / "val.jsonl", rows[16:20])
        yield home


@pytest.fixture(scope="module")
def server(home):
    with LiveServer(home, api_key=KEY, max_request_bytes=1 << 20) as live:
        yield live


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def files(client, home):
    with open(home / "train.jsonl", "rb") as train, open(home / "val.jsonl", "rb") as val:
        return (client.files.create(file=train, purpose="fine-tune"),
                client.files.create(file=("val.jsonl", val.read()), purpose="fine-tune"))


@pytest.fixture(scope="module")
def example(server, home) -> str:
    """examples/openai_finetune.py, run as a user would: its job (2 epochs of 4 steps) is the one the tests read."""
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "openai_finetune.py"), "--base-url",
                           f"{server.url}/v1", "--api-key", KEY, "--model", BASE, "--train-examples", "16",
                           "--val-examples", "4", "--epochs", "2", "--batch-size", "4", "--work", str(home / "example"),
                           "--poll-seconds", "0.3", "--max-tokens", "16"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def job(client, example):
    return client.fine_tuning.jobs.retrieve(example.split("Fine-tuning job created: ", 1)[1].split()[0])


def records(server, job) -> list[dict]:
    return mt.read_metrics(server.home / "jobs" / job.id.removeprefix("ftjob-") / "run")


def test_files_upload_retrieve_content_list_and_a_bad_line_refused(client, files, home):
    train, val = files
    assert train.id.startswith("file-") and train.purpose == "fine-tune" and train.filename == "train.jsonl"
    assert train.bytes == (home / "train.jsonl").stat().st_size and val.filename == "val.jsonl"
    assert client.files.retrieve(train.id).id == train.id
    assert client.files.content(train.id).content == (home / "train.jsonl").read_bytes()
    assert {train.id, val.id} <= {f.id for f in client.files.list()}
    bad = b"".join(json.dumps(chat(i, c)).encode() + b"\n" for i, c in enumerate(COLOURS[:2]))
    bad += b'{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n'
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert err.value.status_code == 400 and "line 3 /messages/1/role" in err.value.message
    assert err.value.body["param"] == "file"
    extra = client.files.create(file=("extra.jsonl", bad[: bad.index(b"\n") + 1]), purpose="fine-tune")
    assert client.files.delete(extra.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(extra.id)


def test_job_retrieve_list_and_the_same_job_at_the_vertex_route(client, server, job):
    assert job.status == "succeeded" and job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert job.fine_tuned_model.startswith(f"ft:{BASE}:tunery:alerts:") and job.finished_at >= job.created_at
    assert job.model == BASE and job.seed == 42 and job.error is None
    assert job.training_file.startswith("file-") and job.validation_file.startswith("file-")
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.method.type == "supervised" and job.metadata == {"example": "openai_finetune"} and job.trained_tokens > 0
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=50)]
    vertex_id = job.id.removeprefix("ftjob-")
    vertex = httpx.get(f"{server.url}/v1/projects/openai/locations/us-central1/tuningJobs/{vertex_id}",
                       headers={"x-goog-api-key": KEY}).json()
    assert vertex["state"] == "JOB_STATE_SUCCEEDED" and vertex["tunedModel"]["model"].endswith(
        "/models/" + job.fine_tuned_model.rsplit(":", 1)[1] + "@1")
    assert vertex["supervisedTuningSpec"]["trainingDatasetUri"].endswith(f"{job.training_file}.jsonl")
    assert vertex["supervisedTuningSpec"]["hyperParameters"]["epochCount"] == "2"
    assert vertex["tunedModelDisplayName"] == "alerts" and vertex["labels"] == {"example": "openai_finetune"}


def test_events_carry_the_metrics_jsonl_values_and_checkpoints_their_steps(client, server, job):
    logged = {r["step"]: r for r in records(server, job) if mt.TRAIN_LOSS in r}
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == sorted(logged, reverse=True)  # newest first, one per step
    for e in metrics:
        assert e.data["train_loss"] == logged[e.data["step"]][mt.TRAIN_LOSS]
        assert e.data["train_mean_token_accuracy"] == logged[e.data["step"]][mt.TRAIN_ACCURACY]
        assert e.data["total_steps"] == 8 and e.message.startswith(f"Step {e.data['step']}/8: training loss=")
    assert any("valid_loss" in e.data for e in metrics)
    messages = [e.message for e in events if e.type == "message"]
    assert messages[0] == "The job has successfully completed" and messages[-1] == f"Created fine-tuning job: {job.id}"
    assert f"New fine-tuned model created: {job.fine_tuned_model}" in messages
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    rest = client.fine_tuning.jobs.list_events(job.id, after=page.data[-1].id, limit=1000)
    assert [e.id for e in rest.data] == [e.id for e in events[2:]]
    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in ckpts] == [8, 4]  # one per epoch of 4 steps, newest first
    assert [c.fine_tuned_model_checkpoint for c in ckpts] == [f"{job.fine_tuned_model}:ckpt-step-{s}" for s in (8, 4)]
    assert ckpts[1].metrics.train_loss == logged[4][mt.TRAIN_LOSS] and ckpts[0].metrics.full_valid_loss is not None
    results = client.files.content(job.result_files[0]).text.splitlines()  # OpenAI's step_metrics.csv
    assert results[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(results) == 9
    assert results[4].split(",")[:2] == ["4", str(logged[4][mt.TRAIN_LOSS])]
    assert client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"


def vertex_answer(server, path: str, prompt: str, tokens: int) -> str:
    body = {"systemInstruction": {"parts": [{"text": "Name the colour."}]},
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"temperature": 0, "maxOutputTokens": tokens}}
    out = httpx.post(f"{server.url}/v1/{path}:generateContent", json=body, headers={"x-goog-api-key": KEY}, timeout=120)
    return out.json()["candidates"][0]["content"]["parts"][0]["text"]


def ask(client, model: str, **kw):
    return client.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "Name the colour."}, {"role": "user", "content": "Colour 3: black?"}], **kw)


def test_chat_with_the_tuned_model_and_a_checkpoint_serves_their_adapters(client, server, job):
    model_id = job.fine_tuned_model.rsplit(":", 1)[1]
    tuned = ask(client, job.fine_tuned_model, temperature=0, max_tokens=6)
    assert tuned.object == "chat.completion" and tuned.model == job.fine_tuned_model
    assert tuned.choices[0].message.role == "assistant" and tuned.choices[0].finish_reason in ("stop", "length")
    assert tuned.usage.completion_tokens <= 6 and tuned.usage.prompt_tokens > 10
    assert tuned.usage.total_tokens == tuned.usage.prompt_tokens + tuned.usage.completion_tokens
    # the same adapter as the Vertex route serves, for the final model and for the step-4 checkpoint
    place = "projects/openai/locations/us-central1"
    assert tuned.choices[0].message.content == vertex_answer(server, f"{place}/models/{model_id}", "Colour 3: black?", 6)
    ep = next(e for e in server.services.store.endpoints_of(model_id) if e.checkpoint_id == "1")
    ckpt = ask(client, f"{job.fine_tuned_model}:ckpt-step-4", temperature=0, max_completion_tokens=6)
    assert ckpt.choices[0].message.content == vertex_answer(server, f"{place}/endpoints/{ep.id}", "Colour 3: black?", 6)
    sampled = ask(client, job.fine_tuned_model, temperature=1.0, top_p=0.9, seed=3, n=2, max_tokens=4)
    assert [c.index for c in sampled.choices] == [0, 1]
    again = ask(client, job.fine_tuned_model, temperature=1.0, top_p=0.9, seed=3, n=2, max_tokens=4)
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]  # the seed


def test_streaming_matches_the_plain_answer_and_honours_stop(client, job):
    plain = ask(client, job.fine_tuned_model, temperature=0, max_tokens=12).choices[0].message.content
    chunks = list(ask(client, job.fine_tuned_model, temperature=0, max_tokens=12, stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-2].choices[0].finish_reason in ("stop", "length") and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens <= 12
    if len(plain) >= 6:  # a stop sequence cuts the streamed text where it cuts the plain one
        stop = plain[3:5]
        cut = plain[: plain.index(stop)]
        assert ask(client, job.fine_tuned_model, temperature=0, max_tokens=12, stop=stop).choices[0].message.content == cut
        streamed = ask(client, job.fine_tuned_model, temperature=0, max_tokens=12, stop=[stop], stream=True)
        parts = list(streamed)
        assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == cut
        assert parts[-1].choices[0].finish_reason == "stop"


def test_models_list_and_retrieve_name_base_tuned_and_checkpoints(client, job):
    names = [m.id for m in client.models.list()]
    assert {BASE, "smollm2-135m-instruct", job.fine_tuned_model, f"{job.fine_tuned_model}:ckpt-step-4"} <= set(names)
    assert client.models.retrieve(job.fine_tuned_model).owned_by == "tunery"


def test_cancel(client, server, files):
    """Queued (or, if the worker was quicker, running: cancelling shows as cancelled, as OpenAI has no such state)."""
    created = client.fine_tuning.jobs.create(model=BASE, training_file=files[0].id,  # the deprecated field too
                                             hyperparameters={"n_epochs": 100, "batch_size": 1})
    with pytest.raises(openai.ConflictError):  # its file cannot go while the job may still read it
        client.files.delete(files[0].id)
    vertex_url = f"{server.url}/v1/projects/openai/locations/us-central1/tuningJobs/{created.id[6:]}"
    deadline = time.monotonic() + 60
    cancelled = client.fine_tuning.jobs.cancel(created.id)
    assert cancelled.id == created.id and cancelled.status == "cancelled"
    while (state := httpx.get(vertex_url, headers={"authorization": f"Bearer {KEY}"}).json()["state"]) \
            == "JOB_STATE_CANCELLING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state == "JOB_STATE_CANCELLED"
    done = client.fine_tuning.jobs.retrieve(created.id)
    assert done.status == "cancelled" and done.fine_tuned_model is None and done.error is None and done.finished_at
    assert list(client.fine_tuning.jobs.list_events(created.id))[0].message == "Fine-tuning job cancelled"
    with pytest.raises(openai.BadRequestError, match="already ended"):
        client.fine_tuning.jobs.cancel(created.id)


def test_errors_come_in_openai_shape_naming_the_field(client, server, job, files):
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    for missing in ("gpt-nope", f"{job.fine_tuned_model}:ckpt-step-5", job.fine_tuned_model.replace(":alerts:", ":other:")):
        with pytest.raises(openai.NotFoundError) as err:
            ask(client, missing, max_tokens=2)
        assert err.value.body["code"] == "model_not_found" and err.value.body["type"] == "invalid_request_error"
    cases = [(dict(temperature=5), "temperature"), (dict(n=0), "n"), (dict(stop=[1]), "stop"),
             (dict(max_tokens="many"), "max_tokens"), (dict(n=2, stream=True), "n"), (dict(tools=[{"x": 1}]), "tools")]
    for kw, field in cases:
        with pytest.raises(openai.BadRequestError) as err:
            ask(client, job.fine_tuned_model, **kw)
        assert err.value.body["param"] == field and err.value.body["message"].startswith(f"{field}: "), kw
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "assistant", "content": "hi"}])
    assert err.value.body["param"] == "messages[0].role"
    bad_jobs = [(dict(training_file="file-missing"), "training_file"),
                (dict(method={"type": "reinforcement"}), "method.type"),
                (dict(method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}),
                 "method.supervised.hyperparameters.n_epochs"),
                (dict(suffix="a:b"), "suffix"), (dict(model="gpt-nope"), "model")]
    for kw, field in bad_jobs:
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(**({"model": BASE, "training_file": files[0].id} | kw))
        assert err.value.body["param"] == field, kw
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-123")
    headers = {"authorization": f"Bearer {KEY}"}
    unknown = httpx.get(f"{server.url}/v1/no/such/route", headers=headers)
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    big = httpx.post(f"{server.url}/v1/files", headers=headers, files={"file": ("x.jsonl", b"x" * (2 << 20))},
                     data={"purpose": "fine-tune"})
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"
    vertex = httpx.get(f"{server.url}/v1/projects/p/locations/l/tuningJobs/1", headers=headers).json()
    assert vertex["error"]["status"] == "NOT_FOUND"  # the Vertex routes keep Vertex's shape


def test_the_example_follows_its_job_and_chats_with_the_model_and_a_checkpoint(example, job):
    assert "Fine-tuning job created: ftjob-" in example and "[message] Fine-tuning job started" in example
    assert "[metrics] Step 1/8: training loss=" in example and f"Fine-tuned model: {job.fine_tuned_model}\n" in example
    assert f"Checkpoint {job.fine_tuned_model}:ckpt-step-4: step 4, train loss " in example
    assert "Tuned model answer (" in example and f"checkpoint ({job.fine_tuned_model}:ckpt-step-4)" in example
    assert f"Vertex API: projects/openai/locations/us-central1/tuningJobs/{job.id[6:]}" in example


def test_deleting_the_tuned_model_removes_it_from_both_apis(client, server, job):  # last: the others use the model
    model_id = job.fine_tuned_model.rsplit(":", 1)[1]
    with pytest.raises(openai.BadRequestError):  # a checkpoint goes with its model, not alone
        client.models.delete(f"{job.fine_tuned_model}:ckpt-step-4")
    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)
    vertex = httpx.get(f"{server.url}/v1/projects/openai/locations/us-central1/models/{model_id}",
                       headers={"x-goog-api-key": KEY})
    assert vertex.status_code == 404
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
