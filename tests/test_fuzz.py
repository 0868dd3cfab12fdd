"""A request fuzzer against a live server: thousands of mutated bodies, path ids and query strings, sent to every
route the app has (taken from its own OpenAPI schema, so a new route is fuzzed without a test change).

Each answer must be a 4xx or 2xx in the Vertex error shape (OpenAI's on its routes) when it is an error, never a
5xx; errors come back in under 2 s (a 200 that runs the model may take longer); afterwards the server still serves
and the stored job, model and endpoints answer exactly as before. Seeded: a failure reproduces with the same seed
(hypothesis prints it)."""

from __future__ import annotations

import json
import random
import time
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.helpers import contents, tunery_home, write_jsonl
from tests.test_api import LiveServer, sdk, wait_done
from tunery.api.errors import openai_path

P = "projects/my-project/locations/us-central1"
SEED = 20261121
EXAMPLES = 400  # per test below (a quarter for generation configs): 2,500 requests and more
ERROR_SECONDS = 10.0  # no hang: speed is for bench/, and make test shares the two cores between two test files
SENT: list[int] = []

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=40) | st.sampled_from(["", "0", "-1", "1e400", "JOB_STATE_RUNNING", "ADAPTER_SIZE_ONE",
                                                    "../../etc/passwd", "gs://b/x.jsonl", "org/name", "\x00", "a" * 5000]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=16), inner,
                                                                                             max_size=4), max_leaves=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A home with one finished job (model, endpoints, experiment) tuned for real, then a server with no worker (so
    valid mutated creates stay queued) fuzzed on it."""
    from google.genai import types

    with tunery_home(tmp_path_factory.mktemp("fuzz-home"), tiny_model_dir) as home:
        (home / "data").mkdir()
        write_jsonl(home / "data" / "train.jsonl", [contents(("user", f"q{i}"), ("model", f"a{i}")) for i in range(8)])
        with LiveServer(home) as live:
            genai = sdk(live.url)
            job = wait_done(genai, genai.tunings.tune(
                base_model="gemini-2.0-flash-001", training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
                config=types.CreateTuningJobConfig(epoch_count=1)).name)
            assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
        with LiveServer(home, start_worker=False) as live:
            ids = {"job_id": job.name.rsplit("/", 1)[1], "model_id": job.tuned_model.model.split("@")[0].rsplit("/", 1)[1],
                   "endpoint_id": job.tuned_model.endpoint.rsplit("/", 1)[1]}
            ids["context_id"] = f"tuning-experiment-{ids['job_id']}"
            ids["experiment"] = ids["context_id"]
            client = httpx.Client(base_url=live.url, timeout=60)
            before = snapshot(client, job)
            yield live, client, ids, before
            assert still_serving_snapshot(client, job) == before


def snapshot(client: httpx.Client, job) -> dict:
    """What a user stored: the job, its model and endpoints, as the API shows them (timestamps of reads excluded)."""
    out = {"job": client.get(f"/v1beta1/{job.name}").json(),
           "model": client.get(f"/v1beta1/{job.tuned_model.model.split('@')[0]}").json(),
           "endpoints": [client.get(f"/v1/{c.endpoint}").json() for c in job.tuned_model.checkpoints]
           + [client.get(f"/v1/{job.tuned_model.endpoint}").json()]}
    return out


def still_serving_snapshot(client: httpx.Client, job) -> dict:
    assert client.get(f"/v1beta1/{P}/tuningJobs").status_code == 200  # still serving
    return snapshot(client, job)


def routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every route in the app's OpenAPI schema, the test-only ones excluded."""
    out = []
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            out.append((method.upper(), path))
    return sorted(out)


