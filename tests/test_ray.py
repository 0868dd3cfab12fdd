"""The Ray executor against a real local Ray cluster: `ray start --head` on 127.0.0.1 with token auth and 3 logical
CPUs (a 2-worker job beside a 1-worker one on this 2-core machine), started once for this module and stopped by its
PID. Jobs go in through the google-genai SDK and REST as usual and run as Ray jobs (Jobs API) of Ray Train; kills of
the Ray worker and of `tunery serve` are survived; cancel stops the Ray job; a wrong token is refused. Resumes are
checked on trained.jsonl (every step every process trained)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import contents, tunery_home, write_jsonl
from tests.test_api import LiveServer, _free_port, sdk
from tunery.jobs.executors import ExecutorError
from tunery.train import metrics as mt

pytest.importorskip("ray.job_submission")
pytestmark = pytest.mark.all_cores
RAY_BIN = Path(sys.executable).parent / "ray"
REST = "/v1beta1/projects/p/locations/l/tuningJobs"


class RayHead:
    """`ray start --head --block` as our child in its own session: SIGTERM to its PID stops the cluster it started
    (--block tears its processes down); whatever survives is killed by process group, never by name."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.temp = Path(tempfile.mkdtemp(prefix="tr-", dir="/tmp"))  # short: Ray's unix sockets live in here
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a test cluster: stop at once, no draining
               "PATH": f"{RAY_BIN.parent}:{os.environ.get('PATH', '')}"}  # `python` in entrypoints is this venv's
        self.proc = subprocess.Popen(
            [str(RAY_BIN), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "3",
             "--num-gpus", "0", "--port", str(_free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port",
             str(self.port), "--temp-dir", str(self.temp), "--disable-usage-stats", "--include-dashboard", "true"],
            env=env, stdout=open(self.temp / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/jobs/", headers=self.headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.temp / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError("Ray head did not come up: " + (self.temp / "head.log").read_text()[-3000:])

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def jobs(self) -> dict[str, str]:
        """submission id -> status, from Ray's own job list."""
        r = httpx.get(f"{self.url}/api/jobs/", headers=self.headers, timeout=10)
        return {j["submission_id"]: j["status"] for j in r.json() if j.get("submission_id")}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        try:  # stragglers of this cluster only: they share the session (and group) we gave `ray start`
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    head = RayHead(secrets.token_hex(32))
    yield head
    head.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    rows = [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}.")) for i, c in enumerate(colours * 3)]
    old = os.environ.get("TUNERY_SAVE_INTERVAL_SECONDS")
    os.environ["TUNERY_SAVE_INTERVAL_SECONDS"] = "0"  # jobs save resume state every step (forwarded to Ray)
    with tunery_home(tmp_path_factory.mktemp("ray-home"), tiny_model_dir) as home:
        (home / "data").mkdir()
        write_jsonl(home / "data" / "train.jsonl", rows[:16])
        write_jsonl(home / "data" / "val.jsonl", rows[16:])
        yield home
    if old is None:
        os.environ.pop("TUNERY_SAVE_INTERVAL_SECONDS")
    else:
        os.environ["TUNERY_SAVE_INTERVAL_SECONDS"] = old


@pytest.fixture(scope="module")
def server(home, ray_head):
    with LiveServer(home, executor="ray", ray_address=ray_head.url, ray_token=ray_head.token,
                    max_concurrent_jobs=2) as live:  # a 2-worker job beside a 1-worker one (3 Ray CPUs)
        yield live


def create(url: str, home: Path, epochs: int, batch: int = 8) -> dict:
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {
        "trainingDatasetUri": str(home / "data" / "train.jsonl"),
        "hyperParameters": {"epochCount": epochs, "batchSize": batch}}}
    r = httpx.post(url + REST, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def get(url: str, name: str) -> dict:
    return httpx.get(f"{url}/v1beta1/{name}", timeout=30).json()


def wait(url: str, name: str, predicate, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        try:
            job = get(url, name)
        except httpx.HTTPError:  # a server being restarted
            job = {}
        if job and predicate(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"timed out; last: {json.dumps(job)[:800]}")


def ended(job: dict) -> bool:
    return job["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


def run_dir(home: Path, job: dict, runs: Path | None = None) -> Path:
    """The job's run dir: under HOME/jobs, or under `runs` (the server's --artifacts)."""
    return (runs or home / "jobs") / job["name"].rsplit("/", 1)[1]


def trained(home: Path, job: dict, runs: Path | None = None) -> list[dict]:
    path = run_dir(home, job, runs) / "run" / "trained.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def job_id(job) -> str:
    return (job["name"] if isinstance(job, dict) else job.name).rsplit("/", 1)[1]


# ---------------------------------------------------------------- security: refused before anything runs

def test_wrong_token_and_open_remote_ray_are_refused(ray_head, tmp_path):
    from tunery.jobs.executors.ray import RayExecutor

    with pytest.raises(ExecutorError, match="refused the token"):
        RayExecutor(ray_head.url, token="not-the-token")
    with pytest.raises(ExecutorError, match="requires a token"):
        RayExecutor(ray_head.url)
    with pytest.raises(ExecutorError, match="without a token.*CVE-2023-48022"):
        RayExecutor("http://10.1.2.3:8265")
    proc = subprocess.run([sys.executable, "-m", "tunery.cli", "serve", "--home", str(tmp_path), "--executor", "ray",
                           "--ray-address", ray_head.url, "--ray-token", "not-the-token"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "refused the token" in proc.stderr, proc.stderr
    with pytest.raises(ExecutorError, match="refusing to send the Ray token to 10.1.2.3 over plain http"):
        RayExecutor("http://10.1.2.3:8265", token=ray_head.token)
    # the cluster runs jobs with an interpreter that cannot import tunery: refused at once, not three crashes per job
    with pytest.raises(ExecutorError, match=r"the Ray cluster's `/nonexistent/python` cannot import tunery and ray "
                                            r"\(.+\); pass --ray-python"):
        RayExecutor(ray_head.url, token=ray_head.token, python="/nonexistent/python")


def test_an_attempt_ray_does_not_know_is_requeued_not_waited_for(ray_head):
    """A submission Ray never got (the server died between claim and submit) or forgot (a new head): reattach
    answers None (the job is requeued) and poll reports an end (a crash, resubmitted), never 'still running'."""
    from types import SimpleNamespace

    from tunery.jobs.executors import Handle
    from tunery.jobs.executors.ray import RayExecutor

    ex = RayExecutor(ray_head.url, token=ray_head.token)
    assert ex.reattach(SimpleNamespace(id="123", attempts=7, run_dir="/nonexistent")) is None
    ended = ex.poll(Handle("123", Path("/nonexistent"), "tunery-123-a7"))
    assert ended is not None and ended.code == 1 and "unknown to Ray" in ended.how


def test_workers_field_is_validated_and_local_servers_refuse_more_than_one(home, tmp_path):
    with LiveServer(home, start_worker=False) as local:
        for bad in (0, 65, "two", True, 1.5):
            r = httpx.post(local.url + REST, json={"baseModel": "gemini-2.0-flash-001", "workers": bad,
                                                   "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl")}})
            assert r.status_code == 400 and r.json()["error"]["message"].startswith("workers:"), (bad, r.text)
        r = httpx.post(local.url + REST, json={"baseModel": "gemini-2.0-flash-001", "workers": 2,
                                               "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl")}})
        assert r.status_code == 400 and "need the Ray executor" in r.json()["error"]["message"]


def test_console_offers_workers_only_on_ray(server, home):
    from tunery.console.create import EMPTY_FORM, _body

    assert 'name="workers"' in httpx.get(f"{server.url}/console/new", timeout=60).text
    with LiveServer(home, start_worker=False) as local:
        assert 'name="workers"' not in httpx.get(f"{local.url}/console/new", timeout=60).text
    assert _body({**EMPTY_FORM, "train_path": "t.jsonl", "workers": "2"})["workers"] == "2"  # the route checks it


# ---------------------------------------------------------------- a job through the SDK, and data parallel

@pytest.fixture(scope="module")
def jobs(server, home, ray_head):
    """Two jobs side by side (the head offers 3 CPUs): the SDK job asks for 2 Ray Train workers (`workers`, a tunery
    field, through the SDK's `extra_body`) and a long 1-worker job is cancelled through the SDK after 2 steps. (A Ray
    Train run costs about 25 CPU-seconds of Ray's own processes here before it trains: start as few as the checks
    need, and overlap them.)"""
    from google.genai import types

    client = sdk(server.url)
    job = client.tunings.tune(base_model="gemini-2.0-flash-001",
                              training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
                              config=types.CreateTuningJobConfig(
                                  epoch_count=3, tuned_model_display_name="on-ray",
                                  validation_dataset=types.TuningValidationDataset(gcs_uri=str(home / "data" / "val.jsonl")),
                                  http_options=types.HttpOptions(extra_body={"workers": 2})))
    long = create(server.url, home, epochs=60)
    # live progress from the Ray worker reaches the job while it runs (tuningJobMetadata, as with local jobs)
    wait(server.url, long["name"], lambda j: int(j.get("tuningJobMetadata", {}).get("completedStepCount", 0)) >= 2)
    client.tunings.cancel(name=long["name"])
    cancelled = wait(server.url, long["name"], ended, timeout=60)
    sid = f"tunery-{job_id(long)}-a1"
    deadline = time.monotonic() + 30
    while ray_head.jobs()[sid] != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.5)
    stopped = ray_head.jobs()[sid]
    raw = wait(server.url, job.name, ended)
    return {"sdk": client.tunings.get(name=job.name), "raw": raw, "cancelled": cancelled,
            "ray_status_after_cancel": stopped}


def test_a_job_from_the_sdk_runs_on_ray_and_serves(jobs, server, home, ray_head):
    job, raw = jobs["sdk"], jobs["raw"]
    assert job.state.name == "JOB_STATE_SUCCEEDED", (job.error, get(server.url, job.name))
    assert ray_head.jobs()[f"tunery-{job_id(job)}-a1"] == "SUCCEEDED"  # it ran as that Ray job
    records = mt.read_metrics(run_dir(home, raw) / "run")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert any(mt.EVAL_LOSS in r for r in records)  # validation ran on the Ray worker
    assert raw["tuningJobMetadata"]["completedStepCount"] == "6" or raw["tuningJobMetadata"]["completedStepCount"] == 6
    assert job.tuned_model.checkpoints and job.tuned_model.endpoint
    client = sdk(server.url)  # kept in a variable: a garbage-collected client closes its connection pool
    reply = client.models.generate_content(model=job.tuned_model.endpoint, contents="Colour 3: black?",
                                           config={"max_output_tokens": 4})
    assert reply.text is not None
    logs = httpx.get(f"{server.url}/v1beta1/{job.name}/logs", timeout=30).json()
    assert logs["executor"] == "ray" and "2 Ray Train worker(s)" in logs["logs"]
    from click.testing import CliRunner

    from tunery.cli_jobs import jobs_logs_cmd

    out = CliRunner().invoke(jobs_logs_cmd, [job_id(job), "--server", server.url, "--project", "my-project"])
    assert out.exit_code == 0 and f"Ray job tunery-{job_id(job)}-a1 (attempt 1)" in out.output, out.output[-2000:]


def test_two_ray_train_workers_match_one_process(jobs, home, tmp_path, monkeypatch):
    """Ray Train's process group under the same train(): each rank takes half of every batch and gradients are
    summed, so the SDK job's 2 workers give the losses of one process training that job's config here, up to the
    reassociation of sums split across ranks: in float32 (this AVX2 host) the largest difference was 9.5e-8 relative
    (2026-12-07); 2e-3 is the torchrun test's bound for bf16 autocast (AMX hosts pick it), whose rounding Adam
    amplifies. A rank stepping on its half-batch gradient alone would be off by far more."""
    from tunery import device
    from tunery.config import TuningConfig
    from tunery.jobs.child import JOB_FILE
    from tunery.train.engine import train

    two = jobs["raw"]
    run = run_dir(home, two)
    manifest = json.loads((run / "run" / "manifest.json").read_text())
    assert two["state"] == "JOB_STATE_SUCCEEDED", two.get("error")
    assert manifest["processes"] == 2
    monkeypatch.setenv("TUNERY_PRECISION", manifest["precision"])  # the workers' measured choice, not a new one
    device.pick.cache_clear()
    try:
        train(TuningConfig(**json.loads((run / JOB_FILE).read_text())["config"], output=str(tmp_path / "one")))
    finally:
        device.pick.cache_clear()
    a, b = mt.read_metrics(run / "run"), mt.read_metrics(tmp_path / "one")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    assert [r[mt.TRAIN_PREDICTIONS] for r in a] == [r[mt.TRAIN_PREDICTIONS] for r in b]
    for x, y in zip(a, b):
        assert x[mt.TRAIN_LOSS] == pytest.approx(y[mt.TRAIN_LOSS], rel=2e-3)


# ---------------------------------------------------------------- failures

def test_cancel_stops_the_ray_job(jobs):
    """Cancelled through the SDK mid-run: the job ends CANCELLED and Ray reports its job STOPPED (stop_job)."""
    assert jobs["cancelled"]["state"] == "JOB_STATE_CANCELLED"
    assert jobs["ray_status_after_cancel"] == "STOPPED"


def test_killed_server_and_killed_ray_worker_lose_nothing(ray_head, tiny_model_dir, tmp_path):
    """SIGKILL `tunery serve` mid-job: the Ray job runs on. While no server is up, SIGKILL the Ray Train worker
    (rank 0) too: Ray Train (FailureConfig) starts a new worker, whose train() resumes from the last checkpoint in the
    run dir. The next server asks Ray about the attempt's submission id and re-attaches (no second submission), then
    records the success. The server is configured by config.toml (executor, ray_address, artifacts) and the token
    by RAY_AUTH_TOKEN. (One job for both kills: each Ray job costs tens of seconds on this 2-core machine.)"""
    shared = tmp_path / "shared"  # --artifacts: the storage every Ray node would mount
    (tmp_path / "config.toml").write_text(f'default_base_model = "{tiny_model_dir}"\nexecutor = "ray"\n'
                                          f'ray_address = "{ray_head.url}"\nartifacts = "{shared}"\n')
    (tmp_path / "data").mkdir()
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    write_jsonl(tmp_path / "data" / "train.jsonl", [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}."))
                                                    for i, c in enumerate(colours * 2)])
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TUNERY_HOME": str(tmp_path), "RAY_AUTH_TOKEN": ray_head.token}

    def serve() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port)], env=env,
                                stdout=open(tmp_path / "serve.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                httpx.get(url + REST, timeout=2)
                return proc
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.3)
        raise AssertionError("server did not start")

    steps = 40  # 16 examples / batch 8 x 20 epochs
    first = serve()
    try:
        job = create(url, tmp_path, epochs=20)
        wait(url, job["name"], lambda j: len(trained(tmp_path, j, shared)) >= 3)
        first.kill()
        first.wait()
    finally:
        first.kill()
    sid = f"tunery-{job_id(job)}-a1"
    assert ray_head.jobs()[sid] in ("PENDING", "RUNNING")  # the Ray job outlived the server
    victim = trained(tmp_path, job, shared)[-1]["pid"]  # the Ray Train worker process writing the steps
    os.kill(victim, signal.SIGKILL)
    second = serve()
    try:
        done = wait(url, job["name"], ended, timeout=180)
        logs = httpx.get(f"{url}/v1beta1/{job['name']}/logs", timeout=30).json()["logs"]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert done["state"] == "JOB_STATE_SUCCEEDED", (done.get("error"), logs[-3000:])
    assert sorted(s for s in ray_head.jobs() if s.startswith(f"tunery-{job_id(job)}-")) == [sid]  # re-attached
    records = trained(tmp_path, job, shared)
    after = [r for r in records if r["pid"] != victim]
    assert after and after[0]["resumed_from"] is not None and after[0]["resumed_from"] >= 2  # not from step 0
    assert after[-1]["step"] == steps
    assert [r["step"] for r in mt.read_metrics(run_dir(tmp_path, job, shared) / "run")] == list(range(1, steps + 1))
    assert not (tmp_path / "jobs").exists()  # everything went to --artifacts
