"""The worker: a thread in the server that runs queued jobs through an executor, at most `max_concurrent` at once.

Each tick it (1) reaps finished attempts and records their outcome, (2) stops attempts of cancelled jobs,
(3) starts queued jobs while there is quota. An attempt that ends without a result is requeued (a job fails after
MAX_ATTEMPTS such crashes) and resumes from its last complete state. On start, jobs a previous server left RUNNING
are re-attached when the executor still runs them (Ray), else requeued; that is not a crash. A job whose directory
is still held by a process (an old child of a killed server, not yet dead) waits in the queue until that process
is gone: one writer per job, by the job's lock file. Which executor runs the attempts (local child processes or
Ray jobs, tunery.jobs.executors) is not this loop's business.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery import locks, threads
from tunery.jobs import states
from tunery.jobs.child import JOB_FILE, LOCKED_EXIT, LOG_FILE, PROGRESS_FILE, RESULT_FILE, STOPPED_EXIT
from tunery.jobs.executors import Executor, ExecutorError, Exit, Handle
from tunery.jobs.executors.local import LocalExecutor
from tunery.jobs.store import Job, Store
from tunery.train.checkpoints import write_json

log = logging.getLogger("tunery")
MAX_ATTEMPTS = 3  # a job whose tuning process crashes this many times fails (server restarts do not count)
MAX_CRASHES_ENV = "TUNERY_MAX_JOB_CRASHES"  # overrides MAX_ATTEMPTS (the chaos test kills each job many times)
CANCEL_GRACE_SECONDS = 5.0  # graceful stop, then a forced one after this long
PAUSE_GRACE_SECONDS = 60.0  # a pause waits this long for the step under way to end and the state to be saved
CANCELLED_ERROR = {"code": 1, "message": "CANCELED"}
MAX_RETRY_SECONDS = 60.0  # the longest wait before trying again to start a job whose executor was unreachable


def _Child(proc, run_dir: Path) -> Handle:  # noqa: N802  (the tests' name for a local attempt)
    """A local attempt's handle around an already started process."""
    return Handle("", run_dir, proc)


