"""The create-tuning-job page. The dataset (uploaded, or a path under the server's allowed roots) is validated
first and the validator's findings are shown inline, with the text around each bad line; a valid dataset shows
its Vertex statistics. Creating calls the REST route's own create function with a Vertex request body."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import time
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunery import models
from tunery.api.errors import ApiError
from tunery.api.wire import tuning as wire
from tunery.config import ADAPTER_SIZES, DEFAULT_ADAPTER_SIZE, DEFAULT_BATCH_SIZE, default_epochs, load_settings
from tunery.console.common import LOCATION, PROJECT, USER_ERRORS, csrf, message_of, page_errors, render, svc
from tunery.data import preference, sources
from tunery.data.validate import MAX_FILE_BYTES, Limits, validate
from tunery.jobs import states

router = APIRouter()
BENCH_TOKENS_PER_SECOND = 354  # docs/benchmarks.md: SmolLM2-135M LoRA on 2 CPU cores, when no job has run here yet
MAX_ISSUES_SHOWN = 30
UPLOAD_TTL_SECONDS = 24 * 3600  # an upload no job uses is removed after this long (at the next upload)
LABELS = {  # Vertex field paths in error messages, as the form calls them
    "supervisedTuningSpec.hyperParameters.epochCount": "Epochs",
    "supervisedTuningSpec.hyperParameters.learningRateMultiplier": "Learning-rate multiplier",
    "supervisedTuningSpec.hyperParameters.adapterSize": "Adapter size",
    "supervisedTuningSpec.hyperParameters.batchSize": "Batch size",
    "supervisedTuningSpec.hyperParameters.loraAlpha": "LoRA alpha",
    "supervisedTuningSpec.hyperParameters.loraTargets": "LoRA targets",
    "supervisedTuningSpec.hyperParameters.learningRateSchedule": "Learning-rate schedule",
    "supervisedTuningSpec.hyperParameters.maxLength": "Max length",
    "supervisedTuningSpec.hyperParameters.earlyStoppingPatience": "Early-stopping patience",
    "--early-stopping-patience": "Early-stopping patience",
    "supervisedTuningSpec.trainingDatasetUri": "Training dataset",
    "supervisedTuningSpec.validationDatasetUri": "Validation dataset",
    "supervisedTuningSpec.evaluationConfig.datasetUri": "Evaluation dataset",
    "supervisedTuningSpec.evaluationConfig.task": "Evaluation task",
    "supervisedTuningSpec.evaluationConfig": "Evaluation",
    "baseModel": "Base model",
    "preferenceOptimizationSpec.hyperParameters.beta": "Beta",
}
LABELS |= {k.replace("supervisedTuningSpec", "preferenceOptimizationSpec"): v for k, v in list(LABELS.items())
           if k.startswith("supervisedTuningSpec")}
EMPTY_FORM = {"display_name": "", "description": "", "base_model": "gemini-2.0-flash-001", "train_path": "",
              "validation_path": "", "epochs": "", "lr_multiplier": "1.0", "adapter_size": "", "batch_size": "",
              "workers": "", "export_last_only": "", "eval_enabled": "", "eval_path": "", "eval_task": "",
              "lora_alpha": "", "lora_targets": "", "lr_schedule": "", "max_length": "", "early_stopping": "",
              "method": "supervised", "beta": ""}


def base_choices() -> list[dict]:
    """The registry's models and the Gemini aliases (plus config.toml's), each with what it resolves to."""
    settings = load_settings()
    out = []
    for name in [*models.REGISTRY, *sorted(models.GEMINI_ALIASES | set(settings.aliases))]:
        try:
            out.append({"value": name, "resolves": models.resolve(name, settings).name})
        except USER_ERRORS as exc:
            out.append({"value": name, "resolves": f"unavailable: {message_of(exc)[1]}"})
    return out


def _ctx(form: dict, **more) -> dict:
    return {"title": "Create tuning job", "form": form, "bases": base_choices(), "adapter_sizes": ADAPTER_SIZES,
            "default_adapter_size": DEFAULT_ADAPTER_SIZE, "default_batch_size": DEFAULT_BATCH_SIZE,
            "size_names": wire.ADAPTER_SIZE_NAMES, "tasks": wire.EVAL_TASKS, "lora_targets": wire.LORA_TARGETS,
            "lr_schedules": wire.LR_SCHEDULES, "check": None, "error": None, **more}


def _roots(request: Request) -> list[str]:
    return list(dict.fromkeys(str(r) for r in svc(request).settings.allowed_roots))


def _on_ray(request: Request) -> bool:
    """Whether jobs run on Ray: only then does the form offer data-parallel workers."""
    return svc(request).worker.executor.name == "ray"


@router.get("/console/new")
@page_errors
def new_page(request: Request) -> HTMLResponse:
    return render(request, "new.html", _ctx(dict(EMPTY_FORM), roots=_roots(request), on_ray=_on_ray(request)))


def _labelled(text: str) -> str:
    for path in sorted(LABELS, key=len, reverse=True):
        text = text.replace(path, LABELS[path])
    return text


def sweep_uploads(services, max_age_seconds: float = UPLOAD_TTL_SECONDS) -> list[Path]:
    """Remove uploads older than `max_age_seconds` that no job reads (a dataset checked and never tuned on);
    returns what went. An upload a job was created from stays as long as the job does."""
    used = {str(Path(p).parent) for job in services.store.jobs_in(*states.ALL)
            for p in (job.spec.tuning.train, job.spec.tuning.validation,
                      job.spec.evaluation.dataset if job.spec.evaluation else None) if p}
    gone, now = [], time.time()
    for folder in (services.settings.home / "uploads").glob("*"):
        try:
            old = now - folder.stat().st_mtime > max_age_seconds
        except FileNotFoundError:
            continue
        if old and str(folder) not in used and os.path.realpath(folder) not in used:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def _save(request: Request, upload: UploadFile | None) -> str | None:
    """An uploaded dataset, stored under the home's uploads/ (an allowed root); None when nothing was chosen. Old
    uploads no job uses are swept first."""
    if upload is None or not upload.filename:
        return None
    sweep_uploads(svc(request))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(upload.filename).name)[:100] or "dataset.jsonl"
    dest = svc(request).settings.home / "uploads" / secrets.token_hex(8) / name
    dest.parent.mkdir(parents=True)
    size = 0
    with dest.open("wb") as out:
        while block := upload.file.read(1 << 20):
            size += len(block)
            if size > MAX_FILE_BYTES:  # stop reading at once: the rest is never stored
                out.close()
                shutil.rmtree(dest.parent)
                raise ApiError(400, f"{upload.filename}: larger than 1 GiB, the most a dataset file may be; split it")
            out.write(block)
    return str(dest)


def _body(form: dict) -> dict:
    """The Vertex create request the form describes."""
    hp = {"epochCount": form["epochs"], "learningRateMultiplier": form["lr_multiplier"],
          "adapterSize": form["adapter_size"], "batchSize": form["batch_size"], "loraAlpha": form["lora_alpha"],
          "loraTargets": form["lora_targets"], "learningRateSchedule": form["lr_schedule"], "maxLength": form["max_length"],
          "earlyStoppingPatience": form["early_stopping"]}
    spec: dict = {"trainingDatasetUri": form["train_path"], "hyperParameters": {k: v.strip() for k, v in hp.items() if v.strip()}}
    if form["export_last_only"]:
        spec["exportLastCheckpointOnly"] = True
    if form["validation_path"]:
        spec["validationDatasetUri"] = form["validation_path"]
    if form["eval_enabled"]:
        spec["evaluationConfig"] = {k: v for k, v in (("datasetUri", form["eval_path"]), ("task", form["eval_task"])) if v}
    if form.get("method") == "preference":  # DPO on preference pairs: beta, and no after-tuning evaluation
        spec.pop("evaluationConfig", None)
        if form.get("beta", "").strip():
            spec["hyperParameters"]["beta"] = form["beta"].strip()
        body = {"baseModel": form["base_model"], "preferenceOptimizationSpec": spec}
    else:
        body = {"baseModel": form["base_model"], "supervisedTuningSpec": spec}
    if form.get("workers"):
        body["workers"] = form["workers"]  # checked (1..64) by the create route, as from the API
    for key, field in (("tunedModelDisplayName", "display_name"), ("description", "description")):
        if form[field]:
            body[key] = form[field]
    return body


def _around(path: str, line: int | None, radius: int = 2) -> list[dict]:
    """The example's text around a bad line (each line cut to 300 characters)."""
    if line is None:
        return []
    first = max(1, line - radius)
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = itertools.islice(f, first - 1, line + radius)
        return [{"n": first + i, "text": t.rstrip("\r\n")[:300] + ("…" if len(t) > 300 else ""), "bad": first + i == line}
                for i, t in enumerate(rows)]


