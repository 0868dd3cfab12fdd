"""The google-cloud-aiplatform / vertexai SDK over REST against a live server: the seed notebook's Step 7a
(Experiments + TensorBoard), its cleanup cells (Experiment.delete, Endpoint.delete(force=True)), the blog's
vertexai flow, and the zero-change google-genai client through the GCE metadata routes. No mocked transport."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest

from tests.helpers import contents, tunery_home, write_jsonl
from tests.test_api import LiveServer, sdk, wait_done
from tunery.train import metrics as mt

P = "projects/my-project/locations/us-central1"
MD = f"{P}/metadataStores/default"
http = httpx.Client(timeout=120)  # the first generate loads the model: slow on a busy 2-core machine
SERIES = [mt.TRAIN_LOSS, mt.TRAIN_ACCURACY, mt.TRAIN_PREDICTIONS, mt.EVAL_LOSS, mt.EVAL_ACCURACY, mt.EVAL_PREDICTIONS]

warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)  # vertexai.tuning's notice


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    rows = [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}.")) for i, c in enumerate(colours * 3)]
    with tunery_home(tmp_path_factory.mktemp("vertex-home"), tiny_model_dir) as home:
        (home / "data").mkdir()
        write_jsonl(home / "data" / "train.jsonl", rows[:16])
        write_jsonl(home / "data" / "val.jsonl", rows[16:])
        yield home


@pytest.fixture(scope="module")
def server(home):
    with LiveServer(home) as live:
        yield live


def tune(server, home, epochs: int = 2, validation: bool = True):
    from google.genai import types

    client = sdk(server.url)
    val = types.TuningValidationDataset(gcs_uri=str(home / "data" / "val.jsonl")) if validation else None
    job = client.tunings.tune(base_model="gemini-2.0-flash-001",
                              training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
                              config=types.CreateTuningJobConfig(epoch_count=epochs, validation_dataset=val,
                                                                 tuned_model_display_name="colours"))
    return job


@pytest.fixture(scope="module")
def tuned(server, home):
    job = wait_done(sdk(server.url), tune(server, home).name)
    assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
    return job


def vertex_init(server) -> None:
    import google.oauth2.credentials
    import vertexai

    vertexai.init(project="my-project", location="us-central1", api_endpoint=server.url, api_transport="rest",
                  credentials=google.oauth2.credentials.Credentials(token="local-dev"))


def read_tensorboard(experiment_name: str) -> dict:
    """The seed notebook's Step 7a, verbatim."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform.metadata import context
    from google.cloud.aiplatform.metadata import utils as metadata_utils

    experiment = aiplatform.Experiment(experiment_name=experiment_name)
    filter_str = metadata_utils._make_filter_string(
        schema_title="system.ExperimentRun",
        parent_contexts=[experiment.resource_name],
    )
    experiment_run = context.Context.list(filter_str)[0]
    tensorboard_run_name = f"{experiment.get_backing_tensorboard_resource().resource_name}/experiments/{experiment.name}/runs/{experiment_run.name.replace(experiment.name, '')[1:]}"
    tensorboard_run = aiplatform.TensorboardRun(tensorboard_run_name)
    return tensorboard_run.read_time_series_data()


def job_id(job) -> str:
    return job.name.rsplit("/", 1)[1]


def test_step_7a_reads_exactly_the_jobs_metrics(server, home, tuned):
    vertex_init(server)
    metrics = read_tensorboard(tuned.experiment)
    records = mt.read_metrics(home / "jobs" / job_id(tuned) / "run")
    assert set(metrics) == set(SERIES)
    for name in SERIES:
        expected = [(r["step"], r[name]) for r in records if name in r]
        got = [(v.step, v.scalar.value) for v in metrics[name].values]
        assert len(got) == len(expected) > 0, name
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)  # proto floats are 32-bit
    assert metrics[mt.TRAIN_LOSS].values[0].wall_time.year >= 2025


def test_create_answer_has_no_experiment_and_the_experiment_is_readable_while_running(server, home):
    from google.cloud import aiplatform

    created = http.post(f"{server.url}/v1beta1/{P}/tuningJobs", json={
        "baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {
            "trainingDatasetUri": str(home / "data" / "train.jsonl"), "hyperParameters": {"epochCount": "100"}}}).json()
    assert "experiment" not in created and created["state"] == "JOB_STATE_PENDING"
    name = created["name"]
    deadline, job = time.monotonic() + 120, created
    while time.monotonic() < deadline:
        job = http.get(f"{server.url}/v1beta1/{name}").json()
        if job["state"] == "JOB_STATE_RUNNING" and int(job.get("tuningJobMetadata", {}).get("completedStepCount", 0)) >= 2:
            break
        time.sleep(0.2)
    try:
        assert job["state"] == "JOB_STATE_RUNNING" and job["experiment"] == f"{MD}/contexts/tuning-experiment-{name.rsplit('/', 1)[1]}"
        vertex_init(server)
        assert aiplatform.Experiment(experiment_name=job["experiment"]).name == job["experiment"].rsplit("/", 1)[1]
        losses = read_tensorboard(job["experiment"])[mt.TRAIN_LOSS].values
        assert len(losses) >= 2 and [v.step for v in losses] == list(range(1, len(losses) + 1))
        run_ctx = http.get(f"{server.url}/v1/{job['experiment']}-run-1").json()
        assert run_ctx["metadata"]["_STATE"] == "RUNNING" and run_ctx["parentContexts"] == [job["experiment"]]
    finally:
        http.post(f"{server.url}/v1beta1/{name}:cancel")
    assert wait_done(sdk(server.url), name).state.name == "JOB_STATE_CANCELLED"


