"""Tuning jobs and tuned models on the wire: the create request's hyperparameters and evaluationConfig parsed
(camelCase or snake_case, enums as names or the old SDK's numbers, int64 as strings), and TuningJob / Model
rendered (camelCase, full resource names). Stored rows never leave without passing here."""

from __future__ import annotations

from typing import Any

from tunery import config
from tunery.api.errors import ApiError
from tunery.api.wire import fields, metadata
from tunery.api.wire.common import _snake, bool_field, float_field, get, int_field, object_field, str_field
from tunery.jobs import states
from tunery.jobs.spec import Evaluation, JobRequest, PreTuned
from tunery.jobs.store import Endpoint, Job, Model

ADAPTER_SIZES, ADAPTER_SIZE_NAMES = fields.ADAPTER_SIZES, fields.ADAPTER_SIZE_NAMES
OLD_SDK_ADAPTER_SIZES = {1: 1, 6: 2, 2: 4, 3: 8, 4: 16}  # proto enum numbers (google-cloud-aiplatform)


MAX_WORKERS = 64  # data-parallel workers one job may ask for (`workers`, a tunery field)
# A TuningJob create body's fields, camelCase (snake_case is read too). Google's APIs refuse fields they do not
# define; so does tunery. Of the fields Vertex defines, each is honoured, ignored (output only, as Google ignores
# them on create), accepted with a warning on the job, or refused with the reason (docs/api.md lists each).
HONOURED = ("baseModel", "supervisedTuningSpec", "preferenceOptimizationSpec", "tunedModelDisplayName", "description",
            "labels", "preTunedModel", "workers")  # workers: tunery's own
OUTPUT_ONLY = ("name", "state", "createTime", "startTime", "endTime", "updateTime", "error", "experiment",
               "tunedModel", "tuningDataStats", "evaluateDatasetRuns", "tuningJobState", "tuningJobMetadata",
               "pipelineJob", "satisfiesPzs", "satisfiesPzi")
WARNED = {"serviceAccount": "serviceAccount is not used: tuning runs as the user that runs the tunery server"}
REFUSED = {
    "encryptionSpec": "tunery does not encrypt with customer-managed keys; its artifacts are files under the "
                      "server's home (use disk encryption there), so remove encryptionSpec",
    "outputUri": "tunery keeps a job's artifacts under the server's home (or --artifacts); remove outputUri",
    "customBaseModel": "name a local model directory (under an --allow-path root) in baseModel instead",
    "gcsMetricsUri": "tunery serves a job's metrics itself (the job's /metrics, the Experiments and TensorBoard "
                     "routes); remove gcsMetricsUri",
    **{k: "tunery supports supervised and preference tuning (supervisedTuningSpec, preferenceOptimizationSpec)"
       for k in ("distillationSpec", "reinforcementTuningSpec", "fullFineTuningSpec",
        "partnerModelTuningSpec", "veoTuningSpec", "veoLoraTuningSpec", "distillationSamplingSpec")}}
SPEC_FIELDS = ("trainingDatasetUri", "validationDatasetUri", "hyperParameters", "exportLastCheckpointOnly",
               "tuningMode", "evaluationConfig")
PREFERENCE_SPEC_FIELDS = ("trainingDatasetUri", "validationDatasetUri", "hyperParameters", "exportLastCheckpointOnly")
EVAL_FIELDS = ("metrics", "outputConfig", "autoraterConfig", "inferenceGenerationConfig", "datasetUri", "task", "limit")
PRE_TUNED_FIELDS = ("tunedModelName", "checkpointId", "baseModel")


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def known_fields(obj: dict, allowed: tuple[str, ...], where: str, kind: str) -> None:
    """Refuse a field `allowed` does not name (either spelling), with its path."""
    for key in obj:
        if not isinstance(key, str) or _camel(key) not in allowed:
            raise ApiError(400, f"{where}{key!s:.100}: unknown field of {kind}; expected one of {', '.join(allowed)}")


