"""Data-parallel throughput on Ray: the same job with 1 and with 2 Ray Train workers, through `tunery serve
--executor ray` on a local token-auth Ray head (2 CPUs), one run each.

Tokens/s: supervised tokens (metrics.jsonl's train_num_predictions) of steps 2..N over the wall time between the
first and the last step's metrics record, so Ray's start-up, the model load and the first (warm-up) step are out;
all tokens/s: the dataset's rendered tokens (totalTokenCount) x epochs x (N-1)/N over that same time, the measure
of docs/benchmarks.md.
Job wall time (create to end, Ray start-up included) is printed beside it.

Usage: python bench/ray_bench.py [--base-model smollm2-135m-instruct] [--examples 64] [--epochs 1] [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "alerts_train.jsonl"
RAY = Path(sys.executable).parent / "ray"
REST = "/v1beta1/projects/p/locations/l/tuningJobs"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str, headers: dict | None = None, proc: subprocess.Popen | None = None) -> None:
    for _ in range(240):
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{proc.args[:3]} exited with {proc.returncode}")
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def _stamp(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def run_job(url: str, train: Path, base_model: str, epochs: int, workers: int, home: Path) -> dict:
    """One job through the server; its throughput from the run's metrics."""
    body = {"baseModel": base_model, "workers": workers, "supervisedTuningSpec": {
        "trainingDatasetUri": str(train), "hyperParameters": {"epochCount": epochs, "batchSize": 8}}}
    t0 = time.monotonic()
    job = httpx.post(url + REST, json=body, timeout=60).json()
    while job["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
        time.sleep(1)
        job = httpx.get(f"{url}/v1beta1/{job['name']}", timeout=30).json()
    wall = time.monotonic() - t0
    if job["state"] != "JOB_STATE_SUCCEEDED":
        raise SystemExit(f"workers={workers}: {job['state']} {job.get('error')}")
    job_dir = home / "jobs" / job["name"].rsplit("/", 1)[1]
    records = [json.loads(line) for line in (job_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = json.loads((job_dir / "result.json").read_text())["stats"]["totalTokenCount"]
    train_records = [r for r in records if "/train_num_predictions" in r]
    tokens = sum(r["/train_num_predictions"] for r in train_records[1:])
    seconds = _stamp(train_records[-1]["time"]) - _stamp(train_records[0]["time"])
    steps = len(train_records)
    return {"workers": workers, "steps": steps, "tokens_per_s": tokens / seconds,
            "all_tokens_per_s": per_epoch * epochs * (steps - 1) / steps / seconds,
            "s_per_step": seconds / (len(train_records) - 1), "job_wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--models", type=Path, default=Path.home() / ".tunery" / "models",
                    help="An existing tunery models cache to reuse (converted weights), if there is one.")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    home = tmp / "home"
    (home / "data").mkdir(parents=True)
    if args.models.is_dir():
        (home / "models").symlink_to(args.models.resolve())
    train = home / "data" / "train.jsonl"
    train.write_text("\n".join(DATA.read_text().splitlines()[:args.examples]) + "\n")
    token, dash = secrets.token_hex(32), _port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{RAY.parent}:{os.environ.get('PATH', '')}", "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                             "--port", str(_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                             "--temp-dir", str(tmp / "ray"), "--disable-usage-stats"], env=env,
                            stdout=open(tmp / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    serve = None
    try:
        _up(f"http://127.0.0.1:{dash}/api/jobs/", {"Authorization": f"Bearer {token}"}, head)
        port = _port()
        serve = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--home", str(home), "--port", str(port),
                                  "--executor", "ray", "--ray-address", f"http://127.0.0.1:{dash}"],
                                 env={**env, "TUNERY_HOME": str(home)}, stdout=open(tmp / "serve.log", "wb"),
                                 stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        _up(url + REST, proc=serve)
        rows = [run_job(url, train, args.base_model, args.epochs, w, home) for w in (1, 2)]
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=30)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print("| Ray Train workers | steps | supervised tokens/s | all tokens/s | s/step | job wall time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['all_tokens_per_s']:.0f} | "
              f"{r['s_per_step']:.2f} | {r['job_wall_s']:.0f} |")


if __name__ == "__main__":
    main()
