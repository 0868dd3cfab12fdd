"""Vertex Experiments (metadataStores contexts) and TensorBoard, as views of a job's own metrics.

Every started job has one Experiment context, one ExperimentRun context under it, and one TensorBoard run whose
time series are the Vertex metric names, read from the job's metrics.jsonl on each request (so they are live while
the job runs). Names follow what the seed notebook's Step 7a derives from them:
  {MD}/contexts/tuning-experiment-{job}            system.Experiment, backed by {P}/tensorboards/default
  {MD}/contexts/tuning-experiment-{job}-run-1      system.ExperimentRun
  {P}/tensorboards/default/experiments/tuning-experiment-{job}/runs/run-1/timeSeries/{1..6}
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunery.api.errors import ApiError
from tunery.jobs.store import EXPERIMENT_DELETED, Job
from tunery.train import metrics as m

TENSORBOARD_ID = "default"
RUN_ID = "run-1"
# Fixed ids of the six Vertex metric series (eval series exist, empty, when a job has no validation set: the seed
# notebooks read "/eval_total_loss" either way).
SERIES = (m.TRAIN_LOSS, m.TRAIN_ACCURACY, m.TRAIN_PREDICTIONS, m.EVAL_LOSS, m.EVAL_ACCURACY, m.EVAL_PREDICTIONS)
SERIES_IDS = {name: str(i) for i, name in enumerate(SERIES, start=1)}
_CONTEXT_ID = re.compile(r"tuning-experiment-(\d{1,19})(-run-1)?")


def place(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def store_name(project: str, location: str) -> str:
    return f"{place(project, location)}/metadataStores/default"


def experiment_id(job_id: str) -> str:
    return f"tuning-experiment-{job_id}"


def experiment_name(job: Job) -> str:
    return f"{store_name(job.project, job.location)}/contexts/{experiment_id(job.id)}"


def tensorboard_name(project: str, location: str) -> str:
    return f"{place(project, location)}/tensorboards/{TENSORBOARD_ID}"


def tb_run_name(job: Job) -> str:
    return f"{tensorboard_name(job.project, job.location)}/experiments/{experiment_id(job.id)}/runs/{RUN_ID}"


def has_experiment(job: Job) -> bool:
    """The Experiment context exists once the job has started (Vertex creates it with the run) until deleted."""
    return job.start_time is not None and job.experiment_deleted < EXPERIMENT_DELETED


@dataclass(frozen=True)
class ContextRef:
    """A context id parsed: the job it belongs to, and whether it is the run (not the experiment)."""

    job_id: str
    is_run: bool


def parse_context_id(context_id: str) -> ContextRef:
    match = _CONTEXT_ID.fullmatch(context_id)
    if match is None:
        raise ApiError(404, f"context {context_id} not found (tunery's contexts are tuning-experiment-JOB_ID and "
                            "tuning-experiment-JOB_ID-run-1)")
    return ContextRef(match.group(1), match.group(2) is not None)


def parse_experiment_id(experiment: str) -> str:
    """The job id behind a TensorBoard experiment id (tuning-experiment-{job})."""
    ref = parse_context_id(experiment)
    if ref.is_run:
        raise ApiError(404, f"tensorboard experiment {experiment} not found")
    return ref.job_id


@dataclass(frozen=True)
class ContextFilter:
    """The filters the SDK sends to contexts.list: a schema title, optionally a parent context."""

    schema_title: str | None
    parent: str | None


def parse_context_filter(text: str | None) -> ContextFilter:
    if not text:
        return ContextFilter(None, None)
    clauses = [c.strip() for c in re.split(r"\s+AND\s+", text.strip())]
    schema = parent = None
    for clause in clauses:
        if match := re.fullmatch(r'schema_title\s*=\s*"([\w.]+)"', clause):
            schema = match.group(1)
        elif match := re.fullmatch(r'parent_contexts\s*:\s*"([^"]+)"', clause):
            parent = match.group(1)
        else:
            raise ApiError(400, f'filter: expected schema_title="..." and/or parent_contexts:"...", found {clause!r:.120}')
    return ContextFilter(schema, parent)


# ---------------------------------------------------------------- responses

def experiment_json(job: Job) -> dict:
    return {"name": experiment_name(job), "displayName": experiment_id(job.id), "schemaTitle": "system.Experiment",
            "schemaVersion": "0.0.1", "createTime": job.start_time, "updateTime": job.update_time,
            "description": f"tuning job {job.name}",
            "metadata": {"experiment_deleted": False,
                         "backing_tensorboard_resource": tensorboard_name(job.project, job.location)}}


def run_context_json(job: Job) -> dict:
    return {"name": f"{experiment_name(job)}-run-1", "displayName": RUN_ID, "schemaTitle": "system.ExperimentRun",
            "schemaVersion": "0.0.1", "createTime": job.start_time, "updateTime": job.update_time,
            "parentContexts": [experiment_name(job)],
            "metadata": {"_STATE": "COMPLETE" if job.end_time else "RUNNING", "_TENSORBOARD_RUN": tb_run_name(job)}}


def tb_run_artifact_json(job: Job) -> dict:
    """The artifact linking an ExperimentRun to its TensorBoard run (read by experiment.delete())."""
    return {"name": f"{store_name(job.project, job.location)}/artifacts/{experiment_id(job.id)}-run-1-tb-run",
            "displayName": f"{experiment_id(job.id)}-run-1-tb-run", "schemaTitle": "google.VertexTensorboardRun",
            "schemaVersion": "0.0.1", "createTime": job.start_time, "updateTime": job.update_time,
            "metadata": {"resourceName": tb_run_name(job), "vertex_experiment_tracking": True}}


def tensorboard_json(project: str, location: str, create_time: str) -> dict:
    return {"name": tensorboard_name(project, location), "displayName": "tunery", "createTime": create_time,
            "updateTime": create_time, "isDefault": True}


def tb_experiment_json(job: Job) -> dict:
    return {"name": f"{tensorboard_name(job.project, job.location)}/experiments/{experiment_id(job.id)}",
            "displayName": experiment_id(job.id), "createTime": job.start_time, "updateTime": job.update_time}


def tb_run_json(job: Job) -> dict:
    return {"name": tb_run_name(job), "displayName": RUN_ID, "createTime": job.start_time, "updateTime": job.update_time}


def time_series_json(job: Job, metric: str) -> dict:
    return {"name": f"{tb_run_name(job)}/timeSeries/{SERIES_IDS[metric]}", "displayName": metric,
            "valueType": "SCALAR", "pluginName": "scalars", "createTime": job.start_time, "updateTime": job.update_time}


def time_series_data_json(metric: str, records: list[dict], default_time: str) -> dict:
    """One series' TimeSeriesData: every recorded step of `metric`, in step order."""
    values = [{"step": str(r["step"]), "wallTime": r.get("time", default_time), "scalar": {"value": r[metric]}}
              for r in records if metric in r]
    return {"tensorboardTimeSeriesId": SERIES_IDS[metric], "valueType": "SCALAR", "values": values}
