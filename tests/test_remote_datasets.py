"""gs:// and s3:// datasets against real local servers of those protocols: moto's S3 server (read through s3fs) and
gcp-storage-emulator (read through gcsfs), each started here on 127.0.0.1 and stopped by its PID. The train and the
validation file share a basename, which used to make the second download overwrite the first."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import contents, tunery_home
from tests.test_api import LiveServer, _free_port

pytest.importorskip("s3fs")
pytest.importorskip("gcsfs")
pytest.importorskip("moto")
pytest.importorskip("gcp_storage_emulator")

BUCKET = "datasets"
COLOURS = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
TRAIN = "".join(json.dumps(contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}."))) + "\n"
                for i, c in enumerate(COLOURS * 3)).encode()  # 24 examples
VAL = "".join(json.dumps(contents(("user", f"Which colour is {c}?"), ("model", c))) + "\n" for c in COLOURS).encode()


def _serve(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{cmd[0]} did not start")


@pytest.fixture(scope="module")
def storage():
    """Both servers, with the same two files (train/data.jsonl and validation/data.jsonl) in a bucket of each."""
    s3_port, gcs_port = _free_port(), _free_port()
    bindir = Path(sys.executable).parent
    procs = [_serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], s3_port),
             _serve([str(bindir / "gcp-storage-emulator"), "start", "-H", "127.0.0.1", "--port", str(gcs_port),
                     "--in-memory", "--default-bucket", BUCKET, "-q"], gcs_port)]
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{gcs_port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the server's tuning processes inherit it
    try:
        import fsspec

        fsspec.filesystem("s3").mkdir(BUCKET)
        for scheme in ("s3", "gs"):
            for folder, data in (("train", TRAIN), ("validation", VAL)):
                with fsspec.open(f"{scheme}://{BUCKET}/{folder}/data.jsonl", "wb") as f:
                    f.write(data)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_remote_train_and_validation_with_the_same_basename(storage, scheme, tmp_path, tiny_model_dir):
    with tunery_home(tmp_path, tiny_model_dir) as home, LiveServer(home, allow_buckets=(BUCKET,)) as server:
        body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {
            "trainingDatasetUri": f"{scheme}://{BUCKET}/train/data.jsonl",
            "validationDatasetUri": f"{scheme}://{BUCKET}/validation/data.jsonl",
            "hyperParameters": {"epochCount": 1, "batchSize": 4}}}
        r = httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/tuningJobs", json=body, timeout=30)
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        deadline = time.monotonic() + 240
        while (job := httpx.get(f"{server.url}/v1beta1/{name}", timeout=30).json())["state"] not in (
                "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED") and time.monotonic() < deadline:
            time.sleep(0.3)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job.get("error")
    job_dir = home / "jobs" / name.rsplit("/", 1)[1]
    assert (job_dir / "data" / "train" / "data.jsonl").read_bytes() == TRAIN
    assert (job_dir / "data" / "validation" / "data.jsonl").read_bytes() == VAL
    run = json.loads((job_dir / "run" / "run.json").read_text())
    assert run["train"]["sha256"] == hashlib.sha256(TRAIN).hexdigest() and run["train"]["examples"] == 24
    assert run["validation"]["sha256"] == hashlib.sha256(VAL).hexdigest() and run["validation"]["examples"] == 8
    assert job["tuningDataStats"]["supervisedTuningDataStats"]["tuningDatasetExampleCount"] == 24
