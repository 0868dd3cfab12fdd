"""Tuning jobs and tuned models on the wire: the create request's hyperparameters and evaluationConfig parsed
(camelCase or snake_case, enums as names or the old SDK's numbers, int64 as strings), and TuningJob / Model
rendered (camelCase, full resource names). Stored rows never leave without passing here."""

from __future__ import annotations

from typing import Any

from tunery.api.errors import ApiError
from dataclasses import dataclass

from tunery.api.wire.common import _snake, bool_field, float_field, get, int_field, object_field, str_field
from tunery.api.wire import metadata
from tunery import config
from tunery.jobs.store import Endpoint, Job, Model

ADAPTER_SIZES = {"ADAPTER_SIZE_ONE": 1, "ADAPTER_SIZE_TWO": 2, "ADAPTER_SIZE_FOUR": 4, "ADAPTER_SIZE_EIGHT": 8,
                 "ADAPTER_SIZE_SIXTEEN": 16}
ADAPTER_SIZE_NAMES = {v: k for k, v in ADAPTER_SIZES.items()}
OLD_SDK_ADAPTER_SIZES = {1: 1, 6: 2, 2: 4, 3: 8, 4: 16}  # proto enum numbers (google-cloud-aiplatform)


MAX_WORKERS = 64  # data-parallel workers one job may ask for (`workers`, a tunery field)
# Names the server stores beside a job's request. No Google API field starts with "_", and requestedBaseModel is not
# a TuningJob field: a client that sends one is refused, so it cannot plant a value tunery trusts later.
INTERNAL_FIELDS = ("requestedBaseModel",)
OTHER_SPECS = ("preferenceOptimizationSpec", "distillationSpec", "reinforcementTuningSpec", "fullFineTuningSpec")


@dataclass(frozen=True)
class PreTunedModel:
    model_id: str  # the tuned model to continue from
    checkpoint_id: str | None


@dataclass(frozen=True)
class CreateTuningJob:
    """A tuningJobs.create request, every field's type checked once, here; ranges of hyperparameters too."""

    base_model: str | None
    pre_tuned: PreTunedModel | None
    train_uri: str
    validation_uri: str | None
    hyperparameters: dict  # TuningConfig fields
    export_last_checkpoint_only: bool
    evaluation: dict | None  # see evaluation()
    workers: int = 1  # tunery extension: data-parallel Ray Train workers (the ray executor)


def parse_create(body: Any) -> CreateTuningJob:
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a TuningJob object, found {type(body).__name__}")
    for key in body:
        if key.startswith("_") or key in INTERNAL_FIELDS:
            raise ApiError(400, f"{key}: unknown field of TuningJob (the server sets it)")
    for key in OTHER_SPECS:
        if get(body, key):
            raise ApiError(400, f"{key}: tunery supports supervised tuning only (supervisedTuningSpec)")
    for key in ("tunedModelDisplayName", "description"):
        str_field(get(body, key), key, 1024 if key == "description" else 128)
    labels = object_field(get(body, "labels"), "labels") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()) or len(labels) > 64:
        raise ApiError(400, "labels: expected at most 64 string keys with string values")
    spec = object_field(get(body, "supervisedTuningSpec"), "supervisedTuningSpec")
    where = "supervisedTuningSpec"
    train = str_field(get(spec, "trainingDatasetUri"), f"{where}.trainingDatasetUri")
    if not train:
        raise ApiError(400, f"{where}.trainingDatasetUri: required (the training dataset's path or URI)")
    object_field(get(spec, "hyperParameters"), f"{where}.hyperParameters")
    pre = object_field(get(body, "preTunedModel"), "preTunedModel")
    pre_tuned = None
    if pre:
        name = str_field(get(pre, "tunedModelName"), "preTunedModel.tunedModelName", 512)
        if not name:
            raise ApiError(400, "preTunedModel.tunedModelName: required (projects/P/locations/L/models/ID)")
        pre_tuned = PreTunedModel(name.rsplit("/", 1)[-1].split("@")[0],
                                  str_field(get(pre, "checkpointId"), "preTunedModel.checkpointId", 32))
    base = str_field(get(body, "baseModel"), "baseModel", 512)
    if not base and pre_tuned is None:
        raise ApiError(400, "baseModel: required (or preTunedModel to continue from a tuned model)")
    return CreateTuningJob(base, pre_tuned, train,
                           str_field(get(spec, "validationDatasetUri"), f"{where}.validationDatasetUri") or None,
                           hyperparameters(spec), bool_field(get(spec, "exportLastCheckpointOnly"),
                                                             f"{where}.exportLastCheckpointOnly"), evaluation(spec),
                           int_field(get(body, "workers"), "workers", 1, MAX_WORKERS) or 1)


