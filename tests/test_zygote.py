"""Job processes forked by the zygote (tunery/jobs/zygote.py) behave as processes started anew: the same exit
status and output for the same job directory, signals by PID, death with their parent; a zygote that dies takes its
jobs with it (each reported killed, as a crash the worker requeues) and the next job gets a new one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import psutil

from tunery.jobs.executors.local import LocalExecutor


def _log(run_dir: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the log pump copies the output as it comes; the last of it just after exit
        text = (run_dir / "log.txt").read_text() if (run_dir / "log.txt").exists() else ""
        if "Traceback" in text or "tunery child" in text:
            return text
        time.sleep(0.05)
    return (run_dir / "log.txt").read_text()


def test_a_forked_job_process_ends_and_reports_as_one_started_anew(tmp_path):
    """A job directory without its job.json: the same exit code and the same error, forked or started anew."""
    seen = {}
    for forked in (True, False):
        run_dir = tmp_path / f"forked-{forked}"
        run_dir.mkdir()
        executor = LocalExecutor(zygote=forked)
        handle = executor.start(SimpleNamespace(id="job"), run_dir)
        if forked:
            zygote = executor._zygote.proc.pid
            assert psutil.Process(handle.ref.pid).ppid() == zygote and psutil.Process(zygote).ppid() == os.getpid()
        code = handle.ref.wait(timeout=120)
        last = [ln for ln in _log(run_dir).splitlines() if ln.strip()][-1]
        seen[forked] = (code, last.replace(str(run_dir), "RUN"))
        if forked:
            executor._zygote.close()
    assert seen[True] == seen[False] and seen[True][0] != 0, seen
    assert "FileNotFoundError" in seen[True][1] or "job.json" in seen[True][1], seen


def test_a_killed_zygote_takes_its_jobs_with_it_and_the_next_job_gets_a_new_one(tmp_path, tiny_model_dir):
    """Each job reads its dataset from a FIFO nobody writes, so it waits there until killed."""
    executor = LocalExecutor(zygote=True)
    handles = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        os.mkfifo(run_dir / "train.jsonl")
        (run_dir / "job.json").write_text(json.dumps({"config": {"train": str(run_dir / "train.jsonl"),
                                                                 "base_model": str(tiny_model_dir)}}))
        handles.append(executor.start(SimpleNamespace(id=name), run_dir))
    first = executor._zygote
    time.sleep(1.0)
    assert [h.ref.poll() for h in handles] == [None, None]  # both wait on their FIFO
    os.kill(first.proc.pid, signal.SIGKILL)
    assert [h.ref.wait(timeout=30) for h in handles] == [-signal.SIGKILL] * 2
    assert not any(psutil.pid_exists(h.ref.pid) and psutil.Process(h.ref.pid).status() != psutil.STATUS_ZOMBIE
                   for h in handles)
    again = tmp_path / "c"
    again.mkdir()
    handle = executor.start(SimpleNamespace(id="c"), again)  # no job.json: ends at once
    assert executor._zygote is not first and handle.ref.wait(timeout=120) != 0
    executor._zygote.close()


def test_executors_of_one_process_share_a_zygote_that_outlives_the_thread_that_started_it(tmp_path, monkeypatch):
    """A server's worker thread asks for the zygote; when that server stops (its thread ends) the zygote stays for
    the next server of the process (with another home: tunery's settings are read when a job runs, not at import):
    PR_SET_PDEATHSIG would have killed one started from the ending thread."""
    import threading

    first: dict = {}

    def server_thread() -> None:
        executor = LocalExecutor(zygote=True)
        run_dir = tmp_path / "a"
        run_dir.mkdir()
        handle = executor.start(SimpleNamespace(id="a"), run_dir)  # no job.json: ends at once
        first["zygote"], first["code"] = executor._zygote, handle.ref.wait(timeout=120)

    thread = threading.Thread(target=server_thread)
    thread.start()
    thread.join()
    zygote = first["zygote"]
    time.sleep(0.5)  # a death signal would have arrived by now
    assert zygote.alive() and first["code"] != 0
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "another-home"))
    executor = LocalExecutor(zygote=True)
    run_dir = tmp_path / "b"
    run_dir.mkdir()
    handle = executor.start(SimpleNamespace(id="b"), run_dir)
    assert executor._zygote is zygote and psutil.Process(handle.ref.pid).ppid() == zygote.proc.pid
    assert handle.ref.wait(timeout=120) == first["code"]


def test_a_relative_job_directory_means_the_same_forked_or_started_anew(tmp_path, monkeypatch):
    """The forked process works in the server's current directory, as a process the server starts would, not in
    the one the zygote started in."""
    seen = {}
    for forked in (True, False):
        here = tmp_path / f"forked-{forked}"
        (here / "job").mkdir(parents=True)
        (here / "job" / "job.json").write_text(json.dumps({"config": {"train": "nowhere.jsonl"}}))
        executor = LocalExecutor(zygote=forked)
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / "elsewhere")
        executor.start(SimpleNamespace(id="first"), tmp_path).ref.wait(timeout=120)  # the zygote starts here
        monkeypatch.chdir(here)
        handle = executor.start(SimpleNamespace(id="job"), Path("job"))
        code = handle.ref.wait(timeout=120)
        result = here / "job" / "result.json"  # written only by a process that found job/job.json
        seen[forked] = (code, json.loads(result.read_text())["error"] if result.exists() else _log(here / "job"))
    assert seen[True] == seen[False] and seen[True][0] != 0, seen
    assert seen[True][1]["message"].startswith("nowhere.jsonl: file not found"), seen