@dataclass
class Worker:
    store: Store
    max_concurrent: int = 1
    poll_seconds: float = 0.25
    python: str = sys.executable  # the interpreter that runs `-m tunery.jobs.child` (local executor)
    max_crashes: int = field(default_factory=lambda: int(os.environ.get(MAX_CRASHES_ENV) or MAX_ATTEMPTS))
    executor: Executor | None = None  # None: the local executor with `python`
    children: dict[str, Handle] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)  # jobs waiting for an old process to let go (logged once)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _serving_until: float = 0.0  # generation counts as running until then (tunery/threads.py)
    _sharing: bool = False  # whether the local jobs have been told to give threads to generation
    _share_lock: threading.Lock = field(default_factory=threading.Lock)
    _retries: dict[str, int] = field(default_factory=dict)  # job id -> starts that failed for a transient reason
    _retry_at: dict[str, float] = field(default_factory=dict)  # job id -> when to try starting it again

    def __post_init__(self) -> None:
        if self.executor is None:
            self.executor = LocalExecutor(self.python)
        if isinstance(self.executor, LocalExecutor):
            self.executor.threads = self.threads_per_job

    @property
    def threads_per_job(self) -> int:
        return threads.per_job(self.max_concurrent)

    def serving_threads(self) -> int:
        """Threads the server's generation may use now: the cores its running local jobs leave (at least one).
        The server calls this before and after each piece of model work, so it also marks generation as running:
        the local jobs are told to give it a fair share of the cores until it has been idle a moment
        (tunery/threads.py). Ray places its jobs by its own CPU accounting, so they are not counted here."""
        local = len(self.children) if self.executor.name == "local" else 0
        if not local:
            return threads.for_serving(0, self.threads_per_job)
        with self._share_lock:
            self._serving_until = time.monotonic() + threads.SERVING_HOLD_SECONDS
            if not self._sharing:
                self._sharing = True
                self._offer_all()
        return threads.for_serving(local, self._job_threads())

    def _job_threads(self, local: int | None = None) -> int:
        """Each of `local` (default: the running) local jobs' threads now: all of its share, or less while generation
        runs beside them."""
        local = len(self.children) if local is None else local
        return threads.while_serving(local, self.threads_per_job) if self._sharing else self.threads_per_job

    def _offer_all(self) -> None:
        if self.executor.name != "local":
            return
        n = self._job_threads()
        for handle in list(self.children.values()):
            try:
                threads.offer(handle.run_dir / threads.SHARE_FILE, n)
            except OSError as exc:  # a job whose directory went away is about to be reaped
                log.warning("could not tell a job its threads: %s", exc)

    def _share_back(self) -> None:
        """Give the jobs their threads back once generation has been idle for SERVING_HOLD_SECONDS."""
        with self._share_lock:
            if self._sharing and time.monotonic() > self._serving_until:
                self._sharing = False
                self._offer_all()

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="tunery-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and let go of the attempts. Their jobs stay RUNNING in the store: the next start re-attaches
        them (Ray) or resumes them (local children end with the server)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for handle in self.children.values():
            self.executor.detach(handle)
        self.children.clear()

    def recover(self) -> None:
        """Re-attach or requeue what a previous server left running; finish cancellations it left half done."""
        for job in self.store.jobs_in(states.RUNNING):
            handle = self._reattach(job)
            if handle is not None:
                self.children[job.id] = handle
                log.info("job %s: re-attached to its running attempt %d on %s", job.id, job.attempts, self.executor.name)
                continue
            self.store.transition(job.id, states.PENDING, detail=states.WAITING_FOR_QUOTA)  # not a crash
            log.info("job %s was running when the server stopped: requeued (it resumes from its last saved state)", job.id)
        for job in self.store.jobs_in(states.CANCELLING):
            if (handle := self._reattach(job)) is not None:
                self.executor.cancel(handle, force=True)
            self.store.transition(job.id, states.CANCELLED, error=CANCELLED_ERROR, ended=True)
        for job in self.store.jobs_in(states.PAUSING):  # the server stopped while it paused: it is paused
            if (handle := self._reattach(job)) is not None:
                self.executor.cancel(handle, force=True)
            self.store.transition(job.id, states.PAUSED)

    def _reattach(self, job: Job) -> Handle | None:
        try:
            return self.executor.reattach(job)
        except ExecutorError as exc:  # the cluster is unreachable: resume the job rather than lose it
            log.warning("job %s: could not ask %s about it (%s); requeued", job.id, self.executor.name, exc)
            return None

    def logs(self, job: Job) -> str:
        """The job's tuning output, from wherever its executor keeps it."""
        return self.executor.logs(job)

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
        self._pause()
        self._start_queued()
        self._share_back()

    # ---------------------------------------------------------------- steps of a tick

    def _reap(self) -> None:
        for job_id, handle in list(self.children.items()):
            try:
                self._reap_one(job_id, handle)
            except sqlite3.Error:  # the store is busy: the child is kept and its exit recorded on a later tick
                raise
            except Exception as exc:  # one job's bad files must not stop the loop for the others
                log.exception("job %s: could not record how its attempt ended", job_id)
                self.children.pop(job_id, None)
                job = self.store.get_job(job_id)
                if job is not None and job.state in (states.RUNNING, states.CANCELLING, states.PAUSING):
                    self.store.transition(job_id, states.FAILED, ended=True, error={
                        "code": 13, "message": f"could not read how the tuning process ended: {exc!r:.300}"})

    def _reap_one(self, job_id: str, handle: Handle) -> None:
        ended = self.executor.poll(handle)
        job = self.store.get_job(job_id)
        if ended is None:
            self._progress(job, handle.run_dir)
            return
        self._record_exit(job, handle, ended)
        del self.children[job_id]  # only once the outcome is in the store: a failed write is retried next tick

    def _record_exit(self, job: Job, handle: Handle, ended: Exit) -> None:
        result = _read(handle.run_dir / RESULT_FILE)
        if job.state == states.CANCELLING:
            self.store.transition(job.id, states.CANCELLED, error=CANCELLED_ERROR, ended=True)
        elif job.state == states.PAUSING and not (result and result["status"] == "succeeded"):
            self.store.transition(job.id, states.PAUSED)  # its last saved state is where resume starts
        elif result and result["status"] == "succeeded":
            meta = {"completedEpochCount": result["epochs"], "completedStepCount": result["steps"]}
            if result.get("stats"):
                self.store.update_progress(job.id, stats=result["stats"])
            self.store.finish_job(job, result["base_model"], result["adapter"], result["checkpoints"], meta)
        elif result:
            self.store.transition(job.id, states.FAILED, error=result["error"], ended=True)
        elif ended.code == STOPPED_EXIT:  # stopped on SIGTERM with its state saved (the server stopped it): not a crash
            self.store.transition(job.id, states.PENDING, detail=states.WAITING_FOR_QUOTA)
        elif ended.code == LOCKED_EXIT:  # it found the job held by another process and did nothing: not a crash
            log.warning("job %s: its directory is held by another process; requeued", job.id)
            self.store.transition(job.id, states.PENDING, detail=states.WAITING_FOR_QUOTA)
        elif job.crashes + 1 < self.max_crashes:
            log.warning("job %s: the tuning process %s; requeued (crash %d of %d allowed)",
                        job.id, ended.how, job.crashes + 1, self.max_crashes - 1)
            self.store.transition(job.id, states.PENDING, detail=states.WAITING_FOR_QUOTA, crash=True)
        else:
            where = handle.extra.get("logs_hint") or str(handle.run_dir / LOG_FILE)
            self.store.transition(job.id, states.FAILED, ended=True, crash=True, error={
                "code": 13, "message": f"the tuning process crashed {job.crashes + 1} times (the last one {ended.how}), "
                                       f"each time resuming from its last saved state; see {where}"})

    def _progress(self, job: Job, run_dir: Path) -> None:
        p = _read(run_dir / PROGRESS_FILE)
        if p:
            meta = {k: p[k] for k in ("completedStepCount", "completedEpochCount") if k in p}
            self.store.update_progress(job.id, detail=p.get("detail"), stats=p.get("stats"), metadata=meta or None)

    def _cancel(self) -> None:
        for job in self.store.jobs_in(states.CANCELLING):
            if (handle := self.children.get(job.id)) is None:
                self.store.transition(job.id, states.CANCELLED, error=CANCELLED_ERROR, ended=True)
            else:
                self._stop_process(handle, CANCEL_GRACE_SECONDS)

    def _pause(self) -> None:
        """Stop the processes of jobs being paused; once a process has ended, _record_exit marks its job PAUSED."""
        for job in self.store.jobs_in(states.PAUSING):
            if (handle := self.children.get(job.id)) is None:
                self.store.transition(job.id, states.PAUSED)
            else:
                self._stop_process(handle, PAUSE_GRACE_SECONDS)

    def _stop_process(self, handle: Handle, grace: float) -> None:
        """SIGTERM (the process saves its state after the step it is on, then exits), SIGKILL after `grace` s (it
        resumes from its last saved state instead)."""
        if handle.term_sent is None:
            self.executor.cancel(handle, force=False)
            handle.term_sent = time.monotonic()
        elif not handle.kill_sent and time.monotonic() - handle.term_sent > grace:
            self.executor.cancel(handle, force=True)
            handle.kill_sent = True

    def _start_queued(self) -> None:
        for job in self.store.jobs_in(states.PENDING):
            if len(self.children) >= self.max_concurrent:
                return
            if self._retry_at.get(job.id, 0.0) > time.monotonic():  # its executor was unreachable a moment ago
                continue
            holder = locks.holder(Path(job.run_dir) / locks.LOCK_FILE)
            if holder is not None:  # an old child (of a server that was killed) still runs this job: wait for it
                if job.id not in self._held:
                    log.info("job %s waits: its directory is still held by process %s", job.id, holder)
                    self._held.add(job.id)
                continue
            self._held.discard(job.id)
            self._launch(job)

    def _launch(self, job: Job) -> None:
        """Claim the job (PENDING -> RUNNING), then start its attempt. A job cancelled meanwhile is skipped; an
        attempt that cannot start fails the job with the reason, so no job stays RUNNING without a process."""
        try:
            job = self.store.transition(job.id, states.RUNNING, detail=states.PROCESSING_DATASET, started=True,
                                        attempt=True)
        except states.IllegalTransition:  # cancelled between the queue read and the claim
            return
        run_dir = Path(job.run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RESULT_FILE).unlink(missing_ok=True)
            spec = job.spec.to_json()
            write_json(run_dir / JOB_FILE, {"job": job.name, "config": spec["tuning"], "evaluation": spec["evaluation"],
                                            "workers": job.spec.workers})
            if self.executor.name == "local":  # its threads from its first step: fewer while generation runs
                with self._share_lock:
                    threads.offer(run_dir / threads.SHARE_FILE, self._job_threads(len(self.children) + 1))
            handle = self.executor.start(job, run_dir)
        except ExecutorError as exc:
            if not exc.transient:
                return self._could_not_start(job, exc)
            tries = self._retries[job.id] = self._retries.get(job.id, 0) + 1
            delay = min(MAX_RETRY_SECONDS, 2.0 ** tries)
            self._retry_at[job.id] = time.monotonic() + delay
            log.warning("job %s: %s; it waits in the queue and is tried again in %.0f s", job.id, exc, delay)
            self.store.transition(job.id, states.PENDING, detail=states.WAITING_FOR_QUOTA)  # not a crash
            return
        except OSError as exc:
            return self._could_not_start(job, exc)
        self._retries.pop(job.id, None)
        self._retry_at.pop(job.id, None)
        self.children[job.id] = handle
        with self._share_lock:
            if self._sharing:  # one more job: the others' share may shrink
                self._offer_all()
        log.info("job %s started on %s (%s, attempt %d)", job.id, self.executor.name, handle.extra, job.attempts)


    def _could_not_start(self, job: Job, exc: Exception) -> None:
        log.error("job %s: could not start its tuning process: %s", job.id, exc)
        self.store.transition(job.id, states.FAILED, ended=True, error={
            "code": 13, "message": f"could not start the tuning process: {exc}"})


def _read(path: Path) -> dict | None:
    """A JSON object the tuning process wrote; None when there is none (or not yet a whole one)."""
    try:
        found = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None
