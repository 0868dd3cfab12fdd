"""Do the llama.cpp and torch engines give the same answers? Greedy answers of a tuned adapter (and of the base
model) on held-back prompts, from each engine, in this run.

Baseline: the torch engine (transformers + PEFT, float32: the weights and adapter exactly as trained). Compared:
the llama.cpp engine on the f16 GGUF it serves by default, and on the f32 GGUF. Reported: how many answers match
exactly, the ROUGE-L F between the two sets, the ROUGE-L F of each against the references (the before/after
report's figure), and the time each engine took.

Usage: python bench/engine_parity.py RUN_DIR [--data examples/data/alerts_test.csv] [--n 40] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished tuning run (its adapter/ is compared)")
    ap.add_argument("--data", default="examples/data/alerts_test.csv")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()

    from rouge_score import rouge_scorer

    from tunery import models
    from tunery.device import Runtime
    from tunery.eval.run import load_items
    from tunery.serve.generate import GenerationConfig
    from tunery.serve.registry import Registry

    adapter = str(args.run / "adapter")
    spec = models.resolve(json.loads((args.run / "adapter" / "manifest.json").read_text())["base_model"]["name"])
    examples = load_items(args.data, limit=args.n)
    prompts, refs = [e.prompt for e in examples], [e.reference for e in examples]
    config = GenerationConfig(max_output_tokens=args.tokens)
    rouge = rouge_scorer.RougeScorer(["rougeL"])

    def score(a: list[str], b: list[str]) -> float:
        return statistics.mean(rouge.score(x, y)["rougeL"].fmeasure for x, y in zip(a, b))

    results: dict[tuple[str, str | None], tuple[list[str], float]] = {}
    for engine, dtype in (("torch", None), ("llamacpp", "f16"), ("llamacpp", "f32")):
        os.environ["TUNERY_GGUF_DTYPE"] = dtype or "f16"
        registry = Registry(runtime=Runtime("cpu", None), engine=engine)
        for target in (None, adapter):
            registry.generate(spec, target, prompts[:1], GenerationConfig(max_output_tokens=1))  # load, convert
            t = time.perf_counter()
            texts = [g.text for i in range(0, len(prompts), 8)
                     for g in registry.generate(spec, target, prompts[i:i + 8], config)]
            results[(f"{engine}{'-' + dtype if dtype else ''}", target)] = (texts, time.perf_counter() - t)

    print(f"model {spec.name}, adapter {adapter}, {len(prompts)} held-back prompts of {args.data}, "
          f"greedy, up to {args.tokens} tokens, batches of 8")
    print(f"{'engine':14s} {'weights':8s} {'exact = torch':>14s} {'ROUGE-L vs torch':>17s} {'ROUGE-L vs refs':>16s} {'seconds':>8s}")
    for (name, target), (texts, secs) in results.items():
        ref_texts = results[("torch", target)][0]
        same = sum(a == b for a, b in zip(texts, ref_texts))
        print(f"{name:14s} {'tuned' if target else 'base':8s} {same:>8d} of {len(texts):<3d} {score(texts, ref_texts):17.4f} "
              f"{score(texts, refs):16.4f} {secs:8.1f}")


if __name__ == "__main__":
    main()
