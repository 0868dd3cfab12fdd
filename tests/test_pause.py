"""OpenAI's pause and resume through the real openai SDK against a live server: a running job stops after the step
it is on with its state saved (status pausing, then paused; the Vertex view says RUNNING, then JOB_STATE_PAUSED),
its process ends, and resume continues from that step: every step is trained exactly once."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.helpers import tunery_home, write_jsonl
from tests.test_api import LiveServer
from tunery.train import metrics as mt


def _wait(predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout  # a bound on a hang, far above the seconds this takes
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_pause_stops_after_a_step_and_resume_trains_each_step_once(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("pause-home")
    rows = [{"messages": [{"role": "user", "content": f"Colour {i}?"}, {"role": "assistant", "content": f"It is colour {i}."}]}
            for i in range(16)]
    with tunery_home(home, tiny_model_dir):
        (home / "data").mkdir()
        data = write_jsonl(home / "data" / "train.jsonl", rows)
        with LiveServer(home) as server:
            oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key="local-dev")
            upload = oa.files.create(file=("train.jsonl", data.read_bytes()), purpose="fine-tune")
            job = oa.fine_tuning.jobs.create(model="gemini-2.0-flash-001", training_file=upload.id, method={
                "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 40, "batch_size": 4}}})
            run = home / "jobs" / job.id.removeprefix("ftjob-") / "run"
            _wait(lambda: len(mt.read_metrics(run)) >= 3)
            paused = oa.fine_tuning.jobs.pause(job.id)
            assert paused.status in ("pausing", "paused")
            _wait(lambda: oa.fine_tuning.jobs.retrieve(job.id).status == "paused")
            stopped_at = len(mt.read_metrics(run))
            assert 3 <= stopped_at < 160
            name = server.services.store.get_job(job.id.removeprefix("ftjob-")).name
            assert httpx.get(f"{server.url}/v1/{name}").json()["state"] == "JOB_STATE_PAUSED"
            time.sleep(1.0)
            assert len(mt.read_metrics(run)) == stopped_at  # nothing trains while paused
            assert oa.fine_tuning.jobs.pause(job.id).status == "paused"  # pausing a paused job changes nothing
            assert oa.fine_tuning.jobs.resume(job.id).status == "queued"
            done = _wait(lambda: (j := oa.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                         timeout=300)
            assert done.status == "succeeded", done.error
            steps = [r["step"] for r in mt.read_metrics(run)]
            assert steps == list(range(1, 161))  # 16 / 4 x 40: each exactly once, the pause redid none
            with pytest.raises(openai.BadRequestError) as err:
                oa.fine_tuning.jobs.resume(job.id)
            assert "is not paused" in str(err.value)
            with pytest.raises(openai.BadRequestError) as err:  # an ended job cannot be paused
                oa.fine_tuning.jobs.pause(job.id)
            assert "cannot be paused" in str(err.value)
            for call in (oa.fine_tuning.jobs.pause, oa.fine_tuning.jobs.resume):  # an unknown id: 404, OpenAI's shape
                with pytest.raises(openai.NotFoundError):
                    call("ftjob-1234567890123456789")
