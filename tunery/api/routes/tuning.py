"""Tuning jobs and tuned models."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body

from tunery import models
from tunery.api import datasets
from tunery.api.errors import ApiError
from tunery.api.services import Services, Svc
from tunery.api.wire import tuning as wire
from tunery.api.wire.common import page
from tunery.config import TuningConfig
from tunery.data.validate import Limits, validate
from tunery.jobs import child, states
from tunery.jobs.store import Job
from tunery.train import checkpoints as ck

router = APIRouter()
PLACE = "/projects/{project}/locations/{location}"


def _job_json(svc: Services, job: Job) -> dict:
    model = svc.store.get_model(job.model_id) if job.model_id else None
    status = child.evaluation_status(Path(job.run_dir)) if job.request.get("_evaluation") else None
    return wire.job_json(job, model, svc.store.endpoints_of(model.id) if model else [], status)


def _job_or_404(svc: Services, job_id: str) -> Job:
    job = svc.store.get_job(job_id)
    if job is None:
        raise ApiError(404, f"tuning job {job_id} not found")
    return job


def _tuned_model(svc: Services, name: str, field: str):
    model_id = name.rsplit("/", 1)[-1].split("@")[0]
    model = svc.store.get_model(model_id)
    if model is None:
        raise ApiError(404, f"{field}: tuned model {name} not found")
    return model


def _config(svc: Services, req: wire.CreateTuningJob, extra: dict) -> tuple[dict, str]:
    """TuningConfig fields from a parsed create request (and `extra` fields another door sets, like OpenAI's seed),
    datasets and the base model resolved; and the base model's registry name."""
    roots, allow_http = svc.settings.allowed_roots, svc.settings.allow_http_datasets
    cfg: dict = {"train": datasets.resolve(req.train_uri, "supervisedTuningSpec.trainingDatasetUri", roots, allow_http)}
    if req.validation_uri:
        cfg["validation"] = datasets.resolve(req.validation_uri, "supervisedTuningSpec.validationDatasetUri", roots,
                                             allow_http)
    cfg |= req.hyperparameters | extra
    cfg["export_last_checkpoint_only"] = req.export_last_checkpoint_only
    if req.pre_tuned:
        model = _tuned_model(svc, req.pre_tuned.model_id, "preTunedModel.tunedModelName")
        ckpt = req.pre_tuned.checkpoint_id
        paths = {c["checkpointId"]: c["path"] for c in model.checkpoints}
        if ckpt and ckpt not in paths:
            raise ApiError(400, f"preTunedModel.checkpointId: expected one of {', '.join(paths)}, found {ckpt!r}")
        cfg["init_adapter"] = paths[ckpt] if ckpt else model.adapter_dir
        on_wire = {"adapter_size": ("adapterSize", wire.ADAPTER_SIZE_NAMES.get), "lora_alpha": ("loraAlpha", str),
                   "lora_targets": ("loraTargets", wire.enum_name)}  # the field and its value as a request spells them
        for key, value in ck.adapter_settings(Path(cfg["init_adapter"])).items():  # rank, alpha, targets: the adapter's
            if cfg.setdefault(key, value) != value:
                field, spell = on_wire[key]
                raise ApiError(400, f"supervisedTuningSpec.hyperParameters.{field}: expected the pre-tuned model's "
                                    f"{spell(value)} (or nothing), found {spell(cfg[key])}")
        resolved = models.resolve(model.base_model)  # the server's own record, not the request's
    else:
        resolved = models.resolve_allowed(req.base_model, svc.settings.allowed_roots)
    cfg["base_model"] = resolved.name
    tc = TuningConfig(**cfg, output="-")  # range checks, with the flag named
    # The adapter's and optimizer's defaults are resolved now and stored with the job: a job queued (or interrupted)
    # before an upgrade that changes a default runs, and resumes, with the settings it was created under.
    cfg |= {"adapter_size": tc.adapter_size, "lora_alpha": tc.alpha, "lora_targets": tc.lora_targets,
            "lr_schedule": tc.lr_schedule, "batch_size": tc.batch_size}
    _validate_small(svc, cfg, resolved)
    return cfg, resolved.name


def _evaluation(svc: Services, ev: dict | None, cfg: dict) -> dict | None:
    """The after-tuning evaluation a create request asks for (evaluationConfig), its dataset resolved and checked."""
    if ev is None:
        return None
    where = "supervisedTuningSpec.evaluationConfig.datasetUri"
    if ev["dataset"]:
        ev["dataset"] = datasets.resolve(ev["dataset"], where, svc.settings.allowed_roots,
                                         svc.settings.allow_http_datasets)
    elif cfg.get("validation"):
        ev["dataset"] = cfg["validation"]
    else:
        raise ApiError(400, "supervisedTuningSpec.evaluationConfig: no evaluation dataset; set validationDatasetUri "
                            "or evaluationConfig.datasetUri")
    if Path(ev["dataset"]).is_file() and Path(ev["dataset"]).stat().st_size <= svc.settings.validate_on_create_bytes:
        from tunery.errors import DatasetError
        from tunery.eval.run import load_items

        try:
            load_items(ev["dataset"], ev["limit"])
        except DatasetError as exc:
            raise ApiError(400, f"{where}: {exc.message}") from exc
    return ev


def _validate_small(svc: Services, cfg: dict, spec: models.BaseModelSpec) -> None:
    """Small local datasets are validated before create returns, so their errors come back as a 400."""
    files = [cfg["train"]] + ([cfg["validation"]] if cfg.get("validation") else [])
    if not all(Path(f).is_file() and Path(f).stat().st_size <= svc.settings.validate_on_create_bytes for f in files):
        return
    report = validate(cfg["train"], cfg.get("validation"), template=models.load_template(spec),
                      limits=Limits(spec.max_tokens, "the base model's limit"), max_issues=20)
    if not report.valid:
        errors = [i for i in report.issues if i.severity == "error"]
        lines = "; ".join(str(i) for i in errors[:5])
        more = sum(f.errors for f in report.files) - len(errors[:5])
        raise ApiError(400, f"the dataset has errors: {lines}" + (f" (and {more} more)" if more > 0 else ""))


def create_job(svc: Services, project: str, location: str, body: Any, extra_config: dict | None = None,
               stored: dict | None = None) -> Job:
    """Parse, resolve, validate and store a TuningJob create request: the one path every door (Vertex, console,
    OpenAI) creates a job by, so a job is the same job whichever door made it. `stored`: the door's own fields,
    kept beside the request (the parse refuses them from a client)."""
    req = wire.parse_create(body)
    if req.workers > 1 and svc.worker.executor.name != "ray":
        raise ApiError(400, f"workers: {req.workers} data-parallel workers need the Ray executor (tunery serve "
                            "--executor ray); this server runs jobs as local processes, one worker each")
    cfg, resolved = _config(svc, req, extra_config or {})
    request = {**body, "baseModel": resolved, "_config": cfg, "_workers": req.workers, **(stored or {})}
    if (evaluation := _evaluation(svc, req.evaluation, cfg)) is not None:
        request["_evaluation"] = evaluation
    if req.base_model and req.base_model != resolved:
        request["requestedBaseModel"] = req.base_model
    return svc.store.create_job(project, location, request, svc.settings.runs_root)


@router.post(PLACE + "/tuningJobs")
def create_tuning_job(project: str, location: str, svc: Svc, body: Any = Body(...)) -> dict:
    return _job_json(svc, create_job(svc, project, location, body))


@router.get(PLACE + "/tuningJobs/{job_id}")
def get_tuning_job(project: str, location: str, job_id: str, svc: Svc) -> dict:
    return _job_json(svc, _job_or_404(svc, job_id))


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
    job = _job_or_404(svc, job_id)
    return {"executor": svc.worker.executor.name, "logs": svc.worker.logs(job)}


@router.post(PLACE + "/tuningJobs/{job_id}:cancel")
def cancel_tuning_job(project: str, location: str, job_id: str, svc: Svc) -> dict:
    _job_or_404(svc, job_id)
    found = svc.store.request_cancel(job_id, {"code": 1, "message": "CANCELED"})  # one transaction: no race with the worker
    if found in states.ENDED:
        raise ApiError(400, f"tuning job {job_id} has already ended ({found})", "FAILED_PRECONDITION")
    return {}


@router.get(PLACE + "/tuningJobs/{job_id}/metrics")
def get_tuning_job_metrics(project: str, location: str, job_id: str, svc: Svc) -> dict:
    """tunery extension: the job's metric time series so far, {"curves": {name: [[step, value], ...]}}."""
    from tunery.eval.report import read_curves

    job = _job_or_404(svc, job_id)
    return {"name": f"{job.name}/metrics", "curves": read_curves(Path(job.run_dir) / child.RUN_SUBDIR)}


@router.get(PLACE + "/tuningJobs/{job_id}/evaluationReport")
def get_evaluation_report(project: str, location: str, job_id: str, svc: Svc, format: str = "json"):
    """tunery extension: the before/after evaluation report of a job created with evaluationConfig
    (`?format=html` for the self-contained page)."""
    from fastapi.responses import HTMLResponse

    job = _job_or_404(svc, job_id)
    if format not in ("json", "html"):
        raise ApiError(400, f"format: expected json or html, found {format!r}")
    if not job.request.get("_evaluation"):
        raise ApiError(404, f"tuning job {job_id} has no evaluation (create it with evaluationConfig)")
    status = child.evaluation_status(Path(job.run_dir))
    if status.get("error"):
        raise ApiError(400, f"the evaluation of tuning job {job_id} failed: {status['error']['message']}",
                       "FAILED_PRECONDITION")
    if "report" not in status:
        raise ApiError(404, f"the evaluation report of tuning job {job_id} is not ready ({job.state})")
    path = Path(status["report"])
    if format == "html":
        return HTMLResponse(path.with_suffix(".html").read_text())
    return json.loads(path.read_text())


@router.get(PLACE + "/models/{model_id}")
def get_model(project: str, location: str, model_id: str, svc: Svc) -> dict:
    model = _tuned_model(svc, model_id, "name")
    return wire.model_json(model, svc.store.endpoints_of(model.id))


@router.get(PLACE + "/models")
def list_models(project: str, location: str, svc: Svc, pageSize: int | None = None, pageToken: str | None = None) -> dict:
    size, offset = page(pageSize, pageToken)
    found, nxt = svc.store.list_models(project, location, size, offset)
    out: dict = {"models": [wire.model_json(m, svc.store.endpoints_of(m.id)) for m in found]}
    if nxt is not None:
        out["nextPageToken"] = str(nxt)
    return out


@router.delete(PLACE + "/models/{model_id}")
def delete_model(project: str, location: str, model_id: str, svc: Svc) -> dict:
    """Vertex cannot delete tuned models; tunery can: rows, loaded adapters and files go."""
    model = _tuned_model(svc, model_id, "name")
    svc.registry.forget(model.adapter_dir)
    for c in model.checkpoints:
        svc.registry.forget(c["path"])
    svc.store.delete_model(model.id)
    run = Path(model.adapter_dir).parent
    for sub in ("adapter", "checkpoints"):
        shutil.rmtree(run / sub, ignore_errors=True)
    return {}
