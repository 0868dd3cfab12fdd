"""Chaos: a real `tunery serve` runs several jobs on the tiny model while this test SIGKILLs the server, the jobs'
processes, and makes the jobs' processes kill themselves at named points of their checkpoint and state writes
(tunery/faults.py). Every kill is followed by a restart where needed. The choices are drawn from
random.Random(seed): `TUNERY_CHAOS_SEED=7 pytest tests/test_chaos.py` replays seed 7's choices (their timing
depends on the machine).

Then every job must have SUCCEEDED with checkpoint ids 1..K at the Vertex steps, metrics for steps 1..N each once,
at most one save interval (here: one step) of work redone per kill, and the same final adapter as an uninterrupted
run. The numbers of the run are printed (`pytest -s`) and recorded in docs/reliability.md."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import contents, write_jsonl
from tests.test_api import _free_port
from tunery import locks
from tunery.faults import CRASH_FILE, POINTS
from tunery.train import metrics as mt

JOBS = 3
EPOCHS, STEPS_PER_EPOCH = 6, 6  # 24 examples, batch 4
STEPS = EPOCHS * STEPS_PER_EPOCH
EXPORTS = {6 * k: k for k in range(1, EPOCHS + 1)}  # {step: checkpoint id}, one per epoch (Vertex, fewer than 10 epochs)
MIN_KILLS = 12  # 20 before make test ran under its 10-minute budget; the recorded 20-kill runs are in docs/reliability.md
SERVER_KILL_CHANCE = 0.12  # per tuning process's fate: the server instead
TERMINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
pytestmark = pytest.mark.all_cores


class Server:
    """`tunery serve` as a process of its own, started and SIGKILLed by PID."""

    def __init__(self, home: Path, env: dict) -> None:
        self.home, self.env, self.port = home, env, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.home / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(self.port), "--home",
                                      str(self.home), "--max-concurrent-jobs", str(JOBS)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v1/projects/p/locations/l/tuningJobs", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the server did not start")

    def children(self) -> dict[str, psutil.Process]:
        """{job id: its tuning process}: forked by the server's zygote (found by the job directory's lock it holds),
        or started anew (`-m tunery.jobs.child RUN_DIR`)."""
        found = {}
        try:
            for c in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    cmd = c.cmdline()
                    if "tunery.jobs.child" in cmd:
                        found[Path(cmd[-1]).name] = c
                    elif "tunery.jobs.zygote" in cmd and c.ppid() != self.proc.pid:
                        for f in c.open_files():
                            if Path(f.path).name == locks.LOCK_FILE and Path(f.path).parent.parent == (self.home / "jobs").resolve():
                                found[Path(f.path).parent.name] = c
                except psutil.NoSuchProcess:
                    continue
        except psutil.NoSuchProcess:
            pass
        return found

    def kill(self) -> None:
        kids = list(self.children().values())
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        psutil.wait_procs(kids, timeout=15)  # they die with it (PR_SET_PDEATHSIG)


def trained(run: Path) -> list[dict]:
    path = run / "trained.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def processes(run: Path) -> list[tuple[int | None, list[int]]]:
    """(resumed_from, steps trained) of each process that trained a step of this run, in order."""
    out: list[tuple[int | None, list[int]]] = []
    last_pid = None
    for r in trained(run):
        if r["pid"] != last_pid:
            out.append((r["resumed_from"], []))
            last_pid = r["pid"]
        out[-1][1].append(r["step"])
    return out


def test_jobs_survive_random_kills_of_server_and_tuning_processes(tmp_path, tiny_model_dir, monkeypatch):
    seed = int(os.environ.get("TUNERY_CHAOS_SEED", "1"))
    t0 = time.monotonic()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'default_base_model = "{tiny_model_dir}"\n')
    colours = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]
    data = write_jsonl(home / "train.jsonl", [contents(("user", f"Colour {i}: {c}?"), ("model", f"It is {c}."))
                                              for i, c in enumerate(colours * 3)])
    env = {**os.environ, "TUNERY_HOME": str(home), "TUNERY_FAULTS": "1", "TUNERY_SAVE_INTERVAL_SECONDS": "0",
           "TUNERY_MAX_JOB_CRASHES": "1000"}
    server = Server(home, env)
    server.start()
    ids = []
    for _ in range(JOBS):
        body = {"baseModel": "gemini-2.0-flash-001", "supervisedTuningSpec": {
            "trainingDatasetUri": str(data), "hyperParameters": {"epochCount": EPOCHS, "batchSize": 4}}}
        r = httpx.post(f"{server.url}/v1/projects/p/locations/l/tuningJobs", json=body, timeout=30)
        assert r.status_code == 200, r.text
        ids.append(r.json()["name"].rsplit("/", 1)[1])
    runs = {i: home / "jobs" / i / "run" for i in ids}
    kills: Counter = Counter()
    try:
        _chaos(server, ids, runs, seed, kills, deadline=time.monotonic() + 600)
        for run in runs.values():
            (run / CRASH_FILE).unlink(missing_ok=True)
        jobs = {}
        deadline = time.monotonic() + 240
        for job_id in ids:
            while (job := httpx.get(f"{server.url}/v1/projects/p/locations/l/tuningJobs/{job_id}", timeout=30).json()
                   )["state"] not in TERMINAL and time.monotonic() < deadline:
                time.sleep(0.3)
            jobs[job_id] = job
    finally:
        server.kill()
    chaos_seconds = time.monotonic() - t0

    for job_id, job in jobs.items():
        run = runs[job_id]
        assert job["state"] == "JOB_STATE_SUCCEEDED", job.get("error")
        assert [(c["checkpointId"], c["step"], c["epoch"]) for c in job["tunedModel"]["checkpoints"]] == \
            [(str(k), str(s), str(k)) for s, k in EXPORTS.items()]  # epoch k ends at step 6k
        manifest = json.loads((run / "manifest.json").read_text())
        assert [(c["checkpointId"], c["step"]) for c in manifest["checkpoints"]] == [(str(k), s) for s, k in EXPORTS.items()]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"checkpoint-{k}" for k in EXPORTS.values()]
        assert [r["step"] for r in mt.read_metrics(run)] == list(range(1, STEPS + 1))  # contiguous, none twice
        history = processes(run)
        assert history[0][0] is None and history[0][1][0] == 1
        for (_, before), (resumed, after) in zip(history, history[1:]):
            assert resumed >= before[-1] - 1, history  # at most one step (the save interval) redone
            assert after == list(range(resumed + 1, after[-1] + 1)), history
        assert history[-1][1][-1] == STEPS

    # the uninterrupted run, in the precision the jobs recorded when they began
    from safetensors.torch import load_file

    from tunery import device
    from tunery.config import TuningConfig
    from tunery.train.engine import train

    precisions = {json.loads((r / "run.json").read_text())["runtime"]["precision"] for r in runs.values()}
    references = {}
    for precision in precisions:
        monkeypatch.setenv("TUNERY_PRECISION", precision)
        device.pick.cache_clear()
        out = tmp_path / f"straight-{precision}"
        train(TuningConfig(train=str(data), base_model=str(tiny_model_dir), epochs=EPOCHS, batch_size=4, output=str(out)))
        references[precision] = load_file(out / "adapter" / "adapter_model.safetensors")
    device.pick.cache_clear()
    for run in runs.values():
        ref = references[json.loads((run / "run.json").read_text())["runtime"]["precision"]]
        got = load_file(run / "adapter" / "adapter_model.safetensors")
        assert got.keys() == ref.keys() and all(torch_equal(got[k], ref[k]) for k in got), run

    total = sum(kills.values())
    print(f"\nchaos seed {seed}: {total} kills {dict(kills)}, {server.starts} server starts, "
          f"{sum(len(processes(r)) for r in runs.values())} tuning processes trained, "
          f"{chaos_seconds:.0f} s of chaos, {time.monotonic() - t0:.0f} s in all")
    assert total >= MIN_KILLS


def torch_equal(a, b) -> bool:
    import torch

    return torch.allclose(a, b, rtol=0, atol=1e-6)


def _chaos(server: Server, ids: list[str], runs: dict[str, Path], seed: int, kills: Counter, deadline: float) -> None:
    """Kill until MIN_KILLS. Each tuning process, once it has trained a step, gets one fate drawn from its job's
    random.Random: kill itself at a named point of one of its next steps, or be SIGKILLed from outside within 0.3 s;
    with SERVER_KILL_CHANCE the server is SIGKILLed instead (all jobs' processes die with it) and restarted."""
    rngs = {job_id: random.Random(f"{seed}/{k}") for k, job_id in enumerate(ids)}
    server_rng = random.Random(f"{seed}/server")
    fates: dict[int, tuple] = {}  # pid -> ("crash", job, point, step) | ("kill", job, at monotonic time)
    while sum(kills.values()) < MIN_KILLS:
        assert time.monotonic() < deadline, f"chaos ran out of time after {dict(kills)}"
        children = server.children()
        pending = [j for j in ids if not (runs[j] / "manifest.json").is_file()]
        assert pending, f"every job finished after only {dict(kills)} kills"
        for job_id in pending:
            proc = children.get(job_id)
            if proc is None:
                continue
            mine = [r["step"] for r in trained(runs[job_id]) if r["pid"] == proc.pid]
            fate = fates.get(proc.pid)
            if fate is None and mine:
                if server_rng.random() < SERVER_KILL_CHANCE:
                    server.kill()
                    kills["server"] += 1
                    for run in runs.values():
                        (run / CRASH_FILE).unlink(missing_ok=True)
                    fates.clear()
                    server.start()
                    break
                rng = rngs[job_id]
                if rng.random() < 0.65:  # it kills itself at a named point of one of its next steps
                    point, target = rng.choice(POINTS), mine[-1] + rng.randint(1, 2)
                    if point.startswith("checkpoint"):
                        target = min((s for s in EXPORTS if s >= target), default=STEPS + 1)
                    if target <= STEPS:
                        (runs[job_id] / CRASH_FILE).write_text(f"{point} {target}")
                        fates[proc.pid] = ("crash", proc, point, target, job_id)
                else:  # SIGKILL from outside at a random moment
                    fates[proc.pid] = ("kill", proc, time.monotonic() + rng.uniform(0, 0.3))
            elif fate and fate[0] == "kill" and time.monotonic() >= fate[2]:
                try:
                    proc.send_signal(signal.SIGKILL)
                    kills["process"] += 1
                except psutil.NoSuchProcess:
                    pass
                fates[proc.pid] = ("done",)
            elif fate and fate[0] == "crash" and mine and mine[-1] > fate[3]:  # it got past the point first
                (runs[job_id] / CRASH_FILE).unlink(missing_ok=True)
                del fates[proc.pid]
        for pid, fate in list(fates.items()):  # armed processes that are gone: did they kill themselves?
            if fate[0] == "crash" and not fate[1].is_running():
                job_id = fate[4]
                if not (runs[job_id] / CRASH_FILE).exists():  # removed only by the process killing itself
                    kills[fate[2]] += 1
                fates[pid] = ("done",)
        time.sleep(0.05)
