"""The worker loop over the Ray executor, with Ray's Jobs API client replaced by a recording fake (the real cluster
is in tests/test_ray.py): submission ids per attempt, a Ray job that dies is a crash and is resubmitted as the
next attempt, a locked driver is not a crash, cancel is stop_job, restarts re-attach or requeue, logs of every
attempt. Milliseconds each: no Ray processes."""

from __future__ import annotations

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

    def __init__(self, address: str, headers: dict | None = None) -> None:
        self.headers = headers
        FakeJobs.last = self

    def list_jobs(self) -> list:
        return [SimpleNamespace(submission_id=s) for s in self.status]

    def submit_job(self, **kw) -> str:
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
        return f"output of {sid}\n"


@pytest.fixture
def fake(monkeypatch):
    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeJobs)
    FakeJobs.status, FakeJobs.submitted, FakeJobs.stopped = {}, [], []  # a fresh cluster per test
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
    assert first["entrypoint"] == f"python -m tunery.jobs.ray_train {job.run_dir}"
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
    check_address("http://192.168.1.20:8265", "t")
    check_address("http://localhost:8265", None)
