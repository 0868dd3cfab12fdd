"""Evaluation generation: the seed notebook's sequential loop against tunery's batched path, same model, same outputs.

Baseline: one generate call per example, in dataset order, as the seed's `run_evaluation` calls
`generate_content` once per example (here `tunery.serve.generate.generate` with a one-prompt batch, so both sides
share the model, decoding loop and precision). Ours: `tunery.eval.run.Generator`, which sorts prompts by length,
batches them (`--batch-size`) and drops each row from its batch when it ends.
Both decode greedily in float32 on the real default model over the bundled alert-summary test prompts; the script
checks the two produce the same texts and prints the ratio of wall times. The prompts are the first N of the
bundled alert-summary training file (the test CSV has only 40); only speed and equality are measured here.

Usage: python bench/eval_bench.py [--examples 100] [--max-output-tokens 64] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "alerts_train.jsonl"  # 240 prompts; the test CSV has only 40


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--max-output-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from tunery import models
    from tunery.eval import run as er
    from tunery.serve.generate import GenerationConfig, generate

    items = er.load_items(DATA, args.examples)
    prompts = [i.prompt for i in items]
    spec = models.resolve(None)
    gen = er.Generator()
    target = er.Target(spec.name, spec)
    base = gen.registry.base(spec)  # load once, outside both timings
    config = GenerationConfig(max_output_tokens=args.max_output_tokens)
    gen.registry.call(generate, base.model, base.template, prompts[:2], config, gen.registry.runtime)  # warm-up

    t = time.perf_counter()  # on the registry's compute thread too: one OpenMP team in the process, as in serving
    sequential = gen.registry.call(lambda: [generate(base.model, base.template, [p], config, gen.registry.runtime)[0]
                                            for p in prompts])
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    batched = gen.generate(target, prompts, config, args.batch_size)
    t_batch = time.perf_counter() - t

    same = sum(a.text == b.text for a, b in zip(sequential, batched))
    tokens = sum(g.output_tokens for g in batched)
    print(f"model {spec.name}, {len(prompts)} examples, greedy, max {args.max_output_tokens} output tokens, float32; "
          f"cpus={os.cpu_count()}; {tokens:,} output tokens")
    print(f"sequential loop, 1 generate per example (baseline)  {t_seq:7.1f} s  {tokens / t_seq:6.1f} tokens/s")
    print(f"tunery batched (batch size {args.batch_size:3d})                   {t_batch:7.1f} s  "
          f"{tokens / t_batch:6.1f} tokens/s")
    print(f"speedup batched / sequential: {t_seq / t_batch:.2f}x   identical outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
