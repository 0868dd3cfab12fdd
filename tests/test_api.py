"""The REST API through the real google-genai SDK and plain HTTP against a live server on loopback.
The configured default base model (what Gemini names resolve to) is the tiny in-process model."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import contents, tunery_home, write_jsonl
from tunery.api.errors import openai_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, home: Path, **settings) -> None:
        import uvicorn

        from tunery.api.app import ServerSettings, create_app

        self.home = home
        self.settings = ServerSettings(home=home, **settings)
        self.app = create_app(self.settings)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    @property
    def services(self):
        return self.app.state.services


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    rows = [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}.")) for i, c in enumerate(colours * 4)]
    with tunery_home(tmp_path_factory.mktemp("home"), tiny_model_dir) as home:
        (home / "data").mkdir()
        write_jsonl(home / "data" / "train.jsonl", rows[:24])
        write_jsonl(home / "data" / "val.jsonl", rows[24:])
        yield home


@pytest.fixture(scope="module")
def server(home):
    with LiveServer(home) as live:
        yield live


def sdk(url: str, **kw):
    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    return genai.Client(vertexai=True, project="my-project", location="us-central1",
                        credentials=google.oauth2.credentials.Credentials(token="local-dev"),
                        http_options=types.HttpOptions(base_url=url, **kw))


def wait_done(client, name: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    job = client.tunings.get(name=name)
    while not job.has_ended and time.monotonic() < deadline:
        time.sleep(0.3)
        job = client.tunings.get(name=name)
    return job


@pytest.fixture(scope="module")
def tuned(server, home):
    """One job tuned through the SDK, shared by the tests that need a tuned model."""
    from google.genai import types

    client = sdk(server.url)
    job = client.tunings.tune(
        base_model="gemini-2.0-flash-001",
        training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
        config=types.CreateTuningJobConfig(tuned_model_display_name="colours", epoch_count=2, adapter_size="ADAPTER_SIZE_FOUR",
                                           learning_rate_multiplier=5.0,
                                           validation_dataset=types.TuningValidationDataset(gcs_uri=str(home / "data" / "val.jsonl"))))
    return wait_done(client, job.name)


def test_notebook_flow_tune_poll_and_generate(server, tuned):
    """The seed notebook's calls, unmodified, against tunery."""
    client = sdk(server.url)
    assert tuned.state.name == "JOB_STATE_SUCCEEDED", tuned.error
    assert tuned.name.startswith("projects/my-project/locations/us-central1/tuningJobs/")
    assert tuned.tuned_model.endpoint.startswith("projects/my-project/locations/us-central1/endpoints/")
    assert [c.epoch for c in tuned.tuned_model.checkpoints] == [1, 2]
    assert tuned.experiment.startswith("projects/my-project/locations/us-central1/metadataStores/default/contexts/")
    stats = tuned.tuning_data_stats.supervised_tuning_data_stats
    assert stats.tuning_dataset_example_count == 24 and stats.total_billable_token_count > 0
    assert tuned.tuning_job_metadata.completed_epoch_count == 2
    assert tuned.create_time.tzinfo is not None and tuned.end_time >= tuned.start_time >= tuned.create_time
    response = client.models.generate_content(model=tuned.tuned_model.endpoint, contents="Colour 3: black?",
                                              config={"temperature": 0.0, "max_output_tokens": 8})
    assert isinstance(response.text, str) and response.candidates[0].finish_reason.name in ("STOP", "MAX_TOKENS")
    usage = response.usage_metadata
    assert usage.prompt_token_count > 0 and usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count


def test_create_answers_pending_at_once_and_wire_fields(server, home):
    body = {"baseModel": "gemini-2.0-flash-001",
            "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl"),
                                     "hyperParameters": {"epochCount": "1", "adapterSize": 3}}}  # old-SDK spellings
    r = httpx.post(f"{server.url}/v1/projects/p2/locations/europe-west4/tuningJobs", json=body)
    assert r.status_code == 200
    job = r.json()
    assert job["state"] == "JOB_STATE_PENDING" and job["name"].startswith("projects/p2/locations/europe-west4/tuningJobs/")
    assert job["supervisedTuningSpec"]["hyperParameters"]["adapterSize"] == "ADAPTER_SIZE_EIGHT"
    assert job["baseModel"] != "gemini-2.0-flash-001"  # the resolution is visible
    httpx.post(f"{server.url}/v1/{job['name']}:cancel")