def _throughput(request: Request, base: str) -> tuple[float, str]:
    """Training tokens per second on this machine: the last finished job of this base model, else the benchmark."""
    for job in svc(request).store.jobs_in(states.SUCCEEDED)[::-1]:
        tokens = (job.stats or {}).get("totalBillableTokenCount")
        if job.spec.base_model == base and tokens and job.start_time and job.end_time:
            seconds = (datetime.fromisoformat(job.end_time) - datetime.fromisoformat(job.start_time)).total_seconds()
            if seconds > 0:
                return tokens / seconds, f"measured on job {job.id} ({tokens / seconds:,.0f} tokens/s, start-up included)"
    return BENCH_TOKENS_PER_SECOND, f"{BENCH_TOKENS_PER_SECOND} tokens/s, docs/benchmarks.md (SmolLM2-135M, 2 CPU cores)"


def _check(request: Request, form: dict) -> dict:
    """Validate the datasets the form names; the findings or the statistics, as the page shows them."""
    settings = svc(request).settings
    if not form["train_path"]:
        raise ApiError(400, "Training dataset: upload a file or give a path under "
                            + ", ".join(map(str, settings.allowed_roots)))
    hp = wire.parse_create(_body(form), door="console").hyperparameters  # wrong types and ranges, named
    paths = {kind: sources.resolve(form[f"{kind}_path"], label, settings.allowed_roots, settings.allow_http_datasets,
                                   settings.allow_buckets)
             for kind, label in (("train", "Training dataset"), ("validation", "Validation dataset"))
             if form[f"{kind}_path"]}
    spec = models.resolve_allowed(form["base_model"] or None, settings.allowed_roots)
    if any(not Path(p).is_file() for p in paths.values()):
        return {"valid": True, "remote": True, "base": spec.name}
    limits = Limits(spec.max_tokens, "the base model's limit")
    if form.get("method") == "preference":
        report = preference.validate(paths["train"], paths.get("validation"), template=models.load_template(spec),
                                     limits=limits, max_issues=MAX_ISSUES_SHOWN)
    else:
        report = validate(paths["train"], paths.get("validation"), template=models.load_template(spec),
                          media=models.media_policy(spec, settings.allowed_roots), limits=limits,
                          max_issues=MAX_ISSUES_SHOWN)
    issues = [{**i.to_dict(), "context": _around(i.file, i.line)} for i in report.issues[:MAX_ISSUES_SHOWN]]
    stats = report.file("train").stats  # type: ignore[union-attr]
    n = stats.get("tuningDatasetExampleCount", 0)
    epochs = hp.get("epochs") or default_epochs(n)
    billable = stats.get("totalTokenCount", 0) * epochs
    speed, basis = _throughput(request, spec.name)
    return {"valid": report.valid, "issues": issues, "files": [f.summary() for f in report.files], "stats": stats,
            "errors": sum(f.errors for f in report.files), "warnings": sum(f.warnings for f in report.files),
            "epochs": epochs, "default_epochs": default_epochs(n), "billable": billable, "base": spec.name,
            "seconds": billable / speed if speed else 0, "basis": basis}


