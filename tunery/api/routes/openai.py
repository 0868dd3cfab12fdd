"""OpenAI-compatible files and fine-tuning jobs under /v1 (the openai SDK's `files` and `fine_tuning.jobs`).

An OpenAI job is created through the same path as a Vertex one (`tuning.create_job`): one job, shown here as
`ftjob-<id>` and at the Vertex route as `tuningJobs/<id>`."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response

from tunery.api.errors import ApiError
from tunery.api.services import Services, Svc
from tunery.api.wire import openai as wire
from tunery.api.wire import openai_objects as objects
from tunery.api.wire.common import int_field
from tunery.data import preference
from tunery.data.validate import Report, validate
from tunery.errors import ModelNotFoundError, RequestError
from tunery.jobs import child, states
from tunery.jobs.store import File as StoredFile
from tunery.jobs.store import Job
from tunery.train.metrics import read_metrics

router = APIRouter()
PROJECT, LOCATION = "openai", "us-central1"  # where jobs created through the OpenAI API live (Vertex names)
FILES_DIR = "files"  # under the server's home, so the tuning process may read them (an allowed root)


def _limit(limit: int | None, hi: int = 100) -> int:
    """A list call's page size (OpenAI's default: 20)."""
    return int_field(limit, "limit", 1, hi) or 20


def _file_or_404(svc: Services, file_id: str, field: str = "file_id", http: int = 404) -> StoredFile:
    found = svc.store.get_file(file_id)
    if found is None:
        raise ApiError(http, f"{field}: no such file: {file_id!r:.80}")
    return found


def _job_or_404(svc: Services, job_id: str) -> Job:
    job = svc.store.get_job(job_id.removeprefix(objects.JOB_PREFIX))
    if job is None:
        raise ApiError(404, f"fine_tuning_job_id: no such fine-tuning job: {job_id!r:.80}")
    return job


def _issues(report: Report) -> str:
    """The first errors of a validation report, each with its line (OpenAI reports a bad line the same way)."""
    errors = [i for i in report.issues if i.severity == "error"]
    text = "; ".join((f"line {i.line}" + (f" {i.pointer}" if i.pointer else "") + f": {i.message}")
                     if i.line is not None else i.message for i in errors[:5])
    more = sum(f.errors for f in report.files) - len(errors[:5])
    return text + (f" (and {more} more)" if more > 0 else "")


def _preference_file(path) -> bool:
    """Whether an upload is preference pairs (its first record has preferred_output): OpenAI's DPO files."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                return b'"preferred_output"' in raw or b'"non_preferred_output"' in raw
    return False


def save_upload(svc: Services, upload: UploadFile, purpose: str) -> StoredFile:
    """Store an uploaded fine-tuning file under the home, refused (400, with its lines) unless it validates.
    Only the schema is checked here: token limits depend on the base model, checked when a job uses the file."""
    if purpose != "fine-tune":
        raise ApiError(400, f"purpose: expected \"fine-tune\", found {purpose!r:.40} (tunery stores fine-tuning data)")
    folder = svc.settings.home / FILES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    file_id = "file-" + secrets.token_hex(12)
    tmp, final = folder / f".{file_id}.part", folder / f"{file_id}.jsonl"
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        report = (preference.validate(tmp) if _preference_file(tmp)  # OpenAI's DPO format
                  else validate(tmp, fmt="openai"))  # OpenAI chat format, as OpenAI requires
        if not report.valid:
            name = (upload.filename or "the file")[:80]
            raise ApiError(400, f"file: {name} is not a valid fine-tuning file: {_issues(report)}")
        os.replace(tmp, final)  # a file is listed only once it is whole and valid
    finally:
        tmp.unlink(missing_ok=True)
    name = (upload.filename or "upload.jsonl")[:256]
    return svc.store.add_file(StoredFile(file_id, name, purpose, final.stat().st_size, int(time.time()), str(final)))


# ---------------------------------------------------------------- files

@router.post("/files")
def create_file(svc: Svc, file: UploadFile = File(...), purpose: str = Form(...)) -> dict:
    return objects.file_json(save_upload(svc, file, purpose))


@router.get("/files")
def list_files(svc: Svc, after: str | None = None, limit: int | None = None, order: str = "desc",
               purpose: str | None = None) -> dict:
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order: expected asc or desc, found {order!r:.40}")
    found, more = svc.store.files_after(_limit(limit, 10_000), after, order == "desc", purpose)
    return {"object": "list", "data": [objects.file_json(f) for f in found], "has_more": more}


def _results(svc: Services, file_id: str) -> tuple[Job, str] | None:
    """A succeeded job and its results CSV, for a `file-results-<job id>` id (None for other ids)."""
    if not file_id.startswith(objects.RESULTS_PREFIX):
        return None
    job = svc.store.get_job(file_id.removeprefix(objects.RESULTS_PREFIX))
    if job is None or job.state != states.SUCCEEDED:
        raise ApiError(404, f"file_id: no such file: {file_id!r:.80}")
    return job, objects.results_csv(_records(job))


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, svc: Svc) -> dict:
    if (results := _results(svc, file_id)) is not None:
        return objects.results_file_json(results[0], len(results[1].encode()))
    return objects.file_json(_file_or_404(svc, file_id))


