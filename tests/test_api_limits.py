"""Bad requests get a quick 4xx in the Vertex error shape, never a 500 or a hang: type-confused fields, prompts over
the context, oversized bodies; a bug gets a Vertex-shaped 500 naming its log incident; a stream never ends silently."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.helpers import contents, tunery_home, write_jsonl
from tests.test_api import LiveServer

P = "projects/p/locations/l"
USER = {"role": "user", "parts": [{"text": "Colour 1?"}]}


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    with tunery_home(tmp_path_factory.mktemp("limits-home"), tiny_model_dir) as home:
        (home / "data").mkdir()
        write_jsonl(home / "data" / "train.jsonl", [contents(("user", f"q{i}"), ("model", f"a{i}")) for i in range(8)])
        yield home


@pytest.fixture(scope="module")
def server(home):
    live = LiveServer(home, start_worker=False, max_request_bytes=256 << 10)

    def boom():
        raise RuntimeError("a bug")

    live.app.add_api_route("/test-only/boom", boom)
    with live:
        yield live


def post(server, path: str, body, **kw) -> httpx.Response:
    started = time.monotonic()
    r = httpx.post(server.url + path, json=body, timeout=30, **kw)
    assert time.monotonic() - started < 2, (path, body)
    return r


def assert_error(r: httpx.Response, code: int, fragment: str) -> None:
    assert r.status_code == code, r.text
    error = r.json()["error"]
    assert set(error) == {"code", "message", "status"} and error["code"] == code
    assert fragment in error["message"], error["message"]


def create_body(home, **over) -> dict:
    body = {"baseModel": "gemini-2.0-flash-001",
            "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl")}}
    for key, value in over.items():
        target = body["supervisedTuningSpec"] if key in ("hyperParameters", "exportLastCheckpointOnly",
                                                         "validationDatasetUri", "evaluationConfig") else body
        target[key] = value
    return body


@pytest.mark.parametrize("over, fragment", [
    ({"baseModel": 5}, "baseModel: expected a string, found int 5"),
    ({"baseModel": None, "preTunedModel": {"tunedModelName": 7}}, "preTunedModel.tunedModelName: expected a string, found int"),
    ({"preTunedModel": "models/1"}, "preTunedModel: expected an object, found str"),
    ({"tunedModelDisplayName": ["x"]}, "tunedModelDisplayName: expected a string, found list"),
    ({"labels": {"team": 1}}, "labels: expected at most 64 string keys with string values"),
    ({"hyperParameters": "fast"}, "supervisedTuningSpec.hyperParameters: expected an object, found str"),
    ({"hyperParameters": {"epochCount": [3]}}, "supervisedTuningSpec.hyperParameters.epochCount: expected a whole number"),
    ({"hyperParameters": {"learningRateMultiplier": "lots"}}, "learningRateMultiplier: expected a number"),
    ({"exportLastCheckpointOnly": "yes"}, "supervisedTuningSpec.exportLastCheckpointOnly: expected true or false"),
    ({"validationDatasetUri": 3}, "supervisedTuningSpec.validationDatasetUri: expected a string, found int"),
    ({"evaluationConfig": {"task": 1, "metrics": []}}, "supervisedTuningSpec.evaluationConfig.task: expected a string"),
    ({"supervisedTuningSpec": []}, "supervisedTuningSpec: expected an object, found list"),
    ({"hyperParameters": {"epochCount": True}}, "supervisedTuningSpec.hyperParameters.epochCount: expected a whole number"),
    ({"hyperParameters": {"adapterSize": True}}, "supervisedTuningSpec.hyperParameters.adapterSize: expected one of"),
    ({"hyperParameters": {"adapterSize": False}}, "supervisedTuningSpec.hyperParameters.adapterSize: expected one of"),
    ({"hyperParameters": {"earlyStoppingPatience": "soon"}},
     "supervisedTuningSpec.hyperParameters.earlyStoppingPatience: expected a whole number"),
    ({"hyperParameters": {"earlyStoppingPatience": 0}},
     "supervisedTuningSpec.hyperParameters.earlyStoppingPatience: expected a whole number from 1 to 100"),
    ({"hyperParameters": {"earlyStoppingPatience": 2}}, "supervisedTuningSpec.hyperParameters.earlyStoppingPatience: expected a validation dataset to watch"),
    ({"hyperParameters": {"learningRateMultiplyer": 2}},  # misspelt: not silently the default
     "supervisedTuningSpec.hyperParameters.learningRateMultiplyer: unknown field; expected one of epochCount, "
     "learningRateMultiplier, learningRate, adapterSize, batchSize, earlyStoppingPatience, maxLength, loraAlpha, "
     "loraTargets, learningRateSchedule"),
    ({"hyperParameters": {"warmupSteps": 10}}, "supervisedTuningSpec.hyperParameters.warmupSteps: unknown field"),
    ({"hyperParameters": "fast"}, "supervisedTuningSpec.hyperParameters: expected an object, found str"),
    ({"hyperParameters": []}, "supervisedTuningSpec.hyperParameters: expected an object, found list"),
    ({"hyperParameters": {"maxLength": 4}},
     "supervisedTuningSpec.hyperParameters.maxLength: expected a whole number from 8 to 131072, found 4"),
    ({"hyperParameters": {"loraAlpha": 0}}, "supervisedTuningSpec.hyperParameters.loraAlpha: expected a number in (0, 1024]"),
    ({"hyperParameters": {"loraTargets": "EMBEDDINGS"}},
     "supervisedTuningSpec.hyperParameters.loraTargets: expected one of ALL_LINEAR, ATTENTION, MLP, found 'EMBEDDINGS'"),
    ({"hyperParameters": {"loraTargets": 3}}, "supervisedTuningSpec.hyperParameters.loraTargets: expected a string"),
    ({"hyperParameters": {"learningRateSchedule": "STEP"}},
     "supervisedTuningSpec.hyperParameters.learningRateSchedule: expected one of LINEAR, COSINE, CONSTANT, found 'STEP'"),
    ({"hyperParameters": {"adapterSize": 8}},  # a number is the proto enum's (4 is ADAPTER_SIZE_SIXTEEN)
     "adapterSize: expected one of ADAPTER_SIZE_ONE, ADAPTER_SIZE_TWO, ADAPTER_SIZE_FOUR, ADAPTER_SIZE_EIGHT, "
     "ADAPTER_SIZE_SIXTEEN (or the enum's number: 1 for ADAPTER_SIZE_ONE, 6 for ADAPTER_SIZE_TWO, "
     "2 for ADAPTER_SIZE_FOUR, 3 for ADAPTER_SIZE_EIGHT, 4 for ADAPTER_SIZE_SIXTEEN), found 8"),
])
def test_create_with_type_confused_fields_is_a_400_naming_the_field(server, home, over, fragment):
    assert_error(post(server, f"/v1beta1/{P}/tuningJobs", create_body(home, **over)), 400, fragment)


@pytest.mark.parametrize("field, planted", [
    ("_evaluation", {"dataset": "/etc/passwd", "limit": 5, "task": "generation"}),  # a read outside the roots
    ("_config", {"train": "/etc/passwd"}), ("_openai", "not an object"), ("_workers", 64),
    ("requestedBaseModel", ["a list"]), ("_anything", 1)])
def test_a_create_with_a_field_the_server_stores_itself_is_refused_and_nothing_is_stored(server, home, field, planted):
    before = httpx.get(f"{server.url}/v1beta1/{P}/tuningJobs", timeout=30).json().get("tuningJobs", [])
    assert_error(post(server, f"/v1beta1/{P}/tuningJobs", create_body(home, **{field: planted})), 400,
                 f"{field}: unknown field of TuningJob")
    after = httpx.get(f"{server.url}/v1beta1/{P}/tuningJobs", timeout=30)
    assert after.status_code == 200 and after.json().get("tuningJobs", []) == before
    assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 200


def test_create_body_that_is_not_an_object(server):
    assert_error(post(server, f"/v1beta1/{P}/tuningJobs", [1, 2]), 400, "request body: expected a TuningJob object")


@pytest.mark.parametrize("body, fragment", [
    ({"contents": [{"role": "user", "parts": [{"text": 5}]}]}, "contents[0].parts[0].text: expected a string, found int"),
    ({"contents": [USER], "generationConfig": {"temperature": "hot"}}, "generationConfig.temperature: expected a number"),
    ({"contents": [USER], "generationConfig": {"temperature": [0.5]}}, "generationConfig.temperature: expected a number"),
    ({"contents": [USER], "generationConfig": {"topP": {"x": 1}}}, "generationConfig.topP: expected a number"),
    ({"contents": [USER], "generationConfig": {"topP": "nan"}}, "generationConfig.topP: expected a number"),
    ({"contents": [USER], "generationConfig": "greedy"}, "generationConfig: expected an object, found str"),
    ({"contents": [USER], "generationConfig": []}, "generationConfig: expected an object, found list"),
    ({"contents": [USER], "generationConfig": False}, "generationConfig: expected an object, found bool"),
    ({"contents": [USER], "generationConfig": {"stopSequences": ""}}, "generationConfig.stopSequences: expected at most 5"),
    ({"contents": [USER], "generationConfig": {"candidateCount": 9}}, "generationConfig.candidateCount: expected a whole number from 1 to 8"),
    ({"contents": [USER], "generationConfig": {"maxOutputTokens": True}}, "generationConfig.maxOutputTokens: expected a whole number"),
    ({"contents": [USER], "generationConfig": {"temperature": True}}, "generationConfig.temperature: expected a number"),
    ({"contents": [USER], "generationConfig": {"maxOutputTokens": 10**6}}, "generationConfig.maxOutputTokens"),
    ({"contents": [USER], "systemInstruction": 5}, "systemInstruction: expected a Content object, found int"),
    ({"contents": "hello"}, "contents: expected at least one Content"),
    ({"contents": [[1]]}, "contents[0].role"),
    (["not", "an", "object"], "request body: expected a JSON object, found list"),
])
def test_generate_with_type_confused_fields_is_a_quick_400(server, body, fragment):
    for method in ("generateContent", "streamGenerateContent", "countTokens"):
        if method == "countTokens" and "generationConfig" in str(body):
            continue
        r = post(server, f"/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001:{method}", body)
        assert_error(r, 400, fragment)


def test_a_prompt_over_the_context_is_refused_with_its_size(server):
    long = {"contents": [{"role": "user", "parts": [{"text": "colour " * 1200}]}]}  # the tiny model's context: 1024
    r = post(server, f"/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001:generateContent", long)
    assert_error(r, 400, "the prompt has ")
    assert "tokens; the model's context is 1,024 tokens" in r.json()["error"]["message"]
    huge = {"contents": [{"role": "user", "parts": [{"text": "x" * 70_000}]}]}  # refused before tokenizing
    r = post(server, f"/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001:streamGenerateContent", huge,
             params={"alt": "sse"})
    assert_error(r, 400, "the prompt has 70,000 characters, far over the model's context of 1,024 tokens")


def test_an_output_budget_past_the_context_is_cut_to_the_room_left(server):
    url = f"{server.url}/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001"

    def tokens(k: int) -> int:
        return httpx.post(f"{url}:countTokens", json={"contents": [{"parts": [{"text": "colour " * k}]}]}).json()["totalTokens"]

    per = (tokens(200) - tokens(100)) / 100  # a prompt that leaves about 10 tokens of room
    k = int((1024 - 10 - (tokens(100) - 100 * per)) / per)
    body = {"contents": [{"parts": [{"text": "colour " * k}]}], "generationConfig": {"maxOutputTokens": 8192}}
    r = httpx.post(f"{url}:generateContent", json=body, timeout=120)
    usage = r.json()["usageMetadata"]
    assert r.status_code == 200 and 1024 - 20 < usage["promptTokenCount"] < 1024
    assert usage["promptTokenCount"] + usage["candidatesTokenCount"] <= 1024


def test_an_oversized_body_is_a_413_before_it_is_read(server):
    big = {"contents": [{"role": "user", "parts": [{"text": "x" * (300 << 10)}]}]}
    r = post(server, f"/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001:generateContent", big)
    assert_error(r, 413, "request body: expected at most 262,144 bytes")

    def chunks():  # no Content-Length: refused as soon as the limit passes
        for _ in range(100):
            yield b"x" * 4096  # 400 KiB

    r = httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", content=chunks(), timeout=30,
                   headers={"content-type": "application/json"})
    assert_error(r, 413, "found more than 262144")
    assert httpx.get(f"{server.url}/v1beta1/{P}/tuningJobs").status_code == 200  # still serving


def test_a_bug_is_a_vertex_shaped_500_naming_its_log_incident(server, caplog):
    with caplog.at_level(logging.ERROR, logger="tunery"):
        r = httpx.get(f"{server.url}/test-only/boom")
    assert_error(r, 500, "internal error (incident ")
    incident = r.json()["error"]["message"].split("incident ", 1)[1].split(";")[0]
    assert any(incident in rec.getMessage() and rec.exc_info for rec in caplog.records)


@pytest.mark.parametrize("name", ["~0", "~root/x", "..", "org/name", "/etc", "a/b/c", "x.gguf"])
def test_base_model_names_the_fuzzer_found_are_clear_4xx_without_paths_or_network(server, home, name):
    """Found by tests/test_fuzz.py: `~0` made Path.expanduser raise (a 500); a hub id went to the network from the
    request thread; `..` named the server's start directory."""
    r = post(server, f"/v1beta1/{P}/publishers/google/models/{name}:generateContent", {"contents": [USER]})
    if r.status_code != 404 or "/" in name:  # a name with a slash routes elsewhere or nowhere: any 4xx, quickly
        assert 400 <= r.status_code < 500, r.text
    else:
        assert_error(r, 404, "publisher model")
    created = post(server, f"/v1beta1/{P}/tuningJobs", create_body(home, baseModel=name))
    assert_error(created, 400, "baseModel")
    import os

    assert os.getcwd() not in created.text and str(home) not in created.text  # no server path is revealed


