"""Keeping what is best, not what is last: with a validation set the tuned model's default checkpoint is the one with
the lowest validation loss, and early stopping ends a run whose validation loss stops improving, saying why.

The data make validation loss turn: training maps each word to the next one, validation asks for the word itself, so
the first epochs (an answer is one of these words) lower it and later ones (which word) raise it. The runs are in
fp32 so every machine takes the same path."""

from __future__ import annotations

import json

import pytest

from tests.helpers import contents, write_jsonl
from tunery import device
from tunery.config import TuningConfig
from tunery.errors import ConfigError
from tunery.train import metrics as mt
from tunery.train.engine import train
from tunery.train.selection import EarlyStop, default_checkpoint

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "candle"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_PRECISION", "float32")
    train_rows = [contents(("user", f"Word: {w}"), ("model", WORDS[(i + 1) % 8])) for i, w in enumerate(WORDS * 2)]
    val_rows = [contents(("user", f"Word: {w}"), ("model", w)) for w in WORDS]
    return write_jsonl(tmp_path / "train.jsonl", train_rows), write_jsonl(tmp_path / "val.jsonl", val_rows)


def _config(tmp_path, data, tiny_model_dir, **kw) -> TuningConfig:
    return TuningConfig(train=str(data[0]), validation=str(data[1]), base_model=str(tiny_model_dir), epochs=10,
                        batch_size=4, learning_rate=2e-2, adapter_size=4, output=str(tmp_path / "run"), **kw)


def test_the_default_checkpoint_has_the_lowest_validation_loss(tmp_path, data, tiny_model_dir):
    result = train(_config(tmp_path, data, tiny_model_dir))
    losses = {c["checkpointId"]: c["metrics"][mt.EVAL_LOSS] for c in result.checkpoints}
    assert len(losses) == 10  # one checkpoint per epoch, each with its own validation pass
    best = min(losses, key=losses.get)
    assert best != result.checkpoints[-1]["checkpointId"], f"validation loss never turned: {losses}"
    assert result.default_checkpoint["checkpointId"] == best
    assert "lowest validation loss" in result.default_checkpoint["reason"]
    chosen = next(c for c in result.checkpoints if c["checkpointId"] == best)
    served = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert served == (tmp_path / "run" / "checkpoints" / f"checkpoint-{best}" / "adapter_model.safetensors").read_bytes()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["default_checkpoint"]["checkpointId"] == best and manifest["early_stopping"] is None
    assert chosen["step"] == manifest["default_checkpoint"]["step"]


def test_early_stopping_stops_and_records_why(tmp_path, data, tiny_model_dir):
    result = train(_config(tmp_path, data, tiny_model_dir, early_stopping_patience=2))
    stopped = result.early_stopping
    assert stopped is not None and result.steps == stopped["step"] < 40
    assert "did not improve for 2 evaluations" in stopped["reason"]
    rows = mt.read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, stopped["step"] + 1))  # nothing trained after the stop
    evals = [r[mt.EVAL_LOSS] for r in rows if mt.EVAL_LOSS in r]
    assert min(evals) < evals[-1] and min(evals) < evals[-2]  # the last two passes were no better than the best
    assert result.checkpoints[-1]["step"] == stopped["step"]  # exported where it stopped
    assert [c["checkpointId"] for c in result.checkpoints] == [str(i) for i in range(1, len(result.checkpoints) + 1)]
    assert result.default_checkpoint["checkpointId"] != result.checkpoints[-1]["checkpointId"]
    again = train(_config(tmp_path, data, tiny_model_dir, early_stopping_patience=2))  # a finished run stays finished
    assert again.steps == result.steps and again.early_stopping == stopped


def test_early_stopping_needs_a_validation_set(tmp_path, data, tiny_model_dir):
    with pytest.raises(ConfigError) as exc:
        TuningConfig(train=str(data[0]), output=str(tmp_path / "run"), early_stopping_patience=2)
    assert str(exc.value).startswith("--early-stopping-patience: expected a validation dataset")


def test_selection_rules():
    ckpts = [{"checkpointId": str(i), "step": 10 * i, "metrics": {mt.EVAL_LOSS: v}} for i, v in enumerate([3, 2, 2, 2.5], 1)]
    chosen, why = default_checkpoint(ckpts)
    assert chosen["checkpointId"] == "3" and "the last, at step 40, had 2.5000" in why  # ties go to the later one
    assert default_checkpoint([{"checkpointId": "1", "step": 5, "metrics": {}}])[1].startswith("the last checkpoint")
    stop = EarlyStop(2)
    assert [stop.observe(s, v) for s, v in [(1, 3.0), (2, 2.0), (3, 2.00005), (4, 1.9), (5, 2.1), (6, 1.95)]] == \
        [False, False, False, False, False, True]
    assert EarlyStop.restore(2, stop.state()) == stop


def test_a_kill_right_after_the_early_stop_export_resumes_to_the_same_result(tmp_path, data, tiny_model_dir,
                                                                           monkeypatch):
    """SIGKILL once the early-stop checkpoint is renamed into place, before the state naming it is saved: the
    resumed run redoes the last steps, stops at the same step and exports the same checkpoint under the same id.
    (Only the last checkpoint is kept, so the one at the stop is the early stop's own export, id "1".)"""
    import os
    import subprocess
    import sys

    def tune(out, crash_at=None):
        if crash_at:
            out.mkdir(parents=True)
            (out / "crash-at").write_text(crash_at)
        cmd = [sys.executable, "-m", "tunery.cli", "tune", "--local", "--train", str(data[0]), "--validation",
               str(data[1]), "--base-model", str(tiny_model_dir), "--epochs", "20", "--batch-size", "4",
               "--learning-rate", "2e-2", "--adapter-size", "4", "--early-stopping-patience", "2",
               "--export-last-checkpoint-only", "--save-interval-seconds", "0", "--output", str(out)]
        return subprocess.run(cmd, env={**os.environ, "TUNERY_FAULTS": "1", "TUNERY_PRECISION": "float32"},
                              capture_output=True, text=True, timeout=300)

    def checkpoints(out):
        manifest = json.loads((out / "manifest.json").read_text())
        return manifest["early_stopping"], [(c["checkpointId"], c["step"]) for c in manifest["checkpoints"]]

    # uninterrupted, in this process: the same train() the command runs, in the same precision and threads
    monkeypatch.setenv("TUNERY_PRECISION", "float32")
    device.pick.cache_clear()
    try:
        train(TuningConfig(train=str(data[0]), validation=str(data[1]), base_model=str(tiny_model_dir), epochs=20,
                           batch_size=4, learning_rate=2e-2, adapter_size=4, early_stopping_patience=2,
                           export_last_checkpoint_only=True, output=str(tmp_path / "whole")))
    finally:
        device.pick.cache_clear()
    stopped, exported = checkpoints(tmp_path / "whole")
    assert stopped and exported == [("1", stopped["step"])] and stopped["step"] < 80  # only the stop's export
    killed = tune(tmp_path / "killed", crash_at=f"checkpoint.renamed {stopped['step']}")
    assert killed.returncode == -9, killed.stderr
    again = tune(tmp_path / "killed")
    assert again.returncode == 0, again.stderr
    assert checkpoints(tmp_path / "killed") == (stopped, exported)
    for name in ("adapter", f"checkpoints/checkpoint-{exported[-1][0]}"):
        assert (tmp_path / "killed" / name / "adapter_model.safetensors").read_bytes() == \
            (tmp_path / "whole" / name / "adapter_model.safetensors").read_bytes()
