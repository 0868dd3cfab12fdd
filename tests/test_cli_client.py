"""The CLI client commands (jobs, models, generate) against a live server."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.helpers import contents, tunery_home, write_jsonl
from tests.test_api import LiveServer
from tunery.cli import cli


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    with tunery_home(tmp_path_factory.mktemp("cli-home"), tiny_model_dir) as home:
        write_jsonl(home / "train.jsonl", [contents(("user", f"q{i}"), ("model", f"a{i}")) for i in range(8)])
        with LiveServer(home) as live:
            yield live


def run(server, *args):
    return CliRunner().invoke(cli, ["-q", *args, "--server", server.url], catch_exceptions=False)


def test_jobs_models_and_generate_round_trip(server):
    res = run(server, "jobs", "create", "--train", str(server.home / "train.jsonl"), "--epochs", "1", "--adapter-size", "2",
              "--display-name", "cli-model", "--wait")
    assert res.exit_code == 0, res.output
    assert "JOB_STATE_SUCCEEDED" in res.stdout and "endpoint: projects/local/locations/us-central1/endpoints/" in res.stdout
    job_id = res.stdout.split()[0].rsplit("/", 1)[1]
    listed = json.loads(run(server, "jobs", "list", "--json").stdout)
    assert [j["name"].rsplit("/", 1)[1] for j in listed] == [job_id]
    assert json.loads(run(server, "jobs", "list", "--json", "--state", "JOB_STATE_FAILED").stdout) == []
    described = json.loads(run(server, "jobs", "describe", job_id, "--json").stdout)
    assert described["supervisedTuningSpec"]["hyperParameters"]["adapterSize"] == "ADAPTER_SIZE_TWO"
    endpoint = described["tunedModel"]["endpoint"]
    gen = run(server, "generate", "--model", endpoint, "q1", "--max-output-tokens", "3")
    assert gen.exit_code == 0 and gen.stdout.strip() != ""
    assert run(server, "generate", "q1", "--max-output-tokens", "2").exit_code == 0  # the base model by Gemini name
    models = run(server, "models", "list")
    model_name = described["tunedModel"]["model"].split("@")[0]
    assert model_name in models.stdout and "cli-model" in models.stdout
    cancel = run(server, "jobs", "cancel", job_id)
    assert cancel.exit_code == 2 and "FAILED_PRECONDITION" in cancel.stderr and "already ended" in cancel.stderr
    assert run(server, "models", "delete", model_name.rsplit("/", 1)[1]).exit_code == 0
    assert model_name not in run(server, "models", "list").stdout


def test_unreachable_server_is_a_clear_error():
    res = CliRunner().invoke(cli, ["jobs", "list", "--server", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "cannot reach the tunery server at http://127.0.0.1:9" in res.stderr
