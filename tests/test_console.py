"""The web console in a real Chromium (Debian's /usr/bin/chromium driven by Playwright) against a live
`tunery serve` process whose default base model is the tiny in-process model. Each page is screenshotted; with
TUNERY_SCREENSHOTS=docs/console the images are written there (the README's), otherwise the tree is left alone."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import contents, job_spec, tunery_home, write_jsonl

REPO = Path(__file__).resolve().parents[1]
SHOTS = os.environ.get("TUNERY_SCREENSHOTS")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "console-test-key-7f3a"
COLOURS = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
REST = "/v1/projects/console/locations/us-central1"
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(pid: int) -> None:
    """SIGTERM the process, SIGKILL it if it is still there after 15 s."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


@contextmanager
def serve(home: Path, api_key: str | None = None):
    """A real `tunery serve` on a free loopback port; its output goes to home/serve.log; stopped by PID."""
    port = _free_port()
    env = {**os.environ, "TUNERY_HOME": str(home)}
    if api_key:
        env["TUNERY_API_KEY"] = api_key  # not on the command line, where ps would show it
    log = open(home / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(home)],
                            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/console/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (home / "serve.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        _stop(proc.pid)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium (apt-get install chromium)")
    pw = sync_playwright().start()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    pids = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before and "chrom" in p.name()]
    assert pids, "no chromium process started"
    yield chromium
    chromium.close()
    pw.stop()
    for pid in pids:  # whatever close() left behind
        _stop(pid)


def _rows(n: int, start: int = 0, words: int = 0) -> list[dict]:
    return [contents(("user", f"Colour {i}: {COLOURS[i % 8]}?" + " Describe the colour." * words),
                     ("model", f"It is {COLOURS[i % 8]}.")) for i in range(start, start + n)]


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    with tunery_home(tmp_path_factory.mktemp("console-home"), tiny_model_dir) as home:
        files = home / "files"
        files.mkdir()
        # long prompts: a step costs enough compute that the job runs for a few seconds even on a fast machine
        bad = _rows(40, words=40)
        bad[2] = contents(("user", "Colour 2: blue?"), ("model", " "))  # line 3: an empty answer
        write_jsonl(files / "colours_bad.jsonl", bad)
        write_jsonl(files / "colours.jsonl", _rows(40, words=120))  # long rows: steps of a second or so, so the pages see it run
        write_jsonl(home / "valid.jsonl", _rows(16))
        write_jsonl(home / "val.jsonl", _rows(8, 100))
        yield home


@pytest.fixture(scope="module")
def server(home):
    with serve(home) as url:
        yield url


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 800}, base_url=server)
    yield context.new_page()
    context.close()


# Records [attribute value, state] each time the page changes the attribute (MutationObserver) in window.__seen.
RECORD = """([selector, attribute, stateOf]) => {
  const el = document.querySelector(selector), holder = document.querySelector(stateOf);
  const note = () => window.__seen.push([el.getAttribute(attribute), holder.dataset.state || ""]);
  window.__seen = [];
  note();
  new MutationObserver(note).observe(el, {attributes: true, attributeFilter: [attribute]});
}"""


def shot(page, name: str) -> None:
    png = page.screenshot()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name  # a rendered page, not a blank one
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        (Path(SHOTS) / f"{name}.png").write_bytes(png)


def _post(page, url: str, form: dict, origin: str | None = "self"):
    """A form POST from this browser context (its cookies), with the page's CSRF token unless `form` has one."""
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    headers = {"Origin": page.url.split("/console")[0] if origin == "self" else origin} if origin else {}
    return page.request.post(url, form={"csrf": token, **form}, headers=headers, max_redirects=0)


# ---------------------------------------------------------------- the flow, without an API key

