"""Single-writer locks: one `tunery serve` per home, one writing process per job or run directory.

`fcntl.flock` on a lock file that holds the holder's PID. The kernel drops the lock when its process dies (SIGKILL
included), so a leftover file never blocks anyone; the PID in it only names the holder in the error. The descriptor
is not inherited by child processes (PEP 446), so a server's lock never outlives the server in a job's process.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from tunery.errors import TuneryError

LOCK_FILE = "lock"  # in a job directory and in a run directory
HOME_LOCK_FILE = "serve.lock"  # in the home


class Locked(TuneryError):
    """Another live process holds the lock."""

    code = "failed_precondition"

    def __init__(self, message: str, pid: int | None, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.pid = pid


def acquire(path: Path, what: str) -> int:
    """Take the lock at `path` for this process and write our PID into it; returns the descriptor (keep it open:
    closing it releases the lock). Raises Locked naming the holder's PID when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        who = f"process {pid}" if pid else "another process"
        raise Locked(f"{what} is in use by {who} (lock {path}); two writers would corrupt it", pid,
                     hint=f"wait for it to end, or stop it (kill {pid})" if pid else "wait for it to end") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release(fd: int) -> None:
    os.close(fd)


def holder(path: Path) -> int | None:
    """The PID holding the lock at `path` (0 if it has not written it yet), or None when nobody holds it.
    The probe holds a shared lock for an instant, so an acquire at that very moment fails: probe only where no
    process of ours can be acquiring (the worker probes jobs it has not started)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd) or 0
    finally:
        os.close(fd)
    return None


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
