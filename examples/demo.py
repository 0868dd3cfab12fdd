"""`make demo`: the main job on the bundled alert-summary sample, through the real `tunery` CLI.

validate -> catch errors -> convert -> stats -> inspect -> tune (LoRA, on this CPU) -> base vs tuned answers.
Serving and evaluation join as they land. Each step prints the command it runs, so you can copy it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
OUT = REPO / "out" / "demo"


def tunery(*args: str, check: bool = True) -> int:
    print(f"\n$ tunery {' '.join(shlex.quote(a) for a in args)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "tunery.cli", *args], cwd=REPO)
    if check and code != 0:
        sys.exit(f"demo step failed with exit code {code}")
    return code


def broken_copy(src: Path, dst: Path) -> None:
    """The sample with three typical mistakes, to show what validation catches before any compute is spent."""
    lines = src.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[4])
    first["messages"][1]["role"] = "assistant "  # a stray space in the role
    second = json.loads(lines[9])
    second["messages"][1]["content"] = "  "  # an empty answer
    lines[4], lines[9] = json.dumps(first), json.dumps(second)
    lines[14] = lines[14][: len(lines[14]) // 2]  # a line cut in half
    lines.append(lines[20])  # a duplicate
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    print("== 1. Validate the sample (the blog's alert-summary task, legacy `messages` format)")
    tunery("validate", str(DATA / "alerts_train.jsonl"), "--validation", str(DATA / "alerts_val.jsonl"))

    print("\n== 2. What validation catches: a copy with a bad role, an empty answer, a cut line and a duplicate")
    broken = OUT / "alerts_train_broken.jsonl"
    broken_copy(DATA / "alerts_train.jsonl", broken)
    code = tunery("validate", str(broken), check=False)
    print(f"(exit status {code}: errors found, nothing would be trained)")

    print("\n== 3. Convert to the Gemini `contents` format (the seed notebook's conversion step)")
    for name in ("alerts_train", "alerts_val"):
        tunery("convert", str(DATA / f"{name}.jsonl"), str(OUT / f"{name}.contents.jsonl"), "--to", "contents")
    tunery("convert", str(DATA / "alerts_test.csv"), str(OUT / "alerts_test.contents.jsonl"), "--to", "contents")

    print("\n== 4. Vertex-style dataset statistics for 3 epochs (tokens from the base model's tokenizer)")
    tunery("stats", str(OUT / "alerts_train.contents.jsonl"), "--epochs", "3", "--batch-size", "8",
           "--base-model", "gemini-2.0-flash-001")

    print("\n== 5. How one example is rendered for training (highlighted tokens carry the loss)")
    tunery("inspect", str(OUT / "alerts_train.contents.jsonl"), "--line", "1")

    print("\n== 6. Tune SmolLM2-135M with LoRA on 120 examples for 2 epochs (a few minutes on 2 CPU cores)")
    subset = OUT / "alerts_train.120.jsonl"
    subset.write_text("".join((OUT / "alerts_train.contents.jsonl").read_text().splitlines(keepends=True)[:120]))
    run = OUT / "run"
    tunery("tune", "--local", "--train", str(subset), "--validation", str(OUT / "alerts_val.contents.jsonl"),
           "--base-model", "gemini-2.0-flash-001", "--epochs", "2", "--output", str(run))

    print("\n== 7. Base vs tuned on held-out alerts")
    compare(run / "adapter", DATA / "alerts_test.csv")
    print(f"\nDone. Files are in {OUT.relative_to(REPO)}/ (the tuned adapter: {(run / 'adapter').relative_to(REPO)})")


def compare(adapter: Path, test_csv: Path, n: int = 10) -> None:
    """Greedy answers of the base and the tuned model on the same held-out prompts, and how many follow the format."""
    import csv

    from peft import PeftModel

    from tunery import models
    from tunery.data.schema import Turn
    from tunery.device import pick
    from tunery.eval.metrics import format_match
    from tunery.serve.generate import GenerationConfig, Prompt, generate

    rows = list(csv.DictReader(open(test_csv, encoding="utf-8")))[:n]
    prompts = [Prompt((Turn("user", r["input_text"]),)) for r in rows]
    refs = [r["output_text"] for r in rows]
    spec = models.resolve(None)
    template, runtime, config = models.load_template(spec), pick(), GenerationConfig(max_output_tokens=90)
    base = models.load_model_fresh(spec).eval()
    before = [g.text for g in generate(base, template, prompts, config, runtime)]
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    after = [g.text for g in generate(tuned, template, prompts, config, runtime)]
    for i in range(2):
        print(f"\n-- {rows[i]['input_text']}\n[base]\n{before[i]}\n[tuned]\n{after[i]}\n[reference]\n{refs[i]}")
    print(f"\nformat_match on {n} held-out alerts (same line structure as the reference): "
          f"base {format_match(before, refs):.0%}, tuned {format_match(after, refs):.0%}")


if __name__ == "__main__":
    main()