def adapter_size(value: Any, field: str) -> int | None:
    if isinstance(value, bool):
        raise ApiError(400, f"{field}: expected one of {', '.join(ADAPTER_SIZES)}, found {value!r}")
    if value is None or value in ("ADAPTER_SIZE_UNSPECIFIED", 0):
        return None
    if isinstance(value, str) and value.upper() in ADAPTER_SIZES:
        return ADAPTER_SIZES[value.upper()]
    if isinstance(value, int) and value in OLD_SDK_ADAPTER_SIZES:  # proto JSON: an enum as its number
        return OLD_SDK_ADAPTER_SIZES[value]
    raise ApiError(400, f"{field}: expected one of {', '.join(ADAPTER_SIZES)} (or the enum's number: "
                        f"{', '.join(f'{n} for {ADAPTER_SIZE_NAMES[r]}' for n, r in OLD_SDK_ADAPTER_SIZES.items())}), "
                        f"found {value!r}")


# supervisedTuningSpec.hyperParameters fields: Vertex's SupervisedHyperParameters, and tunery's own last
HYPERPARAMETERS = ("epochCount", "learningRateMultiplier", "learningRate", "adapterSize", "batchSize",
                   "earlyStoppingPatience", "maxLength", "loraAlpha", "loraTargets", "learningRateSchedule")
MAX_LENGTH = 131_072  # tokens per example (the longest context tunery renders)


def enum_name(value: str) -> str:
    """The config's spelling as the wire's enum name: "all-linear" -> ALL_LINEAR."""
    return value.upper().replace("-", "_")


LORA_TARGETS = tuple(map(enum_name, config.LORA_TARGETS))  # ALL_LINEAR, ATTENTION, MLP
LR_SCHEDULES = tuple(map(enum_name, config.LR_SCHEDULES))  # LINEAR, COSINE, CONSTANT


def enum_field(value: Any, field: str, names: tuple[str, ...]) -> str | None:
    """An enum given by name (either case; hyphens for underscores): the config's spelling, e.g. ALL_LINEAR ->
    "all-linear"; None when absent."""
    text = str_field(value, field, 64)
    if text is None:
        return None
    if enum_name(text) not in names:
        raise ApiError(400, f"{field}: expected one of {', '.join(names)}, found {text!r}")
    return text.lower().replace("_", "-")


