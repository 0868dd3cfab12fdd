"""Evaluation: metrics against hand-computed values and the reference libraries, batched greedy generation equal to
one-at-a-time, reports, and the eval / compare / metrics commands on the tiny model."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tunery import models
from tunery.cli import cli
from tunery.data.schema import Turn
from tunery.device import Runtime
from tunery.errors import DatasetError
from tunery.eval import metrics as mx
from tunery.eval import report as rp
from tunery.eval import run as er
from tunery.serve.generate import GenerationConfig, Prompt, generate, greedy
from tests.helpers import contents, write_jsonl

REPO = Path(__file__).resolve().parents[1]
CPU = Runtime("cpu", None)


def _seed_qa():
    """The seed notebook's own QA metric functions, as examples/sft_qa.py carries them."""
    spec = importlib.util.spec_from_file_location("sft_qa", REPO / "examples" / "sft_qa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- metrics

def test_rouge_by_hand_and_against_rouge_score():
    s = mx.score("summarization", ["the cat sat"], ["the cat sat on the mat"])
    assert s.metrics["rouge1_precision"] == 1.0 and s.metrics["rouge1_recall"] == 0.5
    assert s.metrics["rouge1_fmeasure"] == pytest.approx(2 / 3)
    assert s.metrics["rouge2_precision"] == 1.0 and s.metrics["rouge2_recall"] == pytest.approx(2 / 5)
    assert sorted(s.metrics) == sorted(f"{k}_{p}" for k in ("rouge1", "rouge2", "rougeL")
                                       for p in ("precision", "recall", "fmeasure"))
    from rouge_score import rouge_scorer

    preds = ["Running dogs chased cats.", "A summary of the alert", ""]
    refs = ["The dog runs after the cat.", "Alert summary: disk full", "something"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)  # the seed's scorer
    expected = [scorer.score(target=r, prediction=p) for p, r in zip(preds, refs)]
    got = mx.score("summarization", preds, refs)
    assert got.metrics["rougeL_precision"] == pytest.approx(sum(e["rougeL"].precision for e in expected) / 3)
    assert got.per_example == pytest.approx([e["rougeL"].fmeasure for e in expected])


def test_qa_exact_match_and_f1_by_hand_and_against_the_seed_functions():
    s = mx.score("qa", ["The Eiffel Tower", "1579", "in 1579."], ["eiffel tower", "1579", "1579"])
    # seed normalisation keeps "the" and the full stop; SQuAD's drops both
    assert s.metrics["exact_match"] == pytest.approx(1 / 3)
    assert s.per_example == pytest.approx([0.8, 1.0, 0.0])  # "the eiffel tower" vs "eiffel tower": P 2/3, R 1
    assert s.metrics["squad_exact_match"] == pytest.approx(2 / 3)  # "in 1579" still differs
    assert s.metrics["squad_f1"] == pytest.approx((1.0 + 1.0 + 2 * 0.5 * 1 / 1.5) / 3)
    seed = _seed_qa()
    preds = ["Cora  Vance", "the wool trade", "27,000 people", "no idea", "Pellin"]
    refs = ["cora vance", "wool", "27,000", "1520", "pellin"]
    got = mx.score("qa", preds, refs)
    assert got.metrics["exact_match"] == pytest.approx(sum(seed.exact_match_score(p, r) for p, r in zip(preds, refs)) / 5)
    assert got.metrics["f1"] == pytest.approx(sum(seed.f1_score_squad(p, r) for p, r in zip(preds, refs)) / 5)


def test_classification_by_hand_with_per_class_scores_and_confusion_matrix():
    s = mx.score("classification", ["A", "b.", "b", "xyz"], ["a", "a", "b", "c"])
    assert s.metrics["accuracy"] == 0.5
    per = s.details["per_class"]
    assert per["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert per["b"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert per["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s.metrics["macro_f1"] == pytest.approx(4 / 9)
    # micro: TP 2, FP 1 (b for a; "xyz" is no class), FN 2 -> P 2/3, R 1/2
    assert s.metrics["micro_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s.details["confusion_matrix"] == {"labels": ["a", "b", "c"], "predicted": ["a", "b", "c", mx.OTHER],
                                             "matrix": [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]}
    assert s.per_example == [1.0, 0.0, 1.0, 0.0]


def test_generation_bleu_and_chrf_against_sacrebleu():
    import sacrebleu

    perfect = mx.score("generation", ["a small red fox jumps"], ["a small red fox jumps"])
    assert perfect.metrics["bleu"] == pytest.approx(100.0) and perfect.metrics["chrf"] == pytest.approx(100.0)
    preds = ["the cat is on the mat", "there is a dog in the garden"]
    refs = ["the cat sits on the mat", "a dog is in the garden"]
    got = mx.score("generation", preds, refs)
    assert got.metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert got.metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert 0 < got.metrics["bleu"] < 100 and "rougeL_fmeasure" in got.metrics


def test_improvement_is_the_seeds_formula_and_unknown_tasks_are_refused():
    assert mx.improvement(0.4, 0.8) == pytest.approx(100.0)
    assert mx.improvement(0.5, 0.25) == pytest.approx(-50.0)
    assert mx.improvement(0.0, 0.3) is None
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        mx.score("poetry", ["a"], ["b"])
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        mx.score("qa", ["a", "b"], ["b"])


@pytest.mark.parametrize("refs, task", [
    (["positive", "negative", "positive", "neutral", "negative", "positive"], "classification"),
    (["1579", "Cora Vance", "the wool trade", "27,000"], "qa"),
    (["ALERT SUMMARY\nService: Cloud SQL\nSeverity: high\nAction: scale the instance up"] * 3, "summarization"),
])
def test_task_is_inferred_from_the_references(refs, task):
    assert er.infer_task(refs) == task


# ---------------------------------------------------------------- data

def test_items_from_contents_jsonl_and_the_seed_csv(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [contents(("user", "q1"), ("model", "a1"), system="be brief"),
                                              contents(("user", "q2"), ("model", "x"), ("user", "again"), ("model", "a2"))])
    items = er.load_items(path)
    assert [i.reference for i in items] == ["a1", "a2"] and [i.line for i in items] == [1, 2]
    assert items[0].prompt == Prompt((Turn("user", "q1"),), "be brief")
    assert [t.role for t in items[1].prompt.turns] == ["user", "model", "user"]
    with open(tmp_path / "seed.csv", "w", newline="") as f:
        csv.writer(f).writerows([["input_text", "output_text"], ["Summarize: x", "X."], ["Summarize: y", "Y."]])
    seed = er.load_items(tmp_path / "seed.csv", limit=1)
    assert len(seed) == 1 and seed[0].prompt.turns == (Turn("user", "Summarize: x"),) and seed[0].reference == "X."


def test_bad_evaluation_data_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(contents(("user", "q"), ("model", "a"))) + "\n{not json\n")
    with pytest.raises(DatasetError) as e:
        er.load_items(path)
    assert e.value.line == 2 and str(path) in str(e.value)
    empty = write_jsonl(tmp_path / "e.jsonl", [contents(("user", "q"), ("model", " "))])
    with pytest.raises(DatasetError) as e:
        er.load_items(empty)
    assert e.value.line == 1 and "/contents/1/parts/0/text" in e.value.message
    with pytest.raises(DatasetError, match="no examples"):
        er.load_items(write_jsonl(tmp_path / "none.jsonl", []))


# ---------------------------------------------------------------- batched generation

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    spec = models.resolve(str(tiny_model_dir))
    return models.load_model_fresh(spec).eval(), models.load_template(spec)


def _prompts() -> list[Prompt]:
    texts = ["Hi", "Tell me about the river Dove and the town on it", "2+2?", "Summarize: disk full on db-7 at 03:00",
             "A much longer prompt " * 6]
    return [Prompt((Turn("user", t),), "You are a terse assistant. Answer in a few words.") for t in texts]


def test_greedy_loop_equals_transformers_generate_with_rows_ending_early(tiny):
    model, template = tiny
    prompts = _prompts()
    encoded = [template.render_prompt(p.turns, p.system) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[template.end_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    with torch.no_grad():
        first = greedy(model, ids, mask, 12, template.end_id)
        stop = first[0][2]  # a token row 0 emits third: rows that emit it end early and leave the batch
        ours = greedy(model, ids, mask, 12, stop)
        hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                            eos_token_id=stop, pad_token_id=stop)[:, width:].tolist()
    assert len(ours[0]) == 3 and any(len(r) == 12 for r in ours)  # some rows ended early, some ran to the limit
    for row, ref in zip(ours, hf):
        assert row == ref[:len(row)] and all(t == stop for t in ref[len(row):])


def test_batched_generation_equals_one_at_a_time(tiny):
    model, template = tiny
    prompts = _prompts()
    config = GenerationConfig(max_output_tokens=10)
    from tunery.serve.generate import _shared_prefix

    assert _shared_prefix([template.render_prompt(p.turns, p.system) for p in prompts]) >= 8  # the prefix pass runs
    alone = [generate(model, template, [p], config, CPU)[0] for p in prompts]
    batched = er.generate_batched(lambda b: generate(model, template, b, config, CPU), template, prompts, 2)
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.output_tokens for g in batched] == [g.output_tokens for g in alone]
    assert [g.prompt_tokens for g in batched] == [len(template.render_prompt(p.turns, p.system)) for p in prompts]


# ---------------------------------------------------------------- reports

def _evaluation() -> er.Evaluation:
    items = [er.Item(k + 1, Prompt((Turn("user", f"q{k}"),)), ref) for k, ref in enumerate(["a b", "c d", "e f"])]
    base = er.Result(er.Target("base"), "qa", {"exact_match": 1 / 3, "f1": 0.5}, {}, [1.0, 0.5, 0.0],
                     ["a b", "c", "<script>x</script>"], [2, 1, 3], 1.0)
    tuned = er.Result(er.Target("tuned"), "qa", {"exact_match": 2 / 3, "f1": 0.75}, {}, [0.5, 1.0, 0.75],
                      ["a", "c d", "e"], [1, 2, 1], 0.5)
    return er.Evaluation("data.jsonl", "qa", items, {"base": base, "tuned": tuned}, {"temperature": 0.0})


def test_report_lists_fixed_and_regressed_examples_and_improvement():
    report = rp.build(_evaluation(), {"/train_total_loss": [[1, 2.0], [2, 1.5]]})
    assert report["improvement_percent"] == {"exact_match": pytest.approx(100.0), "f1": pytest.approx(50.0)}
    assert [r["line"] for r in report["fixed"]] == [3, 2]  # largest gain first
    assert [r["line"] for r in report["regressed"]] == [1]
    assert report["rows"][2] == {"line": 3, "prompt": "q2", "reference": "e f", "base": "<script>x</script>",
                                 "base_score": 0.0, "tuned": "e", "tuned_score": 0.75}
    assert report["lengths"]["reference"]["mean_words"] == 2.0 and report["lengths"]["tuned"]["max_words"] == 2
    page = rp.html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page  # model output is escaped
    assert "+100.0%" in page and "Fixed by tuning: 2 of 3" in page and "<svg" in page
    assert "exact_match" in rp.table(report) and "+50.0%" in rp.table(report)


# ---------------------------------------------------------------- commands

@pytest.fixture(scope="module")
def qa_data(tmp_path_factory) -> Path:
    rows = [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}."))
            for i, c in enumerate(["red", "green", "blue", "black", "white", "pink"] * 2)]
    return write_jsonl(tmp_path_factory.mktemp("evaldata") / "colours.jsonl", rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, qa_data, tiny_model_dir) -> Path:
    from tunery.config import TuningConfig
    from tunery.train.engine import train

    out = tmp_path_factory.mktemp("evalrun") / "run"
    train(TuningConfig(train=str(qa_data), validation=str(qa_data), base_model=str(tiny_model_dir), output=str(out),
                       epochs=2, batch_size=4, learning_rate=5e-3))
    return out