def test_the_defaults_are_stored_with_the_job_when_it_is_created(server, home):
    """A job queued (or interrupted) before an upgrade that changes a default still runs, and resumes, with the
    settings it was created under: the create resolves the adapter's and optimizer's defaults into the stored job."""
    from tunery.config import DEFAULT_ADAPTER_SIZE, DEFAULT_BATCH_SIZE

    body = {"baseModel": "gemini-2.0-flash-001",
            "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl")}}
    job = httpx.post(f"{server.url}/v1/projects/p/locations/l/tuningJobs", json=body).json()
    try:
        stored = vars(server.services.store.get_job(job["name"].rsplit("/", 1)[1]).spec.tuning)
        assert {k: stored.get(k) for k in ("adapter_size", "lora_alpha", "lora_targets", "lr_schedule", "batch_size")} \
            == {"adapter_size": DEFAULT_ADAPTER_SIZE, "lora_alpha": 2 * DEFAULT_ADAPTER_SIZE, "lora_targets": "all-linear",
                "lr_schedule": "linear", "batch_size": DEFAULT_BATCH_SIZE}
    finally:
        httpx.post(f"{server.url}/v1/{job['name']}:cancel")


@pytest.mark.parametrize("body, status, fragment", [
    ({"baseModel": "gemini-2.0-flash-001"}, 400, "supervisedTuningSpec.trainingDatasetUri: required"),
    ({"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": "/etc/passwd"}}, 403,
     "outside the directories this server may read"),
    ({"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": "https://example.invalid/x.jsonl"}},
     403, "--allow-http-datasets"),
    ({"baseModel": "no-such-model", "supervisedTuningSpec": {"trainingDatasetUri": "DATA/train.jsonl"}}, 400, "unknown base model"),
    ({"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": "DATA/train.jsonl",
      "hyperParameters": {"adapterSize": "ADAPTER_SIZE_NINE"}}}, 400, "hyperParameters.adapterSize: expected one of"),
    ({"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": "DATA/train.jsonl",
      "hyperParameters": {"epochCount": 0}}}, 400, "hyperParameters.epochCount: expected a whole number from 1 to 100"),
    ({"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": "DATA/missing.jsonl"}}, 400,
     "file not found"),
    ({"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": "DATA/bad.jsonl"}}, 400,
     "bad.jsonl:2 /contents/1/parts/0/text: error [empty_text]"),
])
def test_create_rejects_bad_requests_with_vertex_errors(server, home, body, status, fragment):
    write_jsonl(home / "data" / "bad.jsonl", [contents(("user", "a"), ("model", "b")), contents(("user", "a"), ("model", " "))])
    raw = json.dumps(body).replace("DATA", str(home / "data"))
    r = httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/tuningJobs", content=raw,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["status"] == {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED"}[status]
    assert fragment in err["message"]


