"""The validator: one fixture per error kind (code, line and pointer), file-level limits, token limits, and a
property test that corrupting one line of a valid file yields an error at exactly that line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.data import validate as v
from tunery.data.formats import to_contents
from tunery.data.schema import Example, Turn
from tunery.data.media import Policy
from tunery.data.validate import Limits, validate
from tests.helpers import contents, write_jsonl

BAD = Path(__file__).parent / "fixtures" / "bad"
EXPECTED = json.loads((BAD / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_error_kind_is_reported_at_its_line(name):
    code, line, pointer = EXPECTED[name]
    # media are checked as for a vision model without an audio encoder, whose files are under this folder
    report = validate(BAD / name, media=Policy(frozenset({"image", "document"}), roots=(BAD.resolve(),)))
    errors = [(i.code, i.line, i.pointer) for i in report.issues if i.severity == "error"]
    assert not report.valid
    assert (code, line, pointer) in errors
    # and nothing is blamed on the good lines around it
    assert {ln for _, ln, _ in errors} == {line}


def test_bom_crlf_and_blank_lines_are_accepted_and_lines_still_count(tmp_path):
    good = json.dumps(contents(("user", "hi"), ("model", "yo"))).encode()
    bad = json.dumps(contents(("user", "hi"), ("model", ""))).encode()
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n\r\n   \r\n" + good.replace(b"yo", b"ok") + b"\r\n" + bad + b"\r\n")
    report = validate(path)
    assert [(i.code, i.line) for i in report.issues if i.severity == "error"] == [("empty_text", 5)]
    assert report.files[0].examples == 2 and report.files[0].records == 3


def test_a_clean_file_is_valid(tmp_path):
    rows = [contents(("user", f"q{i}"), ("model", f"a{i}")) for i in range(120)]
    report = validate(write_jsonl(tmp_path / "ok.jsonl", rows))
    assert report.valid and report.issues == []
    assert report.files[0].examples == 120 and report.files[0].format == "contents"


def test_fewer_than_100_examples_is_a_warning(tmp_path):
    report = validate(write_jsonl(tmp_path / "few.jsonl", [contents(("user", "q"), ("model", "a"))]))
    assert report.valid
    assert [(i.code, i.severity, i.line) for i in report.issues] == [("too_few_examples", "warning", None)]


def test_duplicates_name_the_first_occurrence(tmp_path):
    a, b = contents(("user", "q"), ("model", "a")), contents(("user", "q2"), ("model", "a2"))
    openai_a = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    report = validate(write_jsonl(tmp_path / "dup.jsonl", [a, b, a, openai_a]))
    dups = [(i.line, i.message) for i in report.issues if i.code == "duplicate_example"]
    assert dups == [(3, "same conversation as line 1"), (4, "same conversation as line 1")]
    assert "mixed_formats" in report.files[0].counts


def test_train_validation_overlap_is_a_warning_on_the_validation_line(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [contents(("user", f"q{i}"), ("model", "a")) for i in range(5)])
    val = write_jsonl(tmp_path / "v.jsonl", [contents(("user", "new"), ("model", "a")), contents(("user", "q3"), ("model", "a"))])
    report = validate(train, val)
    assert report.valid
    overlaps = [(i.file, i.line, i.message) for i in report.issues if i.code == "train_validation_overlap"]
    assert overlaps == [(str(val), 2, "also in the training file at line 4")]


def test_more_than_5000_validation_examples_is_an_error(tmp_path):
    rows = [contents(("user", f"q{i}"), ("model", "a")) for i in range(5001)]
    val = write_jsonl(tmp_path / "v.jsonl", rows)
    train = write_jsonl(tmp_path / "t.jsonl", rows[:1])
    report = validate(train, val)
    assert not report.valid
    assert report.file("validation").counts["too_many_validation_examples"] == 1
    assert report.file("train").errors == 0


def test_training_example_and_file_size_limits(tmp_path, monkeypatch):
    # The real limits (1M examples, 1 GiB) are exercised by bench/validate_bench.py; here the checks themselves.
    path = write_jsonl(tmp_path / "t.jsonl", [contents(("user", f"q{i}"), ("model", "a")) for i in range(4)])
    monkeypatch.setattr(v, "MAX_TRAIN_EXAMPLES", 3)
    monkeypatch.setattr(v, "MAX_FILE_BYTES", 100)
    issues = {(i.code, i.line, i.severity) for i in validate(path).issues}
    assert {("too_many_examples", None, "error"), ("file_too_large", None, "error")} <= issues


def test_missing_file_and_directory_raise_clear_errors(tmp_path):
    from tunery.errors import DatasetError

    with pytest.raises(DatasetError, match="file not found"):
        validate(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="is a directory"):
        validate(tmp_path)


def test_issue_list_is_capped_but_everything_is_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n" * 20)
    report = validate(path, max_issues=5)
    f = report.files[0]
    assert len(f.issues) == 5 and f.counts["invalid_json"] == 20 and f.errors == 20
    assert report.to_dict()["issues_listed_all"] is False


def test_csv_rows_keep_physical_line_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('input_text,output_text\n"multi\nline input",ok\n\nsecond,\nthird,fine\n', encoding="utf-8")
    report = validate(path)
    assert [(i.code, i.line, i.pointer) for i in report.issues if i.severity == "error"] == [("empty_text", 5, "/output_text")]
    assert report.files[0].examples == 2 and report.files[0].format == "columns"


def test_csv_missing_column_is_reported_on_the_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,answer\nq,a\n")
    issues = [(i.code, i.line) for i in validate(path).issues if i.severity == "error"]
    assert issues == [("missing_column", 1)]


def test_csv_invalid_utf8(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"input_text,output_text\nok,fine\ncaf\xe9,x\n")
    assert [(i.code, i.line) for i in validate(path).issues if i.severity == "error"] == [("invalid_utf8", 3)]


# ---------------------------------------------------------------- token limits (real tokenizer)

def test_over_the_token_limit_is_truncated_with_a_warning(tmp_path, template):
    ex = Example(turns=(Turn("user", "Name three colours."), Turn("model", "Red, green and blue " * 5)))
    path = write_jsonl(tmp_path / "t.jsonl", [to_contents(ex)])
    full = template.measure_batch([ex])[0]
    limit = full.total - 5  # cut 5 tokens off the answer
    report = validate(path, template=template, limits=Limits(limit, "--max-length"))
    [issue] = [i for i in report.issues if i.code == "example_too_long"]
    assert issue.severity == "warning" and issue.line == 1
    # the 5 cut tokens are "\n" (after the turn, no loss), <|im_end|> and 3 answer tokens: 4 supervised ones lost
    assert f"found {full.total:,}" in issue.message and f"keeping {full.supervised - 4:,} of {full.supervised:,}" in issue.message
    assert report.valid and report.files[0].stats["truncatedExampleIndices"] == [0]


def test_no_supervised_tokens_after_truncation_is_an_error(tmp_path, template):
    rows = [contents(("user", "short"), ("model", "fine")), contents(("user", "word " * 200), ("model", "answer"))]
    report = validate(write_jsonl(tmp_path / "t.jsonl", rows), template=template, limits=Limits(64, "--max-length"))
    assert [(i.code, i.line) for i in report.issues if i.severity == "error"] == [("no_supervised_tokens", 2)]
    assert report.files[0].stats["tuningDatasetExampleCount"] == 1


def test_control_token_typed_in_text_is_a_warning(tmp_path, template):
    rows = [contents(("user", "hi<|im_end|>"), ("model", "yo"))]
    report = validate(write_jsonl(tmp_path / "t.jsonl", rows), template=template)
    assert [(i.code, i.line) for i in report.issues if i.code == "special_token_in_text"] == [("special_token_in_text", 1)]
    assert report.valid


# ---------------------------------------------------------------- property: one corrupted line -> an error there

def _corrupt(raw: bytes, how: str, cut: int) -> bytes:
    obj = json.loads(raw)
    if how == "truncate":
        return raw[: max(1, min(cut, len(raw) - 1))]
    if how == "bad_byte":
        pos = max(1, min(cut, len(raw) - 1))
        return raw[:pos] + b"\xff" + raw[pos:]
    if how == "array":
        return b"[" + raw + b"]"
    if how == "empty_text":
        obj["contents"][-1]["parts"][0]["text"] = " "
    elif how == "user_last":
        obj["contents"][-1]["role"] = "user"
    elif how == "no_contents":
        del obj["contents"]
    elif how == "role_null":
        obj["contents"][0]["role"] = None
    return json.dumps(obj).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 25), data=st.data(),
       how=st.sampled_from(["truncate", "bad_byte", "array", "empty_text", "user_last", "no_contents", "role_null"]))
def test_corrupting_one_line_yields_an_error_at_exactly_that_line(tmp_path, n, data, how):
    rows = [json.dumps(contents(("user", f"question {i}?"), ("model", f"answer {i}"))).encode() for i in range(n)]
    k = data.draw(st.integers(0, n - 1))
    rows[k] = _corrupt(rows[k], how, data.draw(st.integers(1, 200)))
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    report = validate(path)
    assert {i.line for i in report.issues if i.severity == "error"} == {k + 1}
