"""Tuning quality per task type: base against tuned, with tunery's current defaults and with named variants.

For each task (below), on a split the tuning never sees: score the base model, then for each setting create a tuning
job through the REST job API of a real `tunery serve` (loopback, its own home in a temporary folder), wait for it,
and score the tuned model. The baseline is the base model, scored in the same run; `old` is the current defaults
(the request sends no hyperparameters); every other setting is a name and the hyperParameters it sends.

    task            data (examples/data/)                           scored with (tunery.eval.metrics)
    classification  tickets_*.jsonl (make_tickets.py), 8 teams      macro_f1, accuracy
    summarization   alerts_* (make_alerts.py), alert -> 7-line block rougeL_fmeasure, rouge1_fmeasure
    qa              squad_*.csv (make_qa.py), extractive            f1, exact_match
    chat            chat_*.jsonl (make_chat.py), multi-turn persona bleu, chrf (the "generation" task)

Scoring: greedy, float32, batched, in this process, on the adapter the job produced (the one its endpoint serves) and
on the base model: the path `tunery compare` takes, whose scores do not depend on the batch. `--score endpoint`
calls generateContent on the job's endpoint and the base model's name instead (the server's precision).
Validation loss: of the checkpoint the job serves by default (its lowest), a row of the table; it separates settings
whose test scores have saturated.
Time: each job's wall time from create to SUCCEEDED, and its CPU time: the CPU the server's reaped children (the
job's process tree) used meanwhile, read from /proc (Linux; elsewhere the wall time stands in).

Settings use the REST names of supervisedTuningSpec.hyperParameters: epochCount, learningRateMultiplier,
learningRate, adapterSize (the rank: 1, 2, 4, 8 or 16), batchSize, earlyStoppingPatience, and tunery's maxLength,
loraAlpha, loraTargets (ALL_LINEAR, ATTENTION, MLP), learningRateSchedule (LINEAR, COSINE, CONSTANT). `examplesSeen=N` is the
bench's own: epochCount = ceil(N / training examples), so one rule fits every task's size.

Usage: python bench/quality_bench.py [--tasks classification,qa] [--base-model gemma-3-270m]
           [--setting lr2x:learningRateMultiplier=2] [--setting r8:adapterSize=8,examplesSeen=2000]
           [--limit-train N] [--limit-val N] [--limit-test N] [--no-old] [--score endpoint]
           [--json out.json]                                   # written after every score
       python bench/quality_bench.py --tasks preference [--dpo-pairs unseen|seen|all] [--dpo-epochs 1]
           [--dpo-lr-multiplier 0.25] [--beta 0.1]
       python bench/quality_bench.py --from-json a.json b.json     # merge runs and print one table
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Task:
    metric_task: str  # tunery.eval.metrics task
    secondary: str  # a second metric for the table (the primary is metrics.PRIMARY[metric_task])
    files: tuple[str, str, str]  # train, validation, test under examples/data
    max_output_tokens: int  # enough for the longest reference


TASKS = {
    "classification": Task("classification", "accuracy",
                           ("tickets_train.jsonl", "tickets_val.jsonl", "tickets_test.jsonl"), 8),
    "summarization": Task("summarization", "rouge1_fmeasure",
                          ("alerts_train.jsonl", "alerts_val.jsonl", "alerts_test.csv"), 128),
    "qa": Task("qa", "exact_match", ("squad_train.csv", "squad_validation.csv", "squad_test.csv"), 32),
    "chat": Task("generation", "chrf", ("chat_train.jsonl", "chat_val.jsonl", "chat_test.jsonl"), 64),
}
HYPERPARAMETERS = ("epochCount", "learningRateMultiplier", "learningRate", "adapterSize", "batchSize",
                   "earlyStoppingPatience", "maxLength", "loraAlpha", "loraTargets", "learningRateSchedule")
# what tunery's API reads (tunery/api/wire/tuning.py); it refuses others. These two take enum names:
ENUM_HYPERPARAMETERS = ("loraTargets", "learningRateSchedule")
ADAPTER_SIZES = {1: "ADAPTER_SIZE_ONE", 2: "ADAPTER_SIZE_TWO", 4: "ADAPTER_SIZE_FOUR", 8: "ADAPTER_SIZE_EIGHT",
                 16: "ADAPTER_SIZE_SIXTEEN"}  # as names: a bare 4 is the old SDK's enum number for rank 16
QA_SYSTEM = "Answer the question with a concise extract from the given context."


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class Setting:
    name: str
    hyperparameters: dict  # REST hyperParameters, plus the bench's examplesSeen

    def request(self, n_train: int) -> dict:
        """The hyperParameters to send for a training set of `n_train` examples."""
        hp = dict(self.hyperparameters)
        if "examplesSeen" in hp:
            hp["epochCount"] = max(1, min(100, math.ceil(hp.pop("examplesSeen") / n_train)))
        return hp


def parse_setting(text: str) -> Setting:
    """`NAME:key=value[,key=value]`, e.g. `lr2x:learningRateMultiplier=2`; `old` alone means the defaults."""
    name, _, spec = text.partition(":")
    if not name or (not spec and name != "old") or (spec and name == "old"):
        raise SystemExit(f"--setting: expected NAME:key=value[,key=value] (or old), found {text!r}")
    hp: dict = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in (*HYPERPARAMETERS, "examplesSeen"):
            raise SystemExit(f"--setting {name}: expected key=value with key one of "
                             f"{', '.join(HYPERPARAMETERS)}, examplesSeen; found {item!r}")
        if key in ENUM_HYPERPARAMETERS:  # the server checks the name
            hp[key] = value
            continue
        try:
            number = float(value)
        except ValueError:
            raise SystemExit(f"--setting {name}: {key} expects a number, found {value!r}") from None
        if key == "adapterSize":
            if int(number) not in ADAPTER_SIZES:
                raise SystemExit(f"--setting {name}: adapterSize must be one of 1, 2, 4, 8, 16, found {value}")
            hp[key] = ADAPTER_SIZES[int(number)]
        else:
            whole = number.is_integer() and key not in ("learningRateMultiplier", "learningRate", "loraAlpha")
            hp[key] = int(number) if whole else number
    return Setting(name, hp)


# ---------------------------------------------------------------- data

def _lines(path: Path, limit: int | None) -> list[str]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:limit] if limit else lines


def squad_contents(path: Path) -> list[str]:
    """The SQuAD-style CSV as `contents` JSONL lines: context and question in, the answer span out."""
    with open(path, encoding="utf-8", newline="") as f:
        return [json.dumps({"systemInstruction": {"parts": [{"text": QA_SYSTEM}]}, "contents": [
            {"role": "user", "parts": [{"text": f"Context: {r['context']}\nQuestion: {r['question']}"}]},
            {"role": "model", "parts": [{"text": r["answers"]}]}]}) for r in csv.DictReader(f)]


def prepare(name: str, out: Path, limit_train: int | None = None, limit_val: int | None = None) -> dict[str, Path]:
    """The task's train, validation and test files under `out`: training sets cut to their first lines, QA converted
    to a tuning format. The test file is never cut here (`--limit-test` applies when scoring)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, file, limit in zip(("train", "validation", "test"), TASKS[name].files, (limit_train, limit_val, None)):
        src = DATA / file
        if name == "qa":
            dst = out / f"{src.stem}.jsonl"
            dst.write_text("\n".join(squad_contents(src)[:limit or None]) + "\n", encoding="utf-8")
        elif limit:
            dst = out / src.name
            dst.write_text("\n".join(_lines(src, limit)) + "\n", encoding="utf-8")
        else:
            dst = Path(shutil.copyfile(src, out / src.name))
        paths[split] = dst
    return paths


