"""Supervised tuning, then preference tuning (DPO) from its tuned model, then the comparison: the google-genai flow.

    python examples/preference_tuning.py                       # SmolLM2-135M: about 7 minutes on 2 CPU cores
    python examples/preference_tuning.py --base-model DIR --examples 8 --epochs 1     # a quick run on another model

1. Starts `tunery serve` on a free port with a home of its own (the converted weights are shared with your home).
2. Supervised job on the first --examples alerts of examples/data/alerts_train.jsonl.
3. Preference job (`method="PREFERENCE_TUNING"`) continuing from the supervised model (`base_model=` its tuned model:
   the SDK sends `preTunedModel`), on as many pairs of examples/data/prefs_train.jsonl (the correct summary against
   one with a wrong fact). The supervised model is its start and its reference.
4. `tunery compare --server`: the supervised model against the preference-tuned one on held-out alerts, answers
   scored against the preferred summaries. Then it stops the server (by its process id).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


def wait(client, job):
    while not job.has_ended:
        time.sleep(1)
        job = client.tunings.get(name=job.name)
    print(f"  {job.name}: {job.state.name}", flush=True)
    if job.state.name != "JOB_STATE_SUCCEEDED":
        raise SystemExit(f"the job failed: {job.error}")
    return job


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=48, help="supervised examples, and preference pairs")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--test", type=int, default=20, help="held-out alerts compared at the end")
    args = ap.parse_args()

    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    from tunery import config

    home = Path(tempfile.mkdtemp(prefix="tunery-preference-"))
    shared = config.home() / "models"  # converted weights: once per machine, not once per run
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared)
    data = home / "data"
    data.mkdir()
    sft_file = head(DATA / "alerts_train.jsonl", data / "sft.jsonl", args.examples)
    pairs_file = head(DATA / "prefs_train.jsonl", data / "pairs.jsonl", args.examples)
    test = data / "test.jsonl"  # held-out alerts, the preferred summary as the reference
    test.write_text("".join(json.dumps({"contents": row["contents"] + [row["completions"][0]["completion"]]}) + "\n"
                            for row in map(json.loads, (DATA / "prefs_test.jsonl").read_text().splitlines()[:args.test])))
    port = free_port()
    base = str(Path(args.base_model).resolve()) if Path(args.base_model).is_dir() else args.base_model
    allow = ["--allow-path", base] if Path(base).is_dir() else []
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(home),
                               *allow], env={**os.environ, "TUNERY_HOME": str(home)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        client = genai.Client(vertexai=True, project="my-project", location="us-central1",
                              credentials=google.oauth2.credentials.Credentials(token="local-dev"),
                              http_options=types.HttpOptions(base_url=url))
        deadline = time.monotonic() + 120
        while True:
            try:
                client.tunings.list()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
        print("supervised tuning", flush=True)
        sft = wait(client, client.tunings.tune(
            base_model=base, training_dataset=types.TuningDataset(gcs_uri=str(sft_file)),
            config=types.CreateTuningJobConfig(epoch_count=args.epochs, tuned_model_display_name="alerts-sft")))
        print("preference tuning (DPO) from the supervised model", flush=True)
        dpo = wait(client, client.tunings.tune(
            base_model=sft.tuned_model.model, training_dataset=types.TuningDataset(gcs_uri=str(pairs_file)),
            config=types.CreateTuningJobConfig(method="PREFERENCE_TUNING", epoch_count=args.epochs, beta=args.beta,
                                               tuned_model_display_name="alerts-sft-dpo")))
        stats = dpo.tuning_data_stats.preference_optimization_data_stats
        print(f"  {stats.tuning_dataset_example_count} pairs; tuned model {dpo.tuned_model.model}", flush=True)
        compare = subprocess.run([sys.executable, "-m", "tunery.cli", "compare", "--server", url, "--base",
                                  sft.tuned_model.model, "--tuned", dpo.tuned_model.model, "--data", str(test),
                                  "--task", "summarization", "--max-output-tokens", "96"],
                                 env={**os.environ, "TUNERY_HOME": str(home)}, capture_output=True, text=True)
        print(compare.stdout, end="")
        if compare.returncode != 0:
            print(compare.stderr, file=sys.stderr)
            return 1
        return 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its job processes
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