def test_cleanup_cells_delete_the_experiment_and_endpoint_and_keep_the_model(server, home):
    from google.cloud import aiplatform

    job = wait_done(sdk(server.url), tune(server, home, epochs=1, validation=False).name)
    experiment_name, tuned_model = job.experiment, job.tuned_model.endpoint
    vertex_init(server)
    assert len(read_tensorboard(experiment_name)[mt.EVAL_LOSS].values) == 0
    # The notebook's "Cleaning up" cells, verbatim.
    experiments_list = aiplatform.Experiment.list()
    for experiment in experiments_list:
        if experiment.resource_name == experiment_name:
            experiment.delete()
            break
    else:
        pytest.fail(f"{experiment_name} not in Experiment.list()")
    for endpoint in aiplatform.Endpoint.list():
        if endpoint.resource_name == tuned_model:
            endpoint.delete(force=True)
            break
    else:
        pytest.fail(f"{tuned_model} not in Endpoint.list()")

    assert tuned_model not in [e.resource_name for e in aiplatform.Endpoint.list()]
    assert experiment_name not in [e.resource_name for e in aiplatform.Experiment.list()]
    gone = http.get(f"{server.url}/v1/{experiment_name}")
    assert gone.status_code == 404 and gone.json()["error"]["status"] == "NOT_FOUND"
    after = http.get(f"{server.url}/v1beta1/{job.name}").json()
    assert "experiment" not in after and after["state"] == "JOB_STATE_SUCCEEDED"
    assert "endpoint" not in after["tunedModel"] or after["tunedModel"]["endpoint"] is None
    r = http.post(f"{server.url}/v1/{tuned_model}:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    model_name = job.tuned_model.model.split("@")[0]
    model = http.get(f"{server.url}/v1beta1/{model_name}").json()
    assert model["name"] == model_name and model["deployedModels"] == []  # the tuned model stays
    by_model = http.post(f"{server.url}/v1beta1/{model_name}:generateContent",
                          json={"contents": [{"parts": [{"text": "Colour 1?"}]}], "generationConfig": {"maxOutputTokens": 3}})
    assert by_model.status_code == 200 and by_model.json()["candidates"][0]["content"]["parts"][0]["text"]
    curves = http.get(f"{server.url}/v1beta1/{job.name}/metrics").json()["curves"]
    assert len(curves[mt.TRAIN_LOSS]) > 0  # the job's metrics survive the experiment
    ckpt_endpoint = job.tuned_model.checkpoints[0].endpoint
    assert http.delete(f"{server.url}/v1beta1/{model_name}").status_code == 200  # deleting the model removes the rest
    assert http.get(f"{server.url}/v1/{ckpt_endpoint}").status_code == 404


def test_undeploy_then_generate_is_a_clear_400_and_operations_are_readable(server, tuned):
    ep_name = tuned.tuned_model.checkpoints[-1].endpoint
    ep = http.get(f"{server.url}/v1/{ep_name}").json()
    deployed_id = ep["deployedModels"][0]["id"]
    assert ep["trafficSplit"] == {deployed_id: 100} and ep["createTime"].endswith("Z")
    refused = http.delete(f"{server.url}/v1/{ep_name}")
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "FAILED_PRECONDITION"
    wrong = http.post(f"{server.url}/v1/{ep_name}:undeployModel", json={"deployedModelId": "nope"})
    assert wrong.status_code == 404 and "has no deployed model 'nope'" in wrong.json()["error"]["message"]
    missing = http.post(f"{server.url}/v1/{ep_name}:undeployModel", json={"deployedModelId": 7})
    assert missing.status_code == 400 and missing.json()["error"]["message"].startswith("deployedModelId: required")
    op = http.post(f"{server.url}/v1/{ep_name}:undeployModel", json={"deployedModelId": deployed_id}).json()
    assert op["done"] is True and op["response"]["@type"].endswith("UndeployModelResponse")
    assert op["name"].startswith(f"{P}/operations/")
    assert http.get(f"{server.url}/v1/{op['name']}").json() == op
    assert http.get(f"{server.url}/ui/{op['name']}").json() == op
    after = http.get(f"{server.url}/v1/{ep_name}").json()
    assert after["deployedModels"] == [] and after["trafficSplit"] == {}
    r = http.post(f"{server.url}/v1/{ep_name}:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]})
    assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert "undeployed" in r.json()["error"]["message"]
    deleted = http.delete(f"{server.url}/v1/{ep_name}").json()
    assert deleted["done"] is True and deleted["response"]["@type"] == "type.googleapis.com/google.protobuf.Empty"
    assert http.post(f"{server.url}/v1/{ep_name}:generateContent",
                      json={"contents": [{"parts": [{"text": "x"}]}]}).status_code == 404
    model = http.get(f"{server.url}/v1beta1/{tuned.tuned_model.model.split('@')[0]}").json()
    assert model["deployedModels"]  # the final endpoint is untouched


def test_blog_flow_through_the_vertexai_sdk(server, home):
    """The blog's calls, with the SDK's real names: vertexai.tuning.sft.train / SupervisedTuningJob (the blog's
    GenerativeModel.tune_model does not exist in the SDK)."""
    from vertexai.generative_models import GenerativeModel
    from vertexai.tuning import sft

    vertex_init(server)
    tuning_job = sft.train(source_model="gemini-1.5-flash-002", train_dataset=str(home / "data" / "train.jsonl"),
                           validation_dataset=str(home / "data" / "val.jsonl"), epochs=1, learning_rate_multiplier=1.0,
                           adapter_size=8, tuned_model_display_name="alert-summarizer-v1")
    deadline = time.monotonic() + 120
    while not tuning_job.has_ended and time.monotonic() < deadline:
        time.sleep(0.5)
        tuning_job.refresh()
    again = sft.SupervisedTuningJob(tuning_job.resource_name)
    assert again.state.name == "JOB_STATE_SUCCEEDED" and again.create_time.year >= 2025
    assert tuning_job.tuned_model_endpoint_name.startswith(f"{P}/endpoints/")
    stored = http.get(f"{server.url}/v1beta1/{tuning_job.resource_name}").json()
    assert stored["supervisedTuningSpec"]["hyperParameters"]["adapterSize"] == "ADAPTER_SIZE_EIGHT"
    tuned_model = GenerativeModel(tuning_job.tuned_model_endpoint_name)
    text = tuned_model.generate_content("Colour 1?", generation_config={"max_output_tokens": 5}).text
    chunks = [c.text for c in tuned_model.generate_content("Colour 1?", generation_config={"max_output_tokens": 5},
                                                           stream=True)]
    assert "".join(chunks) == text and len(chunks) >= 2  # greedy: streamed equals whole
    base_model = GenerativeModel("gemini-1.5-flash-002")
    assert base_model.generate_content("Colour 1?", generation_config={"max_output_tokens": 3}).text
    assert base_model.count_tokens("Colour 1?").total_tokens == http.post(
        f"{server.url}/v1/{P}/publishers/google/models/gemini-1.5-flash-002:countTokens",
        json={"contents": [{"role": "user", "parts": [{"text": "Colour 1?"}]}]}).json()["totalTokens"]


def test_stream_without_alt_sse_is_one_json_array(server, tuned):
    with http.stream("POST", f"{server.url}/v1/{tuned.tuned_model.endpoint}:streamGenerateContent",
                      params={"$alt": "json;enum-encoding=int"},
                      json={"contents": [{"parts": [{"text": "Colour 1?"}]}], "generationConfig": {"maxOutputTokens": 4}}) as r:
        body = r.read().decode()
    assert r.status_code == 200 and body.startswith("[") and body.endswith("]")
    import json

    chunks = json.loads(body)
    assert chunks[-1]["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS") and "usageMetadata" in chunks[-1]


@pytest.mark.parametrize("path, status", [
    (f"/v1/{MD}/contexts/tuning-experiment-123", 404),
    (f"/v1/{MD}/contexts/tuning-experiment-123-run-1", 404),
    (f"/v1/{MD}/contexts/something-else", 404),
    (f"/v1/{MD}/artifacts/tuning-experiment-123-run-1-tb-run", 404),
    (f"/v1/{MD}/artifacts/x", 404),
    (f"/v1/{P}/tensorboards/77", 404),
    (f"/v1/{P}/tensorboards/default/experiments/tuning-experiment-123", 404),
    (f"/v1/{P}/tensorboards/default/experiments/x/runs/run-1", 404),
    (f"/v1/{P}/tensorboards/default/experiments/tuning-experiment-123/runs/run-1/timeSeries", 404),
    (f"/v1/{P}/tensorboards/default:batchRead?timeSeries=nonsense", 400),
    (f"/v1/{P}/tensorboards/default:batchRead", 400),
    (f"/v1/{P}/endpoints/123", 404),
    (f"/v1/{P}/operations/123", 404),
    (f"/ui/{P}/operations/123", 404),
    (f"/v1/{MD}/contexts?filter=foo%3D1", 400),
    (f"/v1/{P}/endpoints?pageSize=0x", 400),
])
def test_new_routes_answer_bad_ids_in_the_vertex_error_shape(server, path, status):
    r = http.get(server.url + path)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"code", "message", "status"} and r.json()["error"]["code"] == status


def test_bad_deletes_and_undeploys(server):
    assert http.delete(f"{server.url}/v1/{MD}/contexts/tuning-experiment-42").status_code == 404
    assert http.delete(f"{server.url}/v1/{P}/endpoints/42").status_code == 404
    r = http.post(f"{server.url}/v1/{P}/endpoints/42:undeployModel", json={"deployedModelId": "1"})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    r = http.post(f"{server.url}/v1/{P}/endpoints/42:undeployModel", content=b"[1,",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_another_project_cannot_see_the_experiment(server, tuned):
    other = tuned.experiment.replace("my-project", "other-project")
    assert http.get(f"{server.url}/v1/{other}").status_code == 404


def zero_change_env(server_url: str, home: Path) -> dict:
    """The process environment after `eval "$(tunery env --server URL)"`, in a HOME with no gcloud credentials."""
    from click.testing import CliRunner

    from tunery.cli import cli

    result = CliRunner().invoke(cli, ["env", "--server", server_url])
    assert result.exit_code == 0, result.output
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_API_KEY",
                                                            "GEMINI_API_KEY", "CLOUDSDK_CONFIG")}
    for line in result.output.splitlines():
        if line.startswith("export "):
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value
    assert "unset GOOGLE_APPLICATION_CREDENTIALS" in result.output
    return {**env, "HOME": str(home)}


