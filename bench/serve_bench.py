"""Serving: generateContent latency overhead against calling the model directly, and throughput with 8 concurrent
clients against 1, on the real default model.

Baseline "direct": `tunery.serve.generate.generate()` in this process on the same prompt and config, alternating
with the HTTP calls. The server
runs as a separate `tunery serve` process on loopback, and clients use plain HTTP with greedy decoding and a
fixed output budget.

Usage: python bench/serve_bench.py [--requests 16] [--max-output-tokens 32] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PROMPT = "Summarize this alert: Cloud SQL instance 'orders-db' CPU utilization exceeded 90% for 15 minutes in us-central1."


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    from tunery import models
    from tunery.data.schema import Turn
    from tunery.device import pick
    from tunery.serve.generate import GenerationConfig, Prompt, generate

    spec = models.resolve(None)
    model, template, runtime = models.load_model_fresh(spec).eval(), models.load_template(spec), pick()
    config = GenerationConfig(max_output_tokens=args.max_output_tokens)
    prompt = Prompt((Turn("user", PROMPT),))
    generate(model, template, [prompt], config, runtime)  # warm up

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="tunery-serve-bench-"))
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "-q", "serve", "--port", str(port), "--home", str(home)],
                              env={**os.environ, "TUNERY_HOME": str(home)}, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.0-flash-001:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
            "generationConfig": {"maxOutputTokens": args.max_output_tokens, "temperature": 0}}
    try:
        for _ in range(600):
            try:
                _post(url, body)  # also loads the model in the server
                break
            except OSError:
                time.sleep(0.5)
        direct, served = [], []
        for _ in range(5):  # alternating, so machine noise hits both alike
            t = time.perf_counter()
            generate(model, template, [prompt], config, runtime)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            _post(url, body)
            served.append(time.perf_counter() - t)
        del model

        t = time.perf_counter()
        for _ in range(args.requests):
            _post(url, body)
        one = args.requests / (time.perf_counter() - t)

        per_client = max(1, args.requests // args.clients)
        threads = [threading.Thread(target=lambda: [_post(url, body) for _ in range(per_client)]) for _ in range(args.clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        many = per_client * args.clients / (time.perf_counter() - t)
    finally:
        server.terminate()
        server.wait(timeout=30)

    d, s = statistics.median(direct), statistics.median(served)
    print(f"model {spec.name}, {args.max_output_tokens} output tokens, greedy; cpus={os.cpu_count()}")
    print(f"latency direct generate() (baseline)  median {d * 1000:7.0f} ms  runs {[round(x * 1000) for x in direct]}")
    print(f"latency via generateContent HTTP      median {s * 1000:7.0f} ms  runs {[round(x * 1000) for x in served]}")
    print(f"server overhead: {(s - d) * 1000:+.0f} ms ({s / d:.2f}x direct)")
    print(f"throughput 1 client: {one:.2f} req/s;  {args.clients} concurrent clients: {many:.2f} req/s;  ratio {many / one:.2f}x")


if __name__ == "__main__":
    main()