def test_create_shows_the_bad_line_then_tunes_while_progress_and_chart_move(page, server, home):
    page.goto("/console/new")
    page.set_input_files("#train_file", str(home / "files" / "colours_bad.jsonl"))
    page.fill("#display_name", "colours")
    with page.expect_navigation():  # the form posts and the page comes back with the findings
        page.click("#create-job")
    issue = page.locator('.issue.sev-error[data-code="empty_text"]')
    assert issue.count() == 1, page.content()
    assert issue.get_attribute("data-line") == "3"
    assert issue.locator(".line").inner_text() == "3" and issue.locator(".pointer").inner_text() == "/contents/1/parts/0/text"
    assert "Colour 2: blue?" in issue.locator("pre.context .bad").inner_text()  # the bad line's text, marked
    assert "nothing was created" in page.inner_text("#findings")
    assert httpx.get(server + REST + "/tuningJobs").json() == {"tuningJobs": []}
    shot(page, "create-errors")

    page.set_input_files("#train_file", str(home / "files" / "colours.jsonl"))
    page.set_input_files("#validation_file", str(home / "val.jsonl"))
    page.fill("#batch_size", "8")
    with page.expect_navigation():
        page.click("#check")
    assert page.locator("#findings .ok").count() == 1
    assert page.inner_text("#stat-examples") == "40"
    assert "10 (server default)" in page.inner_text("#findings")  # 40 examples -> the server would choose 10 epochs
    assert int(page.inner_text("#billable").replace(",", "")) > 0 and "about" in page.inner_text("#estimate")
    assert page.input_value("#train_path").endswith("colours.jsonl")  # the upload is kept for the next submit
    shot(page, "create")

    page.fill("#epochs", "2")
    page.click("#create-job")
    page.wait_for_url(re.compile(r"/console/jobs/\d+$"))
    job_id = page.url.rsplit("/", 1)[1]
    listing = page.context.new_page()
    listing.goto("/console")
    # every value the pages show is recorded by the pages themselves, so the test's own pace cannot miss one
    listing.evaluate(RECORD, [f"#job-{job_id} .progress", "data-steps", f"#job-{job_id}"])
    page.evaluate(RECORD, ["#chart-loss", "data-points", "#job"])
    deadline, shots, points = time.monotonic() + 90, False, []
    while time.monotonic() < deadline:
        state = listing.get_attribute(f"#job-{job_id}", "data-state")
        if state in ENDED:
            break
        points = page.evaluate("window.__seen || []") or points  # (the page reloads once the job ends)
        if not shots and state == "JOB_STATE_RUNNING" and int(listing.get_attribute(f"#job-{job_id} .progress", "data-steps")) >= 4:
            shot(listing, "jobs")
            shot(page, "job-running")
            shots = True
        time.sleep(0.3)
    seen = listing.evaluate("window.__seen")
    running = [int(v) for v, st in seen if st == "JOB_STATE_RUNNING"]
    assert len(set(running)) >= 3, seen  # the list's bar moved at least twice while the job ran
    assert running == sorted(running) and max(int(v) for v, _ in seen) == 10, seen
    counts = [int(v) for v, _ in points]
    # the chart gained points live: a partial count (0 < n < 10) was drawn before the job ended and the page reloaded
    assert any(0 < c < 10 for c in counts) and counts == sorted(counts), points
    listing.close()
    page.wait_for_selector("#checkpoints", timeout=60_000)  # the page reloads once the job ends
    assert page.inner_text("#state") == "succeeded"
    assert page.get_attribute("#chart-loss", "data-points") == "10"
    assert int(page.get_attribute("#chart-loss", "data-eval-points")) >= 2  # /eval_total_loss, from the validation set
    assert page.locator("#checkpoints tbody tr").count() == 2
    assert "endpoints/" in page.inner_text("#snippet") and "/train_total_loss" in page.inner_text("#checkpoints")
    shot(page, "job")


def _tuned(server) -> dict:
    jobs = httpx.get(server + REST + "/tuningJobs", params={"filter": 'state="JOB_STATE_SUCCEEDED"'}).json()["tuningJobs"]
    return next(j for j in jobs if j.get("tunedModelDisplayName") == "colours")


def test_playground_streams_base_and_tuned_side_by_side(page, server):
    endpoint_id = _tuned(server)["tunedModel"]["endpoint"].rsplit("/", 1)[1]
    page.goto(f"/console/playground?left=base:gemini-2.0-flash-001&right=endpoint:{endpoint_id}")
    page.fill("#prompt", "Colour 3: black?")
    page.fill("#max_tokens", "12")
    page.click("#run")
    for side in ("left", "right"):
        page.wait_for_selector(f'#pane-{side}[data-done="true"]', timeout=60_000)
        assert int(page.get_attribute(f"#pane-{side}", "data-chunks")) >= 2  # arrived in pieces, as generated
        assert page.inner_text(f"#answer-{side}").strip()
        usage = page.inner_text(f"#usage-{side}")
        assert re.search(r"\d+ prompt tokens · \d+ output tokens", usage), usage
        assert 1 <= int(page.get_attribute(f"#usage-{side}", "data-output")) <= 12
    shot(page, "playground")


