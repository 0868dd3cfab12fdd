"""The REST API through the real google-genai SDK and plain HTTP against a live server on loopback.
The configured default base model (what Gemini names resolve to) is the tiny in-process model."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import contents, write_jsonl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, home: Path, **settings) -> None:
        import uvicorn

        from tunery.api.app import ServerSettings, create_app

        self.home = home
        self.settings = ServerSettings(home=home, cwd=home, **settings)
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
    home = tmp_path_factory.mktemp("home")
    (home / "config.toml").write_text(f'default_base_model = "{tiny_model_dir}"\n')
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(home)
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    rows = [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}.")) for i, c in enumerate(colours * 4)]
    (home / "data").mkdir()
    write_jsonl(home / "data" / "train.jsonl", rows[:24])
    write_jsonl(home / "data" / "val.jsonl", rows[24:])
    yield home
    if old is None:
        os.environ.pop("TUNERY_HOME", None)
    else:
        os.environ["TUNERY_HOME"] = old


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