def test_eval_command_prints_one_json_object_with_metrics(qa_data, tiny_model_dir):
    r = CliRunner().invoke(cli, ["eval", "--data", str(qa_data), "--model", str(tiny_model_dir), "--task", "qa",
                                 "--limit", "5", "--max-output-tokens", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sorted(doc["metrics"]) == ["exact_match", "f1", "squad_exact_match", "squad_f1"]
    assert doc["examples"] == 5 and doc["task"] == "qa" and doc["models"]["model"]["base_model"] == str(tiny_model_dir)


def test_compare_writes_html_and_json_reports_with_training_curves(qa_data, run_dir, tmp_path):
    html = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["compare", "--tuned", str(run_dir), "--data", str(qa_data), "--task", "qa",
                                 "--max-output-tokens", "6", "--batch-size", "5", "--report", str(html)])
    assert r.exit_code == 0, r.output
    assert "improvement" in r.stdout and str(html) in r.stdout
    report = json.loads(html.with_suffix(".json").read_text())
    assert set(report["metrics"]) == {"base", "tuned"} and report["examples"] == 12
    assert report["models"]["tuned"]["adapter"] == str(run_dir / "adapter")
    assert report["models"]["base"]["base_model"] == report["models"]["tuned"]["base_model"]
    steps = [s for s, _ in report["curves"]["/train_total_loss"]]
    assert steps == list(range(1, 7)) and [s for s, _ in report["curves"]["/eval_total_loss"]][-1] == 6
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "Training curves" in page
    assert not any(ref in page for ref in ("src=", "href=", "<script", "@import"))  # self-contained: nothing to fetch


def test_metrics_command_plots_html_and_png(run_dir, tmp_path):
    r = CliRunner().invoke(cli, ["metrics", str(run_dir), "--plot", str(tmp_path / "c.png"), "--json"])
    assert r.exit_code == 0, r.output
    curves = json.loads(r.stdout)
    assert len(curves["/train_total_loss"]) == 6 and curves["/train_total_loss"][0][0] == 1
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(cli, ["metrics", str(run_dir), "--plot", str(tmp_path / "c.html")])
    assert r.exit_code == 0 and (tmp_path / "c.html").read_text().count("<svg") == 2


@pytest.mark.parametrize("args, message", [
    (["metrics", "RUN", "--plot", "x.svg"], "--plot: expected a file ending in .html or .png, found"),
    (["metrics", "EMPTY"], "no metrics.jsonl with steps in this directory"),
    (["eval", "--data", "BAD", "--model", "TINY"], "bad.jsonl:2: expected"),
    (["eval", "--data", "DATA", "--model", "UNFINISHED"], "this run has not finished"),
    (["eval", "--data", "DATA", "--model", "no-such-model"], "unknown base model"),
    (["eval", "--data", "DATA", "--server", "http://127.0.0.1:9"], "--model is required with --server"),
    (["compare", "--tuned", "7", "--data", "DATA", "--server", "http://127.0.0.1:9"], "--base is required with --server"),
    (["eval", "--data", "DATA", "--model", "7", "--server", "http://127.0.0.1:9"], "cannot reach the tunery server"),
])
def test_eval_commands_report_bad_input_with_exit_code_2(args, message, run_dir, qa_data, tiny_model_dir, tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps(contents(("user", "q"), ("model", "a"))) + "\n[1]\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run.json").write_text("{}")
    subst = {"RUN": str(run_dir), "EMPTY": str(tmp_path / "empty"), "BAD": str(tmp_path / "bad.jsonl"),
             "TINY": str(tiny_model_dir), "DATA": str(qa_data), "UNFINISHED": str(tmp_path / "unfinished")}
    r = CliRunner().invoke(cli, [subst.get(a, a) for a in args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.stderr.split())