def test_numbers_past_what_floats_and_sqlite_hold_are_400s(server, home):
    """Found in review: a 400-digit integer literal overflowed float() (a 500); a 20-digit or a non-ASCII-digit
    pageToken reached SQLite or int() (a 500)."""
    huge = "1" + "0" * 400
    raw = ('{"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"temperature": %s}}' % huge)
    r = httpx.post(f"{server.url}/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001:generateContent",
                   content=raw.encode(), headers={"content-type": "application/json"})
    assert_error(r, 400, "generationConfig.temperature: expected a number")
    raw = ('{"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {"trainingDatasetUri": "%s", '
           '"hyperParameters": {"learningRateMultiplier": %s}}}' % (home / "data" / "train.jsonl", huge))
    r = httpx.post(f"{server.url}/v1beta1/{P}/tuningJobs", content=raw.encode(), headers={"content-type": "application/json"})
    assert_error(r, 400, "learningRateMultiplier: expected a number")
    for collection in ("tuningJobs", "models", "endpoints"):
        for token in ("99999999999999999999", "\u00b2", "-1"):
            r = httpx.get(f"{server.url}/v1beta1/{P}/{collection}", params={"pageToken": token})
            assert_error(r, 400, "pageToken: not a token this server issued")


def test_count_tokens_needs_contents_and_obeys_the_prompt_cap(server):
    path = f"/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001"
    for method in ("countTokens", "computeTokens"):
        for body in ({}, {"contents": []}, {"systemInstruction": {"parts": [{"text": "s"}]}}):
            assert_error(post(server, f"{path}:{method}", body), 400, "contents: ")
        huge = {"contents": [{"role": "user", "parts": [{"text": "x" * 200_000}]}]}  # refused before tokenizing
        assert_error(post(server, f"{path}:{method}", huge), 400,
                     "contents: the prompt has 200,000 characters, far over the model's context of 1,024 tokens")
    assert post(server, f"{path}:countTokens", {"contents": [USER]}).json()["totalTokens"] > 0