def test_symlink_escape_is_refused(server, home, tmp_path):
    outside = write_jsonl(tmp_path / "secret.jsonl", [contents(("user", "a"), ("model", "b"))])
    link = home / "data" / "link.jsonl"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": f"file://{link}"}}
    r = httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/tuningJobs", json=body)
    assert r.status_code == 403 and "outside the directories" in r.json()["error"]["message"]
    traversal = {"baseModel": "gemini-2.0-flash-001",
                 "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / ".." / ".." / "secret.jsonl")}}
    assert httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/tuningJobs", json=traversal).status_code == 403


def test_unknown_job_and_route_are_not_found(server):
    r = httpx.get(f"{server.url}/v1beta1/projects/p/locations/l/tuningJobs/123")
    assert r.status_code == 404 and r.json() == {"error": {"code": 404, "message": "tuning job 123 not found", "status": "NOT_FOUND"}}
    r = httpx.get(f"{server.url}/v1beta1/nothing/here")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_list_pages_through_the_sdk_pager(server, home):
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl")}}
    names = []
    for _ in range(3):
        r = httpx.post(f"{server.url}/v1beta1/projects/pager/locations/l/tuningJobs", json=body)
        names.append(r.json()["name"])
        httpx.post(f"{server.url}/v1beta1/{names[-1]}:cancel")
    import google.oauth2.credentials
    from google import genai

    client = genai.Client(vertexai=True, project="pager", location="l",
                          credentials=google.oauth2.credentials.Credentials(token="t"), http_options={"base_url": server.url})
    pager = client.tunings.list(config={"page_size": 2})
    assert len(pager.page) == 2
    assert sorted(j.name for j in pager) == sorted(names)  # iterating fetches the next page
    r = httpx.get(f"{server.url}/v1beta1/projects/pager/locations/l/tuningJobs", params={"filter": 'state="JOB_STATE_RUNNING"'})
    assert r.json() == {"tuningJobs": []}
    r = httpx.get(f"{server.url}/v1beta1/projects/pager/locations/l/tuningJobs", params={"filter": "name=x"})
    assert r.status_code == 400 and "filter" in r.json()["error"]["message"]


def test_streaming_count_and_compute_tokens(server, tuned):
    client = sdk(server.url)
    endpoint = tuned.tuned_model.endpoint
    chunks = list(client.models.generate_content_stream(model=endpoint, contents="Colour 1: green?",
                                                        config={"max_output_tokens": 6}))
    assert len(chunks) >= 2 and chunks[-1].candidates[0].finish_reason.name in ("STOP", "MAX_TOKENS")
    assert chunks[-1].usage_metadata.total_token_count > 0
    streamed = "".join(c.text or "" for c in chunks)
    whole = client.models.generate_content(model=endpoint, contents="Colour 1: green?", config={"max_output_tokens": 6})
    assert streamed == whole.text  # greedy: the stream carries the same text
    count = client.models.count_tokens(model=endpoint, contents="Colour 1: green?")
    computed = client.models.compute_tokens(model=endpoint, contents="Colour 1: green?")
    assert count.total_tokens == len(computed.tokens_info[0].token_ids) == whole.usage_metadata.prompt_token_count


def test_base_model_by_publisher_name_and_chat(server):
    client = sdk(server.url)
    r = client.models.generate_content(model="gemini-2.0-flash-001", contents="hello",
                                       config={"system_instruction": "Be brief.", "max_output_tokens": 4, "temperature": 0.7,
                                               "top_k": 40, "top_p": 0.9, "seed": 1})
    assert r.candidates and r.usage_metadata.candidates_token_count <= 4
    chat = client.chats.create(model="gemini-2.0-flash-001", config={"max_output_tokens": 3})
    chat.send_message("hi")
    second = chat.send_message("and again")
    assert second.usage_metadata.prompt_token_count > r.usage_metadata.prompt_token_count  # history was sent
    info = httpx.get(f"{server.url}/v1beta1/publishers/google/models/gemini-2.0-flash-001").json()
    assert info["name"] == "publishers/google/models/gemini-2.0-flash-001"


def test_generate_rejects_bad_requests(server, tuned):
    url = f"{server.url}/v1beta1/{tuned.tuned_model.endpoint}:generateContent"
    cases = [({"contents": []}, "contents: expected at least one Content"),
             ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": ""}}]}]},
              "contents[0].parts[0].inlineData.data: expected a non-empty string"),
             ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "aGk="}}]}]},
              "contents[0].parts[0].inlineData.data: expected PNG image data (image/png), found bytes that are not"),
             ({"contents": [{"role": "user", "parts": [{"functionCall": {"name": "f"}}]}]},
              "contents[0].parts[0]: functionCall parts are not supported"),
             ({"contents": [{"role": "model", "parts": [{"text": "x"}]}]}, "the last turn must be from the user"),
             ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"temperature": 5}},
              "generationConfig.temperature"),
             ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"maxOutputTokens": 0}},
              "generationConfig.maxOutputTokens")]
    for body, fragment in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], (body, r.text)
    r = httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/endpoints/999:generateContent",
                   json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    assert r.status_code == 404