def hyperparameters(spec: dict) -> dict:
    """TuningConfig fields from supervisedTuningSpec.hyperParameters (validated, with field paths in errors). An
    unknown field is an error, as on Vertex: a misspelt one would otherwise tune silently with the default."""
    hp = get(spec, "hyperParameters") or {}
    where = "supervisedTuningSpec.hyperParameters"
    known = set(HYPERPARAMETERS) | {_snake(k) for k in HYPERPARAMETERS}
    if unknown := [k for k in hp if k not in known]:
        raise ApiError(400, f"{where}.{unknown[0]}: unknown field; expected one of {', '.join(HYPERPARAMETERS)}")
    out = {"epochs": int_field(get(hp, "epochCount"), f"{where}.epochCount", 1, 100),
           "learning_rate_multiplier": float_field(get(hp, "learningRateMultiplier"), f"{where}.learningRateMultiplier", 0, 100),
           "adapter_size": adapter_size(get(hp, "adapterSize"), f"{where}.adapterSize"),
           "batch_size": int_field(get(hp, "batchSize"), f"{where}.batchSize", 1, 4096),
           "learning_rate": float_field(get(hp, "learningRate"), f"{where}.learningRate", 0, 1),
           # tunery's own: stop after this many validation passes without a better loss (Vertex has no such field)
           "early_stopping_patience": int_field(get(hp, "earlyStoppingPatience"), f"{where}.earlyStoppingPatience",
                                                1, 100),
           # tunery's own (docs/api.md): tokens per example, LoRA alpha and target layers, the decay after warmup
           "max_length": int_field(get(hp, "maxLength"), f"{where}.maxLength", 8, MAX_LENGTH),
           "lora_alpha": float_field(get(hp, "loraAlpha"), f"{where}.loraAlpha", 0, 1024),
           "lora_targets": enum_field(get(hp, "loraTargets"), f"{where}.loraTargets", LORA_TARGETS),
           "lr_schedule": enum_field(get(hp, "learningRateSchedule"), f"{where}.learningRateSchedule", LR_SCHEDULES)}
    mode = get(spec, "tuningMode")
    if mode not in (None, "TUNING_MODE_UNSPECIFIED", "TUNING_MODE_PEFT_ADAPTER"):
        raise ApiError(400, f"supervisedTuningSpec.tuningMode: expected TUNING_MODE_PEFT_ADAPTER, found {mode!r} "
                            "(tunery tunes LoRA adapters)")
    return {k: v for k, v in out.items() if v is not None}


EVAL_TASKS = ("summarization", "qa", "classification", "generation")


def evaluation(spec: dict) -> dict | None:
    """The after-tuning evaluation from supervisedTuningSpec.evaluationConfig, or None. Vertex's `metrics`,
    `outputConfig` and `autoraterConfig` are accepted and not used: tunery computes the seeds' metrics for the task.
    `inferenceGenerationConfig` sets decoding. tunery's own fields (docs/api.md): `datasetUri` (default: the
    validation dataset), `task` (default: from the metric specs, else inferred from the references) and `limit`
    (examples, default 100)."""
    where = "supervisedTuningSpec.evaluationConfig"
    ec = object_field(get(spec, "evaluationConfig"), where)
    if ec is None:
        return None
    task = str_field(get(ec, "task"), f"{where}.task", 64) or _task_of_metrics(get(ec, "metrics"))
    if task is not None and task not in EVAL_TASKS:
        raise ApiError(400, f"{where}.task: expected one of {', '.join(EVAL_TASKS)}, found {task!r}")
    gen = object_field(get(ec, "inferenceGenerationConfig"), f"{where}.inferenceGenerationConfig") or {}
    temperature = get(gen, "temperature")
    return {"dataset": str_field(get(ec, "datasetUri"), f"{where}.datasetUri"), "task": task,
            "limit": int_field(get(ec, "limit"), f"{where}.limit", 1, 100_000) or 100,
            "max_output_tokens": int_field(get(gen, "maxOutputTokens"), f"{where}.inferenceGenerationConfig.maxOutputTokens",
                                      1, 8192) or 256,
            "temperature": 0.0 if temperature is None else _float_or_zero(temperature, f"{where}.inferenceGenerationConfig.temperature")}


def _task_of_metrics(metrics: Any) -> str | None:
    """The seeds' task behind Vertex metric specs the SDK sends: exact_match -> qa, bleu -> generation,
    rouge -> summarization (the first one that says)."""
    for m in metrics if isinstance(metrics, list) else []:
        keys = {k.replace("_", "").lower() for k in m} if isinstance(m, dict) else set()  # either spelling
        for spec, task in (("exactmatchspec", "qa"), ("bleuspec", "generation"), ("rougespec", "summarization")):
            if spec in keys:
                return task
    return None


def _float_or_zero(value: Any, field: str) -> float:
    return 0.0 if value == 0 else float_field(value, field, 0, 2)  # type: ignore[return-value]


