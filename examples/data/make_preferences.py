"""Generate the bundled preference dataset (pairs for DPO) from the alert-summary dataset, deterministically.

Each pair is an alert (the prompt), its correct 7-field summary (preferred, score 1) and the same summary with one
fact wrong (dispreferred, score 0): the region, the severity, or the resource name replaced by one the alert does not
say. A model that reads the alert prefers the first; DPO teaches it to. Vertex's preference format:
    {"contents": [{"role": "user", ...}], "completions": [{"score": 1, "completion": ...}, {"score": 0, ...}]}

Writes, next to this script (from alerts_train.jsonl, alerts_val.jsonl and alerts_test.csv, which make_alerts.py
writes):
    prefs_train.jsonl  pairs from the training alerts
    prefs_val.jsonl    pairs from the validation alerts
    prefs_test.jsonl   pairs from the first --test test alerts (never tuned on)

Usage: python examples/data/make_preferences.py [--test 60] [--seed 11] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGIONS = ["us-central1", "us-east1", "us-west1", "europe-west1", "europe-west4", "asia-east1", "asia-northeast1"]
SEVERITIES = ["Low", "Medium", "High", "Critical"]


def corrupt(summary: str, rng: random.Random) -> str:
    """The summary with one fact replaced by a wrong one."""
    lines = summary.split("\n")
    kind = rng.choice(("region", "severity", "resource"))
    for i, line in enumerate(lines):
        key, _, value = line.partition(": ")
        if kind == "region" and key == "Region":
            lines[i] = f"{key}: {rng.choice([r for r in REGIONS if r != value])}"
        elif kind == "severity" and key == "Severity":
            lines[i] = f"{key}: {rng.choice([s for s in SEVERITIES if s != value])}"
        elif kind == "resource" and i == 2:  # the line after Service: Instance, Function, Bucket, ...
            lines[i] = f"{key}: " + re.sub(r"\d+$", lambda m: f"{int(m.group()) % 9 + 1:02d}", value)
            if lines[i] == line:  # no number to change
                lines[i] = f"{key}: {value}-old"
    out = "\n".join(lines)
    return out if out != summary else summary.replace("Severity: ", "Severity: Not ")


def pair(prompt: str, answer: str, rng: random.Random) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "completions": [{"score": 1, "completion": {"role": "model", "parts": [{"text": answer}]}},
                            {"score": 0, "completion": {"role": "model", "parts": [{"text": corrupt(answer, rng)}]}}]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for src, dst in (("alerts_train.jsonl", "prefs_train.jsonl"), ("alerts_val.jsonl", "prefs_val.jsonl")):
        rows = [json.loads(line)["messages"] for line in (HERE / src).read_text().splitlines() if line.strip()]
        (args.out / dst).write_text("".join(json.dumps(pair(m[0]["content"], m[1]["content"], rng)) + "\n" for m in rows))
    with open(HERE / "alerts_test.csv", encoding="utf-8", newline="") as f:
        test = list(csv.DictReader(f))[:args.test]
    (args.out / "prefs_test.jsonl").write_text("".join(json.dumps(pair(r["input_text"], r["output_text"], rng)) + "\n"
                                                   for r in test))
    print(f"wrote prefs_train.jsonl, prefs_val.jsonl, prefs_test.jsonl to {args.out}")


if __name__ == "__main__":
    main()
