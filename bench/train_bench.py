"""LoRA training throughput: tunery vs a plain TRL SFTTrainer script with TRL's defaults, same run.

Both train SmolLM2-135M-Instruct (the registry's cached safetensors conversion) with LoRA rank 4 (alpha 8, all
linear layers) on the same examples of the bundled alert-summary set: batch size 8, max length 512, one epoch.
TRL gets what a user would write: SFTConfig(per_device_train_batch_size, num_train_epochs, max_length,
report_to="none", use_cpu=True: its bf16 default demands it on CPU) and a peft LoraConfig; everything else is TRL's default (bf16 autocast, gradient
checkpointing on, loss on every token).
Timed: the training loop only (TRL: trainer.train(); tunery: from its "start" event to "done").
Tokens: the examples' rendered tokens (identical for both templates). FLOP/s: 4 x (decoder linear params +
output projection) x tokens / time, which counts forward plus input-gradient backward and no weight gradients for
frozen layers. It is compared with this device's measured bf16 matmul peak (MFU).

On a CUDA machine both sides train on the GPU (tunery picks CUDA by itself; TRL gets use_cpu=False), and the peak is
measured on the GPU, at the bench's matmul shape and at a large square one.

Usage: python bench/train_bench.py [--examples 96] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "alerts_train.jsonl"
RANK, BATCH, MAX_LEN = 4, 8, 512


def _subset(n: int, tmp: Path) -> Path:
    lines = DATA.read_text().splitlines()[:n]
    path = tmp / "subset.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_ours(path: Path, out: Path) -> float:
    from tunery.config import TuningConfig
    from tunery.train.engine import train

    marks = {}
    train(TuningConfig(train=str(path), output=str(out), epochs=1, batch_size=BATCH, max_length=MAX_LEN,
                       adapter_size=RANK, save_interval_seconds=1e9),
          lambda e: marks.setdefault(e["event"], time.perf_counter()))
    return marks["done"] - marks["start"]


def run_trl(path: Path, out: Path, tuned: bool = False) -> float:
    """TRL's SFTTrainer as a user writes it: its defaults, or (tuned) as a careful user sets it for this job on a
    CPU: no gradient checkpointing (a 135M model's activations fit), and the loss on the answers only, through
    TRL's prompt-completion format (its completion-only loss). Not used, because TRL does them correctly only with
    kernels this CPU lacks: padding_free (flash-attention only) and assistant_only_loss (needs generation markers
    that SmolLM2's chat template does not have)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunery import models

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    convs = [[{"role": "assistant" if m["role"] == "model" else m["role"], "content": m["content"]} for m in r["messages"]]
             for r in rows]
    if tuned:
        ds = Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]} for c in convs])
    else:
        ds = Dataset.from_list([{"messages": c} for c in convs])
    extra = {"gradient_checkpointing": False} if tuned else {}
    import torch

    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=1, max_length=MAX_LEN,
                     report_to="none", save_strategy="no", use_cpu=not torch.cuda.is_available(),  # TRL asks for it on a CPU
                     **extra)
    trainer = SFTTrainer(model=str(models.model_dir(models.resolve(None))), args=args, train_dataset=ds,
                         peft_config=LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def _peak_gflops(dtype, n: int, k: int, m: int, device: str) -> float:
    """Measured matmul GFLOP/s of [n, k] @ [k, m] in `dtype` on `device`: the median of 5 rounds."""
    import torch

    from tunery.device import _matmul_seconds

    if device == "cpu":
        return 2 * n * k * m * 20 / _matmul_seconds(dtype, n, k, m) / 1e9
    a, b = torch.randn(n, k, dtype=dtype, device=device), torch.randn(k, m, dtype=dtype, device=device)
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(50):
            a @ b
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n * k * m * 50 / sorted(times[1:])[2] / 1e9


def facts(path: Path) -> dict:
    """Tokens of the examples, FLOPs per token, and the device's matmul peaks."""
    import torch

    from tunery import models
    from tunery.data.formats import parse
    spec = models.resolve(None)
    template = models.load_template(spec)
    examples = [parse(json.loads(line), i)[0] for i, line in enumerate(path.read_text().splitlines(), 1)]
    tokens = sum(len(r.input_ids) for r in template.render_batch(examples, MAX_LEN))
    model = models.load_model(spec)
    linear = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    head = model.lm_head.weight.numel()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = {str(dt).split(".")[1]: _peak_gflops(dt, 512, 576, 1536, device) for dt in (torch.float32, torch.bfloat16)}
    if device == "cuda":  # the bench's shape is far too small to fill a GPU: also the peak at a large square shape
        peaks["bfloat16_large"] = _peak_gflops(torch.bfloat16, 8192, 8192, 8192, device)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    return {"tokens": tokens, "flops_per_token": 4 * (linear + head), "peak_gflops": peaks, "device": name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each, alternating; medians are reported")
    ap.add_argument("--worker", nargs=3, metavar=("WHICH", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        which, path, out = args.worker
        run = {"tunery": run_ours, "trl": run_trl, "trl-tuned": lambda p, o: run_trl(p, o, tuned=True)}[which]
        seconds = run(Path(path), Path(out))
        print(json.dumps({"seconds": seconds}))
        return

    tmp = Path(tempfile.mkdtemp(prefix="tunery-train-bench-"))
    path = _subset(args.examples, tmp)
    info = facts(path)
    times: dict[str, list[float]] = {"trl": [], "trl-tuned": [], "tunery": []}
    from tunery.procenv import compute_env

    env = {False: dict(os.environ), True: compute_env()}  # tunery runs as `tune --local` does (jemalloc, passive waits)
    for r in range(args.repeat):
        for which in times:
            proc = subprocess.run([sys.executable, __file__, "--worker", which, str(path), str(tmp / f"{which}-{r}")],
                                  capture_output=True, text=True, env={**env[which == "tunery"], "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode != 0:
                sys.exit(f"{which} run failed:\n{proc.stderr[-3000:]}")
            times[which].append(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
    print(f"{args.examples} examples, {info['tokens']:,} tokens, batch {BATCH}, LoRA rank {RANK}, max length {MAX_LEN}, "
          f"1 epoch; cpus={os.cpu_count()}; device: {info['device']}; runs per side: {args.repeat}")
    rates = {}
    for which, label in (("trl", "TRL SFTTrainer, defaults (baseline)"), ("trl-tuned", "TRL SFTTrainer, tuned by hand"),
                         ("tunery", "tunery train()")):
        med = statistics.median(times[which])
        rates[which] = info["tokens"] / med
        gflops = info["flops_per_token"] * rates[which] / 1e9
        print(f"{label:36s} {rates[which]:7.0f} tokens/s  median {med:6.1f} s  runs {[round(t, 1) for t in times[which]]}  "
              f"{gflops:6.1f} GFLOP/s")
    peak = info["peak_gflops"]
    ours = info["flops_per_token"] * rates["tunery"] / 1e9
    print(f"speedup tunery / TRL: {rates['tunery'] / rates['trl']:.2f}x (goal >= 3x); "
          f"tunery / TRL tuned by hand: {rates['tunery'] / rates['trl-tuned']:.2f}x")
    print(f"tunery achieved {ours:.0f} GFLOP/s = {ours / peak['bfloat16']:.0%} of this device's measured bf16 matmul peak "
          f"({peak['bfloat16']:.0f} GFLOP/s; fp32 peak {peak['float32']:.0f})")
    if "bfloat16_large" in peak:
        print(f"MFU against the bf16 peak at 8192^3 ({peak['bfloat16_large']:.0f} GFLOP/s): "
              f"{ours / peak['bfloat16_large']:.1%}")


if __name__ == "__main__":
    main()
