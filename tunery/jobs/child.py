"""The process that runs one tuning job: `python -m tunery.jobs.child RUN_DIR`.

Reads RUN_DIR/job.json (TuningConfig fields), runs `train()`, then, if the job asked for one (evaluationConfig), the
before/after evaluation into RUN_DIR/evaluation/. It reports through files the worker reads: progress.json while
running and result.json at the end (both written atomically). A crash leaves no
result.json; the worker then requeues the job, and the next attempt resumes from the last complete state.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from tunery import locks
from tunery.config import TuningConfig
from tunery.errors import ConfigError, DatasetError, TrainingError, TuneryError
from tunery.jobs import states
from tunery.train import checkpoints as ck
from tunery.train.checkpoints import write_json

JOB_FILE, PROGRESS_FILE, RESULT_FILE, LOG_FILE = "job.json", "progress.json", "result.json", "log.txt"
LOCKED_EXIT = 75  # EX_TEMPFAIL: another process (an old child the worker no longer knows) holds the job; try later
STOPPED_EXIT = 76  # stopped on SIGTERM (a pause, a cancel, a server that stops) with its state saved: not a crash
PARENT_ENV = "TUNERY_PARENT_PID"  # the worker's PID, to catch a parent that died before PR_SET_PDEATHSIG took effect
SAVE_INTERVAL_ENV = "TUNERY_SAVE_INTERVAL_SECONDS"  # the server's resume-state cadence (default 60 s)
RUN_SUBDIR = "run"  # the train() output directory inside the job directory
EVAL_DIR, EVAL_REPORT, EVAL_ERROR = "evaluation", "report.json", "error.json"
# google.rpc.Code values used in job errors
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, INTERNAL = 3, 8, 13


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the server process dies, so no tuning outlives it (the next server resumes it).
    A server that died before the prctl call would never send it: then we are orphaned already, and stop."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        sys.exit(LOCKED_EXIT)


def main(run_dir: Path) -> int:
    """Hold the job directory for the whole process, then run. A second process on the same job exits at once
    with LOCKED_EXIT and touches nothing."""
    try:
        locks.acquire(run_dir / locks.LOCK_FILE, f"job directory {run_dir}")  # released when this process ends
    except locks.Locked as exc:
        print(f"tunery child: {exc}", file=sys.stderr, flush=True)
        return LOCKED_EXIT
    from tunery.train import stopping

    signal.signal(signal.SIGTERM, lambda *_: stopping.STOP.set())  # the step under way ends, the state is saved
    try:
        return run(run_dir)
    except stopping.Stopped as exc:
        print(f"tunery child: {exc}; the state is saved", file=sys.stderr, flush=True)
        return STOPPED_EXIT


def run(run_dir: Path, rank: int = 0) -> int:
    """Run the job in RUN_DIR. Under Ray Train every worker calls this: rank 0 alone writes progress and result
    files (train() itself writes the run dir from rank 0 only); the others take their share of each batch."""
    from tunery.train.engine import train

    from tunery.data.sources import fetch

    spec = json.loads((run_dir / JOB_FILE).read_text())
    fields = dict(spec["config"])
    for key in ("train", "validation"):  # gs://, s3:// and http(s) datasets are copied into the job directory
        if fields.get(key):
            # one folder each: basenames may be equal; and per rank, so no two workers write one file
            fields[key] = fetch(fields[key], run_dir / "data" / (key if rank == 0 else f"{key}-rank{rank}"))
    if os.environ.get(SAVE_INTERVAL_ENV):
        fields["save_interval_seconds"] = float(os.environ[SAVE_INTERVAL_ENV])
    cfg = TuningConfig(**fields, output=str(run_dir / RUN_SUBDIR))
    progress: dict = {"detail": states.PROCESSING_DATASET}

    def on_event(e: dict) -> None:
        if e["event"] == "dataset":
            progress.update(stats=e["stats"], detail=states.TUNING)
        elif e["event"] == "start":
            progress.update(totalSteps=e["total_steps"], epochs=e["epochs"], detail=states.TUNING)
        elif e["event"] == "step":
            progress.update(completedStepCount=e["step"], completedEpochCount=int(e["epoch"]))
            if e["step"] == e["total_steps"]:
                progress["detail"] = states.POST_PROCESSING
        else:
            return
        write_json(run_dir / PROGRESS_FILE, progress)

    if rank != 0:
        try:
            train(cfg)
        except TuneryError:  # rank 0 meets the same error and reports it; a retry by Ray Train would not help
            return 1
        return 0
    write_json(run_dir / PROGRESS_FILE, progress)
    from tunery.train.stopping import Stopped

    try:
        result = train(cfg, on_event)
    except Stopped:
        raise  # main() exits with STOPPED_EXIT: no result, the worker knows why
    except (ConfigError, DatasetError, TrainingError) as exc:
        code = RESOURCE_EXHAUSTED if "out of memory" in exc.message else INVALID_ARGUMENT
        write_json(run_dir / RESULT_FILE, {"status": "failed", "error": {"code": code, "message": str(exc)}})
        return 1
    except TuneryError as exc:
        write_json(run_dir / RESULT_FILE, {"status": "failed", "error": {"code": INVALID_ARGUMENT, "message": str(exc)}})
        return 1
    except Exception as exc:  # a bug: report it on the job, keep the traceback in the log
        traceback.print_exc()
        write_json(run_dir / RESULT_FILE, {"status": "failed", "error": {"code": INTERNAL, "message": f"internal error: {exc!r}"}})
        return 2
    base_model = json.loads((result.output / ck.RUN_FILE).read_text())["base_model"]["name"]
    adapter = str(result.output / ck.ADAPTER_DIR)
    if spec.get("evaluation"):
        progress["detail"] = states.POST_PROCESSING
        write_json(run_dir / PROGRESS_FILE, progress)
        _evaluate(run_dir, spec["evaluation"], base_model, adapter, spec.get("job", "tuned"))
    write_json(run_dir / RESULT_FILE, {
        "status": "succeeded", "adapter": adapter, "steps": result.steps, "epochs": result.epochs,
        "metrics": result.metrics, "checkpoints": [{**{k: c[k] for k in ("checkpointId", "epoch", "step", "path")},
                         "default": c["checkpointId"] == result.default_checkpoint["checkpointId"]} for c in result.checkpoints],
        "default_checkpoint": result.default_checkpoint, "early_stopping": result.early_stopping,
        "stats": progress.get("stats"),
        "base_model": base_model})
    return 0


def _evaluate(run_dir: Path, ev: dict, base_model: str, adapter: str, label: str) -> None:
    """Base against tuned on the evaluation dataset; the report goes to RUN_DIR/evaluation/. A failed evaluation
    does not fail the job (the tuned model is good): its error is recorded for evaluateDatasetRuns."""
    from tunery import models
    from tunery.data.sources import fetch
    from tunery.eval import report as rp
    from tunery.eval import run as er

    out = run_dir / EVAL_DIR
    try:
        spec = models.resolve(base_model)
        data = fetch(ev["dataset"], run_dir / "data" / "evaluation")
        evaluation = er.run(data, {"base": er.Target(spec.name, spec), "tuned": er.Target(label, spec, adapter)},
                            ev.get("task"), ev.get("limit"), max_output_tokens=ev.get("max_output_tokens", 256),
                            temperature=ev.get("temperature", 0.0))
        report = rp.build(evaluation, rp.read_curves(run_dir / RUN_SUBDIR))
        ck.write_atomically(out, lambda tmp: rp.write(report, tmp / EVAL_REPORT, (tmp / EVAL_REPORT).with_suffix(".html")))
    except TuneryError as exc:
        _eval_failed(out, INVALID_ARGUMENT, str(exc))
    except Exception as exc:  # a bug: keep the traceback in the log
        traceback.print_exc()
        _eval_failed(out, INTERNAL, f"internal error: {exc!r}")


def _eval_failed(out: Path, code: int, message: str) -> None:
    ck.write_atomically(out, lambda tmp: write_json(tmp / EVAL_ERROR, {"code": code, "message": message}))


def evaluation_status(run_dir: Path) -> dict:
    """{"report": path} once the evaluation is written, {"error": {code, message}} if it failed, {} before."""
    out = run_dir / EVAL_DIR
    if not ck.is_complete(out):
        return {}
    if (out / EVAL_ERROR).is_file():
        return {"error": json.loads((out / EVAL_ERROR).read_text())}
    return {"report": str(out / EVAL_REPORT)}


if __name__ == "__main__":
    _die_with_parent()
    sys.exit(main(Path(sys.argv[1])))