@router.post("/console/new")
@page_errors
def new_submit(request: Request, csrf_token: str | None = Form(None, alias="csrf"), action: str = Form("check"),
               train_file: UploadFile | None = File(None), validation_file: UploadFile | None = File(None),
               eval_file: UploadFile | None = File(None), display_name: str = Form(""), description: str = Form(""),
               base_model: str = Form(""), train_path: str = Form(""), validation_path: str = Form(""),
               epochs: str = Form(""), lr_multiplier: str = Form(""), adapter_size: str = Form(""),
               batch_size: str = Form(""), workers: str = Form(""), export_last_only: str = Form(""), eval_enabled: str = Form(""),
               eval_path: str = Form(""), eval_task: str = Form(""), lora_alpha: str = Form(""),
               lora_targets: str = Form(""), lr_schedule: str = Form(""), max_length: str = Form(""),
               early_stopping: str = Form(""), method: str = Form("supervised"), beta: str = Form("")) -> Response:
    form = {k: v.strip() for k, v in locals().items() if k in EMPTY_FORM}
    ctx = _ctx(form, roots=_roots(request), on_ray=_on_ray(request))
    try:
        session = csrf(request, csrf_token)
        for kind, upload in (("train", train_file), ("validation", validation_file), ("eval", eval_file)):
            form[f"{kind}_path"] = _save(request, upload) or form[f"{kind}_path"]
        ctx["check"] = check = _check(request, form)
        if action == "create" and check["valid"]:
            job_id = svc(request).jobs.create(PROJECT, LOCATION, wire.parse_create(_body(form), door="console")).id
            session.flash = f"Created tuning job {form['display_name'] or job_id}."
            return RedirectResponse(f"/console/jobs/{job_id}", status_code=303)
    except USER_ERRORS as exc:
        status, text = message_of(exc)
        ctx["error"] = _labelled(text)
        return render(request, "new.html", ctx, status)
    return render(request, "new.html", ctx, 200 if check["valid"] else 400)
