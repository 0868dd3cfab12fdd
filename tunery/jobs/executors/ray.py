"""The Ray executor: each job attempt is a Ray job (Jobs API) whose entrypoint runs Ray Train on the run dir.

tunery stays the control plane (API, store, serving); Ray runs the training. The submission id is derived from the
tunery job id and attempt, so a restarted server asks Ray about `tunery-<job>-a<attempt>` and re-attaches instead of
submitting twice. The run dir must be on storage every Ray node mounts at the same path (--artifacts): job.json goes
in, progress.json/result.json come out, exactly as with the local executor.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunery.jobs.child import SAVE_INTERVAL_ENV
from tunery.jobs.executors import ExecutorError, Exit, Handle
from tunery.jobs.store import Job

log = logging.getLogger("tunery")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
PYTHON_CHECK_SECONDS = 120  # how long `serve` waits for the cluster to say whether its python imports tunery and ray
_PYTHON_OK: set[tuple[str, str]] = set()  # (address, python) pairs checked in this process
MIN_RAY = (2, 54)  # the first Ray with token authentication (RAY_AUTH_MODE=token)
# Forwarded to the Ray job when set here: where tunery and its caches are, and the knobs tests and operators turn.
# (PYTHONPATH only matters on a one-machine cluster; a real cluster has tunery installed in its image.)
FORWARDED_ENV = ("PYTHONPATH", "TUNERY_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS",
                 SAVE_INTERVAL_ENV, "TUNERY_RAY_MAX_WORKER_FAILURES")


def submission_id(job_id: str, attempt: int) -> str:
    """The Ray submission id of one attempt: stable, so a restarted server finds it again."""
    return f"tunery-{job_id}-a{attempt}"


def check_address(address: str, token: str | None) -> None:
    """Refuse what would hand out remote code execution: an open Ray Jobs API is one (ShadowRay, CVE-2023-48022)."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExecutorError(f"--ray-address: expected the Ray dashboard's URL like http://127.0.0.1:8265, found {address!r}")
    if parts.hostname not in LOOPBACK_HOSTS and token and parts.scheme != "https":
        raise ExecutorError(f"refusing to send the Ray token to {parts.hostname} over plain http: anyone on the path "
                            "could read it; serve the Ray dashboard over https (or reach it through a tunnel on "
                            "127.0.0.1)")
    if parts.hostname not in LOOPBACK_HOSTS and not token:
        raise ExecutorError(f"refusing Ray at {address} without a token: a Ray Jobs API reachable over the network runs "
                            "anyone's code (CVE-2023-48022); start Ray with RAY_AUTH_MODE=token and pass --ray-token "
                            "(or RAY_AUTH_TOKEN)")


