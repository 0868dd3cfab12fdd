"""Jobs under faults, with real processes and the real SQLite store: single-writer locks on the home, the job and the
run directory; no job left RUNNING without a process; server restarts are not crashes; cancel never races the worker."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import contents, job_spec, write_jsonl
from tests.test_api import _free_port
from tunery import locks
from tunery.jobs import states
from tunery.jobs.child import LOCKED_EXIT
from tunery.jobs.store import Store
from tunery.jobs.worker import MAX_ATTEMPTS, Worker, _Child

HOLD = "import sys, time; from pathlib import Path; from tunery import locks; locks.acquire(Path(sys.argv[1]), 'x'); " \
       "print('held', flush=True); time.sleep(600)"


class Holder:
    """A separate process holding a lock file, as an old tuning process would; stopped by its PID."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def holder():
    made: list[Holder] = []
    yield lambda path: made.append(Holder(path)) or made[-1]
    for h in made:
        if h.proc.poll() is None:
            h.stop()


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "tunery.db")


def _job(store: Store, tmp_path: Path, state: str = states.PENDING):
    job = store.create_job("p", "l", job_spec(), tmp_path / "jobs")
    if state != states.PENDING:
        job = store.transition(job.id, states.RUNNING, started=True, attempt=True)
    return job


def _exiting(code_or_signal: str) -> subprocess.Popen:
    """A real process that ends the given way: 'exit 3' or 'SIGKILL'."""
    if code_or_signal == "SIGKILL":
        return subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code_or_signal.split()[1]})"])


# ---------------------------------------------------------------- locks

def test_a_lock_names_its_holder_and_dies_with_it(tmp_path, holder):
    path = tmp_path / "lock"
    h = holder(path)
    assert locks.holder(path) == h.pid
    with pytest.raises(locks.Locked) as info:
        locks.acquire(path, "the thing")
    assert info.value.pid == h.pid
    assert info.value.message == f"the thing is in use by process {h.pid} (lock {path}); two writers would corrupt it"
    assert info.value.hint == f"wait for it to end, or stop it (kill {h.pid})"
    h.stop()  # SIGKILL: the kernel releases the lock, the stale file with the dead PID blocks no one
    assert locks.holder(path) is None
    fd = locks.acquire(path, "the thing")
    assert path.read_text() == f"{os.getpid()}\n"
    locks.release(fd)


