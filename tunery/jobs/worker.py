"""The worker: a thread in the server that runs queued jobs in child processes, at most `max_concurrent` at once.

Each tick it (1) reaps finished children and records their outcome, (2) stops children of cancelled jobs,
(3) starts queued jobs while there is quota. A child that dies without a result is requeued (up to MAX_ATTEMPTS)
and resumes from its last complete checkpoint. On start, jobs a previous server left RUNNING are requeued.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery.jobs import states
from tunery.jobs.child import JOB_FILE, LOG_FILE, PROGRESS_FILE, RESULT_FILE
from tunery.jobs.store import Job, Store
from tunery.train.checkpoints import write_json

log = logging.getLogger("tunery")
MAX_ATTEMPTS = 3  # a job whose process dies this many times fails
CANCEL_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL after this long
CANCELLED_ERROR = {"code": 1, "message": "CANCELED"}


@dataclass
class _Child:
    proc: subprocess.Popen
    run_dir: Path
    term_sent: float | None = None


@dataclass
class Worker:
    store: Store
    max_concurrent: int = 1
    poll_seconds: float = 0.25
    children: dict[str, _Child] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="tunery-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and the children. Their jobs stay RUNNING in the store and resume on the next start."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for child in self.children.values():
            child.proc.terminate()
        for child in self.children.values():
            try:
                child.proc.wait(timeout=CANCEL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                child.proc.kill()
        self.children.clear()

    def recover(self) -> None:
        """Requeue what a previous server left running; finish cancellations it left half done."""
        for job in self.store.jobs_in(states.RUNNING):
            self.store.transition(job.id, states.PENDING, detail=states.WAITING_FOR_QUOTA)
            log.info("job %s was running when the server stopped: requeued (it resumes from its last checkpoint)", job.id)
        for job in self.store.jobs_in(states.CANCELLING):
            self.store.transition(job.id, states.CANCELLED, error=CANCELLED_ERROR, ended=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the worker must outlive any single bad job
                log.exception("worker tick failed")
            self._stop.wait(self.poll_seconds)

    def tick(self) -> None:
        self._reap()
        self._cancel()
        self._start_queued()

    # ---------------------------------------------------------------- steps of a tick

    def _reap(self) -> None:
        for job_id, child in list(self.children.items()):
            code = child.proc.poll()
            job = self.store.get_job(job_id)
            if code is None:
                self._progress(job, child.run_dir)
                continue
            del self.children[job_id]
            result = _read(child.run_dir / RESULT_FILE)
            if job.state == states.CANCELLING:
                self.store.transition(job_id, states.CANCELLED, error=CANCELLED_ERROR, ended=True)
            elif result and result["status"] == "succeeded":
                meta = {"completedEpochCount": result["epochs"], "completedStepCount": result["steps"]}
                if result.get("stats"):
                    self.store.update_progress(job_id, stats=result["stats"])
                self.store.finish_job(job, result["base_model"], result["adapter"], result["checkpoints"], meta)
            elif result:
                self.store.transition(job_id, states.FAILED, error=result["error"], ended=True)
            elif job.attempts < MAX_ATTEMPTS:
                log.warning("job %s: tuning process exited with code %s; requeued (attempt %d of %d)",
                            job_id, code, job.attempts + 1, MAX_ATTEMPTS)
                self.store.transition(job_id, states.PENDING, detail=states.WAITING_FOR_QUOTA)
            else:
                self.store.transition(job_id, states.FAILED, ended=True, error={
                    "code": 13, "message": f"the tuning process exited with code {code} {job.attempts} times; "
                                           f"see {child.run_dir / LOG_FILE}"})

    def _progress(self, job: Job, run_dir: Path) -> None:
        p = _read(run_dir / PROGRESS_FILE)
        if p:
            meta = {k: p[k] for k in ("completedStepCount", "completedEpochCount") if k in p}
            self.store.update_progress(job.id, detail=p.get("detail"), stats=p.get("stats"), metadata=meta or None)

    def _cancel(self) -> None:
        for job in self.store.jobs_in(states.CANCELLING):
            child = self.children.get(job.id)
            if child is None:
                self.store.transition(job.id, states.CANCELLED, error=CANCELLED_ERROR, ended=True)
            elif child.term_sent is None:
                child.proc.send_signal(signal.SIGTERM)
                child.term_sent = time.monotonic()
            elif time.monotonic() - child.term_sent > CANCEL_GRACE_SECONDS:
                child.proc.kill()

    def _start_queued(self) -> None:
        for job in self.store.jobs_in(states.PENDING):
            if len(self.children) >= self.max_concurrent:
                return
            self._launch(job)

    def _launch(self, job: Job) -> None:
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
        write_json(run_dir / JOB_FILE, {"job": job.name, "config": job.request["_config"],
                                        "evaluation": job.request.get("_evaluation")})
        job = self.store.transition(job.id, states.RUNNING, detail=states.PROCESSING_DATASET, started=True, attempt=True)
        log_file = open(run_dir / LOG_FILE, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tunery.jobs.child", str(run_dir)], stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log_file.close()
        self.children[job.id] = _Child(proc, run_dir)
        log.info("job %s started (pid %d, attempt %d)", job.id, proc.pid, job.attempts)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