def test_tuned_models_can_be_listed_and_deleted(server, home):
    """Vertex cannot delete tuned models; tunery deletes the model, its endpoints and its files."""
    from google.genai import types

    client = sdk(server.url)
    job = wait_done(client, client.tunings.tune(
        base_model="gemini-2.0-flash-001", training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
        config=types.CreateTuningJobConfig(epoch_count=1)).name)
    model_name = job.tuned_model.model.split("@")[0]
    listed = httpx.get(f"{server.url}/v1beta1/projects/my-project/locations/us-central1/models").json()["models"]
    assert model_name in [m["name"] for m in listed]
    adapter = Path(server.services.store.get_model(model_name.rsplit("/", 1)[1]).adapter_dir)
    assert adapter.is_dir()
    r = httpx.delete(f"{server.url}/v1beta1/{model_name}")
    assert r.status_code == 200 and r.json() == {}
    assert httpx.get(f"{server.url}/v1beta1/{model_name}").status_code == 404
    assert not adapter.exists()
    gone = httpx.post(f"{server.url}/v1beta1/{job.tuned_model.endpoint}:generateContent",
                      json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    assert gone.status_code == 404
    assert "tunedModel" not in httpx.get(f"{server.url}/v1beta1/{job.name}").json()


def test_every_route_requires_the_api_key_when_set(home, tmp_path):
    keyed_home = tmp_path / "keyed"
    keyed_home.mkdir()
    with LiveServer(keyed_home, api_key="s3cret", start_worker=False) as live:
        paths = live.app.openapi()["paths"]
        assert len(paths) >= 20
        checked = 0
        for path, methods in paths.items():
            concrete = path.replace("{project}", "p").replace("{location}", "l").replace("{method}", "generateContent")
            concrete = re.sub(r"\{[a-z_]+\}", "1", concrete)
            for method in methods:
                r = httpx.request(method.upper(), live.url + concrete, json={})
                assert r.status_code == 401, (method, concrete, r.status_code)
                if openai_path(concrete):  # the OpenAI-compatible routes answer in OpenAI's error shape
                    assert r.json()["error"]["code"] == "invalid_api_key", concrete
                else:
                    assert r.json()["error"]["status"] == "UNAUTHENTICATED", concrete
                ok = httpx.request(method.upper(), live.url + concrete, json={}, headers={"Authorization": "Bearer s3cret"})
                assert ok.status_code != 401
                checked += 1
        assert checked >= 24
        r = httpx.get(live.url + "/v1beta1/projects/p/locations/l/tuningJobs", headers={"x-goog-api-key": "s3cret"})
        assert r.status_code == 200
        from google import genai

        client = genai.Client(vertexai=True, api_key="s3cret", project="p", location="l",
                              http_options={"base_url": live.url})
        assert list(client.tunings.list()) == []


def test_a_foreign_host_header_is_refused_on_every_route_and_the_console(home, tmp_path):
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 sends its own name as Host. Every route
    and the console answer 400 in the API's error shape; loopback names (any port) and --allowed-host pass."""
    with LiveServer(home, start_worker=False, allowed_hosts=("tunery.lan",)) as live:
        paths = live.app.openapi()["paths"]
        for path, methods in paths.items():
            concrete = re.sub(r"\{[a-z_]+\}", "1", path.replace("{method}", "generateContent"))
            for method in methods:
                r = httpx.request(method.upper(), live.url + concrete, json={}, headers={"Host": "evil.example:80"})
                assert r.status_code == 400 and "Host 'evil.example:80' is not this server's" in r.text, (path, r.text)
                key = "message" if openai_path(concrete) else "status"
                assert key in r.json()["error"], r.text
        for page in ("/console", "/console/jobs", "/"):
            assert httpx.get(live.url + page, headers={"Host": "127.0.0.1.evil.example"}).status_code == 400
        jobs = live.url + "/v1beta1/projects/p/locations/l/tuningJobs"
        for host in (f"localhost:{live.port}", f"[::1]:{live.port}", "127.0.0.1", "TUNERY.lan:8080"):
            assert httpx.get(jobs, headers={"Host": host}).status_code == 200, host
    from tunery.api.services import host_name

    assert [host_name(h) for h in ("[::1]:80", "::1", "LocalHost:8080", "a.b")] == ["::1", "::1", "localhost", "a.b"]


def test_non_loopback_host_without_key_refuses_to_start():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tunery.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "refusing to listen on 0.0.0.0 without an API key" in proc.stderr


def test_continuous_tuning_from_a_tuned_model_checkpoint(server, home, tuned):
    from google.genai import types

    from tunery.train import metrics as mt

    client = sdk(server.url)
    job = client.tunings.tune(base_model=tuned.tuned_model.model,
                              training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
                              config=types.CreateTuningJobConfig(epoch_count=1, pre_tuned_model_checkpoint_id="1"))
    done = wait_done(client, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED", done.error
    assert done.pre_tuned_model.tuned_model_name == tuned.tuned_model.model
    store = server.services.store
    first_run = home / "jobs" / tuned.name.rsplit("/", 1)[1] / "run"
    second_run = home / "jobs" / done.name.rsplit("/", 1)[1] / "run"
    identity = json.loads((second_run / "run.json").read_text())
    assert identity["hyperparameters"]["init_adapter"].endswith("checkpoints/checkpoint-1")
    # it starts where checkpoint 1 left off, not from a fresh adapter
    assert mt.read_metrics(second_run)[0][mt.TRAIN_LOSS] < mt.read_metrics(first_run)[0][mt.TRAIN_LOSS]
    bad = httpx.post(f"{server.url}/v1beta1/projects/my-project/locations/us-central1/tuningJobs",
                     json={"preTunedModel": {"tunedModelName": tuned.tuned_model.model, "checkpointId": "9"},
                           "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl")}})
    assert bad.status_code == 400 and "preTunedModel.checkpointId: expected one of 1, 2" in bad.json()["error"]["message"]
    other = httpx.post(f"{server.url}/v1beta1/projects/my-project/locations/us-central1/tuningJobs",
                       json={"preTunedModel": {"tunedModelName": tuned.tuned_model.model},
                             "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl"),
                                                      "hyperParameters": {"loraTargets": "MLP"}}})
    assert other.status_code == 400 and other.json()["error"]["message"] == (
        "supervisedTuningSpec.hyperParameters.loraTargets: expected the pre-tuned model's ALL_LINEAR (or nothing), "
        "found MLP")
    rank = httpx.post(f"{server.url}/v1beta1/projects/my-project/locations/us-central1/tuningJobs",
                      json={"preTunedModel": {"tunedModelName": tuned.tuned_model.model},
                            "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl"),
                                                     "hyperParameters": {"adapterSize": "ADAPTER_SIZE_EIGHT"}}})
    assert rank.status_code == 400 and rank.json()["error"]["message"] == (
        "supervisedTuningSpec.hyperParameters.adapterSize: expected the pre-tuned model's ADAPTER_SIZE_FOUR (or "
        "nothing), found ADAPTER_SIZE_EIGHT")
    assert store.get_job(done.name.rsplit("/", 1)[1]).state == "JOB_STATE_SUCCEEDED"


