"""Generate the bundled extractive Q&A sample (the seed Q&A notebook's SQuAD CSV layout), deterministically.

Every answer is a span of its context. Writes squad_train.csv, squad_validation.csv and squad_test.csv next to
this script with columns id,title,context,question,answers.
Usage: python examples/data/make_qa.py [--train 120] [--val 20] [--test 30] [--seed 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

TOWNS = ["Arden", "Belmoor", "Corrin", "Dunvale", "Eastmere", "Fallow", "Greystone", "Harrow", "Ivel", "Juniper",
         "Kestrel", "Lowick", "Marden", "Northam", "Oakridge", "Pellin"]
RIVERS = ["Tamsin", "Orwell", "Calder", "Ribble", "Wensum", "Lune", "Dove", "Frome"]
TRADES = ["wool", "salt", "glass", "paper", "copper", "timber", "cider", "silk"]
FOUNDERS = ["Ada Thorne", "Bram Ellis", "Cora Vance", "Dale Moreno", "Edie Clarke", "Finn Osei", "Gwen Haldane"]


def make(n: int, rng: random.Random) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        town, river, trade, founder = rng.choice(TOWNS), rng.choice(RIVERS), rng.choice(TRADES), rng.choice(FOUNDERS)
        year, people = rng.randint(1100, 1850), rng.randint(2, 90) * 1000
        context = (f"{town} is a market town on the River {river}. It was founded in {year} by {founder}, and grew rich "
                   f"on the {trade} trade. Today about {people:,} people live there.")
        q, a = rng.choice([("Who founded {t}?", founder), ("On which river is {t}?", f"River {river}"),
                           ("When was {t} founded?", str(year)), ("What trade made {t} rich?", trade),
                           ("How many people live in {t}?", f"about {people:,}")])
        key = (context, q)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"id": f"q{len(rows):04d}", "title": town, "context": context, "question": q.format(t=town), "answers": a})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("train", 120), ("val", 20), ("test", 30), ("seed", 3)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    rows = make(args.train + args.val + args.test, random.Random(args.seed))
    splits = {"squad_train.csv": rows[:args.train], "squad_validation.csv": rows[args.train:args.train + args.val],
              "squad_test.csv": rows[args.train + args.val:]}
    for name, part in splits.items():
        with open(args.out / name, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "title", "context", "question", "answers"])
            w.writeheader()
            w.writerows(part)
    print(f"wrote {', '.join(f'{len(v)} {k}' for k, v in splits.items())}")


if __name__ == "__main__":
    main()
