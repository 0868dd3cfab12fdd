"""The worker under failure: a killed tuning process is requeued and resumes; a killed server loses nothing (its
children die with it and the next server resumes them); cancel stops a child within seconds; quota queues jobs.
Resumes are checked on the append-only trained.jsonl (every step every process trained), not on metrics.jsonl, which
a resume rewrites: a job restarted from step 0 would pass a metrics check and fails these."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import contents, write_jsonl
from tests.test_api import LiveServer, _free_port
from tunery.train import metrics as mt

STEPS = 48  # 24 examples / batch 4 x 8 epochs


@pytest.fixture
def home(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path))
    monkeypatch.setenv("TUNERY_SAVE_INTERVAL_SECONDS", "0")  # the server's jobs save resume state every step
    (tmp_path / "config.toml").write_text(f'default_base_model = "{tiny_model_dir}"\n')
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    write_jsonl(tmp_path / "train.jsonl", [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}."))
                                           for i, c in enumerate(colours * 3)])
    return tmp_path


def create(url: str, home: Path, epochs: int = 8) -> dict:
    body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {
        "trainingDatasetUri": str(home / "train.jsonl"), "hyperParameters": {"epochCount": epochs, "batchSize": 4}}}
    r = httpx.post(f"{url}/v1beta1/projects/p/locations/l/tuningJobs", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def get(url: str, name: str) -> dict:
    return httpx.get(f"{url}/v1beta1/{name}", timeout=30).json()


def wait(url: str, name: str, predicate, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(url, name)
        if predicate(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"timed out; last: {json.dumps(job)[:500]}")


def steps_done(home: Path, job: dict) -> int:
    run = home / "jobs" / job["name"].rsplit("/", 1)[1] / "run"
    return len(mt.read_metrics(run)) if (run / "metrics.jsonl").exists() else 0


def steps_trained(home: Path, job: dict) -> int:
    """Steps in the append-only trained.jsonl: read once the process is dead, where it was killed."""
    run = home / "jobs" / job["name"].rsplit("/", 1)[1] / "run"
    return len((run / "trained.jsonl").read_text().splitlines())


def processes(run: Path) -> list[tuple[int | None, list[int]]]:
    """(resumed_from, steps trained) of each process that worked on a run, in order, from trained.jsonl."""
    out: list[tuple[int | None, list[int]]] = []
    last_pid = None
    for line in (run / "trained.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["pid"] != last_pid:
            out.append((r["resumed_from"], []))
            last_pid = r["pid"]
        out[-1][1].append(r["step"])
    return out


def assert_resumed_where_killed(run: Path, killed_at: int) -> None:
    """Two processes: the first trained 1..killed_at, the second resumed at killed_at or one before (state is saved
    every step; a kill between a step and its state redoes that one step) and trained the rest."""
    (first_from, first), (second_from, second) = processes(run)
    k = killed_at
    assert first_from is None and first == list(range(1, k + 1))
    assert second_from in (k - 1, k) and second == list(range(second_from + 1, STEPS + 1))
    assert [r["step"] for r in mt.read_metrics(run)] == list(range(1, STEPS + 1))


def test_killed_tuning_process_is_requeued_and_resumes(home):
    with LiveServer(home) as server:
        job = create(server.url, home)
        wait(server.url, job["name"], lambda j: steps_done(home, j) >= 14)
        [child] = server.services.worker.children.values()
        child.proc.send_signal(signal.SIGKILL)
        while child.proc.poll() is None:
            time.sleep(0.05)
        killed_at = steps_trained(home, job)
        done = wait(server.url, job["name"], lambda j: j["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"))
    assert done["state"] == "JOB_STATE_SUCCEEDED", done.get("error")
    run = home / "jobs" / job["name"].rsplit("/", 1)[1] / "run"
    assert_resumed_where_killed(run, killed_at)
    stored = server.services.store.get_job(job["name"].rsplit("/", 1)[1])
    assert (stored.attempts, stored.crashes) == (2, 1)


def test_server_killed_mid_job_loses_nothing(home):
    """A real `tunery serve` process: SIGKILL it mid-job (its tuning child must die too), start another on the same
    home, and both the running job and a queued one finish."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(home)]

    def start():
        proc = subprocess.Popen(cmd, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/v1beta1/projects/p/locations/l/tuningJobs", timeout=1)
                return proc
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("server did not start")

    server = start()
    try:
        running, queued = create(url, home), create(url, home, epochs=1)
        wait(url, running["name"], lambda j: steps_done(home, j) >= 10)
        assert get(url, queued["name"])["tuningJobState"] == "TUNING_JOB_STATE_WAITING_FOR_QUOTA"
        children = psutil.Process(server.pid).children(recursive=True)
        assert children, "the job should run in a child process"
        server.send_signal(signal.SIGKILL)
        server.wait()
        psutil.wait_procs(children, timeout=10)
        killed_at = steps_trained(home, running)
        psutil.wait_procs(children, timeout=10)
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
        server = start()
        for job in (running, queued):
            done = wait(url, job["name"], lambda j: j["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"))
            assert done["state"] == "JOB_STATE_SUCCEEDED", done.get("error")
        assert_resumed_where_killed(home / "jobs" / running["name"].rsplit("/", 1)[1] / "run", killed_at)
        assert processes(home / "jobs" / queued["name"].rsplit("/", 1)[1] / "run") == [(None, list(range(1, 7)))]
    finally:
        server.kill()
        server.wait()


def test_cancel_stops_the_child_within_seconds(home):
    with LiveServer(home) as server:
        job = create(server.url, home, epochs=50)
        wait(server.url, job["name"], lambda j: steps_done(home, j) >= 3)
        [child] = server.services.worker.children.values()
        t = time.monotonic()
        r = httpx.post(f"{server.url}/v1beta1/{job['name']}:cancel")
        assert r.status_code == 200 and r.json() == {}
        done = wait(server.url, job["name"], lambda j: j["state"] == "JOB_STATE_CANCELLED", timeout=30)
        assert time.monotonic() - t < 10 and child.proc.poll() is not None
        assert done["error"] == {"code": 1, "message": "CANCELED"} and "tunedModel" not in done
        again = httpx.post(f"{server.url}/v1beta1/{job['name']}:cancel")
        assert again.status_code == 400 and again.json()["error"]["status"] == "FAILED_PRECONDITION"


def test_cancelling_a_queued_job_never_runs_it(home):
    with LiveServer(home, start_worker=False) as server:
        job = create(server.url, home)
        assert httpx.post(f"{server.url}/v1beta1/{job['name']}:cancel").status_code == 200
        assert get(server.url, job["name"])["state"] == "JOB_STATE_CANCELLED"
        assert not (home / "jobs" / job["name"].rsplit("/", 1)[1]).exists()
