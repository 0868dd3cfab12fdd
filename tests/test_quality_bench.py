"""bench/quality_bench.py and its datasets: the committed files are what their generators write, every task's files
validate and evaluate, and the bench runs end to end (jobs through the REST API, base and tuned scores, job time, the
table and its JSON) on the tiny model."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import tunery_home
from tests.test_api import LiveServer
from tunery.data.validate import validate
from tunery.eval.run import load_items
from tunery.train import metrics as mt

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
GENERATED = {"make_tickets": ["tickets_train.jsonl", "tickets_val.jsonl", "tickets_test.jsonl"],
             "make_chat": ["chat_train.jsonl", "chat_val.jsonl", "chat_test.jsonl"],
             "make_alerts": ["alerts_train.jsonl", "alerts_val.jsonl", "alerts_test.csv"],
             "make_qa": ["squad_train.csv", "squad_validation.csv", "squad_test.csv"],
             "make_preferences": ["prefs_train.jsonl", "prefs_val.jsonl", "prefs_test.jsonl"]}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load(REPO / "bench" / "quality_bench.py")


@pytest.mark.parametrize("script", GENERATED)
def test_committed_data_is_what_its_generator_writes(script, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", [script, "--out", str(tmp_path)])
    _load(DATA / f"{script}.py").main()
    for name in GENERATED[script]:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_generators_are_deterministic_and_seeded(tmp_path):
    tickets, chat = _load(DATA / "make_tickets.py"), _load(DATA / "make_chat.py")
    for i, seed in enumerate((11, 11, 12)):
        (tmp_path / str(i)).mkdir()
        tickets.write(tmp_path / str(i), 16, 8, 8, seed)
        chat.write(tmp_path / str(i), 16, 8, 8, seed)
    for name in ("tickets_train.jsonl", "chat_test.jsonl"):
        assert (tmp_path / "0" / name).read_bytes() == (tmp_path / "1" / name).read_bytes()
        assert (tmp_path / "0" / name).read_bytes() != (tmp_path / "2" / name).read_bytes()


def test_new_datasets_pass_tunery_validate(template):
    for stem in ("tickets", "chat"):
        report = validate(DATA / f"{stem}_train.jsonl", DATA / f"{stem}_val.jsonl", template=template)
        assert report.valid and report.issues == [], report.issues[:5]  # no duplicate, overlap or length warnings
    from tunery.data import preference

    report = preference.validate(DATA / "prefs_train.jsonl", DATA / "prefs_val.jsonl", template=template)
    assert report.valid and report.files[0].examples == 240 and report.files[1].examples == 40


@pytest.mark.parametrize("task", list(bench.TASKS))
def test_every_task_prepares_files_that_validate_and_evaluate(task, tmp_path, template):
    files = bench.prepare(task, tmp_path, limit_train=None)
    report = validate(files["train"], files["validation"], template=template)
    assert report.valid and not [i for i in report.issues if i.severity == "error"]
    train = report.file("train").stats
    assert 120 <= train["tuningDatasetExampleCount"] <= 240
    # short examples, for a 2-core CPU: prompt + answer tokens, chat template included
    assert train["userInputTokenDistribution"]["mean"] + train["userOutputTokenDistribution"]["mean"] < 170
    items = load_items(files["test"])
    assert len(items) in (30, 40)
    texts = {json.dumps([t.text for t in i.prompt.turns]) for i in items}
    assert len(texts) == len(items)
    if task == "classification":
        assert Counter(i.reference for i in items) == {label: 5 for label in _load(DATA / "make_tickets.py").LABELS}
    if task == "chat":
        assert all(i.prompt.system and len(i.prompt.turns) >= 3 and i.reference.endswith("]") for i in items)


def test_settings_parse_to_the_rest_names():
    s = bench.parse_setting("r8:adapterSize=8,learningRateMultiplier=2,examplesSeen=1000")
    assert s.name == "r8"
    assert s.request(240) == {"adapterSize": "ADAPTER_SIZE_EIGHT", "learningRateMultiplier": 2.0, "epochCount": 5}
    assert s.request(2000) == {"adapterSize": "ADAPTER_SIZE_EIGHT", "learningRateMultiplier": 2.0, "epochCount": 1}
    assert bench.parse_setting("ep3:epochCount=3,batchSize=4").request(10) == {"epochCount": 3, "batchSize": 4}
    assert bench.parse_setting("old").request(10) == {}
    assert bench.parse_setting("a:loraTargets=ATTENTION,loraAlpha=16,learningRateSchedule=COSINE,maxLength=256"
                               ).request(10) == {"loraTargets": "ATTENTION", "loraAlpha": 16.0,
                                                 "learningRateSchedule": "COSINE", "maxLength": 256}
    for bad in ("x:warmupSteps=10", "x:maxLength=long", "x:adapterSize=3", "x", "x:epochCount=two", "old:epochCount=1"):
        with pytest.raises(SystemExit):
            bench.parse_setting(bad)


def test_bench_end_to_end_on_the_tiny_model(tmp_path_factory, tiny_model_dir):
    """One task, one setting (a job costs ~9 s of CPU, most of it imports): its hyperparameters reach the job, the
    base and the tuned model are scored on the test split, the job's time is measured, and the table reads it."""
    r8 = bench.parse_setting("r8:adapterSize=8,examplesSeen=16")
    with tunery_home(tmp_path_factory.mktemp("quality-home"), tiny_model_dir) as home, LiveServer(home) as live:
        results = bench.run(live.url, home, os.getpid(), ["classification"], [r8], "gemini-2.0-flash-001",
                            home / "work", limit_train=16, limit_val=4, limit_test=4, log=lambda m: None)
        row = results["tasks"]["classification"]
        tuned = row["settings"]["r8"]
        adapter = home / "jobs" / tuned["job"].rsplit("/", 1)[-1] / "run" / "adapter" / "adapter_config.json"
        lora = json.loads(adapter.read_text())
        manifest = json.loads((adapter.parents[1] / "manifest.json").read_text())
    assert (lora["r"], lora["lora_alpha"]) == (8, 16)
    # the checkpoint the job serves, with its validation loss (the job evaluated it on the 4 validation examples)
    chosen = next(c for c in manifest["checkpoints"] if c["checkpointId"] == manifest["default_checkpoint"]["checkpointId"])
    assert tuned["checkpoint"] == {"id": chosen["checkpointId"], "step": 2, "val_loss": chosen["metrics"][mt.EVAL_LOSS],
                                   "val_accuracy": chosen["metrics"][mt.EVAL_ACCURACY]}
    assert (row["metric"], row["secondary"], row["n_train"], row["base"]["n"]) == ("macro_f1", "accuracy", 16, 4)
    assert tuned["hyperParameters"] == {"adapterSize": "ADAPTER_SIZE_EIGHT", "epochCount": 1}
    assert (tuned["epochs"], tuned["steps"]) == (1, 2)  # 16 examples at batch 8
    assert tuned["job"].startswith("projects/bench/locations/us-central1/tuningJobs/")
    assert tuned["endpoint"].startswith("projects/bench/locations/us-central1/endpoints/")
    # the job's process, reaped by the server or by its zygote, which imported torch for it (about 1 s here)
    assert 0 < tuned["job_cpu_s"] < 120 and 0 < tuned["job_wall_s"] < 300
    for scores in (row["base"], tuned):
        assert all(0.0 <= scores["metrics"][m] <= 1.0 for m in ("macro_f1", "accuracy", "micro_f1"))
        assert len(scores["predictions"]) == 4 and scores["eval_wall_s"] >= 0
    assert results["meta"]["base_model"] == "gemini-2.0-flash-001" and results["meta"]["scoring"] == "local float32"

    lines = bench.table(results).splitlines()
    assert lines[1].split() == ["task", "metric", "n", "base", "r8"]
    assert lines[2].split() == ["classification", "macro_f1", "4", f"{row['base']['metrics']['macro_f1']:.3f}",
                                f"{tuned['metrics']['macro_f1']:.3f}"]
    assert lines[3].split()[0] == "accuracy"
    assert lines[4].split() == ["val", "loss", "(chosen)", f"{tuned['checkpoint']['val_loss']:.4f}"]
    assert lines[5].split() == ["job", "min", "CPU/wall", _minutes(tuned["job_cpu_s"], tuned["job_wall_s"])]

    # runs merge into one table, settings side by side; the same setting from a later run wins
    later = json.loads(json.dumps(results))
    failed = {"job": tuned["job"], "state": "JOB_STATE_FAILED", "error": {"code": 13}, "job_wall_s": 6.0, "job_cpu_s": 3.0}
    later["tasks"]["classification"]["settings"] = {"old": tuned | {"job_wall_s": 60.0}, "bad": failed}
    later["tasks"]["qa"] = {"metric": "f1", "secondary": "exact_match", "n_train": 16, "settings": {},
                            "base": {"n": 4, "metrics": {"f1": 0.5, "exact_match": 0.25}}}
    runs = tmp_path_factory.mktemp("runs")
    (runs / "a.json").write_text(json.dumps(results))
    (runs / "b.json").write_text(json.dumps(later))
    printed = io.StringIO()  # not capsys: under xdist, after the in-process scoring, its stream was found closed
    with contextlib.redirect_stdout(printed):
        bench.main(["--from-json", str(runs / "a.json"), str(runs / "b.json")])
    out = printed.getvalue().splitlines()
    assert out[1].split() == ["task", "metric", "n", "base", "r8", "old", "bad"]
    assert out[2].split()[-1] == "failed" and out[5].split()[-2:] == [_minutes(tuned["job_cpu_s"], 60.0), "0.1/0.1"]
    assert out[4].split()[-1] == "-"  # a failed job chose no checkpoint
    assert out[6].split() == ["qa", "f1", "4", "0.500", "-", "-", "-"]


def _minutes(cpu_s: float, wall_s: float) -> str:
    return f"{cpu_s / 60:.1f}/{wall_s / 60:.1f}"
