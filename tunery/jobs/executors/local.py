"""The local executor: each job attempt is a process that runs `tunery.jobs.child` on RUN_DIR: forked by the zygote
(a child of the server that has imported torch, transformers and peft once: tunery/jobs/zygote.py), or, where the
zygote cannot run (TUNERY_JOB_ZYGOTE=0, or it failed to start), `python -m tunery.jobs.child RUN_DIR` started anew.
Either way the process dies with the server, its output goes to RUN_DIR/log.txt, and it is polled, signalled and
killed by its PID.

One zygote serves every local executor of a process that starts it with the same interpreter and environment (a
server stopped and started again in one process, or many in a test run): its imports cost 5-6 CPU-seconds, paid once.
The environment a job needs is sent whole with each request, so only what libraries read while they import tells
zygotes apart (IMPORT_ENV: the allocator, OpenMP and BLAS, torch, Hugging Face, tqdm, Python's own settings).
It is started from a thread that lives as long as the process, because PR_SET_PDEATHSIG fires when the *thread*
that started a process ends: it dies with the process, not with the server that asked for it first. (A forked job's
/proc/PID/environ shows the zygote's starting environment; the job itself runs with its own: os.environ, getenv.)"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery import procenv, threads
from tunery.jobs.child import LOG_FILE, PARENT_ENV
from tunery.jobs.executors import Exit, Handle
from tunery.jobs.store import Job

log = logging.getLogger("tunery")
CANCEL_GRACE_SECONDS = 5.0  # on server stop: SIGTERM, then SIGKILL after this long
ZYGOTE_ENV = "TUNERY_JOB_ZYGOTE"  # "0": start every job's process anew (no preloaded zygote)
ZYGOTE_READY_SECONDS = 180.0  # its imports take 5 s on an idle 2-core host, far longer on a loaded one
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
    zygote: bool = field(default_factory=lambda: os.environ.get(ZYGOTE_ENV, "1") != "0")
    _zygote: "Zygote | None" = field(default=None, repr=False)

    def start(self, job: Job, run_dir: Path) -> Handle:
        """Start the job's process, its output appended to RUN_DIR/log.txt (rotated: pump_log)."""
        env = {**procenv.compute_env(), "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()),
               threads.SHARE_FILE_ENV: str(run_dir / threads.SHARE_FILE),
               **({threads.THREADS_ENV: str(self.threads)} if self.threads else {})}
        proc = self._fork(run_dir, env) if self.zygote else None
        if proc is None:
            proc = subprocess.Popen([self.python, "-m", "tunery.jobs.child", str(run_dir)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        pump_log(proc.stdout, run_dir / LOG_FILE)
        return Handle(job.id, run_dir, proc, extra={"pid": proc.pid})

    def _fork(self, run_dir: Path, env: dict[str, str]) -> "Forked | None":
        """The job's process forked by the zygote (started, or started again, on the way); None if it cannot be."""
        for _ in range(2):  # a zygote that died (killed, out of memory) is replaced once
            if self._zygote is None or not self._zygote.alive():
                try:
                    self._zygote = shared_zygote(self.python, env)
                except ZygoteError as exc:
                    log.warning("job processes start without the preloaded zygote: %s", exc)
                    self.zygote, self._zygote = False, None
                    return None
            try:
                return self._zygote.fork(run_dir, env)
            except ZygoteError as exc:
                log.warning("the zygote did not fork the job's process (%s); starting it again", exc)
                self._zygote.close()
        return None

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


class ZygoteError(Exception):
    pass


IMPORT_ENV = ("LD_", "MALLOC_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "ONEDNN_", "DNNL_", "TORCH",
              "PYTORCH_", "CUDA_", "NVIDIA_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "TQDM_", "PYTHON",
              "PATH", "HOME", "XDG_", "TMPDIR", "LANG", "LC_")  # prefixes of the variables read at import time
_zygotes: dict[tuple, "Zygote"] = {}
_zygotes_lock = threading.Lock()
_keeper: "tuple[int, queue.SimpleQueue] | None" = None  # (the pid it belongs to, its requests)


def shared_zygote(python: str, env: dict[str, str]) -> "Zygote":
    """This process's zygote for `python` and the import-time part of `env`: the running one, or a new one."""
    key = (os.getpid(), python, tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_ENV))))
    with _zygotes_lock:
        zygote = _zygotes.get(key)
        if zygote is None or not zygote.alive():
            if zygote is not None:
                zygote.close()
            zygote = _zygotes[key] = _on_keeper(lambda: Zygote(python, env))
        return zygote


