"""Tuning jobs and tuned models."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body

from tunery.api.errors import ApiError
from tunery.api.services import Services, Svc
from tunery.api.wire import endpoints as we
from tunery.api.wire import tuning as wire
from tunery.api.wire.common import page
from tunery.jobs import child, states
from tunery.jobs.store import Job

router = APIRouter()
PLACE = "/projects/{project}/locations/{location}"


def _job_json(svc: Services, job: Job) -> dict:
    model = svc.store.get_model(job.model_id) if job.model_id else None
    status = child.evaluation_status(Path(job.run_dir)) if job.spec.evaluation else None
    return wire.job_json(job, model, svc.store.endpoints_of(model.id) if model else [], status)


@router.post(PLACE + "/tuningJobs")
def create_tuning_job(project: str, location: str, svc: Svc, body: Any = Body(...)) -> dict:
    return _job_json(svc, svc.jobs.create(project, location, wire.parse_create(body)))


@router.get(PLACE + "/tuningJobs/{job_id}")
def get_tuning_job(project: str, location: str, job_id: str, svc: Svc) -> dict:
    return _job_json(svc, svc.jobs.get(job_id, project, location))


@router.get(PLACE + "/tuningJobs")
def list_tuning_jobs(project: str, location: str, svc: Svc, pageSize: int | None = None, pageToken: str | None = None,
                     filter: str | None = None) -> dict:
    size, offset = page(pageSize, pageToken)
    wanted = None
    if filter:
        wanted = set(re.findall(r"JOB_STATE_[A-Z_]+", filter))
        if not wanted or not re.fullmatch(r'[\s()"]*state\s*[:=]\s*.*', filter) or not wanted <= set(states.ALL):
            raise ApiError(400, f"filter: expected state=\"JOB_STATE_...\" (OR-ed), found {filter!r}")
    jobs, nxt = svc.store.list_jobs(project, location, size, offset, wanted)
    out: dict = {"tuningJobs": [_job_json(svc, j) for j in jobs]}
    if nxt is not None:
        out["nextPageToken"] = str(nxt)
    return out


@router.get(PLACE + "/tuningJobs/{job_id}/logs")
def tuning_job_logs(project: str, location: str, job_id: str, svc: Svc) -> dict:
    """tunery extension: the tuning process's output (the child's log.txt, or the Ray job logs of each attempt)."""
    job = svc.jobs.get(job_id, project, location)
    return {"executor": svc.worker.executor.name, "logs": svc.worker.logs(job)}


@router.post(PLACE + "/tuningJobs/{job_id}:cancel")
def cancel_tuning_job(project: str, location: str, job_id: str, svc: Svc) -> dict:
    svc.jobs.cancel(job_id, project, location)
    return {}


@router.get(PLACE + "/tuningJobs/{job_id}/metrics")
def get_tuning_job_metrics(project: str, location: str, job_id: str, svc: Svc) -> dict:
    """tunery extension: the job's metric time series so far, {"curves": {name: [[step, value], ...]}}."""
    from tunery.eval.report import read_curves

    job = svc.jobs.get(job_id, project, location)
    return {"name": f"{job.name}/metrics", "curves": read_curves(Path(job.run_dir) / child.RUN_SUBDIR)}


@router.get(PLACE + "/tuningJobs/{job_id}/evaluationReport")
def get_evaluation_report(project: str, location: str, job_id: str, svc: Svc, format: str = "json"):
    """tunery extension: the before/after evaluation report of a job created with evaluationConfig
    (`?format=html` for the self-contained page)."""
    from fastapi.responses import HTMLResponse

    if format not in ("json", "html"):
        raise ApiError(400, f"format: expected json or html, found {format!r}")
    path = svc.jobs.evaluation_report(svc.jobs.get(job_id, project, location))
    if format == "html":
        return HTMLResponse(path.with_suffix(".html").read_text())
    return json.loads(path.read_text())


@router.get(PLACE + "/models/{model_id}")
def get_model(project: str, location: str, model_id: str, svc: Svc) -> dict:
    model = svc.jobs.tuned_model(model_id, project, location)
    return wire.model_json(model, svc.store.endpoints_of(model.id))


@router.get(PLACE + "/models")
def list_models(project: str, location: str, svc: Svc, pageSize: int | None = None, pageToken: str | None = None) -> dict:
    size, offset = page(pageSize, pageToken)
    found, nxt = svc.store.list_models(project, location, size, offset)
    out: dict = {"models": [wire.model_json(m, svc.store.endpoints_of(m.id)) for m in found]}
    if nxt is not None:
        out["nextPageToken"] = str(nxt)
    return out


@router.post(PLACE + "/models/{model_id}:export")
def export_model(project: str, location: str, model_id: str, svc: Svc, body: Any = Body(...)) -> dict:
    """models.export with exportFormatId "gguf": adapter.gguf, model.gguf and Ollama Modelfiles in a directory
    under the server's roots; a finished operation whose metadata names it (artifactOutputUri)."""
    out = svc.jobs.export_gguf(model_id, project, location, wire.parse_export(body))
    op = we.done_operation(f"projects/{project}/locations/{location}", we.EXPORT_RESPONSE)
    op["metadata"] = {"@type": we.EXPORT_METADATA, "outputInfo": {"artifactOutputUri": out.as_uri()}}
    svc.store.add_operation(op["name"], op)
    return op


@router.delete(PLACE + "/models/{model_id}")
def delete_model(project: str, location: str, model_id: str, svc: Svc) -> dict:
    """Vertex cannot delete tuned models; tunery can: rows, loaded adapters and files go."""
    svc.jobs.delete_model(model_id, project, location)
    return {}
