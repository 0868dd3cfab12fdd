"""Peak memory of `tunery tune --local` on the default model, batch 8, max length 512, against the model's fp32
weight size (baseline: what merely holding the weights in fp32 costs).

Two datasets: the bundled alert summaries (about 130 tokens per example; the demo's job, with its validation set) and
long examples of about 450 tokens made from them (four alerts and their summaries per example). Each run is its
own process; its peak resident set (VmHWM) is read when the tuning ends.

Usage: python bench/memory_bench.py [--examples 240] [--epochs 1] [--adapter-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"


def _long(src: Path, dst: Path, per_example: int = 4) -> Path:
    """Examples of `per_example` alerts each: the user turn asks for all summaries, the model gives them in order."""
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    out = []
    for k in range(0, len(rows) - per_example + 1, per_example):
        group = rows[k:k + per_example]
        text = lambda r, role: next(p["text"] for c in r["contents"] if c["role"] == role for p in c["parts"])  # noqa: E731
        user = "\n\n".join(f"Alert {i + 1}: {text(r, 'user')}" for i, r in enumerate(group))
        model = "\n".join(f"{i + 1}. {text(r, 'model')}" for i, r in enumerate(group))
        out.append({"contents": [{"role": "user", "parts": [{"text": user}]}, {"role": "model", "parts": [{"text": model}]}]})
    dst.write_text("".join(json.dumps(r) + "\n" for r in out))
    return dst


def peak_of_tune(args: list[str]) -> int:
    """Run `tunery tune --local ARGS` as a child process and return its peak RSS in bytes (from wait4's rusage,
    which covers the process's whole life, including the re-exec that loads its allocator)."""
    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli", "-q", "tune", "--local", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"tune failed:\n{stderr[-3000:]}")
    return usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=240)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--adapter-size", type=int, default=None, help="LoRA rank (default: tunery's)")
    args = ap.parse_args()

    import torch

    from tunery import models
    from tunery.config import DEFAULT_ADAPTER_SIZE

    rank = args.adapter_size or DEFAULT_ADAPTER_SIZE

    spec = models.resolve(None)
    weights = sum(p.numel() for p in models.load_model(spec).parameters()) * torch.float32.itemsize
    tmp = Path(tempfile.mkdtemp(prefix="tunery-memory-bench-"))
    contents_train, contents_val = tmp / "train.jsonl", tmp / "val.jsonl"
    for src, dst in ((DATA / "alerts_train.jsonl", contents_train), (DATA / "alerts_val.jsonl", contents_val)):
        subprocess.run([sys.executable, "-m", "tunery.cli", "-q", "convert", str(src), str(dst), "--to", "contents"],
                       check=True, stdout=subprocess.DEVNULL)
    lines = contents_train.read_text().splitlines()[:args.examples]
    contents_train.write_text("\n".join(lines) + "\n")
    long_train = _long(contents_train, tmp / "long.jsonl")
    common = ["--epochs", str(args.epochs), "--batch-size", "8", "--max-length", "512", "--save-interval-seconds", "1e9",
              "--adapter-size", str(rank)]
    print(f"default model, fp32 weights {weights / 1e9:.2f} GB (baseline); batch 8, max length 512, LoRA rank {rank}, "
          f"{args.epochs} epoch(s); cpus={os.cpu_count()}")
    for label, extra in ((f"alerts ({len(lines)} + validation)", ["--train", str(contents_train), "--validation", str(contents_val)]),
                         (f"long examples ({len(long_train.read_text().splitlines())}, ~450 tokens)", ["--train", str(long_train)])):
        peak = peak_of_tune(extra + common + ["--output", str(tmp / f"run-{len(extra)}")])
        print(f"{label:40s} peak RSS {peak / 1e9:5.2f} GB = {peak / weights:4.1f}x the fp32 weights (goal <= 2 GB)")


if __name__ == "__main__":
    main()
