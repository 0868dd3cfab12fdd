"""Crash consistency of one run directory: a `tune --local` process SIGKILLs itself at a named point (tunery/faults.py)
and the re-run must continue exactly: checkpoint ids 1..K from the step, no step trained twice in the final metrics,
precision and threads kept from the first process, a torn metrics line skipped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import contents, write_jsonl
from tunery import threads
from tunery.eval.report import read_curves
from tunery.train import checkpoints as ck
from tunery.train import metrics as mt

STEPS = 18  # 24 examples / batch 4 = 6 steps per epoch, 3 epochs; checkpoints at steps 6, 12, 18


@pytest.fixture
def data(tmp_path) -> Path:
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    return write_jsonl(tmp_path / "train.jsonl", [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}."))
                                                  for i, c in enumerate(colours * 3)])


def tune(data: Path, out: Path, model: Path, crash_at: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """`tunery tune --local` in a child process; with crash_at="POINT STEP" it SIGKILLs itself there."""
    if crash_at:
        out.mkdir(parents=True, exist_ok=True)
        (out / "crash-at").write_text(crash_at)
    cmd = [sys.executable, "-m", "tunery.cli", "tune", "--local", "--train", str(data), "--base-model", str(model),
           "--epochs", "3", "--batch-size", "4", "--learning-rate", "5e-3", "--save-interval-seconds", "0",
           "--output", str(out)]
    return subprocess.run(cmd, env={**os.environ, "TUNERY_FAULTS": "1", **env}, capture_output=True, text=True,
                          timeout=300)


def trained(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trained.jsonl").read_text().splitlines()]


def checkpoint_steps(out: Path) -> dict[str, int]:
    return {p.name: json.loads((p / "manifest.json").read_text())["step"] for p in ck.complete_checkpoints(out)}


# Each kill, and the point where the next process must pick up. One run directory is killed four times in a row
# (each resume is itself killed at the next point) and finished by a fifth process: the four crash-and-resume cases
# in five processes instead of eight (a process's start costs more than its training on this 2-core machine).
KILLS = [  # (point, step, the step the next process resumes from)
    ("checkpoint.renamed", 6, 5),  # between the checkpoint's commit and the state naming it: neither renumbered nor duplicated
    ("state.written", 7, 6),  # the state's files written, not yet renamed into place: the previous state
    ("checkpoint.written", 12, 11),  # the checkpoint's files written, not renamed: the state before it
    ("state.renamed", 12, 12),  # the state committed: resume right after it
]


def test_kills_at_each_write_resume_from_the_last_complete_state(data, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    trained_by: list[tuple[int, list[int]]] = []  # (resumed_from, steps) of each process that was killed
    resumed_from = None
    for point, step, resumes in KILLS:
        proc = tune(data, out, tiny_model_dir, crash_at=f"{point} {step}")
        assert proc.returncode == -9, proc.stderr
        if resumed_from is not None:
            assert re.search(rf"resuming from step {resumed_from}\b", proc.stderr), proc.stderr
        # a torn write leaves its temporary files behind; a kill after a rename leaves none
        assert list(out.glob(".tmp-*")) or list((out / "checkpoints").glob(".tmp-*")) or point.endswith("renamed")
        steps = [r["step"] for r in trained(out)][sum(len(s) for _, s in trained_by):]
        assert steps == list(range((resumed_from or 0) + 1, step + 1)), (point, steps)
        assert ck.latest_state(out).name == f"state-{resumes:08d}"
        trained_by.append((resumed_from, steps))
        resumed_from = resumes
        if point == "checkpoint.renamed":  # the checkpoint of step 6 is in place, the state of step 6 is not
            assert checkpoint_steps(out) == {"checkpoint-1": 6}
    again = tune(data, out, tiny_model_dir)
    assert again.returncode == 0, again.stderr
    assert re.search(rf"resuming from step {resumed_from}\b", again.stderr), again.stderr
    assert checkpoint_steps(out) == {"checkpoint-1": 6, "checkpoint-2": 12, "checkpoint-3": 18}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(c["checkpointId"], c["step"]) for c in manifest["checkpoints"]] == [("1", 6), ("2", 12), ("3", 18)]
    assert [r["step"] for r in mt.read_metrics(out)] == list(range(1, STEPS + 1))  # each step once in the curves
    log = trained(out)
    # steps 1-6, then 6-7 (from the state of 5), 7-12 (from 6), 12 (from 11), 13-18 (from 12): five processes
    assert [r["step"] for r in log] == [*range(1, 7), 6, 7, *range(7, 13), 12, *range(13, STEPS + 1)]
    assert [r["resumed_from"] for r in log if r["resumed_from"] is not None] == [5] * 2 + [6] * 6 + [11] + [12] * 6
    assert len({r["pid"] for r in log}) == 5
    assert not list(out.glob(".tmp-*")) and not list((out / "checkpoints").glob(".tmp-*"))
    assert [p.name for p in out.glob("state-*")] == [f"state-{STEPS:08d}"]


def test_a_resume_keeps_the_first_precision_and_threads_and_skips_a_torn_last_metrics_line(data, tmp_path,
                                                                                          tiny_model_dir):
    """One crash, two checks (each crash and resume costs two processes of the suite's time)."""
    out = tmp_path / "run"
    assert tune(data, out, tiny_model_dir, crash_at="metrics 4", TUNERY_PRECISION="bfloat16").returncode == -9
    runtime = json.loads((out / "run.json").read_text())["runtime"]
    assert runtime == {"device": "cpu", "precision": "bfloat16", "threads": threads.cores()}
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "epoch": 0.83, "/train_tot')  # a kill in the middle of a write
    assert [r["step"] for r in mt.read_metrics(out)] == [1, 2, 3, 4]
    assert [s for s, _ in read_curves(out)[mt.TRAIN_LOSS]] == [1, 2, 3, 4]
    again = tune(data, out, tiny_model_dir, TUNERY_PRECISION="float32")  # a fresh measurement would say float32
    assert again.returncode == 0, again.stderr
    assert [r["step"] for r in mt.read_metrics(out)] == list(range(1, STEPS + 1))
    assert not (out / ".metrics.jsonl.tmp").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["precision"], manifest["threads"]) == ("bfloat16", threads.cores())
    assert json.loads((out / "run.json").read_text())["runtime"] == runtime


def test_a_torn_line_in_the_middle_is_an_error_not_silently_dropped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "/tr\n{"step": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        mt.read_metrics(tmp_path)