# ---------------------------------------------------------------- jobs and scores

def children_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of the reaped children of process `pid` and of its live children (/proc/PID/stat
    cutime + cstime): a job's process is reaped by the server, or by the server's zygote when it forked it."""
    def reaped(p: int) -> float:
        stat = Path(f"/proc/{p}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name; fields[0] is field 3 (state)
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

    try:
        total = reaped(pid)
    except OSError:
        return None
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split() if (task / "children").is_file() else ():
            try:
                total += reaped(int(child))
            except OSError:
                pass
    return total


def tune(client, server_pid: int, base_model: str, files: dict[str, Path], hp: dict, label: str) -> dict:
    """Create one job, wait for it; its name, endpoint, epochs, steps, wall and CPU seconds (or its error)."""
    body = {"baseModel": base_model, "tunedModelDisplayName": label, "supervisedTuningSpec": {
        "trainingDatasetUri": str(files["train"]), "validationDatasetUri": str(files["validation"]),
        "hyperParameters": hp}}
    cpu, t = children_cpu_seconds(server_pid), time.perf_counter()
    job = client.call("POST", f"{client.place}/tuningJobs", json=body)
    while job["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
        time.sleep(1.0)
        job = client.call("GET", job["name"])
    wall, cpu_after = time.perf_counter() - t, children_cpu_seconds(server_pid)
    meta = job.get("tuningJobMetadata", {})
    out = {"job": job["name"], "state": job["state"], "hyperParameters": hp,
           "epochs": int(meta.get("completedEpochCount", 0)), "steps": int(meta.get("completedStepCount", 0)),
           "job_wall_s": round(wall, 1), "job_cpu_s": None if cpu is None else round(cpu_after - cpu, 1)}
    if job["state"] != "JOB_STATE_SUCCEEDED":
        return out | {"error": job.get("error")}
    return out | {"endpoint": job["tunedModel"]["endpoint"]}


def chosen_checkpoint(run_dir: Path) -> dict:
    """The checkpoint the job serves by default (lowest validation loss) and its validation loss and token accuracy:
    a finer signal than a test metric that has saturated, on data the scores never use."""
    from tunery.train import metrics as mt

    manifest = json.loads((run_dir / "manifest.json").read_text())
    chosen = manifest["default_checkpoint"]
    metrics = next(c["metrics"] for c in manifest["checkpoints"] if c["checkpointId"] == chosen["checkpointId"])
    return {"checkpoint": {"id": chosen["checkpointId"], "step": chosen["step"],
                           "val_loss": metrics.get(mt.EVAL_LOSS), "val_accuracy": metrics.get(mt.EVAL_ACCURACY)}}


def score(name: str, test: Path, target, generator, limit: int | None) -> dict:
    """Greedy outputs on the test split and the task's metrics."""
    from tunery.eval import run as er

    task = TASKS[name]
    cpu = time.process_time()
    ev = er.run(test, {"model": target}, task.metric_task, limit, max_output_tokens=task.max_output_tokens,
                generator=generator)
    r = ev.results["model"]
    return {"metrics": r.metrics, "n": len(ev.items), "eval_wall_s": round(r.seconds, 1),
            "eval_cpu_s": round(time.process_time() - cpu, 1), "predictions": r.predictions}


