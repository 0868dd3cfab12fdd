"""`create_app(settings)`: the Vertex tuning API as a FastAPI app, with its store, worker and serving registry."""

from __future__ import annotations

import hmac
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from tunery.api import errors
from tunery.jobs.store import Store
from tunery.jobs.worker import Worker
from tunery.serve.registry import DEFAULT_MAX_ADAPTERS, Registry

API_VERSIONS = ("v1beta1", "v1")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerSettings:
    """How a server runs. Dataset files (and base-model directories) are read only under `allowed_roots`: the home
    and each `--allow-path`, never implicitly the directory the server was started in."""

    home: Path
    api_key: str | None = None  # when set, every route requires it (Bearer token or x-goog-api-key)
    allow_paths: tuple[Path, ...] = ()  # roots besides the home (--allow-path)
    allow_http_datasets: bool = False
    max_concurrent_jobs: int = 1  # Vertex's concurrent-tuning-job quota
    max_loaded_adapters: int = DEFAULT_MAX_ADAPTERS
    validate_on_create_bytes: int = 8 << 20  # datasets this small are validated before create returns
    start_worker: bool = True

    @property
    def allowed_roots(self) -> list[Path]:
        return [Path(os.path.realpath(p)) for p in (self.home, *self.allow_paths)]


@dataclass
class Services:
    settings: ServerSettings
    store: Store
    worker: Worker
    registry: Registry


def services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]


def _authorized(request: Request, key: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-goog-api-key", "")
    return hmac.compare_digest(given.encode(), key.encode())


def create_app(settings: ServerSettings) -> FastAPI:
    from tunery.api.routes import generation, tuning

    store = Store(settings.home / "tunery.db")
    svc = Services(settings, store, Worker(store, max_concurrent=settings.max_concurrent_jobs),
                   Registry(max_adapters=settings.max_loaded_adapters))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.start_worker:
            svc.worker.start()
        yield
        svc.worker.stop()

    app = FastAPI(title="tunery", description="Vertex AI tuning API for open models", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.services = svc
    errors.install(app)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if settings.api_key and not _authorized(request, settings.api_key):
            return JSONResponse(errors.error_body(401, "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                                       "or 'x-goog-api-key: KEY'"), status_code=401)
        return await call_next(request)

    for version in API_VERSIONS:
        app.include_router(tuning.router, prefix=f"/{version}")
        app.include_router(generation.router, prefix=f"/{version}")
    return app