def test_tunery_env_refuses_a_bad_url():
    from click.testing import CliRunner

    from tunery.cli import cli

    result = CliRunner().invoke(cli, ["env", "--server", "127.0.0.1:8080"])
    assert result.exit_code == 2 and "expected a URL like http://127.0.0.1:8080, found '127.0.0.1:8080'" in result.output


def test_zero_change_client_through_the_gce_metadata_routes(server, tmp_path):
    """The notebook's literal `genai.Client(vertexai=True, project=..., location=...)` with only env variables set."""
    env = zero_change_env(server.url, tmp_path)
    assert env["GCE_METADATA_HOST"] == server.url.removeprefix("http://")
    code = ("from google import genai\n"
            "client = genai.Client(vertexai=True, project='my-project', location='us-central1')\n"
            "r = client.models.generate_content(model='gemini-2.0-flash-001', contents='hi', config={'max_output_tokens': 3})\n"
            "print('OK', r.usage_metadata.candidates_token_count)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("OK "), proc.stderr[-2000:]
    token = http.get(f"{server.url}/computeMetadata/v1/instance/service-accounts/default/token",
                      headers={"Metadata-Flavor": "Google"})
    assert token.headers["metadata-flavor"] == "Google" and token.json()["token_type"] == "Bearer"
    refused = http.get(f"{server.url}/computeMetadata/v1/instance/service-accounts/default/token")
    assert refused.status_code == 403 and refused.json()["error"]["status"] == "PERMISSION_DENIED"


def test_new_routes_require_the_key(tmp_path, tiny_model_dir):
    """Auth on every route is checked by test_api's walk over the OpenAPI paths; here, that walk covers the new ones."""
    with tunery_home(tmp_path, tiny_model_dir), LiveServer(tmp_path, api_key="k3y", start_worker=False) as live:
        paths = set(live.app.openapi()["paths"])
        for needed in ("/v1/projects/{project}/locations/{location}/metadataStores/default/contexts",
                       "/v1/projects/{project}/locations/{location}/tensorboards/{tensorboard}:batchRead",
                       "/v1/projects/{project}/locations/{location}/endpoints/{endpoint_id}:undeployModel",
                       "/ui/projects/{project}/locations/{location}/operations/{operation_id}",
                       "/computeMetadata/v1/instance/service-accounts/default/token"):
            assert needed in paths
        for path in (f"/v1/{MD}/contexts", f"/v1/{P}/tensorboards/default", f"/v1/{P}/endpoints",
                     "/computeMetadata/v1/instance/service-accounts/default/token"):
            r = http.get(live.url + path, headers={"Metadata-Flavor": "Google"})
            assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED", path
            ok = http.get(live.url + path, headers={"Metadata-Flavor": "Google", "Authorization": "Bearer k3y"})
            assert ok.status_code == 200, path