def _on_keeper(make):
    """Run `make` on the thread that starts zygotes (one per process, started on first use, never ending)."""
    global _keeper
    if _keeper is None or _keeper[0] != os.getpid():  # a forked copy of this process starts its own

        def serve(requests: queue.SimpleQueue) -> None:
            while True:
                fn, answer = requests.get()
                try:
                    answer.put((True, fn()))
                except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                    answer.put((False, exc))

        _keeper = (os.getpid(), queue.SimpleQueue())
        threading.Thread(target=serve, args=(_keeper[1],), name="tunery-zygotes", daemon=True).start()
    answer: queue.SimpleQueue = queue.SimpleQueue()
    _keeper[1].put((make, answer))
    ok, value = answer.get()
    if not ok:
        raise value
    return value


class Zygote:
    """The server's end of tunery/jobs/zygote.py: starts it, asks it for processes, hears how they end."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([python, "-m", "tunery.jobs.zygote", str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        theirs.close()
        self.sock = mine
        self.cond = threading.Condition()
        self.pids: dict[int, int] = {}  # request id -> pid
        self.statuses: dict[int, int] = {}  # pid -> returncode, once ended
        self.ready = self.dead = False
        self._next = 0
        threading.Thread(target=self._read, name="tunery-zygote", daemon=True).start()
        with self.cond:
            if not self.cond.wait_for(lambda: self.ready or self.dead, timeout=ZYGOTE_READY_SECONDS) or self.dead:
                self.close()
                raise ZygoteError(f"it did not start ({self.proc.poll()!r})")

    def _read(self) -> None:
        try:
            while message := self.sock.recv(1 << 16):
                m = json.loads(message)
                with self.cond:
                    if "ready" in m:
                        self.ready = True
                    elif "id" in m:
                        self.pids[m["id"]] = m["pid"]
                    else:
                        self.statuses[m["pid"]] = m["status"]
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.dead = True
            self.cond.notify_all()

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def fork(self, run_dir: Path, env: dict[str, str]) -> "Forked":
        read, write = os.pipe()
        with self.cond:
            request, self._next = self._next, self._next + 1
        try:
            socket.send_fds(self.sock, [json.dumps({"id": request, "run_dir": str(run_dir), "env": env,
                                                    "cwd": os.getcwd()}).encode()],
                            [write])
        except OSError as exc:
            os.close(read)
            raise ZygoteError(str(exc)) from exc
        finally:
            os.close(write)
        with self.cond:
            if not self.cond.wait_for(lambda: request in self.pids or self.dead, timeout=60):
                os.close(read)
                raise ZygoteError("no answer in 60 s")
            if request not in self.pids:
                os.close(read)
                raise ZygoteError("it died")
            pid = self.pids.pop(request)
        return Forked(self, pid, os.fdopen(read, "rb"), str(run_dir))

    def status(self, pid: int) -> int | None:
        with self.cond:
            return self.statuses.get(pid)

    def close(self) -> None:
        """Stop it; the processes it forked die with it (PR_SET_PDEATHSIG)."""
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()


class Forked:
    """A process the zygote forked, with what the executor uses of subprocess.Popen: pid, stdout, poll, signals."""

    def __init__(self, zygote: Zygote, pid: int, stdout, run_dir: str) -> None:
        self.zygote, self.pid, self.stdout, self.run_dir = zygote, pid, stdout, run_dir
        self.returncode: int | None = None
        self.args = ["tunery.jobs.child", run_dir]

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.status(self.pid)
        if self.returncode is None and not self.zygote.alive() and not _running(self.pid):
            self.returncode = -signal.SIGKILL  # it died with the zygote, which can no longer say how it ended
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return code


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
