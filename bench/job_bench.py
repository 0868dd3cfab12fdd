"""The job path and sharing the machine, on the real default model.

1. Job path: the same job (the first --examples alerts, 1 epoch, batch 8, with validation) run by `tunery tune --local`
   (baseline: a process of its own, wall time from start to exit) and through `tunery serve` right after that server
   answered --warm-requests generate calls (wall time from the create request to JOB_STATE_SUCCEEDED).
2. Sharing: on the same server, generate latency alone (baseline) and the job alone (baseline: step 1's job) against
   both at once: a second, identical job while a client sends generate requests back to back until it ends.
   Each side's slowdown is its time shared / its time alone.

Usage: python bench/job_bench.py [--examples 48] [--warm-requests 8] [--max-output-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
PLACE = "v1/projects/bench/locations/us-central1"
PROMPT = "Summarize this alert: Cloud SQL instance 'orders-db' CPU utilization exceeded 90% for 15 minutes in us-central1."


def _call(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=1200) as r:
        return json.loads(r.read())


def _subset(src: Path, n: int, dst: Path) -> Path:
    dst.write_text("\n".join(src.read_text().splitlines()[:n]) + "\n")
    return dst


def run_local(train: Path, val: Path, out: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunery.cli", "-q", "tune", "--local", "--train", str(train), "--validation",
                    str(val), "--epochs", "1", "--output", str(out)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def run_job(base: str, train: Path, val: Path) -> float:
    t = time.perf_counter()
    job = _call(f"{base}/{PLACE}/tuningJobs", {
        "baseModel": "smollm2-135m-instruct", "supervisedTuningSpec": {
            "trainingDatasetUri": str(train), "validationDatasetUri": str(val),
            "hyperParameters": {"epochCount": "1", "adapterSize": "ADAPTER_SIZE_FOUR"}}})
    while (state := _call(f"{base}/v1/{job['name']}")["state"]) not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
        time.sleep(0.25)
    if state != "JOB_STATE_SUCCEEDED":
        sys.exit(f"job failed: {job['name']}")
    return time.perf_counter() - t


def generate(base: str, max_tokens: int) -> float:
    t = time.perf_counter()
    _call(f"{base}/{PLACE}/publishers/google/models/smollm2-135m-instruct:generateContent", {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": max_tokens, "temperature": 0}})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--val-examples", type=int, default=8)
    ap.add_argument("--warm-requests", type=int, default=8)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tunery-job-bench-"))
    train = _subset(DATA / "alerts_train.jsonl", args.examples, tmp / "train.jsonl")
    val = _subset(DATA / "alerts_val.jsonl", args.val_examples, tmp / "val.jsonl")
    local = run_local(train, val, tmp / "local")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp / "home"
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "-q", "serve", "--port", str(port), "--home", str(home),
                               "--allow-path", str(tmp)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                _call(f"{base}/{PLACE}/tuningJobs")
                break
            except OSError:
                time.sleep(0.2)
        alone_gen = [generate(base, args.max_output_tokens) for _ in range(args.warm_requests)][1:]  # first loads
        job_alone = run_job(base, train, val)

        shared_gen: list[float] = []
        done = threading.Event()

        def client() -> None:
            while not done.is_set():
                shared_gen.append(generate(base, args.max_output_tokens))

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(1.0)  # the client is in its stride before the job starts
        job_shared = run_job(base, train, val)
        done.set()
        thread.join()
    finally:
        server.terminate()
        server.wait(timeout=30)

    gen_alone, gen_shared = statistics.median(alone_gen), statistics.median(shared_gen)
    print(f"{args.examples} examples x 1 epoch (batch 8) + {args.val_examples} validation examples; generate: "
          f"{args.max_output_tokens} tokens, greedy; cpus={os.cpu_count()}")
    print(f"job path: tune --local {local:6.1f} s (baseline) | through serve after {args.warm_requests} generate calls "
          f"{job_alone:6.1f} s -> {job_alone / local:.2f}x (goal <= 1.1x)")
    print(f"sharing: job alone {job_alone:6.1f} s, with generate traffic {job_shared:6.1f} s -> {job_shared / job_alone:.2f}x "
          f"(goal <= 2.2x)")
    print(f"sharing: generate alone median {gen_alone:5.2f} s, during the job {gen_shared:5.2f} s over {len(shared_gen)} "
          f"calls -> {gen_shared / gen_alone:.2f}x (goal <= 2.2x)")


if __name__ == "__main__":
    main()
