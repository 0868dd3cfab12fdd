"""What every route depends on: the server's settings and the `Services` bundle (store, worker, serving registry).

Routes import this module, never `app.py`, so the app can import the routes at module level (no import circle)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from tunery.jobs.service import JobService, Policy
from tunery.jobs.store import Store
from tunery.jobs.worker import Worker
from tunery.serve.registry import DEFAULT_MAX_ADAPTERS, Registry

if TYPE_CHECKING:  # serving imports this module
    from tunery.api.serving import GenerationGate

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def host_name(header: str) -> str:
    """The name in a Host header without its port: "[::1]:8080" -> "::1", "LocalHost:80" -> "localhost"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class ServerSettings:
    """How a server runs. Dataset files (and base-model directories) are read only under `allowed_roots`: the home
    and each `--allow-path`, never implicitly the directory the server was started in."""

    home: Path
    api_key: str | None = None  # when set, every route requires it (Bearer token or x-goog-api-key)
    allow_paths: tuple[Path, ...] = ()  # roots besides the home (--allow-path)
    allow_http_datasets: bool = False
    allow_buckets: tuple[str, ...] = ()  # gs:// and s3:// buckets datasets may come from (--allow-bucket)
    max_concurrent_jobs: int = 1  # Vertex's concurrent-tuning-job quota
    max_pending_jobs: int = 100  # jobs waiting to start; one more is refused with 429 RESOURCE_EXHAUSTED
    max_loaded_adapters: int = DEFAULT_MAX_ADAPTERS
    max_generation_requests: int = 64  # generate/stream/count/chat calls in flight; one more gets 429
    engine: str = "auto"  # serving engine: llamacpp, torch, or auto (llama.cpp on a CPU when installed)
    validate_on_create_bytes: int = 8 << 20  # datasets this small are validated before create returns
    max_request_bytes: int = 32 << 20  # larger request bodies get 413
    start_worker: bool = True
    executor: str = "local"  # where tuning runs: "local" child processes or "ray" (tunery.jobs.executors)
    ray_address: str | None = None  # the Ray dashboard URL (Jobs API) for executor "ray"
    ray_token: str | None = field(default=None, repr=False)  # Ray's auth token (never logged)
    ray_python: str | None = None  # the interpreter Ray runs jobs with; None: this server's
    artifacts: Path | None = None  # where job run dirs live (shared storage for Ray); default HOME/jobs
    # Host header names answered besides loopback's (DNS rebinding: a web page whose name resolves to 127.0.0.1
    # must not reach the API from the user's browser): the interface the server binds, and each --allowed-host
    allowed_hosts: tuple[str, ...] = ()

    @property
    def runs_root(self) -> Path:
        """The folder of job run dirs: every Ray node must see it at this same path."""
        return self.artifacts if self.artifacts is not None else self.home / "jobs"

    def admits_host(self, header: str | None) -> bool:
        """Whether a request's Host header names this server: loopback, the bound interface or an allowed host
        (any port). A request without one cannot come from a browser, and is admitted."""
        if not header:
            return True
        name = host_name(header)
        return name in LOOPBACK or name in {host_name(h) for h in self.allowed_hosts} or "*" in self.allowed_hosts

    @property
    def allowed_roots(self) -> list[Path]:
        return [Path(os.path.realpath(p)) for p in (self.home, *self.allow_paths)]

    def policy(self) -> Policy:
        """What the job service may let a job read, and how many may wait."""
        return Policy(self.runs_root, tuple(self.allowed_roots), self.allow_http_datasets, self.allow_buckets,
                      self.validate_on_create_bytes, self.max_pending_jobs, self.executor == "ray")


@dataclass
class Services:
    settings: ServerSettings
    store: Store
    worker: Worker
    registry: Registry
    jobs: JobService
    generation: GenerationGate


def services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]
