"""A process that imports torch, transformers and peft once, then forks each job's tuning process:
`python -m tunery.jobs.zygote FD`, started by the local executor (tunery/jobs/executors/local.py).

A tuning process started fresh spends 4-6 s importing those libraries on a 2-core host before its first step; a
fork of this process starts with them loaded. The forked process is what `python -m tunery.jobs.child RUN_DIR` would
be: the job's environment (sent whole with each request), its output on the pipe the server reads, and SIGKILL when
this process dies, which dies with the server. Children are reaped here and their exit statuses sent back.

Protocol on the Unix socket FD (SOCK_SEQPACKET), one JSON object per message each way: {"ready": pid} first; then
{"id", "run_dir", "env", "cwd"} with one file descriptor attached (the write end of the job's output pipe) ->
{"id", "pid"}; and {"pid", "status"} when a child ends (`status` as Popen's returncode: the exit code, or minus the
signal).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from pathlib import Path

PRELOAD = ("torch", "transformers", "peft", "tunery.jobs.child", "tunery.train.engine")


def _send(sock: socket.socket, message: dict) -> None:
    sock.send(json.dumps(message).encode())


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"pid": pid, "status": _status(raw)})


def _child(sock: socket.socket, out_fd: int, run_dir: str, env: dict[str, str], cwd: str | None) -> None:
    """In the forked process: become the job's tuning process, and never return."""
    code = 1
    try:
        sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(env)
        if cwd:
            os.chdir(cwd)  # the server's directory now, as a process it started would have
        from tunery.jobs import child

        sys.argv = ["tunery.jobs.child", run_dir]
        child._die_with_parent()
        code = child.main(Path(run_dir))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported on the job's output, as a crashed process's traceback would be
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(sock: socket.socket) -> None:
    from tunery.jobs.child import PARENT_ENV

    _send(sock, {"ready": os.getpid()})
    while True:
        ready, _, _ = select.select([sock], [], [], 0.2)
        _reap(sock)
        if not ready:
            continue
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
        if not data:
            for fd in fds:
                os.close(fd)
            return  # the server closed its end: it is gone or done
        request = json.loads(data)
        env = {**request["env"], PARENT_ENV: str(os.getpid())}  # the child's parent is this process
        pid = os.fork()
        if pid == 0:
            _child(sock, fds[0], request["run_dir"], env, request.get("cwd"))
        os.close(fds[0])
        _send(sock, {"id": request["id"], "pid": pid})


def main(fd: int) -> int:
    from tunery.jobs import child

    child._die_with_parent()  # dies with the server, and so do its children (they die with it)
    for name in PRELOAD:
        __import__(name)
    from transformers import AutoModelForCausalLM  # noqa: F401 - resolves the lazy module now, not in every child

    serve(socket.socket(fileno=fd))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