def test_get_model_endpoint_and_base_models(server, tuned):
    model_name = tuned.tuned_model.model.split("@")[0]
    model = httpx.get(f"{server.url}/v1beta1/{model_name}").json()
    assert model["name"] == model_name and model["displayName"] == "colours"
    assert model["labels"]["google-vertex-llm-tuning-base-model-id"] and model["checkpoints"][-1]["checkpointId"] == "2"
    assert model["deployedModels"][0]["endpoint"] == tuned.tuned_model.endpoint
    endpoint = httpx.get(f"{server.url}/v1/{tuned.tuned_model.endpoint}").json()
    assert endpoint["name"] == tuned.tuned_model.endpoint and endpoint["deployedModels"][0]["model"] == model_name
    ckpt = httpx.get(f"{server.url}/v1/{tuned.tuned_model.checkpoints[0].endpoint}").json()
    assert ckpt["deployedModels"][0]["checkpointId"] == "1"
    listed = httpx.get(f"{server.url}/v1beta1/publishers/google/models").json()["publisherModels"]
    assert "publishers/google/models/smollm2-135m-instruct" in [m["name"] for m in listed]
    assert httpx.get(f"{server.url}/v1beta1/publishers/google/models/nope-9").status_code == 404
    count = httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.0-flash-001:countTokens",
                       json={"contents": [{"role": "user", "parts": [{"text": "hello"}]}]})
    assert count.status_code == 200 and count.json()["totalTokens"] > 0


