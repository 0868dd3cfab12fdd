"""What every console page shares: templates, rendering with the session, user errors shown on the page, and
the view of a job the list, the detail page and their live updates all read."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from tunery.api.services import Services
from tunery.api.errors import ApiError, from_request_error
from tunery.api.wire import fields
from tunery.console import auth
from tunery.errors import RequestError, TuneryError
from tunery.jobs import states
from tunery.jobs.child import PROGRESS_FILE, RUN_SUBDIR
from tunery.jobs.store import Job

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
PROJECT, LOCATION = "console", "us-central1"  # where jobs created in the console live (any project is listed)


def svc(request: Request) -> Services:
    return request.app.state.services


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    """A page with the session's CSRF token and its one-time message; sets the cookie on a new session."""
    sid, session, new = auth.current(request)
    flash, session.flash = session.flash, None
    keyed = bool(svc(request).settings.api_key)
    response = templates.TemplateResponse(request, name, {"csrf": session.csrf, "flash": flash, "keyed": keyed,
                                                          "signed_in": session.signed_in, **ctx}, status_code=status)
    if new:
        auth.set_cookie(request, response, sid)
    return response


def message_of(exc: Exception) -> tuple[int, str]:
    """(HTTP status, words) for an error a user caused."""
    if isinstance(exc, ApiError):
        return exc.http, exc.message
    if isinstance(exc, auth.CsrfError):
        return 403, str(exc)
    if isinstance(exc, RequestError):  # the service's field names as the Vertex request spells them
        error = from_request_error(exc, fields.vertex(exc))
        return error.http, error.message
    if isinstance(exc, TuneryError):
        return 400, f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    raise exc


USER_ERRORS = (ApiError, TuneryError, auth.CsrfError)


def page_errors(fn):
    """Route decorator: an error the user caused becomes the error page, with the words, never a raw 500."""

    @functools.wraps(fn)
    def wrapper(request: Request, *args, **kwargs) -> Response:
        try:
            return fn(request, *args, **kwargs)
        except USER_ERRORS as exc:
            status, text = message_of(exc)
            return render(request, "error.html", {"title": "Something went wrong", "error": text}, status)

    return wrapper


def json_errors(fn):
    """Route decorator for the pages' fetch calls: {"error": words} with the status."""

    @functools.wraps(fn)
    def wrapper(request: Request, *args, **kwargs) -> Response:
        try:
            return fn(request, *args, **kwargs)
        except USER_ERRORS as exc:
            status, text = message_of(exc)
            return JSONResponse({"error": text}, status_code=status)

    return wrapper


def csrf(request: Request, token: str | None) -> auth.Session:
    """The session of a state-changing request, after the CSRF and Origin checks."""
    session = auth.sessions(request).get(request.cookies.get(auth.COOKIE))
    auth.check(request, session, token)
    return session  # type: ignore[return-value]


def job_or_error(request: Request, job_id: str) -> Job:
    return svc(request).jobs.get(job_id)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def short(state: str | None) -> str:
    """JOB_STATE_RUNNING -> running; TUNING_JOB_STATE_PROCESSING_DATASET -> processing dataset."""
    if not state:
        return ""
    return state.replace("TUNING_JOB_STATE_", "").replace("JOB_STATE_", "").replace("_", " ").lower()


def job_view(services: Services, job: Job) -> dict[str, Any]:
    """One job as the pages show it: states, times and progress (steps done of total, epoch)."""
    progress = read_json(Path(job.run_dir) / PROGRESS_FILE)
    meta = job.metadata or {}
    done = int(meta.get("completedStepCount") or progress.get("completedStepCount") or 0)
    total = int(progress.get("totalSteps") or 0) or (done if job.state == states.SUCCEEDED else 0)
    spec = job.spec
    model = services.store.get_model(job.model_id) if job.model_id else None
    return {"id": job.id, "name": job.name, "state": job.state, "state_short": short(job.state),
            "detail": short(job.detail_state) if job.state in (states.PENDING, states.RUNNING) else "",
            "ended": job.state in states.ENDED, "display_name": spec.display_name or "",
            "base_model": spec.base_model, "requested_base_model": spec.requested_base_model or "",
            "create_time": job.create_time, "start_time": job.start_time or "", "end_time": job.end_time or "",
            "steps": done, "total_steps": total, "percent": round(100 * done / total) if total else 0,
            "epoch": int(meta.get("completedEpochCount") or progress.get("completedEpochCount") or 0),
            "epochs": int(progress.get("epochs") or spec.tuning.epochs or 0),
            "error": (job.error or {}).get("message") if job.state != states.CANCELLED else "",
            "model_id": model.id if model else None,
            "cancellable": job.state in (states.PENDING, states.RUNNING)}


def curves(job: Job) -> dict[str, list[list[float]]]:
    """{metric: [[step, value], ...]} read so far; a line being written right now is skipped."""
    from tunery.eval.report import CURVE_NAMES
    from tunery.train.metrics import METRICS_FILE

    from tunery.train import preference as pt

    names = (*CURVE_NAMES, pt.TRAIN_REWARD_ACCURACY, pt.EVAL_REWARD_ACCURACY)  # the last two: preference jobs
    out: dict[str, list[list[float]]] = {name: [] for name in names}
    path = Path(job.run_dir) / RUN_SUBDIR / METRICS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for name in names:
            if name in row:
                out[name].append([row["step"], row[name]])
    return out
