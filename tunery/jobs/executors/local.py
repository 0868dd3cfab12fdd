"""The local executor: each job attempt is a child process `python -m tunery.jobs.child RUN_DIR` of the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tunery import procenv, threads
from tunery.jobs.child import LOG_FILE, PARENT_ENV
from tunery.jobs.executors import Exit, Handle
from tunery.jobs.store import Job

CANCEL_GRACE_SECONDS = 5.0  # on server stop: SIGTERM, then SIGKILL after this long
MAX_LOG_BYTES = 8 << 20  # a job's log.txt is rotated to log.1.txt at this size (one old file kept)


def pump_log(source, path: Path, max_bytes: int = MAX_LOG_BYTES) -> threading.Thread:
    """Copy a child's output into `path` as it comes, rotating it to `path`.1 when it passes `max_bytes`: a long
    or chatty job never fills the disk. The thread ends when the child closes its output (it exits)."""

    def run() -> None:
        out = open(path, "ab")
        try:
            while chunk := source.read1(1 << 16):
                if out.tell() + len(chunk) > max_bytes and out.tell() > 0:
                    out.close()
                    os.replace(path, rotated(path))
                    out = open(path, "ab")
                out.write(chunk)
                out.flush()
        finally:
            out.close()
            source.close()

    thread = threading.Thread(target=run, name=f"tunery-log-{path.parent.name}", daemon=True)
    thread.start()
    return thread


def rotated(path: Path) -> Path:
    return path.with_name(path.stem + ".1" + path.suffix)


@dataclass
class LocalExecutor:
    python: str = sys.executable  # the interpreter that runs `-m tunery.jobs.child`
    name: str = "local"
    threads: int = 0  # compute threads per job (tunery/threads.py); 0: the child takes all the cores

    def start(self, job: Job, run_dir: Path) -> Handle:
        """Spawn the child, its output appended to RUN_DIR/log.txt (rotated: pump_log)."""
        proc = subprocess.Popen([self.python, "-m", "tunery.jobs.child", str(run_dir)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**procenv.compute_env(), "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()),
                                     threads.SHARE_FILE_ENV: str(run_dir / threads.SHARE_FILE),
                                     **({threads.THREADS_ENV: str(self.threads)} if self.threads else {})})
        pump_log(proc.stdout, run_dir / LOG_FILE)
        return Handle(job.id, run_dir, proc, extra={"pid": proc.pid})

    def poll(self, handle: Handle) -> Exit | None:
        code = handle.ref.poll()
        return None if code is None else Exit(code, how(code))

    def cancel(self, handle: Handle, force: bool) -> None:
        handle.ref.kill() if force else handle.ref.send_signal(signal.SIGTERM)

    def logs(self, job: Job) -> str:
        path, text = Path(job.run_dir) / LOG_FILE, ""
        for part in (rotated(path), path):  # the rotated file first: it is the older output
            try:
                text += part.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def reattach(self, job: Job) -> Handle | None:
        """Children die with the server (PR_SET_PDEATHSIG), so there is never one to re-find: the job resumes."""
        return None

    def detach(self, handle: Handle) -> None:
        handle.ref.terminate()
        try:
            handle.ref.wait(timeout=CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            handle.ref.kill()


def how(code: int) -> str:
    """How a process ended, in words: 'was killed by SIGKILL' or 'exited with code 2'."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