def evaluate_dataset_runs(job: Job, status: dict | None) -> list[dict] | None:
    """Vertex's `evaluateDatasetRuns` for a job with an evaluation: where its report is, or why it failed."""
    if not status:
        return None
    run: dict[str, Any] = {"evaluationRun": f"{job.name}/evaluationReport"}
    if status.get("error"):
        run["error"] = status["error"]
    return [run]


# ---------------------------------------------------------------- responses

def job_json(job: Job, model: Model | None, endpoints: list[Endpoint], evaluation_status: dict | None = None) -> dict:
    req = job.request
    out: dict[str, Any] = {"name": job.name, "state": job.state, "createTime": job.create_time, "updateTime": job.update_time}
    for key in ("tunedModelDisplayName", "description", "labels", "baseModel", "preTunedModel"):
        if req.get(key) is not None:
            out[key] = req[key]
    spec = dict(req.get("supervisedTuningSpec") or {})
    cfg = req.get("_config", {})
    hp = dict(spec.get("hyperParameters") or {})
    if "epochs" in cfg and cfg["epochs"] is not None:
        hp["epochCount"] = str(cfg["epochs"])
    hp["adapterSize"] = ADAPTER_SIZE_NAMES[cfg.get("adapter_size") or config.DEFAULT_ADAPTER_SIZE]
    hp.setdefault("learningRateMultiplier", cfg.get("learning_rate_multiplier", 1.0))
    spec["hyperParameters"] = hp
    out["supervisedTuningSpec"] = spec
    if job.start_time:
        out["startTime"] = job.start_time
    if job.end_time:
        out["endTime"] = job.end_time
    if job.detail_state and job.state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
        out["tuningJobState"] = job.detail_state
    if job.error:
        out["error"] = job.error
    if job.stats:
        out["tuningDataStats"] = {"supervisedTuningDataStats": job.stats}
    if job.metadata:
        out["tuningJobMetadata"] = {k: str(v) for k, v in job.metadata.items()}
    if metadata.has_experiment(job):  # never before the context exists (the vertexai SDK reads it at once)
        out["experiment"] = metadata.experiment_name(job)
    if model is not None:
        out["tunedModel"] = tuned_model_json(model, endpoints)
    if runs := evaluate_dataset_runs(job, evaluation_status):
        out["evaluateDatasetRuns"] = runs
    return out


def tuned_model_json(model: Model, endpoints: list[Endpoint]) -> dict:
    by_ckpt = {e.checkpoint_id: e.name for e in endpoints if e.deployed}
    return {"model": f"{model.name}@1", "endpoint": by_ckpt.get(None),
            "checkpoints": [{"checkpointId": c["checkpointId"], "epoch": str(c["epoch"]), "step": str(c["step"]),
                             "endpoint": by_ckpt.get(c["checkpointId"])} for c in model.checkpoints]}


def model_json(model: Model, endpoints: list[Endpoint]) -> dict:
    final = next((e for e in endpoints if e.checkpoint_id is None and e.deployed), None)
    return {"name": model.name, "displayName": model.display_name or f"tuned-{model.id}", "description": model.description or "",
            "versionId": "1", "createTime": model.create_time, "updateTime": model.update_time,
            "labels": {**(model.labels or {}), "google-vertex-llm-tuning-base-model-id": model.base_model},
            "deployedModels": [{"endpoint": final.name, "deployedModelId": model.id}] if final else [],
            "defaultCheckpointId": default_checkpoint_id(model.checkpoints),
            "checkpoints": [{"checkpointId": c["checkpointId"], "epoch": str(c["epoch"]), "step": str(c["step"])}
                            for c in model.checkpoints]}


def default_checkpoint_id(checkpoints: list[dict]) -> str | None:
    """The checkpoint the tuning chose (lowest validation loss, tunery/train/selection.py); the last for models
    tuned before it chose."""
    chosen = [c for c in checkpoints if c.get("default")]
    return (chosen or checkpoints or [{}])[-1].get("checkpointId")
