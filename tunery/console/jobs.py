"""Console pages for jobs: the list (filter, cancel), a job's detail (Vertex's Monitor tab and more), and the
JSON both poll for live progress and curves. Cancelling goes through the REST route's own function."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from tunery.api.errors import ApiError
from tunery.api.wire import fields
from tunery.console.common import (csrf, curves, job_or_error, job_view, json_errors, page_errors, read_json, render,
                                   short, svc)
from tunery.jobs import child, states
from tunery.jobs.store import Job
from tunery.train import checkpoints as ck

router = APIRouter()
STAGES = ("pending", "processing dataset", "tuning", "post processing")


def _jobs(request: Request, state: str | None) -> list[Job]:
    if state and state not in states.ALL:
        raise ApiError(400, f"state: expected one of {', '.join(states.ALL)}, found {state!r}")
    found = svc(request).store.jobs_in(*([state] if state else states.ALL))
    return found[::-1]  # newest first


@router.get("/console")
@page_errors
def jobs_page(request: Request, state: str | None = None) -> HTMLResponse:
    jobs = [job_view(svc(request), j) for j in _jobs(request, state or None)]
    return render(request, "jobs.html", {"title": "Tuning jobs", "jobs": jobs, "state": state or "",
                                         "states": states.ALL, "short": short})


@router.get("/console/api/jobs")
@json_errors
def jobs_json(request: Request, state: str | None = None) -> JSONResponse:
    return JSONResponse({"jobs": [job_view(svc(request), j) for j in _jobs(request, state or None)]})


@router.post("/console/jobs/{job_id}/cancel")
@page_errors
def cancel(request: Request, job_id: str, csrf_token: str | None = Form(None, alias="csrf")) -> RedirectResponse:
    session = csrf(request, csrf_token)
    job = svc(request).jobs.cancel(job_id)
    session.flash = f"Cancelling job {job.spec.display_name or job.id}."
    return RedirectResponse("/console", status_code=303)


def _hyperparameters(job: Job) -> tuple[dict, dict]:
    """(as set in the request, as resolved by the run)."""
    tc = job.spec.tuning
    resolved = read_json(Path(job.run_dir) / child.RUN_SUBDIR / ck.RUN_FILE).get("hyperparameters")
    if not resolved:
        resolved = tc.hyperparameters(tc.epochs or 0)
        resolved["epochs"] = tc.epochs or "chosen from the dataset size when the job starts"
    sent = {fields.HP_VERTEX.get(k, k): v for k, v in job.spec.sent().items()}
    resolved = {"base_model": job.spec.base_model, **resolved}
    return sent, {k: v for k, v in resolved.items() if v is not None}


def _timeline(job: Job, view: dict) -> list[dict]:
    """The stages a job passes through, with the ones reached so far marked."""
    reached = {"pending"}
    current = view["detail"] or view["state_short"]
    if job.start_time:
        reached.add("processing dataset")
    if job.stats or view["steps"]:
        reached.add("tuning")
    if job.state == states.SUCCEEDED or current == "post processing":
        reached.add("post processing")
    rows = [{"name": s, "reached": s in reached, "current": s == current and not view["ended"]} for s in STAGES]
    rows[0]["time"], rows[1]["time"] = job.create_time, job.start_time or ""
    end = {"name": view["state_short"], "reached": view["ended"], "current": False, "time": job.end_time or ""}
    if not view["ended"]:
        end["name"] = "succeeded"
    return rows + [end]


def _checkpoints(request: Request, job: Job, lines: dict) -> list[dict]:
    model = svc(request).store.get_model(job.model_id) if job.model_id else None
    if model is None:
        return []
    endpoints = {e.checkpoint_id: e for e in svc(request).store.endpoints_of(model.id)}
    out = []
    for c in model.checkpoints:
        metrics = {name: next((v for s, v in reversed(points) if s <= c["step"]), None) for name, points in lines.items()}
        ep = endpoints.get(c["checkpointId"])
        out.append({**c, "metrics": {k: v for k, v in metrics.items() if v is not None},
                    "endpoint": ep.name if ep else "", "endpoint_id": ep.id if ep else ""})
    return out


def _evaluation(job: Job) -> dict | None:
    if not job.spec.evaluation:
        return None
    status = child.evaluation_status(Path(job.run_dir))
    if status.get("error"):
        return {"error": status["error"]["message"]}
    if "report" not in status:
        return {"pending": True}
    report = json.loads(Path(status["report"]).read_text())
    metrics, improvement = report.get("metrics", {}), report.get("improvement_percent", {})
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    rows = [{"name": k, "base": v, "tuned": tuned.get(k), "improvement": improvement.get(k)}
            for k, v in base.items() if isinstance(v, (int, float)) and isinstance(tuned.get(k), (int, float))]
    return {"task": report.get("task"), "examples": report.get("examples"), "rows": rows}


@router.get("/console/jobs/{job_id}")
@page_errors
def job_page(request: Request, job_id: str) -> HTMLResponse:
    services = svc(request)
    job = job_or_error(request, job_id)
    view = job_view(services, job)
    lines = curves(job)
    sent, resolved = _hyperparameters(job)
    model = services.store.get_model(job.model_id) if job.model_id else None
    endpoint = next((e for e in services.store.endpoints_of(model.id) if e.checkpoint_id is None), None) if model else None
    return render(request, "job.html", {
        "title": f"Job {view['display_name'] or job.id}", "job": view, "timeline": _timeline(job, view),
        "sent": sent, "resolved": resolved, "stats": job.stats, "curves": lines, "method": job.spec.tuning.method, "endpoint": endpoint, "model": model,
        "checkpoints": _checkpoints(request, job, lines), "evaluation": _evaluation(job),
        "datasets": {k: v for k, v in (("train", job.spec.tuning.train), ("validation", job.spec.tuning.validation))
                     if v}})


@router.get("/console/api/jobs/{job_id}")
@json_errors
def job_json(request: Request, job_id: str) -> JSONResponse:
    job = job_or_error(request, job_id)
    view = job_view(svc(request), job)
    return JSONResponse({"job": view, "curves": curves(job), "timeline": _timeline(job, view)})


@router.get("/console/jobs/{job_id}/evaluation")
@page_errors
def evaluation_page(request: Request, job_id: str) -> HTMLResponse:
    """The job's self-contained before/after HTML report (the REST route's page, behind the console's cookie)."""
    jobs = svc(request).jobs
    return HTMLResponse(jobs.evaluation_report(jobs.get(job_id)).with_suffix(".html").read_text())
