"""Validator throughput and memory on a large generated dataset, against named baselines measured in the same run.

Schema validation (no tokenizer) vs
  baseline "json.loads loop": parse every line with the stdlib and do nothing else (the floor any validator pays);
  baseline "seed loader": the seed notebook's create_tuning_samples (loads every example into a list), for memory.
Token counting (real SmolLM2 tokenizer, our batched template) vs
  baseline "apply_chat_template loop": Hugging Face's chat template, one example at a time (what a user would write).
Each measurement runs in a fresh process so its peak RSS is its own. Goals: >= 50 MB/s schema validation, peak RSS
<= 300 MB and flat as the file grows.

Usage: python bench/validate_bench.py [--size-mb 1024] [--token-examples 20000] [--repeat 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("alert cluster node region latency error budget service request deploy rollback metric quota bucket "
         "storage network policy cache database replica shard index query throughput window retry").split()


def generate(path: Path, size_mb: int, seed: int = 0) -> int:
    """Write ~size_mb of realistic contents-format lines (~1 KB each); returns the example count."""
    rng = random.Random(seed)
    target, written, n = size_mb * 1_000_000, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(90, 150)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(20, 50)))
            obj = {"systemInstruction": {"parts": [{"text": "You summarise incidents."}]},
                   "contents": [{"role": "user", "parts": [{"text": f"Summarize #{n}: {prompt}"}]},
                                {"role": "model", "parts": [{"text": answer}]}]}
            line = json.dumps(obj) + "\n"
            f.write(line)
            written += len(line)
            n += 1
    return n


def worker(mode: str, path: str, limit: int) -> dict:
    """One measurement in this process: seconds, items, and peak RSS."""
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    if mode == "json_loop":
        items = 0
        with open(path, "rb") as f:
            for raw in f:
                json.loads(raw)
                items += 1
    elif mode == "seed_loader":
        instances = []
        with open(path, encoding="utf-8") as f:
            for raw in f:
                obj = json.loads(raw)
                instances.append({"contents": obj["contents"]})
        items = len(instances)
    elif mode == "schema":
        from tunery.data.validate import validate

        t0 = time.perf_counter()
        report = validate(path)
        assert report.valid or report.files[0].errors == report.files[0].counts.get("too_many_examples", 0) + \
            report.files[0].counts.get("file_too_large", 0), report.files[0].counts
        items = report.files[0].records
    elif mode in ("tokens", "hf_tokens"):
        from tunery import models
        from tunery.data.formats import parse

        spec = models.resolve(None)
        examples = []
        with open(path, "rb") as f:
            for raw in f:
                examples.append(parse(json.loads(raw))[0])
                if len(examples) >= limit:
                    break
        t0 = time.perf_counter()
        if mode == "tokens":
            template = models.load_template(spec)
            t0 = time.perf_counter()
            items = sum(m.total for i in range(0, len(examples), 512)
                        for m in template.measure_batch(examples[i:i + 512]))
        else:
            tok = models.load_tokenizer(spec)
            t0 = time.perf_counter()
            items = 0
            for ex in examples:
                msgs = [{"role": "system", "content": ex.system}] + [
                    {"role": "assistant" if t.role == "model" else "user", "content": t.text} for t in ex.turns]
                items += len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
        size = 0
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    return {"mode": mode, "seconds": seconds, "items": items, "bytes": size,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(mode: str, path: Path, repeat: int, limit: int = 0) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--worker", mode, str(path), "--token-examples", str(limit)],
                             capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
    best["seconds_all"] = [round(r["seconds"], 2) for r in runs]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the generated file (default ~1 GB, ~1M examples)")
    ap.add_argument("--token-examples", type=int, default=20000, help="examples used for the token-counting comparison")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.token_examples)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    big, small = tmp / "big.jsonl", tmp / "small.jsonl"
    t = time.perf_counter()
    n_big = generate(big, args.size_mb)
    n_small = generate(small, max(1, args.size_mb // 8), seed=1)
    print(f"generated {big.stat().st_size / 1e6:,.0f} MB ({n_big:,} examples) and "
          f"{small.stat().st_size / 1e6:,.0f} MB ({n_small:,}) in {time.perf_counter() - t:.0f} s; cpus={os.cpu_count()}")

    rows = []
    for label, mode, path in (("json.loads loop (baseline)", "json_loop", big), ("seed loader (baseline)", "seed_loader", big),
                              ("tunery schema validation", "schema", big),
                              (f"tunery schema validation, 1/8 size", "schema", small)):
        r = measure(mode, path, args.repeat)
        rows.append((label, r))
        print(f"{label:38s} {r['bytes'] / 1e6 / r['seconds']:8.1f} MB/s {r['items'] / r['seconds']:10,.0f} examples/s "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB   runs {r['seconds_all']} s")
    base, ours, ours_small = rows[0][1], rows[2][1], rows[3][1]
    ratio = (ours["bytes"] / ours["seconds"]) / (base["bytes"] / base["seconds"])
    print(f"schema validation speed / json.loads loop: {ratio:.2f}x   "
          f"peak RSS full / 1/8 size: {ours['peak_rss_mb']:.0f} / {ours_small['peak_rss_mb']:.0f} MB   "
          f"seed loader / tunery RSS: {rows[1][1]['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x")

    hf = measure("hf_tokens", big, args.repeat, args.token_examples)
    tk = measure("tokens", big, args.repeat, args.token_examples)
    for label, r in (("apply_chat_template loop (baseline)", hf), ("tunery batched template", tk)):
        print(f"{label:38s} {r['items'] / r['seconds']:12,.0f} tokens/s over {args.token_examples:,} examples   runs {r['seconds_all']} s")
    print(f"token counting speed / apply_chat_template loop: {(tk['items'] / tk['seconds']) / (hf['items'] / hf['seconds']):.1f}x"
          f"   (same token total: {tk['items'] == hf['items']})")
    if not args.keep:
        for p in (big, small):
            p.unlink()
        tmp.rmdir()
    else:
        print(f"files kept in {tmp}")


if __name__ == "__main__":
    main()