def run(url: str, home: Path, server_pid: int, tasks: list[str], settings: list[Setting], base_model: str, work: Path,
        limit_train: int | None = None, limit_val: int | None = None, limit_test: int | None = None,
        via_endpoint: bool = False, log=print, save=lambda results: None) -> dict:
    """The whole bench against a running server whose home is `home` and whose process is `server_pid`. `save` gets
    the results so far after every score, so a long run that stops keeps what it measured."""
    from tunery import config, threads
    from tunery.client import Client
    from tunery.eval import metrics as mx
    from tunery.eval import run as er
    from tunery.serve.registry import Registry

    client = Client(server=url, project="bench")
    # scoring runs between jobs, alone: the threads a job would get (TUNERY_THREADS, else every core)
    generator = er.Generator(Registry(runtime=_cpu_or_cuda(), threads=threads.for_training))
    meta = {"base_model": base_model, "scoring": "endpoint" if via_endpoint else "local float32",
            "cpus": os.cpu_count(), "threads": os.environ.get("TUNERY_THREADS"), "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": _commit(), "limits": {"train": limit_train, "validation": limit_val, "test": limit_test},
            # what `old` (no hyperparameters sent) meant in this run; the epoch count follows config.default_epochs
            "defaults": {"learning_rate": config.BASE_LEARNING_RATE, "adapter_size": config.DEFAULT_ADAPTER_SIZE,
                         "batch_size": config.DEFAULT_BATCH_SIZE}}
    results: dict = {"meta": meta, "tasks": {}}
    for name in tasks:
        task = TASKS[name]
        files = prepare(name, work / name, limit_train, limit_val)
        n_train = len(_lines(files["train"], None))
        row = {"metric": mx.PRIMARY[task.metric_task], "secondary": task.secondary, "n_train": n_train,
               "default_epochs": config.default_epochs(n_train), "settings": {}}
        base = er.Target(base_model, server=url, name=base_model) if via_endpoint else er.resolve_target(base_model)
        row["base"] = score(name, files["test"], base, generator, limit_test)
        results["tasks"][name] = row
        save(results)
        log(f"{name}: base {row['metric']} {row['base']['metrics'][row['metric']]:.3f}")
        for s in settings:
            tuned = tune(client, server_pid, base_model, files, s.request(n_train), f"quality-{name}-{s.name}")
            if "error" in tuned:  # recorded; the other settings still run
                row["settings"][s.name] = tuned
                log(f"{name}: {s.name}: {tuned['job']} ended {tuned['state']}: {tuned['error']}")
                continue
            run_dir = home / "jobs" / tuned["job"].rsplit("/", 1)[-1] / "run"
            tuned |= chosen_checkpoint(run_dir)
            target = er.Target(s.name, server=url, name=tuned["endpoint"]) if via_endpoint else er.resolve_target(str(run_dir))
            row["settings"][s.name] = tuned | score(name, files["test"], target, generator, limit_test)
            save(results)
            log(f"{name}: {s.name} {row['metric']} {row['settings'][s.name]['metrics'][row['metric']]:.3f} "
                f"({tuned['epochs']} epochs, job {tuned['job_wall_s']:.0f} s wall, {tuned['job_cpu_s']} s CPU)")
    return results


