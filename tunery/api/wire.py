"""Vertex JSON shapes: parse requests (camelCase or snake_case, enums as names or the old SDK's numbers, int64 as
strings) and build responses (camelCase, full resource names). Stored rows never leave without passing here."""

from __future__ import annotations

import re
import secrets
from typing import Any

from tunery.api.errors import ApiError
from tunery.data.schema import Turn
from tunery.jobs.store import Endpoint, Job, Model, now
from tunery.serve.generate import Generation, GenerationConfig, Prompt

ADAPTER_SIZES = {"ADAPTER_SIZE_ONE": 1, "ADAPTER_SIZE_TWO": 2, "ADAPTER_SIZE_FOUR": 4, "ADAPTER_SIZE_EIGHT": 8,
                 "ADAPTER_SIZE_SIXTEEN": 16}
ADAPTER_SIZE_NAMES = {v: k for k, v in ADAPTER_SIZES.items()}
OLD_SDK_ADAPTER_SIZES = {1: 1, 6: 2, 2: 4, 3: 8, 4: 16}  # proto enum numbers (google-cloud-aiplatform)


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def get(d: dict | None, key: str, default: Any = None) -> Any:
    """A field by its camelCase name or its snake_case spelling (the SDK sends some pydantic dumps as-is)."""
    if not isinstance(d, dict):
        return default
    if key in d:
        return d[key]
    return d.get(_snake(key), default)


