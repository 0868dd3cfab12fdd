"""`create_app(settings)`: the Vertex tuning API as a FastAPI app, with its store, worker and serving registry."""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tunery import console
from tunery.api import errors
from tunery.api.routes import endpoints, experiments, gce_metadata, generation, openai, openai_chat, tuning
from tunery.api.serving import GenerationGate
from tunery.api.services import LOOPBACK, ServerSettings, Services  # noqa: F401  (re-exported for callers)
from tunery.jobs.service import JobService
from tunery.jobs.store import Store
from tunery.jobs.worker import Worker
from tunery.serve.registry import Registry

API_VERSIONS = ("v1beta1", "v1")


def _authorized(request: Request, key: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-goog-api-key", "")
    return hmac.compare_digest(given.encode(), key.encode())


def _executor(settings: ServerSettings):
    """The executor the settings name; a Ray one checks its address and token now, so a bad one stops the start."""
    from tunery.jobs import executors

    if settings.executor == "ray":
        return executors.create("ray", address=settings.ray_address or "", token=settings.ray_token,
                                **({"python": settings.ray_python} if settings.ray_python else {}))
    return executors.create("local")


def create_app(settings: ServerSettings) -> FastAPI:
    store = Store(settings.home / "tunery.db")
    worker = Worker(store, max_concurrent=settings.max_concurrent_jobs, executor=_executor(settings))
    registry = Registry(max_adapters=settings.max_loaded_adapters, threads=worker.serving_threads, engine=settings.engine)
    svc = Services(settings, store, worker, registry, JobService(store, settings.policy(), registry.forget),
                   GenerationGate(settings.max_generation_requests))

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
    app.add_middleware(errors.BodyLimit, limit=settings.max_request_bytes)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if not settings.admits_host(request.headers.get("host")):
            message = (f"Host {request.headers['host']!r} is not this server's: it answers loopback names"
                       f"{''.join(', ' + h for h in settings.allowed_hosts)}; start it with --allowed-host NAME to "
                       "answer another (a check against DNS rebinding)")
            return JSONResponse(errors.body_for(request.url.path, 400, message), status_code=400)
        if settings.api_key and not _authorized(request, settings.api_key) and not console.admits(request):
            if (page := console.refusal(request)) is not None:  # console pages send you to its sign-in page
                return page
            message = "missing or wrong API key: send 'Authorization: Bearer KEY' or 'x-goog-api-key: KEY'"
            return JSONResponse(errors.body_for(request.url.path, 401, message), status_code=401)
        return await call_next(request)

    for version in API_VERSIONS:
        # endpoints before generation: `endpoints/{id}:undeployModel` before `endpoints/{id}:{method}`
        for routes in (tuning, endpoints, experiments, generation):
            app.include_router(routes.router, prefix=f"/{version}")
    app.include_router(openai.router, prefix="/v1")  # OpenAI-compatible: files, fine_tuning/jobs (docs/api.md)
    app.include_router(openai_chat.router, prefix="/v1")  # OpenAI-compatible: chat/completions, models
    app.include_router(endpoints.ui_router)
    app.include_router(gce_metadata.router)
    console.mount(app)  # the web console at /console (its session cookie is accepted on /console paths only)
    return app
