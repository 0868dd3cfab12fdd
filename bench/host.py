"""One line that says how fast this host is, to print beside any timing: hosts of this class differ by 2-3x.

    .venv/bin/python bench/host.py
    host: AMD EPYC, 2 cores, avx2, no bf16 instructions; fp32 matmul 161 GFLOP/s; tunery trains in float32 here

The matmul is training's shape (a 512 x 576 by 576 x 1536 product, SmolLM2-135M's MLP at a batch of 512 tokens), on
every core of this process's affinity mask, the median of 5 rounds; bf16 is measured only where the CPU has bf16
instructions (AVX512-BF16 or AMX-BF16): elsewhere it is emulated and about 100x slower.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def describe() -> str:
    """The host line: CPU, cores, vector extensions, and the measured matmul rate of each precision it trains in."""
    import torch

    from tunery import device, threads

    n, k, m = 512, 576, 1536
    torch.set_num_threads(threads.cores())
    flags = device.cpu_flags() or set()
    vector = "amx" if "amx_bf16" in flags else "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "?"
    native = device.has_bf16_matmul(device.cpu_flags())
    rates = [f"fp32 matmul {2 * n * k * m * 20 / device._matmul_seconds(torch.float32, n, k, m) / 1e9:.0f} GFLOP/s"]
    if native is not False:
        rates.append(f"bf16 {2 * n * k * m * 20 / device._matmul_seconds(torch.bfloat16, n, k, m) / 1e9:.0f} GFLOP/s")
    chosen = device.pick().autocast or "float32"
    bf16 = "bf16 instructions" if native else "no bf16 instructions" if native is False else "bf16 unknown"
    return (f"host: {cpu_model()}, {threads.cores()} cores, {vector}, {bf16}; {', '.join(rates)}; "
            f"tunery trains in {chosen} here")


if __name__ == "__main__":
    os.environ.setdefault("TUNERY_HOME", str(Path(__file__).resolve().parents[1] / ".cache" / "bench-home"))
    print(describe())
