"""The two seed notebooks and the blog (examples/) run end to end, every cell, against a live server: with the
google-genai that google-cloud-aiplatform resolves (what a notebook user gets), and the notebook's google-genai calls
again with the newest google-genai (installed by the Makefile beside the venv)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import tunery_home
from tests.test_api import LiveServer

REPO = Path(__file__).resolve().parents[1]
NEWEST_GENAI = REPO / ".venv" / "genai-latest"  # `pip install --target` of the newest google-genai (Makefile)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    with tunery_home(tmp_path_factory.mktemp("examples-home"), tiny_model_dir) as home, LiveServer(home) as live:
        yield live


def run(script: str, server, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), "--server", server.url,
                           "--work", str(server.home / script.removesuffix(".py")), *args],
                          capture_output=True, text=True, timeout=600, env=env or {**os.environ})
    (server.home / f"{script}.out").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def genai_version(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", "import google.genai; print(google.genai.__version__)"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def check_summarization(out: str, server) -> None:
    assert out.count("Mean rougeL_precision is") == 2 and "Model tuning has improved the rougeL_precision by" in out
    experiment = out.split("Tuned model experiment ", 1)[1].split()[0]
    endpoint = out.split("Tuned model endpoint resource name: ", 1)[1].split()[0]
    assert experiment.startswith("projects/my-project/locations/us-central1/metadataStores/default/contexts/")
    assert "Train loss: " in out and "Eval loss: " in out and "Eval loss: 0 points" not in out
    # The cleanup cells ran: experiment and endpoint gone, the tuned model kept.
    assert httpx.get(f"{server.url}/v1/{experiment}").status_code == 404
    assert httpx.get(f"{server.url}/v1/{endpoint}").status_code == 404
    work = server.home / "sft_summarization"
    assert (work / "loss.html").stat().st_size > 10_000 and not (work / "bucket").exists()


def test_summarization_notebook(server):
    out = run("sft_summarization.py", server, "--train-examples", "24", "--epochs", "1", "--eval-examples", "3",
              "--poll-seconds", "0.3")
    check_summarization(out, server)


def test_qa_notebook(server):
    out = run("sft_qa.py", server, "--test-rows", "5")
    assert out.count("EM score: ") == 2 and out.count("F1 score: ") == 2
    assert "Train loss: " in out and "eval loss: 0 points" in out  # the notebook passes no validation set
    assert (server.home / "sft_qa" / "loss.html").is_file()


def test_blog_with_the_vertexai_sdk(server):
    out = run("blog_alert_summarizer.py", server, "--train-examples", "4", "--epochs", "1", "--poll-seconds", "0.3")
    assert "Tuning job created: " in out and "\nCreate time: 20" in out  # the script exits unless SUCCEEDED
    assert "Tuned model: projects/your-project-id/locations/us-central1/endpoints/" in out
    assert out.count("Base model:") == 3 and out.count("Tuned model:") == 4
    assert "alert-summarizer-conservative: JOB_STATE_SUCCEEDED" in out and "alert-summarizer-aggressive: JOB_STATE_SUCCEEDED" in out


@pytest.mark.skipif(not NEWEST_GENAI.is_dir(), reason="make installs the newest google-genai in .venv/genai-latest")
def test_summarization_notebook_with_the_newest_google_genai_and_no_client_changes(server):
    """...and with the notebook's literal `genai.Client(vertexai=True, project=..., location=...)`: the environment
    `tunery env` prints, the GCE metadata routes answering google-auth."""
    from tests.test_vertex_sdk import zero_change_env

    env = {**zero_change_env(server.url, server.home), "PYTHONPATH": os.pathsep.join([str(NEWEST_GENAI), str(REPO)])}
    newest, resolved = genai_version(env), genai_version({**os.environ})
    assert int(newest.split(".")[0]) >= 3 and resolved.startswith("2."), (newest, resolved)
    out = run("sft_summarization.py", server, "--train-examples", "16", "--epochs", "1", "--eval-examples", "2",
              "--poll-seconds", "0.3", "--zero-change", env=env)
    check_summarization(out, server)
