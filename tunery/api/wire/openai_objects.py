"""The objects the OpenAI-compatible API answers with, rendered from stored rows: fine_tuning.job (+ events and
checkpoints), file, model, chat.completion and its chunks. A job is the Vertex job; these are its OpenAI names."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from typing import Any

from tunery.api.wire.openai import ORG, checkpoint_name, ft_name
from tunery.config import TuningConfig
from tunery.jobs import states
from tunery.jobs.store import File, Job, Model
from tunery.serve.generate import Generation
from tunery.train import metrics as mt
from tunery.train import preference as pt

JOB_PREFIX = "ftjob-"
STATUS = {states.PENDING: "queued", states.RUNNING: "running", states.SUCCEEDED: "succeeded",
          states.FAILED: "failed", states.CANCELLED: "cancelled",
          # OpenAI has no "cancelling": once cancel is accepted the job will end cancelled and make no model
          states.CANCELLING: "cancelled", states.PAUSING: "pausing", states.PAUSED: "paused"}
# metrics.jsonl (Vertex names) -> OpenAI's metric names
METRICS = {mt.TRAIN_LOSS: "train_loss", mt.TRAIN_ACCURACY: "train_mean_token_accuracy",
           mt.EVAL_LOSS: "valid_loss", mt.EVAL_ACCURACY: "valid_mean_token_accuracy",
           # preference (DPO) jobs: the reward accuracy and margin against the reference, the answers' log-probs
           pt.TRAIN_REWARD_ACCURACY: "train_reward_accuracy", pt.TRAIN_REWARD_MARGIN: "train_reward_margin",
           pt.TRAIN_CHOSEN_LOGPS: "train_chosen_logps", pt.TRAIN_REJECTED_LOGPS: "train_rejected_logps",
           pt.EVAL_REWARD_ACCURACY: "valid_reward_accuracy", pt.EVAL_REWARD_MARGIN: "valid_reward_margin"}
FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
ERROR_CODES = {3: "invalid_training_file", 8: "resource_exhausted"}  # google.rpc.Code -> a code OpenAI clients read


def unix(ts: str | None) -> int | None:
    """Unix seconds of a stored RFC 3339 timestamp."""
    if not ts:
        return None
    return int(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp())


def job_id(job: Job) -> str:
    """The OpenAI id of a job."""
    return JOB_PREFIX + job.id


def base_label(job: Job) -> str:
    """The base model as the client named it (its resolved registry name when it gave none)."""
    return job.spec.requested_base_model or job.spec.base_model


def tuned_name(job: Job) -> str | None:
    """The ft: name of a job's tuned model (None before it has one)."""
    if not job.model_id:
        return None
    return ft_name(base_label(job), job.spec.openai.suffix if job.spec.openai else None, job.model_id)


def file_json(f: File) -> dict:
    """An OpenAI file object."""
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "status_details": None, "expires_at": None}


def _hyperparameters(tc: TuningConfig) -> dict:
    """The job's hyperparameters as OpenAI names them (defaults filled in)."""
    return {"n_epochs": tc.epochs or "auto", "batch_size": tc.batch_size,
            "learning_rate_multiplier": tc.learning_rate_multiplier}


def job_json(job: Job, model_name: str | None) -> dict:
    """A fine_tuning.job. Jobs created through the Vertex API name their dataset URIs where OpenAI names files."""
    spec, oa = job.spec, job.spec.openai
    hp = _hyperparameters(spec.tuning)
    error = None
    if job.state == states.FAILED and job.error:
        error = {"code": ERROR_CODES.get(job.error.get("code"), "internal_error"), "message": job.error.get("message", ""),
                 "param": None}
    done = job.state == states.SUCCEEDED
    return {"id": job_id(job), "object": "fine_tuning.job", "created_at": unix(job.create_time), "error": error,
            "fine_tuned_model": model_name if done else None,
            "finished_at": unix(job.end_time) if job.state in states.ENDED else None, "hyperparameters": hp,
            "model": base_label(job), "organization_id": ORG,
            "result_files": [RESULTS_PREFIX + job.id] if done else [],
            "seed": spec.tuning.seed, "status": STATUS[job.state],
            "trained_tokens": (job.stats or {}).get("totalBillableTokenCount") if done else None,
            "training_file": oa.training_file if oa else spec.train_uri,
            "validation_file": oa.validation_file if oa else spec.validation_uri,
            "estimated_finish": None, "integrations": [], "metadata": spec.labels or None,
            "method": ({"type": "dpo", "dpo": {"hyperparameters": {**hp, "beta": spec.tuning.beta}}}
                       if spec.tuning.method == "preference" else {"type": "supervised", "supervised": {"hyperparameters": hp}}),
            "user_provided_suffix": oa.suffix if oa else None}


RESULTS_PREFIX = "file-results-"  # a job's step metrics as a CSV "file", made from metrics.jsonl when asked for
RESULTS_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def results_csv(records: list[dict]) -> str:
    """OpenAI's step_metrics.csv: one row per logged step, empty cells where a metric was not logged."""
    rows = [",".join(RESULTS_COLUMNS)]
    for step, m in sorted(metrics_by_step(records).items()):
        m = {**m, "train_accuracy": m.get("train_mean_token_accuracy")}
        rows.append(",".join("" if m.get(c) is None else str(m[c]) for c in RESULTS_COLUMNS))
    return "\n".join(rows) + "\n"


