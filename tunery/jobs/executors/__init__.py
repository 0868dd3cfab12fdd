"""Where tuning processes run: one small Protocol the worker loop drives, with `local` and `ray` behind it.

The worker owns the job store and the run directory (job.json in, progress.json/result.json out); an executor only
starts, watches, stops and re-finds the process that runs `tunery.jobs.child` (or its Ray Train form) on a run dir.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunery.jobs.store import Job


class ExecutorError(Exception):
    """The executor could not do what was asked (cannot reach Ray, refused credentials); the message says why.
    `transient`: it may work in a moment (a cluster unreachable for now): the worker retries with backoff."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class Handle:
    """One started attempt of a job: what the executor needs to find its process again."""

    job_id: str
    run_dir: Path
    ref: Any  # the executor's own: a Popen (local) or a Ray submission id (ray)
    term_sent: float | None = None  # when the first (graceful) cancel went out
    kill_sent: bool = False  # whether the forced one went out (it is sent once)
    extra: dict = field(default_factory=dict)

    @property
    def proc(self) -> Any:
        """The local executor's child process (tests signal it directly)."""
        return self.ref


@dataclass(frozen=True)
class Exit:
    """How an attempt ended: `code` as a process exit status (0 ok, <0 a signal, LOCKED_EXIT) and `how` in words."""

    code: int
    how: str


class Executor(Protocol):
    name: str

    def start(self, job: Job, run_dir: Path) -> Handle:
        """Start the job's tuning on `run_dir` (job.json written). Raises ExecutorError or OSError if it cannot."""

    def poll(self, handle: Handle) -> Exit | None:
        """None while it runs; its Exit once it has ended."""

    def cancel(self, handle: Handle, force: bool) -> None:
        """Ask it to stop (force: stop it now)."""

    def logs(self, job: Job) -> str:
        """The tuning process's output so far (all attempts the executor still knows)."""

    def reattach(self, job: Job) -> Handle | None:
        """After a server restart: the still-known attempt of a RUNNING job, or None if nothing runs it any more."""

    def detach(self, handle: Handle) -> None:
        """The server stops: end what cannot outlive it (local children); leave what can (Ray jobs)."""


def create(kind: str, **options: Any) -> Executor:
    """The executor named `kind` ('local' or 'ray') with its options."""
    if kind == "local":
        from tunery.jobs.executors.local import LocalExecutor

        return LocalExecutor(**options)
    if kind == "ray":
        from tunery.jobs.executors.ray import RayExecutor

        return RayExecutor(**options)
    raise ValueError(f"unknown executor {kind!r}: expected local or ray")
