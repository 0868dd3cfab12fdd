"""Serving speed on the real default model, one prompt, greedy, the same output length everywhere:
single-stream decode tokens/s, time to first token, and the aggregate tokens/s of concurrent clients.

Rows, each measured in this run:
- llama.cpp called directly (the anchor): llama-cpp-python on the same GGUF file tunery's llama.cpp engine serves
  (the base model dequantized to f16), the same prompt token ids, its own greedy loop, in this process;
- transformers `generate()`: what a Python user writes, on the float32 weights tunery trains on;
- tunery over HTTP with each engine (`tunery serve --engine E`, a separate process on loopback):
  streamGenerateContent for time to first token and decode rate, generateContent for throughput, 1 client and
  `--clients` clients at once.
Time to first token: from sending the prompt to the first generated token; decode: tokens after the first, per
second after it. The server runs one engine at a time, and nothing else runs beside the rows.

Usage: python bench/serve_bench.py [--tokens 64] [--runs 5] [--clients 8] [--engines llamacpp,torch]
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

PROMPT = "Write a long story about a dragon who learns to cook."
BASE = "http://127.0.0.1:{port}/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.0-flash-001"


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _stream(url: str, body: dict) -> tuple[float, float, int]:
    """(time to first token, decode tokens/s after it, tokens) of one streamGenerateContent call (SSE)."""
    req = urllib.request.Request(url + ":streamGenerateContent?alt=sse", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if not line.startswith(b"data: "):
                continue
            chunk = json.loads(line[6:])
            if first is None:
                first = time.perf_counter()
            usage = chunk.get("usageMetadata", {})
            tokens = int(usage.get("candidatesTokenCount", tokens))
    end = time.perf_counter()
    return first - t0, (tokens - 1) / (end - first), tokens


def _row(name: str, ttft: list[float], rate: list[float], tokens: int, one: float | None = None,
         many: float | None = None, clients: int = 0) -> dict:
    row = {"name": name, "ttft_ms": statistics.median(ttft) * 1000, "decode": statistics.median(rate), "tokens": tokens}
    if one is not None:
        row |= {"one": one, "many": many, "clients": clients}
    return row


def direct_llamacpp(gguf_path: Path, ids: list[int], end_id: int, tokens: int, runs: int, threads: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=1024, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    ttft, rate = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        llm.reset()
        t0 = time.perf_counter()
        n, first = 0, None
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            n += 1
            if first is None:
                first = time.perf_counter()
            if tok == end_id or n == tokens:
                break
        end = time.perf_counter()
        ttft.append(first - t0)
        rate.append((n - 1) / (end - first))
    llm.close()
    return _row("llama.cpp direct, same GGUF (anchor)", ttft[1:], rate[1:], n)


def direct_transformers(spec, ids: list[int], tokens: int, runs: int) -> dict:
    import torch
    from transformers import TextIteratorStreamer  # noqa: F401  (what a user would stream with)

    from tunery import models

    model = models.load_model_fresh(spec).eval()
    x = torch.tensor([ids])
    ttft, rate = [], []
    for _ in range(runs + 1):
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=1, do_sample=False)
            first = time.perf_counter()
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False)
            end = time.perf_counter()
        n = out.shape[1] - x.shape[1]
        ttft.append(first - t0)
        rate.append((n - 1) / (end - first - (first - t0)))  # the full run less one prompt pass
    return _row("transformers generate()", ttft[1:], rate[1:], n)


def served(engine: str, tokens: int, runs: int, clients: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="tunery-serve-bench-"))
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "-q", "serve", "--port", str(port), "--home", str(home),
                               "--engine", engine], env={**os.environ, "TUNERY_HOME": str(home)}, stderr=subprocess.DEVNULL)
    url = BASE.format(port=port)
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
            "generationConfig": {"maxOutputTokens": tokens, "temperature": 0}}
    try:
        for _ in range(1200):
            try:
                _post(url + ":generateContent", body)  # also loads the model in the server
                break
            except OSError:
                time.sleep(0.5)
        ttft, rate = [], []
        for _ in range(runs):
            a, b, n = _stream(url, body)
            ttft.append(a)
            rate.append(b)
        t = time.perf_counter()
        got = sum(int(_post(url + ":generateContent", body)["usageMetadata"]["candidatesTokenCount"]) for _ in range(runs))
        one = got / (time.perf_counter() - t)
        counts: list[int] = []

        def client() -> None:
            for _ in range(max(2, runs // 2)):
                counts.append(int(_post(url + ":generateContent", body)["usageMetadata"]["candidatesTokenCount"]))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        many = sum(counts) / (time.perf_counter() - t)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return _row(f"tunery HTTP, --engine {engine}", ttft, rate, n, one, many, clients)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--engines", default="llamacpp,torch")
    args = ap.parse_args()

    from tunery import models
    from tunery.data.schema import Turn
    from tunery.serve import gguf

    spec = models.resolve(None)
    template = models.load_template(spec)
    ids = template.render_prompt((Turn("user", PROMPT),), None)
    threads = len(os.sched_getaffinity(0))
    rows = [direct_llamacpp(gguf.base_gguf(spec, "f16"), ids, template.end_id, args.tokens, args.runs, threads),
            direct_transformers(spec, ids, args.tokens, args.runs)]
    rows += [served(e, args.tokens, args.runs, args.clients) for e in args.engines.split(",")]

    anchor = rows[0]
    print(f"model {spec.name}, prompt {len(ids)} tokens, {args.tokens} output tokens, greedy; {threads} threads")
    print(f"{'':40s} {'decode tok/s':>12s} {'x anchor':>9s} {'TTFT ms':>8s} {'x anchor':>9s} {'1 client':>9s} "
          f"{'N clients':>10s} {'ratio':>6s}")
    for r in rows:
        line = (f"{r['name']:40s} {r['decode']:12.1f} {r['decode'] / anchor['decode']:9.2f} {r['ttft_ms']:8.1f} "
                f"{r['ttft_ms'] / anchor['ttft_ms']:9.2f}")
        if "one" in r:
            line += f" {r['one']:9.1f} {r['many']:10.1f} {r['many'] / r['one']:5.2f}x  ({r['clients']} clients, tok/s)"
        print(line)


if __name__ == "__main__":
    main()