def test_generation_cannot_starve_control_routes_and_past_its_limit_is_a_429(home):
    """64 long generate and stream calls at once against a server that admits 24: the rest get 429 at once, and
    while 24 are in flight, getting a job, cancelling it and a console page each answer within a second."""
    import threading

    with LiveServer(home, start_worker=False, max_generation_requests=24) as live:
        body = {"baseModel": "gemini-2.0-flash-001",
                "supervisedTuningSpec": {"trainingDatasetUri": str(home / "data" / "train.jsonl")}}
        name = httpx.post(f"{live.url}/v1beta1/{P}/tuningJobs", json=body, timeout=30).json()["name"]
        url = f"{live.url}/v1beta1/{P}/publishers/google/models/gemini-2.0-flash-001"
        # long enough (about a second each, the streams one after another) that all 64 arrive before one ends
        long = {"contents": [USER], "generationConfig": {"maxOutputTokens": 120, "temperature": 1.0}}
        codes: list[int] = []

        def one(i: int) -> None:
            method = "streamGenerateContent?alt=sse" if i % 2 else "generateContent"
            try:
                codes.append(httpx.post(f"{url}:{method}", json=long, timeout=300).status_code)
            except httpx.HTTPError:
                codes.append(-1)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(64)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while live.services.generation.in_flight < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.services.generation.in_flight == 24
        timings: dict[str, list[float]] = {}
        for what, method, path, tries in (("get job", "GET", f"/v1beta1/{name}", 3), ("console", "GET", "/console", 3),
                                          ("cancel job", "POST", f"/v1beta1/{name}:cancel", 1)):
            for _ in range(tries):
                started = time.monotonic()
                r = httpx.request(method, live.url + path, timeout=30)
                timings.setdefault(what, []).append(time.monotonic() - started)
                assert r.status_code == 200, (what, r.text[:200])
        in_flight = live.services.generation.in_flight
        print(f"with {in_flight} generation calls in flight: " + ", ".join(
            f"{k} {', '.join(f'{v * 1000:.0f}' for v in vs)} ms" for k, vs in timings.items()))
        # a starved route waits behind generation calls on every try (seconds); one slow try of three is the pinned
        # core busy with 24 generations (1.1 s seen once in a full suite run), so the fastest try must be quick
        assert in_flight > 0 and all(min(vs) < 1.0 for vs in timings.values()), timings
        for t in threads:
            t.join(timeout=300)
        assert codes.count(429) == 64 - codes.count(200) and codes.count(429) >= 64 - 24 - 8, sorted(codes)  # 8:
        # a few may find a place freed by one that ended before the last request arrived
        r = httpx.post(f"{url}:generateContent", json={"contents": [USER], "generationConfig": {"maxOutputTokens": 2}})
        assert r.status_code == 200 and live.services.generation.in_flight == 0  # every place given back
