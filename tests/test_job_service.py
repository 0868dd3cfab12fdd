"""One typed job behind every door: the same job created through google-genai, the openai SDK, the console form and
`tunery jobs create` is stored as the same JobSpec, never as a request body; fields an API does not define are
refused; a job lives in its project; the pending queue and the datasets a job may read are bounded. Each through
the real server (no worker: the jobs stay queued, nothing trains)."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import time

import httpx
import pytest
from click.testing import CliRunner

from tests.helpers import tunery_home, write_jsonl
from tests.test_api import LiveServer, sdk
from tunery.cli import cli
from tunery.jobs.spec import JobSpec

P = "projects/my-project/locations/us-central1"


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": f"Colour {i}?"}, {"role": "assistant", "content": f"It is {i}."}]}
            for i in range(12)]  # OpenAI's chat format: every door reads it, and the OpenAI one reads nothing else
    with tunery_home(tmp_path_factory.mktemp("home"), tiny_model_dir) as home:
        write_jsonl(home / "train.jsonl", rows)
        yield home


@pytest.fixture(scope="module")
def server(home):
    with LiveServer(home, start_worker=False, max_pending_jobs=8) as live:
        yield live


@pytest.fixture(autouse=True)
def no_jobs_left(server):
    yield
    with sqlite3.connect(server.home / "tunery.db") as db:  # each test starts with an empty queue
        db.execute("DELETE FROM jobs")


def _spec(server, job_id: str) -> JobSpec:
    return server.services.store.get_job(job_id).spec


def _same_job(spec: JobSpec) -> JobSpec:
    """A spec without what differs by door: the door, the OpenAI names, and where the dataset file is (the OpenAI
    door reads its uploaded copy)."""
    return dataclasses.replace(spec, door="", openai=None, train_uri="",
                               tuning=dataclasses.replace(spec.tuning, train=""))


def _console_form(server) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=server.url, headers={"Origin": server.url}, timeout=30)
    page = client.get("/console/new").text
    return client, re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def test_the_same_job_through_every_door_is_the_same_stored_spec(server, home):
    import openai
    from google.genai import types

    train = str(home / "train.jsonl")
    ids = {}
    genai = sdk(server.url)  # held: a client that is garbage-collected closes its connection
    job = genai.tunings.tune(
        base_model="gemini-2.0-flash-001", training_dataset=types.TuningDataset(gcs_uri=train),
        config=types.CreateTuningJobConfig(epoch_count=2, learning_rate_multiplier=0.5, tuned_model_display_name="same"))
    ids["vertex"] = job.name.rsplit("/", 1)[1]

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    uploaded = client.files.create(file=open(train, "rb"), purpose="fine-tune")
    ft = client.fine_tuning.jobs.create(model="gemini-2.0-flash-001", training_file=uploaded.id, suffix="same",
                                        method={"type": "supervised", "supervised": {"hyperparameters": {
                                            "n_epochs": 2, "learning_rate_multiplier": 0.5}}})
    ids["openai"] = ft.id.removeprefix("ftjob-")

    form, token = _console_form(server)
    r = form.post("/console/new", data={"csrf": token, "action": "create", "display_name": "same",
                                        "base_model": "gemini-2.0-flash-001", "train_path": train, "epochs": "2",
                                        "lr_multiplier": "0.5"})
    assert r.status_code == 303, r.text
    ids["console"] = r.headers["location"].rsplit("/", 1)[1]

    r = CliRunner().invoke(cli, ["-q", "jobs", "create", "--train", train, "--epochs", "2", "--learning-rate-multiplier",
                                 "0.5", "--display-name", "same", "--server", server.url], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ids["cli"] = r.stdout.split()[0].rsplit("/", 1)[1]

    specs = {door: _spec(server, job_id) for door, job_id in ids.items()}
    assert {d: s.door for d, s in specs.items()} == {"vertex": "vertex", "openai": "openai", "console": "console",
                                                     "cli": "vertex"}  # the CLI is a client of the Vertex API
    first = _same_job(specs["vertex"])
    assert first.requested_base_model == "gemini-2.0-flash-001" != first.base_model  # the alias resolved
    assert first.tuning.epochs == 2 and first.tuning.learning_rate_multiplier == 0.5 and first.display_name == "same"
    assert set(first.explicit) == {"epochs", "learning_rate_multiplier"}
    for door, spec in specs.items():
        assert _same_job(spec) == first, door
    assert specs["openai"].openai.training_file == uploaded.id and specs["openai"].openai.suffix == "same"
    with sqlite3.connect(server.home / "tunery.db") as db:  # the row holds the versioned spec, no request body
        for (text,) in db.execute("SELECT spec FROM jobs"):
            stored = json.loads(text)
            assert stored["v"] == 1 and set(stored) == {"v"} | {f.name for f in dataclasses.fields(JobSpec)}
            assert "supervisedTuningSpec" not in text and "hyperParameters" not in text


@pytest.mark.parametrize("over, fragment", [
    ({"_config": {"train": "/etc/passwd"}}, "_config: unknown field of TuningJob"),
    ({"tuningMethod": "x"}, "tuningMethod: unknown field of TuningJob"),
    ({"supervisedTuningSpec": {"trainingDatasetUri": "T", "evaluation": {}}},
     "supervisedTuningSpec.evaluation: unknown field of SupervisedTuningSpec"),
    ({"supervisedTuningSpec": {"trainingDatasetUri": "T", "evaluationConfig": {"datasetUri": "T", "file": "/etc/passwd"}}},
     "supervisedTuningSpec.evaluationConfig.file: unknown field of EvaluationConfig"),
    ({"preTunedModel": {"tunedModelName": "projects/p/locations/l/models/1", "adapter": "/tmp"}},
     "preTunedModel.adapter: unknown field of PreTunedModel"),
    ({"encryptionSpec": {"kmsKeyName": "k"}}, "encryptionSpec: tunery does not encrypt with customer-managed keys"),
    ({"outputUri": "gs://b/out"}, "outputUri: tunery keeps a job's artifacts under the server's home"),
    ({"distillationSpec": {"x": 1}}, "distillationSpec: tunery supports supervised and preference tuning"),
])
def test_a_vertex_create_with_a_field_the_api_does_not_define_or_tunery_cannot_honour_is_a_400(server, home, over,
                                                                                                 fragment):
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": str(home / "train.jsonl")}}
    for key, value in over.items():
        if isinstance(value, dict) and "trainingDatasetUri" in value:
            value = json.loads(json.dumps(value).replace('"T"', json.dumps(str(home / "train.jsonl"))))
        body[key] = value
    r = httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT", r.text
    assert r.json()["error"]["message"].startswith(fragment), r.json()
    assert server.services.store.jobs_in("JOB_STATE_PENDING") == []


def test_output_only_fields_are_ignored_and_service_account_is_accepted_with_a_warning(server, home):
    body = {"baseModel": "gemini-2.0-flash-001", "state": "JOB_STATE_SUCCEEDED", "name": "projects/x",
            "serviceAccount": "sa@example.iam.gserviceaccount.com",
            "supervisedTuningSpec": {"trainingDatasetUri": str(home / "train.jsonl")}}
    job = httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30).json()
    assert job["state"] == "JOB_STATE_PENDING" and job["name"].startswith(P + "/tuningJobs/")
    job_id = job["name"].rsplit("/", 1)[1]
    assert _spec(server, job_id).warnings == ("serviceAccount is not used: tuning runs as the user that runs the "
                                              "tunery server",)
    events = httpx.get(f"{server.url}/v1/fine_tuning/jobs/ftjob-{job_id}/events", timeout=30).json()["data"]
    assert [e["message"] for e in events if e["level"] == "warn"] == list(_spec(server, job_id).warnings)


@pytest.mark.parametrize("over, fragment", [
    ({"tools": []}, "tools: unknown parameter"),
    ({"hyperparameters": {"n_epochs": 1, "warmup": 3}}, "hyperparameters.warmup: unknown parameter"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}},
     "method.supervised.hyperparameters.beta: unknown parameter"),
])
def test_an_openai_create_with_an_undefined_parameter_is_a_400_in_openai_shape(server, home, over, fragment):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    uploaded = client.files.create(file=open(home / "train.jsonl", "rb"), purpose="fine-tune")
    r = httpx.post(f"{server.url}/v1/fine_tuning/jobs", json={"model": "gemini-2.0-flash-001",
                                                              "training_file": uploaded.id, **over}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(fragment), r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_job_lives_in_its_project_and_location(server, home):
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": str(home / "train.jsonl")}}
    name = httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30).json()["name"]
    job_id = name.rsplit("/", 1)[1]
    assert httpx.get(f"{server.url}/v1beta1/{name}", timeout=30).status_code == 200
    for other in ("projects/other/locations/us-central1", "projects/my-project/locations/europe-west4"):
        for method, path in (("GET", ""), ("GET", "/metrics"), ("POST", ":cancel")):
            r = httpx.request(method, f"{server.url}/v1beta1/{other}/tuningJobs/{job_id}{path}", timeout=30)
            assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND", (other, path, r.text)
        assert httpx.get(f"{server.url}/v1beta1/{other}/tuningJobs", timeout=30).json() == {"tuningJobs": []}
    assert _spec(server, job_id) and server.services.store.get_job(job_id).state == "JOB_STATE_PENDING"  # not cancelled


def test_the_pending_queue_is_bounded_with_429_on_each_api(server, home):
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": str(home / "train.jsonl")}}
    for _ in range(8):
        assert httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30).status_code == 200
    r = httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "8 jobs are waiting to start already" in r.json()["error"]["message"]
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    uploaded = client.files.create(file=open(home / "train.jsonl", "rb"), purpose="fine-tune")
    r = httpx.post(f"{server.url}/v1/fine_tuning/jobs", json={"model": "gemini-2.0-flash-001",
                                                              "training_file": uploaded.id}, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert len(server.services.store.jobs_in("JOB_STATE_PENDING")) == 8
    first = server.services.store.jobs_in("JOB_STATE_PENDING")[0]
    assert httpx.post(f"{server.url}/v1beta1/{first.name}:cancel", timeout=30).status_code == 200
    assert httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30).status_code == 200  # room again


@pytest.mark.parametrize("uri, status, fragment", [
    ("gs://someone-elses-bucket/train.jsonl", 403, "bucket gs://someone-elses-bucket is not one this server may read; "
                                                   "start it with --allow-bucket someone-elses-bucket"),
    ("s3://b/train.jsonl", 403, "--allow-bucket b"),
    ("~no-such-user-here/train.jsonl", 400, "~no-such-user-here/train.jsonl: no such user's home directory"),
    ("http://127.0.0.1:8080/train.jsonl", 403, "http(s) datasets are off"),
])
def test_dataset_uris_outside_what_the_server_may_read_are_refused(server, uri, status, fragment):
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": uri}}
    r = httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"] == f"supervisedTuningSpec.trainingDatasetUri: {fragment}" or \
        fragment in r.json()["error"]["message"], r.json()


@pytest.mark.parametrize("uri", ["http://127.0.0.1:8080/t.jsonl", "http://localhost/t.jsonl", "http://[::1]/t.jsonl",
                                 "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/t.jsonl",
                                 "https://192.168.0.1/t.jsonl"])
def test_http_datasets_never_reach_this_machine_or_its_private_network(home, uri):
    from tunery.data import sources
    from tunery.errors import RequestError

    with pytest.raises(RequestError) as info:
        sources.resolve(uri, "train", [home], allow_http=True)
    assert info.value.status == "PERMISSION_DENIED" and "which is not a public address" in info.value.message


def test_console_sessions_expire_and_one_client_cannot_push_out_anothers(home):
    from tunery.console.auth import Sessions

    with LiveServer(home, start_worker=False, api_key="k3y") as live:
        client = httpx.Client(base_url=live.url, headers={"Origin": live.url}, timeout=30)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/login").text).group(1)
        assert client.post("/console/login", data={"key": "k3y", "csrf": token}).status_code == 303
        assert client.get("/console").status_code == 200
        live.app.state.console_sessions.idle_seconds = 0.3
        time.sleep(0.5)
        r = client.get("/console")
        assert r.status_code == 303 and r.headers["location"] == "/console/login"  # expired: sign in again
    sessions = Sessions(per_client=4)
    mine, _ = sessions.new(signed_in=True, client="10.0.0.1")
    for _ in range(1000):
        sessions.new(client="10.0.0.2")
    assert sessions.get(mine).signed_in and len(sessions) == 5  # the other client holds its newest 4


def test_uploads_no_job_uses_are_swept_and_the_ones_a_job_uses_stay(server, home):
    import os

    form, token = _console_form(server)
    data = (home / "train.jsonl").read_bytes()

    def upload(action: str) -> httpx.Response:
        return form.post("/console/new", data={"csrf": token, "action": action, "base_model": "gemini-2.0-flash-001"},
                         files={"train_file": ("mine.jsonl", data, "application/jsonl")})

    assert upload("check").status_code == 200
    assert upload("create").status_code == 303
    uploads = sorted((server.home / "uploads").iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(uploads) == 2
    for folder in uploads:  # both older than a day
        os.utime(folder, (time.time() - 2 * 86400,) * 2)
    assert upload("check").status_code == 200
    left = set((server.home / "uploads").iterdir())
    assert uploads[0] not in left and uploads[1] in left and len(left) == 2  # checked-only went; the job's stays


def test_an_http_dataset_is_fetched_and_a_redirect_to_a_private_address_is_refused(tmp_path, monkeypatch):
    """The tuning process's copy of an http(s) dataset checks every host on the way, redirects included. Here the
    public internet is "localhost" (the one name the check lets through in this test) and 127.0.0.1 is private."""
    import http.server
    import threading

    from tunery.data import sources
    from tunery.errors import RequestError

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            port = self.server.server_address[1]
            moves = {"/away": f"http://127.0.0.1:{port}/data.jsonl", "/loop": "/loop", "/ftp": "ftp://x/y"}
            if self.path in moves:
                self.send_response(302)
                self.send_header("Location", moves[self.path])
                self.end_headers()
                return
            body = b'{"messages": []}\n' * 3
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    def only_localhost(host: str, field: str):
        if host != "localhost":
            raise RequestError(field, f"{host} is not a public address", status="PERMISSION_DENIED")
        return ["127.0.0.1"]

    monkeypatch.setattr(sources, "public_host", only_localhost)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://localhost:{server.server_address[1]}"
    try:
        got = sources.fetch(f"{base}/data.jsonl", tmp_path / "ok")
        assert open(got, "rb").read() == b'{"messages": []}\n' * 3
        for path, fragment in (("/away", "127.0.0.1 is not a public address"), ("/loop", "more than 5 redirects"),
                               ("/ftp", "only http(s) is followed")):
            with pytest.raises(RequestError, match=re.escape(fragment)):
                sources.fetch(base + path, tmp_path / path.strip("/"))
            assert not list((tmp_path / path.strip("/")).iterdir())  # nothing passes for the dataset, no part left
    finally:
        server.shutdown()