@dataclass
class RayExecutor:
    address: str  # the Ray dashboard (Jobs API), e.g. http://127.0.0.1:8265
    token: str | None = field(default=None, repr=False)  # Ray's auth token (RAY_AUTH_MODE=token); never logged
    python: str = sys.executable  # the interpreter Ray runs jobs with (--ray-python): this server's by default
    name: str = "ray"
    _client: Any = field(default=None, repr=False)
    _warned: float = 0.0

    def __post_init__(self) -> None:
        check_address(self.address, self.token)
        try:
            import ray
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install 'tunery[ray]'") from None
        if tuple(int(x) for x in re.findall(r"\d+", ray.__version__)[:2]) < MIN_RAY:
            raise ExecutorError(f"Ray {ray.__version__} has no token authentication; tunery needs Ray >= "
                                f"{'.'.join(map(str, MIN_RAY))} (pip install 'tunery[ray]')")

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self._client = JobSubmissionClient(self.address, headers=headers)
            self._client.list_jobs()  # /api/version needs no token; this does, so a bad token fails here, clearly
        except Exception as exc:  # ConnectionError, ray's AuthenticationError, RuntimeError: say which in words
            raise ExecutorError(_explain(exc, self.address)) from None
        self._check_python()

    def start(self, job: Job, run_dir: Path) -> Handle:
        """Submit this attempt, unless an earlier one still runs on Ray (its submit only looked failed, or a
        restarted server could not ask about it): then that one is the job's attempt. Never two on one run dir."""
        for attempt in range(job.attempts - 1, 0, -1):
            earlier = submission_id(job.id, attempt)
            if self._running(earlier):
                log.warning("job %s: Ray still runs its attempt %d; watching it instead of starting another",
                            job.id, attempt)
                return self._handle(job, run_dir, earlier)
        sid = submission_id(job.id, job.attempts)
        try:
            self._client.submit_job(entrypoint=f"{self.python} -m tunery.jobs.ray_train {shlex.quote(str(run_dir))}",
                                    submission_id=sid, runtime_env={"env_vars": _env()},
                                    metadata={"tunery_job": job.id, "attempt": str(job.attempts)})
        except RuntimeError as exc:
            if "already exists" not in str(exc):  # else: submitted before a crash of ours; it is the same attempt
                raise ExecutorError(_explain(exc, self.address), transient=_transient(exc)) from None
        except Exception as exc:
            raise ExecutorError(_explain(exc, self.address), transient=_transient(exc)) from None
        return self._handle(job, run_dir, sid)

    def _running(self, sid: str) -> bool:
        """Whether Ray runs this submission now (False when it ended or Ray does not know it)."""
        try:
            info = self._client.get_job_info(sid)
        except RuntimeError as exc:
            if _unknown(exc):
                return False
            raise ExecutorError(_explain(exc, self.address), transient=_transient(exc)) from None
        except Exception as exc:
            raise ExecutorError(_explain(exc, self.address), transient=_transient(exc)) from None
        return _status(info) not in TERMINAL

    def _check_python(self) -> None:
        """The interpreter Ray jobs run must import tunery and ray: else every attempt of every job would crash on
        the import. Asked once per cluster and interpreter, with a Ray job of its own."""
        key = (self.address, self.python)
        if key in _PYTHON_OK:
            return
        sid = f"tunery-check-python-{secrets.token_hex(6)}"
        try:
            self._client.submit_job(entrypoint=f"{self.python} -c 'import tunery, ray'", submission_id=sid,
                                    runtime_env={"env_vars": _env()})
            deadline = time.monotonic() + PYTHON_CHECK_SECONDS
            while not self._ended(sid) and time.monotonic() < deadline:
                time.sleep(0.2)
            status = _status(self._client.get_job_info(sid))
            logs = "" if status == "SUCCEEDED" else self._client.get_job_logs(sid)
        except Exception as exc:
            raise ExecutorError(_explain(exc, self.address)) from None
        if status != "SUCCEEDED":
            last = (logs.strip().splitlines() or [f"the check ended {status}"])[-1][:300]
            raise ExecutorError(f"the Ray cluster's `{self.python}` cannot import tunery and ray ({last}); pass "
                                "--ray-python with the interpreter of an environment that has both (config.toml: "
                                "ray_python), e.g. the venv's bin/python")
        _PYTHON_OK.add(key)

    def _ended(self, sid: str) -> bool:
        return _status(self._client.get_job_info(sid)) in TERMINAL

    def _handle(self, job: Job, run_dir: Path, sid: str) -> Handle:
        return Handle(job.id, run_dir, sid, extra={"submission_id": sid,
                                                    "logs_hint": f"`tunery jobs logs {job.id}` (Ray job {sid})"})

    def poll(self, handle: Handle) -> Exit | None:
        try:
            info = self._client.get_job_info(handle.ref)
        except RuntimeError as exc:
            if _unknown(exc):  # the cluster forgot it (a new head, no GCS fault tolerance): a crash, resubmitted
                return Exit(1, f"is unknown to Ray (job {handle.ref}; was the Ray head restarted?)")
            log.warning("Ray at %s: %s", self.address, exc)
            return None
        except Exception as exc:  # Ray unreachable for a moment: the job is not lost, ask again next tick
            if time.monotonic() - self._warned > 60:
                log.warning("cannot reach Ray at %s to poll %s: %s", self.address, handle.ref, exc)
                self._warned = time.monotonic()
            return None
        status = _status(info)
        if status not in TERMINAL:
            return None
        if status == "SUCCEEDED":
            return Exit(0, "succeeded on Ray")
        if status == "STOPPED":
            return Exit(-15, f"was stopped on Ray (job {handle.ref})")
        code = re.search(r"exit code (-?\d+)", info.message or "")
        return Exit(int(code.group(1)) if code else 1, f"failed on Ray (job {handle.ref}: {info.message})")

    def cancel(self, handle: Handle, force: bool) -> None:
        """stop_job: Ray sends the entrypoint SIGTERM, then SIGKILL, and its Train workers go with it."""
        try:
            self._client.stop_job(handle.ref)
        except Exception as exc:
            log.warning("could not stop Ray job %s: %s", handle.ref, exc)

    def logs(self, job: Job) -> str:
        parts = []
        for attempt in range(1, job.attempts + 1):
            sid = submission_id(job.id, attempt)
            try:
                text = self._client.get_job_logs(sid)
            except Exception:  # that attempt's record is gone from Ray (or never reached it)
                continue
            parts.append(f"===== Ray job {sid} (attempt {attempt}) =====\n{text}")
        return "\n".join(parts)

    def reattach(self, job: Job) -> Handle | None:
        sid = submission_id(job.id, job.attempts)
        try:
            self._client.get_job_info(sid)
        except RuntimeError as exc:
            if _unknown(exc):
                return None  # never submitted (the server died in between) or forgotten by Ray: requeue
            raise ExecutorError(_explain(exc, self.address)) from None
        except Exception as exc:
            raise ExecutorError(_explain(exc, self.address)) from None
        return self._handle(job, Path(job.run_dir), sid)

    def detach(self, handle: Handle) -> None:
        """Ray jobs outlive the server on purpose: the next server re-attaches to them."""

    def submissions(self) -> list[str]:
        """Submission ids Ray knows (for tests and operators)."""
        return [j.submission_id for j in self._client.list_jobs() if j.submission_id]


def _status(info: Any) -> str:
    """A Ray job's status as its name (the client gives an enum; its value is the name)."""
    return str(getattr(info.status, "value", info.status))


def _env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)} | {"PYTHONUNBUFFERED": "1"}


def _transient(exc: Exception) -> bool:
    """Whether trying again may work: Ray unreachable or failing for a moment, not a refused token."""
    text = str(exc)
    return not any(s in text for s in ("Authentication", "401", "403"))


def _unknown(exc: Exception) -> bool:
    """Whether Ray answered that it has no such job."""
    return "404" in str(exc) or "does not exist" in str(exc)


def _explain(exc: Exception, address: str) -> str:
    """Ray's exception as a sentence an operator can act on."""
    text = str(exc).strip()
    if "Authentication failed" in text or "403" in text:
        return (f"Ray at {address} refused the token (wrong --ray-token / RAY_AUTH_TOKEN): "
                f"{text.splitlines()[0]}")
    if "Authentication required" in text or "401" in text:
        return f"Ray at {address} requires a token: pass --ray-token or set RAY_AUTH_TOKEN"
    if isinstance(exc, ConnectionError) or "Failed to connect" in text or "Connection refused" in text:
        return f"cannot reach Ray at {address}: {text.splitlines()[0] if text else type(exc).__name__}"
    return f"Ray at {address}: {text or type(exc).__name__}"
