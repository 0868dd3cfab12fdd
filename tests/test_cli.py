"""The CLI as a user runs it: exit codes, exact JSON fields, messages that say where and what."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tunery.cli import cli
from tests.helpers import contents, write_jsonl

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "fixtures" / "bad"
ALERTS = REPO / "examples" / "data"


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def test_validate_json_is_one_object_with_exact_fields():
    res = run("validate", str(BAD / "empty_text.jsonl"), "--json", "--no-tokens")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert {"valid", "issues", "stats"} <= set(doc) and doc["valid"] is False
    errors = [i for i in doc["issues"] if i["severity"] == "error"]
    assert errors == [{"line": 2, "pointer": "/contents/1/parts/0/text", "code": "empty_text", "severity": "error",
                       "message": "expected non-empty text, found only whitespace", "hint": "",
                       "file": str(BAD / "empty_text.jsonl")}]
    file_level = [i for i in doc["issues"] if i["line"] is None]
    assert [i["code"] for i in file_level] == ["too_few_examples"]


def test_validate_bundled_sample_with_tokens_exits_zero():
    res = run("validate", str(ALERTS / "alerts_train.jsonl"), "--validation", str(ALERTS / "alerts_val.jsonl"), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["valid"] is True and doc["issues"] == []
    assert doc["stats"]["tuningDatasetExampleCount"] == 240 and doc["validation_stats"]["tuningDatasetExampleCount"] == 40
    assert doc["stats"]["totalBillableTokenCount"] > 0


def test_validate_human_output_names_file_line_and_pointer():
    res = run("validate", str(BAD / "invalid_role.jsonl"), "--no-tokens")
    assert res.exit_code == 1
    assert f"{BAD / 'invalid_role.jsonl'}:2 /contents/1/role: error invalid_role expected role \"user\" or \"model\", found 'bot'" in res.stdout


def test_stats_json_has_vertex_fields():
    res = run("stats", str(ALERTS / "alerts_train.jsonl"), "--epochs", "2", "--batch-size", "8", "--json")
    assert res.exit_code == 0
    s = json.loads(res.stdout)
    for key in ("tuningDatasetExampleCount", "totalTuningCharacterCount", "totalBillableTokenCount", "tuningStepCount",
                "userInputTokenDistribution", "userOutputTokenDistribution", "userMessagePerExampleDistribution",
                "userDatasetExamples", "truncatedExampleIndices", "droppedExampleReasons", "supervisedTokenFraction"):
        assert key in s, key
    assert s["tuningStepCount"] == 30 * 2 and s["totalBillableTokenCount"] == 2 * s["totalTokenCount"]


def test_convert_messages_to_contents_and_back(tmp_path):
    out = tmp_path / "train.jsonl"
    res = run("convert", str(ALERTS / "alerts_train.jsonl"), str(out), "--to", "contents")
    assert res.exit_code == 0 and "wrote 240 examples" in res.stderr
    first_in = json.loads((ALERTS / "alerts_train.jsonl").read_text().splitlines()[0])
    first_out = json.loads(out.read_text().splitlines()[0])
    assert first_out == {"contents": [{"role": m["role"], "parts": [{"text": m["content"]}]} for m in first_in["messages"]]}
    back = tmp_path / "back.jsonl"
    assert run("convert", str(out), str(back), "--to", "messages").exit_code == 0
    assert back.read_text() == (ALERTS / "alerts_train.jsonl").read_text()


def test_convert_csv_to_openai(tmp_path):
    out = tmp_path / "test.jsonl"
    assert run("convert", str(ALERTS / "alerts_test.csv"), str(out), "--to", "openai").exit_code == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_convert_refuses_invalid_input_and_writes_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n")
    res = run("convert", str(BAD / "missing_parts.jsonl"), str(out))
    assert res.exit_code == 1 and "missing_parts" in res.stderr
    assert out.read_text() == "previous content\n"  # untouched
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind
    res = run("convert", str(BAD / "missing_parts.jsonl"), str(out), "--skip-invalid")
    assert res.exit_code == 0 and "skipped 1 invalid" in res.stderr and len(out.read_text().splitlines()) == 1


def test_inspect_marks_supervised_tokens(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [contents(("user", "Hi"), ("model", "Hello"))])
    res = run("inspect", str(path))
    assert res.exit_code == 0 and "2 supervised" in res.stdout and "Hello" in res.stdout


def test_usage_errors_exit_2_with_a_message(tmp_path):
    res = run("validate", str(tmp_path / "missing.jsonl"))
    assert res.exit_code == 2 and "missing.jsonl: file not found" in res.stderr
    res = run("validate", str(ALERTS / "alerts_val.jsonl"), "--base-model", "nope-model")
    assert res.exit_code == 2 and "unknown base model 'nope-model'" in res.stderr
    res = run("validate", str(ALERTS / "alerts_val.jsonl"), "--max-length", "0")
    assert res.exit_code == 2 and "--max-length" in res.stderr
    res = run("inspect", str(BAD / "empty_text.jsonl"), "--line", "2")
    assert res.exit_code == 2 and "empty_text" in res.stderr


def test_console_script_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "tunery.cli", "validate", str(BAD / "not_an_object.jsonl"), "--no-tokens"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not_an_object" in proc.stdout
