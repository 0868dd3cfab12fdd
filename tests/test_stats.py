"""Statistics against numbers computed by hand."""

from __future__ import annotations

import numpy as np

from tunery.data.stats import distribution
from tunery.data.validate import Limits, validate
from tests.helpers import contents, write_jsonl


def test_distribution_by_hand():
    d = distribution(np.array([1, 2, 3, 4, 100]))
    assert (d["sum"], d["billableSum"], d["min"], d["max"], d["mean"], d["median"]) == (110, 110, 1.0, 100.0, 22.0, 3.0)
    # linear interpolation: p5 at rank 0.2 between 1 and 2; p95 at rank 3.8 between 4 and 100
    assert d["p5"] == 1.2 and abs(d["p95"] - 80.8) < 1e-9
    assert [b["count"] for b in d["buckets"]] == [4.0] + [0.0] * 8 + [1.0]
    assert d["buckets"][0]["left"] == 1.0 and d["buckets"][-1]["right"] == 100.0


def test_distribution_of_equal_values_is_one_bucket():
    d = distribution(np.array([7, 7]))
    assert d["buckets"] == [{"count": 2.0, "left": 7.0, "right": 7.0}] and d["p5"] == 7.0


def test_dataset_stats_by_hand(tmp_path, template, hf_tokenizer):
    rows = [contents(("user", "abc"), ("model", "de")),
            contents(("user", "fgh"), ("model", "ij"), ("user", "k"), ("model", "lmn"), system="sys"),
            {"bad": 1},
            contents(("user", "o"), ("model", "pq"))]
    report = validate(write_jsonl(tmp_path / "t.jsonl", rows), template=template, epochs=3, batch_size=2)
    s = report.files[0].stats
    assert s["tuningDatasetExampleCount"] == 3
    assert s["totalTuningCharacterCount"] == (3 + 2) + (3 + 2 + 1 + 3 + 3) + (1 + 2)
    assert s["totalBillableCharacterCount"] == s["totalTuningCharacterCount"] * 3
    assert s["userMessagePerExampleDistribution"]["sum"] == 4
    assert (s["userMessagePerExampleDistribution"]["min"], s["userMessagePerExampleDistribution"]["max"]) == (1.0, 2.0)
    assert s["tuningStepCount"] == 2 * 3  # ceil(3 / 2) steps per epoch
    assert s["droppedExampleReasons"] == ["unknown_format: 1 example, first at line 3"]
    # tokens, counted independently with the Hugging Face tokenizer and template
    def hf(msgs):
        return len(hf_tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

    def answer(text):  # an answer's supervised tokens: its text and <|im_end|>
        return len(hf_tokenizer(text, add_special_tokens=False)["input_ids"]) + 1

    totals = [hf([{"role": "user", "content": "abc"}, {"role": "assistant", "content": "de"}]),
              hf([{"role": "system", "content": "sys"}, {"role": "user", "content": "fgh"},
                  {"role": "assistant", "content": "ij"}, {"role": "user", "content": "k"},
                  {"role": "assistant", "content": "lmn"}]),
              hf([{"role": "user", "content": "o"}, {"role": "assistant", "content": "pq"}])]
    outputs = [answer("de"), answer("ij") + answer("lmn"), answer("pq")]
    assert s["userOutputTokenDistribution"]["sum"] == sum(outputs)
    assert s["userInputTokenDistribution"]["sum"] == sum(totals) - sum(outputs)
    assert s["totalTokenCount"] == sum(totals) and s["totalBillableTokenCount"] == 3 * sum(totals)
    assert s["supervisedTokenFraction"] == round(sum(outputs) / sum(totals), 6)
    assert [c["role"] for c in s["userDatasetExamples"]] == ["user", "model", "user", "model", "user", "model", "user", "model"]


def test_truncated_indices_count_usable_examples_from_zero(tmp_path, template):
    rows = [contents(("user", "q"), ("model", "a")), {"oops": 1}, contents(("user", "q2"), ("model", "long answer " * 30))]
    s = validate(write_jsonl(tmp_path / "t.jsonl", rows), template=template, limits=Limits(60, "test")).files[0].stats
    assert s["totalTruncatedExampleCount"] == 1 and s["truncatedExampleIndices"] == [1]