# ---------------------------------------------------------------- preference tuning (DPO)

def pair_logps(spec, adapter: str | None, pairs, runtime) -> list[tuple[float, float]]:
    """(log p(preferred), log p(dispreferred)) of each pair's answers under the base model or an adapter: the
    answer's tokens only, given the prompt (tunery.train.preference, as DPO scores them)."""
    import torch

    from tunery import models
    from tunery.train import preference as pt

    template = models.load_template(spec)
    model = models.load_model_fresh(spec).to(runtime.device).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    rows = pt.render_pairs(pairs, template, spec.max_tokens)
    out = []
    with torch.no_grad():
        for k in range(0, len(rows), 8):
            chosen, rejected = pt.forward(model, rows[k:k + 8], template.end_id, runtime)
            out += list(zip(chosen.tolist(), rejected.tolist()))
    return out


def run_preference(url: str, home: Path, server_pid: int, base_model: str, work: Path, limit_train: int | None,
                   limit_test: int | None, log=print, beta: float = 0.1, dpo_pairs: str = "unseen",
                   dpo_epochs: int = 1, dpo_lr_multiplier: float = 0.25) -> dict:
    """base -> SFT (alerts, supervisedTuningSpec) -> SFT + DPO (preference pairs, preferenceOptimizationSpec with
    preTunedModel: the supervised model is the start and the reference), through the REST job API. On test pairs
    the tuning never saw: how often each model gives the preferred answer the higher log-probability, DPO's reward
    accuracy against its reference (the SFT model), and ROUGE-L of greedy answers against the preferred ones."""
    from tunery import models
    from tunery.client import Client
    from tunery.data import preference
    from tunery.eval import run as er
    from tunery.serve.registry import Registry

    client = Client(server=url, project="bench")
    work.mkdir(parents=True, exist_ok=True)
    sft_train = work / "alerts_train.jsonl"
    sft_train.write_text("\n".join(_lines(DATA / "alerts_train.jsonl", limit_train)) + "\n")
    pref_train = work / "prefs_train.jsonl"
    # the pairs of the training alerts: those SFT tuned on ("seen", the first limit_train), the others ("unseen":
    # new prompts, as feedback on a tuned model's answers would be), or all of them
    pairs_all = _lines(DATA / "prefs_train.jsonl", None)
    cut = limit_train or len(pairs_all)
    chosen_pairs = {"seen": pairs_all[:cut], "unseen": pairs_all[cut:] or pairs_all, "all": pairs_all}[dpo_pairs]
    pref_train.write_text("\n".join(chosen_pairs) + "\n")
    test_pairs = preference.read_pairs(DATA / "prefs_test.jsonl")[:limit_test or None]
    test = work / "prefs_test_generation.jsonl"  # prompt -> the preferred answer, for the generation metric
    test.write_text("".join(json.dumps({"contents": preference.to_vertex(p)["contents"] + [
        {"role": "model", "parts": [{"text": p.chosen}]}]}) + "\n" for p in test_pairs))
    spec, runtime = models.resolve(base_model), _cpu_or_cuda()
    generator = er.Generator(Registry(runtime=runtime))
    rows: dict = {}

    def accuracy(logps: list, ref: list) -> float:  # DPO's reward accuracy: the preferred answer gained more
        return sum((c - rc) > (r - rr) for (c, r), (rc, rr) in zip(logps, ref)) / len(logps)

    def scored(label: str, adapter: str | None, ref: list | None = None, base: list | None = None) -> list:
        logps = pair_logps(spec, adapter, test_pairs, runtime)
        target = er.resolve_target(adapter.rsplit("/adapter", 1)[0]) if adapter else er.resolve_target(base_model)
        ev = er.run(test, {"model": target}, "summarization", None, max_output_tokens=128, generator=generator)
        out = {"preferred_higher": sum(c > r for c, r in logps) / len(logps),
               "rougeL": ev.results["model"].metrics["rougeL_fmeasure"], "n": len(logps)}
        if base is not None:
            out["reward_accuracy_vs_base"] = accuracy(logps, base)
        if ref is not None:
            out["reward_accuracy"] = accuracy(logps, ref)
        log(f"preference: {label}: preferred answer more likely on {out['preferred_higher']:.3f} of test pairs, "
            f"ROUGE-L {out['rougeL']:.3f}" + (f", reward accuracy vs base {out['reward_accuracy_vs_base']:.3f}"
                                               if base else "")
            + (f", vs SFT {out['reward_accuracy']:.3f}" if ref else ""))
        rows[label] = out
        return logps

    base_logps = scored("base", None)
    sft = _job(client, server_pid, {"baseModel": base_model, "supervisedTuningSpec": {
        "trainingDatasetUri": str(sft_train), "hyperParameters": {"epochCount": 2}}})
    rows["sft_job"] = sft
    sft_dir = home / "jobs" / sft["job"].rsplit("/", 1)[-1] / "run"
    ref = scored("sft", str(sft_dir / "adapter"), base=base_logps)
    model_name = client.call("GET", sft["job"])["tunedModel"]["model"]
    dpo = _job(client, server_pid, {"preTunedModel": {"tunedModelName": model_name}, "preferenceOptimizationSpec": {
        "trainingDatasetUri": str(pref_train), "hyperParameters": {"epochCount": dpo_epochs, "beta": beta,
                                                      "learningRateMultiplier": dpo_lr_multiplier}}})
    rows["dpo_job"] = dpo | {"pairs": len(chosen_pairs), "which": dpo_pairs, "epochs": dpo_epochs, "beta": beta,
                             "learning_rate_multiplier": dpo_lr_multiplier}
    scored("sft+dpo", str(home / "jobs" / dpo["job"].rsplit("/", 1)[-1] / "run" / "adapter"), ref, base_logps)
    return rows


