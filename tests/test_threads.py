"""Sharing the cores: each job process gets its share of threads and spins only briefly when idle; the server's generation gets
the cores its running jobs leave. (The speed this buys is measured by bench/job_bench.py, not here.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest
import torch

from tests.test_api import LiveServer
from tests.test_jobs_worker import create, get, home, wait  # noqa: F401  (home is a fixture)
from tunery import procenv, threads
from tunery.serve.registry import Registry

pytestmark = pytest.mark.all_cores  # sharing cores needs more than the one core a test worker has


def test_partition_arithmetic():
    n = threads.cores()
    assert threads.per_job(1) == n and threads.per_job(n * 4) == 1
    assert threads.for_serving(0, n) == n  # no job: generation has the machine
    assert threads.for_serving(1, n) == 1  # a job holding every core still leaves generation one thread
    assert threads.for_serving(1, max(1, n // 2)) == max(1, n - max(1, n // 2))


def test_a_training_process_starts_with_a_bounded_kernel_cache_and_knows_it():
    """`tune --local` starts itself again when a setting read at process start is missing (tunery/cli.py)."""
    env = procenv.compute_env({"PATH": "/usr/bin"})
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256" and env["GOMP_SPINCOUNT"] == "10000"
    assert procenv.compute_env({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"})["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    check = [sys.executable, "-c", "from tunery import procenv; print(procenv.has_compute_env())"]
    without = {k: v for k, v in env.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    assert subprocess.run(check, env=without, capture_output=True, text=True).stdout.strip() == "False"
    assert subprocess.run(check, env=env, capture_output=True, text=True).stdout.strip() == "True"


def test_registry_sets_its_compute_threads_from_the_provider():
    wanted = [1]
    registry = Registry(threads=lambda: wanted[0])
    assert registry.call(torch.get_num_threads) == 1
    wanted[0] = 2
    assert registry.call(torch.get_num_threads) == 2


def test_a_running_job_gets_its_share_and_generation_the_rest(home):  # noqa: F811
    with LiveServer(home) as server:
        worker = server.services.worker
        assert worker.serving_threads() == threads.cores()  # nothing running yet
        job = create(server.url, home, epochs=2)  # its process lives for seconds (imports), enough to look at it
        wait(server.url, job["name"], lambda j: j["state"] == "JOB_STATE_RUNNING" and worker.children)
        [child] = worker.children.values()
        env = psutil.Process(child.ref.pid).environ()  # as it started: the zygote's, for a forked process
        assert env["GOMP_SPINCOUNT"] == "10000" and env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
        assert worker.threads_per_job == threads.cores()  # what the job is given (its run.json says it used it)
        assert worker.serving_threads() == threads.for_serving(1, worker.threads_per_job)
        assert server.services.registry.call(torch.get_num_threads) == worker.serving_threads()
        done = wait(server.url, job["name"], lambda j: j["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"))
        assert done["state"] == "JOB_STATE_SUCCEEDED", done.get("error")
    run = home / "jobs" / job["name"].rsplit("/", 1)[1] / "run"
    assert json.loads((run / "run.json").read_text())["runtime"]["threads"] == threads.cores()


def _trained(run) -> list[dict]:
    path = run / "trained.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_generation_beside_a_job_takes_a_share_of_its_threads_and_gives_it_back(home):  # noqa: F811
    if threads.cores() < 2:
        pytest.skip("sharing needs at least two cores")
    lines = (home / "train.jsonl").read_text().splitlines()
    (home / "train.jsonl").write_text("\n".join(lines * 10) + "\n")  # enough steps to see both phases
    with LiveServer(home) as server:
        worker, registry = server.services.worker, server.services.registry
        full, shared = worker.threads_per_job, threads.while_serving(1, worker.threads_per_job)
        assert shared < full
        job = create(server.url, home, epochs=10)
        wait(server.url, job["name"], lambda j: j["state"] == "JOB_STATE_RUNNING" and worker.children)
        job_dir = home / "jobs" / job["name"].rsplit("/", 1)[1]
        run, share = job_dir / "run", job_dir / threads.SHARE_FILE
        assert share.read_text() == f"{full}\n"  # nothing generating: the job has its whole share
        deadline = time.monotonic() + 120
        while not _trained(run):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert registry.call(torch.get_num_threads) == threads.cores() - shared  # generation gets what it leaves
        assert share.read_text() == f"{shared}\n"
        while not any(r["threads"] == shared for r in _trained(run)):  # generating until a step ran with fewer
            registry.call(torch.get_num_threads)
            assert time.monotonic() < deadline, _trained(run)[-3:]
            time.sleep(0.05)
        time.sleep(threads.SERVING_HOLD_SECONDS + 4 * worker.poll_seconds)  # generation idle: the threads go back
        assert share.read_text() == f"{full}\n"
        n = len(_trained(run))
        while len(_trained(run)) <= n + 1:
            assert time.monotonic() < deadline and get(server.url, job["name"])["state"] == "JOB_STATE_RUNNING"
            time.sleep(0.05)
    records = _trained(run)
    first_shared = next(i for i, r in enumerate(records) if r["threads"] == shared)
    assert records[0]["threads"] == full and records[-1]["threads"] == full
    assert {r["threads"] for r in records[first_shared:]} == {full, shared}
