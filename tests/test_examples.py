"""The two seed notebooks (examples/) run end to end through the unmodified SDK against a live server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tunery_home
from tests.test_api import LiveServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    with tunery_home(tmp_path_factory.mktemp("examples-home"), tiny_model_dir) as home, LiveServer(home) as live:
        yield live


def run(script: str, server, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), "--server", server.url,
                           "--work", str(server.home / script.removesuffix(".py")), *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_summarization_notebook(server):
    out = run("sft_summarization.py", server, "--train-examples", "24", "--epochs", "1", "--eval-examples", "3")
    assert "Mean rougeL_precision before tuning" in out and "Mean rougeL_precision after tuning" in out
    assert "Tuned model endpoint resource name: projects/my-project/locations/us-central1/endpoints/" in out


def test_qa_notebook(server):
    out = run("sft_qa.py", server, "--epochs", "1", "--eval-examples", "3")
    assert "Before tuning: EM score" in out and "After tuning: EM score" in out