@router.get("/files/{file_id}/content")
def file_content(file_id: str, svc: Svc) -> Response:
    if (results := _results(svc, file_id)) is not None:
        return Response(results[1], media_type="text/csv")
    found = _file_or_404(svc, file_id)
    return FileResponse(found.path, media_type="application/jsonl", filename=found.filename)


@router.delete("/files/{file_id}")
def delete_file(file_id: str, svc: Svc) -> dict:
    """A file a queued or running job still reads cannot go (the job would fail on resume)."""
    found = _file_or_404(svc, file_id)
    for job in svc.store.jobs_in(states.PENDING, states.RUNNING, states.CANCELLING):
        oa = job.spec.openai
        if oa and file_id in (oa.training_file, oa.validation_file):
            raise ApiError(409, f"file_id: {file_id} is used by {objects.job_id(job)}, which has not ended")
    svc.store.delete_file(file_id)
    Path(found.path).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


# ---------------------------------------------------------------- fine-tuning jobs

def _job_json(svc: Services, job: Job) -> dict:
    return objects.job_json(job, objects.tuned_name(job))


@router.post("/fine_tuning/jobs")
def create_fine_tuning_job(svc: Svc, body: Any = Body(...)) -> dict:
    req = wire.parse_create_job(body)
    train = _file_or_404(svc, req.training_file, "training_file", 400)
    val = _file_or_404(svc, req.validation_file, "validation_file", 400) if req.validation_file else None
    try:
        job = svc.jobs.create(PROJECT, LOCATION, wire.job_request(req, train.path, val.path if val else None))
    except ModelNotFoundError as exc:
        raise ApiError(400, f"model: {req.model} is not available for fine-tuning: {exc.message}",
                       code="model_not_available") from exc
    return _job_json(svc, job)


@router.get("/fine_tuning/jobs")
def list_fine_tuning_jobs(svc: Svc, request: Request, after: str | None = None, limit: int | None = None) -> dict:
    """Every job, whichever door created it, newest first."""
    if any(k.startswith("metadata") for k in request.query_params):
        raise ApiError(400, "metadata: filtering jobs by metadata is not supported by tunery")
    jobs, more = svc.store.jobs_after(_limit(limit), after.removeprefix(objects.JOB_PREFIX) if after else None)
    return {"object": "list", "data": [_job_json(svc, j) for j in jobs], "has_more": more}


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_fine_tuning_job(job_id: str, svc: Svc) -> dict:
    return _job_json(svc, _job_or_404(svc, job_id))


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_fine_tuning_job(job_id: str, svc: Svc) -> dict:
    """Stop the job with its state saved (status pausing, then paused); /resume continues it from there."""
    job = _job_or_404(svc, job_id)
    try:
        return _job_json(svc, svc.jobs.pause(job.id))
    except RequestError as exc:
        raise ApiError(400, f"fine_tuning_job_id: {job_id} cannot be paused: it is {objects.STATUS.get(job.state, job.state)}"
                       ) from exc


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_fine_tuning_job(job_id: str, svc: Svc) -> dict:
    job = _job_or_404(svc, job_id)
    try:
        return _job_json(svc, svc.jobs.resume(job.id))
    except RequestError as exc:
        raise ApiError(400, f"fine_tuning_job_id: {job_id} is not paused ({objects.STATUS.get(job.state, job.state)})"
                       ) from exc


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_fine_tuning_job(job_id: str, svc: Svc) -> dict:
    job = _job_or_404(svc, job_id)
    if job.state in states.ENDED:
        raise ApiError(400, f"fine_tuning_job_id: {job_id} has already ended ({objects.STATUS[job.state]})")
    try:
        return _job_json(svc, svc.jobs.cancel(job.id))
    except RequestError as exc:  # it ended meanwhile
        raise ApiError(400, f"fine_tuning_job_id: {job_id} has already ended") from exc


def _records(job: Job) -> list[dict]:
    """The job's metrics.jsonl records so far."""
    return read_metrics(Path(job.run_dir) / child.RUN_SUBDIR)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_fine_tuning_events(job_id: str, svc: Svc, after: str | None = None, limit: int | None = None) -> dict:
    """Status messages and a `metrics` event per logged step, newest first (as OpenAI lists them)."""
    job = _job_or_404(svc, job_id)
    model = svc.store.get_model(job.model_id) if job.model_id else None
    found = objects.events(job, model, objects.tuned_name(job), _records(job))
    return objects.page(found[::-1], after, _limit(limit, 1000))


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_fine_tuning_checkpoints(job_id: str, svc: Svc, after: str | None = None, limit: int | None = None) -> dict:
    job = _job_or_404(svc, job_id)
    model = svc.store.get_model(job.model_id) if job.model_id else None
    name = objects.tuned_name(job)
    found = objects.checkpoints(job, model, name, _records(job)) if model and name else []
    return objects.page(found, after, _limit(limit))
