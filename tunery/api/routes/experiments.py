"""Vertex Experiments (metadataStores/default: contexts, executions, artifacts) and TensorBoard (tensorboards,
experiments, runs, timeSeries, batchRead), all views of each job's recorded metrics (see wire/metadata.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query

from tunery.api.errors import ApiError
from tunery.api.services import Services, Svc
from tunery.api.wire import metadata as wm
from tunery.api.wire.endpoints import EMPTY, done_operation
from tunery.jobs.child import RUN_SUBDIR
from tunery.jobs.store import EXPERIMENT_DELETED, RUN_CONTEXT_DELETED, Job
from tunery.train.metrics import read_metrics

router = APIRouter()
PLACE = "/projects/{project}/locations/{location}"
MD = PLACE + "/metadataStores/default"
TB = PLACE + "/tensorboards/{tensorboard}"
RUN = TB + "/experiments/{experiment}/runs/{run}"


def _job(svc: Services, project: str, location: str, job_id: str, what: str) -> Job:
    job = svc.store.get_job(job_id)
    if job is None or (job.project, job.location) != (project, location) or not wm.has_experiment(job):
        raise ApiError(404, f"{what} not found")
    return job


def _context_job(svc: Services, project: str, location: str, context_id: str) -> tuple[Job, bool]:
    ref = wm.parse_context_id(context_id)
    job = _job(svc, project, location, ref.job_id, f"context {wm.store_name(project, location)}/contexts/{context_id}")
    if ref.is_run and job.experiment_deleted >= RUN_CONTEXT_DELETED:
        raise ApiError(404, f"context {context_id} not found (deleted)")
    return job, ref.is_run


def _run_job(svc: Services, project: str, location: str, tensorboard: str, experiment: str, run: str | None) -> Job:
    what = f"tensorboard run {tensorboard}/experiments/{experiment:.60}/runs/{run}"
    if tensorboard != wm.TENSORBOARD_ID or (run is not None and run != wm.RUN_ID):
        raise ApiError(404, f"{what} not found")
    return _job(svc, project, location, wm.parse_experiment_id(experiment), what)


@router.get(MD + "/contexts/{context_id}")
def get_context(project: str, location: str, context_id: str, svc: Svc) -> dict:
    job, is_run = _context_job(svc, project, location, context_id)
    return wm.run_context_json(job) if is_run else wm.experiment_json(job)


@router.get(MD + "/contexts")
def list_contexts(project: str, location: str, svc: Svc, filter: str | None = None) -> dict:
    """Experiments (schema_title="system.Experiment") or the runs of one (system.ExperimentRun AND parent_contexts)."""
    wanted = wm.parse_context_filter(filter)
    out = []
    for job in svc.store.jobs_with_experiments(project, location):
        if wanted.schema_title in (None, "system.Experiment") and wanted.parent is None:
            out.append(wm.experiment_json(job))
        if (wanted.schema_title in (None, "system.ExperimentRun") and job.experiment_deleted < RUN_CONTEXT_DELETED
                and wanted.parent in (None, wm.experiment_name(job))):
            out.append(wm.run_context_json(job))
    return {"contexts": out}


@router.delete(MD + "/contexts/{context_id}")
def delete_context(project: str, location: str, context_id: str, svc: Svc) -> dict:
    """Deleting the run context, then the experiment, hides them; the job keeps its metrics (its curves stay readable
    through the job) and loses its `experiment` field."""
    job, is_run = _context_job(svc, project, location, context_id)
    svc.store.delete_experiment(job.id, RUN_CONTEXT_DELETED if is_run else EXPERIMENT_DELETED)
    op = done_operation(f"projects/{project}/locations/{location}", EMPTY)
    svc.store.add_operation(op["name"], op)
    return op


@router.get(MD + "/executions")
def list_executions(project: str, location: str, filter: str | None = None) -> dict:
    return {}  # tuning runs record no executions (pipelines, custom jobs)


@router.get(MD + "/artifacts/{artifact_id}")
def get_artifact(project: str, location: str, artifact_id: str, svc: Svc) -> dict:
    if not artifact_id.endswith("-run-1-tb-run"):
        raise ApiError(404, f"artifact {artifact_id:.80} not found")
    job, _ = _context_job(svc, project, location, artifact_id.removesuffix("-tb-run"))
    return wm.tb_run_artifact_json(job)


@router.get(TB + ":batchRead")
def batch_read(project: str, location: str, tensorboard: str, svc: Svc,
               timeSeries: list[str] = Query(default=[])) -> dict:
    """Each named series' values, read from the job's metrics.jsonl now (live while the job runs)."""
    if not 1 <= len(timeSeries) <= 20:
        raise ApiError(400, f"timeSeries: expected 1 to 20 time series names, found {len(timeSeries)}")
    out, records = [], {}
    for name in timeSeries:
        parts = name.split("/")
        if len(parts) != 12 or parts[4:6] != ["tensorboards", tensorboard] or parts[10] != "timeSeries":
            raise ApiError(400, f"timeSeries: expected {wm.tensorboard_name(project, location)}/experiments/E/runs/R/"
                                f"timeSeries/ID, found {name!r:.200}")
        job = _run_job(svc, project, location, tensorboard, parts[7], parts[9])
        metric = next((m for m, i in wm.SERIES_IDS.items() if i == parts[11]), None)
        if metric is None:
            raise ApiError(404, f"time series {name:.200} not found")
        if job.id not in records:
            records[job.id] = read_metrics(Path(job.run_dir) / RUN_SUBDIR)
        out.append(wm.time_series_data_json(metric, records[job.id], job.start_time))
    return {"timeSeriesData": out}


@router.get(TB)
def get_tensorboard(project: str, location: str, tensorboard: str, svc: Svc) -> dict:
    if tensorboard != wm.TENSORBOARD_ID:
        raise ApiError(404, f"tensorboard {tensorboard:.60} not found (tunery has one per location: default)")
    jobs = svc.store.jobs_with_experiments(project, location)
    return wm.tensorboard_json(project, location, min((j.start_time for j in jobs), default=None) or "1970-01-01T00:00:00Z")


@router.get(TB + "/experiments/{experiment}")
def get_tb_experiment(project: str, location: str, tensorboard: str, experiment: str, svc: Svc) -> dict:
    return wm.tb_experiment_json(_run_job(svc, project, location, tensorboard, experiment, None))


@router.get(RUN)
def get_tb_run(project: str, location: str, tensorboard: str, experiment: str, run: str, svc: Svc) -> dict:
    return wm.tb_run_json(_run_job(svc, project, location, tensorboard, experiment, run))


@router.get(RUN + "/timeSeries")
def list_time_series(project: str, location: str, tensorboard: str, experiment: str, run: str, svc: Svc) -> dict:
    job = _run_job(svc, project, location, tensorboard, experiment, run)
    return {"tensorboardTimeSeries": [wm.time_series_json(job, name) for name in wm.SERIES]}