def test_a_second_server_on_the_same_home_refuses_and_names_the_first(tmp_path):
    port = _free_port()
    first = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        lock = tmp_path / "serve.lock"  # read, not probed: a probe could make the first server's acquire fail
        while (not lock.is_file() or lock.read_text().strip() != str(first.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "tunery.cli", "serve", "--port", str(_free_port()), "--home",
                                 str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"another tunery server (pid {first.pid}) is running on the home {tmp_path}" in " ".join(second.stderr.split())
        assert f"stop it (kill {first.pid}) or pass another --home" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    third = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the killed server's lock went with it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/v1/projects/p/locations/l/tuningJobs", timeout=1).status_code == 200
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("the third server did not start")
    finally:
        os.kill(third.pid, signal.SIGKILL)
        third.wait()


def test_a_second_writer_of_a_run_directory_gets_a_clear_error(tmp_path, holder, tiny_model_dir):
    data = write_jsonl(tmp_path / "t.jsonl", [contents(("user", f"q{i}"), ("model", f"a{i}")) for i in range(8)])
    out = tmp_path / "run"
    h = holder(out / "lock")
    proc = subprocess.run([sys.executable, "-m", "tunery.cli", "tune", "--local", "--train", str(data), "--base-model",
                           str(tiny_model_dir), "--epochs", "1", "--output", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    text = " ".join(proc.stderr.split())
    assert f"run directory {out} is in use by process {h.pid}" in text and f"kill {h.pid}" in text
    assert sorted(p.name for p in out.iterdir()) == ["lock"]  # it wrote nothing


def test_a_second_process_on_a_job_exits_at_once_and_touches_nothing(tmp_path, holder):
    job_dir = tmp_path / "job"
    h = holder(job_dir / "lock")
    proc = subprocess.run([sys.executable, "-m", "tunery.jobs.child", str(job_dir)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == LOCKED_EXIT
    assert f"job directory {job_dir} is in use by process {h.pid}" in proc.stderr
    assert sorted(p.name for p in job_dir.iterdir()) == ["lock"]


def test_a_requeued_job_waits_while_an_old_process_holds_it(store, tmp_path, holder):
    """recover() requeues what a killed server left RUNNING; its old child may not be dead yet. The worker must
    not start a second writer on that job until the old one is gone."""
    job = _job(store, tmp_path, states.RUNNING)
    h = holder(Path(job.run_dir) / "lock")
    worker = Worker(store, python=sys.executable)
    worker.recover()
    assert store.get_job(job.id).state == states.PENDING
    worker.tick()
    worker.tick()
    assert worker.children == {} and store.get_job(job.id).state == states.PENDING
    assert store.get_job(job.id).attempts == 1  # nothing was launched
    h.stop()
    worker.tick()
    assert set(worker.children) == {job.id} and store.get_job(job.id).state == states.RUNNING
    worker.stop()


# ---------------------------------------------------------------- no RUNNING job without a process

def test_a_process_that_cannot_start_fails_the_job_with_the_reason(store, tmp_path):
    job = _job(store, tmp_path)
    worker = Worker(store, python=str(tmp_path / "no-such-python"))
    worker.tick()
    done = store.get_job(job.id)
    assert done.state == states.FAILED and worker.children == {}
    assert done.error["code"] == 13
    assert done.error["message"].startswith("could not start the tuning process: [Errno 2] No such file or directory")


def test_an_exit_is_forgotten_only_once_recorded(store, tmp_path):
    """The store is busy (another writer holds it) when the child's exit is reaped: the worker must keep the child and
    record the exit on a later tick, never leave the job RUNNING with no process."""
    job = _job(store, tmp_path, states.RUNNING)
    slow = Store(store.path, busy_timeout=0.2)
    worker = Worker(slow)
    proc = _exiting("exit 3")
    proc.wait()
    worker.children[job.id] = _Child(proc, Path(job.run_dir))
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        worker._reap()
    assert set(worker.children) == {job.id} and slow.get_job(job.id).state == states.RUNNING
    blocker.execute("ROLLBACK")
    worker._reap()
    assert worker.children == {} and slow.get_job(job.id).state == states.PENDING  # requeued after a crash
    assert slow.get_job(job.id).crashes == 1


# ---------------------------------------------------------------- restarts are not crashes

def test_server_restarts_do_not_use_up_attempts_and_the_failure_says_what_happened(store, tmp_path):
    job = _job(store, tmp_path)
    for _ in range(MAX_ATTEMPTS + 2):  # five servers killed while the job ran: each next one requeues it
        store.transition(job.id, states.RUNNING, started=True, attempt=True)
        Worker(store).recover()
    assert store.get_job(job.id).state == states.PENDING and store.get_job(job.id).crashes == 0
    worker = Worker(store)
    for how in ("SIGKILL", "exit 1", "SIGKILL"):
        store.transition(job.id, states.RUNNING, started=True, attempt=True)
        proc = _exiting(how)
        proc.wait()
        worker.children[job.id] = _Child(proc, Path(job.run_dir))
        worker._reap()  # the step of a tick that records exits
    done = store.get_job(job.id)
    assert done.state == states.FAILED and done.crashes == MAX_ATTEMPTS and done.attempts == 8
    assert done.error == {"code": 13, "message": "the tuning process crashed 3 times (the last one was killed by SIGKILL), "
                                                 f"each time resuming from its last saved state; see {job.run_dir}/log.txt"}


# ---------------------------------------------------------------- cancel against the worker

def test_cancel_never_races_the_workers_claim(store, tmp_path):
    """The cancel route read PENDING, the worker claimed the job, and the route's PENDING -> CANCELLED failed (400).
    request_cancel decides in one transaction, whichever happened first."""
    outcomes = []
    for _ in range(40):
        job = _job(store, tmp_path)
        go = threading.Barrier(2)
        errors = []

        def claim():
            go.wait()
            try:
                store.transition(job.id, states.RUNNING, started=True, attempt=True)
            except states.IllegalTransition:
                pass

        def cancel():
            go.wait()
            try:
                outcomes.append(store.request_cancel(job.id, {"code": 1, "message": "CANCELED"}))
            except Exception as exc:  # noqa: BLE001 - any exception is the bug under test
                errors.append(exc)

        threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.get_job(job.id).state in (states.CANCELLED, states.CANCELLING)
    assert set(outcomes) <= {states.PENDING, states.RUNNING}
    ended = store.transition(_job(store, tmp_path).id, states.CANCELLED).id
    assert store.request_cancel(ended, {}) == states.CANCELLED  # the route answers 400 for an ended job