def parse_create(body: Any, door: str = "vertex") -> JobRequest:
    """A tuningJobs.create body as a JobRequest: every field's type and range checked once, here; a field the
    API does not define refused."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a TuningJob object, found {type(body).__name__}")
    warnings = []
    for key in body:
        name = _camel(key) if isinstance(key, str) else key
        if name in REFUSED and get(body, name) not in (None, {}, ""):
            raise ApiError(400, f"{name}: {REFUSED[name]}")
        if name in WARNED:
            warnings.append(WARNED[name])
        elif name not in HONOURED and name not in OUTPUT_ONLY and name not in REFUSED:
            raise ApiError(400, f"{key!s:.100}: unknown field of TuningJob; expected one of {', '.join(HONOURED)}")
    for key in ("tunedModelDisplayName", "description"):
        str_field(get(body, key), key, 1024 if key == "description" else 128)
    labels = object_field(get(body, "labels"), "labels") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()) or len(labels) > 64:
        raise ApiError(400, "labels: expected at most 64 string keys with string values")
    supervised = object_field(get(body, "supervisedTuningSpec"), "supervisedTuningSpec")
    preferred = object_field(get(body, "preferenceOptimizationSpec"), "preferenceOptimizationSpec")
    if supervised and preferred:
        raise ApiError(400, "preferenceOptimizationSpec: expected one tuning spec, found supervisedTuningSpec too "
                            "(to tune on preferences after supervised tuning, create a second job with preTunedModel)")
    where = "preferenceOptimizationSpec" if preferred else "supervisedTuningSpec"
    spec = (preferred if preferred else supervised) or {}
    if preferred:
        known_fields(spec, PREFERENCE_SPEC_FIELDS, f"{where}.", "PreferenceOptimizationSpec")
    else:
        known_fields(spec, SPEC_FIELDS, f"{where}.", "SupervisedTuningSpec")
    train = str_field(get(spec, "trainingDatasetUri"), f"{where}.trainingDatasetUri")
    if not train:
        raise ApiError(400, f"{where}.trainingDatasetUri: required (the training dataset's path or URI)")
    object_field(get(spec, "hyperParameters"), f"{where}.hyperParameters")
    pre = object_field(get(body, "preTunedModel"), "preTunedModel")
    pre_tuned = None
    if pre:
        known_fields(pre, PRE_TUNED_FIELDS, "preTunedModel.", "PreTunedModel")
        name = str_field(get(pre, "tunedModelName"), "preTunedModel.tunedModelName", 512)
        if not name:
            raise ApiError(400, "preTunedModel.tunedModelName: required (projects/P/locations/L/models/ID)")
        pre_tuned = PreTuned(name.rsplit("/", 1)[-1].split("@")[0],
                             str_field(get(pre, "checkpointId"), "preTunedModel.checkpointId", 32))
    base = str_field(get(body, "baseModel"), "baseModel", 512)
    if not base and pre_tuned is None:
        raise ApiError(400, "baseModel: required (or preTunedModel to continue from a tuned model)")
    hp = hyperparameters(spec, where)
    if get(spec, "exportLastCheckpointOnly") is not None:
        hp["export_last_checkpoint_only"] = bool_field(get(spec, "exportLastCheckpointOnly"),
                                                       f"{where}.exportLastCheckpointOnly")
    return JobRequest(door=door, train=train, base_model=None if pre_tuned else base,
                      validation=str_field(get(spec, "validationDatasetUri"), f"{where}.validationDatasetUri") or None,
                      hyperparameters=hp, evaluation=None if preferred else evaluation(spec),
                      workers=int_field(get(body, "workers"), "workers", 1, MAX_WORKERS) or 1, pre_tuned=pre_tuned,
                      display_name=get(body, "tunedModelDisplayName"), description=get(body, "description"),
                      labels=labels, warnings=tuple(warnings))


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


def hyperparameters(spec: dict, spec_name: str = "supervisedTuningSpec") -> dict:
    """TuningConfig fields from the spec's hyperParameters (validated, with field paths in errors). An unknown
    field is an error, as on Vertex: a misspelt one would otherwise tune silently with the default. A
    preferenceOptimizationSpec also takes `beta` and makes the job a preference (DPO) job."""
    hp = get(spec, "hyperParameters") or {}
    where = f"{spec_name}.hyperParameters"
    preference = spec_name == "preferenceOptimizationSpec"
    names = HYPERPARAMETERS + (("beta",) if preference else ())
    known = set(names) | {_snake(k) for k in names}
    if unknown := [k for k in hp if k not in known]:
        raise ApiError(400, f"{where}.{unknown[0]}: unknown field; expected one of {', '.join(names)}")
    r = config.RANGES
    out = {"epochs": int_field(get(hp, "epochCount"), f"{where}.epochCount", *r["epochs"]),
           "learning_rate_multiplier": float_field(get(hp, "learningRateMultiplier"), f"{where}.learningRateMultiplier",
                                                   *r["learning_rate_multiplier"]),
           "adapter_size": adapter_size(get(hp, "adapterSize"), f"{where}.adapterSize"),
           "batch_size": int_field(get(hp, "batchSize"), f"{where}.batchSize", *r["batch_size"]),
           "learning_rate": float_field(get(hp, "learningRate"), f"{where}.learningRate", *r["learning_rate"]),
           # tunery's own: stop after this many validation passes without a better loss (Vertex has no such field)
           "early_stopping_patience": int_field(get(hp, "earlyStoppingPatience"), f"{where}.earlyStoppingPatience",
                                                *r["early_stopping_patience"]),
           # tunery's own (docs/api.md): tokens per example, LoRA alpha and target layers, the decay after warmup
           "max_length": int_field(get(hp, "maxLength"), f"{where}.maxLength", *r["max_length"]),
           "lora_alpha": float_field(get(hp, "loraAlpha"), f"{where}.loraAlpha", *r["lora_alpha"]),
           "lora_targets": enum_field(get(hp, "loraTargets"), f"{where}.loraTargets", LORA_TARGETS),
           "lr_schedule": enum_field(get(hp, "learningRateSchedule"), f"{where}.learningRateSchedule", LR_SCHEDULES)}
    if preference:
        out |= {"method": "preference", "beta": float_field(get(hp, "beta"), f"{where}.beta", *r["beta"])}
    mode = get(spec, "tuningMode")
    if mode not in (None, "TUNING_MODE_UNSPECIFIED", "TUNING_MODE_PEFT_ADAPTER"):
        raise ApiError(400, f"supervisedTuningSpec.tuningMode: expected TUNING_MODE_PEFT_ADAPTER, found {mode!r} "
                            "(tunery tunes LoRA adapters)")
    return {k: v for k, v in out.items() if v is not None}


EVAL_TASKS = ("summarization", "qa", "classification", "generation")


def evaluation(spec: dict) -> Evaluation | None:
    """The after-tuning evaluation from supervisedTuningSpec.evaluationConfig, or None. Vertex's `metrics`,
    `outputConfig` and `autoraterConfig` are accepted and not used: tunery computes the seeds' metrics for the task.
    `inferenceGenerationConfig` sets decoding. tunery's own fields (docs/api.md): `datasetUri` (default: the
    validation dataset), `task` (default: from the metric specs, else inferred from the references) and `limit`
    (examples, default 100)."""
    where = "supervisedTuningSpec.evaluationConfig"
    ec = object_field(get(spec, "evaluationConfig"), where)
    if ec is None:
        return None
    known_fields(ec, EVAL_FIELDS, f"{where}.", "EvaluationConfig")
    task = str_field(get(ec, "task"), f"{where}.task", 64) or _task_of_metrics(get(ec, "metrics"))
    if task is not None and task not in EVAL_TASKS:
        raise ApiError(400, f"{where}.task: expected one of {', '.join(EVAL_TASKS)}, found {task!r}")
    gen = object_field(get(ec, "inferenceGenerationConfig"), f"{where}.inferenceGenerationConfig") or {}
    temperature = get(gen, "temperature")
    return Evaluation(
        dataset=str_field(get(ec, "datasetUri"), f"{where}.datasetUri"), task=task,
        limit=int_field(get(ec, "limit"), f"{where}.limit", 1, 100_000) or 100,
        max_output_tokens=int_field(get(gen, "maxOutputTokens"), f"{where}.inferenceGenerationConfig.maxOutputTokens",
                                    1, 8192) or 256,
        temperature=0.0 if temperature is None else _float_or_zero(temperature,
                                                                   f"{where}.inferenceGenerationConfig.temperature"))


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

def _spec_json(job: Job) -> dict:
    """supervisedTuningSpec as the job runs it: the datasets as the client named them, every hyperparameter
    Vertex defines (resolved), and tunery's own where the client set them."""
    spec, tc = job.spec, job.spec.tuning
    hp: dict[str, Any] = {"learningRateMultiplier": tc.learning_rate_multiplier,
                          "adapterSize": ADAPTER_SIZE_NAMES[tc.adapter_size]}
    if tc.epochs is not None:
        hp["epochCount"] = str(tc.epochs)
    sent = spec.sent()
    for key, value in sent.items():  # the rest only where the client set them (older SDKs do not know them all)
        if key in ("batch_size", "early_stopping_patience", "max_length", "learning_rate", "lora_alpha"):
            hp[fields.HP_VERTEX[key]] = str(value) if isinstance(value, int) else value
        elif key in ("lora_targets", "lr_schedule"):
            hp[fields.HP_VERTEX[key]] = enum_name(value)
    if tc.method == "preference":
        hp["beta"] = tc.beta
    out: dict[str, Any] = {"trainingDatasetUri": spec.train_uri, "hyperParameters": hp}
    if "export_last_checkpoint_only" in sent:
        out["exportLastCheckpointOnly"] = tc.export_last_checkpoint_only
    if spec.validation_uri:
        out["validationDatasetUri"] = spec.validation_uri
    if ev := spec.evaluation:
        out["evaluationConfig"] = {"datasetUri": ev.dataset, "limit": ev.limit,
                                   "inferenceGenerationConfig": {"maxOutputTokens": ev.max_output_tokens,
                                                                 "temperature": ev.temperature},
                                   **({"task": ev.task} if ev.task else {})}
    return out