def _job(client, server_pid: int, body: dict) -> dict:
    cpu, t = children_cpu_seconds(server_pid), time.perf_counter()
    job = client.call("POST", f"{client.place}/tuningJobs", json=body)
    while job["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
        time.sleep(1.0)
        job = client.call("GET", job["name"])
    if job["state"] != "JOB_STATE_SUCCEEDED":
        raise SystemExit(f"{job['name']} ended {job['state']}: {job.get('error')}")
    return {"job": job["name"], "job_wall_s": round(time.perf_counter() - t, 1),
            "job_cpu_s": round(children_cpu_seconds(server_pid) - cpu, 1) if cpu is not None else None}


def _cpu_or_cuda():
    import torch

    from tunery.device import Runtime

    return Runtime("cuda" if torch.cuda.is_available() else "cpu", None)  # float32, as tunery.eval does


def _commit() -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


# ---------------------------------------------------------------- table and merge

def merge(runs: list[dict]) -> dict:
    """Several runs' results as one: tasks and settings side by side (a later run's same-named setting wins)."""
    models = {r["meta"]["base_model"] for r in runs}
    if len(models) > 1:
        raise SystemExit(f"--from-json: the runs use different base models ({', '.join(sorted(models))})")
    out = {"meta": runs[0]["meta"] | {"merged": len(runs)}, "tasks": {}}
    for r in runs:
        for name, row in r["tasks"].items():
            have = out["tasks"].setdefault(name, {**row, "settings": {}})
            have["settings"].update(row["settings"])
    return out


def table(results: dict) -> str:
    """task | metric | base | each setting, and the jobs' CPU minutes (wall where no CPU was measured)."""
    names = list(dict.fromkeys(s for row in results["tasks"].values() for s in row["settings"]))
    head = f"{'task':15s} {'metric':18s} {'n':>3s} {'base':>8s}" + "".join(f" {n:>10s}" for n in names)
    lines = [f"base model {results['meta']['base_model']}; scoring {results['meta']['scoring']}; "
             f"cpus={results['meta']['cpus']}", head]
    for name, row in results["tasks"].items():
        for i, metric in enumerate((row["metric"], row["secondary"])):
            cells = [_cell(row["settings"].get(n), metric) for n in names]
            lines.append(f"{name if i == 0 else '':15s} {metric:18s} {row['base']['n'] if i == 0 else '':>3} "
                         f"{_fmt(row['base']['metrics'][metric], metric):>8s}" + "".join(f" {c:>10s}" for c in cells))
        losses = [_val_loss(row["settings"].get(n)) for n in names]
        lines.append(f"{'':15s} {'val loss (chosen)':18s} {'':>3s} {'':>8s}" + "".join(f" {v:>10s}" for v in losses))
        mins = [_minutes(row["settings"].get(n)) for n in names]
        lines.append(f"{'':15s} {'job min CPU/wall':18s} {'':>3s} {'':>8s}" + "".join(f" {m:>10s}" for m in mins))
    return "\n".join(lines)


def preference_table(rows: dict) -> str:
    d = rows["dpo_job"]
    lines = [f"DPO on {d['pairs']} pairs ({d['which']}), {d['epochs']} epochs, beta {d['beta']}, learning rate "
             f"multiplier {d['learning_rate_multiplier']}; {rows['sft']['n']} test pairs", "",
             "| model | preferred answer more likely (test pairs) | reward accuracy vs base | reward accuracy vs SFT "
             "| ROUGE-L vs preferred |", "|---|---|---|---|---|"]
    for label in ("base", "sft", "sft+dpo"):
        r = rows[label]
        lines.append(f"| {label} | {r['preferred_higher']:.3f} | {r.get('reward_accuracy_vs_base', float('nan')):.3f} "
                     f"| {r.get('reward_accuracy', float('nan')):.3f} | {r['rougeL']:.3f} |".replace("nan", "-"))
    return "\n".join(lines)


def _cell(s: dict | None, metric: str) -> str:
    return "-" if s is None else "failed" if "error" in s else _fmt(s["metrics"][metric], metric)


def _fmt(value: float, metric: str) -> str:
    return f"{value:.1f}" if metric in ("bleu", "chrf") else f"{value:.3f}"  # sacrebleu's are 0-100, the rest 0-1


def _val_loss(s: dict | None) -> str:
    loss = ((s or {}).get("checkpoint") or {}).get("val_loss")
    return "-" if loss is None else f"{loss:.4f}"


def _minutes(s: dict | None) -> str:
    if s is None:
        return "-"
    cpu = s["job_cpu_s"] if s["job_cpu_s"] is not None else s["job_wall_s"]
    return f"{cpu / 60:.1f}/{s['job_wall_s'] / 60:.1f}"


# ---------------------------------------------------------------- the server and the command line

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, allow: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as f:
        server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(home),
                                   "--allow-path", str(allow)], stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TUNERY_HOME": str(home), "PYTHONPATH": str(REPO)})
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/v1beta1/projects/bench/locations/us-central1/tuningJobs", timeout=1)
            return server, url
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"tunery serve did not start; see {log}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated: {', '.join(TASKS)}, and preference "
                                                             "(base -> SFT -> SFT+DPO on the alerts' preference pairs)")
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--setting", action="append", default=[], help="NAME:key=value[,key=value] (repeatable)")
    ap.add_argument("--no-old", action="store_true", help="skip the `old` setting (the current defaults)")
    ap.add_argument("--limit-train", type=int)
    ap.add_argument("--limit-val", type=int)
    ap.add_argument("--limit-test", type=int)
    ap.add_argument("--dpo-pairs", choices=("unseen", "seen", "all"), default="unseen",
                    help="preference task: DPO on the pairs of the training alerts SFT did not tune on (default), "
                         "of those it did (the first --limit-train), or all")
    ap.add_argument("--dpo-epochs", type=int, default=1)
    ap.add_argument("--dpo-lr-multiplier", type=float, default=0.25, help="times the preference learning rate (2e-4)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--score", choices=("local", "endpoint"), default="local")
    ap.add_argument("--json", type=Path, help="write the results here (merge several with --from-json)")
    ap.add_argument("--from-json", type=Path, nargs="+", help="print the merged table of earlier runs and exit")
    args = ap.parse_args(argv)
    if args.from_json:
        print(table(merge([json.loads(p.read_text()) for p in args.from_json])))
        return
    tasks = [t for t in args.tasks.split(",") if t]
    preference_task = "preference" in tasks
    tasks = [t for t in tasks if t != "preference"]
    if unknown := [t for t in tasks if t not in TASKS]:
        raise SystemExit(f"--tasks: expected some of {', '.join(TASKS)}, found {', '.join(unknown)}")
    settings = ([] if args.no_old else [Setting("old", {})]) + [parse_setting(s) for s in args.setting]
    if not settings and tasks:
        raise SystemExit("nothing to tune: give a --setting or drop --no-old")

    tmp = Path(tempfile.mkdtemp(prefix="tunery-quality-bench-"))
    home = tmp / "home"
    home.mkdir()
    from tunery import config

    shared = config.home() / "models"  # the converted weights of this machine: converted once, not once per run
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared)
    server, url = start_server(home, tmp, tmp / "server.log")
    try:
        results = run(url, home, server.pid, tasks, settings, args.base_model, tmp / "data", args.limit_train,
                      args.limit_val, args.limit_test, via_endpoint=args.score == "endpoint",
                      log=lambda m: print(m, flush=True),
                      save=lambda r: args.json and args.json.write_text(json.dumps(r, indent=1) + "\n"))
        if preference_task:
            results["preference"] = run_preference(url, home, server.pid, args.base_model, tmp / "data" / "preference",
                                                   args.limit_train, args.limit_test,
                                                   log=lambda m: print(m, flush=True), beta=args.beta,
                                                   dpo_pairs=args.dpo_pairs, dpo_epochs=args.dpo_epochs,
                                                   dpo_lr_multiplier=args.dpo_lr_multiplier)
            args.json and args.json.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(table(results))
    if "preference" in results:
        print(preference_table(results["preference"]))
    print(f"work files and the server log: {tmp}")


if __name__ == "__main__":
    main()
