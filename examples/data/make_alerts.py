"""Generate the bundled "alert summary" dataset (the seed blog's format-learning task), deterministically.

The model must turn a one-line cloud alert into a fixed 7-field block:
    ALERT SUMMARY / Service / <Resource kind> / Region / Issue / Severity / Action

Writes, next to this script:
    alerts_train.jsonl  legacy Vertex "messages" format (roles user/model), as the blog prepares it
    alerts_val.jsonl    same format, for validation during tuning
    alerts_test.csv     input_text,output_text, as the seed notebook's test CSV

Usage: python examples/data/make_alerts.py [--train 240] [--val 40] [--test 40] [--seed 7]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

REGIONS = ["us-central1", "us-east1", "us-west1", "europe-west1", "europe-west4", "asia-east1", "asia-northeast1"]
ZONES = [r + z for r in REGIONS for z in ("-a", "-b", "-c")]
WORDS = ["prod", "staging", "orders", "payments", "users", "search", "billing", "auth", "cache", "media", "events",
         "reports", "catalog", "checkout", "inventory", "ledger"]


def _name(rng: random.Random, suffix: str) -> str:
    return f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{suffix}{rng.randint(1, 9):02d}"


def _level(value: float, high: float, critical: float) -> str:
    return "Critical" if value >= critical else "High" if value >= high else "Medium"


def _alert(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """One alert sentence and its summary fields."""
    kind = rng.randrange(8)
    region = rng.choice(REGIONS)
    if kind == 0:
        name, pct, mins = _name(rng, "db"), rng.choice([80, 85, 90, 95]), rng.choice([5, 10, 15, 30])
        return (f"Cloud SQL instance '{name}' CPU utilization exceeded {pct}% for {mins} minutes in {region}.",
                [("Service", "Cloud SQL"), ("Instance", name), ("Region", region), ("Issue", f"CPU > {pct}% for {mins} min"),
                 ("Severity", _level(pct, 85, 95)), ("Action", "Investigate query load; consider scaling up the machine type.")])
    if kind == 1:
        cluster, zone, n = _name(rng, "gke"), rng.choice(ZONES), rng.randint(1, 6)
        return (f"GKE cluster '{cluster}' node pool 'default-pool' has {n} nodes in NotReady state in {zone}.",
                [("Service", "GKE"), ("Cluster", cluster), ("Region", zone), ("Issue", f"{n} nodes in NotReady state"),
                 ("Severity", _level(n, 2, 3)), ("Action", "Check node health and kubelet status; review node events.")])
    if kind == 2:
        bucket, gb = _name(rng, "bkt"), rng.choice([100, 250, 500, 1000])
        return (f"Cloud Storage bucket '{bucket}' egress exceeded {gb} GB in the last hour from {region}.",
                [("Service", "Cloud Storage"), ("Bucket", bucket), ("Region", region), ("Issue", f"Egress > {gb} GB/hour"),
                 ("Severity", _level(gb, 500, 1000)), ("Action", "Review access logs for unusual download patterns.")])
    if kind == 3:
        sub, k, mins = _name(rng, "sub"), rng.choice([5000, 20000, 50000, 100000]), rng.choice([10, 20, 30, 60])
        return (f'Pub/Sub subscription "{sub}" has {k:,} unacked messages, backlog growing for {mins} minutes in {region}.',
                [("Service", "Pub/Sub"), ("Subscription", sub), ("Region", region),
                 ("Issue", f"{k:,} unacked messages for {mins} min"), ("Severity", _level(k, 20000, 100000)),
                 ("Action", "Scale up subscribers; check for failing message handlers.")])
    if kind == 4:
        inst, pct = _name(rng, "redis"), rng.choice([85, 90, 95, 99])
        return (f'Memorystore Redis instance "{inst}" memory usage at {pct}% in {region}.',
                [("Service", "Memorystore"), ("Instance", inst), ("Region", region), ("Issue", f"Memory at {pct}%"),
                 ("Severity", _level(pct, 90, 95)), ("Action", "Review eviction policy; consider a larger tier.")])
    if kind == 5:
        fn, pct, mins = _name(rng, "fn"), rng.choice([5, 10, 25, 50]), rng.choice([5, 10, 15])
        return (f'Cloud Function "{fn}" error rate spiked to {pct}% in the last {mins} minutes in {region}.',
                [("Service", "Cloud Functions"), ("Function", fn), ("Region", region),
                 ("Issue", f"Error rate {pct}% for {mins} min"), ("Severity", _level(pct, 10, 25)),
                 ("Action", "Check recent deployments and function logs; roll back if needed.")])
    if kind == 6:
        svc, ms, mins = _name(rng, "run"), rng.choice([500, 1000, 2000, 5000]), rng.choice([5, 10, 30])
        return (f"Cloud Run service '{svc}' p99 latency above {ms} ms for {mins} minutes in {region}.",
                [("Service", "Cloud Run"), ("Service name", svc), ("Region", region),
                 ("Issue", f"p99 latency > {ms} ms for {mins} min"), ("Severity", _level(ms, 1000, 5000)),
                 ("Action", "Check downstream dependencies; raise max instances if CPU-bound.")])
    lb, mins = _name(rng, "lb"), rng.choice([2, 5, 10, 20])
    return (f"Load balancer '{lb}' backend service health check failures for {mins} minutes in {region}.",
            [("Service", "Load Balancer"), ("Resource", lb), ("Region", region),
             ("Issue", f"Backend health check failures for {mins} min"), ("Severity", _level(mins, 5, 10)),
             ("Action", "Verify the health check endpoint; review recent deployments.")])


def make(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """n distinct (prompt, summary) pairs."""
    seen: set[str] = set()
    pairs = []
    while len(pairs) < n:
        alert, fields = _alert(rng)
        if alert in seen:
            continue
        seen.add(alert)
        summary = "ALERT SUMMARY\n" + "\n".join(f"{k}: {v}" for k, v in fields)
        pairs.append((f"Summarize this alert: {alert}", summary))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--val", type=int, default=40)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    pairs = make(args.train + args.val + args.test, random.Random(args.seed))
    train, val, test = pairs[:args.train], pairs[args.train:args.train + args.val], pairs[args.train + args.val:]
    for name, rows in (("alerts_train.jsonl", train), ("alerts_val.jsonl", val)):
        with open(args.out / name, "w", encoding="utf-8") as f:
            for prompt, answer in rows:
                msgs = [{"role": "user", "content": prompt}, {"role": "model", "content": answer}]
                f.write(json.dumps({"messages": msgs}) + "\n")
    with open(args.out / "alerts_test.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["input_text", "output_text"])
        w.writerows(test)
    print(f"wrote {len(train)} train, {len(val)} validation, {len(test)} test examples to {args.out}")


if __name__ == "__main__":
    main()