def concrete(path: str, ids: dict, rng: random.Random, garbage: str, method: str) -> str:
    """The template with its parameters filled: the real ids for reads (so deep handlers run), garbage otherwise
    (so a mutated DELETE never removes what the snapshot checks)."""
    out = path.replace("{project}", "my-project").replace("{location}", "us-central1").replace("{publisher}", "google")
    out = out.replace("{tensorboard}", "default").replace("{run}", "run-1")
    for name in ("job_id", "model_id", "endpoint_id", "context_id", "experiment", "operation_id", "artifact_id", "model",
                 "method"):
        if "{" + name + "}" not in out:
            continue
        real = {"model": "gemini-2.0-flash-001", "method": rng.choice(["generateContent", "countTokens",
                                                                       "streamGenerateContent", "computeTokens"])}
        real |= ids
        use_real = method == "GET" or (method == "POST" and name in ("model", "method", "endpoint_id", "model_id"))
        value = real.get(name) if use_real and rng.random() < 0.7 else garbage
        out = out.replace("{" + name + "}", quote(str(value or "x"), safe=""))
    return out


def seed_body(path: str, ids: dict) -> dict:
    if path.endswith("/tuningJobs"):
        return {"baseModel": "gemini-2.0-flash-001", "tunedModelDisplayName": "fz",
                "supervisedTuningSpec": {"trainingDatasetUri": "data/train.jsonl",
                                         "hyperParameters": {"epochCount": "1", "adapterSize": "ADAPTER_SIZE_ONE"}}}
    if path.endswith(":undeployModel"):
        return {"deployedModelId": ids["model_id"]}
    if path == "/v1/fine_tuning/jobs":
        return {"model": "gemini-2.0-flash-001", "training_file": "file-x", "suffix": "fz", "seed": 1,
                "metadata": {"a": "b"},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": "auto"}}}}
    if path == "/v1/chat/completions":
        return {"model": "gemini-2.0-flash-001", "messages": [{"role": "system", "content": "s"},
                                                               {"role": "user", "content": [{"type": "text", "text": "q"}]}],
                "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "stop": ["."], "n": 1, "seed": 3, "stream": False}
    return {"contents": [{"role": "user", "parts": [{"text": "q1"}]}], "systemInstruction": {"parts": [{"text": "s"}]},
            "generationConfig": {"maxOutputTokens": 2, "temperature": 0.5, "topP": 0.9, "stopSequences": ["."]}}


def paths_of(value, prefix=()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths_of(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths_of(v, prefix + (i,))
    return found


def replace(value, path: tuple, new):
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return copy


def check(r: httpx.Response, elapsed: float, what) -> None:
    SENT.append(r.status_code)
    assert r.status_code < 500, (what, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert elapsed < ERROR_SECONDS, (what, elapsed)
        error = r.json()["error"]
        if openai_path(r.request.url.path):  # the OpenAI-compatible routes answer in OpenAI's shape
            assert set(error) == {"message", "type", "param", "code"}, (what, r.text[:300])
        else:
            assert set(error) == {"code", "message", "status"} and error["code"] == r.status_code, (what, r.text[:300])


def send(client: httpx.Client, method: str, url: str, **kw) -> None:
    if "json" in kw:  # encoded here: NaN and Infinity go out as the tokens Python's json (and so the server) reads
        kw["content"] = json.dumps(kw.pop("json")).encode()
        kw["headers"] = {**kw.get("headers", {}), "content-type": "application/json"}
    started = time.monotonic()
    r = client.request(method, url, **kw)
    check(r, time.monotonic() - started, (method, url, str(kw)[:300]))
    if "streamGenerateContent" in url and r.status_code == 200:  # a JSON array; an error in it is a last element
        assert not [c for c in r.json() if c.get("error", {}).get("code", 0) >= 500], (url, r.text[-400:])


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=list(HealthCheck))


@seed(SEED)
@FUZZ
@given(data=st.data())
def test_mutated_bodies_on_every_post_route(world, data):
    live, client, ids, _ = world
    posts = [p for m, p in routes(live.app) if m == "POST"]
    path = data.draw(st.sampled_from(posts))
    body = seed_body(path, ids)
    where = data.draw(st.sampled_from(paths_of(body)))
    mutated = replace(body, where, data.draw(values))
    url = concrete(path, ids, random.Random(data.draw(st.integers(0, 2**32))), data.draw(st.text(max_size=30)) or "x", "POST")
    send(client, "POST", url, json=mutated)


@seed(SEED)
@FUZZ
@given(data=st.data())
def test_random_bodies_and_bytes_on_every_post_route(world, data):
    live, client, ids, _ = world
    path = data.draw(st.sampled_from([p for m, p in routes(live.app) if m == "POST"]))
    url = concrete(path, ids, random.Random(data.draw(st.integers(0, 2**32))), "x", "POST")
    raw = data.draw(st.one_of(st.binary(max_size=200), st.just(b"[" * 5000 + b"]" * 5000),
                              st.just(b'{"contents": ' * 3000), st.just(b"1e999999"),
                              values.map(lambda v: json.dumps(v).encode())))
    send(client, "POST", url, content=raw, headers={"content-type": data.draw(st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded"]))})


@seed(SEED)
@FUZZ
@given(data=st.data())
def test_path_ids_and_queries_on_every_get_and_delete_route(world, data):
    live, client, ids, _ = world
    method, path = data.draw(st.sampled_from([(m, p) for m, p in routes(live.app) if m in ("GET", "DELETE")]))
    garbage = data.draw(st.text(min_size=1, max_size=40) | st.sampled_from(["..", "%2e%2e", "0" * 30, "-1", "a/b"]))
    url = concrete(path, ids, random.Random(data.draw(st.integers(0, 2**32))), garbage, method)
    params = data.draw(st.dictionaries(st.sampled_from(["pageSize", "pageToken", "filter", "timeSeries", "format", "alt",
                                                        "$alt", "state"]), st.text(max_size=60), max_size=3))
    send(client, method, url, params=params, headers={"Metadata-Flavor": "Google"} if "computeMetadata" in path else {})


@seed(SEED)
@FUZZ
@given(body=values)
def test_random_json_as_a_create_request(world, body):
    _, client, _, _ = world
    send(client, "POST", f"/v1beta1/{P}/tuningJobs", json=body)


@seed(SEED)
@settings(FUZZ, max_examples=EXAMPLES // 4)  # a valid config runs the model: fewer, to keep the suite's time
@given(config=values, text=st.text(max_size=200))
def test_random_generation_configs(world, config, text):
    _, client, ids, _ = world
    if config is None:  # no config is the defaults, 256 tokens of the tiny model: test_a_null_generation_config_...
        config = {}
    if isinstance(config, dict):  # unknown keys are ignored (the SDKs send fields tunery does not use): keep it short
        config = {"maxOutputTokens": 2, **config}
    send(client, "POST", f"/v1beta1/{P}/endpoints/{ids['endpoint_id']}:generateContent",
         json={"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": config})


def test_a_null_generation_config_is_the_defaults(world):
    _, client, ids, _ = world
    r = client.post(f"/v1beta1/{P}/endpoints/{ids['endpoint_id']}:generateContent",
                    json={"contents": [{"role": "user", "parts": [{"text": "q1"}]}], "generationConfig": None})
    assert r.status_code == 200, r.text
    finish, tokens = r.json()["candidates"][0]["finishReason"], r.json()["usageMetadata"]["candidatesTokenCount"]
    assert (finish, tokens) == ("MAX_TOKENS", 256) or (finish == "STOP" and tokens < 256), (finish, tokens)


@seed(SEED)
@FUZZ
@given(filters=st.text(max_size=120), series=st.lists(st.text(max_size=120), max_size=25))
def test_random_metadata_filters_and_time_series(world, filters, series):
    _, client, _, _ = world
    send(client, "GET", f"/v1/{P}/metadataStores/default/contexts", params={"filter": filters})
    send(client, "GET", f"/v1/{P}/tensorboards/default:batchRead", params={"timeSeries": series})


def test_zz_the_fuzzers_sent_thousands_and_the_stored_data_is_untouched(world):
    """Runs after the fuzz tests (file order): the counts, and the snapshot (also re-checked at teardown)."""
    live, client, ids, before = world
    assert len(SENT) >= 2000, len(SENT)
    assert not [s for s in SENT if s >= 500]
    job = client.get(f"/v1beta1/{P}/tuningJobs/{ids['job_id']}").json()
    assert job == before["job"] and job["state"] == "JOB_STATE_SUCCEEDED"
    print(f"fuzz: {len(SENT)} requests, statuses {sorted(set(SENT))}")


PLANTED = st.sampled_from(["_config", "_evaluation", "_openai", "_workers", "_anything", "requestedBaseModel", "spec",
                           "door", "tuning", "explicit", "init_adapter", "evaluation", "initAdapter", "train",
                           "datasetPath", "output"])
PLANTED_VALUES = st.one_of(values, st.just({"dataset": "/etc/passwd", "limit": 5, "task": "generation"}),
                           st.just({"train": "/etc/passwd"}), st.just("/etc/passwd"), st.just(64))


def _dict_paths(value, prefix=()) -> list[tuple]:
    """The paths of every object in a body where a field can be planted (labels and metadata are the client's
    own maps: any key is theirs to choose)."""
    found = [prefix] if isinstance(value, dict) and prefix[-1:] not in (("labels",), ("metadata",)) else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _dict_paths(v, prefix + (k,))
    return found


@seed(SEED)
@settings(max_examples=EXAMPLES // 4, deadline=None, derandomize=False, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_planted_internal_and_unknown_fields_never_reach_the_store(world, data):
    """A create body, valid but for one field the API does not define (an internal name, or any other) planted at
    any depth, is a 400 on either API; the jobs stored stay the ones stored, every dataset they read under the roots."""
    live, client, ids, _ = world
    train = str(live.home / "data" / "train.jsonl")
    path = data.draw(st.sampled_from([f"/v1beta1/{P}/tuningJobs", "/v1/fine_tuning/jobs"]))
    body = seed_body(path, ids)
    if path.endswith("tuningJobs"):
        body["supervisedTuningSpec"]["trainingDatasetUri"] = train
    where = data.draw(st.sampled_from(_dict_paths(body)))
    target = body
    for key in where:
        target = target[key]
    target[data.draw(PLANTED)] = data.draw(PLANTED_VALUES)
    started = time.monotonic()
    r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    check(r, time.monotonic() - started, (path, body))
    assert r.status_code == 400 and "unknown" in r.json()["error"]["message"], (body, r.text[:300])
    jobs, _ = live.services.store.jobs_after(1000)
    roots = [str(root) for root in live.settings.allowed_roots]
    for job in jobs:
        spec = job.spec
        for dataset in (spec.tuning.train, spec.tuning.validation, spec.evaluation and spec.evaluation.dataset):
            assert not dataset or any(dataset.startswith(root) for root in roots), (job.id, dataset)


@seed(SEED)
@settings(max_examples=EXAMPLES // 8, deadline=None, derandomize=False, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_foreign_host_headers_are_refused_on_every_route(world, data):
    """DNS rebinding: a request whose Host names another site gets a 400 in the API's shape, on every route."""
    live, client, ids, _ = world
    method, path = data.draw(st.sampled_from(routes(live.app) + [("GET", "/console"), ("GET", "/console/new")]))
    url = concrete(path, ids, random.Random(data.draw(st.integers(0, 2**32))), "x", method)
    host = data.draw(st.sampled_from(["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "attacker.test",
                                      "localhost.evil.example", "[::2]", "10.0.0.1"]))
    started = time.monotonic()
    r = client.request(method, url, headers={"host": host})
    check(r, time.monotonic() - started, (method, url, host))
    assert r.status_code == 400 and "is not this server's" in r.json()["error"]["message"], (url, host, r.text[:200])
