"""The worker loop over the Ray executor, with Ray's Jobs API client replaced by a recording fake (the real cluster
is in tests/test_ray.py): submission ids per attempt, a Ray job that dies is a crash and is resubmitted as the
next attempt, a locked driver is not a crash, cancel is stop_job, restarts re-attach or requeue, logs of every
attempt. Milliseconds each: no Ray processes."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunery.jobs import states
from tunery.jobs.executors import ExecutorError
from tests.helpers import job_spec
from tunery.jobs.executors.ray import RayExecutor, check_address
from tunery.jobs.store import Store
from tunery.jobs.worker import Worker

pytest.importorskip("ray.job_submission")


class FakeJobs:
    """What tunery calls of ray.job_submission.JobSubmissionClient, answering from one 'cluster' shared by all
    clients (a restarted server gets a new client of the same cluster)."""

    status: dict[str, tuple[str, str]] = {}  # submission id -> (status, message)
    submitted: list[dict] = []
    stopped: list[str] = []
    checks: list[str] = []  # entrypoints of the interpreter checks (a server start's)
    refuse_submits = 0  # the next this many submits fail as an unreachable dashboard does

    def __init__(self, address: str, headers: dict | None = None) -> None:
        self.headers = headers
        FakeJobs.last = self

    def list_jobs(self) -> list:
        return [SimpleNamespace(submission_id=s) for s in self.status]

    def submit_job(self, **kw) -> str:
        if "import tunery, ray" in kw["entrypoint"]:  # the interpreter check: only a real one imports them
            FakeJobs.checks.append(kw["entrypoint"])
            ok = kw["entrypoint"].startswith(sys.executable + " ")
            self.status[kw["submission_id"]] = ("SUCCEEDED", "") if ok else ("FAILED", "exit code 127")
            return kw["submission_id"]
        if FakeJobs.refuse_submits:
            FakeJobs.refuse_submits -= 1
            raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:8265.")
        if kw["submission_id"] in self.status:
            raise RuntimeError(f"Request failed with status code 400: Job with submission_id {kw['submission_id']} "
                               "already exists. Please use a different submission_id.")
        self.submitted.append(kw)
        self.status[kw["submission_id"]] = ("RUNNING", "")
        return kw["submission_id"]

    def get_job_info(self, sid: str) -> SimpleNamespace:
        if sid not in self.status:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        status, message = self.status[sid]
        return SimpleNamespace(status=status, message=message)

    def stop_job(self, sid: str) -> bool:
        self.stopped.append(sid)
        self.status[sid] = ("STOPPED", "Job was intentionally stopped.")
        return True

    def get_job_logs(self, sid: str) -> str:
        if sid not in self.status:
            raise RuntimeError("404")
        if sid.startswith("tunery-check-python-") and self.status[sid][0] == "FAILED":
            return "/bin/sh: 1: /nonexistent/python: not found\n"
        return f"output of {sid}\n"


@pytest.fixture
def fake(monkeypatch):
    import ray.job_submission

    from tunery.jobs.executors import ray as ray_executor

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeJobs)
    FakeJobs.status, FakeJobs.submitted, FakeJobs.stopped, FakeJobs.checks = {}, [], [], []  # a fresh cluster per test
    FakeJobs.refuse_submits = 0
    monkeypatch.setattr(ray_executor, "_PYTHON_OK", set())
    monkeypatch.setenv("TUNERY_SAVE_INTERVAL_SECONDS", "7")
    return FakeJobs


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "tunery.db")


def _worker(store: Store) -> Worker:
    return Worker(store, executor=RayExecutor("http://127.0.0.1:8265", token="t0ken"))


def _job(store: Store, tmp_path: Path):
    return store.create_job("p", "l", job_spec(workers=2), tmp_path / "jobs")


def test_a_dead_ray_job_is_a_crash_resubmitted_as_the_next_attempt(fake, store, tmp_path):
    worker = _worker(store)
    assert FakeJobs.last.headers == {"Authorization": "Bearer t0ken"}
    job = _job(store, tmp_path)
    worker.tick()
    [first] = FakeJobs.last.submitted
    assert first["submission_id"] == f"tunery-{job.id}-a1"
    assert first["entrypoint"] == f"{sys.executable} -m tunery.jobs.ray_train {job.run_dir}"  # the server's python
    assert FakeJobs.checks == [f"{sys.executable} -c 'import tunery, ray'"]  # checked once, when the server started
    assert first["runtime_env"]["env_vars"]["TUNERY_SAVE_INTERVAL_SECONDS"] == "7"  # forwarded to the Ray job
    assert '"workers": 2' in (Path(job.run_dir) / "job.json").read_text()
    FakeJobs.last.status[f"tunery-{job.id}-a1"] = ("FAILED", "Job entrypoint command failed with exit code 1.")
    worker.tick()  # reaped as a crash, requeued, and started again as attempt 2
    assert [s["submission_id"] for s in FakeJobs.last.submitted] == [f"tunery-{job.id}-a1", f"tunery-{job.id}-a2"]
    assert store.get_job(job.id).crashes == 1 and store.get_job(job.id).state == states.RUNNING
    FakeJobs.last.status[f"tunery-{job.id}-a2"] = ("FAILED", "Job entrypoint command failed with exit code 75.")
    worker._reap()  # the driver found the job directory held: requeued, not a crash
    assert store.get_job(job.id).crashes == 1 and store.get_job(job.id).state == states.PENDING
    for attempt in (3, 4):
        worker._start_queued()
        FakeJobs.last.status[f"tunery-{job.id}-a{attempt}"] = ("STOPPED", "stopped by someone")
        worker._reap()
    done = store.get_job(job.id)
    assert done.state == states.FAILED and done.crashes == 3
    assert done.error["message"].startswith(f"the tuning process crashed 3 times (the last one was stopped on Ray (job "
                                            f"tunery-{job.id}-a4)), each time resuming from its last saved state; "
                                            f"see `tunery jobs logs {job.id}`")
    logs = worker.logs(done)
    assert all(f"Ray job tunery-{job.id}-a{n} (attempt {n})" in logs for n in (1, 2, 3, 4))


def test_cancel_is_stop_job(fake, store, tmp_path):
    worker = _worker(store)
    job = _job(store, tmp_path)
    worker.tick()
    store.request_cancel(job.id, {"code": 1, "message": "CANCELED"})
    worker.tick()
    assert FakeJobs.last.stopped == [f"tunery-{job.id}-a1"]
    worker.tick()
    assert store.get_job(job.id).state == states.CANCELLED


def test_a_restarted_server_reattaches_or_requeues(fake, store, tmp_path):
    worker = _worker(store)
    running, lost = _job(store, tmp_path), _job(store, tmp_path)
    worker.tick()  # quota 1: `running` starts
    worker.stop()  # Ray jobs outlive the server: nothing is stopped
    assert FakeJobs.last.stopped == [] and store.get_job(running.id).state == states.RUNNING
    store.transition(lost.id, states.RUNNING, started=True, attempt=True)  # claimed; the server died before submit
    again = _worker(store)
    again.recover()
    assert set(again.children) == {running.id}  # re-attached, no second submission
    assert store.get_job(lost.id).state == states.PENDING and store.get_job(lost.id).crashes == 0
    assert [s["submission_id"] for s in FakeJobs.submitted] == [f"tunery-{running.id}-a1"]  # only the first
    FakeJobs.last.status[f"tunery-{running.id}-a1"] = ("FAILED", "Job entrypoint command failed with exit code 1.")
    again._reap()
    assert store.get_job(running.id).crashes == 1


def test_addresses_and_tokens_are_checked_before_any_request(fake):
    with pytest.raises(ExecutorError, match="without a token.*CVE-2023-48022"):
        check_address("http://192.168.1.20:8265", None)
    with pytest.raises(ExecutorError, match="expected the Ray dashboard's URL"):
        check_address("ray://127.0.0.1:10001", "t")
    with pytest.raises(ExecutorError, match="refusing to send the Ray token to 192.168.1.20 over plain http"):
        check_address("http://192.168.1.20:8265", "t")
    check_address("https://192.168.1.20:8265", "t")
    check_address("http://localhost:8265", None)
    check_address("http://127.0.0.1:8265", "t")  # loopback: the token never leaves the machine
    assert "t0ken" not in repr(RayExecutor("http://127.0.0.1:8265", token="t0ken"))


def test_a_cluster_whose_python_cannot_import_tunery_is_refused_at_start(fake):
    with pytest.raises(ExecutorError) as info:
        RayExecutor("http://127.0.0.1:8265", token="t0ken", python="/nonexistent/python")
    assert str(info.value) == ("the Ray cluster's `/nonexistent/python` cannot import tunery and ray (/bin/sh: 1: "
                               "/nonexistent/python: not found); pass --ray-python with the interpreter of an "
                               "environment that has both (config.toml: ray_python), e.g. the venv's bin/python")


def test_an_unreachable_dashboard_at_submit_requeues_with_backoff_and_never_runs_two_attempts(fake, store, tmp_path):
    worker = _worker(store)
    job = _job(store, tmp_path)
    FakeJobs.refuse_submits = 1
    worker.tick()  # the submit fails: back in the queue, not failed, not a crash
    found = store.get_job(job.id)
    assert (found.state, found.crashes, FakeJobs.submitted) == (states.PENDING, 0, [])
    worker.tick()  # too soon: it waits out its backoff
    assert store.get_job(job.id).state == states.PENDING and FakeJobs.submitted == []
    worker._retry_at[job.id] = 0.0  # the backoff has passed
    worker.tick()
    assert [s["submission_id"] for s in FakeJobs.submitted] == [f"tunery-{job.id}-a2"]
    assert store.get_job(job.id).state == states.RUNNING
    # a submit that looked failed but reached Ray: the next start watches that attempt instead of adding one
    other = _job(store, tmp_path)
    FakeJobs.status[f"tunery-{other.id}-a1"] = ("RUNNING", "")
    store.transition(other.id, states.RUNNING, started=True, attempt=True)
    store.transition(other.id, states.PENDING)
    worker.max_concurrent = 2
    worker.tick()
    assert worker.children[other.id].ref == f"tunery-{other.id}-a1"
    assert [s["submission_id"] for s in FakeJobs.submitted] == [f"tunery-{job.id}-a2"]  # nothing new submitted


def test_a_forced_cancel_is_sent_once_and_a_bad_result_file_fails_only_its_job(fake, store, tmp_path, monkeypatch):
    from tunery.jobs import worker as worker_module

    monkeypatch.setattr(worker_module, "CANCEL_GRACE_SECONDS", 0.0)
    worker = _worker(store)
    worker.max_concurrent = 3
    cancelled, broken, fine = _job(store, tmp_path), _job(store, tmp_path), _job(store, tmp_path)
    worker.tick()
    FakeJobs.status[f"tunery-{cancelled.id}-a1"] = ("RUNNING", "")  # a Ray job that ignores being stopped
    monkeypatch.setattr(FakeJobs, "stop_job", lambda self, sid: FakeJobs.stopped.append(sid) or True)
    store.request_cancel(cancelled.id, {"code": 1, "message": "CANCELED"})
    Path(broken.run_dir, "result.json").write_text('{"status": "succeeded"}')  # no adapter, no steps
    FakeJobs.status[f"tunery-{broken.id}-a1"] = ("SUCCEEDED", "")
    Path(fine.run_dir, "result.json").write_text('{"status": "failed", "error": {"code": 3, "message": "bad data"}}')
    FakeJobs.status[f"tunery-{fine.id}-a1"] = ("FAILED", "exit code 1")
    for _ in range(5):
        worker.tick()
    assert FakeJobs.stopped == [f"tunery-{cancelled.id}-a1"] * 2  # graceful, then forced once: not every tick
    assert store.get_job(broken.id).state == states.FAILED
    assert store.get_job(broken.id).error["message"].startswith("could not read how the tuning process ended: KeyError")
    assert store.get_job(fine.id).state == states.FAILED and store.get_job(fine.id).error["message"] == "bad data"


def test_a_chatty_child_s_log_is_rotated_and_bounded(tmp_path):
    """A child that writes 3 MB through a 1 MB log: log.txt and log.1.txt stay under the bound, the newest output
    is kept, and the executor's logs() gives the older file first."""
    import subprocess

    from tunery.jobs.executors.local import LocalExecutor, pump_log

    line = b"x" * 1023 + b"\n"
    script = f"import sys\nfor i in range(3072):\n    sys.stdout.write(f'{{i:06d}}' + 'x' * 1016 + '\\n')\n"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    pump_log(proc.stdout, tmp_path / "log.txt", max_bytes=1 << 20).join(timeout=60)
    assert proc.wait(timeout=60) == 0
    sizes = [(tmp_path / name).stat().st_size for name in ("log.txt", "log.1.txt")]
    assert all(0 < size <= 1 << 20 for size in sizes) and not (tmp_path / "log.2.txt").exists()
    text = (tmp_path / "log.txt").read_text()
    assert text.endswith("003071" + "x" * 1016 + "\n") and len(line) == 1024
    job = SimpleNamespace(run_dir=str(tmp_path))
    both = LocalExecutor().logs(job)
    assert both.index((tmp_path / "log.1.txt").read_text()[:20]) < both.index(text[:20])