SPEC_KEY = {"supervised": "supervisedTuningSpec", "preference": "preferenceOptimizationSpec"}
STATS_KEY = {"supervised": "supervisedTuningDataStats", "preference": "preferenceOptimizationDataStats"}


def job_json(job: Job, model: Model | None, endpoints: list[Endpoint], evaluation_status: dict | None = None) -> dict:
    spec = job.spec
    # Vertex has no PAUSING: a job pausing still runs until its step ends and its state is saved
    out: dict[str, Any] = {"name": job.name, "state": states.RUNNING if job.state == states.PAUSING else job.state,
                           "createTime": job.create_time,
                           "updateTime": job.update_time, "baseModel": spec.base_model,
                           SPEC_KEY[spec.tuning.method]: _spec_json(job)}
    for key, value in (("tunedModelDisplayName", spec.display_name), ("description", spec.description),
                       ("labels", spec.labels or None)):
        if value is not None:
            out[key] = value
    if spec.pre_tuned:
        out["preTunedModel"] = {"tunedModelName": f"projects/{job.project}/locations/{job.location}/models/"
                                                  f"{spec.pre_tuned.model_id}@1",  # tuned models have one version
                                **({"checkpointId": spec.pre_tuned.checkpoint_id} if spec.pre_tuned.checkpoint_id
                                   else {}), "baseModel": spec.base_model}
    if job.start_time:
        out["startTime"] = job.start_time
    if job.end_time:
        out["endTime"] = job.end_time
    if job.detail_state and job.state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
        out["tuningJobState"] = job.detail_state
    if job.error:
        out["error"] = job.error
    if job.stats:
        out["tuningDataStats"] = {STATS_KEY[spec.tuning.method]: job.stats}
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