def test_undeploy_then_delete_an_endpoint_after_a_confirmation(page, server):
    tuned = _tuned(server)
    model_name = tuned["tunedModel"]["model"].split("@")[0]
    endpoint = tuned["tunedModel"]["checkpoints"][0]["endpoint"]
    ep_id = endpoint.rsplit("/", 1)[1]
    page.goto(f"/console/models/{model_name.rsplit('/', 1)[1]}")
    page.click(f"#endpoint-{ep_id} >> text=Undeploy…")
    assert "will stop serving checkpoint 1" in page.inner_text("#confirm")
    page.click("#confirm-undeploy")
    page.wait_for_selector(".flash")
    assert f"Undeployed endpoint {ep_id}" in page.inner_text(".flash")
    assert "nothing (undeployed)" in page.inner_text(f"#endpoint-{ep_id}")
    r = httpx.post(f"{server}/v1/{endpoint}:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]})
    assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
    page.click(f"#endpoint-{ep_id} a.danger")
    assert "is removed" in page.inner_text("#confirm") and "The tuned model" in page.inner_text("#confirm")
    page.click("#confirm-delete")
    page.wait_for_selector(".flash")
    assert f"Deleted endpoint {ep_id}" in page.inner_text(".flash") and page.locator(f"#endpoint-{ep_id}").count() == 0
    assert httpx.get(f"{server}/v1/{endpoint}").status_code == 404
    assert httpx.get(f"{server}/v1/{model_name}").status_code == 200  # the tuned model stays


def test_delete_a_model_after_a_confirmation_that_says_what_goes(page, server, home):
    tuned = _tuned(server)
    model_name = tuned["tunedModel"]["model"].split("@")[0]
    model_id = model_name.rsplit("/", 1)[1]
    page.goto("/console/models")
    assert page.locator(f"#model-{model_id}").count() == 1
    shot(page, "models")
    page.click(f"#model-{model_id} a.danger")
    removes = page.inner_text("#removes")
    assert "its 2 endpoints" in removes and "2 checkpoints in" in removes  # one was deleted by the test above and f"{home}/jobs/" in removes
    shot(page, "delete")
    adapter = home / "jobs" / tuned["name"].rsplit("/", 1)[1] / "run" / "adapter"
    assert adapter.is_dir()
    page.click("#confirm-delete")
    page.wait_for_url(re.compile(r"/console/models$"))
    assert "Deleted model colours" in page.inner_text(".flash")
    assert page.locator(f"#model-{model_id}").count() == 0 and page.locator("#no-models").count() == 1
    assert httpx.get(f"{server}/v1/{model_name}").status_code == 404
    assert not adapter.exists()
    page.goto(f"/console/models/{model_id}")
    assert "not found" in page.inner_text("#error")


# ---------------------------------------------------------------- bad input, in words on the page

@pytest.mark.parametrize("fields, fragment", [
    ({"epochs": "abc"}, "Epochs: expected a whole number from 1 to 100, found 'abc'"),
    ({"lr_multiplier": "fast"}, "Learning-rate multiplier: expected a number in (0, 100], found 'fast'"),
    ({"batch_size": "0"}, "Batch size: expected a whole number from 1 to 4096, found '0'"),
    ({"base_model": "no-such-model"}, "unknown base model 'no-such-model'"),
    ({"train_path": "/etc/passwd"}, "Training dataset: /etc/passwd is outside the directories this server may read"),
    ({"train_path": "missing.jsonl"}, "file not found"),
    ({"train_path": ""}, "Training dataset: upload a file or give a path"),
    ({"eval_enabled": "1"}, "Evaluation: no evaluation dataset"),
    ({"eval_enabled": "1", "eval_task": "poetry", "validation_path": "val.jsonl"}, "Evaluation task: expected one of"),
    ({"lora_alpha": "0"}, "LoRA alpha: expected a number in (0, 1024]"),
    ({"lora_targets": "EMBEDDINGS"}, "LoRA targets: expected one of ALL_LINEAR, ATTENTION, MLP, found 'EMBEDDINGS'"),
    ({"lr_schedule": "STEP"}, "Learning-rate schedule: expected one of LINEAR, COSINE, CONSTANT, found 'STEP'"),
    ({"max_length": "4"}, "Max length: expected a whole number from 8 to 131072"),
    ({"early_stopping": "2"}, "Early-stopping patience: expected a validation dataset"),
])
def test_create_form_rejects_bad_input_in_words(page, server, home, fields, fragment):
    page.goto("/console/new")
    form = {"base_model": "gemini-2.0-flash-001", "train_path": str(home / "valid.jsonl"), "action": "create", **fields}
    for key in ("train_path", "validation_path"):
        if form.get(key) and not form[key].startswith("/"):
            form[key] = str(home / form[key])
    r = _post(page, "/console/new", form)
    assert r.status in (400, 403, 404), r.status
    assert fragment in re.sub(r"<[^>]+>", "", r.text()).replace("&#39;", "'").replace("&amp;", "&"), r.text()[:3000]
    assert not [j for j in httpx.get(server + REST + "/tuningJobs").json().get("tuningJobs", [])
                if j["state"] != "JOB_STATE_SUCCEEDED"]


def test_the_advanced_settings_reach_the_job(page, server, home):
    page.goto("/console/new")
    page.click("#advanced summary")
    page.fill("#lora_alpha", "8")
    page.select_option("#lora_targets", "ATTENTION")
    page.select_option("#lr_schedule", "COSINE")
    page.fill("#max_length", "256")
    page.fill("#early_stopping", "2")
    page.fill("#train_path", str(home / "valid.jsonl"))
    page.fill("#validation_path", str(home / "val.jsonl"))
    page.fill("#epochs", "40")  # long enough to cancel before it ends
    page.click("#create-job")
    page.wait_for_url(re.compile(r"/console/jobs/\d+$"))
    job = httpx.get(f"{server}{REST}/tuningJobs/{page.url.rsplit('/', 1)[1]}").json()
    httpx.post(f"{server}/v1/{job['name']}:cancel")
    hp = job["supervisedTuningSpec"]["hyperParameters"]
    assert {k: hp[k] for k in ("loraAlpha", "loraTargets", "learningRateSchedule", "maxLength", "earlyStoppingPatience")} \
        == {"loraAlpha": 8.0, "loraTargets": "ATTENTION", "learningRateSchedule": "COSINE", "maxLength": "256",
            "earlyStoppingPatience": "2"}


def test_other_forms_and_pages_reject_bad_input_in_words(page, server, home):
    _insert_job(home, "4343", "JOB_STATE_CANCELLED", {"code": 1, "message": "CANCELED"})
    ended = "4343"
    page.goto("/console")
    cases = [("/console/jobs/999/cancel", {}, 404, "tuning job 999 not found"),
             (f"/console/jobs/{ended}/cancel", {}, 400, "has already ended"),
             ("/console/models/999/delete", {}, 404, "tuned model '999' not found"),
             ("/console/endpoints/999/undeploy", {}, 404, "endpoint '999' not found"),
             ("/console/endpoints/999/delete", {}, 404, "endpoint '999' not found"),
             ("/console/endpoints/999/explode", {}, 404, "no such endpoint action 'explode'")]
    for url, form, status, fragment in cases:
        r = _post(page, url, form)
        assert r.status == status and fragment in r.text().replace("&#39;", "'"), (url, r.status, r.text()[:2000])
    for url, status, fragment in [("/console/jobs/abc", 404, "tuning job abc not found"),
                                  ("/console?state=JOB_STATE_NAPPING", 400, "state: expected one of"),
                                  ("/console/models/42/delete", 404, "tuned model '42' not found"),
                                  ("/console/endpoints/42/undeploy", 404, "endpoint '42' not found")]:
        response = page.goto(url)
        assert response.status == status and fragment in page.inner_text("#error"), url
    # the playground shows the error in the pane it belongs to
    page.goto("/console/playground?left=base:gemini-2.0-flash-001&right=endpoint:999")
    page.fill("#prompt", "hi")
    page.fill("#temperature", "hot")
    page.click("#run")
    page.wait_for_selector('#pane-left[data-done="error"]')
    assert "Temperature: expected a number from 0 to 2, found 'hot'" in page.inner_text("#error-left")
    # an image goes to the model inline; the text-only default model says which encoder it lacks
    page.fill("#temperature", "0")
    page.set_input_files("#image", str(Path(__file__).parent / "fixtures" / "images" / "red.png"))
    page.click("#run")
    page.wait_for_selector('#pane-left[data-done="error"]')
    assert "has no vision encoder, so it cannot take image/png parts" in page.inner_text("#error-left")
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    r = page.request.post("/console/api/generate", data=json.dumps({"target": "base:gemini-2.0-flash-001", "prompt": "hi",
                                                                    "image": {"mimeType": "image/png"}}),
                          headers={"X-CSRF-Token": token, "Origin": server, "Content-Type": "application/json"})
    assert r.status == 400 and "Image: expected a file" in r.json()["error"]
    r = page.request.post("/console/api/generate", data=json.dumps({"target": "endpoint:999", "prompt": "hi"}),
                          headers={"X-CSRF-Token": token, "Origin": server, "Content-Type": "application/json"})
    assert r.status == 404 and "endpoint 999 not found" in r.json()["error"]
    r = page.request.post("/console/api/generate", data=json.dumps({"target": "model:x", "prompt": "hi"}),
                          headers={"X-CSRF-Token": token, "Origin": server, "Content-Type": "application/json"})
    assert r.status == 404 and "Model: tuned model x not found" in r.json()["error"]
    r = page.request.post("/console/api/generate", data=json.dumps({"target": "adapter:x", "prompt": "hi"}),
                          headers={"X-CSRF-Token": token, "Origin": server, "Content-Type": "application/json"})
    assert r.status == 400 and "Model: expected base:NAME, model:ID or endpoint:ID" in r.json()["error"]
    r = page.request.post("/console/api/generate", headers={"X-CSRF-Token": token, "Origin": server, "Content-Type": "application/json"},
                          data=json.dumps({"target": "base:gemini-2.0-flash-001", "prompt": "hi", "maxOutputTokens": "many"}))
    assert r.status == 400 and "Max output tokens: expected a whole number from 1 to 8192, found 'many'" in r.json()["error"]
    r = page.request.post("/console/api/generate", headers={"X-CSRF-Token": token, "Origin": server, "Content-Type": "application/json"},
                          data=json.dumps({"target": "base:gemini-2.0-flash-001", "prompt": "hi", "temperature": 10**400}))
    assert r.status == 400 and "Temperature: expected a number from 0 to 2" in r.json()["error"]  # no float overflow


def _insert_job(home: Path, job_id: str, state: str, error: dict) -> None:
    """An ended job, written as the worker would leave it (the worker never picks up an ended job)."""
    import sqlite3

    spec = job_spec("big.jsonl", display_name="broken").to_json()
    with sqlite3.connect(home / "tunery.db") as db:
        db.execute("INSERT INTO jobs (id, project, location, state, detail_state, spec, create_time, update_time,"
                   " start_time, end_time, error, run_dir) VALUES (?, 'p', 'l', ?, NULL, ?, '2026-01-01T00:00:00.000000Z',"
                   " '2026-01-01T00:00:09.000000Z', '2026-01-01T00:00:01.000000Z', '2026-01-01T00:00:09.000000Z', ?, ?)",
                   (job_id, state, json.dumps(spec), json.dumps(error), str(home / "jobs" / job_id)))


def test_a_failed_job_shows_its_error_with_file_and_line_and_the_state_filter_finds_it(page, server, home):
    message = f"{home}/files/big.jsonl:7 /contents/1/role: error [consecutive_same_role] expected ..."
    _insert_job(home, "4242", "JOB_STATE_FAILED", {"code": 3, "message": message})
    page.goto("/console/jobs/4242")
    assert page.inner_text("#job-error") == message and page.inner_text("#state") == "failed"
    page.goto("/console?state=JOB_STATE_FAILED")
    assert [r.get_attribute("data-job") for r in page.locator("tr[data-job]").all()] == ["4242"]
    page.select_option("#state-filter", "JOB_STATE_SUCCEEDED")
    page.wait_for_url(re.compile(r"state=JOB_STATE_SUCCEEDED"))
    assert page.locator("#job-4242").count() == 0


def test_forms_refuse_cross_site_requests(page, server):
    page.goto("/console")
    r = _post(page, "/console/jobs/999/cancel", {}, origin="http://evil.example")
    assert r.status == 403 and "sent from http://evil.example" in r.text()
    r = _post(page, "/console/jobs/999/cancel", {}, origin=None)
    assert r.status == 403
    r = _post(page, "/console/jobs/999/cancel", {"csrf": "forged"})
    assert r.status == 403 and "security token is missing or out of date" in r.text()
    r = page.request.post("/console/api/generate", data="{}", headers={"Origin": server, "Content-Type": "application/json"})
    assert r.status == 403
    assert httpx.post(server + "/console/models/1/delete", data={"csrf": "x"}).status_code == 403  # no session at all
    r = _post(page, "/console/endpoints/999/undeploy", {}, origin="http://evil.example")
    assert r.status == 403 and "sent from http://evil.example" in r.text()
    assert _post(page, "/console/endpoints/999/delete", {"csrf": "forged"}).status == 403


# ---------------------------------------------------------------- with an API key

def test_api_key_sign_in_cookie_and_a_short_flow(browser, home, tmp_path):
    keyed = tmp_path / "keyed"
    keyed.mkdir()
    (keyed / "config.toml").write_text((home / "config.toml").read_text())
    write_jsonl(keyed / "train.jsonl", _rows(400))
    with serve(keyed, api_key=KEY) as url:
        context = browser.new_context(viewport={"width": 1200, "height": 800}, base_url=url)
        page = context.new_page()
        page.goto("/console/new")
        assert page.url == url + "/console/login"  # every page sends you to sign in first
        assert httpx.get(url + REST + "/tuningJobs").status_code == 401
        assert page.request.get("/console/api/jobs").status == 401
        for form_url in ("/console/new", "/console/jobs/1/cancel", "/console/models/1/delete", "/console/api/generate",
                         "/console/endpoints/1/undeploy", "/console/endpoints/1/delete"):
            r = page.request.post(form_url, form={"csrf": "x"}, headers={"Origin": url}, max_redirects=0)
            assert r.status == 401 and "sign in" in r.text(), form_url  # no session, no form
        r = _post(page, "/console/login", {"key": KEY, "csrf": "forged"})
        assert r.status == 403 and "security token" in r.text()
        shot(page, "login")
        page.fill("#key", "wrong-key")
        with page.expect_navigation():
            page.click("#sign-in")
        assert "wrong API key" in page.inner_text("#error")
        page.goto("/console")
        assert page.url == url + "/console/login"
        page.fill("#key", KEY)
        page.click("#sign-in")
        page.wait_for_url(url + "/console")
        assert "Signed in." in page.inner_text(".flash")
        cookie = next(c for c in context.cookies() if c["name"] == "tunery_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
        assert KEY not in cookie["value"] and KEY not in page.url
        # the cookie is accepted on /console only: the REST API still wants the key
        assert httpx.get(url + REST + "/tuningJobs", cookies={"tunery_console": cookie["value"]}).status_code == 401
        assert httpx.get(url + "/console/api/jobs", cookies={"tunery_console": cookie["value"]}).status_code == 200

        page.goto("/console/new")
        page.fill("#train_path", str(keyed / "train.jsonl"))
        page.fill("#display_name", "keyed")
        page.fill("#batch_size", "1")
        page.fill("#epochs", "5")
        page.click("#create-job")
        page.wait_for_url(re.compile(r"/console/jobs/\d+$"))
        job_id = page.url.rsplit("/", 1)[1]
        page.goto("/console")
        page.click(f"#job-{job_id} form.cancel button")
        page.wait_for_url(url + "/console")
        assert "Cancelling job keyed" in page.inner_text(".flash")
        page.wait_for_function(f"document.querySelector('#job-{job_id}').dataset.state === 'JOB_STATE_CANCELLED'",
                               timeout=30_000)
        job = httpx.get(f"{url}{REST}/tuningJobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert job["state"] == "JOB_STATE_CANCELLED"

        assert _post(page, "/console/logout", {"csrf": "forged"}).status == 403
        page.click("header form.logout button")
        page.wait_for_url(url + "/console/login")
        page.goto("/console")
        assert page.url == url + "/console/login"
        context.close()
    assert KEY not in (keyed / "serve.log").read_text()
