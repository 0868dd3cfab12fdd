"""Training attention, forward plus backward, by sequence length: tunery's matmul form against PyTorch's fused CPU
kernel (baseline), at SmolLM2-135M's shape (batch 8, 9 query heads sharing 3 key/value heads, head dim 64), bf16
autocast, in a training process's environment (tunery/procenv.py). The crossover sets attention.MATMUL_MAX_LENGTH.

Usage: python bench/attention_bench.py [--lengths 64 128 160 192 256 384 512] [--repeat 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tunery.procenv import compute_env, has_compute_env  # noqa: E402


def _best_ms(fn, length: int, repeat: int) -> float:
    import torch

    torch.manual_seed(0)
    q = torch.randn(8, 9, length, 64, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(8, 3, length, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn(8, 9, length, 64, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(3):
            torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
        best = min(best, (time.perf_counter() - start) / 3)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 144, 160, 176, 192, 256, 384, 512])
    ap.add_argument("--repeat", type=int, default=6, help="timed rounds of 3 calls each; the best round is reported")
    args = ap.parse_args()
    if not has_compute_env():  # the allocator a training process gets (it changes these timings)
        os.execve(sys.executable, [sys.executable, *sys.argv], compute_env())
    import torch
    import torch.nn.functional as F

    from tunery.train import attention

    def fused(q, k, v):  # what attention.causal_attention runs above MATMUL_MAX_LENGTH
        return F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                              is_causal=True, scale=0.125)

    def ours(q, k, v):
        return attention._MatmulAttention.apply(q, k, v, 0.125, None, None)

    print(f"forward + backward, bf16 autocast, batch 8, 9 heads (3 kv), head dim 64; threads={torch.get_num_threads()}; "
          f"best of {args.repeat}; MATMUL_MAX_LENGTH={attention.MATMUL_MAX_LENGTH}")
    print(f"{'tokens':>6} {'fused SDPA (baseline)':>22} {'matmul form':>12} {'fused / matmul':>15}")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for length in args.lengths:
            a, b = _best_ms(fused, length, args.repeat), _best_ms(ours, length, args.repeat)
            print(f"{length:6d} {a:19.1f} ms {b:9.1f} ms {a / b:14.2f}x", flush=True)


if __name__ == "__main__":
    main()