EXPORT_FORMATS = ("gguf",)  # models.export: what tunery writes (exportFormatId)


def parse_export(body: Any) -> str | None:
    """A models.export body ({outputConfig: {exportFormatId, artifactDestination: {outputUriPrefix}}}): the
    destination directory asked for (None: the server's default), every other field refused."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected an ExportModelRequest object, found {type(body).__name__}")
    known_fields(body, ("outputConfig",), "", "ExportModelRequest")
    config = object_field(get(body, "outputConfig"), "outputConfig")
    if config is None:
        raise ApiError(400, f"outputConfig: required, with exportFormatId one of {', '.join(EXPORT_FORMATS)}")
    known_fields(config, ("exportFormatId", "artifactDestination"), "outputConfig.", "ExportModelRequest.OutputConfig")
    fmt = str_field(get(config, "exportFormatId"), "outputConfig.exportFormatId", 64)
    if fmt not in EXPORT_FORMATS:
        raise ApiError(400, f"outputConfig.exportFormatId: expected one of {', '.join(EXPORT_FORMATS)} (GGUF files "
                            f"for llama.cpp and Ollama), found {fmt!r:.60}")
    dest = object_field(get(config, "artifactDestination"), "outputConfig.artifactDestination") or {}
    known_fields(dest, ("outputUriPrefix",), "outputConfig.artifactDestination.", "GcsDestination")
    return str_field(get(dest, "outputUriPrefix"), "outputConfig.artifactDestination.outputUriPrefix")