def _int(value: Any, field: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or not lo <= number <= hi:
        raise ApiError(400, f"{field}: expected a whole number from {lo} to {hi}, found {value!r}")
    return number


def _float(value: Any, field: str, lo: float, hi: float) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not lo < number <= hi:
        raise ApiError(400, f"{field}: expected a number in ({lo}, {hi}], found {value!r}")
    return number


def adapter_size(value: Any, field: str) -> int | None:
    if value is None or value in ("ADAPTER_SIZE_UNSPECIFIED", 0):
        return None
    if isinstance(value, str) and value.upper() in ADAPTER_SIZES:
        return ADAPTER_SIZES[value.upper()]
    if isinstance(value, int) and value in OLD_SDK_ADAPTER_SIZES:
        return OLD_SDK_ADAPTER_SIZES[value]
    raise ApiError(400, f"{field}: expected one of {', '.join(ADAPTER_SIZES)}, found {value!r}")


def hyperparameters(spec: dict) -> dict:
    """TuningConfig fields from supervisedTuningSpec.hyperParameters (validated, with field paths in errors)."""
    hp = get(spec, "hyperParameters") or {}
    where = "supervisedTuningSpec.hyperParameters"
    out = {"epochs": _int(get(hp, "epochCount"), f"{where}.epochCount", 1, 100),
           "learning_rate_multiplier": _float(get(hp, "learningRateMultiplier"), f"{where}.learningRateMultiplier", 0, 100),
           "adapter_size": adapter_size(get(hp, "adapterSize"), f"{where}.adapterSize"),
           "batch_size": _int(get(hp, "batchSize"), f"{where}.batchSize", 1, 4096),
           "learning_rate": _float(get(hp, "learningRate"), f"{where}.learningRate", 0, 1)}
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
    ec = get(spec, "evaluationConfig")
    if ec is None:
        return None
    where = "supervisedTuningSpec.evaluationConfig"
    if not isinstance(ec, dict):
        raise ApiError(400, f"{where}: expected an object, found {type(ec).__name__}")
    task = get(ec, "task") or _task_of_metrics(get(ec, "metrics"))
    if task is not None and task not in EVAL_TASKS:
        raise ApiError(400, f"{where}.task: expected one of {', '.join(EVAL_TASKS)}, found {task!r}")
    gen = get(ec, "inferenceGenerationConfig") or {}
    temperature = get(gen, "temperature")
    return {"dataset": get(ec, "datasetUri"), "task": task,
            "limit": _int(get(ec, "limit"), f"{where}.limit", 1, 100_000) or 100,
            "max_output_tokens": _int(get(gen, "maxOutputTokens"), f"{where}.inferenceGenerationConfig.maxOutputTokens",
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
    return 0.0 if value == 0 else _float(value, field, 0, 2)  # type: ignore[return-value]


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
    hp["adapterSize"] = ADAPTER_SIZE_NAMES.get(cfg.get("adapter_size", 4), "ADAPTER_SIZE_FOUR")
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
    out["experiment"] = f"projects/{job.project}/locations/{job.location}/metadataStores/default/contexts/tuning-experiment-{job.id}"
    if model is not None:
        out["tunedModel"] = tuned_model_json(model, endpoints)
    if runs := evaluate_dataset_runs(job, evaluation_status):
        out["evaluateDatasetRuns"] = runs
    return out


def tuned_model_json(model: Model, endpoints: list[Endpoint]) -> dict:
    by_ckpt = {e.checkpoint_id: e.name for e in endpoints}
    return {"model": f"{model.name}@1", "endpoint": by_ckpt.get(None),
            "checkpoints": [{"checkpointId": c["checkpointId"], "epoch": str(c["epoch"]), "step": str(c["step"]),
                             "endpoint": by_ckpt.get(c["checkpointId"])} for c in model.checkpoints]}


def model_json(model: Model, endpoints: list[Endpoint]) -> dict:
    final = next((e for e in endpoints if e.checkpoint_id is None), None)
    return {"name": model.name, "displayName": model.display_name or f"tuned-{model.id}", "description": model.description or "",
            "versionId": "1", "createTime": model.create_time, "updateTime": model.update_time,
            "labels": {**(model.labels or {}), "google-vertex-llm-tuning-base-model-id": model.base_model},
            "deployedModels": [{"endpoint": final.name, "deployedModelId": model.id}] if final else [],
            "defaultCheckpointId": model.checkpoints[-1]["checkpointId"] if model.checkpoints else None,
            "checkpoints": [{"checkpointId": c["checkpointId"], "epoch": str(c["epoch"]), "step": str(c["step"])}
                            for c in model.checkpoints]}


# ---------------------------------------------------------------- generateContent

def _text_of(content: Any, where: str) -> str:
    if not isinstance(content, dict):
        raise ApiError(400, f"{where}: expected a Content object, found {type(content).__name__}")
    parts = get(content, "parts")
    if not isinstance(parts, list) or not parts:
        raise ApiError(400, f"{where}.parts: expected a non-empty list of parts")
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise ApiError(400, f"{where}.parts[{j}]: expected a part object")
        if get(part, "thought"):
            continue
        if "text" not in part:
            kind = next(iter(part), "empty part")
            raise ApiError(400, f"{where}.parts[{j}]: {kind} parts are not supported by text models; send text")
        texts.append(str(part["text"]))
    return "".join(texts)


def parse_generate(body: dict) -> tuple[Prompt, GenerationConfig, int]:
    """(prompt, generation config, candidate count) from a GenerateContentRequest."""
    contents = get(body, "contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "contents: expected at least one Content")
    turns = []
    for i, c in enumerate(contents):
        role = get(c, "role", "user") if isinstance(c, dict) else None
        if role not in ("user", "model"):
            raise ApiError(400, f"contents[{i}].role: expected \"user\" or \"model\", found {role!r}")
        turns.append(Turn(role, _text_of(c, f"contents[{i}]")))
    if turns[-1].role != "user":
        raise ApiError(400, f"contents[{len(turns) - 1}].role: the last turn must be from the user")
    system = get(body, "systemInstruction")
    system_text = _text_of(system, "systemInstruction") if system is not None else None
    gc = get(body, "generationConfig") or {}
    stops = get(gc, "stopSequences") or []
    if not isinstance(stops, list) or len(stops) > 5 or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "generationConfig.stopSequences: expected at most 5 strings")
    temperature = get(gc, "temperature")
    if temperature is not None and not 0 <= float(temperature) <= 2:
        raise ApiError(400, f"generationConfig.temperature: expected 0 to 2, found {temperature}")
    top_p = get(gc, "topP")
    if top_p is not None and not 0 < float(top_p) <= 1:
        raise ApiError(400, f"generationConfig.topP: expected a number in (0, 1], found {top_p}")
    config = GenerationConfig(
        max_output_tokens=_int(get(gc, "maxOutputTokens"), "generationConfig.maxOutputTokens", 1, 8192) or 256,
        temperature=float(temperature) if temperature is not None else 0.0,
        top_p=float(top_p) if top_p is not None else None,
        top_k=_int(get(gc, "topK"), "generationConfig.topK", 1, 1000),
        stop_sequences=tuple(stops), seed=_int(get(gc, "seed"), "generationConfig.seed", -(2**31), 2**31 - 1))
    n = _int(get(gc, "candidateCount"), "generationConfig.candidateCount", 1, 8) or 1
    return Prompt(tuple(turns), system_text), config, n


def response_json(gens: list[Generation], model_version: str) -> dict:
    prompt_tokens = gens[0].prompt_tokens
    out_tokens = sum(g.output_tokens for g in gens)
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": g.text}]}, "finishReason": g.finish_reason,
                            "index": i} for i, g in enumerate(gens)],
            "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                              "totalTokenCount": prompt_tokens + out_tokens, "trafficType": "ON_DEMAND"},
            "modelVersion": model_version, "responseId": secrets.token_hex(11), "createTime": now()}


def chunk_json(text: str, model_version: str, response_id: str) -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
            "modelVersion": model_version, "responseId": response_id, "createTime": now()}