def test_dataset_errors_found_inside_the_job_fail_it_with_line_numbers(home, tmp_path):
    """Above the validate-at-create size, the job itself validates and ends FAILED with the validator's messages."""
    from tests.helpers import contents as c

    big = home / "data" / "big_bad.jsonl"
    write_jsonl(big, [c(("user", f"q{i}"), ("model", f"a{i}")) for i in range(10)] + [c(("user", "q"), ("user", "again"))])
    with LiveServer(home, validate_on_create_bytes=0) as live:
        client = sdk(live.url)
        from google.genai import types

        job = client.tunings.tune(base_model="gemini-2.0-flash-001", training_dataset=types.TuningDataset(gcs_uri=str(big)))
        assert job.state.name == "JOB_STATE_PENDING"
        done = wait_done(client, job.name)
    assert done.state.name == "JOB_STATE_FAILED"
    assert done.error.code == 3 and "big_bad.jsonl:11 /contents/1/role: error [consecutive_same_role]" in done.error.message
    assert done.tuned_model is None


def test_job_with_evaluation_config_attaches_a_before_after_report(server, home, tmp_path):
    """evaluationConfig through the unmodified SDK: after tuning, base and tuned run on the validation set; the job
    lists the run in evaluateDatasetRuns and the report and curves are readable over REST and from the CLI."""
    from click.testing import CliRunner
    from google.genai import types

    from tunery.cli import cli

    client = sdk(server.url)
    job = client.tunings.tune(
        base_model="gemini-2.0-flash-001",
        training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
        config=types.CreateTuningJobConfig(
            epoch_count=1, validation_dataset=types.TuningValidationDataset(gcs_uri=str(home / "data" / "val.jsonl")),
            evaluation_config=types.EvaluationConfig(
                metrics=[types.Metric(name="exact_match")],
                output_config=types.OutputConfig(gcs_destination=types.GcsDestination(output_uri_prefix="gs://b/eval/")),
                inference_generation_config=types.GenerationConfig(max_output_tokens=6))))
    job = wait_done(client, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
    assert [r.evaluation_run for r in job.evaluate_dataset_runs] == [f"{job.name}/evaluationReport"]
    assert job.evaluate_dataset_runs[0].error is None
    report = httpx.get(f"{server.url}/v1beta1/{job.name}/evaluationReport").json()
    assert report["task"] == "qa" and report["examples"] == 8  # the task from the exact_match metric spec
    assert set(report["metrics"]) == {"base", "tuned"} and set(report["improvement_percent"]) == set(report["metrics"]["base"])
    assert report["generation"]["max_output_tokens"] == 6 and report["curves"]["/train_total_loss"]
    page = httpx.get(f"{server.url}/v1beta1/{job.name}/evaluationReport", params={"format": "html"})
    assert page.headers["content-type"].startswith("text/html") and "<h1>Evaluation: qa</h1>" in page.text
    curves = httpx.get(f"{server.url}/v1/{job.name}/metrics").json()["curves"]
    steps = job.tuning_job_metadata.completed_step_count
    assert steps >= 2 and [s for s, _ in curves["/train_total_loss"]] == list(range(1, steps + 1))
    r = CliRunner().invoke(cli, ["jobs", "report", job.name, "--server", server.url, "--html", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    assert "exact_match" in r.stdout and (tmp_path / "r.html").read_text() == page.text
    r = CliRunner().invoke(cli, ["metrics", job.name.rsplit("/", 1)[1], "--server", server.url, "--json"])
    assert r.exit_code == 2 and "NOT_FOUND" in r.output  # a bare id is the job of the CLI's project ("local")
    r = CliRunner().invoke(cli, ["metrics", job.name, "--server", server.url, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == curves


@pytest.mark.parametrize("evaluation, status, fragment", [
    ({"task": "poetry"}, 400, "evaluationConfig.task: expected one of summarization, qa, classification, generation"),
    ({"datasetUri": "/etc/passwd"}, 403, "outside the directories this server may read"),
    ({"datasetUri": "DATA/bad_eval.jsonl"}, 400, "evaluationConfig.datasetUri: DATA/bad_eval.jsonl:2"),
    ({"limit": 0}, 400, "evaluationConfig.limit: expected a whole number from 1 to 100000"),
    ({}, 400, "evaluationConfig: no evaluation dataset; set validationDatasetUri or evaluationConfig.datasetUri"),
])
def test_evaluation_config_errors(server, home, evaluation, status, fragment):
    (home / "data" / "bad_eval.jsonl").write_text(json.dumps(contents(("user", "q"), ("model", "a"))) + "\n{oops\n")
    raw = json.dumps({"baseModel": "gemini-2.0-flash-001",
                      "supervisedTuningSpec": {"trainingDatasetUri": "DATA/train.jsonl", "evaluationConfig": evaluation}})
    r = httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/tuningJobs",
                   content=raw.replace("DATA", str(home / "data")), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment.replace("DATA", str(home / "data")) in r.json()["error"]["message"]


def test_evaluation_report_of_a_job_without_one_is_not_found(server, tuned):
    r = httpx.get(f"{server.url}/v1beta1/{tuned.name}/evaluationReport")
    assert r.status_code == 404 and "has no evaluation (create it with evaluationConfig)" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1beta1/{tuned.name}/evaluationReport", params={"format": "pdf"})
    assert r.status_code == 400 and "format: expected json or html" in r.json()["error"]["message"]


def test_export_needs_a_gguf_base_and_refuses_unknown_fields(server, tuned):
    """models.export writes GGUF files (tests/test_llamacpp.py); a model tuned on a Hugging Face directory has no
    GGUF to export, and a field the API does not define is refused before any work."""
    url = f"{server.url}/v1/{tuned.tuned_model.model.split('@')[0]}:export"
    r = httpx.post(url, json={"outputConfig": {"exportFormatId": "gguf"}})
    assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert "is not a GGUF model" in r.json()["error"]["message"]
    r = httpx.post(url, json={"outputConfig": {"exportFormatId": "gguf", "imageDestination": {}}})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("outputConfig.imageDestination: unknown field")
    assert httpx.post(url, json={}).status_code == 400
    assert httpx.post(f"{server.url}/v1/projects/my-project/locations/us-central1/models/nope:export",
                      json={"outputConfig": {"exportFormatId": "gguf"}}).status_code == 404


def test_a_failed_evaluation_keeps_the_tuned_model_and_reports_why(home):
    """An evaluation dataset too big to check at create that turns out bad: the job still succeeds (the tuned model
    is fine), evaluateDatasetRuns carries the error with the line, and the report route says why."""
    bad = home / "data" / "bad_eval_big.jsonl"
    bad.write_text(json.dumps(contents(("user", "q"), ("model", "a"))) + "\n{oops\n")
    body = {"baseModel": "gemini-2.0-flash-001",
            "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl"),
                                     "hyperParameters": {"epochCount": 1},
                                     "evaluationConfig": {"datasetUri": str(bad), "task": "qa"}}}
    with LiveServer(home, validate_on_create_bytes=0) as live:
        name = httpx.post(f"{live.url}/v1beta1/projects/p/locations/l/tuningJobs", json=body).json()["name"]
        done = wait_done(sdk(live.url), name)
        report = httpx.get(f"{live.url}/v1beta1/{name}/evaluationReport")
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.tuned_model.endpoint
    err = done.evaluate_dataset_runs[0].error
    assert err.code == 3 and f"{bad}:2" in err.message
    assert report.status_code == 400 and report.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert f"{bad}:2" in report.json()["error"]["message"]


def test_compare_evaluates_server_models_over_generate_content(server, home, tuned):
    """`tunery compare --server`: a base model by Gemini name and the tuned endpoint, both generated by the server."""
    from click.testing import CliRunner

    from tunery.cli import cli

    before = server.services.registry.batches
    r = CliRunner().invoke(cli, ["compare", "--server", server.url, "--base", "gemini-2.0-flash-001",
                                 "--tuned", tuned.tuned_model.endpoint, "--data", str(home / "data" / "val.jsonl"),
                                 "--task", "qa", "--max-output-tokens", "4", "--batch-size", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["examples"] == 8 and set(doc["metrics"]) == {"base", "tuned"}
    assert doc["models"]["tuned"] == {"label": tuned.tuned_model.endpoint, "server": server.url,
                                      "name": tuned.tuned_model.endpoint}
    assert server.services.registry.batches > before  # the server generated them (batched when requests overlap)
