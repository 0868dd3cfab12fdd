"""tunery's own calls use no deprecated API of its dependencies. The library's main paths run here with
every DeprecationWarning and FutureWarning traced to its caller, and a failure when tunery is the caller: training with validation and checkpoints, evaluation of the
base model and of the tuned adapter through the serving registry (greedy and sampled decoding, the shared-prefix
pass), the report, and the loss-curve plot. An upgrade that removes an API then breaks this test, not a user (a
fresh install would otherwise pick the new release up the day it ships; the locks keep `make test` on known ones)."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.helpers import contents, no_deprecated_calls_from, write_jsonl
from tunery.config import TuningConfig
from tunery.eval import report
from tunery.eval import run as ev
from tunery.serve.generate import GenerationConfig, Prompt
from tunery.data.schema import Turn
from tunery.train.engine import train


def test_training_evaluation_and_serving_call_no_deprecated_api(tmp_path, tiny_model_dir):
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    rows = [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}."), system="Answer briefly.")
            for i, c in enumerate(colours * 2)]
    train_file, val_file = write_jsonl(tmp_path / "t.jsonl", rows[:12]), write_jsonl(tmp_path / "v.jsonl", rows[12:])
    with open(tmp_path / "test.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["input_text", "output_text"])
        out.writerows([f"Colour {i}: {c}?", f"It is {c}."] for i, c in enumerate(colours[:4]))
    with no_deprecated_calls_from(Path(__file__).resolve().parents[1] / "tunery") as others:
        result = train(TuningConfig(train=str(train_file), validation=str(val_file), base_model=str(tiny_model_dir),
                                    output=str(tmp_path / "run"), epochs=2, batch_size=4, learning_rate=5e-3))
        assert result.steps == 6
        generator = ev.Generator()
        targets = {"base": ev.resolve_target(str(tiny_model_dir)), "tuned": ev.resolve_target(str(tmp_path / "run"))}
        evaluation = ev.run(tmp_path / "test.csv", targets, task="generation", max_output_tokens=6,
                            generator=generator)
        built = report.build(evaluation, report.read_curves(tmp_path / "run"))
        assert "<svg" in report.html(built)
        report.curves_png(report.read_curves(tmp_path / "run"), "curves", tmp_path / "curves.png")
        sampled = generator.generate(targets["tuned"], [Prompt((Turn("user", "Colour 9: red?"),), "Answer briefly.")] * 2,
                                     GenerationConfig(max_output_tokens=4, temperature=0.9, top_p=0.9, top_k=20, seed=3))
    print("deprecated APIs that dependencies call themselves:", *others, sep="\n")
    assert len(sampled) == 2 and all(g.output_tokens >= 1 for g in sampled)
    assert (tmp_path / "curves.png").stat().st_size > 1000