def results_file_json(job: Job, size: int) -> dict:
    """The file object of a job's results CSV."""
    return {"id": RESULTS_PREFIX + job.id, "object": "file", "bytes": size, "created_at": unix(job.end_time) or 0,
            "filename": "step_metrics.csv", "purpose": "fine-tune-results", "status": "processed",
            "status_details": None, "expires_at": None}


def metrics_by_step(records: list[dict]) -> dict[int, dict]:
    """{step: {OpenAI metric name: value}} from metrics.jsonl records (train and eval records of a step merged)."""
    out: dict[int, dict] = {}
    for r in records:
        values = {METRICS[k]: v for k, v in r.items() if k in METRICS}
        if values:
            out.setdefault(r["step"], {"step": r["step"], "time": r.get("time")}).update(values)
    return out


def _event(event_id: str, at: int | None, message: str, level: str = "info", data: dict | None = None) -> dict:
    return {"id": event_id, "object": "fine_tuning.job.event", "created_at": at or 0, "level": level,
            "message": message, "type": "metrics" if data else "message", "data": data or {}}


def _step_message(m: dict, total: int | None) -> str:
    parts = [f"{label}={m[key]:.4f}" for key, label in (("train_loss", "training loss"),
                                                          ("valid_loss", "validation loss")) if key in m]
    return f"Step {m['step']}/{total or '?'}: " + ", ".join(parts)


def events(job: Job, model: Model | None, model_name: str | None, records: list[dict]) -> list[dict]:
    """The job's events, oldest first: status messages, a metrics event per logged step, checkpoints, the end."""
    prefix, oa = f"ftevent-{job.id}", job.spec.openai
    out = [_event(f"{prefix}-created", unix(job.create_time), f"Created fine-tuning job: {job_id(job)}")]
    out += [_event(f"{prefix}-warning-{i}", unix(job.create_time), text, "warn")
            for i, text in enumerate(job.spec.warnings)]
    if oa:
        out.append(_event(f"{prefix}-validated", unix(job.create_time), f"Validated training file: {oa.training_file}"))
    if job.start_time:
        out.append(_event(f"{prefix}-started", unix(job.start_time), "Fine-tuning job started"))
    total = (job.stats or {}).get("tuningStepCount")
    ckpts = {int(c["step"]): c for c in (model.checkpoints if model else [])}
    for step, m in sorted(metrics_by_step(records).items()):
        data = {k: v for k, v in m.items() if k != "time"} | {"total_steps": total}
        at = unix(m["time"]) if m.get("time") else None
        out.append(_event(f"{prefix}-step-{step}", at, _step_message(m, total), data=data))
        if step in ckpts and model_name:
            out.append(_event(f"{prefix}-ckpt-{step}", at, f"Checkpoint created at step {step}: "
                                                           f"{checkpoint_name(model_name, step)}"))
    if job.state == states.SUCCEEDED and model_name:
        out.append(_event(f"{prefix}-model", unix(job.end_time), f"New fine-tuned model created: {model_name}"))
        out.append(_event(f"{prefix}-end", unix(job.end_time), "The job has successfully completed"))
    elif job.state == states.CANCELLED:
        out.append(_event(f"{prefix}-end", unix(job.end_time), "Fine-tuning job cancelled"))
    elif job.state == states.FAILED:
        message = (job.error or {}).get("message", "unknown error")
        out.append(_event(f"{prefix}-end", unix(job.end_time), f"Fine-tuning job failed: {message}", "error"))
    return out


def checkpoints(job: Job, model: Model, model_name: str, records: list[dict]) -> list[dict]:
    """The job's checkpoints, newest first, each with the metrics logged at its step."""
    by_step = metrics_by_step(records)
    out = []
    for c in reversed(model.checkpoints):
        step = int(c["step"])
        m = {k: v for k, v in by_step.get(step, {"step": step}).items() if k != "time"}
        if "valid_loss" in m:  # tunery evaluates on the whole validation file: its loss is OpenAI's "full" one
            m |= {"full_valid_loss": m["valid_loss"], "full_valid_mean_token_accuracy": m.get("valid_mean_token_accuracy")}
        out.append({"id": f"ftckpt-{job.id}-{c['checkpointId']}", "object": "fine_tuning.job.checkpoint",
                    "created_at": unix(by_step.get(step, {}).get("time")) or unix(model.create_time),
                    "fine_tuned_model_checkpoint": checkpoint_name(model_name, step), "fine_tuning_job_id": job_id(job),
                    "step_number": step, "metrics": m})
    return out


def model_json(name: str, created: int | None, owned_by: str) -> dict:
    """An OpenAI model object."""
    return {"id": name, "object": "model", "created": created or 0, "owned_by": owned_by}


def page(items: list[dict], after: str | None, limit: int) -> dict:
    """A cursor page over items already in list order: the ones after the item `after`, at most `limit`."""
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


# ---------------------------------------------------------------- chat completions

def completion_id() -> str:
    """A fresh chat completion id."""
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(gens: list[Generation], model: str) -> dict:
    """A chat.completion: one choice per generation."""
    return {"id": completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": g.text, "refusal": None},
                         "finish_reason": FINISH.get(g.finish_reason, "stop"), "logprobs": None}
                        for i, g in enumerate(gens)],
            "usage": usage(gens[0].prompt_tokens, sum(g.output_tokens for g in gens)),
            "system_fingerprint": ORG}


def chunk(cid: str, created: int, model: str, delta: dict | None, finish: str | None = None,
          use: dict | None = None) -> dict:
    """A chat.completion.chunk: a delta, the finish reason, or (choices empty) the usage."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": ORG,
                           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                                 "logprobs": None}]}
    if use is not None:
        out["usage"] = use
    return out
